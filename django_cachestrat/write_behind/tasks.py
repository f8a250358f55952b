"""Celery tasks: flush write-behind batches, on a schedule and when a batch is ready.

Run a worker and beat for your project as usual, and merge ``beat_schedule()`` into your
Celery app's ``beat_schedule`` (the README shows how).

``connect()`` (called from ``AppConfig.ready()``) makes a save that fills a batch queue
a flush at once: the strategy sends ``signals.write_behind_batch_ready``, and only this
module knows Celery.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.apps import apps

from django_cachestrat import conf, options, signals
from django_cachestrat.backends import CacheUnavailable
from django_cachestrat.write_behind import flusher
from django_cachestrat.write_behind.queue import Queue

logger = logging.getLogger("django_cachestrat")

TASK_NAME = "django_cachestrat.tasks.flush_write_behind"


@shared_task(name=TASK_NAME, ignore_result=True)
def flush_write_behind(model: str | None = None) -> dict[str, int]:
    """Flush the pending writes of ``model`` (``"app_label.model_name"``) or of all.

    Return the rows written per model.
    """
    chosen = [apps.get_model(model)] if model else None
    try:
        for each in chosen or ():
            Queue(each).release_trigger()
        return flusher.flush(chosen).rows
    except CacheUnavailable as exc:
        logger.warning("django_cachestrat: Redis is unreachable; nothing flushed (%s).", exc)
        return {}


def beat_schedule() -> dict[str, dict]:
    """Return the Celery beat entry that flushes every ``FLUSH_INTERVAL`` seconds."""
    interval = conf.settings().FLUSH_INTERVAL
    return {
        "django-cachestrat-flush-write-behind": {
            "task": TASK_NAME,
            "schedule": interval,
            # A flush that waits longer than an interval is overtaken by the next one.
            "options": {"expires": interval},
        }
    }


def queue_flush(sender, **kwargs) -> None:
    """Queue a flush of ``sender`` now: its pending rows reached ``BATCH_SIZE``.

    The record script tells one writer per flush interval, so a flood of saves queues
    one task, not one per save. A broker that is down is logged: the scheduled flush
    still runs.
    """
    try:
        flush_write_behind.delay(options.get(sender).label)
    except Exception as exc:
        logger.warning("django_cachestrat: could not queue a flush (%s).", exc)


def connect() -> None:
    """Queue a flush whenever a write fills a batch (idempotent)."""
    signals.write_behind_batch_ready.connect(
        queue_flush, dispatch_uid="cachestrat.write_behind.queue_flush"
    )

"""Celery tasks: flush write-behind batches.

Run a worker and beat for your project as usual; add the schedule with::

    from django_cachestrat.tasks import beat_schedule
    app.conf.beat_schedule = {**app.conf.beat_schedule, **beat_schedule()}
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.apps import apps

from django_cachestrat import buffer, conf, flusher, options
from django_cachestrat.backends import CacheUnavailable

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
            buffer.Buffer(each).release_trigger()
        return flusher.flush(chosen).rows
    except CacheUnavailable as exc:
        logger.warning("django_cachestrat: Redis is unreachable; nothing flushed (%s).", exc)
        return {}


def beat_schedule() -> dict[str, dict]:
    """Return the Celery beat entry that flushes every ``FLUSH_INTERVAL`` seconds."""
    return {
        "django-cachestrat-flush-write-behind": {
            "task": TASK_NAME,
            "schedule": conf.settings().FLUSH_INTERVAL,
            # A flush that waits longer than an interval is overtaken by the next one.
            "options": {"expires": conf.settings().FLUSH_INTERVAL},
        }
    }


def queue_flush(model) -> None:
    """Queue a flush of ``model`` now: its pending rows reached ``BATCH_SIZE``.

    The record script tells one writer per flush interval to call this, so a flood of
    saves queues one task, not one per save.
    """
    try:
        flush_write_behind.delay(options.get(model).label)
    except Exception as exc:  # the broker is down: the scheduled flush still runs
        logger.warning("django_cachestrat: could not queue a flush (%s).", exc)

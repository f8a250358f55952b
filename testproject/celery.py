"""The demo project's Celery app: ``celery -A testproject worker -B`` flushes write-behind.

The standard Django set-up: configured from the ``CELERY_*`` settings (the broker is the
cache's Redis on another database number), tasks found in the ``tasks`` module of every
installed app (``django_cachestrat.tasks``). Beat runs ``flush_write_behind`` every
``CACHESTRAT["FLUSH_INTERVAL"]`` seconds, from ``django_cachestrat.tasks.beat_schedule()``.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

app = Celery("testproject")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def add_write_behind_schedule(sender, **kwargs):
    """Schedule the write-behind flush (imported late: it needs Django's apps loaded)."""
    from django_cachestrat.tasks import beat_schedule

    sender.conf.beat_schedule = {**sender.conf.beat_schedule, **beat_schedule()}

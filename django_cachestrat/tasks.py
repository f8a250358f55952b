"""Celery's entry point to the app (``autodiscover_tasks`` looks for ``<app>.tasks``).

The task and its schedule live in ``django_cachestrat.write_behind.tasks``.
"""

from django_cachestrat.write_behind.tasks import TASK_NAME, beat_schedule, flush_write_behind

__all__ = ["TASK_NAME", "beat_schedule", "flush_write_behind"]

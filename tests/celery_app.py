"""The test project's Celery app: ``celery -A tests.celery_app worker`` (see tests/worker.py).

Run it with ``DJANGO_SETTINGS_MODULE=tests.settings``; it is configured from the
``CELERY_*`` settings there, and finds tasks in the ``tasks`` module of every installed app
(``tests.tasks``, ``django_cachestrat.tasks``). A worker told to pause at a point of its
flush (``CACHESTRAT_TEST_PAUSE_AT``) wraps the flusher once Django is set up
(tests/pause.py).
"""

import os

from celery import Celery, signals

app = Celery("tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
def _pause_if_told(**kwargs):
    if os.environ.get("CACHESTRAT_TEST_PAUSE_AT"):
        import django

        django.setup()  # idempotent; the flusher's modules need the app registry
        from tests import pause

        pause.install()

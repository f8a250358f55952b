"""The test project's Celery app: ``celery -A tests.celery_app worker`` (see tests/worker.py).

Run it with ``DJANGO_SETTINGS_MODULE=tests.settings``; it is configured from the
``CELERY_*`` settings there, and finds tasks in the ``tasks`` module of every installed app
(``tests.tasks``, ``django_cachestrat.tasks``). A worker told to pause at a point of its
flush (``CACHESTRAT_TEST_PAUSE_AT``) wraps the flusher once Django is set up
(tests/pause.py); one told to log its flushes (``CACHESTRAT_TEST_FLUSH_LOG``) logs its
claims and flushed batches (tests/flush_log.py).
"""

import os

from celery import Celery, signals

#: The variable naming the file tests/flush_log.py writes to (read here before Django is set up).
FLUSH_LOG = "CACHESTRAT_TEST_FLUSH_LOG"

app = Celery("tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
def _wrap_flusher_if_told(**kwargs):
    pause, log = os.environ.get("CACHESTRAT_TEST_PAUSE_AT"), os.environ.get(FLUSH_LOG)
    if not (pause or log):
        return
    import django

    django.setup()  # idempotent; the flusher's modules need the app registry
    if log:  # first, so a paused flush's claim is logged too
        from tests import flush_log

        flush_log.install()
    if pause:
        from tests import pause as pausing

        pausing.install()

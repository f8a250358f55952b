"""The test project's Celery app: ``celery -A tests.celery_app worker`` (see tests/worker.py).

Run it with ``DJANGO_SETTINGS_MODULE=tests.settings``; it is configured from the
``CELERY_*`` settings there, and finds tasks in the ``tasks`` module of every installed app
(``tests.tasks``, ``django_cachestrat.tasks``).
"""

from celery import Celery

app = Celery("tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

"""The demo project of django_cachestrat: settings, URLs, the ``shop`` app and Celery."""

# Load the Celery app whenever Django starts, so that shared tasks use it.
from .celery import app as celery_app

__all__ = ("celery_app",)

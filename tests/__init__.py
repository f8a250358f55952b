# The Django convention: the project's Celery app is loaded with the project, so that
# shared_task tasks (ours and the app's) are sent through it.
from tests.celery_app import app as celery_app

__all__ = ["celery_app"]

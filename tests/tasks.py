"""Tasks the worker tests send (tests/test_worker_infra.py)."""

import time

from celery import shared_task

from tests.models import Plain


@shared_task
def write_row(name, hang_first_attempt=0.0):
    """Write a ``Plain`` row ``name``, after a row ``a:<name>`` marking the attempt.

    With ``hang_first_attempt``, the first attempt sleeps that long before writing ``name``,
    so a test can kill the worker while it runs. ``name`` has at most 8 characters.
    """
    marker = f"a:{name}"
    first = not Plain.objects.filter(name=marker).exists()
    Plain.objects.create(name=marker)
    if first and hang_first_attempt:
        time.sleep(hang_first_attempt)
    Plain.objects.create(name=name)

"""The real-worker test infrastructure works: tests/worker.py, tests/celery_app.py."""

import uuid

import pytest

from tests.models import Plain
from tests.tasks import write_row
from tests.worker import pending, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def rows(name):
    return Plain.objects.filter(name=name).count()


def test_a_task_sent_with_delay_runs_in_the_worker_and_writes_the_database(celery_worker):
    name = uuid.uuid4().hex[:8]
    write_row.delay(name)

    wait_until(lambda: rows(name), what=lambda: f"row {name}\n{celery_worker.log()}")
    assert rows(name) == 1
    assert rows(f"a:{name}") == 1
    assert "Task tests.tasks.write_row[" in celery_worker.log()


def test_a_task_whose_worker_is_killed_runs_again_on_the_next_worker_once(celery_workers):
    first = celery_workers()
    name = uuid.uuid4().hex[:8]
    write_row.apply_async((name,), {"hang_first_attempt": 60})
    # The first attempt has begun and hangs: the message is delivered, not acknowledged.
    wait_until(lambda: rows(f"a:{name}"), what=lambda: f"first attempt\n{first.log()}")
    first.kill()
    assert rows(name) == 0

    second = celery_workers()
    # The broker gives the message back after its visibility timeout (3 s).
    wait_until(lambda: rows(name), what=lambda: f"row {name}\n{second.log()}")
    second.stop()  # warm: anything it still held would be acknowledged or given back

    assert rows(f"a:{name}") == 2  # two attempts
    assert rows(name) == 1  # one completion
    assert pending() == 0  # nothing waits to run a third time, nor is held by a worker

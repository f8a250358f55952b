"""Write-behind flushed by several real Celery worker processes at once.

Writers (threads of the test process) make 50,000 write-behind updates of 1,000 rows, a mix
of counter increments and saves of other fields, while three separate ``celery worker``
processes flush with small batches: each process claims batches as the others do, so the
pending rows are shared out among them. Every row's final values, computed by the test
from what it wrote, must be in the database exactly: no increment applied twice or lost,
and each saved field's last value. The workers log which batches they claimed and flushed
(tests/flush_log.py): the test checks that several of them flushed, and that batches of
two workers were in flight at the same moment. A variant kills one worker mid-run.

The first tests force, in this process, the two ways claims of several workers got in
each other's way: both reading the same rows, and rows of a batch in flight at the head of
the queue.
"""

import datetime as dt
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from django.db import connections
from django.test import override_settings

from django_cachestrat.backends import scripts
from django_cachestrat.models import DeadLetter
from django_cachestrat.tasks import flush_write_behind
from django_cachestrat.write_behind import flusher
from django_cachestrat.write_behind.queue import Queue
from tests import flush_log
from tests.celery_app import FLUSH_LOG
from tests.models import PageStats
from tests.worker import wait_until

pytestmark = pytest.mark.django_db(transaction=True)

ROWS = 1000
UPDATES = 50_000
WRITERS = 4  # threads; writer w alone saves the rows whose index is w modulo WRITERS
WORKERS = 3  # worker processes
BATCH_SIZE = 20  # small: many batches, so the workers' claims interleave
BEAT = 0.1  # seconds between the flush tasks the test queues while it writes
BASE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


@dataclass
class Expected:
    """What the database must hold at the end, per row index."""

    views: Counter = field(default_factory=Counter)
    likes: Counter = field(default_factory=Counter)
    saves: Counter = field(default_factory=Counter)

    def row(self, i: int) -> tuple:
        n = self.saves[i]
        saved = (str(n), BASE + dt.timedelta(seconds=n)) if n else ("", None)
        return (self.views[i], self.likes[i], *saved)


def plan(expected: Expected) -> list[list[tuple]]:
    """The writers' operations, ``(kind, row index, amount)``, and the values they lead to.

    A row's saved fields have one writer, so their last value is known; its counters are
    incremented by every writer. A save stores ``note`` = how many times the row was saved
    so far and ``last_seen`` = that many seconds after ``BASE``.
    """
    plans = []
    for w in range(WRITERS):
        rng = random.Random(w)
        ops = []
        for _ in range(UPDATES // WRITERS):
            r = rng.random()
            if r < 0.45:
                i = rng.randrange(ROWS)
                expected.views[i] += 1
                ops.append(("views", i, 1))
            elif r < 0.8:
                i, n = rng.randrange(ROWS), rng.randint(1, 5)
                expected.likes[i] += n
                ops.append(("likes", i, n))
            else:
                i = w + WRITERS * rng.randrange(ROWS // WRITERS)
                expected.saves[i] += 1
                ops.append(("save", i, expected.saves[i]))
        plans.append(ops)
    return plans


def write(ops, pks, errors) -> None:
    """One writer: its operations in order, through the app's write-behind API."""
    try:
        objs = PageStats.objects.get_many_cached([pks[i] for _, i, _ in ops])
        for kind, i, n in ops:
            if kind == "save":
                obj = objs[pks[i]]
                obj.note, obj.last_seen = str(n), BASE + dt.timedelta(seconds=n)
                obj.save(update_fields=["note", "last_seen"])
            else:
                PageStats.objects.increment_behind(pks[i], **{kind: n})
    except BaseException as exc:  # the test fails with it
        errors.append(exc)
    finally:
        connections.close_all()


def beat(stop: threading.Event) -> None:
    """Queue flush tasks while the writers write, as Celery beat would (more often)."""
    while not stop.wait(BEAT):
        flush_write_behind.apply_async(("tests.pagestats",), expires=2 * BEAT)


def pending_rows(n, start=0):
    """Rows ``start`` to ``n - 1`` of the test's rows, each given one pending increment."""
    pks = [PageStats.objects.create(path=f"/q{i}").pk for i in range(start, n)]
    for pk in pks:
        PageStats.objects.increment_behind(pk, views=1)
    return pks


class ClaimsFirst:
    """A queue's transport that lets ``other()`` run just before this queue's CLAIM script:
    another worker that read the same rows claims them first. Every command still goes to
    Redis, unchanged."""

    def __init__(self, transport, other):
        self.transport, self.other = transport, other

    def script(self, script, *args):
        if script is scripts.CLAIM and self.other is not None:
            other, self.other = self.other, None
            other()
        return self.transport.script(script, *args)

    @property
    def nodes(self):
        # A queue claims from each node's queue: this one stands for the only node.
        return (self,)

    def __getattr__(self, name):
        return getattr(self.transport, name)


def test_a_claim_another_worker_won_claims_the_next_rows():
    pks = pending_rows(10)
    mine, theirs = Queue(PageStats), Queue(PageStats)
    won = []
    mine.transport = ClaimsFirst(mine.transport, lambda: won.append(theirs.claim(5, 3600)))
    batch = mine.claim(5, visibility=3600)
    taken = set(won[0].pks)  # the other worker took the rows both read
    assert len(taken) == 5
    assert batch is not None  # rows were waiting: not None, as if the queue were empty
    assert set(batch.pks) == set(pks) - taken


def test_rows_of_a_batch_in_flight_do_not_stop_the_claims_behind_them(settings):
    first = pending_rows(5)
    held = Queue(PageStats).claim(5, visibility=3600)  # a worker holds them (or died)
    assert sorted(held.pks) == first
    time.sleep(0.005)  # later scores in the queue
    for pk in first:  # written again: pending, and first in the queue
        PageStats.objects.increment_behind(pk, views=1)
    time.sleep(0.005)
    behind = pending_rows(15, start=5)
    with override_settings(CACHESTRAT={**settings.CACHESTRAT, "BATCH_SIZE": 5}):
        report = flusher.flush([PageStats])
    assert report.rows == {"tests.pagestats": 10}
    views = dict(PageStats.objects.values_list("pk", "views"))
    assert [views[pk] for pk in first + behind] == [0] * 5 + [1] * 10


@pytest.fixture
def rows():
    PageStats.objects.bulk_create(PageStats(path=f"/p{i}") for i in range(ROWS))
    pks = list(PageStats.objects.order_by("pk").values_list("pk", flat=True))
    for start in range(0, ROWS, 500):
        PageStats.objects.get_many_cached(
            pks[start : start + 500]
        )  # views filled: writers never read the database
    return pks


@pytest.fixture
def small_batches(settings):
    config = {**settings.CACHESTRAT, "BATCH_SIZE": BATCH_SIZE}
    with override_settings(CACHESTRAT=config):
        yield {"BATCH_SIZE": BATCH_SIZE}


def run_writers(pks, during=None) -> None:
    """Write every planned update from ``WRITERS`` threads while flush tasks are queued;
    ``during()`` runs in this thread meanwhile. Return what the database must hold."""
    expected = Expected()
    errors: list[BaseException] = []
    threads = [threading.Thread(target=write, args=(ops, pks, errors)) for ops in plan(expected)]
    stop = threading.Event()
    beating = threading.Thread(target=beat, args=(stop,))
    for thread in [*threads, beating]:
        thread.start()
    try:
        if during is not None:
            during()
    finally:
        for thread in threads:
            thread.join()
        stop.set()
        beating.join()
    assert not errors, errors
    return expected


def drain(workers) -> None:
    """Let the workers flush what is left, and wait until nothing is pending."""
    for _ in workers:
        flush_write_behind.delay("tests.pagestats")
    wait_until(
        lambda: flusher.waiting() == {},
        timeout=60,
        what=lambda: f"{flusher.waiting()}\n" + "\n".join(w.log()[-3000:] for w in workers),
    )


def assert_exact(pks, expected: Expected) -> None:
    got = {
        obj.pk: (obj.views, obj.likes, obj.note, obj.last_seen)
        for obj in PageStats.objects.filter(pk__in=pks)
    }
    wrong = {
        i: (got[pk], expected.row(i)) for i, pk in enumerate(pks) if got[pk] != expected.row(i)
    }
    assert not wrong, f"{len(wrong)} rows differ (database, expected): {list(wrong.items())[:5]}"
    assert sum(v for v, *_ in got.values()) == sum(expected.views.values())
    assert sum(likes for _, likes, *_ in got.values()) == sum(expected.likes.values())
    assert not DeadLetter.objects.exists()
    cached = PageStats.objects.get_many_cached(pks)  # the views agree with the database
    assert {pk: (o.views, o.likes, o.note, o.last_seen) for pk, o in cached.items()} == got


def flushed_by(records, workers) -> Counter:
    """Batches flushed per worker (by its index in ``workers``)."""
    index = {w.process.pid: n for n, w in enumerate(workers)}
    return Counter(index[r["pid"]] for r in records if r["event"] == "flushed")


@pytest.mark.slow
def test_three_workers_flush_fifty_thousand_updates_exactly(
    celery_workers, rows, small_batches, tmp_path
):
    log = tmp_path / "flushes.jsonl"
    workers = celery_workers(WORKERS, env={FLUSH_LOG: str(log)}, cachestrat=small_batches)
    expected = run_writers(rows)
    drain(workers)
    assert_exact(rows, expected)

    records = flush_log.read(log)
    per_worker = flushed_by(records, workers)
    assert len(per_worker) >= 2, per_worker  # the rows were shared out
    # Two workers each held a batch, claimed and not acknowledged, at the same moment.
    assert max(r["in_flight"] for r in records if r["event"] == "claim") >= 2


@pytest.mark.slow
@pytest.mark.parametrize("point", ["during_write", "after_commit"])
def test_a_worker_killed_mid_run_loses_nothing_and_applies_nothing_twice(
    celery_workers, rows, small_batches, tmp_path, point
):
    log = tmp_path / "flushes.jsonl"
    marker = tmp_path / "paused"
    env = {FLUSH_LOG: str(log)}
    survivors = celery_workers(WORKERS - 1, env=env, cachestrat=small_batches)
    doomed = celery_workers(
        env={
            **env,
            "CACHESTRAT_TEST_PAUSE_AT": point,
            "CACHESTRAT_TEST_PAUSE_SKIP": "5",  # flushes five batches, then stops there
            "CACHESTRAT_TEST_PAUSE_FILE": str(marker),
        },
        cachestrat=small_batches,
    )

    def kill_when_paused():
        wait_until(marker.exists, timeout=60, what=doomed.log)
        doomed.kill()  # SIGKILL, its batch claimed and not acknowledged; writes go on

    expected = run_writers(rows, during=kill_when_paused)
    drain(survivors)
    assert_exact(rows, expected)

    records = flush_log.read(log)
    mine = [r for r in records if r["pid"] == doomed.process.pid]
    held = {r["batch"] for r in mine if r["event"] == "claim"} - {
        r["batch"] for r in mine if r["event"] == "flushed"
    }
    assert len(held) == 1, mine  # the batch it was killed with ...
    rescued = [r for r in records if r["event"] == "flushed" and r["batch"] in held]
    assert len(rescued) == 1 and rescued[0]["pid"] != doomed.process.pid  # ... taken over
    assert len(flushed_by(records, [*survivors, doomed])) >= 2

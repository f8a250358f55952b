"""Write-behind with a real Celery worker process, a real Redis and the test database."""

import os
import signal
import time

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from django_cachestrat import backends, keys
from django_cachestrat.models import AppliedBatch
from django_cachestrat.tasks import flush_write_behind
from django_cachestrat.write_behind import flusher
from tests.conftest import nodes_of, row_updates
from tests.models import PageStats
from tests.redis_server import Server, caches_at, unreachable_caches
from tests.worker import pending, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def db_views(pks):
    return dict(PageStats.objects.filter(pk__in=pks).values_list("pk", "views"))


@pytest.fixture
def rows():
    return [PageStats.objects.create(path=f"/p{i}").pk for i in range(100)]


def test_worker_flushes_what_reads_already_see(celery_worker, rows):
    for n, pk in enumerate(rows[:10]):
        stats = PageStats.objects.get_cached(pk=pk)
        stats.note = str(n)
        stats.save()
        PageStats.objects.increment_behind(pk, views=n + 1)
    assert [PageStats.objects.get_cached(pk=pk).views for pk in rows[:10]] == list(range(1, 11))
    assert set(db_views(rows[:10]).values()) == {0}
    flush_write_behind.delay()
    wait_until(
        lambda: db_views(rows[:10]) == {pk: n + 1 for n, pk in enumerate(rows[:10])},
        what=celery_worker.log,
    )
    notes = dict(PageStats.objects.filter(pk__in=rows[:10]).values_list("pk", "note"))
    assert notes == {pk: str(n) for n, pk in enumerate(rows[:10])}
    wait_until(lambda: flusher.waiting() == {}, what="the batch to be acknowledged")


def test_ten_thousand_updates_to_a_hundred_rows(celery_worker, rows):
    for i in range(10_000):
        PageStats.objects.increment_behind(rows[i % 100], views=1)
    # The flush itself, counted in this process: one UPDATE per row, 100 in all (one batch;
    # on a ring or a cluster, one a node).
    with CaptureQueriesContext(connection) as queries:
        report = flusher.flush(max_batches=len(backends.get("default").nodes))
    updates = row_updates(queries)
    assert report.rows == {"tests.pagestats": 100}
    assert len(updates) == 100
    assert db_views(rows) == {pk: 100 for pk in rows}
    # And through the worker: another round, summed the same way.
    for i in range(10_000):
        PageStats.objects.increment_behind(rows[i % 100], views=2)
    flush_write_behind.delay()
    wait_until(lambda: db_views(rows) == {pk: 300 for pk in rows}, what=celery_worker.log)


@pytest.mark.parametrize("point", ["after_claim", "during_write", "after_commit"])
def test_worker_killed_mid_flush_loses_nothing_and_applies_once(
    celery_workers, rows, tmp_path, point
):
    for i in range(1000):
        PageStats.objects.increment_behind(rows[i % 100], views=1)
    stats = PageStats.objects.get_cached(pk=rows[0])
    stats.note = "kept"
    stats.save()
    marker = tmp_path / "paused"
    doomed = celery_workers(
        env={"CACHESTRAT_TEST_PAUSE_AT": point, "CACHESTRAT_TEST_PAUSE_FILE": str(marker)}
    )
    flush_write_behind.delay()
    wait_until(marker.exists, what=doomed.log)
    doomed.kill()  # SIGKILL at the point
    expected = {pk: 10 for pk in rows}
    if point == "after_commit":
        # Its batch committed, never acknowledged: every row (on a ring or a cluster, the
        # rows of the node it claimed from).
        committed = {pk for pk, views in db_views(rows).items() if views}
        groups = backends.get("default").split([entry_key(pk) for pk in rows])
        assert committed in [{rows[i] for i in where} for _, where in groups]
        assert set(db_views(committed).values()) == {10}
    else:
        assert set(db_views(rows).values()) == {0}
    # Reads still see every write while the batch waits to be reclaimed.
    assert PageStats.objects.get_cached(pk=rows[1]).views == 10
    rescuer = celery_workers()
    time.sleep(conf_visibility() + 0.5)  # the batch becomes reclaimable
    flush_write_behind.delay()
    wait_until(lambda: flusher.waiting() == {}, what=rescuer.log)
    assert db_views(rows) == expected  # exactly once: no counter applied twice
    assert PageStats.objects.get(pk=rows[0]).note == "kept"
    # One batch's marker (on a ring or a cluster, up to one a node holding some of the rows:
    # a flush prunes the markers of acknowledged batches once old enough, and the flush of
    # every node's batch takes a while).
    assert 1 <= AppliedBatch.objects.count() <= len(nodes_of(*map(entry_key, rows)))


def entry_key(pk):
    return keys.entry("cstest", "tests.pagestats", pk)


def conf_visibility():
    from django_cachestrat import conf

    return conf.settings().VISIBILITY_TIMEOUT


def test_reaching_batch_size_queues_one_flush_not_a_flood(rows, settings):
    config = {**settings.CACHESTRAT, "BATCH_SIZE": 5, "FLUSH_INTERVAL": 30}
    with override_settings(CACHESTRAT=config):
        for pk in rows[:50]:
            PageStats.objects.increment_behind(pk, views=1)
        assert pending() == 1
        # Once a flush has started, the next time the batch fills queues another.
        flush_write_behind.run("tests.pagestats")
        for pk in rows[50:]:
            PageStats.objects.increment_behind(pk, views=1)
        assert pending() == 2
    assert db_views(rows[:50]) == {pk: 1 for pk in rows[:50]}


def test_pending_writes_survive_a_redis_restart_with_aof(rows):
    server = Server(appendonly=True, appendfsync="always").start()
    try:
        with override_settings(CACHES=caches_at(server.url, 0.5)):
            for i in range(300):
                PageStats.objects.increment_behind(rows[i % 30], views=1)
            os.kill(server.process.pid, signal.SIGKILL)
            server.process.wait()
            server.start()
            time.sleep(0.1)
            assert PageStats.objects.get_cached(pk=rows[0]).views == 10  # still pending
            report = flusher.drain()
        assert report.rows == {"tests.pagestats": 30}
        assert db_views(rows[:30]) == {pk: 10 for pk in rows[:30]}
    finally:
        server.stop()


def test_redis_down_at_save_writes_the_database(rows, caplog):
    with override_settings(CACHES=unreachable_caches()):
        stats = PageStats.objects.get_cached(pk=rows[0])
        stats.note = "sync"
        stats.save()
        PageStats.objects.increment_behind(rows[0], views=3)
    fresh = PageStats.objects.get(pk=rows[0])
    assert (fresh.note, fresh.views) == ("sync", 3)
    assert "goes to the database now" in caplog.text


def _write_directly(how, pk, views):
    """A synchronous write of ``views`` (and nothing else) to row ``pk``, three ways."""
    if how == "update":
        PageStats.objects.filter(pk=pk).update(views=views)
    elif how == "save":
        obj = PageStats.objects.get(pk=pk)
        obj.views = views
        obj.save(update_fields=["views"], write_behind=False)
    else:
        obj = PageStats.objects.get(pk=pk)
        obj.views = views
        PageStats.objects.bulk_update([obj], ["views"])


class PausedWorker:
    """A worker that claimed a batch and waits: ``release()`` lets it go on, ``finish()``
    waits until the batch is done and flushes what was recorded since."""

    def __init__(self, worker, marker):
        self.worker, self.marker = worker, marker

    def release(self):
        self.marker.with_name(self.marker.name + ".resume").touch()

    def finish(self):
        self.release()
        wait_until(lambda: flusher.waiting() == {}, what=self.worker.log)
        flusher.drain()


@pytest.fixture
def paused_after_claim(celery_workers, rows, tmp_path):
    """A worker that claimed the batch of ``rows[0]`` (views +5, note "later") and waits."""
    PageStats.objects.increment_behind(rows[0], views=5)
    stats = PageStats.objects.get_cached(pk=rows[0])
    stats.note = "later"
    stats.save()
    marker = tmp_path / "paused"
    worker = celery_workers(
        env={"CACHESTRAT_TEST_PAUSE_AT": "after_claim", "CACHESTRAT_TEST_PAUSE_FILE": str(marker)}
    )
    flush_write_behind.delay()
    wait_until(marker.exists, what=worker.log)
    return PausedWorker(worker, marker)


@pytest.mark.parametrize("how", ["update", "save", "bulk_update"])
def test_a_claimed_batch_never_overwrites_a_later_direct_write(paused_after_claim, rows, how):
    _write_directly(how, rows[0], 0)  # committed after the claim, before the batch's write
    PageStats.objects.increment_behind(rows[0], views=2)  # after the direct write: kept
    paused_after_claim.finish()
    row = PageStats.objects.get(pk=rows[0])
    assert (row.views, row.note) == (2, "later")  # the batch's +5 is void, its note is not
    assert PageStats.objects.get_cached(pk=rows[0]).views == 2


def test_a_rolled_back_direct_write_leaves_a_claimed_batch_whole(paused_after_claim, rows):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        _write_directly("update", rows[0], 0)
        1 / 0  # noqa: B018
    paused_after_claim.finish()
    row = PageStats.objects.get(pk=rows[0])
    assert (row.views, row.note) == (5, "later")


class Abort(Exception):
    pass


@pytest.mark.parametrize("commits", [True, False])
def test_a_batch_written_while_a_direct_write_holds_the_row(paused_after_claim, rows, commits):
    """The worker goes on while a direct write of the row is open: it waits, then writes
    the batch without the fields the write committed, or whole if it rolled back."""
    try:
        with transaction.atomic():
            _write_directly("update", rows[0], 0)
            paused_after_claim.release()
            time.sleep(0.5)  # the worker waits for the row's lock now
            if not commits:
                raise Abort
    except Abort:
        pass
    paused_after_claim.finish()
    row = PageStats.objects.get(pk=rows[0])
    assert (row.views, row.note) == ((0 if commits else 5), "later")

"""Write-behind semantics, flushed in-process (the worker tests are in test_worker.py)."""

from datetime import UTC, datetime

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from django_cachestrat import keys
from django_cachestrat.models import AppliedBatch, DeadLetter
from django_cachestrat.write_behind import flusher
from tests.conftest import nodes_of, row_updates
from tests.models import PageStats

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def page():
    return PageStats.objects.create(path="/", views=0)


def in_db(pk):
    return PageStats.objects.get(pk=pk)


def test_save_goes_to_the_cache_now_and_the_database_at_the_flush(page, django_assert_num_queries):
    seen = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    stats = PageStats.objects.get_cached(path="/")
    stats.last_seen = seen
    stats.note = "hi"
    with django_assert_num_queries(0):
        stats.save()
        got = PageStats.objects.get_cached(pk=page.pk)
    assert (got.last_seen, got.note) == (seen, "hi")
    assert in_db(page.pk).note == ""
    report = flusher.flush()
    assert report.rows == {"tests.pagestats": 1}
    fresh = in_db(page.pk)
    assert (fresh.last_seen, fresh.note) == (seen, "hi")


def test_increments_are_summed_into_one_update(page, django_assert_num_queries):
    from django_cachestrat import invalidate

    invalidate(page)  # the view stored at the insert: gone
    with django_assert_num_queries(1):  # the first one fills the view
        PageStats.objects.increment_behind(page.pk, views=1)
    with django_assert_num_queries(0):
        for _ in range(99):
            PageStats.objects.increment_behind(page.pk, views=1, likes=-1)
        assert PageStats.objects.get_cached(pk=page.pk).views == 100
    with CaptureQueriesContext(connection) as queries:
        flusher.flush()
    updates = row_updates(queries)
    assert len(updates) == 1 and '"views" = "views" + ' in updates[0]
    assert (in_db(page.pk).views, in_db(page.pk).likes) == (100, -99)


def test_increment_behind_says_whether_it_was_deferred_or_written_now(page):
    from django.test import override_settings

    from tests.redis_server import unreachable_caches

    assert PageStats.objects.increment_behind(page.pk, views=1) is True
    with transaction.atomic():
        assert PageStats.objects.increment_behind(page.pk, views=1) is True
    assert in_db(page.pk).views == 0  # both wait for the flush
    with override_settings(CACHES=unreachable_caches()):
        assert PageStats.objects.increment_behind(page.pk, views=5) is False
    assert in_db(page.pk).views == 5  # written at once
    flusher.flush()
    assert in_db(page.pk).views == 7


def test_many_saves_of_a_row_become_one_write(page):
    for i in range(50):
        stats = PageStats.objects.get_cached(pk=page.pk)
        stats.note = str(i)
        stats.save()
    report = flusher.flush()
    assert report.rows == {"tests.pagestats": 1}
    assert in_db(page.pk).note == "49"


def test_update_fields_merge_with_other_pending_fields(page):
    a = PageStats.objects.get_cached(pk=page.pk)
    a.note = "n"
    a.save(update_fields=["note"])
    b = PageStats.objects.get(pk=page.pk)  # stale: note is "" in the database
    b.views = 7
    b.save(update_fields=["views"])
    got = PageStats.objects.get_cached(pk=page.pk)
    assert (got.note, got.views) == ("n", 7)
    flusher.flush()
    assert (in_db(page.pk).note, in_db(page.pk).views) == ("n", 7)


def test_new_rows_and_forced_saves_are_synchronous(django_assert_num_queries):
    stats = PageStats(path="/new", views=3)
    stats.save()
    assert in_db(stats.pk).views == 3
    stats.views = 4
    stats.save(write_behind=False)
    assert in_db(stats.pk).views == 4
    assert PageStats.objects.get_cached(pk=stats.pk).views == 4


def test_a_delete_that_rolls_back_keeps_the_pending_writes(page):
    PageStats.objects.increment_behind(page.pk, views=5)
    stats = PageStats.objects.get_cached(pk=page.pk)
    stats.note = "kept"
    stats.save()
    with pytest.raises(RuntimeError), transaction.atomic():
        PageStats.objects.get(pk=page.pk).delete()
        raise RuntimeError("undo")
    assert PageStats.objects.get_cached(pk=page.pk).views == 5
    flusher.flush()
    row = in_db(page.pk)
    assert (row.views, row.note) == (5, "kept")
    assert DeadLetter.objects.count() == 0


def test_delete_discards_pending_writes(page):
    PageStats.objects.increment_behind(page.pk, views=5)
    pk = page.pk
    page.delete()
    assert flusher.flush().rows == {}
    with pytest.raises(PageStats.DoesNotExist):
        PageStats.objects.get_cached(pk=pk)
    assert DeadLetter.objects.count() == 0


def test_a_dropped_view_is_rebuilt_with_the_pending_writes(page, raw_redis):
    PageStats.objects.increment_behind(page.pk, views=2)
    stats = PageStats.objects.get_cached(pk=page.pk)
    stats.note = "kept"
    stats.save()
    PageStats.objects.filter(pk=page.pk).update(likes=9)  # a synchronous write drops the view
    got = PageStats.objects.get_cached(pk=page.pk)
    assert (got.views, got.note, got.likes) == (2, "kept", 9)
    flusher.flush()
    fresh = in_db(page.pk)
    assert (fresh.views, fresh.note, fresh.likes) == (2, "kept", 9)


def test_bad_increments():
    page = PageStats.objects.create(path="/x")
    with pytest.raises(ValueError, match="integer fields"):
        PageStats.objects.increment_behind(page.pk, note=1)
    with pytest.raises(ValueError, match="no field"):
        PageStats.objects.increment_behind(page.pk, nope=1)
    with pytest.raises(TypeError, match="takes an int"):
        PageStats.objects.increment_behind(page.pk, views=1.5)
    with pytest.raises(TypeError, match="needs at least one"):
        PageStats.objects.increment_behind(page.pk)
    with pytest.raises(PageStats.DoesNotExist):
        PageStats.objects.increment_behind(999999, views=1)


def test_poison_row_is_dead_lettered_and_the_rest_flushed(settings):
    from django.test import override_settings

    good = PageStats.objects.create(path="/good")
    bad = PageStats.objects.create(path="/bad")
    PageStats.objects.increment_behind(good.pk, views=1)
    stats = PageStats.objects.get_cached(pk=bad.pk)
    stats.note = "x" * 50  # too long for the column on PostgreSQL; on SQLite: a missing row
    stats.save()
    if connection.vendor == "sqlite":
        PageStats.objects.filter(pk=bad.pk)._raw_delete(using="default")
    config = {**settings.CACHESTRAT, "MAX_RETRIES": 2, "RETRY_BACKOFF": 0}
    with override_settings(CACHESTRAT=config):
        report = flusher.flush()  # no backoff: retried at once, then dead-lettered
    assert report.rows == {"tests.pagestats": 1}
    assert (report.dead_letters, report.requeued) == (1, 1)
    assert in_db(good.pk).views == 1
    letter = DeadLetter.objects.get()
    assert letter.model == "tests.pagestats" and letter.object_pk == str(bad.pk)
    assert letter.attempts == 2
    assert flusher.flush().rows == {}  # nothing left pending
    assert AppliedBatch.objects.exists()


def test_flush_command_drains_and_says_what_it_wrote(page, capsys):
    PageStats.objects.increment_behind(page.pk, views=4)
    call_command("cachestrat_write_behind")
    out = capsys.readouterr().out
    assert "tests.pagestats: 1 row(s) waiting, 0 batch(es) in flight" in out
    assert "0 dead letter(s)" in out
    call_command("cachestrat_flush")
    out = capsys.readouterr().out
    assert "tests.pagestats: wrote 1 row(s)" in out
    assert "1 batch(es), 1 row(s) written, 0 dead-lettered" in out
    assert in_db(page.pk).views == 4
    call_command("cachestrat_write_behind", "list")
    assert "No pending write-behind writes." in capsys.readouterr().out


def test_flush_command_reclaims_batches_of_stopped_workers(page, capsys):
    from django_cachestrat.write_behind.queue import Queue

    PageStats.objects.increment_behind(page.pk, views=2)
    batch = Queue(PageStats).claim(10, visibility=3600)  # a worker that died
    assert batch is not None
    call_command("cachestrat_flush")
    assert "1 batch(es) in flight (use --reclaim" in capsys.readouterr().out
    assert in_db(page.pk).views == 0
    call_command("cachestrat_flush", "--reclaim")
    assert "wrote 1 row(s)" in capsys.readouterr().out
    assert in_db(page.pk).views == 2


def test_dead_letters_can_be_listed_retried_and_discarded(settings, capsys):
    from django.test import override_settings

    rows = [PageStats.objects.create(path=f"/d{i}") for i in range(2)]
    for row in rows:
        PageStats.objects.increment_behind(row.pk, views=5)
    PageStats.objects.filter(pk__in=[r.pk for r in rows])._raw_delete(using="default")
    config = {**settings.CACHESTRAT, "MAX_RETRIES": 1}
    with override_settings(CACHESTRAT=config):
        flusher.flush()
    # By row: on a ring, the nodes' queues are flushed in no fixed order.
    letters = sorted(DeadLetter.objects.all(), key=lambda letter: int(letter.object_pk))
    assert len(letters) == 2
    call_command("cachestrat_write_behind")
    out = capsys.readouterr().out
    assert "2 dead letter(s)" in out and "RowMissing" in out
    # The row is back: retrying puts the writes in the queue again.
    PageStats.objects.create(pk=rows[0].pk, path="/d0")
    call_command("cachestrat_write_behind", "retry", str(letters[0].pk))
    call_command("cachestrat_write_behind", "discard", "--all")
    assert DeadLetter.objects.count() == 0
    flusher.flush()
    assert in_db(rows[0].pk).views == 5
    with pytest.raises(CommandError, match="needs dead letter ids"):
        call_command("cachestrat_write_behind", "retry")
    with pytest.raises(CommandError, match="No dead letter with id 999"):
        call_command("cachestrat_write_behind", "discard", "999")


def test_saving_a_deferred_instance_writes_its_loaded_fields(page, django_assert_num_queries):
    PageStats.objects.increment_behind(page.pk, views=3)
    partial = PageStats.objects.only("note").get(pk=page.pk)
    partial.note = "only"
    with django_assert_num_queries(0):
        partial.save()
    got = PageStats.objects.get_cached(pk=page.pk)
    assert (got.note, got.views) == ("only", 3)
    flusher.flush()
    assert (in_db(page.pk).note, in_db(page.pk).views) == ("only", 3)


def test_lookup_reads_see_pending_writes_even_without_a_pointer(page, raw_redis):
    from django_cachestrat import keys

    PageStats.objects.increment_behind(page.pk, views=11)
    raw_redis.delete(keys.lookup("cstest", "tests.pagestats", "path", "/"))
    assert PageStats.objects.get_cached(path="/").views == 11
    from django_cachestrat import invalidate

    invalidate(page)  # the view is dropped too: rebuilt from the database and the pending
    raw_redis.delete(keys.lookup("cstest", "tests.pagestats", "path", "/"))
    assert PageStats.objects.get_cached(path="/").views == 11


def test_writes_in_a_rolled_back_transaction_are_forgotten(page):
    from django.db import transaction

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback), transaction.atomic():
        PageStats.objects.increment_behind(page.pk, views=1000)
        stats = PageStats.objects.get(pk=page.pk)
        stats.note = "rb"
        stats.save()
        raise Rollback
    assert PageStats.objects.get_cached(pk=page.pk).views == 0
    with transaction.atomic():
        PageStats.objects.increment_behind(page.pk, views=2)
        stats = PageStats.objects.get(pk=page.pk)
        stats.note = "ok"
        stats.save(update_fields=["note"])
    got = PageStats.objects.get_cached(pk=page.pk)
    assert (got.views, got.note) == (2, "ok")  # recorded at commit
    flusher.flush()
    assert (in_db(page.pk).views, in_db(page.pk).note) == (2, "ok")


def test_cold_reads_cost_a_few_round_trips_however_many_rows(sends):
    from django_cachestrat import invalidate_model

    pks = [PageStats.objects.create(path=f"/m{i}").pk for i in range(60)]
    invalidate_model(PageStats)  # cold: new rows' views are stored when their inserts commit
    PageStats.objects.get_cached(pk=pks[0])  # loads the scripts into Redis
    # On a ring, as many a node holding some of the rows.
    nodes = len(nodes_of(*(keys.entry("cstest", "tests.pagestats", pk) for pk in pks[1:])))
    sends.clear()
    assert len(PageStats.objects.get_many_cached(pks[1:])) == 59
    assert len(sends) == 4 * nodes  # views, leases, pending writes, fills
    sends.clear()
    assert len(PageStats.objects.get_many_cached(pks[1:])) == 59
    assert len(sends) == nodes  # hits


# -- synchronous writes replace the pending writes of the fields they write -------------


def test_a_synchronous_save_replaces_pending_writes_of_its_fields(page):
    PageStats.objects.increment_behind(page.pk, views=3, likes=2)
    stats = PageStats.objects.get_cached(pk=page.pk)  # views=3: it includes the increment
    stats.views += 1
    stats.save(write_behind=False, update_fields=["views"])
    assert in_db(page.pk).views == 4
    assert PageStats.objects.get_cached(pk=page.pk).views == 4
    flusher.flush()
    # The +3 is not added again; likes, which the save did not write, still flushes.
    assert (in_db(page.pk).views, in_db(page.pk).likes) == (4, 2)


def test_an_update_resets_counters_with_writes_pending(page):
    other = PageStats.objects.create(path="/other")
    for pk in (page.pk, other.pk):
        PageStats.objects.increment_behind(pk, views=5, likes=1)
    assert PageStats.objects.filter(pk=page.pk).update(views=0) == 1
    assert PageStats.objects.get_cached(pk=page.pk).views == 0
    flusher.flush()
    assert (in_db(page.pk).views, in_db(page.pk).likes) == (0, 1)
    assert in_db(other.pk).views == 5  # not in the update: its writes stand


def test_an_update_with_an_expression_keeps_pending_writes(page):
    from django.db.models import F

    PageStats.objects.increment_behind(page.pk, views=5)
    PageStats.objects.filter(pk=page.pk).update(views=F("views") + 10)
    assert PageStats.objects.get_cached(pk=page.pk).views == 15
    flusher.flush()
    assert in_db(page.pk).views == 15


def test_bulk_update_replaces_pending_writes_of_its_fields(page):
    stats = PageStats.objects.get_cached(pk=page.pk)
    stats.note = "wb"
    stats.save()
    PageStats.objects.increment_behind(page.pk, views=2)
    fresh = PageStats.objects.get(pk=page.pk)
    fresh.note = "bulk"
    PageStats.objects.bulk_update([fresh], ["note"])
    flusher.flush()
    assert (in_db(page.pk).note, in_db(page.pk).views) == ("bulk", 2)


def test_a_rolled_back_update_keeps_pending_writes(page):
    from django.db import transaction

    PageStats.objects.increment_behind(page.pk, views=5)
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        PageStats.objects.filter(pk=page.pk).update(views=0)
        1 / 0  # noqa: B018
    flusher.flush()
    assert in_db(page.pk).views == 5


def test_a_uuid_primary_key_goes_through_every_step():
    from tests.models import Visit

    a, b = Visit.objects.create(label="a"), Visit.objects.create(label="b")
    got = Visit.objects.get_cached(pk=str(a.pk))
    got.label = "A"
    got.save()
    Visit.objects.increment_behind(a.pk, hits=2)
    Visit.objects.increment_behind(b.pk, hits=5)
    assert {k: v.hits for k, v in Visit.objects.get_many_cached([a.pk, b.pk]).items()} == {
        a.pk: 2,
        b.pk: 5,
    }
    Visit.objects.filter(pk=b.pk).update(hits=0)
    report = flusher.flush()
    assert report.rows == {"tests.visit": 1}
    assert [(v.label, v.hits) for v in Visit.objects.order_by("label")] == [("A", 2), ("b", 0)]
    a.delete()
    assert Visit.objects.get_many_cached([a.pk, b.pk]).keys() == {b.pk}


def test_a_claim_that_outlived_its_visibility_is_given_up_before_commit(page):
    import time

    from django_cachestrat.write_behind.flusher import FlushReport, apply
    from django_cachestrat.write_behind.queue import Queue

    PageStats.objects.increment_behind(page.pk, views=3)
    queue = Queue(PageStats)
    batch = queue.claim(10, visibility=3600)
    apply(PageStats, queue, batch, FlushReport(), deadline=time.monotonic() - 1)
    assert in_db(page.pk).views == 0  # rolled back: left to the worker that reclaims it
    assert not AppliedBatch.objects.filter(pk=batch.id).exists()
    queue.expire_inflight()
    flusher.flush()
    assert in_db(page.pk).views == 3  # applied once, by the reclaim


def test_an_upsert_replaces_the_pending_writes_of_the_fields_it_updates(page):
    PageStats.objects.increment_behind(page.pk, views=5)
    stats = PageStats.objects.get_cached(pk=page.pk)
    stats.note = "kept"
    stats.save()
    PageStats.objects.bulk_create(
        [PageStats(path=page.path, views=1)],
        update_conflicts=True,
        update_fields=["views"],
        unique_fields=["path"],
    )
    flusher.flush()
    row = in_db(page.pk)
    assert (row.views, row.note) == (1, "kept")  # the +5 was older than the upsert
    assert PageStats.objects.get_cached(pk=page.pk).views == 1

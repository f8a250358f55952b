"""Write-behind writes inside a transaction: kept until commit, merged per row, one round trip."""

import logging

import pytest
from django.db import connection, transaction
from django.test import override_settings

from django_cachestrat import invalidate, keys
from django_cachestrat.write_behind import flusher
from tests.conftest import nodes_of
from tests.models import PageStats
from tests.redis_server import unreachable_caches

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    pass


@pytest.fixture
def pages():
    return [PageStats.objects.create(path=f"/{i}") for i in range(3)]


def cached(pk):
    got = PageStats.objects.get_cached(pk=pk)
    return got.views, got.likes, got.note


def in_db(pk):
    got = PageStats.objects.get(pk=pk)
    return got.views, got.likes, got.note


def test_a_transactions_writes_are_one_round_trip_at_commit(pages, sends, raw_redis):
    for page in pages:
        PageStats.objects.get_cached(pk=page.pk)  # views in Redis: no fill at commit
    with transaction.atomic():  # the first batch also loads the script into Redis
        PageStats.objects.increment_behind(pages[0].pk, likes=0)
    raw_redis.config_resetstat()
    sends.clear()
    with transaction.atomic():
        for page in pages:
            PageStats.objects.increment_behind(page.pk, views=1)
            page.note = f"n{page.pk}"
            page.save(update_fields=["note"])
            PageStats.objects.increment_behind(page.pk, views=2, likes=1)
        assert sends == []  # nothing before the commit
    # One round trip (on a ring or a cluster, one a node holding some of the rows).
    assert len(sends) == len(
        nodes_of(*(keys.entry("cstest", "tests.pagestats", p.pk) for p in pages))
    )
    # Three writes a row, merged: one RECORD per row.
    assert raw_redis.info("commandstats")["cmdstat_evalsha"]["calls"] == len(pages)
    for page in pages:
        assert cached(page.pk) == (3, 1, f"n{page.pk}")
    flusher.flush()
    for page in pages:
        assert in_db(page.pk) == (3, 1, f"n{page.pk}")


def test_merged_writes_keep_the_order_they_were_made_in(pages):
    page = pages[0]
    with transaction.atomic():
        PageStats.objects.increment_behind(page.pk, views=5)
        page.views = 100  # a save writes the instance's value: the +5 before it is gone
        page.save()
        PageStats.objects.increment_behind(page.pk, views=1)
    assert cached(page.pk)[0] == 101
    flusher.flush()
    assert in_db(page.pk)[0] == 101


def test_a_rolled_back_savepoint_drops_its_writes_only(pages):
    a, b, c = pages
    with transaction.atomic():
        PageStats.objects.increment_behind(a.pk, views=1)
        with pytest.raises(Rollback), transaction.atomic():
            PageStats.objects.increment_behind(a.pk, views=10)
            PageStats.objects.increment_behind(b.pk, views=10)
            raise Rollback
        with transaction.atomic():
            PageStats.objects.increment_behind(c.pk, views=100)
        PageStats.objects.increment_behind(a.pk, likes=7)
    assert [cached(p.pk)[:2] for p in pages] == [(1, 7), (0, 0), (100, 0)]
    flusher.flush()
    assert [in_db(p.pk)[:2] for p in pages] == [(1, 7), (0, 0), (100, 0)]


def test_a_write_in_a_savepoint_is_applied_between_its_neighbours(pages):
    page = pages[0]
    with transaction.atomic():
        page.note = "a"
        page.save(update_fields=["note"])
        with transaction.atomic():
            page.note = "b"
            page.save(update_fields=["note"])
        page.note = "c"
        page.save(update_fields=["note"])
    assert cached(page.pk)[2] == "c"
    flusher.flush()
    assert in_db(page.pk)[2] == "c"


def test_rows_without_a_view_are_filled_and_the_batch_recorded(pages, raw_redis):
    # Nothing was read: no row has a view, so each increment is refused in the batch and
    # takes the one-write path, which fills the view from the database first.
    with transaction.atomic():
        for page in pages:
            PageStats.objects.increment_behind(page.pk, views=4)
    assert [cached(p.pk)[0] for p in pages] == [4, 4, 4]
    assert [in_db(p.pk)[0] for p in pages] == [0, 0, 0]  # not flushed yet
    flusher.flush()
    assert [in_db(p.pk)[0] for p in pages] == [4, 4, 4]


def test_one_bad_row_does_not_keep_the_others_out(pages, caplog):
    a, b, c = pages
    gone = PageStats.objects.create(path="/gone")
    invalidate(gone)  # no view: its increment at commit reads the row, which is gone
    later = []
    with caplog.at_level(logging.ERROR, "django_cachestrat"), transaction.atomic():
        PageStats.objects.increment_behind(a.pk, views=1)
        PageStats.objects.increment_behind(gone.pk, views=1)
        PageStats.objects.increment_behind(c.pk, views=1)
        # Deleted behind Django's back (no signal) in the same transaction: its
        # increment has no row at commit. (A delete() sets the row's writes aside.)
        with connection.cursor() as cursor:
            table = connection.ops.quote_name(PageStats._meta.db_table)
            cursor.execute(f"DELETE FROM {table} WHERE id = %s", [gone.pk])
        transaction.on_commit(lambda: later.append("ran"))
    assert later == ["ran"]  # the transaction's other callbacks still ran
    assert f"tests.pagestats pk={gone.pk}" in caplog.text
    assert "could not be written" in caplog.text
    assert [cached(p.pk)[0] for p in (a, b, c)] == [1, 0, 1]
    flusher.flush()
    assert [in_db(p.pk)[0] for p in (a, b, c)] == [1, 0, 1]


def test_redis_down_at_commit_writes_the_batch_to_the_database(pages, caplog):
    down = override_settings(CACHES=unreachable_caches())
    with down, caplog.at_level(logging.WARNING, "django_cachestrat"):
        with transaction.atomic():
            for page in pages:
                PageStats.objects.increment_behind(page.pk, views=2)
                PageStats.objects.increment_behind(page.pk, views=3, likes=-1)
        # Written at commit, each row once.
        assert [in_db(p.pk)[:2] for p in pages] == [(5, -1)] * 3
    assert "3 write-behind write(s) of a committed transaction go to the database" in caplog.text


def test_a_transaction_reads_its_own_writes(pages):
    a, b, _ = pages
    PageStats.objects.increment_behind(a.pk, views=10)  # pending before the transaction
    with transaction.atomic():
        PageStats.objects.increment_behind(a.pk, views=1)
        stats = PageStats.objects.get_cached(pk=b.pk)
        stats.note = "mine"
        stats.save()
        assert cached(a.pk) == (11, 0, "")
        got = PageStats.objects.get_many_cached([a.pk, b.pk])
        assert (got[a.pk].views, got[b.pk].note) == (11, "mine")
        assert PageStats.objects.get_cached(path=b.path).note == "mine"  # a lookup too
        with pytest.raises(Rollback), transaction.atomic():
            PageStats.objects.increment_behind(a.pk, views=100)
            assert cached(a.pk)[0] == 111
            raise Rollback
        assert cached(a.pk)[0] == 11  # the savepoint's write is gone
    assert cached(a.pk) == (11, 0, "")  # committed: now in Redis
    assert cached(b.pk)[2] == "mine"


def test_other_threads_do_not_see_a_transactions_writes_before_its_commit(pages):
    import threading

    page = pages[0]
    PageStats.objects.get_cached(pk=page.pk)
    seen = []

    def other():
        try:
            seen.append(cached(page.pk)[0])
        finally:
            from django.db import connections

            connections.close_all()

    with transaction.atomic():
        PageStats.objects.increment_behind(page.pk, views=5)
        reader = threading.Thread(target=other)
        reader.start()
        reader.join(10)
        assert cached(page.pk)[0] == 5
    assert seen == [0]
    assert cached(page.pk)[0] == 5


def test_direct_writes_and_write_behind_writes_apply_in_their_order(pages):
    page = pages[0]
    PageStats.objects.increment_behind(page.pk, views=10, likes=1)  # pending before
    rows = PageStats.objects.filter(pk=page.pk)
    with transaction.atomic():
        PageStats.objects.increment_behind(page.pk, views=1)
        assert cached(page.pk)[:2] == (11, 1)
        rows.update(views=0)  # replaces every write of views so far
        assert cached(page.pk)[:2] == (0, 1)
        PageStats.objects.increment_behind(page.pk, views=2)
        assert cached(page.pk)[:2] == (2, 1)
        with transaction.atomic():  # a savepoint, released
            rows.update(views=50)
            assert cached(page.pk)[:2] == (50, 1)
        PageStats.objects.increment_behind(page.pk, views=3)
        assert cached(page.pk)[:2] == (53, 1)
    assert cached(page.pk)[:2] == (53, 1)
    flusher.flush()
    assert in_db(page.pk)[:2] == (53, 1)


def test_a_direct_save_in_a_transaction_replaces_earlier_increments(pages):
    page = pages[0]
    with transaction.atomic():
        PageStats.objects.increment_behind(page.pk, views=4)
        stats = PageStats.objects.get_cached(pk=page.pk)
        assert stats.views == 4
        stats.views = 7
        stats.save(write_behind=False)
        assert cached(page.pk)[0] == 7
        PageStats.objects.increment_behind(page.pk, views=1)
        assert cached(page.pk)[0] == 8
    flusher.flush()
    assert in_db(page.pk)[0] == 8


def test_an_increment_of_null_at_commit_goes_to_the_database(caplog):
    from tests.models import Visit

    visit = Visit.objects.create()
    Visit.objects.get_cached(pk=visit.pk)
    with pytest.raises(ValueError, match="NULL or not an integer"):
        Visit.objects.increment_behind(visit.pk, bonus=1)  # outside a transaction: at once
    with caplog.at_level(logging.WARNING, "django_cachestrat"), transaction.atomic():
        Visit.objects.increment_behind(visit.pk, bonus=1, hits=2)
    # Committed: not raised. Written as F("bonus") + 1 would be (NULL stays NULL).
    assert "one of bonus, hits is NULL or not an integer" in caplog.text
    fresh = Visit.objects.get(pk=visit.pk)
    assert (fresh.bonus, fresh.hits) == (None, 2)

"""A new write-behind row is cached once its insert commits, when memory holds the row."""

import datetime as dt
import secrets
import warnings
from decimal import Decimal

import django
import pytest
from django.db import transaction
from django.db.models import Value
from django.db.models.expressions import Combinable
from django.test import override_settings

from django_cachestrat import keys, options
from django_cachestrat.write_behind import flusher
from django_cachestrat.write_behind.views import Views
from tests.models import Doubled, Gauge, PageStats, Visit
from tests.redis_server import unreachable_caches

pytestmark = pytest.mark.django_db(transaction=True)

SEEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


class Rollback(Exception):
    pass


def view_key(model, pk):
    opts = options.get(model)
    return keys.entry("cstest", opts.label, pk)


def test_a_new_row_is_a_hit_at_once(django_assert_num_queries, events):
    stats = PageStats.objects.create(path="/x", views=3, last_seen=SEEN)
    visit = Visit.objects.create(label="v", rate=Decimal("1.50"))
    with django_assert_num_queries(0):
        got = PageStats.objects.get_cached(pk=stats.pk)
        visits = Visit.objects.get_many_cached([visit.pk])
    assert (got.path, got.views, got.last_seen, got.note) == ("/x", 3, SEEN, "")
    assert visits[visit.pk].rate == Decimal("1.50")
    assert events("fill", PageStats) == 1 and events("miss", PageStats) == 0
    # The view is an ordinary one: writes merge into it and flush as usual.
    with django_assert_num_queries(0):
        PageStats.objects.increment_behind(stats.pk, views=2)
        assert PageStats.objects.get_cached(pk=stats.pk).views == 5
    flusher.flush([PageStats])
    assert PageStats.objects.get(pk=stats.pk).views == 5


def test_inside_a_transaction_the_view_is_stored_when_it_commits(
    raw_redis, django_assert_num_queries
):
    with transaction.atomic():
        stats = PageStats.objects.create(path="/tx")
        assert not raw_redis.exists(view_key(PageStats, stats.pk))
        # The transaction wrote the model: its own reads go to the database.
        assert PageStats.objects.get_cached(pk=stats.pk).path == "/tx"
    with django_assert_num_queries(0):
        assert PageStats.objects.get_cached(pk=stats.pk).path == "/tx"


def test_a_rolled_back_insert_never_reaches_the_cache(raw_redis):
    with pytest.raises(Rollback), transaction.atomic():
        doomed = PageStats.objects.create(path="/rb")
        raise Rollback
    assert not raw_redis.exists(view_key(PageStats, doomed.pk))
    with pytest.raises(PageStats.DoesNotExist):
        PageStats.objects.get_cached(pk=doomed.pk)
    # A savepoint rolled back: its insert only (SQLite may hand its pk out again).
    with transaction.atomic():
        kept = PageStats.objects.create(path="/kept")
        with pytest.raises(Rollback), transaction.atomic():
            undone = PageStats.objects.create(path="/sp")
            raise Rollback
    assert not raw_redis.exists(view_key(PageStats, undone.pk))
    assert raw_redis.exists(view_key(PageStats, kept.pk))
    with pytest.raises(PageStats.DoesNotExist):
        PageStats.objects.get_cached(pk=undone.pk)


@pytest.mark.parametrize(
    ("model", "values", "expected"),
    [
        # An expression: the database computes it.
        (PageStats, {"path": "/e", "views": Value(2) + Value(3)}, {"views": 5}),
        # A naive datetime: the database makes it aware.
        (PageStats, {"path": "/n", "last_seen": SEEN.replace(tzinfo=None)}, {"last_seen": SEEN}),
        # More decimal places than the column keeps: the database rounds.
        (Visit, {"rate": Decimal("1.239")}, {"rate": Decimal("1.24")}),
        # A value the database fills in (db_default), or computes (a generated field).
        (Gauge, {"reading": 1}, {"level": 7}),
        (Doubled, {"base": 4}, {"twice": 8}),
    ],
    ids=["expression", "naive-datetime", "decimal-places", "db-default", "generated"],
)
def test_values_the_database_would_change_are_not_stored(
    model, values, expected, raw_redis, django_assert_num_queries
):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Django's naive datetime warning
        obj = model.objects.create(**values)
    # Django 6 reads an expression's value back on insert (RETURNING), so the row may be
    # stored; before, and for the other cases, memory cannot tell it.
    stored = django.VERSION >= (6,) and isinstance(values.get("views"), Combinable)
    assert raw_redis.exists(view_key(model, obj.pk)) == stored
    with django_assert_num_queries(0 if stored else 1):  # the database's values, read once
        got = model.objects.get_cached(pk=obj.pk)
    assert {name: getattr(got, name) for name in expected} == expected
    with django_assert_num_queries(0):
        model.objects.get_cached(pk=obj.pk)


def test_a_cached_no_such_row_gives_way_to_the_new_row(django_assert_num_queries):
    with pytest.raises(PageStats.DoesNotExist):
        PageStats.objects.get_cached(pk=737373)  # cached as "no such row"
    PageStats.objects.create(pk=737373, path="/late")
    with django_assert_num_queries(0):
        assert PageStats.objects.get_cached(pk=737373).path == "/late"


def test_a_reader_that_read_before_the_commit_cannot_cache_no_such_row():
    views = Views(PageStats)
    token = secrets.token_hex(8)
    with transaction.atomic():
        stats = PageStats.objects.create(path="/race")
        # Another reader misses the row, takes its lease and reads the database, where
        # the row is not committed yet: it would store "no such row".
        ((status, version, _),) = views.acquire([stats.pk], token, 5)
        assert status.name == "TAKEN"
    assert views.fill(token, [(stats.pk, None, 10, False)], version) == 0
    assert PageStats.objects.get_cached(pk=stats.pk).path == "/race"


def test_writes_recorded_before_the_view_is_stored_are_not_overwritten(
    django_assert_num_queries,
):
    other = PageStats.objects.create(path="/other")
    with transaction.atomic():
        # The transaction's write-behind writes are recorded at commit, before the new
        # row's view is stored: here the row's own save, recorded first.
        PageStats.objects.increment_behind(other.pk, views=1)
        stats = PageStats.objects.create(path="/new")
        stats.note = "saved"
        stats.save()
    with django_assert_num_queries(0):
        assert PageStats.objects.get_cached(pk=stats.pk).note == "saved"
    flusher.flush([PageStats])
    assert PageStats.objects.get(pk=stats.pk).note == "saved"


def test_an_insert_while_redis_is_down_succeeds_and_is_read_from_the_database():
    with override_settings(CACHES=unreachable_caches()):
        stats = PageStats.objects.create(path="/down")
        assert PageStats.objects.get_cached(pk=stats.pk).path == "/down"
    assert PageStats.objects.get_cached(pk=stats.pk).path == "/down"

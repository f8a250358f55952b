"""Two databases: every strategy, write and read follows the database it is for.

The instance's (``using()``, ``db_manager()``), the queryset's, or the router's. Cached
entries are shared by the aliases (they hold the same rows, as a primary and its
replicas do); a write-behind model's pending writes are flushed to its router's write
database, and a write-behind save of a row in another database is written there at once.
"""

import asyncio
import threading

import pytest
from django.core.management import call_command
from django.db import connections, transaction
from django.test import override_settings

from django_cachestrat import invalidate, keys, options
from django_cachestrat.models import AppliedBatch, DeadLetter
from django_cachestrat.write_behind import flusher
from tests.models import Author, Book, PageStats

pytestmark = pytest.mark.django_db(transaction=True, databases={"default", "other"})

#: Per model: a text field to tell the databases' rows apart, and a unique lookup field.
TEXT = {Author: "name", Book: "title", PageStats: "note"}
LOOKUP = {Author: ("email", "a@example.org"), Book: ("isbn", "978"), PageStats: ("path", "/")}


class Rollback(Exception):
    pass


class OtherIsThePrimary:
    """Writes of the test app's models go to "other"; reads stay on "default" (a replica)."""

    def db_for_write(self, model, **hints):
        return "other" if model._meta.app_label == "tests" else None


def make(model, using, text, pk=None):
    name, value = LOOKUP[model]
    return model.objects.using(using).create(pk=pk, **{name: value, TEXT[model]: text})


def forget(raw_redis):
    """Drop every key of ours (the creates stored their rows in the shared entries)."""
    for key in raw_redis.scan_iter("cstest:*"):
        raw_redis.delete(key)


def twins(model, raw_redis, default, other):
    """One pk, a row in each database with different texts; nothing cached."""
    pk = make(model, "default", default).pk
    make(model, "other", other, pk=pk)
    forget(raw_redis)
    return pk


def cached(raw_redis, model, pk):
    """Whether the row has an entry (or a write-behind view) in Redis."""
    opts = options.get(model)
    return bool(raw_redis.exists(keys.entry("cstest", opts.label, pk)))


def entry(raw_redis, model, pk):
    opts = options.get(model)
    return raw_redis.get(keys.entry("cstest", opts.label, pk))


def text_in(using, model, pk):
    return getattr(model._base_manager.using(using).get(pk=pk), TEXT[model])


def in_thread(fn):
    """Run ``fn`` on another thread (other database connections); return its result."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return box["value"]


def test_a_write_behind_save_on_other_that_rolls_back_reaches_no_cache_and_no_flush(raw_redis):
    pk = twins(PageStats, raw_redis, default="d", other="o")
    stats = PageStats.objects.using("other").get(pk=pk)
    with pytest.raises(Rollback), transaction.atomic(using="other"):
        stats.note = "x"
        stats.save()
        # Not write-behind: the flush writes to the model's write database, "default".
        assert text_in("other", PageStats, pk) == "x"
        raise Rollback
    assert not cached(raw_redis, PageStats, pk)
    assert flusher.flush().rows == {}
    assert (text_in("default", PageStats, pk), text_in("other", PageStats, pk)) == ("d", "o")


def test_a_write_behind_save_on_other_that_commits_is_written_to_other(raw_redis):
    pk = twins(PageStats, raw_redis, default="d", other="o")
    stats = PageStats.objects.using("other").get(pk=pk)
    with transaction.atomic(using="other"):
        stats.note = "x"
        stats.save()
    assert text_in("other", PageStats, pk) == "x"
    stats.note = "y"
    stats.save()  # outside a transaction too
    assert text_in("other", PageStats, pk) == "y"
    assert flusher.flush().rows == {}
    assert text_in("default", PageStats, pk) == "d"
    assert PageStats.objects.using("other").get_cached(pk=pk).note == "y"


def test_increment_behind_through_db_manager_updates_that_database(raw_redis):
    pk = twins(PageStats, raw_redis, default="d", other="o")
    other = PageStats.objects.db_manager("other")
    with pytest.raises(Rollback), transaction.atomic(using="other"):
        other.increment_behind(pk, views=2)
        raise Rollback
    assert PageStats.objects.using("other").get(pk=pk).views == 0
    with transaction.atomic(using="other"):
        other.increment_behind(pk, views=2)
    assert other.increment_behind(pk, views=1) is False  # written at once
    assert PageStats.objects.using("other").get(pk=pk).views == 3
    assert flusher.flush().rows == {}
    assert PageStats.objects.using("default").get(pk=pk).views == 0
    with pytest.raises(PageStats.DoesNotExist):
        other.increment_behind(pk + 1000, views=1)


def test_writes_to_other_leave_the_pending_writes_of_the_flush_database_alone(raw_redis):
    pk = twins(PageStats, raw_redis, default="d", other="o")
    PageStats.objects.increment_behind(pk, views=3)
    theirs = PageStats.objects.using("other").get(pk=pk)
    theirs.views = 0
    theirs.save(write_behind=False)
    PageStats.objects.using("other").filter(pk=pk).update(views=0)
    PageStats.objects.using("other").bulk_update([theirs], ["views"])
    theirs.delete()
    assert flusher.flush().rows == {"tests.pagestats": 1}
    assert PageStats.objects.using("default").get(pk=pk).views == 3


@pytest.mark.parametrize("model", [Author, Book], ids=["write-through", "cache-aside"])
def test_saves_and_deletes_on_other_reach_the_cache_when_other_commits(model, raw_redis):
    field = TEXT[model]
    obj = make(model, "other", "before")
    pk = obj.pk
    reader = model.objects.using("other")
    assert getattr(reader.get_cached(pk=pk), field) == "before"
    before = entry(raw_redis, model, pk)
    assert before is not None
    with pytest.raises(Rollback), transaction.atomic(using="other"):
        setattr(obj, field, "rolled back")
        obj.save()
        invalidate(obj)  # waits for the commit of the instance's database too
        raise Rollback
    assert entry(raw_redis, model, pk) == before
    assert getattr(reader.get_cached(pk=pk), field) == "before"
    with transaction.atomic(using="other"):
        setattr(obj, field, "committed")
        obj.save()
        assert in_thread(lambda: getattr(reader.get_cached(pk=pk), field)) == "before"
    assert getattr(model.objects.db_manager("other").get_cached(pk=pk), field) == "committed"
    with pytest.raises(Rollback), transaction.atomic(using="other"):
        reader.get(pk=pk).delete()
        raise Rollback
    assert getattr(reader.get_cached(pk=pk), field) == "committed"
    with transaction.atomic(using="other"):
        reader.get(pk=pk).delete()
        assert in_thread(lambda: getattr(reader.get_cached(pk=pk), field)) == "committed"
    with pytest.raises(model.DoesNotExist):
        reader.get_cached(pk=pk)


@pytest.mark.parametrize("model", [Author, Book, PageStats])
def test_reads_through_using_and_db_manager_fill_from_that_database(model, raw_redis, events):
    pk = twins(model, raw_redis, default="d", other="o")
    events.counts.clear()  # the creates' stores
    field, (name, value) = TEXT[model], LOOKUP[model]
    assert getattr(model.objects.using("other").get_cached(pk=pk), field) == "o"
    assert events("fill", model) == 1
    assert getattr(model.objects.db_manager("other").get_many_cached([pk])[pk], field) == "o"
    assert getattr(model.objects.using("other").get_cached(**{name: value}), field) == "o"
    assert events("fill", model) == 1  # the entry is the row's, whichever database filled it
    got = asyncio.run(model.objects.using("other").aget_many_cached([pk]))
    assert getattr(got[pk], field) == "o"


@pytest.mark.parametrize("model", [Author, Book, PageStats])
def test_reads_on_other_inside_its_transaction_fill_nothing_uncommitted(model, raw_redis):
    field, (name, value) = TEXT[model], LOOKUP[model]
    pk = make(model, "other", "old").pk
    forget(raw_redis)
    reader = model.objects.using("other")
    with pytest.raises(Rollback), transaction.atomic(using="other"):
        reader.filter(pk=pk).update(**{field: "new"})
        assert getattr(reader.get_cached(pk=pk), field) == "new"  # its own write
        assert getattr(reader.get_many_cached([pk])[pk], field) == "new"
        assert getattr(reader.get_cached(**{name: value}), field) == "new"
        assert not cached(raw_redis, model, pk)
        assert in_thread(lambda: getattr(reader.get_cached(pk=pk), field)) == "old"
        raise Rollback
    assert getattr(model.objects.db_manager("other").get_cached(pk=pk), field) == "old"
    forget(raw_redis)
    with transaction.atomic(using="other"):  # a transaction that wrote nothing
        assert getattr(reader.get_cached(pk=pk), field) == "old"
        # Only a read at READ COMMITTED is current enough to fill (PostgreSQL).
        assert cached(raw_redis, model, pk) == (connections["other"].vendor == "postgresql")


def test_get_cached_on_a_queryset_only_right_after_using():
    book = make(Book, "other", "t")
    assert Book.objects.using("other").get_cached(pk=book.pk).title == "t"
    for queryset in (Book.objects.using("other").filter(title="x"), Book.objects.all()):
        with pytest.raises(TypeError, match="reads rows by key"):
            queryset.get_cached(pk=book.pk)
        with pytest.raises(TypeError, match="reads rows by key"):
            queryset.get_many_cached([book.pk])
    assert asyncio.run(Book.objects.using("other").aget_cached(pk=book.pk)).title == "t"


@override_settings(DATABASE_ROUTERS=[OtherIsThePrimary()])
def test_a_router_sends_write_behind_writes_to_its_write_database(raw_redis):
    # "other" is the primary; "default" a replica that lags: a stale copy of the row.
    pk = make(PageStats, "other", "p").pk
    PageStats.objects.using("other").filter(pk=pk).update(views=5)
    make(PageStats, "default", "r", pk=pk)
    forget(raw_redis)
    stats = PageStats.objects.get(pk=pk)  # read from the replica
    assert stats._state.db == "default"
    with pytest.raises(Rollback), transaction.atomic(using="other"):
        stats.note = "x"
        stats.save(update_fields=["note"])
        raise Rollback
    assert not cached(raw_redis, PageStats, pk)
    assert flusher.flush().rows == {}
    with transaction.atomic(using="other"):
        stats.note = "x"
        stats.save(update_fields=["note"])
        assert text_in("other", PageStats, pk) == "p"  # write-behind: not yet
    # The view the write merged into is the primary's row, not the replica's.
    got = PageStats.objects.get_cached(pk=pk)
    assert (got.views, got.note) == (5, "x")
    assert flusher.flush().rows == {"tests.pagestats": 1}
    assert (text_in("other", PageStats, pk), text_in("default", PageStats, pk)) == ("x", "r")
    assert AppliedBatch.objects.using("other").exists()
    # Write-through under the router: the save goes to the primary, the cache follows its
    # transaction (the row is not on the replica at all).
    author = make(Author, "other", "before")
    with transaction.atomic(using="other"):
        author.name = "committed"
        author.save()
        assert Author.objects.get_cached(pk=author.pk).name == "before"
    assert Author.objects.get_cached(pk=author.pk).name == "committed"
    with pytest.raises(Rollback), transaction.atomic(using="other"):
        author.name = "rolled back"
        author.save()
        raise Rollback
    assert Author.objects.get_cached(pk=author.pk).name == "committed"


@override_settings(DATABASE_ROUTERS=[OtherIsThePrimary()])
def test_dead_letters_go_where_the_commands_read_them(settings, capsys):
    pk = make(PageStats, "other", "p").pk
    PageStats.objects.increment_behind(pk, views=1)
    PageStats.objects.filter(pk=pk)._raw_delete(using="other")  # gone behind our back
    with override_settings(CACHESTRAT={**settings.CACHESTRAT, "MAX_RETRIES": 1}):
        report = flusher.flush()
    assert report.dead_letters == 1
    letter = DeadLetter.objects.get()
    assert (letter.model, letter.object_pk, letter.deltas) == (
        "tests.pagestats",
        str(pk),
        {"views": 1},
    )
    call_command("cachestrat_write_behind")
    assert "1 dead letter(s)" in capsys.readouterr().out


@override_settings(DATABASE_ROUTERS=[OtherIsThePrimary()])
def test_a_view_with_pending_writes_is_filled_from_the_write_database(raw_redis):
    # The pending writes will be flushed to the primary ("other"), and a flush of the row
    # must wait for the fill: the row is read there, locked (a replica could not lock it).
    pk = make(PageStats, "other", "p").pk
    PageStats.objects.using("other").filter(pk=pk).update(views=5)
    make(PageStats, "default", "stale", pk=pk)  # the replica's copy, lagging
    PageStats.objects.increment_behind(pk, likes=2)
    opts = options.get(PageStats)
    raw_redis.delete(keys.entry("cstest", opts.label, pk))  # the view evicted, writes kept
    got = PageStats.objects.get_cached(pk=pk)
    assert (got.views, got.note, got.likes) == (5, "p", 2)
    flusher.flush()
    got = PageStats.objects.using("other").get(pk=pk)
    assert (got.views, got.note, got.likes) == (5, "p", 2)

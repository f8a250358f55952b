"""No stale fill: a reader that read a row before a write committed cannot store it after
that write's invalidation. The interleaving is forced step by step."""

import threading

import pytest
from django.db import connection

from django_cachestrat import invalidate, invalidate_model, keys, options
from django_cachestrat.strategies.base import Strategy
from tests.models import Author, Book

pytestmark = pytest.mark.django_db(transaction=True)


class PausedReader:
    """Runs ``read`` on a thread that stops right after its database read returns."""

    def __init__(self, monkeypatch, read):
        self.read_done = threading.Event()
        self.resume = threading.Event()
        self.result = {}
        real = Strategy._from_db

        def from_db(strategy, model, using, pks):
            rows = real(strategy, model, using, pks)
            if threading.current_thread().name == "reader":
                self.read_done.set()
                assert self.resume.wait(10)
            return rows

        monkeypatch.setattr(Strategy, "_from_db", from_db)

        def run():
            try:
                self.result["value"] = read()
            finally:
                connection.close()

        self.thread = threading.Thread(target=run, name="reader")

    def __enter__(self):
        self.thread.start()
        assert self.read_done.wait(10), "the reader never reached the database"
        return self

    def __exit__(self, *exc):
        self.resume.set()
        self.thread.join(10)


def entry(raw_redis, model, pk):
    opts = options.get(model)
    return raw_redis.get(keys.entry("cstest", opts.label, pk))


def cache_aside_save(obj):
    obj.title = "new"
    obj.save()


def bulk_update(obj):
    type(obj).objects.filter(pk=obj.pk).update(title="new")


def version_bump(obj):
    type(obj).objects.filter(pk=obj.pk).update(title="new")
    invalidate_model(type(obj))


@pytest.mark.parametrize("write", [cache_aside_save, bulk_update, version_bump])
@pytest.mark.parametrize("read", ["get_cached", "get_many_cached"])
def test_reader_that_read_before_a_commit_cannot_store_the_old_row(
    monkeypatch, raw_redis, write, read, events
):
    book = Book.objects.create(title="old", isbn="1")
    if read == "get_cached":

        def reader():
            return Book.objects.get_cached(pk=book.pk)
    else:

        def reader():
            return Book.objects.get_many_cached([book.pk])[book.pk]

    with PausedReader(monkeypatch, reader) as paused:
        # 1. The reader missed, took its lease and read "old" from the database.
        # 2. Now a write commits and invalidates.
        write(book)
        # 3. The reader resumes and tries to store "old" (on __exit__).
    assert paused.result["value"].title == "old"  # what it read is what it returns
    stored = entry(raw_redis, Book, book.pk)
    assert stored is None or b"old" not in stored
    assert Book.objects.get_cached(pk=book.pk).title == "new"


def test_write_through_save_cancels_a_pending_fill(monkeypatch, raw_redis):
    author = Author.objects.create(name="old", email="a@example.org")
    raw_redis.delete(keys.entry("cstest", "tests.author", author.pk))
    with PausedReader(monkeypatch, lambda: Author.objects.get_cached(pk=author.pk)):
        author.name = "new"
        author.save()
    assert Author.objects.get_cached(pk=author.pk).name == "new"
    assert b"new" in entry(raw_redis, Author, author.pk)


def test_an_uncontended_fill_is_stored(monkeypatch, raw_redis, events):
    book = Book.objects.create(title="old", isbn="1")
    with PausedReader(monkeypatch, lambda: Book.objects.get_cached(pk=book.pk)):
        pass
    assert b"old" in entry(raw_redis, Book, book.pk)
    assert events("fill", Book) == 1


# -- lookups: the filler reads the row by value, so it cannot take the row's lease first ----


def save(model, pk, name):
    obj = model.objects.get(pk=pk)
    setattr(obj, name, "new")
    obj.save()  # cache-aside: dropped; write-through: stored after commit


def save_one_field(model, pk, name):
    obj = model.objects.get(pk=pk)
    setattr(obj, name, "new")
    obj.save(update_fields=[name])  # write-through: dropped, the other fields may be stale


def queryset_update(model, pk, name):
    model.objects.filter(pk=pk).update(**{name: "new"})


def raw_sql_then_invalidate(model, pk, name):
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {model._meta.db_table} SET {name} = 'new' WHERE id = %s", [pk])
    invalidate(model, pk=pk)


def raw_sql_then_invalidate_model(model, pk, name):
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {model._meta.db_table} SET {name} = 'new' WHERE id = %s", [pk])
    invalidate_model(model)


@pytest.mark.parametrize(
    "write",
    [save, save_one_field, queryset_update, raw_sql_then_invalidate, raw_sql_then_invalidate_model],
)
@pytest.mark.parametrize("model", [Book, Author])
def test_a_lookup_filler_that_read_before_a_write_cannot_store_the_old_row(
    monkeypatch, raw_redis, model, write
):
    if model is Book:
        obj, name, lookup = Book.objects.create(title="old", isbn="1"), "title", {"isbn": "1"}
    else:
        obj = Author.objects.create(name="old", email="a@example.org")
        raw_redis.delete(keys.entry("cstest", "tests.author", obj.pk))
        name, lookup = "name", {"email": "a@example.org"}
    real = Strategy._lookup_db
    writes = [write]

    def read_then_write(strategy, *args):
        # 1. The filler holds the pointer's lease and reads the row by value: "old".
        row = real(strategy, *args)
        # 2. Before it stores, another path writes the row and invalidates it.
        if writes:
            writes.pop()(model, obj.pk, name)
        return row

    monkeypatch.setattr(Strategy, "_lookup_db", read_then_write)
    # 3. The filler stores the pointer, and must not store the row it read.
    assert getattr(model.objects.get_cached(**lookup), name) == "old"  # what it read
    assert not writes
    stored = entry(raw_redis, model, obj.pk)
    if write is not raw_sql_then_invalidate_model:  # else stored under a retired version
        assert stored is None or b"old" not in stored
    assert getattr(model.objects.get_cached(pk=obj.pk), name) == "new"
    assert getattr(model.objects.get_cached(**lookup), name) == "new"


def test_invalidations_leave_a_short_tombstone_where_lookup_fillers_look(raw_redis):
    from django_cachestrat import conf
    from django_cachestrat.invalidation import TOMBSTONE_MARGIN_MS
    from tests.models import PageStats, Tag

    def tombstone(obj):
        return raw_redis.pttl(keys.gone("cstest", options.get(type(obj)).label, obj.pk))

    lasts = int(conf.settings().LEASE_TIMEOUT * 1000) + TOMBSTONE_MARGIN_MS
    book = Book.objects.create(title="t", isbn="1")
    assert tombstone(book) == -2  # a new row: no reader can hold an older copy
    invalidate(book)
    assert 0 < tombstone(book) <= lasts
    tag, page = Tag.objects.create(name="t"), PageStats.objects.create(path="/t")
    invalidate(tag)  # no lookups: no lookup filler stores its rows
    invalidate(page)  # write-behind: a lookup filler stores only the pointer
    assert tombstone(tag) == tombstone(page) == -2


@pytest.mark.parametrize("create", ["create", "bulk_create"])
def test_a_lookup_filler_that_found_no_row_cannot_cache_that_after_a_create(monkeypatch, create):
    real = Strategy._lookup_db
    creates = [create]

    def read_then_create(strategy, *args):
        try:
            return real(strategy, *args)  # 1. the filler finds no row with the value
        finally:
            if creates:  # 2. before it stores "no such row", the row is created
                book = Book(title="made", isbn="later")
                if creates.pop() == "create":
                    book.save()
                else:
                    Book.objects.bulk_create([book])

    monkeypatch.setattr(Strategy, "_lookup_db", read_then_create)
    with pytest.raises(Book.DoesNotExist):  # 3. what it read; it must not be cached
        Book.objects.get_cached(isbn="later")
    assert Book.objects.get_cached(isbn="later").title == "made"

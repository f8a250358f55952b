import threading
from datetime import UTC, datetime
from decimal import Decimal

import django
import pytest
from django.db import IntegrityError
from django.db.models import F

from django_cachestrat import keys, options
from tests.models import Author, Book, Novel

pytestmark = pytest.mark.django_db(transaction=True)


def entry(raw_redis, model, pk):
    opts = options.get(model)
    return raw_redis.get(keys.entry("cstest", opts.label, pk))


def test_write_through_create_and_update_are_hits(django_assert_num_queries, events):
    a = Author.objects.create(
        name="Ann", email="ann@example.org", joined=datetime(2024, 1, 2, tzinfo=UTC)
    )
    with django_assert_num_queries(0):
        assert Author.objects.get_cached(pk=a.pk).joined == datetime(2024, 1, 2, tzinfo=UTC)
    a.name = "Anna"
    a.age = "41"  # as a form might leave it: stored as the database would return it
    a.save()
    with django_assert_num_queries(0):
        got = Author.objects.get_cached(pk=a.pk)
    assert (got.name, got.age) == ("Anna", 41)
    assert events("fill", Author) == 2


def test_write_through_with_update_fields_drops_the_row(raw_redis, django_assert_num_queries):
    a = Author.objects.create(name="Ann", email="ann@example.org")
    stale = Author.objects.get(pk=a.pk)
    Author.objects.filter(pk=a.pk).update(age=50)
    stale.name = "Changed"
    stale.save(update_fields=["name"])  # its age (0) is stale: must not be stored
    assert entry(raw_redis, Author, a.pk) is None
    got = Author.objects.get_cached(pk=a.pk)
    assert (got.name, got.age) == ("Changed", 50)


def test_write_through_with_an_expression_drops_the_row(raw_redis):
    a = Author.objects.create(name="Ann", email="ann@example.org", age=1)
    a.age = F("age") + 1
    a.save()
    if django.VERSION < (6,):
        # Django 6 reads an expression's value back (RETURNING); before, only the
        # database knows it.
        assert entry(raw_redis, Author, a.pk) is None
    assert Author.objects.get_cached(pk=a.pk).age == 2


def test_write_through_of_a_deferred_instance_drops_the_row(raw_redis):
    a = Author.objects.create(name="Ann", email="ann@example.org", bio="long")
    partial = Author.objects.only("name").get(pk=a.pk)
    partial.name = "B"
    partial.save()
    assert entry(raw_redis, Author, a.pk) is None
    assert Author.objects.get_cached(pk=a.pk).bio == "long"


def test_delete_removes_the_row(raw_redis):
    a = Author.objects.create(name="Ann", email="ann@example.org")
    assert entry(raw_redis, Author, a.pk) is not None
    pk = a.pk
    a.delete()
    assert entry(raw_redis, Author, pk) is None
    with pytest.raises(Author.DoesNotExist):
        Author.objects.get_cached(pk=pk)


def test_cache_aside_save_and_delete_drop_the_row(raw_redis, events):
    b = Book.objects.create(title="T", isbn="1")
    Book.objects.get_cached(pk=b.pk)
    assert entry(raw_redis, Book, b.pk) is not None
    b.title = "U"
    b.save()
    assert entry(raw_redis, Book, b.pk) is None
    assert Book.objects.get_cached(pk=b.pk).title == "U"
    pk = b.pk
    b.delete()
    assert entry(raw_redis, Book, pk) is None
    assert events("invalidate", Book) >= 3  # create, save, delete


def test_failed_save_takes_back_its_announcement(raw_redis):
    Author.objects.create(name="A", email="a@example.org")
    b = Author.objects.create(name="B", email="b@example.org")
    b.email = "a@example.org"
    with pytest.raises(IntegrityError):
        b.save()
    inflight, _ = keys.writes("cstest", "tests.author", b.pk)
    assert raw_redis.zcard(inflight) == 0
    # So the next save of the row is stored, not dropped as contended.
    fresh = Author.objects.get(pk=b.pk)
    fresh.name = "B2"
    fresh.save()
    assert Author.objects.get_cached(pk=b.pk).name == "B2"
    assert entry(raw_redis, Author, b.pk) is not None


def test_a_late_after_commit_step_never_leaves_the_older_row(raw_redis, monkeypatch):
    """W1 commits, but its after-commit step is delayed; W2 then saves and commits, and
    its step runs. When W1's step finally runs, the cache must not get W1's older row."""
    from django_cachestrat.strategies.write_through import WriteThrough

    a = Author.objects.create(name="v0", email="a@example.org")
    real_end = WriteThrough._end
    w1_committed = threading.Event()
    w2_done = threading.Event()

    def delayed_end(self, *args):
        if threading.current_thread().name == "w1":
            w1_committed.set()
            assert w2_done.wait(10)
        real_end(self, *args)

    monkeypatch.setattr(WriteThrough, "_end", delayed_end)

    def writer_one():
        from django.db import connection

        obj = Author.objects.get(pk=a.pk)
        obj.name = "w1"
        obj.save()
        connection.close()

    thread = threading.Thread(target=writer_one, name="w1")
    thread.start()
    assert w1_committed.wait(10)
    w2 = Author.objects.get(pk=a.pk)
    w2.name = "w2"
    w2.save()  # commits after W1 and stores its row at once
    w2_done.set()
    thread.join(10)
    assert Author.objects.get(pk=a.pk).name == "w2"
    assert Author.objects.get_cached(pk=a.pk).name == "w2"


def test_write_end_after_an_overlap_drops_the_row(raw_redis):
    """Step by step at the transport level: begin W1, begin W2, end W2, end W1."""
    from django_cachestrat import backends

    t = backends.get("default")
    version_key = keys.version("cstest", "tests.author")
    inflight, epoch_key = keys.writes("cstest", "tests.author", 1)
    entry_key = keys.entry("cstest", "tests.author", 1)
    lease_key = keys.lease("cstest", "tests.author", 1)
    gone_key = keys.gone("cstest", "tests.author", 1)
    ready_key = keys.fill("cstest", "tests.author", 1)[2]
    raw_redis.rpush(ready_key, b"v:old")  # what a fill before these writes pushed
    row_keys = (inflight, epoch_key, entry_key, lease_key, gone_key, ready_key)
    e1, c1, _ = t.write_begin(version_key, (inflight, epoch_key), "w1", 60)
    e2, c2, _ = t.write_begin(version_key, (inflight, epoch_key), "w2", 60)
    assert (c1, c2) == (False, True)
    assert t.write_end(version_key, row_keys, "w2", e2, c2, b"v:w2", 60, 3000) is False
    assert raw_redis.exists(ready_key) == 0  # no waiter can pop a value older than the write
    assert t.write_end(version_key, row_keys, "w1", e1, c1, b"v:w1", 60, 3000) is False
    assert raw_redis.get(entry_key) is None
    assert 0 < raw_redis.pttl(gone_key) <= 3000  # a drop leaves the row's tombstone
    # Sequential writes are stored.
    raw_redis.delete(gone_key)
    e3, c3, _ = t.write_begin(version_key, (inflight, epoch_key), "w3", 60)
    assert t.write_end(version_key, row_keys, "w3", e3, c3, b"v:w3", 60, 3000) is True
    assert raw_redis.get(entry_key) == b"v:w3"
    assert raw_redis.get(gone_key) is None  # a store leaves none


def test_a_writer_that_died_stops_counting_after_the_window(raw_redis):
    from django_cachestrat import backends

    t = backends.get("default")
    version_key = keys.version("cstest", "tests.author")
    pair = keys.writes("cstest", "tests.author", 7)
    t.write_begin(version_key, pair, "dead", 1)  # never ends
    import time

    time.sleep(1.1)
    _, contended, _ = t.write_begin(version_key, pair, "alive", 60)
    assert contended is False


def test_multi_table_inheritance_drops_parent_and_child(raw_redis, django_assert_num_queries):
    n = Novel.objects.create(title="N", isbn="n1", genre="sf")
    Book.objects.get_cached(pk=n.pk)
    Novel.objects.get_cached(pk=n.pk)
    n.title = "N2"
    n.save()
    assert Book.objects.get_cached(pk=n.pk).title == "N2"
    assert Novel.objects.get_cached(pk=n.pk).title == "N2"
    # A save through the parent must drop the child's entry too (it holds title).
    as_book = Book.objects.get(pk=n.pk)
    as_book.title = "N3"
    as_book.save()
    assert Novel.objects.get_cached(pk=n.pk).title == "N3"
    n.delete()
    with pytest.raises(Book.DoesNotExist):
        Book.objects.get_cached(pk=n.pk)


@pytest.mark.parametrize(
    ("field", "value"),
    [("joined", datetime(2024, 1, 2, 12, 0)), ("balance", Decimal("1.005"))],
)
def test_values_the_database_would_change_are_not_stored(raw_redis, field, value):
    import warnings

    a = Author.objects.create(name="A", email="a@example.org")
    setattr(a, field, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # Django's naive datetime warning
        a.save()
    assert entry(raw_redis, Author, a.pk) is None
    assert getattr(Author.objects.get_cached(pk=a.pk), field) == getattr(
        Author.objects.get(pk=a.pk), field
    )

import asyncio
import logging
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from django_cachestrat import conf, keys, options
from tests.conftest import nodes_of, pointer_pk, signed, unsigned
from tests.models import Author, AuthorProxy, Book, Novel, PageStats, Plain, Tag

pytestmark = pytest.mark.django_db(transaction=True)


def entry_key(model, pk):
    opts = options.get(model)
    return keys.entry("cstest", opts.label, pk)


@pytest.fixture
def book():
    return Book.objects.create(title="Dune", isbn="978-0441", pages=412, price=Decimal("9.99"))


def test_miss_then_hit_with_zero_queries(book, django_assert_num_queries, events):
    with django_assert_num_queries(1):
        first = Book.objects.get_cached(pk=book.pk)
    with django_assert_num_queries(0):
        second = Book.objects.get_cached(pk=book.pk)
    for got in (first, second):
        assert (got.pk, got.title, got.pages, got.price, got.uid) == (
            book.pk,
            "Dune",
            412,
            Decimal("9.99"),
            book.uid,
        )
        assert got._state.adding is False and got._state.db == "default"
    assert (events("miss", Book), events("fill", Book), events("hit", Book)) == (1, 1, 1)


def test_hit_is_a_full_instance_that_saves(book):
    Book.objects.get_cached(pk=book.pk)
    got = Book.objects.get_cached(pk=book.pk)
    got.pages = 500
    got.save()
    assert Book.objects.get(pk=book.pk).pages == 500


def test_pk_is_normalized(book, django_assert_num_queries):
    Book.objects.get_cached(pk=book.pk)
    with django_assert_num_queries(0):
        assert Book.objects.get_cached(pk=str(book.pk)).pk == book.pk
        assert Book.objects.get_cached(id=book.pk).pk == book.pk
    # An int for a text pk is made a str, as the database would; True is not an int pk.
    Tag.objects.create(name="7")
    assert Tag.objects.get_cached(pk=7).name == "7"
    assert Tag.objects.get_many_cached([7]).keys() == {"7"}
    with pytest.raises(ValueError, match="not a valid primary key"):
        Book.objects.get_cached(pk="seven")


def test_missing_row_raises_does_not_exist():
    with pytest.raises(Book.DoesNotExist):
        Book.objects.get_cached(pk=12345)
    with pytest.raises(Book.DoesNotExist):
        Book.objects.get_cached(pk=None)
    with pytest.raises(Book.DoesNotExist):
        Book.objects.get_cached(isbn="none")


def test_bad_lookups_are_clear_errors(book):
    with pytest.raises(ValueError, match=r"accepts pk, isbn; got 'title'"):
        Book.objects.get_cached(title="Dune")
    with pytest.raises(TypeError, match="exactly one lookup"):
        Book.objects.get_cached(pk=1, isbn="x")
    with pytest.raises(TypeError, match="exactly one lookup"):
        Book.objects.get_cached()
    with pytest.raises(ValueError, match="not a valid primary key"):
        Book.objects.get_cached(pk="abc")
    with pytest.raises(ValueError, match="expected a primary key value"):
        Book.objects.get_cached(pk=book)
    with pytest.raises(TypeError, match="iterable of pks"):
        Book.objects.get_many_cached(5)
    with pytest.raises(TypeError, match="iterable of pks"):
        Book.objects.get_many_cached("12")


def test_manager_on_an_uncached_model_is_an_error():
    from django.core.exceptions import ImproperlyConfigured

    from django_cachestrat import CachedManager

    manager = CachedManager()
    manager.model = Plain
    with pytest.raises(ImproperlyConfigured, match="no strategy mixin"):
        manager.get_cached(pk=1)
    # Bulk writes on it are plain Django.
    Plain.objects.create(name="x")
    qs = CachedManager.from_queryset  # noqa: F841
    assert manager.get_queryset().update(name="y") == 1


@pytest.mark.parametrize("strategy", ["cache-aside", "write-through"])
def test_a_cold_lookup_is_one_query_that_fills_the_pointer_and_the_row(
    strategy, raw_redis, django_assert_num_queries, events
):
    if strategy == "cache-aside":
        obj = Book.objects.create(title="Dune", isbn="978-0441")
        lookup, shown = {"isbn": "978-0441"}, "title"
    else:
        obj = Author.objects.create(name="Dune", email="dune@example.org")
        raw_redis.delete(entry_key(Author, obj.pk))  # evicted: the row is cold too
        lookup, shown = {"email": "dune@example.org"}, "name"
    model = type(obj)
    # On a ring, a row on another node than its pointer is not stored with the pointer: it
    # fills on its first read by pk (the second lookup's).
    ((field, value),) = lookup.items()
    pointer = keys.lookup("cstest", options.get(model).label, field, value)
    apart = len(nodes_of(pointer, entry_key(model, obj.pk))) > 1
    events.counts.clear()  # a write-through create stored the row: not this test's fill
    with django_assert_num_queries(1):  # by the value: the row read is the row stored
        first = model.objects.get_cached(**lookup)
    with django_assert_num_queries(1 if apart else 0):
        second = model.objects.get_cached(**lookup)
    with django_assert_num_queries(0):
        by_pk = model.objects.get_cached(pk=obj.pk)
    assert first.pk == second.pk == by_pk.pk == obj.pk
    assert getattr(first, shown) == getattr(second, shown) == getattr(by_pk, shown) == "Dune"
    counted = (events("miss", model), events("fill", model), events("hit", model))
    assert counted == (1 + apart, 1, 2 - apart)


def test_a_cold_lookup_of_a_cached_write_behind_row_selects_only_its_pk(raw_redis):
    page = PageStats.objects.create(path="/cold-pointer")
    PageStats.objects.increment_behind(page.pk, views=3)  # the view is cached, a write pending
    raw_redis.delete(keys.lookup("cstest", "tests.pagestats", "path", "/cold-pointer"))
    with CaptureQueriesContext(connection) as captured:
        got = PageStats.objects.get_cached(path="/cold-pointer")
    assert (got.pk, got.views) == (page.pk, 3)  # the pending write is in it
    sqls = [q["sql"] for q in captured]
    for word in ("BEGIN", "FOR UPDATE", "SAVEPOINT"):  # no write transaction for a read
        assert not any(word in sql.upper() for sql in sqls), sqls
    assert len(sqls) == 1, sqls
    assert re.match(
        r'SELECT "tests_pagestats"\."id"( AS "pk")? FROM "tests_pagestats" WHERE', sqls[0]
    )
    with CaptureQueriesContext(connection) as captured:
        assert PageStats.objects.get_cached(path="/cold-pointer").views == 3
    assert len(captured) == 0


def test_lookup_follows_a_changed_value(django_assert_num_queries):
    a = Author.objects.create(name="A", email="a@example.org")
    b = Author.objects.create(name="B", email="b@example.org")
    Author.objects.get_cached(email="a@example.org")
    # a gives up its email and b takes it: the old pointer leads to a row whose email
    # no longer matches, which is a miss, never a wrong row.
    a.email = "old@example.org"
    a.save()
    b.email = "a@example.org"
    b.save()
    assert Author.objects.get_cached(email="a@example.org").pk == b.pk
    assert Author.objects.get_cached(email="old@example.org").pk == a.pk
    with django_assert_num_queries(0):
        assert Author.objects.get_cached(email="a@example.org").name == "B"


def test_lookup_with_a_corrupted_pointer(book, raw_redis):
    Book.objects.get_cached(isbn="978-0441")
    pointer = keys.lookup("cstest", "tests.book", "isbn", "978-0441")
    raw_redis.set(pointer, b"\xff\xfe not a pk")
    assert Book.objects.get_cached(isbn="978-0441").pk == book.pk
    assert pointer_pk(pointer, raw_redis.get(pointer)) == str(book.pk).encode()


def test_get_many_cached(book, django_assert_num_queries, events):
    other = Book.objects.create(title="Emma", isbn="2")
    Book.objects.get_cached(pk=book.pk)
    # One query for the misses; on a ring, one for each node that missed some.
    missed = nodes_of(entry_key(Book, other.pk), entry_key(Book, 999999))
    with django_assert_num_queries(len(missed)):
        got = Book.objects.get_many_cached([other.pk, 999999, book.pk, str(other.pk)])
    assert list(got) == [other.pk, book.pk]
    assert got[other.pk].title == "Emma" and got[book.pk].title == "Dune"
    with django_assert_num_queries(0):
        again = Book.objects.get_many_cached([book.pk, other.pk])
    assert list(again) == [book.pk, other.pk]
    assert Book.objects.get_many_cached([]) == {}


def test_get_many_cached_all_hits_is_one_round_trip(raw_redis, sends):
    pks = [Book.objects.create(title=f"b{i}", isbn=str(i)).pk for i in range(100)]
    Book.objects.get_many_cached(pks)
    sends.clear()
    got = Book.objects.get_many_cached(pks)
    assert len(got) == 100
    # One MGET (on a ring or a cluster, one a node holding some of the rows).
    assert len(sends) == len(nodes_of(*(entry_key(Book, pk) for pk in pks)))


def test_single_hit_is_one_round_trip(book, raw_redis):
    Book.objects.get_cached(pk=book.pk)
    before = raw_redis.info("commandstats")
    Book.objects.get_cached(pk=book.pk)
    after = raw_redis.info("commandstats")
    changed = {k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"] for k in after}
    changed = {k: v for k, v in changed.items() if v and k != "cmdstat_info"}
    assert changed == {"cmdstat_mget": 1}


def test_async_reads(book):
    from asgiref.sync import sync_to_async
    from django.db import connections

    async def read():
        one = await Book.objects.aget_cached(pk=book.pk)
        many = await Book.objects.aget_many_cached([book.pk])
        await sync_to_async(connections.close_all)()  # the executor thread's connection
        return one, many

    one, many = asyncio.run(read())
    assert one.title == "Dune" and many[book.pk].title == "Dune"


def test_proxy_reads_share_entries(django_assert_num_queries):
    a = Author.objects.create(name="P", email="p@example.org")
    with django_assert_num_queries(0):
        got = AuthorProxy.objects.get_cached(pk=a.pk)
    assert type(got) is AuthorProxy and got.name == "P"
    got.name = "Q"
    got.save()
    with django_assert_num_queries(0):
        assert Author.objects.get_cached(pk=a.pk).name == "Q"


@pytest.mark.parametrize(
    "name",
    ["plain", "with space", "ünïcödé ✓", "{brace}:colon", "x" * 10_000, "#hash-like"],
)
def test_keys_for_any_pk_value(name, raw_redis, django_assert_num_queries):
    Tag.objects.create(name=name, weight=3)
    Tag.objects.get_cached(pk=name)
    with django_assert_num_queries(0):
        assert Tag.objects.get_cached(pk=name).weight == 3
    for key in raw_redis.scan_iter("cstest:*tests.tag*"):
        assert len(key) < 200
        assert b" " not in key


def test_corrupted_bytes_are_a_logged_miss(book, raw_redis, events, caplog):
    Book.objects.get_cached(pk=book.pk)
    key = entry_key(Book, book.pk)
    # The version the entry was filled under (on a ring, its node's).
    version = unsigned(key, raw_redis.get(key)).split(b":")[1]
    head = b"%s:%s:%d:0:" % (options.get(Book).fingerprint.encode(), version, 2 * 10**12)
    # Signed as the app signs (a MAC that verifies), so what fails is the payload.
    junk = [signed(key, head + b"not pickle"), signed(key, head + b"\x80\x05K\x01.")]
    for data in [b"garbage", *junk, b""]:
        raw_redis.set(key, data)
        with caplog.at_level(logging.WARNING, logger="django_cachestrat"):
            assert Book.objects.get_cached(pk=book.pk).title == "Dune"
    assert events("error", Book) == 4
    assert "unreadable entry" in caplog.text
    # The miss refilled the entry with good bytes.
    assert Book.objects.get_cached(pk=book.pk).title == "Dune"


def test_foreign_bytes_are_a_logged_miss_and_other_versions_or_schemas_a_silent_one(
    book, raw_redis, events, caplog
):
    Book.objects.get_cached(pk=book.pk)
    key = entry_key(Book, book.pk)
    fp, version, rest = unsigned(key, raw_redis.get(key)).split(b":", 2)
    older = b"%d" % (int(version) - 1)
    # An older version's entry (invalidate_model) and another schema's (a deploy): no error.
    for other in [b":".join([fp, older, rest]), b":".join([b"0123456789ab", version, rest])]:
        raw_redis.set(key, signed(key, other))
        with caplog.at_level(logging.WARNING, logger="django_cachestrat"):
            assert Book.objects.get_cached(pk=book.pk).title == "Dune"
        assert unsigned(key, raw_redis.get(key)).startswith(b"%s:%s:" % (fp, version))  # refilled
    assert events("error", Book) == 0
    assert "unreadable entry" not in caplog.text
    # Bytes that are no entry at all: each is logged and sent as cache_error.
    junk = [b"garbage", b"", b"1:2:3", version + b":0:0:" + rest, b"zz:" + version + b":0:0:"]
    for n, data in enumerate(junk, 1):
        raw_redis.set(key, data)
        with caplog.at_level(logging.WARNING, logger="django_cachestrat"):
            assert Book.objects.get_cached(pk=book.pk).title == "Dune"
        assert events("error", Book) == n
    assert "no entry header" in caplog.text


def test_wrong_number_of_values_is_a_miss(book, raw_redis, events):
    Book.objects.get_cached(pk=book.pk)
    key = entry_key(Book, book.pk)
    # The version the entry was filled under (on a ring, its node's).
    version = unsigned(key, raw_redis.get(key)).split(b":")[1]
    head = b"%s:%s:%d:0:" % (options.get(Book).fingerprint.encode(), version, 2 * 10**12)
    raw_redis.set(key, signed(key, head + conf.settings().serializer.dumps((1, 2))))
    assert Book.objects.get_cached(pk=book.pk).title == "Dune"
    assert events("error", Book) == 1


def test_schema_change_makes_old_entries_misses(book, django_assert_num_queries):
    from django_cachestrat import codec

    Book.objects.get_cached(pk=book.pk)
    real = codec.fingerprint(Book)
    assert options.get(Book).fingerprint == real
    assert codec.fingerprint(Novel) != real  # other fields, another fingerprint
    # After a deploy that changed the fields, the new code computes another fingerprint.
    options.register(Book, codec.fingerprint(Novel))
    try:
        with django_assert_num_queries(1):
            assert Book.objects.get_cached(pk=book.pk).title == "Dune"
        with django_assert_num_queries(0):
            assert Book.objects.get_cached(pk=book.pk).title == "Dune"
    finally:
        options.register(Book, real)


def test_other_serializer_reads_its_own_bytes(book, raw_redis, django_assert_num_queries):
    import pickle

    custom = {**settings.CACHESTRAT, "SERIALIZER": "tests.serializers.ReversedPickle"}
    with override_settings(CACHESTRAT=custom):
        Book.objects.get_cached(pk=book.pk)
        with django_assert_num_queries(0):
            assert Book.objects.get_cached(pk=book.pk).title == "Dune"
        payload = raw_redis.get(entry_key(Book, book.pk)).partition(b":")[2]
        assert pickle.loads(payload[::-1])[1] == "Dune"


def test_disabled_reads_the_database(book, django_assert_num_queries, raw_redis):
    with override_settings(CACHESTRAT={"KEY_PREFIX": "cstest", "ENABLED": False}):
        with django_assert_num_queries(1):
            assert Book.objects.get_cached(pk=book.pk).title == "Dune"
        with django_assert_num_queries(1):
            assert Book.objects.get_many_cached([book.pk])[book.pk].title == "Dune"
        with django_assert_num_queries(1):
            Book.objects.get_cached(isbn=book.isbn)
    assert raw_redis.get(entry_key(Book, book.pk)) is None


def test_ttl_is_jittered_below_the_model_ttl(raw_redis):
    authors = [Author.objects.create(name=str(i), email=f"{i}@x.org") for i in range(30)]
    ttls = {raw_redis.ttl(entry_key(Author, a.pk)) for a in authors}
    assert all(540 <= t <= 600 for t in ttls)
    assert len(ttls) > 1


def test_hits_build_instances_like_from_db(book, monkeypatch):
    from django.db.models.signals import post_init

    Book.objects.get_cached(pk=book.pk)
    built = []
    real_init = Book.__init__

    def counting_init(self, *args, **kwargs):
        built.append(self)
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(Book, "__init__", counting_init)
    fast = Book.objects.get_cached(pk=book.pk)
    assert built == []  # nothing listens: attributes are set directly
    assert fast.__dict__.keys() >= {f.attname for f in Book._meta.concrete_fields}
    assert fast == Book.objects.get(pk=book.pk)
    assert fast._state.db == "default" and not fast._state.adding
    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance.pk)

    post_init.connect(receiver, sender=Book)
    try:
        Book.objects.get_cached(pk=book.pk)
    finally:
        post_init.disconnect(receiver, sender=Book)
    assert seen == [book.pk]  # a receiver is honoured: the instance went through __init__


def test_datetimes_and_decimals_come_back_equal_and_typed(django_assert_num_queries):
    from datetime import timedelta, timezone

    moment = datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)
    plus_two = moment.astimezone(timezone(timedelta(hours=2)))
    a = Author.objects.create(
        name="D", email="d@example.org", joined=plus_two, balance=Decimal("-0.10")
    )
    Author.objects.create(name="N", email="n@example.org", joined=None)
    b = Book.objects.create(title="x", isbn="x", price=Decimal("123456.78"))
    Book.objects.get_cached(pk=b.pk)
    with django_assert_num_queries(0):
        got = Author.objects.get_cached(pk=a.pk)
        book = Book.objects.get_cached(pk=b.pk)
    assert got.joined == moment and got.joined.utcoffset() == timedelta(0)
    assert got.balance == Decimal("-0.10") and isinstance(got.balance, Decimal)
    assert book.price == Decimal("123456.78")
    assert Author.objects.get_cached(email="n@example.org").joined is None
    fresh = Author.objects.get(pk=a.pk)
    assert (fresh.joined, fresh.balance) == (got.joined, got.balance)

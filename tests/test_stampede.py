"""Thundering herds: one database query per cold key, however many readers arrive."""

import re
import subprocess
import sys
import threading
import time

import pytest
from django.db import connection, connections
from django.test import override_settings

from django_cachestrat import invalidate, keys, options
from django_cachestrat.strategies.base import Strategy
from tests import redis_server
from tests.conftest import child_env, nodes_of, signed, unsigned
from tests.models import Book, Headline, PageStats, Quote

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


class Herd:
    """``size`` threads that run ``read`` at the same instant, round after round, and count
    the SQL queries each round sends to ``table``."""

    def __init__(self, size, read, table):
        self.size = size
        self.read = read
        self.table = table
        self.lock = threading.Lock()

    def round(self):
        barrier = threading.Barrier(self.size)
        results, queries = [], []

        def count(execute, sql, params, many, context):
            if self.table in sql:
                with self.lock:
                    queries.append(sql)
            return execute(sql, params, many, context)

        def run():
            try:
                with connection.execute_wrapper(count):
                    barrier.wait(10)
                    try:
                        outcome = self.read()
                    except Exception as exc:
                        outcome = exc
                with self.lock:
                    results.append(outcome)
            finally:
                connections.close_all()

        threads = [threading.Thread(target=run) for _ in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return results, queries


def row_apart(obj, field):
    """1 when the pointer of ``obj``'s value of ``field`` is on another node than its row (a
    ring, a cluster), else 0: the row is then not stored with the pointer, and the readers'
    first read by pk fills it (single-flight too: one more query)."""
    label = options.get(type(obj)).label
    pointer = keys.lookup("cstest", label, field, getattr(obj, field))
    return int(len(nodes_of(pointer, keys.entry("cstest", label, obj.pk))) > 1)


@pytest.fixture
def book():
    return Book.objects.create(title="hot", isbn="hot")


def test_32_threads_on_a_cold_key_send_one_query(book, events):
    herd = Herd(32, lambda: Book.objects.get_cached(pk=book.pk), "tests_book")
    for _ in range(20):
        invalidate(book)
        results, queries = herd.round()
        assert len(queries) == 1, queries
        assert len(results) == 32
        assert all(isinstance(r, Book) and r.title == "hot" for r in results)
    assert events("wait_timeout", Book) == 0


@pytest.mark.parametrize("strategy", ["cache-aside", "write-behind"])
def test_32_threads_on_a_cold_lookup_send_one_query(strategy, django_assert_num_queries):
    if strategy == "cache-aside":
        obj = Book.objects.create(title="hot", isbn="hot")
        lookup = {"isbn": "hot"}
    else:
        obj = PageStats.objects.create(path="/hot")
        PageStats.objects.increment_behind(obj.pk, views=5)  # the view is cached, a write pending
        lookup = {"path": "/hot"}
    model = type(obj)
    herd = Herd(32, lambda: model.objects.get_cached(**lookup), model._meta.db_table)
    results, queries = herd.round()
    # One query by the value, by whichever reader took the pointer's lease. It reads the row
    # (stored with the pointer), or on a write-behind model only its pk (the row is the view).
    assert len(queries) == 1 + (row_apart(obj, "isbn") if strategy == "cache-aside" else 0), queries
    assert all(isinstance(r, model) and r.pk == obj.pk for r in results), results
    if strategy == "write-behind":
        assert re.match(r'SELECT "tests_pagestats"\."id"( AS "pk")? FROM', queries[0])
        assert all(r.views == 5 for r in results)
    with django_assert_num_queries(0):  # the pointer and the row are cached
        assert model.objects.get_cached(**lookup).pk == obj.pk


def test_32_threads_on_a_missing_row_send_one_query():
    herd = Herd(32, lambda: Book.objects.get_cached(pk=424242), "tests_book")
    results, queries = herd.round()
    assert len(queries) == 1
    assert all(isinstance(r, Book.DoesNotExist) for r in results)
    # The answer is cached briefly; creating the row drops it at once.
    Book.objects.create(pk=424242, title="now", isbn="now")
    assert Book.objects.get_cached(pk=424242).title == "now"


def test_a_missing_lookup_is_cached_until_a_row_takes_the_value():
    herd = Herd(16, lambda: Book.objects.get_cached(isbn="later"), "tests_book")
    results, queries = herd.round()
    assert len(queries) == 1
    assert all(isinstance(r, Book.DoesNotExist) for r in results)
    Book.objects.create(title="later", isbn="later")
    assert Book.objects.get_cached(isbn="later").title == "later"


def test_get_many_cached_herd_sends_one_query_per_cold_key(book):
    other = Book.objects.create(title="other", isbn="other")
    herd = Herd(16, lambda: Book.objects.get_many_cached([book.pk, other.pk]), "tests_book")
    results, queries = herd.round()
    assert 1 <= len(queries) <= 2  # one per key at most (one when a reader leases both)
    assert all(set(r) == {book.pk, other.pk} for r in results)


def test_protection_off_lets_the_herd_through(book, settings):
    config = {**settings.CACHESTRAT, "FILL_WAIT": 0}
    with override_settings(CACHESTRAT=config):
        herd = Herd(16, lambda: Book.objects.get_cached(pk=book.pk), "tests_book")
        _, queries = herd.round()
    assert len(queries) > 1


@pytest.mark.parametrize("strategy", ["cache-aside", "write-behind", "lookup"])
def test_a_filler_that_raises_hands_over_to_exactly_one_waiter(strategy, monkeypatch, events):
    from django_cachestrat.strategies.write_behind import WriteBehind

    # What reads the database on a miss: of a row, of a write-behind view, of a lookup.
    if strategy == "cache-aside":
        model, obj = Book, Book.objects.create(title="hot", isbn="hot")
        owner, method, lookup = Strategy, "_from_db", {"pk": obj.pk}
    elif strategy == "write-behind":
        model, obj = PageStats, PageStats.objects.create(path="/hot")
        invalidate(obj)  # cold: a new row's view is stored when its insert commits
        owner, method, lookup = WriteBehind, "_overlay", {"pk": obj.pk}
    else:
        model, obj = Book, Book.objects.create(title="hot", isbn="hot")
        owner, method, lookup = Strategy, "_lookup_db", {"isbn": "hot"}
    real = getattr(owner, method)
    failed = []

    def flaky(self, *args):
        with threading.Lock():
            first = not failed
            failed.append(1)
        if first:
            time.sleep(0.2)  # let the others start waiting
            raise RuntimeError("database hiccup")
        return real(self, *args)

    monkeypatch.setattr(owner, method, flaky)
    herd = Herd(32, lambda: model.objects.get_cached(**lookup), model._meta.db_table)
    results, queries = herd.round()
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 1 and "hiccup" in str(errors[0])
    assert sum(isinstance(r, model) for r in results) == 31
    # Exactly one waiter took over and filled (and, for a lookup whose row is apart, one
    # reader filled the row by pk).
    assert len(queries) == 1 + (row_apart(obj, "isbn") if strategy == "lookup" else 0)
    assert events("wait_timeout", model) == 0  # woken by the release, not by the bound


def test_a_dead_fillers_lease_lapses_and_one_waiter_fills(book, raw_redis, settings, events):
    config = {**settings.CACHESTRAT, "LEASE_TIMEOUT": 0.5, "FILL_WAIT": 5.0}
    lease = keys.lease("cstest", "tests.book", book.pk)
    with override_settings(CACHESTRAT=config):
        raw_redis.set(lease, "a-process-that-died", px=500)
        herd = Herd(16, lambda: Book.objects.get_cached(pk=book.pk), "tests_book")
        results, queries = herd.round()
    assert len(queries) == 1
    assert all(isinstance(r, Book) for r in results)
    assert events("wait_timeout", Book) == 0


def test_no_reader_waits_longer_than_the_bound(book, raw_redis, settings, events):
    config = {**settings.CACHESTRAT, "LEASE_TIMEOUT": 30.0, "FILL_WAIT": 0.3}
    lease = keys.lease("cstest", "tests.book", book.pk)
    with override_settings(CACHESTRAT=config):
        raw_redis.set(lease, "a-stuck-filler", px=30_000)
        herd = Herd(8, lambda: Book.objects.get_cached(pk=book.pk), "tests_book")
        results, queries = herd.round()
    assert all(isinstance(r, Book) for r in results)
    assert len(queries) == 8  # each gave up waiting and read the database itself
    assert events("wait_timeout", Book) == 8


# -- write-behind models: their views fill single-flight too --------------------------


@pytest.fixture
def hot_page():
    page = PageStats.objects.create(path="/hot")
    invalidate(page)  # cold: a new row's view is stored when its insert commits
    return page


def test_32_threads_on_a_cold_write_behind_row_send_one_query(hot_page, events):
    # With a write pending: the view is rebuilt from the database plus that write.
    PageStats.objects.increment_behind(hot_page.pk, views=5)
    herd = Herd(32, lambda: PageStats.objects.get_cached(pk=hot_page.pk), "tests_pagestats")
    for _ in range(10):
        invalidate(hot_page)
        results, queries = herd.round()
        assert len(queries) == 1, queries
        assert all(isinstance(r, PageStats) and r.views == 5 for r in results), results
    assert events("wait_timeout", PageStats) == 0


def test_32_threads_on_a_missing_write_behind_row_send_one_query():
    herd = Herd(32, lambda: PageStats.objects.get_cached(pk=424242), "tests_pagestats")
    results, queries = herd.round()
    assert len(queries) == 1
    assert all(isinstance(r, PageStats.DoesNotExist) for r in results)
    with pytest.raises(PageStats.DoesNotExist):  # nothing to add to either
        PageStats.objects.increment_behind(424242, views=1)
    PageStats.objects.create(pk=424242, path="/now")
    assert PageStats.objects.get_cached(pk=424242).path == "/now"
    PageStats.objects.increment_behind(424242, views=2)
    assert PageStats.objects.get_cached(pk=424242).views == 2


def test_write_behind_herd_protection_off_and_bounded_waits(hot_page, raw_redis, settings, events):
    read = lambda: PageStats.objects.get_cached(pk=hot_page.pk)  # noqa: E731
    with override_settings(CACHESTRAT={**settings.CACHESTRAT, "FILL_WAIT": 0}):
        _, queries = Herd(16, read, "tests_pagestats").round()
    assert len(queries) > 1
    invalidate(hot_page)
    lease = keys.lease("cstest", "tests.pagestats", hot_page.pk)
    stuck = {**settings.CACHESTRAT, "LEASE_TIMEOUT": 30.0, "FILL_WAIT": 0.3}
    with override_settings(CACHESTRAT=stuck):
        raw_redis.set(lease, "a-stuck-filler", px=30_000)
        results, queries = Herd(8, read, "tests_pagestats").round()
    assert all(isinstance(r, PageStats) for r in results)
    assert len(queries) == 8  # each gave up waiting and read the database itself
    assert events("wait_timeout", PageStats) == 8


def test_without_negative_caching_a_missing_write_behind_row_is_read_each_time(settings):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with override_settings(CACHESTRAT={**settings.CACHESTRAT, "NEGATIVE_TTL": 0}):
        with CaptureQueriesContext(connection) as queries:
            for _ in range(3):
                with pytest.raises(PageStats.DoesNotExist):
                    PageStats.objects.get_cached(pk=515151)
    assert len(queries) == 3


PROCESS_READER = """
import os, sys, django
django.setup()
import redis
from django.conf import settings
from django.db import connection
from tests.models import Book
# The test's own signals, on the suite's server (not the cache: it may be a cluster).
client = redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=None)
pk, rounds, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
for n in range(rounds):
    client.blpop([f"cstest:herd:{name}:go:{n}"], 30)
    seen = []
    with connection.execute_wrapper(lambda ex, sql, *a: seen.append(sql) or ex(sql, *a)):
        assert Book.objects.get_cached(pk=pk).title == "hot"
    client.rpush(f"cstest:herd:{name}:done:{n}", sum("tests_book" in q for q in seen))
"""


def test_8_processes_on_a_cold_key_send_one_query(book):
    import redis

    raw_redis = redis.Redis.from_url(redis_server.url(), socket_timeout=None)
    rounds, name = 20, f"p{book.pk}"
    Book.objects.get_cached(pk=book.pk)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS_READER, str(book.pk), str(rounds), name],
            env=child_env(),
        )
        for _ in range(8)
    ]
    try:
        for n in range(rounds):
            invalidate(book)
            raw_redis.rpush(f"cstest:herd:{name}:go:{n}", *[1] * 8)
            counts = [
                int(raw_redis.blpop([f"cstest:herd:{name}:done:{n}"], 60)[1]) for _ in range(8)
            ]
            assert sum(counts) == 1, (n, counts)
    finally:
        for p in procs:
            p.wait(60)
    assert all(p.returncode == 0 for p in procs)


def _age(raw_redis, model, pk, *, expires_in_ms, delta_ms=0):
    """Rewrite an entry's header as if it had been filled long ago."""
    opts = options.get(model)
    key = keys.entry("cstest", opts.label, pk)
    fp, version, _, _, payload = unsigned(key, raw_redis.get(key)).split(b":", 4)
    expires = int(time.time() * 1000) + expires_in_ms
    aged = b"%s:%s:%d:%d:%s" % (fp, version, expires, delta_ms, payload)
    raw_redis.set(key, signed(key, aged), keepttl=True)


def test_stale_rows_are_served_while_one_reader_refreshes(raw_redis, monkeypatch, events):
    headline = Headline.objects.create(text="old")
    Headline.objects.get_cached(pk=headline.pk)
    Headline.objects.filter(pk=headline.pk).update(text="new")  # through the ORM: invalidates
    Headline.objects.get_cached(pk=headline.pk)
    raw_redis_entry = keys.entry("cstest", "tests.headline", headline.pk)
    assert raw_redis.ttl(raw_redis_entry) > 50  # kept for the stale window
    # Pretend the entry expired a moment ago, and the row changed behind our back.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE tests_headline SET text = 'newer'")
    _age(raw_redis, Headline, headline.pk, expires_in_ms=-10)
    release = threading.Event()
    real = Strategy._from_db

    def slow(self, model, using, pks):
        if model is Headline:
            release.wait(10)
        return real(self, model, using, pks)

    monkeypatch.setattr(Strategy, "_from_db", slow)
    refresher = threading.Thread(
        target=lambda: (Headline.objects.get_cached(pk=headline.pk), connections.close_all())
    )
    refresher.start()
    time.sleep(0.2)  # it holds the lease and is reading
    served = []
    with connection.execute_wrapper(lambda ex, sql, *a: served.append(sql) or ex(sql, *a)):
        for _ in range(5):
            assert Headline.objects.get_cached(pk=headline.pk).text == "new"  # stale, no query
    assert served == []
    assert events("stale", Headline) == 5
    release.set()
    refresher.join(10)
    assert Headline.objects.get_cached(pk=headline.pk).text == "newer"


def test_an_invalidated_row_is_never_served_stale(raw_redis):
    headline = Headline.objects.create(text="old")
    Headline.objects.get_cached(pk=headline.pk)
    _age(raw_redis, Headline, headline.pk, expires_in_ms=-10)
    headline.text = "written"
    headline.save()  # invalidates: the stale value is gone, not served
    assert Headline.objects.get_cached(pk=headline.pk).text == "written"


def test_early_refresh_refreshes_before_expiry(raw_redis, events):
    quote = Quote.objects.create(text="q")
    Quote.objects.get_cached(pk=quote.pk)
    misses, fills = events("miss", Quote), events("fill", Quote)
    deadline = time.monotonic() + 2.5  # well past the 1 s TTL
    while time.monotonic() < deadline:
        assert Quote.objects.get_cached(pk=quote.pk).text == "q"
        time.sleep(0.002)
    # Refreshed many times, and never a miss: it never expired.
    assert events("fill", Quote) - fills >= 2
    assert events("miss", Quote) == misses


def test_a_waiter_makes_three_round_trips(book, raw_redis, monkeypatch, django_assert_num_queries):
    """Read, lease (held: counted as a waiter), BLPOP that brings the entry: no WAIT."""
    from redis.connection import AbstractConnection

    from django_cachestrat import backends
    from django_cachestrat.backends.scripts import REGISTRY

    for script in REGISTRY.values():  # as in a running app: no SCRIPT LOAD to count
        raw_redis.script_load(script.source)
    opts = options.get(Book)
    node = backends.get("default").node(keys.entry("cstest", opts.label, book.pk))
    node.version(keys.version("cstest", opts.label))  # as after any fill
    invalidate(book)
    lease, waiters, _ = keys.fill("cstest", opts.label, book.pk)
    raw_redis.set(lease, "filler", px=10_000)  # another reader fills: this one waits
    sent, real = [], AbstractConnection.send_packed_command
    waiter = threading.get_ident()

    def counting(self, command, *args, **kwargs):
        if threading.get_ident() == waiter:
            sent.append(command)
        return real(self, command, *args, **kwargs)

    def fill_when_counted():
        deadline = time.monotonic() + 5
        while raw_redis.get(waiters) != b"1" and time.monotonic() < deadline:
            time.sleep(0.01)
        entry = codec_entry(Book.objects.get(pk=book.pk))  # what a filler would store
        node.fill_many(
            [(keys.fill("cstest", opts.label, book.pk), entry_key(book.pk), entry, 60)], "filler"
        )

    filler = threading.Thread(target=fill_when_counted)
    filler.start()
    monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)
    with django_assert_num_queries(0):
        assert Book.objects.get_cached(pk=book.pk).title == "hot"
    monkeypatch.undo()
    filler.join(10)
    command = re.compile(rb"\r\n\$\d+\r\n([A-Za-z]+)")
    names = [command.search(b"".join(c) if isinstance(c, list) else c).group(1) for c in sent]
    assert names == [b"MGET", b"EVALSHA", b"BLPOP"]


def entry_key(pk):
    opts = options.get(Book)
    return keys.entry("cstest", opts.label, pk)


def codec_entry(obj):
    from django_cachestrat import backends, codec

    node = backends.get("default").node(entry_key(obj.pk))  # its node's version
    version = node.version(keys.version("cstest", options.get(Book).label))
    expires = int(time.time() * 1000) + 60_000
    return codec.encode(options.get(Book), version, obj, expires=expires)


def test_an_invalidation_drops_what_fills_pushed_for_waiters(book, raw_redis):
    """A value left on a ready list (its waiter gave up) must not outlive a write."""
    Book.objects.get_cached(pk=book.pk)
    ready = keys.fill("cstest", options.get(Book).label, book.pk)[2]
    raw_redis.rpush(ready, raw_redis.get(entry_key(book.pk)))
    book.title = "changed"
    book.save()
    assert raw_redis.exists(ready) == 0
    assert Book.objects.get_cached(pk=book.pk).title == "changed"

import logging
import os
import signal
import socket
import threading

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_cachestrat import backends, invalidate, invalidate_model
from tests.models import Author, Book, PageStats
from tests.redis_server import Server, caches_at, unreachable_caches

pytestmark = pytest.mark.django_db(transaction=True)


def cachestrat(**extra):
    return {"KEY_PREFIX": "cstest", **extra}


@pytest.fixture
def own_redis():
    server = Server().start()
    with override_settings(
        CACHES=caches_at(server.url), CACHESTRAT=cachestrat(FAILURE_COOLDOWN=0.3)
    ):
        yield server
    server.stop()


@pytest.fixture
def dead_redis():
    with override_settings(CACHES=unreachable_caches()):
        yield


def test_everything_works_against_the_database_when_redis_is_down(dead_redis, caplog):
    with caplog.at_level(logging.ERROR, logger="django_cachestrat"):
        a = Author.objects.create(name="A", email="a@example.org")
        b = Book.objects.create(title="B", isbn="1", author=a)
        for _ in range(5):
            assert Author.objects.get_cached(pk=a.pk).name == "A"
            assert Author.objects.get_cached(email="a@example.org").pk == a.pk
            assert Book.objects.get_many_cached([b.pk])[b.pk].title == "B"
        a.name = "A2"
        a.save()
        assert Author.objects.get_cached(pk=a.pk).name == "A2"
        Book.objects.filter(pk=b.pk).update(title="B2")
        assert Book.objects.get_cached(pk=b.pk).title == "B2"
        invalidate(b)
        invalidate_model(Book)
        b.delete()
        with pytest.raises(Book.DoesNotExist):
            Book.objects.get_cached(pk=b.pk)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # once per episode
    assert "Redis failed" in errors[0].getMessage()


def test_invalidate_command_says_when_redis_is_down(dead_redis):
    book = Book.objects.create(title="B", isbn="1")
    with pytest.raises(CommandError, match="Redis could not be reached"):
        call_command("cachestrat_invalidate", "tests.Book", str(book.pk))


class Blackhole:
    """Accepts connections and never answers: a hung Redis. Counts connection attempts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_breaker_stops_calling_a_hung_redis():
    hole = Blackhole()
    book = Book.objects.create(title="B", isbn="1")
    try:
        settings = cachestrat(FAILURE_COOLDOWN=60.0)
        with override_settings(
            CACHES=caches_at(f"redis://127.0.0.1:{hole.port}/0", 0.2), CACHESTRAT=settings
        ):
            assert Book.objects.get_cached(pk=book.pk).title == "B"  # times out once
            tried = len(hole.accepted)
            assert tried >= 1
            for _ in range(20):
                assert Book.objects.get_cached(pk=book.pk).title == "B"
                book.save()
            assert len(hole.accepted) == tried  # the breaker kept every later call off the wire
            assert backends.get("default").available is False
    finally:
        hole.close()


def test_redis_restarted_without_its_data(own_redis, django_assert_num_queries):
    a = Author.objects.create(name="A", email="a@example.org")
    b = Book.objects.create(title="B", isbn="1")
    Book.objects.get_cached(pk=b.pk)
    own_redis.restart()  # empty: no persistence; scripts are gone too
    assert Book.objects.get_cached(pk=b.pk).title == "B"  # the first call may trip the breaker
    import time

    time.sleep(0.35)  # past the cooldown
    assert Book.objects.get_cached(pk=b.pk).title == "B"
    with django_assert_num_queries(0):
        assert Book.objects.get_cached(pk=b.pk).title == "B"
    a.name = "A2"
    a.save()
    with django_assert_num_queries(0):
        assert Author.objects.get_cached(pk=a.pk).name == "A2"


def test_invalidations_missed_during_an_outage_are_replayed(own_redis, caplog):
    book = Book.objects.create(title="old", isbn="1")
    author = Author.objects.create(name="old", email="a@example.org")
    Book.objects.get_cached(pk=book.pk)
    # Redis hangs (a partition: its data survives), while the rows change.
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        book.title = "new"
        book.save()
        author.name = "new"
        author.save()
        invalidate_model(Book)
        assert Book.objects.get_cached(pk=book.pk).title == "new"  # from the database
        assert backends.get("default").pending_invalidations >= 3
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    import time

    time.sleep(0.35)
    with caplog.at_level(logging.WARNING, logger="django_cachestrat"):
        # Without the replay these would be the cached "old" rows.
        assert Book.objects.get_cached(pk=book.pk).title == "new"
        assert Author.objects.get_cached(pk=author.pk).name == "new"
    assert "replayed" in caplog.text
    assert backends.get("default").pending_invalidations == 0


def test_pending_invalidations_are_bounded(own_redis):
    books = [Book.objects.create(title="old", isbn=str(i)) for i in range(5)]
    Book.objects.get_many_cached([b.pk for b in books])
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        with override_settings(
            CACHESTRAT=cachestrat(FAILURE_COOLDOWN=0.3, MAX_PENDING_INVALIDATIONS=2)
        ):
            for b in books:
                b.title = "new"
                b.save()
            # More than it may keep one by one: the whole model is bumped instead (Book,
            # and Novel, whose entries hold Book's columns).
            assert backends.get("default").pending_invalidations == 2
            os.kill(own_redis.process.pid, signal.SIGCONT)
            import time

            time.sleep(0.35)
            got = Book.objects.get_many_cached([b.pk for b in books])
            assert {o.title for o in got.values()} == {"new"}
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)


def test_replay_that_fails_is_kept(own_redis):
    book = Book.objects.create(title="old", isbn="1")
    Book.objects.get_cached(pk=book.pk)
    transport = backends.get("default")
    own_redis.kill()
    book.title = "new"
    book.save()
    invalidate_model(Book)
    import time

    time.sleep(0.35)
    assert Book.objects.get_cached(pk=book.pk).title == "new"  # probe fails: replay kept
    assert transport.pending_invalidations >= 2
    own_redis.start()
    time.sleep(0.35)
    assert Book.objects.get_cached(pk=book.pk).title == "new"
    assert transport.pending_invalidations == 0


def test_a_value_redis_py_cannot_send_is_an_error_not_an_outage():
    from redis.exceptions import DataError

    transport = backends.get("default")
    with pytest.raises(DataError):
        transport.execute([("SET", "cstest:x", object())])
    assert transport.available  # the breaker stayed closed: the cache is still used
    assert transport.execute([("SET", "cstest:x", "1")]) == [True]


@pytest.mark.parametrize("in_transaction", [False, True])
def test_a_write_behind_write_whose_reply_times_out_counts_once(in_transaction):
    """The server runs a write, its reply comes after SOCKET_TIMEOUT: sent again, once."""
    import time

    from django.db import transaction

    from django_cachestrat.write_behind import flusher
    from tests.redis_server import SlowReplies

    server = Server().start()
    proxy = SlowReplies(server.port)
    try:
        with override_settings(
            CACHES=caches_at(proxy.url, 0.2), CACHESTRAT=cachestrat(FAILURE_COOLDOWN=0.3)
        ):
            page = PageStats.objects.create(path="/stall")
            PageStats.objects.increment_behind(page.pk, views=1)  # the script is loaded
            proxy.hold(0.5)
            for _ in range(10):  # the first outlasts the hold: timed out, sent again
                if in_transaction:
                    with transaction.atomic():
                        PageStats.objects.increment_behind(page.pk, views=1)
                else:
                    PageStats.objects.increment_behind(page.pk, views=1)
            time.sleep(0.4)  # past any cooldown
            cached = PageStats.objects.get_cached(pk=page.pk).views
            flusher.drain()
            resent_not_given_up = backends.get("default").available
        assert PageStats.objects.get(pk=page.pk).views == 11  # each counted once
        assert cached == 11
        assert resent_not_given_up
    finally:
        proxy.close()
        server.stop()


def test_a_write_sent_twice_is_recorded_once(raw_redis):
    from django_cachestrat.backends.scripts import Recorded
    from django_cachestrat.write_behind.pending import PendingWrites

    page = PageStats.objects.create(path="/twice")
    PageStats.objects.get_cached(pk=page.pk)
    pending = PendingWrites(PageStats)
    op = pending._record_op(page.pk, {}, {"views": 1}, False)
    transport = backends.get("default")
    assert transport.execute([op, op], once=True) == [Recorded.RECORDED, Recorded.DUPLICATE]
    later = pending._record_op(page.pk, {}, {"views": 1}, False)
    assert transport.execute([later, op], once=True) == [Recorded.RECORDED, Recorded.DUPLICATE]
    assert PageStats.objects.get_cached(pk=page.pk).views == 2


def test_a_write_unanswered_after_every_resend_is_kept_and_counted_once():
    """Replies held back longer than RESENDS allow: the write is kept, never put in the
    database as well, and sent again (counted once) when Redis answers."""
    import time

    from django_cachestrat.write_behind import flusher
    from tests.redis_server import SlowReplies

    server = Server().start()
    proxy = SlowReplies(server.port)
    try:
        with override_settings(
            CACHES=caches_at(proxy.url, 0.2),
            CACHESTRAT=cachestrat(FAILURE_COOLDOWN=0.3, RESENDS=1),
        ):
            page = PageStats.objects.create(path="/kept")
            PageStats.objects.increment_behind(page.pk, views=1)  # the script is loaded
            proxy.hold(1.0)
            PageStats.objects.increment_behind(page.pk, views=1)  # sent twice, no reply
            transport = backends.get("default")
            assert len(transport.kept_writes) == 1
            assert PageStats.objects.get(pk=page.pk).views == 0  # not written there too
            time.sleep(1.2)  # the replies come; the breaker's cooldown is over
            assert PageStats.objects.get_cached(pk=page.pk).views == 2  # sent again first
            assert len(transport.kept_writes) == 0
            flusher.drain()
        assert PageStats.objects.get(pk=page.pk).views == 2
    finally:
        proxy.close()
        server.stop()


def test_the_breaker_opens_for_its_cooldown_by_its_own_clock():
    from django_cachestrat.backends.breaker import CircuitBreaker

    now = [100.0]
    breaker = CircuitBreaker(5.0, clock=lambda: now[0])
    assert breaker.allows and not breaker.succeeded()
    assert breaker.failed() is True  # a new episode
    assert not breaker.allows
    assert breaker.failed() is False  # the same episode
    now[0] += 5.0
    assert breaker.allows  # half-open: the next call is the probe
    assert breaker.succeeded() is True
    assert breaker.allows and not breaker.succeeded()

import subprocess
import sys
import threading

import pytest
from django.db import connection, transaction

from django_cachestrat import keys, options
from tests.conftest import child_env
from tests.models import Author, Book

pytestmark = pytest.mark.django_db(transaction=True)


def entry(raw_redis, model, pk):
    opts = options.get(model)
    return raw_redis.get(keys.entry("cstest", opts.label, pk))


def in_thread(fn):
    """Run ``fn`` on another thread (so another database connection); return its result."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except Exception as exc:
            box["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if "error" in box:
        raise box["error"]
    return box["value"]


class Rollback(Exception):
    pass


def test_rolled_back_write_never_reaches_the_cache(raw_redis):
    a = Author.objects.create(name="committed", email="a@example.org")
    b = Book.objects.create(title="committed", isbn="1")
    Book.objects.get_cached(pk=b.pk)
    with pytest.raises(Rollback), transaction.atomic():
        a.name = "rolled back"
        a.save()
        b.title = "rolled back"
        b.save()
        raise Rollback
    assert Author.objects.get_cached(pk=a.pk).name == "committed"
    assert Book.objects.get_cached(pk=b.pk).title == "committed"


def test_other_connections_never_see_uncommitted_data():
    a = Author.objects.create(name="committed", email="a@example.org")
    b = Book.objects.create(title="committed", isbn="1")
    with transaction.atomic():
        a.name = "uncommitted"
        a.save()
        b.title = "uncommitted"
        b.save()
        seen = in_thread(
            lambda: (
                Author.objects.get_cached(pk=a.pk).name,
                Book.objects.get_cached(pk=b.pk).title,
            )
        )
        assert seen == ("committed", "committed")
    assert in_thread(lambda: Author.objects.get_cached(pk=a.pk).name) == "uncommitted"
    assert in_thread(lambda: Book.objects.get_cached(pk=b.pk).title) == "uncommitted"


def test_reads_inside_a_writing_transaction_see_its_writes_and_never_fill(raw_redis):
    b = Book.objects.create(title="before", isbn="1")
    a = Author.objects.create(name="before", email="a@example.org")
    Book.objects.get_cached(pk=b.pk)
    with transaction.atomic():
        b.title = "inside"
        b.save()
        a.name = "inside"
        a.save()
        assert Book.objects.get_cached(pk=b.pk).title == "inside"
        assert Book.objects.get_many_cached([b.pk])[b.pk].title == "inside"
        assert Book.objects.get_cached(isbn="1").title == "inside"
        assert Author.objects.get_cached(pk=a.pk).name == "inside"
        # Nothing uncommitted was stored: the entries still hold the committed rows.
        assert b"before" in entry(raw_redis, Book, b.pk)
        assert b"before" in entry(raw_redis, Author, a.pk)
    assert Book.objects.get_cached(pk=b.pk).title == "inside"
    assert Author.objects.get_cached(pk=a.pk).name == "inside"


def test_fills_inside_a_transaction_only_where_reads_are_current(raw_redis):
    b = Book.objects.create(title="t", isbn="1")
    with transaction.atomic():
        Book.objects.get_cached(pk=b.pk)
    filled = entry(raw_redis, Book, b.pk) is not None
    # PostgreSQL at READ COMMITTED reads current rows; SQLite reads a snapshot.
    assert filled is (connection.vendor == "postgresql")


def test_a_commit_is_seen_by_another_process_at_once():
    a = Author.objects.create(name="first", email="a@example.org")
    b = Book.objects.create(title="first", isbn="1")
    script = (
        "import django, sys; django.setup();"
        "from tests.models import Author, Book;"
        "a = Author.objects.get_cached(pk=int(sys.argv[1]));"
        "b = Book.objects.get_cached(pk=int(sys.argv[2]));"
        "print(a.name, b.title)"
    )

    def other_process():
        out = subprocess.run(
            [sys.executable, "-c", script, str(a.pk), str(b.pk)],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert other_process() == "first first"  # and now both are cached
    with transaction.atomic():
        a.name = "second"
        a.save()
        b.title = "second"
        b.save()
    assert other_process() == "second second"


def test_later_transactions_in_the_thread_use_the_cache_again(django_assert_num_queries):
    b = Book.objects.create(title="t", isbn="1")
    Book.objects.get_cached(pk=b.pk)
    with transaction.atomic():  # as with ATOMIC_REQUESTS: every request in a transaction
        b.title = "u"
        b.save()
    Book.objects.get_cached(pk=b.pk)
    with transaction.atomic(), django_assert_num_queries(0):
        assert Book.objects.get_cached(pk=b.pk).title == "u"
    with pytest.raises(Rollback), transaction.atomic():
        b.title = "rolled back"
        b.save()
        raise Rollback
    with transaction.atomic(), django_assert_num_queries(0):
        assert Book.objects.get_cached(pk=b.pk).title == "u"
    with transaction.atomic():
        with pytest.raises(Rollback), transaction.atomic():
            b.save()  # written only inside a savepoint that rolls back
            raise Rollback
        with django_assert_num_queries(0):
            assert Book.objects.get_cached(pk=b.pk).title == "u"
        b.save()
        with django_assert_num_queries(1):
            Book.objects.get_cached(pk=b.pk)

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.db import transaction

from django_cachestrat import invalidate, invalidate_model, keys, options
from tests.conftest import nodes_of
from tests.models import Author, Book, Plain

pytestmark = pytest.mark.django_db(transaction=True)


def entry(raw_redis, model, pk):
    opts = options.get(model)
    return raw_redis.get(keys.entry("cstest", opts.label, pk))


@pytest.fixture
def books():
    made = [Book.objects.create(title=f"t{i}", isbn=str(i), pages=i) for i in range(5)]
    Book.objects.get_many_cached([b.pk for b in made])
    return made


def titles(books):
    got = Book.objects.get_many_cached([b.pk for b in books])
    return [got[b.pk].title for b in books]


def test_queryset_update_drops_the_rows(books, raw_redis):
    assert Book.objects.filter(pages__lt=2).update(title="cheap") == 2
    assert entry(raw_redis, Book, books[0].pk) is None
    assert entry(raw_redis, Book, books[4].pk) is not None  # untouched rows stay
    assert titles(books) == ["cheap", "cheap", "t2", "t3", "t4"]


def test_update_over_the_row_limit_drops_the_model(books, monkeypatch, events):
    from django_cachestrat.managers import CachedQuerySet

    monkeypatch.setattr(CachedQuerySet, "bulk_row_limit", 2)
    Book.objects.filter(pages__gte=1).update(title="many")
    assert events("invalidate", Book) == 1  # one version bump
    assert titles(books) == ["t0", "many", "many", "many", "many"]


def test_update_inside_a_rolled_back_transaction_changes_nothing(books):
    with pytest.raises(RuntimeError), transaction.atomic():
        Book.objects.update(title="gone")
        raise RuntimeError
    assert titles(books) == ["t0", "t1", "t2", "t3", "t4"]


def test_async_update(books):
    import asyncio

    from asgiref.sync import sync_to_async
    from django.db import connections

    async def update():
        await Book.objects.filter(pk=books[0].pk).aupdate(title="async")
        await sync_to_async(connections.close_all)()  # the executor thread's connection

    asyncio.run(update())
    assert titles(books)[0] == "async"


def test_queryset_delete_drops_the_rows(books):
    Book.objects.filter(pages__gte=3).delete()
    assert set(Book.objects.get_many_cached([b.pk for b in books])) == {b.pk for b in books[:3]}
    with pytest.raises(Book.DoesNotExist):
        Book.objects.get_cached(pk=books[4].pk)


def test_cascade_delete_drops_the_children(raw_redis):
    author = Author.objects.create(name="A", email="a@example.org")
    book = Book.objects.create(title="b", isbn="1", author=author)
    Book.objects.get_cached(pk=book.pk)
    Author.objects.filter(pk=author.pk).delete()
    with pytest.raises(Book.DoesNotExist):
        Book.objects.get_cached(pk=book.pk)


def test_bulk_update_drops_the_rows(books):
    for b in books:
        b.title = b.title.upper()
    Book.objects.bulk_update(books[:2], ["title"])
    assert titles(books) == ["T0", "T1", "t2", "t3", "t4"]


def test_bulk_create_drops_new_rows_and_conflict_updates(books, raw_redis):
    made = Book.objects.bulk_create([Book(title="n", isbn="new")])
    assert Book.objects.get_cached(pk=made[0].pk).title == "n"
    Book.objects.bulk_create(
        [Book(title="upserted", isbn="0"), Book(title="upserted", isbn="1")],
        update_conflicts=True,
        unique_fields=["isbn"],
        update_fields=["title"],
    )
    assert titles(books) == ["upserted", "upserted", "t2", "t3", "t4"]


def test_bulk_create_with_ignored_conflicts(books):
    Book.objects.bulk_create([Book(title="ignored", isbn="0")], ignore_conflicts=True)
    assert titles(books)[0] == "t0"


def test_get_or_create_and_update_or_create(books):
    Book.objects.update_or_create(isbn="2", defaults={"title": "uoc"})
    assert titles(books)[2] == "uoc"


def test_uncached_models_bulk_writes_are_plain_django():
    Plain.objects.bulk_create([Plain(name="a")])
    assert Plain.objects.update(name="b") == 1


def test_admin_saves_are_seen(client, books):
    user = User.objects.create_superuser("admin", "admin@example.org", "pw")
    client.force_login(user)
    book = books[0]
    response = client.post(
        f"/admin/tests/book/{book.pk}/change/",
        {
            "title": "from admin",
            "isbn": book.isbn,
            "pages": 7,
            "price": "1.00",
            "uid": str(book.uid),
        },
    )
    assert response.status_code == 302, response.content[:2000]
    assert Book.objects.get_cached(pk=book.pk).title == "from admin"
    response = client.post(f"/admin/tests/book/{book.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    with pytest.raises(Book.DoesNotExist):
        Book.objects.get_cached(pk=book.pk)


def test_invalidate_by_hand_after_raw_sql(books, raw_redis):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {Book._meta.db_table} SET title = 'raw'")
    assert titles(books)[0] == "t0"  # raw SQL is not seen: a documented limit
    invalidate(books[0])
    invalidate(Book, pk=books[1].pk)
    invalidate(Book, pk=str(books[2].pk))
    assert titles(books) == ["raw", "raw", "raw", "t3", "t4"]
    invalidate_model(Book)
    assert titles(books) == ["raw"] * 5


def test_invalidate_model_is_a_version_bump_not_a_scan(books, raw_redis):
    before = raw_redis.info("commandstats")
    invalidate_model(Book)
    after = raw_redis.info("commandstats")
    for command in ("cmdstat_keys", "cmdstat_scan"):
        assert after.get(command, {}).get("calls", 0) == before.get(command, {}).get("calls", 0)
    assert entry(raw_redis, Book, books[0].pk) is not None  # still there, but retired
    assert titles(books) == ["t0", "t1", "t2", "t3", "t4"]


def test_lost_version_key_retires_every_entry(books, raw_redis, django_assert_num_queries):
    raw_redis.delete(keys.version("cstest", "tests.book"))  # evicted, or Redis lost it
    # One query (on a ring or a cluster, one for each node holding some of the rows).
    with django_assert_num_queries(
        len(nodes_of(*(keys.entry("cstest", "tests.book", b.pk) for b in books)))
    ):
        titles(books)
    with django_assert_num_queries(0):
        titles(books)


def test_invalidate_inside_a_transaction_waits_for_the_commit(books, raw_redis):
    with transaction.atomic():
        invalidate(books[0])
        assert entry(raw_redis, Book, books[0].pk) is not None
    assert entry(raw_redis, Book, books[0].pk) is None


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: invalidate(Book), TypeError, "needs pk"),
        (lambda: invalidate(Book(title="x")), ValueError, "unsaved"),
        (lambda: invalidate(Book.objects.first(), pk=1), TypeError, "takes no pk"),
        (lambda: invalidate("Book", pk=1), TypeError, "model instance or class"),
        (lambda: invalidate(Plain, pk=1), TypeError, "is not cached"),
        (lambda: invalidate(Book, pk="abc"), ValueError, "not a valid primary key"),
        (lambda: invalidate_model(Plain), TypeError, "is not cached"),
        (lambda: invalidate_model(Book()), TypeError, "takes a model class"),
    ],
)
def test_invalidate_bad_input(books, call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_invalidate_command(books, capsys):
    call_command("cachestrat_invalidate", "tests.Book", str(books[0].pk))
    assert "Dropped 1 row(s) of tests.Book" in capsys.readouterr().out
    call_command("cachestrat_invalidate", "tests.book")
    assert "Dropped every row of tests.Book" in capsys.readouterr().out
    with pytest.raises(CommandError, match="Unknown model"):
        call_command("cachestrat_invalidate", "tests.Nope")
    with pytest.raises(CommandError, match="not cached"):
        call_command("cachestrat_invalidate", "tests.Plain")
    with pytest.raises(CommandError, match="not a valid primary key"):
        call_command("cachestrat_invalidate", "tests.Book", "abc")


def test_invalidate_command_takes_a_bare_name_and_suggests_labels(books, raw_redis, capsys):
    call_command("cachestrat_invalidate", "book", str(books[0].pk))  # one cached model has it
    assert "Dropped 1 row(s) of tests.Book" in capsys.readouterr().out
    assert entry(raw_redis, Book, books[0].pk) is None
    with pytest.raises(CommandError) as typo:
        call_command("cachestrat_invalidate", "Bok")
    assert str(typo.value) == "Expected app_label.Model, not 'Bok'. Did you mean tests.Book?"
    with pytest.raises(CommandError) as wrong_app:
        call_command("cachestrat_invalidate", "shop.Author")
    assert str(wrong_app.value) == (
        "Unknown model 'shop.Author'. Did you mean tests.Author or tests.AuthorProxy?"
    )
    with pytest.raises(CommandError, match=r"^Expected app_label.Model, not 'x.y.z'\. The cached"):
        call_command("cachestrat_invalidate", "x.y.z")


def test_a_bare_name_of_several_models_asks_for_the_label():
    from django.db import models
    from django.test.utils import isolate_apps

    from django_cachestrat.management.labels import model_named
    from tests import models as ours

    with isolate_apps("tests"):

        class Book(models.Model):  # tests.Book's name, in another app
            class Meta:
                app_label = "shelf"

        with pytest.raises(CommandError) as both:
            model_named("BOOK", [Book, ours.Book], "cached")
    assert str(both.value) == (
        "'BOOK' is the name of several cached models (shelf.Book, tests.Book): "
        "give app_label.Model."
    )


def test_set_null_on_delete_drops_the_rows_it_updates(raw_redis):
    editor = Author.objects.create(name="E", email="e@example.org")
    edited = [Book.objects.create(title=str(i), isbn=str(i), editor=editor) for i in range(3)]
    other = Book.objects.create(title="x", isbn="x")
    Book.objects.get_many_cached([b.pk for b in [*edited, other]])
    editor.delete()  # Django sets editor = NULL with an UPDATE that sends no signal
    got = Book.objects.get_many_cached([b.pk for b in edited])
    assert {b.editor_id for b in got.values()} == {None}
    assert entry(raw_redis, Book, other.pk) is not None  # not pointing at it: kept


def test_update_of_distinct_or_annotated_querysets(books):
    from django.db.models import Count

    assert Book.objects.filter(pages__lt=2).distinct().update(title="d") == 2
    annotated = Book.objects.annotate(n=Count("novel")).filter(n=0, pages__gte=3)
    assert annotated.update(title="a") == 2
    assert titles(books) == ["d", "d", "t2", "a", "a"]
    with pytest.raises(TypeError):
        Book.objects.all()[:2].update(title="sliced")


def test_reverse_foreign_key_add_drops_the_rows(books):
    author = Author.objects.create(name="A", email="a@example.org")
    author.books.add(books[0], books[1])  # an update through the base manager
    got = Book.objects.get_many_cached([books[0].pk, books[1].pk])
    assert {b.author_id for b in got.values()} == {author.pk}
    author.books.remove(books[0])
    assert Book.objects.get_cached(pk=books[0].pk).author_id is None
    author.books.clear()
    assert Book.objects.get_cached(pk=books[1].pk).author_id is None


def test_a_queryset_update_is_one_statement_that_returns_its_rows(books, raw_redis):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for book in books[:3]:
        Book.objects.get_cached(pk=book.pk)
    with CaptureQueriesContext(connection) as queries:
        count = Book.objects.filter(pk__in=[b.pk for b in books[:3]]).update(title="one")
    control = ("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE")
    statements = [q["sql"] for q in queries if not q["sql"].startswith(control)]
    assert count == 3
    assert len(statements) == 1, statements  # no locking SELECT of the pks first
    assert statements[0].startswith("UPDATE") and "RETURNING" in statements[0]
    assert [entry(raw_redis, Book, b.pk) for b in books[:3]] == [None] * 3
    assert entry(raw_redis, Book, books[4].pk) is not None  # untouched rows stay
    assert {Book.objects.get_cached(pk=b.pk).title for b in books[:3]} == {"one"}

import pytest

from tests.models import Author, Book

pytestmark = pytest.mark.django_db(transaction=True)


def test_write_through_roundtrip(django_assert_num_queries, events):
    a = Author.objects.create(name="Ann", email="ann@example.org", age=3)
    with django_assert_num_queries(0):
        got = Author.objects.get_cached(pk=a.pk)
    assert got.name == "Ann" and got.age == 3 and got.pk == a.pk
    assert events("hit", Author) == 1


def test_cache_aside_roundtrip(django_assert_num_queries, events):
    b = Book.objects.create(title="T", isbn="1")
    with django_assert_num_queries(1):
        Book.objects.get_cached(pk=b.pk)
    with django_assert_num_queries(0):
        got = Book.objects.get_cached(pk=b.pk)
    assert got.title == "T"
    b.title = "U"
    b.save()
    assert Book.objects.get_cached(pk=b.pk).title == "U"

"""Paths Django users take where an ORM cache goes stale (the peers' bug trackers)."""

from decimal import Decimal

import pytest
from django.core import checks
from django.db import models
from django.test.utils import isolate_apps

from django_cachestrat import CachedManager, WriteThroughMixin
from django_cachestrat.checks import check_models
from django_cachestrat.write_behind import flusher
from tests.models import Author, Bin, Book, Doubled, Invoice, Shelf, ShelfProxy, Visit

pytestmark = pytest.mark.django_db(transaction=True)


def stale(model, pk, names):
    """Return ``{name: {"cached": ..., "db": ...}}`` for each field that differs."""
    cached = model.objects.get_cached(pk=pk)
    fresh = model.objects.get(pk=pk)
    return {
        n: {"cached": getattr(cached, n), "db": getattr(fresh, n)}
        for n in names
        if repr(getattr(cached, n)) != repr(getattr(fresh, n))  # repr: 1.5 vs 1.50
    }


# -- inserts whose pks Django does not set -------------------------------------------------


def test_bulk_create_ignore_conflicts_drops_a_cached_no_such_row():
    first = Book.objects.create(title="one", isbn="1")
    after = first.pk + 1
    with pytest.raises(Book.DoesNotExist):
        Book.objects.get_cached(pk=after)  # cached as missing (NEGATIVE_TTL)
    made = Book.objects.bulk_create([Book(title="two", isbn="2")], ignore_conflicts=True)
    assert [b.pk for b in made] == [None]  # Django cannot tell which rows it inserted
    assert Book.objects.get(isbn="2").pk == after  # the row that was cached as missing
    assert Book.objects.get_cached(pk=after).title == "two"
    assert Book.objects.get_cached(isbn="2").pk == after


# -- SET_NULL / SET_DEFAULT through proxies -------------------------------------------------


@pytest.mark.parametrize(
    ("field", "delete_as"),
    [
        ("shelf", Shelf),  # concrete target, deleted as itself
        ("shelf", ShelfProxy),  # concrete target, deleted through a proxy
        ("proxied", Shelf),  # a foreign key to a proxy, target deleted as the concrete model
        ("proxied", ShelfProxy),
        ("spare", ShelfProxy),  # SET_DEFAULT
    ],
)
def test_a_delete_that_sets_null_reaches_the_cached_referring_rows(field, delete_as):
    shelf = Shelf.objects.create(label="top")
    item = Bin.objects.create(**{field + "_id": shelf.pk})
    assert getattr(Bin.objects.get_cached(pk=item.pk), field + "_id") == shelf.pk  # cached
    delete_as.objects.get(pk=shelf.pk).delete()
    assert stale(Bin, item.pk, [field + "_id"]) == {}


# -- multi-table inheritance under an uncached parent ------------------------------------------


@isolate_apps("tests")
def test_a_cached_child_of_an_uncached_parent_is_refused(monkeypatch):
    class Page(models.Model):
        name = models.CharField(max_length=20)

        class Meta:
            app_label = "tests"

    class Article(WriteThroughMixin, Page):
        body = models.TextField()
        objects = CachedManager()

        class Meta:
            app_label = "tests"
            base_manager_name = "objects"

    class CachedPage(WriteThroughMixin, Page):
        objects = CachedManager()

        class Meta:
            app_label = "tests"
            proxy = True
            base_manager_name = "objects"

    monkeypatch.setattr(
        "django_cachestrat.options.cached_models", lambda: [Article, CachedPage, Author]
    )
    errors = [e for e in check_models() if e.id == "cachestrat.E006"]
    assert [e.obj for e in errors] == [Article, CachedPage]
    assert all(isinstance(e, checks.Error) for e in errors)
    assert "tests.Page" in errors[0].msg and "CachedManager" in errors[0].hint


# -- values the database computes or changes on the way in -----------------------------------


def test_write_through_never_stores_a_generated_value_from_before_the_save():
    inv = Invoice.objects.create(qty=1, unit=3)
    assert Invoice.objects.get_cached(pk=inv.pk).total == 3
    inv.qty = 4
    inv.save()
    assert stale(Invoice, inv.pk, ["qty", "total"]) == {}
    assert Invoice.objects.get_cached(pk=inv.pk).total == 12


def test_write_through_of_a_new_row_with_a_db_default_serves_the_databases_value():
    inv = Invoice.objects.create(qty=2)
    assert Invoice.objects.get_cached(pk=inv.pk).level == 7
    assert stale(Invoice, inv.pk, ["level", "total"]) == {}


def test_write_through_stores_decimals_with_the_columns_places():
    a = Author.objects.create(name="Ann", email="ann@example.org", balance=Decimal("1.5"))
    inv = Invoice.objects.create(amount=Decimal("2"))
    assert str(Author.objects.get_cached(pk=a.pk).balance) == "1.50"
    assert str(Invoice.objects.get_cached(pk=inv.pk).amount) == "2.00"
    assert stale(Author, a.pk, ["balance"]) == {}


def test_write_behind_views_hold_decimals_with_the_columns_places():
    visit = Visit.objects.create()
    visit.rate = Decimal("1.5")
    visit.save()  # into the view now, the database at the flush
    assert str(Visit.objects.get_cached(pk=visit.pk).rate) == "1.50"
    flusher.flush()
    assert stale(Visit, visit.pk, ["rate"]) == {}


def test_write_behind_save_of_a_model_with_a_generated_field_serves_the_databases_value():
    row = Doubled.objects.create(base=4)
    row.base = 5
    row.save()
    flusher.flush()
    assert Doubled.objects.get(pk=row.pk).twice == 10
    assert stale(Doubled, row.pk, ["base", "twice"]) == {}

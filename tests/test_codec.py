"""The codec's shortcut for values that need no cleaning gives what ``as_stored`` gives."""

import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import F

from django_cachestrat import codec, options
from tests.models import Author, Book, PageStats, Visit


class Shouting(models.CharField):
    """A field whose ``to_python`` changes values of its own type."""

    def to_python(self, value):
        value = super().to_python(value)
        return value.upper() if isinstance(value, str) else value


class Odd(models.Model):
    loud = Shouting(max_length=10)
    when = models.DateTimeField(null=True)
    day = models.DateField(null=True)
    at = models.TimeField(null=True)
    took = models.DurationField(null=True)
    ratio = models.FloatField(null=True)
    raw = models.BinaryField(null=True)
    flag = models.BooleanField(default=False)
    unlimited = models.DecimalField(max_digits=None, decimal_places=None, null=True)
    data = models.JSONField(null=True)

    class Meta:
        app_label = "tests"
        managed = False


PLUS_TWO = timezone(timedelta(hours=2))
CANDIDATES = [
    None,
    0,
    7,
    True,
    False,
    "7",
    "x",
    "abc",
    "",
    b"bytes",
    1.5,
    Decimal("1.5"),
    Decimal("1.555"),
    Decimal("12.34"),
    Decimal("12.3"),
    Decimal("1E+1"),
    Decimal("123456789.12"),
    Decimal("NaN"),
    Decimal("Infinity"),
    datetime(2024, 5, 1, 12, tzinfo=UTC),
    datetime(2024, 5, 1, 12, tzinfo=PLUS_TWO),
    datetime(2024, 5, 1, 12),
    date(2024, 5, 1),
    time(12, 30),
    timedelta(seconds=3),
    uuid.UUID(int=5),
    str(uuid.UUID(int=5)),
    {"a": 1},
    F("age") + 1,
]


def outcome(fn, value):
    try:
        got = fn(value)
        # repr: NaN is not equal to itself; a memoryview's repr is its address.
        return "value", repr(bytes(got) if isinstance(got, memoryview) else got), type(got)
    except (codec.Unstorable, ValidationError, TypeError, ValueError, OverflowError) as exc:
        return "raises", type(exc)


@pytest.mark.filterwarnings("ignore:DateTimeField .* received a naive datetime")
@pytest.mark.parametrize("model", [Author, Book, PageStats, Visit, Odd])
def test_cleaners_agree_with_as_stored_on_every_field_and_value(model):
    clean = codec.cleaners(model)
    for field in model._meta.concrete_fields:
        for value in CANDIDATES:
            fast = outcome(clean[field.attname], value)
            slow = outcome(lambda v, field=field: codec.as_stored(field, v), value)
            assert fast == slow, (model.__name__, field.name, value)


def test_a_field_that_overrides_to_python_gets_no_shortcut():
    assert codec.cleaners(Odd)["loud"]("quiet") == "QUIET"


def test_write_through_save_cleans_values_as_the_database_returns_them():
    a = Author(pk=1, name="Ann", email="a@example.org", age="41", balance="2.5")
    a.joined = datetime(2024, 5, 1, 14, tzinfo=PLUS_TWO)
    # The same bytes as an instance holding what the database gives back.
    b = Author(
        pk=1,
        name="Ann",
        email="a@example.org",
        age=41,
        balance=Decimal("2.50"),
        joined=datetime(2024, 5, 1, 12, tzinfo=UTC),
    )
    opts = options.get(Author)
    expires = 2_000_000_000_000
    same = codec.encode(opts, b"1", b, expires=expires)
    assert codec.encode(opts, b"1", a, clean=True, expires=expires) == same
    a.balance = Decimal("2.555")  # more places than the column keeps
    with pytest.raises(codec.Unstorable):
        codec.encode(opts, b"1", a, clean=True, expires=expires)

"""The default serializer: what it carries exactly, what it refuses, and bytes it never runs."""

import contextlib
import math
import pickle
import uuid
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import msgpack
import pytest
from django.contrib.postgres.fields import ArrayField, HStoreField
from django.core import checks
from django.db import connection, models, transaction
from django.test import override_settings
from django.test.utils import isolate_apps

from django_cachestrat import CacheAsideMixin, CachedManager, codec, conf, keys, options, stats
from django_cachestrat.checks import check_models
from django_cachestrat.serializers import MsgpackSerializer, PickleSerializer, Serializer
from django_cachestrat.write_behind import flusher
from django_cachestrat.write_behind.pending import PendingWrites
from tests.conftest import signed, unsigned
from tests.models import Author, Book, PageStats, Sample

pytestmark = pytest.mark.django_db(transaction=True)

PLUS_TWO = timezone(timedelta(hours=2))
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
ours = MsgpackSerializer()


def same(a, b) -> bool:
    """Equal, of the same type all the way down, Decimals with the same digits and
    exponent, datetimes and times with the same tzinfo and offset, NaN as NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, Decimal):
        return a.as_tuple() == b.as_tuple()
    if isinstance(a, datetime | time):
        return (
            a == b
            and a.tzinfo == b.tzinfo
            and a.utcoffset() == b.utcoffset()
            and (a.fold == b.fold or a.tzinfo is None)
        )
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, memoryview):
        return bytes(a) == bytes(b)
    return a == b


# -- every field type through a real save, fill and hit --------------------------------

EXTREMES = {
    "flag": True,
    "maybe": False,
    "small": -32768,
    "big": -(2**63),
    "huge": 2**63 - 1,
    "ratio": -0.0,
    "name": "Zoë 🚀 ✓",
    "text": "long " * 1000,
    "raw": bytes(range(256)) * 4,
    "price": Decimal("-12345678901234567890.1234567890"),
    "day": date(9999, 12, 31),
    "at": time(23, 59, 59, 999999),
    "when": datetime(2024, 3, 31, 4, 30, 15, 123456, tzinfo=PLUS_TWO),
    "took": timedelta(days=-999_999, seconds=5, microseconds=7),
    "uid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "data": {
        "nested": [1, 2.5, None, True, "x", {"empty": [], "obj": {}}],
        "big": 10**30,
        "negative big": -(2**70),
        "float": 1e300,
        "unicode": "é ✓",
    },
    "ip": "2001:db8::1",
    "slug": "a-b_c",
}
ORDINARY = {
    "flag": False,
    "small": 7,
    "big": 2**40,
    "huge": 0,
    "ratio": 1.5,
    "name": "Ann",
    "raw": b"",
    "price": Decimal("1.5"),  # read back with the column's ten places
    "day": date(2024, 2, 29),
    "at": time(12, 30),
    "when": datetime(2024, 5, 1, 12, tzinfo=UTC),
    "took": timedelta(0),
    "uid": uuid.uuid4(),
    "data": ["a", 1, None],
    "ip": "192.0.2.1",
}
DEFAULTS: dict = {}  # every nullable field NULL
SPECIAL_FLOATS = {"ratio": math.inf}  # SQLite stores NaN as NULL: tried on PostgreSQL below


def assert_cached_as_read(model, pk, django_assert_num_queries):
    fresh = model.objects.get(pk=pk)
    with django_assert_num_queries(0):
        cached = model.objects.get_cached(pk=pk)
        many = model.objects.get_many_cached([pk])[pk]
    for field in model._meta.concrete_fields:
        for got in (cached, many):
            a, b = getattr(fresh, field.attname), getattr(got, field.attname)
            assert same(a, b), (field.name, a, b)


@pytest.mark.parametrize("values", [EXTREMES, ORDINARY, DEFAULTS, SPECIAL_FLOATS])
def test_every_field_type_comes_back_from_the_cache_as_the_database_gives_it(
    values, django_assert_num_queries, events
):
    row = Sample.objects.create(**values)
    Sample.objects.get_cached(pk=row.pk)  # the fill, from a database read
    assert events("fill", Sample) == 1
    assert_cached_as_read(Sample, row.pk, django_assert_num_queries)
    assert events("error") == 0


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite stores NaN as NULL")
def test_nan_and_infinities_come_back_on_postgresql(django_assert_num_queries):
    for value in (math.nan, math.inf, -math.inf):
        row = Sample.objects.create(ratio=value)
        Sample.objects.get_cached(pk=row.pk)
        assert_cached_as_read(Sample, row.pk, django_assert_num_queries)


def test_naive_datetimes_come_back_naive(django_assert_num_queries):
    with override_settings(USE_TZ=False):
        connection.close()  # a new connection reads timestamps without a time zone
        try:
            row = Sample.objects.create(when=datetime(2024, 5, 1, 12, 30, 1, 5))
            Sample.objects.get_cached(pk=row.pk)
            assert Sample.objects.get(pk=row.pk).when.tzinfo is None
            assert_cached_as_read(Sample, row.pk, django_assert_num_queries)
        finally:
            connection.close()


@contextlib.contextmanager
def database_time_zone(name):
    """SQLite's connection in ``DATABASES[...]["TIME_ZONE"]`` ``name``: Django reads its
    datetimes back in that zone (a zoneinfo.ZoneInfo), not in UTC."""
    connection.close()
    connection.settings_dict["TIME_ZONE"] = name
    for cached in ("timezone", "timezone_name"):
        connection.__dict__.pop(cached, None)
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict["TIME_ZONE"] = None
        for cached in ("timezone", "timezone_name"):
            connection.__dict__.pop(cached, None)


@pytest.mark.skipif(connection.vendor != "sqlite", reason="PostgreSQL gives UTC with USE_TZ")
def test_datetimes_in_the_databases_time_zone_keep_their_zone(django_assert_num_queries):
    # 02:30 in Paris on 2024-10-27 happens twice: the second (fold=1) is at +01:00.
    later = datetime(2024, 10, 27, 1, 30, tzinfo=UTC)
    with database_time_zone("Europe/Paris"):
        row = Sample.objects.create(when=later)
        fresh = Sample.objects.get(pk=row.pk)
        assert fresh.when.tzinfo is PARIS
        Sample.objects.get_cached(pk=row.pk)
        assert_cached_as_read(Sample, row.pk, django_assert_num_queries)


# -- old entries, and bytes that would run code ----------------------------------------


def entry_key(model, pk):
    return keys.entry("cstest", options.get(model).label, pk)


def head(raw_redis, model):
    """A valid-looking header: this schema's fingerprint, the model's version, a future
    expiry."""
    version = raw_redis.get(keys.version("cstest", options.get(model).label))
    return b"%s:%s:%d:0:" % (options.get(model).fingerprint.encode(), version, 2 * 10**12)


def forged_value(tag, name, plain):
    """A write-behind value as someone holding the signing key would store it."""
    signer = conf.settings().signer
    return plain if signer is None else signer.seal_value(tag, name, plain)


def forged(key, data):
    """``data`` as it would be stored under ``key`` by someone holding the signing key:
    with a MAC that verifies (if the app signs), so that the serializer is what reads it."""
    return signed(key, data)


def test_an_entry_of_the_previous_format_is_a_silent_miss(
    raw_redis, events, django_assert_num_queries, monkeypatch
):
    book = Book.objects.create(title="Dune", isbn="1", price=Decimal("9.99"))
    Book.objects.get_cached(pk=book.pk)
    key = entry_key(Book, book.pk)
    _, version, _ = unsigned(key, raw_redis.get(key)).split(b":", 2)
    # What the previous version wrote: its fingerprint (CODEC_FORMAT "codec-4"), pickled
    # values (the Decimal as a str).
    with monkeypatch.context() as patched:
        patched.setattr(codec, "CODEC_FORMAT", "codec-4")
        old_fp = codec.fingerprint(Book)
    assert old_fp != options.get(Book).fingerprint
    values = tuple(
        str(book.price) if f.attname == "price" else getattr(book, f.attname)
        for f in Book._meta.concrete_fields
    )
    raw_redis.set(key, b"%s:%s:0:0:%s" % (old_fp.encode(), version, pickle.dumps(values, 5)))
    errors = counted_errors(Book)
    with django_assert_num_queries(1):
        assert Book.objects.get_cached(pk=book.pk).title == "Dune"
    assert events("error") == 0
    assert counted_errors(Book) == errors
    refilled = unsigned(key, raw_redis.get(key))
    assert refilled.startswith(options.get(Book).fingerprint.encode())


class Creates:
    """Unpickled, it creates the file ``path`` (as any code could run)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def counted_errors(model):
    stats.flush()
    return stats.snapshot(fresh=True)[model._meta.label]["errors"]


def test_a_pickle_that_would_run_code_is_an_unreadable_miss(
    raw_redis, events, tmp_path, django_assert_num_queries
):
    book = Book.objects.create(title="Dune", isbn="1")
    Book.objects.get_cached(pk=book.pk)
    target = tmp_path / "pwned"
    width = len(Book._meta.concrete_fields)
    key = entry_key(Book, book.pk)
    raw_redis.set(
        key, forged(key, head(raw_redis, Book) + pickle.dumps((Creates(target),) * width))
    )
    errors = counted_errors(Book)
    with django_assert_num_queries(1):  # the database answers
        assert Book.objects.get_cached(pk=book.pk).title == "Dune"
    assert not target.exists()
    assert events("error", Book) == 1
    assert counted_errors(Book) == errors + 1


def test_a_pickle_in_a_write_behind_view_is_an_unreadable_miss(
    raw_redis, events, tmp_path, django_assert_num_queries
):
    page = PageStats.objects.create(path="/", note="ok")
    target = tmp_path / "pwned"
    view = PendingWrites(PageStats).row(page.pk)["view"]
    assert raw_redis.hget(view, "note")  # the insert stored the view
    tag = PendingWrites(PageStats).row_tag(page.pk)
    raw_redis.hset(
        view, "note", forged_value(tag, "note", b"\x00" + pickle.dumps((Creates(target),)))
    )
    with django_assert_num_queries(1):
        assert PageStats.objects.get_cached(pk=page.pk).note == "ok"  # from the database
    assert not target.exists()
    assert events("error", PageStats) >= 1  # the view is read again under the fill's lease
    with django_assert_num_queries(0):  # the fill replaced the view
        assert PageStats.objects.get_cached(pk=page.pk).note == "ok"


def test_a_pickle_as_a_pending_write_is_never_unpickled_nor_written(raw_redis, tmp_path):
    page = PageStats.objects.create(path="/", note="ok")
    page.note = "new"
    page.save()  # a pending write of note
    fields = PendingWrites(PageStats).row(page.pk)["fields"]
    assert raw_redis.hget(fields, "note") is not None
    target = tmp_path / "pwned"
    tag = PendingWrites(PageStats).row_tag(page.pk)
    raw_redis.hset(
        fields, "note", forged_value(tag, "note", b"\x00" + pickle.dumps((Creates(target),)))
    )
    flusher.flush([PageStats])  # the value is dead-lettered, never unpickled
    assert not target.exists()
    assert PageStats.objects.get(pk=page.pk).note == "ok"


def valid_payload(model, obj):
    return ours.dumps(tuple(getattr(obj, f.attname) for f in model._meta.concrete_fields))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda ok: b"\xc1 garbage", id="garbage"),
        pytest.param(lambda ok: ok[:-3], id="truncated"),
        pytest.param(lambda ok: ok + b"\x01", id="extra-bytes"),
        pytest.param(
            lambda ok: msgpack.packb(
                [msgpack.ExtType(99, b"x")]
                * len(msgpack.unpackb(ok, ext_hook=lambda c, d: 0, timestamp=3))
            ),
            id="ext-not-ours",
        ),
        pytest.param(lambda ok: b"\xdd\xff\xff\xff\xff" + ok[1:], id="huge-array"),
        pytest.param(lambda ok: b"\x91\xdb\xff\xff\xff\xff", id="huge-str"),
        pytest.param(lambda ok: b"\x91\xc6\xff\xff\xff\xff", id="huge-bin"),
        pytest.param(lambda ok: b"\x91" * 10_000, id="deep"),
        pytest.param(lambda ok: msgpack.packb({"a": 1}), id="not-an-array"),
        pytest.param(lambda ok: msgpack.packb([msgpack.ExtType(7, b"short")]), id="bad-uuid"),
    ],
)
def test_bytes_that_are_not_ours_are_an_unreadable_miss(
    payload, raw_redis, events, django_assert_num_queries
):
    author = Author.objects.create(name="Ann", email="a@example.org", joined=datetime.now(UTC))
    Author.objects.get_cached(pk=author.pk)
    key = entry_key(Author, author.pk)
    raw_redis.set(
        key, forged(key, head(raw_redis, Author) + payload(valid_payload(Author, author)))
    )
    with django_assert_num_queries(1):
        assert Author.objects.get_cached(pk=author.pk).name == "Ann"
    assert events("error", Author) == 1


# -- the serializer alone ---------------------------------------------------------------

CARRIED = [
    None,
    True,
    False,
    0,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    2**64,
    -(2**64) - 5,
    10**40,
    1.5,
    -0.0,
    math.inf,
    math.nan,
    "",
    "ünïcödé",
    b"",
    b"\x00\xff",
    memoryview(b"view"),
    Decimal("1.50"),
    Decimal("-0"),
    Decimal("1E+3"),
    Decimal("1E-30"),
    Decimal("NaN"),
    Decimal("-Infinity"),
    date(1, 1, 1),
    date(9999, 12, 31),
    time(0, 0),
    time(23, 59, 59, 999999),
    time(12, 0, tzinfo=PLUS_TWO),
    datetime(2024, 5, 1, 12, 30, 1, 5),
    datetime(1, 1, 1),
    datetime(2024, 5, 1, 12, 30, 1, 5, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2024, 5, 1, 12, tzinfo=PLUS_TWO),
    datetime(2024, 5, 1, 12, tzinfo=timezone(-timedelta(hours=3, minutes=30, seconds=15))),
    datetime(2024, 10, 27, 2, 30, tzinfo=PARIS),
    datetime(2024, 10, 27, 2, 30, tzinfo=PARIS, fold=1),
    datetime(2024, 5, 1, tzinfo=zoneinfo.ZoneInfo("UTC")),
    timedelta(0),
    timedelta(days=-1, microseconds=1),
    timedelta.max,
    timedelta.min,
    uuid.UUID(int=0),
    uuid.uuid4(),
    {"a": [1, {"b": None}], "c": "d", "big": 10**25},
    [],
    {},
]


@pytest.mark.parametrize("value", CARRIED, ids=repr)
def test_the_default_serializer_carries_each_value_exactly(value):
    (back,) = ours.loads(ours.dumps((value,)))
    assert same(value, back)
    assert same(value, codec.decode_value(codec.encode_value(value)))


def test_a_row_comes_back_as_a_tuple_and_json_tuples_as_lists():
    assert ours.loads(ours.dumps((1, "a", None))) == (1, "a", None)
    assert ours.loads(ours.dumps(({"a": (1, 2)}, (3,)))) == ({"a": [1, 2]}, [3])


@pytest.mark.parametrize(
    "value",
    [
        object(),
        {1, 2},
        Decimal,
        type("Sub", (Decimal,), {})("1"),  # a subclass is refused, not cut down
        datetime(2024, 5, 1, tzinfo=timezone(timedelta(hours=2), "CEST")),  # a named offset
        time(12, tzinfo=PARIS),
        complex(1, 2),
    ],
    ids=repr,
)
def test_values_it_cannot_carry_are_refused(value):
    with pytest.raises(TypeError):
        ours.dumps((value,))
    with pytest.raises(codec.Unstorable):  # the write goes to the database at once
        codec.encode_value(value)


def test_a_failed_dumps_leaves_the_packer_clean():
    with pytest.raises(TypeError):
        ours.dumps((1, object()))
    assert ours.dumps((2,)) == msgpack.packb([2])


def test_integers_of_write_behind_hashes_stay_ascii_digits():
    assert codec.encode_value(42) == b"42"
    assert codec.encode_value(-(2**63)) == str(-(2**63)).encode()
    assert codec.encode_value(None) == b"\x01"
    assert codec.encode_value(True) != b"1"  # a bool stays a bool
    assert codec.decode_value(codec.encode_value(True)) is True


def test_a_value_the_serializer_cannot_carry_is_unstorable_not_an_error(django_assert_num_queries):
    author = Author.objects.create(name="Ann", email="a@example.org")
    author.bio = {1, 2}  # a value no database would give back for a TextField
    with pytest.raises(codec.Unstorable, match="cannot carry"):
        codec.encode(options.get(Author), b"1", author, expires=2 * 10**12)


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb([msgpack.ExtType(3, b"0 2024-10-27T02:30:00 ../../etc/passwd")]),
        msgpack.packb([msgpack.ExtType(3, b"0 2024-10-27T02:30:00 Mars/Olympus_Mons")]),
        msgpack.packb([msgpack.ExtType(3, b"2 2024-10-27T02:30:00 Europe/Paris")]),
        msgpack.packb([msgpack.ExtType(3, b"0 2024-10-27T02:30:00+01:00 Europe/Paris")]),
        msgpack.packb([msgpack.ExtType(3, b"0 2024-10-27T02:30:00")]),
        msgpack.packb([msgpack.ExtType(1, b"not a number")]),
        msgpack.packb([msgpack.ExtType(1, "\u0661".encode())]),  # a digit, not ASCII
        msgpack.packb([msgpack.ExtType(4, b"2024-13-01")]),
        msgpack.packb([msgpack.ExtType(0, b"")]),
        msgpack.packb([msgpack.ExtType(127, b"")]),
        b"\x91\xd4\xfe\x00",  # a negative extension type other than the timestamp
        msgpack.packb([{1: 2}]),  # JSON keys are strings
    ],
)
def test_loads_refuses_what_dumps_never_makes(data):
    with pytest.raises((ValueError, ArithmeticError)):
        ours.loads(data)


# -- what the serializer says it carries, and the system check ---------------------------


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y


class PointField(models.CharField):
    """Stored as "x,y" text, read back as a Point."""

    def from_db_value(self, value, expression, connection):
        return None if value is None else Point(*map(int, value.split(",")))


class LowerField(models.CharField):
    """A CharField of Django's conversions: its values are str."""

    def get_prep_value(self, value):
        return super().get_prep_value(value).lower()


class Decoder(__import__("json").JSONDecoder):
    pass


@isolate_apps("tests")
def test_the_check_names_fields_the_serializer_cannot_carry(monkeypatch):
    class Shape(CacheAsideMixin, models.Model):
        name = LowerField(max_length=10)
        where = PointField(max_length=20)
        data = models.JSONField(decoder=Decoder)
        plain = models.JSONField()
        objects = CachedManager()

        class Meta:
            app_label = "tests"

    class Ref(CacheAsideMixin, models.Model):
        shape = models.ForeignKey(Shape, models.CASCADE)
        objects = CachedManager()

        class Meta:
            app_label = "tests"

    monkeypatch.setattr("django_cachestrat.options.cached_models", lambda: [Shape, Ref])
    errors = [e for e in check_models() if e.id == "cachestrat.E007"]
    assert [(e.obj, e.msg.split(" ")[0]) for e in errors] == [
        (Shape, "tests.Shape.where"),
        (Shape, "tests.Shape.data"),
    ]
    assert all(isinstance(e, checks.Error) for e in errors)
    assert "MsgpackSerializer" in errors[0].msg
    assert "django_cachestrat.serializers.PickleSerializer" in errors[0].hint
    with override_settings(
        CACHESTRAT={"SERIALIZER": "django_cachestrat.serializers.PickleSerializer"}
    ):
        assert not [e for e in check_models() if e.id == "cachestrat.E007"]


def test_the_test_models_are_all_carried():
    serializer = conf.settings().serializer
    assert isinstance(serializer, MsgpackSerializer)
    for model in options.cached_models():
        for field in model._meta.concrete_fields:
            assert serializer.supports(field), (model, field)


def test_custom_serializers_carry_every_field_unless_they_say():
    field = PointField(max_length=5)
    assert Serializer().supports(field)
    assert PickleSerializer().supports(field)
    assert not ours.supports(field)
    assert ours.supports(models.JSONField())
    assert not ours.supports(models.JSONField(decoder=Decoder))
    assert ours.supports(ArrayField(ArrayField(models.DateTimeField())))
    assert not ours.supports(ArrayField(PointField(max_length=5)))
    assert ours.supports(HStoreField())


def test_pickle_stays_available_as_an_opt_in(django_assert_num_queries):
    chosen = {
        "KEY_PREFIX": "cstest",
        "SERIALIZER": "django_cachestrat.serializers.PickleSerializer",
    }
    with override_settings(CACHESTRAT=chosen):
        assert isinstance(conf.settings().serializer, PickleSerializer)
        row = Sample.objects.create(**EXTREMES)
        Sample.objects.get_cached(pk=row.pk)
        assert_cached_as_read(Sample, row.pk, django_assert_num_queries)
        with pytest.raises(ValueError, match="expected a tuple"):
            conf.settings().serializer.loads(pickle.dumps([1]))


def test_the_check_leaves_a_broken_setting_to_check_settings():
    with override_settings(CACHESTRAT={"SERIALIZER": "no.such.Serializer"}):
        assert not [e for e in check_models() if e.id == "cachestrat.E007"]


def test_a_row_the_serializer_cannot_carry_is_served_from_the_database(
    settings, django_assert_num_queries, caplog
):
    """With check E007 silenced, a fill that meets a value the serializer refuses serves
    the row and stores nothing (by pk and by lookup): never an error for the reader."""
    settings.CACHESTRAT = {
        **settings.CACHESTRAT,
        "SERIALIZER": "tests.serializers.RefusesMarked",
    }
    book = Book.objects.create(title="unstorable dune", isbn="u-1")
    for _ in range(2):  # nothing stored: each read asks the database
        with django_assert_num_queries(1):
            assert Book.objects.get_cached(pk=book.pk).title == "unstorable dune"
    with django_assert_num_queries(1):
        assert Book.objects.get_many_cached([book.pk])[book.pk].title == "unstorable dune"
    with django_assert_num_queries(1):
        assert Book.objects.get_cached(isbn="u-1").pk == book.pk
    assert "is not cached" in caplog.text


def test_a_write_behind_row_the_serializer_cannot_carry_is_written_at_once(
    settings, django_assert_num_queries, caplog
):
    """Its view is never stored and its writes go to the database at once, in a
    transaction too: no write is lost, no error reaches the caller."""
    settings.CACHESTRAT = {
        **settings.CACHESTRAT,
        "SERIALIZER": "tests.serializers.RefusesMarked",
    }
    row = PageStats.objects.create(path="unstorable/a")
    assert PageStats.objects.get_cached(pk=row.pk).path == "unstorable/a"
    row.views = 5
    row.save()
    assert PageStats.objects.get(pk=row.pk).views == 5  # not deferred: in the table now
    with transaction.atomic():
        row.views = 7
        row.save()
    assert PageStats.objects.get(pk=row.pk).views == 7
    assert PageStats.objects.get_cached(pk=row.pk).views == 7
    assert "cannot carry" in caplog.text

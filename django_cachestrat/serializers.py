"""Field values <-> bytes.

An entry never holds a pickled model instance (that breaks across deploys): it holds the
tuple of the row's concrete field values, and the read path rebuilds the instance with
``Model.from_db``. A serializer only turns that tuple into bytes and back. Choose one
with ``CACHESTRAT["SERIALIZER"]`` (a dotted path to a ``Serializer`` subclass).

The default, ``MsgpackSerializer``, carries the values Django's own fields give and
nothing else: the bytes it reads can make no other object and run no code, so a writer
of the cache's Redis cannot reach the processes that read it. ``PickleSerializer`` carries
anything picklable, and runs whatever a pickle says: opt in only on a Redis nobody else
can write.
"""

from __future__ import annotations

import pickle
import threading
import uuid
import zoneinfo
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import cast

import msgpack
from django.db import models


class Serializer:
    """Base class of the pluggable serializers: ``dumps`` a tuple of values, ``loads`` it back.

    ``dumps`` raises ``TypeError`` or ``ValueError`` for a value it cannot carry (the
    row is then not stored from memory). ``loads`` may raise any exception on bytes it
    did not write; the caller treats that as a miss (counted and logged), never as an
    error for the user.
    """

    def dumps(self, values: tuple) -> bytes:
        """Return the bytes that stand for ``values``."""
        raise NotImplementedError

    def loads(self, data: bytes) -> tuple:
        """Return the tuple ``dumps`` was given."""
        raise NotImplementedError

    def supports(self, field: models.Field) -> bool:
        """Tell whether every value ``field`` gives can be carried (system check E007).

        True unless a serializer says otherwise.
        """
        return True


# Extension types of MsgpackSerializer's bytes: the only ones it reads. Aware datetimes
# in UTC, what the database gives back with USE_TZ, use msgpack's own timestamp (-1),
# which msgpack turns into a datetime in C.
_DECIMAL = 1  # str(value), ASCII: keeps the digits and the exponent (1.50 stays 1.50)
_DATETIME = 2  # isoformat(): naive, or a fixed offset such as +02:00
_ZONED = 3  # "<fold> <local isoformat> <zone key>": a zoneinfo.ZoneInfo datetime
_DATE = 4  # isoformat()
_TIME = 5  # isoformat(): naive, or a fixed offset
_TIMEDELTA = 6  # microseconds, a signed big-endian integer
_UUID = 7  # the 16 bytes
_BIGINT = 8  # a signed big-endian integer beyond msgpack's 64 bits (JSON values)
_MEMORYVIEW = 9  # the bytes (BinaryField on psycopg2)

_MICROSECOND = timedelta(microseconds=1)


def _int_bytes(value: int) -> bytes:
    return value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True)


def _int_of(data: bytes) -> int:
    return int.from_bytes(data, "big", signed=True)


def _fixed(tz) -> bool:
    """Tell whether ``tz`` is a fixed offset that an isoformat() string carries whole."""
    return type(tz) is timezone and tz.tzname(None) == timezone(tz.utcoffset(None)).tzname(None)


def _carry_datetime(value: datetime):
    tz = value.tzinfo
    if tz is UTC:
        return msgpack.Timestamp.from_datetime(value)
    if tz is None or _fixed(tz):
        return msgpack.ExtType(_DATETIME, value.isoformat().encode())
    if type(tz) is zoneinfo.ZoneInfo and tz.key:
        naive = value.replace(tzinfo=None).isoformat()
        return msgpack.ExtType(_ZONED, f"{value.fold} {naive} {tz.key}".encode())
    raise TypeError(f"a datetime in {type(tz).__name__} {tz!r}: only UTC, fixed offsets, ZoneInfo")


def _carry_time(value: time):
    if value.tzinfo is None or _fixed(value.tzinfo):
        return msgpack.ExtType(_TIME, value.isoformat().encode())
    raise TypeError(f"a time in {type(value.tzinfo).__name__}: only naive or a fixed offset")


# Exact types: a subclass (a pandas Timestamp, a Decimal subclass) is refused, not cut down.
_CARRY = {
    Decimal: lambda v: msgpack.ExtType(_DECIMAL, str(v).encode()),
    datetime: _carry_datetime,
    date: lambda v: msgpack.ExtType(_DATE, v.isoformat().encode()),
    time: _carry_time,
    timedelta: lambda v: msgpack.ExtType(_TIMEDELTA, _int_bytes(v // _MICROSECOND)),
    uuid.UUID: lambda v: msgpack.ExtType(_UUID, v.bytes),
}


def _default(value):
    """Return what msgpack packs for a value it has no type of its own for."""
    carry = _CARRY.get(type(value))
    if carry is not None:
        return carry(value)
    if isinstance(value, int):  # msgpack hands over integers beyond 64 bits
        return msgpack.ExtType(_BIGINT, _int_bytes(value))
    raise TypeError(f"{type(value).__name__} values cannot be carried by MsgpackSerializer")


def _zoned(data: bytes) -> datetime:
    fold, naive, key = data.decode().split(" ")
    if fold not in ("0", "1"):
        raise ValueError(f"fold {fold!r}")
    local = datetime.fromisoformat(naive)
    if local.tzinfo is not None:
        raise ValueError("a zoned datetime with an offset of its own")
    try:
        zone = zoneinfo.ZoneInfo(key)
    except zoneinfo.ZoneInfoNotFoundError:  # a KeyError
        raise ValueError(f"no time zone {key!r}") from None
    return local.replace(tzinfo=zone, fold=int(fold))


def _read_time(data: bytes) -> time:
    return time.fromisoformat(data.decode())


def _read_uuid(data: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=data)  # raises unless 16 bytes


_READ = {
    _DATETIME: lambda data: datetime.fromisoformat(data.decode()),
    _ZONED: _zoned,
    _DATE: lambda data: date.fromisoformat(data.decode()),
    _TIME: _read_time,
    _TIMEDELTA: lambda data: timedelta(microseconds=_int_of(data)),
    _UUID: _read_uuid,
    _BIGINT: _int_of,
    _MEMORYVIEW: memoryview,
}


def _ext(code: int, data: bytes):
    """Return the value of an extension type of ours; raise on any other."""
    if code == _DECIMAL:  # the most common one, first
        return Decimal(data.decode("ascii"))
    try:
        read = _READ[code]
    except KeyError:
        raise ValueError(f"extension type {code} is not one of MsgpackSerializer's") from None
    return read(data)


# Field internal types whose values (from the database, and from the field's to_python)
# MsgpackSerializer carries, as Django's own field classes give them.
_CARRIED = frozenset(
    {
        "AutoField",
        "BigAutoField",
        "SmallAutoField",
        "BooleanField",
        "IntegerField",
        "BigIntegerField",
        "SmallIntegerField",
        "PositiveIntegerField",
        "PositiveBigIntegerField",
        "PositiveSmallIntegerField",
        "FloatField",
        "DecimalField",
        "CharField",
        "TextField",
        "SlugField",
        "FilePathField",
        "FileField",  # the file's name; a FieldFile set in memory is refused, not stored
        "GenericIPAddressField",
        "BinaryField",
        "DateField",
        "DateTimeField",
        "TimeField",
        "DurationField",
        "UUIDField",
        "JSONField",
        "HStoreField",  # django.contrib.postgres: a dict of str to str or None
    }
)


def _own_conversions(field: models.Field) -> bool:
    """Tell whether ``field`` turns column values into Python ones as Django's class does.

    A class outside Django that overrides ``from_db_value`` or ``to_python`` may give
    values of any type.
    """
    for name in ("from_db_value", "to_python"):
        owner = next((c for c in type(field).__mro__ if name in c.__dict__), None)
        if owner is not None and not owner.__module__.startswith("django."):
            return False
    return True


class MsgpackSerializer(Serializer):
    """The default: MessagePack, with extension types for the values Django's fields give.

    It carries None, bool, int (any size), float (with inf and NaN), str, bytes,
    memoryview, Decimal (its digits and exponent), date, time (naive or at a fixed
    offset), datetime (naive, UTC, a fixed offset or a ``zoneinfo.ZoneInfo`` with its
    fold, each coming back with the same tzinfo), timedelta, UUID, and the lists and
    dicts (str keys) of a JSONField. A value of any other type (or of a subclass) is
    refused by ``dumps`` with ``TypeError``; tuples come back as lists, as from JSON.

    ``loads`` builds nothing else: no hooks that make objects, only its own extension
    types, lengths bounded by the bytes read (msgpack's default), nesting bounded by
    msgpack's stack; the bytes must be one array. Anything else raises ``ValueError``
    (or an ``ArithmeticError``: a Decimal that does not parse, a date out of range).
    """

    def __init__(self):
        # A Packer is not safe to share between threads; making one per call costs
        # more than packing a row.
        self._local = threading.local()

    def dumps(self, values: tuple) -> bytes:
        """Pack ``values`` as a MessagePack array."""
        try:
            pack = self._local.pack
        except AttributeError:
            pack = self._local.pack = msgpack.Packer(default=_default, datetime=False).pack
        if memoryview in map(type, values):
            # msgpack packs a memoryview as bytes; keep it one (psycopg2's BinaryField).
            values = tuple(
                msgpack.ExtType(_MEMORYVIEW, bytes(v)) if type(v) is memoryview else v
                for v in values
            )
        return pack(values)

    def loads(self, data: bytes) -> tuple:
        """Unpack what ``dumps`` made; raises ``ValueError`` on anything else."""
        values = msgpack.unpackb(
            data, ext_hook=_ext, timestamp=3, raw=False, strict_map_key=True, use_list=True
        )
        if type(values) is not list:
            raise ValueError(f"expected an array, got {type(values).__name__}")
        return tuple(values)

    def supports(self, field: models.Field) -> bool:
        """Tell whether this serializer carries every value ``field`` gives.

        Fields of Django's own types do, and subclasses of them (of another app, or
        the project's) that keep Django's ``from_db_value`` and ``to_python``. Not a
        JSONField with a ``decoder`` of its own, which may make values of any type.
        """
        # A foreign key holds its target's values; a generated field its output field's.
        while True:
            if isinstance(field, models.ForeignKey):
                field = field.target_field
            elif isinstance(field, models.GeneratedField):
                field = cast(models.Field, field.output_field)  # required: never None
            else:
                break
        internal = field.get_internal_type()
        if internal == "ArrayField":  # django.contrib.postgres: a list of its base field's
            return self.supports(field.base_field)  # type: ignore[attr-defined]
        if internal not in _CARRIED or not _own_conversions(field):
            return False
        return not (isinstance(field, models.JSONField) and field.decoder is not None)


class PickleSerializer(Serializer):
    """Pickles the tuple of plain field values. Unsafe on a Redis others can write.

    Unpickling runs code the bytes name: anyone who can write one key into the cache's
    Redis (a leaked password, an instance shared with another application, a request
    forged to its port) runs code in every process that reads the entry. Opt in only
    for values ``MsgpackSerializer`` cannot carry (system check ``cachestrat.E007``
    names them), on a Redis server private to this application.

    Only values Django's fields produce are pickled, never model instances, so a class
    renamed or moved in a deploy does not break old entries.
    """

    protocol = pickle.HIGHEST_PROTOCOL

    def dumps(self, values: tuple) -> bytes:
        """Pickle ``values``."""
        return pickle.dumps(values, self.protocol)

    def loads(self, data: bytes) -> tuple:
        """Unpickle ``data``; the result must be a tuple."""
        values = pickle.loads(data)
        if type(values) is not tuple:
            raise ValueError(f"expected a tuple, got {type(values).__name__}")
        return values

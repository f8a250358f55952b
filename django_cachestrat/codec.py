"""Cache entries <-> model instances.

An entry is ``<fingerprint>:<model version>:<expires>:<delta>:<serialized field values>``.
The fingerprint names the schema that wrote it: a row has one key whatever the schema, so
during a rolling deploy processes of two schemas share it, and each reads only its own
schema's entries (another's is a miss, silently: it is a deploy, not an error). The
version tag lets ``invalidate_model`` retire every row at once; the values are the row's
concrete fields in model order, rebuilt with ``Model.from_db`` as if the database had
returned them. With ``SIGN`` on (the default) the entry is preceded by its MAC
(``signing``), bound to the key it is stored under; ``expires`` (when it goes stale, plus
the model's grace) is then also when a copy of it stops being accepted.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import operator
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from time import time as time_now
from typing import Any, NamedTuple, cast

from django.conf import settings as django_settings
from django.db import models
from django.db.models.base import ModelState
from django.db.models.expressions import Combinable, DatabaseDefault
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.signals import post_init, pre_init
from django.dispatch.dispatcher import NO_RECEIVERS
from django.utils import timezone

from django_cachestrat import conf, keys, signals, signing
from django_cachestrat.counters import recorder
from django_cachestrat.options import CacheOptions
from django_cachestrat.signing import TAG, Unverified

logger = logging.getLogger("django_cachestrat")


class Unstorable(Exception):
    """The instance's values are not what the database holds (deferred or expressions)."""


def encode(
    opts: CacheOptions,
    version: bytes,
    instance: models.Model,
    *,
    expires: int,
    clean: bool = False,
    delta: int = 0,
    key: str | None = None,
) -> bytes:
    """Return the entry bytes of ``instance``: ``fingerprint:version:expires:delta:values``.

    ``expires`` (ms since the epoch: when the entry goes stale; the entry is not accepted
    after it plus the model's ``grace``) and ``delta`` (ms the fill took) serve models with
    ``stale_ttl`` or ``early_refresh``; with ``SIGN`` on, a signed entry whose ``expires``
    passed is refused, so every entry stored needs one. ``key``: the Redis key it is
    stored under, which its MAC binds (default: the row's entry key).

    ``clean=True`` runs each value through ``Field.to_python`` first, for instances the
    user filled in by hand (a ``"5"`` for an IntegerField must come back as ``5``); it
    raises ``Unstorable`` where memory cannot tell what the database holds: expressions
    such as ``F("n") + 1``, generated fields, and the values ``as_stored`` refuses.
    Deferred fields raise ``Unstorable`` too, and so does a value the serializer cannot
    carry.
    """
    layout = _layout(opts.model)
    try:
        values = layout.values(instance.__dict__)
    except KeyError as exc:
        raise Unstorable(f"field {exc.args[0]!r} is deferred") from None
    if clean:
        if opts.generated:
            # Django 5.2 does not read a generated column back after a save: the
            # instance may hold its value from before.
            raise Unstorable(f"{opts.generated[0]} is generated; its value is the database's")
        values = _clean(layout, values)
    cfg = conf.settings()
    header = b"%s:%s:%d:%d:" % (opts.fingerprint.encode(), version, expires, delta)
    try:
        payload = cfg.serializer.dumps(values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise Unstorable(f"a value the serializer cannot carry: {exc}") from None
    data = header + payload
    if cfg.signer is None:
        return data
    if key is None:
        key = keys.entry(cfg.KEY_PREFIX, opts.label, instance.pk)
    return cfg.signer.tag(signing.ENTRY, key.encode(), data) + data


#: A fingerprint's size: 6 bytes, 12 hex digits (what ``_HEADER`` expects).
_FP_BYTES = 6


def fingerprint(model: type[models.Model]) -> str:
    """Return a short hash of what makes ``model``'s entries readable.

    This codec's format and the model's concrete fields (names, columns, types): after a
    deploy that changes either, entries and views written before it are misses. It is
    written into every entry and view (``encode``, ``views``), never into keys, so that
    both schemas' processes reach the same keys.
    """
    schema = [
        CODEC_FORMAT,
        signing.FORMAT,
        *(f"{f.attname}:{f.column}:{f.get_internal_type()}" for f in model._meta.concrete_fields),
    ]
    return hashlib.blake2b("|".join(schema).encode(), digest_size=_FP_BYTES).hexdigest()


def computed(value: object) -> bool:
    """Tell whether ``value`` is for the database to compute (``F("n") + 1``, a db default)."""
    return isinstance(value, Combinable | DatabaseDefault)


def as_stored(field: models.Field, value: object) -> object:
    """Return ``value`` as the database will give it back, or raise ``Unstorable``.

    Where the database would change it in ways that differ between backends (rounding
    extra decimal places, reading a naive datetime in some time zone), the row is not
    stored from memory: it is dropped, and the next read fills it from the database.
    ``cleaners(model)`` gives the same, faster, field by field.
    """
    if computed(value):
        raise Unstorable(f"{field.attname} holds an expression; its value is the database's")
    value = field.to_python(value)
    if (
        isinstance(value, Decimal)
        and isinstance(field, models.DecimalField)
        and field.decimal_places is not None
        and value.is_finite()
    ):
        return _in_places(field, value)
    if isinstance(value, datetime) and django_settings.USE_TZ:
        if timezone.is_naive(value):
            raise Unstorable(f"{field.attname} is a naive datetime; the database makes it aware")
        return value.astimezone(UTC)  # as the database gives it back
    return value


# Field classes whose ``to_python`` gives a value of exactly this type back unchanged.
# Such values (what the ORM, forms and most code set) skip the call and its checks: a
# write-through save cleans every field of the row after its UPDATE, before the store.
_UNCHANGED = {
    models.BooleanField: bool,
    models.IntegerField: int,
    models.CharField: str,
    models.TextField: str,
    models.FloatField: float,
    models.UUIDField: uuid.UUID,
    models.DateField: date,
    models.TimeField: time,
    models.DurationField: timedelta,
    models.BinaryField: bytes,
}


def _in_places(field: models.DecimalField, value: Decimal) -> Decimal:
    """Return ``value`` with the column's decimal places, as the database gives it back.

    ``Decimal("1.5")`` in a column of two places comes back as ``Decimal("1.50")``
    (equal, but printed differently in templates and JSON). More places than the column
    keeps are rounded by the database, and not alike on every backend: ``Unstorable``.
    """
    places = field.decimal_places
    exponent = cast(int, value.as_tuple().exponent)  # an int: the value is finite
    if exponent < -places:
        raise Unstorable(f"{field.attname} has more decimal places than the column keeps")
    try:
        # DecimalField.context, a cached_property, is not in the stubs.
        context = field.context  # type: ignore[attr-defined]
        return value.quantize(Decimal(1).scaleb(-places), context=context)
    except InvalidOperation:
        # More digits than max_digits: the database refuses it, so it is never stored.
        raise Unstorable(f"{field.attname} has more digits than the column keeps") from None


def _fits(exponent: int, digits: int, value: Decimal) -> bool:
    # NaN and infinities have a str exponent: never equal.
    shape = value.as_tuple()
    return shape.exponent == exponent and len(shape.digits) <= digits


def _in_utc(value: datetime) -> bool:
    # An aware datetime in UTC is what the database gives back, with USE_TZ or without.
    return value.tzinfo is UTC


def _shortcut(field: models.Field) -> tuple[type | None, Callable[[Any], bool] | None]:
    """Return the type of ``field``'s values that ``as_stored`` leaves alone, and a check.

    The type is None where there is no such type; the check, which such a value must
    still pass, is None where there is none.
    """
    converts = _converter(field)
    if converts is models.DecimalField:
        decimal = cast(models.DecimalField, field)
        places = decimal.decimal_places
        if places is None:  # no limit: the column keeps the value as it is
            return Decimal, Decimal.is_finite
        return Decimal, functools.partial(_fits, -places, decimal.max_digits)
    if converts is models.DateTimeField:
        return datetime, _in_utc
    return _UNCHANGED.get(converts), None


def _converter(field: models.Field) -> type:
    """Return the class whose ``to_python`` converts ``field``'s values.

    A foreign key converts as the field it points to; a subclass that overrides
    ``to_python`` is its own converter (and gets no shortcut).
    """
    while True:
        owner = next(c for c in type(field).__mro__ if "to_python" in c.__dict__)
        if owner is not models.ForeignKey:
            return owner
        field = cast(models.ForeignKey, field).target_field


def _cleaner(field: models.Field) -> Callable[[object], object]:
    """Return ``as_stored`` for ``field`` as a one-argument function, with its shortcut."""
    slow = functools.partial(as_stored, field)
    kind, check = _shortcut(field)
    if kind is None:
        return slow
    if check is None:

        def clean(value):
            return value if type(value) is kind else slow(value)

    else:

        def clean(value):
            return value if type(value) is kind and check(value) else slow(value)

    return clean


class _Layout(NamedTuple):
    """How one model's values are taken from an instance and put into an entry."""

    values: Callable[[dict], tuple]  # an instance's __dict__ -> its values, in field order
    kinds: tuple[type, ...] | None  # the values' types when cleaning leaves them all alone
    checks: tuple[tuple[int, Callable[[object], bool]], ...]  # what such values must pass
    cleaners: tuple[Callable[[object], object], ...]  # as_stored, field by field
    by_attname: dict[str, Callable[[object], object]]  # the same, by field attname


@functools.cache
def _layout(model: type[models.Model]) -> _Layout:
    fields = model._meta.concrete_fields
    names = [f.attname for f in fields]
    # itemgetter picks the values in C; of one name it returns the value, not a tuple.
    pick = operator.itemgetter(*names)
    values = pick if len(names) > 1 else lambda state: (pick(state),)
    shortcuts = [_shortcut(f) for f in fields]
    kinds = tuple(kind for kind, _ in shortcuts if kind is not None)
    cleaners = tuple(_cleaner(f) for f in fields)
    return _Layout(
        values=values,
        kinds=kinds if len(kinds) == len(shortcuts) else None,
        checks=tuple((i, check) for i, (_, check) in enumerate(shortcuts) if check),
        cleaners=cleaners,
        by_attname=dict(zip(names, cleaners, strict=True)),
    )


def cleaners(model: type[models.Model]) -> Mapping[str, Callable[[object], object]]:
    """Return ``as_stored`` for each concrete field of ``model``, by attname.

    Each is a function of the value; a value of the field's own type skips ``to_python``
    and its checks.
    """
    return _layout(model).by_attname


def _clean(layout: _Layout, values: tuple) -> tuple:
    """Return ``values`` as ``as_stored`` makes them, field by field."""
    # The common case in two C calls: every value already of its field's type (an
    # instance read from the database, or set from Python values), and a check of the
    # Decimals and datetimes. A write-through save cleans every field after its UPDATE.
    if layout.kinds is not None and tuple(map(type, values)) == layout.kinds:
        for i, check in layout.checks:
            if not check(values[i]):
                break
        else:
            return values
    return tuple(c(v) for c, v in zip(layout.cleaners, values, strict=True))


# One field value in a write-behind hash (a view, pending writes): integers as ASCII digits
# (so HINCRBY works on them), None as \x01, anything else as \x00 + the serializer's bytes.
_NULL = b"\x01"
_OBJECT = b"\x00"


def encode_value(value: object) -> bytes:
    """Encode one field value for a write-behind hash.

    Raises ``Unstorable`` for a value the serializer cannot carry (a ``FieldFile``, a
    custom field's object where check ``cachestrat.E007`` was silenced).
    """
    if value is None:
        return _NULL
    if type(value) is int:
        return str(value).encode()
    try:
        return _OBJECT + conf.settings().serializer.dumps((value,))
    except (TypeError, ValueError, OverflowError) as exc:
        raise Unstorable(f"a value the serializer cannot carry: {exc}") from None


def decode_value(data: bytes) -> object:
    """Decode what ``encode_value`` made; raises on bytes it did not make."""
    if data == _NULL:
        return None
    if data[:1] == _OBJECT:
        return conf.settings().serializer.loads(data[1:])[0]
    return int(data)


# Write-behind values as they are stored: a pending field's (and a view's) value is signed,
# bound to its row (the row's key tag, ``keys.behind_row_tag``) and its field's name, so
# the same bytes move between the row's hashes (view, pending, batch, set aside) and
# still verify. In a view, a counter's value stays plain digits: Redis adds to it.


def seal_value(row: bytes, name: str, value: object) -> bytes:
    """Encode a value of field ``name`` of the row tagged ``row`` for a pending hash."""
    signer = conf.settings().signer
    plain = encode_value(value)
    return plain if signer is None else signer.seal_value(row, name, plain)


def plain_in_view(name: str, value: object, counters: frozenset[str]) -> bool:
    """Tell whether a view holds ``value`` of field ``name`` plain: a counter's int or None.

    HINCRBY adds to it there, and no MAC could follow the sum.
    """
    return name in counters and (value is None or type(value) is int)


def view_value(row: bytes, name: str, value: object, counters: frozenset[str]) -> bytes:
    """Encode a value for a view: as ``seal_value``, plain for a counter's int (or None)."""
    if plain_in_view(name, value, counters):
        return encode_value(value)
    return seal_value(row, name, value)


def open_value(row: bytes, name: str, data: bytes) -> object:
    """Decode what ``seal_value`` made; raise ``signing.Unverified`` on bytes it did not.

    With ``SIGN`` off nothing is verified (and a signed value is read as it is).
    """
    signer = conf.settings().signer
    if signer is None:
        return decode_value(signing.plain_value(data))
    return decode_value(signer.open_value(row, name, data))


def open_view_value(row: bytes, name: str, data: bytes, counters: frozenset[str]) -> object:
    """Decode what ``view_value`` made: a plain counter's value is an int or None, unsigned.

    Plain digits are read as an int, never by the serializer; with ``SIGN`` on, any other
    unsigned value of a counter but None's is refused (``signing.Unverified``).
    """
    if name in counters and data[:1] != signing.MARK:
        if data.lstrip(b"-").isdigit():
            return int(data)  # what HINCRBY adds to
        if conf.settings().signer is not None and data != encode_value(None):
            raise Unverified("a counter's value that is neither signed nor an integer")
        return decode_value(data)
    return open_value(row, name, data)


class Entry(NamedTuple):
    """A decoded entry.

    ``obj`` is the row, or None when the entry says the row does not exist; ``expires``
    is when it goes stale (ms since the epoch; 0: not checked); ``delta`` is how long its
    fill took (ms, for early refresh).
    """

    obj: models.Model | None
    expires: int
    delta: int


_new_entry = tuple.__new__


def decode(
    opts: CacheOptions,
    data: bytes,
    version: bytes,
    using: str,
    cls: type[models.Model],
    key: str,
) -> Entry | None:
    """Return the ``Entry`` ``data`` stands for, or None when it is stale or unreadable.

    ``cls`` is the model asked for: the cached model itself or one of its proxies; ``key``
    the Redis key ``data`` was read from, which a signed entry's MAC binds.

    An entry of an older model version (``invalidate_model``) or of another schema's
    fingerprint (a deploy) is a silent miss, and so is a signed entry past its time.
    Unreadable bytes (no entry header, corrupted, written by another program, or by
    another serializer) and, with ``SIGN`` on, bytes whose MAC does not verify (forged,
    copied from another row's key, signed with a key no longer listed, not signed) are
    logged and sent as ``cache_error``; the caller counts them as a miss too.
    """
    return decode_many(opts, [data], version, using, cls, [key])[0]


def decode_many(
    opts: CacheOptions,
    datas: Sequence[bytes | None],
    version: bytes,
    using: str,
    cls: type[models.Model],
    names: Sequence[str],
    *,
    ages: bool = True,
) -> list[Entry | None]:
    """Decode several entries (None where there is none) as ``decode`` does each.

    ``names``: the key each was read from. The hot loop of a read: what is the same for
    every row is looked up once. With ``ages=False`` (a model that never looks at an
    entry's age) ``expires`` and ``delta`` are left 0.
    """
    cfg = conf.settings()
    loads = cfg.serializer.loads
    entry = _new_entry  # tuple.__new__: in C, where Entry(...) runs Python
    width = len(opts.fields)
    make = _builder(cls, opts, using)
    # This schema's entries of this version start with these bytes: one compare a row.
    head = b"%s:%s:" % (opts.fingerprint.encode(), version)
    signer = cfg.signer
    if signer is not None:
        check = signer.checker(signing.ENTRY)
        verified, remember = signer.verified, signer.remember
        # A signed entry is used until it expires plus its grace: later, it is a copy.
        oldest = int(time_now() * 1000) - opts.grace * 1000
    start = 0 if signer is None else TAG
    out: list[Entry | None] = []
    for data, name in zip(datas, names, strict=True):
        if data is None:
            out.append(None)
            continue
        if not data.startswith(head, start):
            # Another schema's entry (a deploy) or an older version's: a plain miss. Bytes
            # that are no entry at all are not: they are reported.
            problem = _foreign(opts, data, signer is not None)
            if problem:
                unreadable(opts, ValueError(problem))
            out.append(None)
            continue
        try:
            if signer is not None:
                body = data[TAG:]
                if verified.get(name) != data:  # not the bytes last verified there
                    if not check(name.encode(), body, data[:TAG]):
                        raise Unverified("its MAC does not verify")
                    remember(name, data)
                data = body
            parts = data.split(b":", 4)
            if len(parts) != 5:
                raise ValueError("no entry header")
            _, _, expires, delta, payload = parts
            if signer is not None and int(expires) < oldest:
                out.append(None)  # past its time: a copy of an older entry, put back
                continue
            if not payload:
                out.append(entry(Entry, (None, int(expires), int(delta))))
                continue
            values: Sequence[Any] = loads(payload)
            if len(values) != width:
                raise ValueError(f"{len(values)} values for {width} fields")
            if ages:
                out.append(entry(Entry, (make(values), int(expires), int(delta))))
            else:
                out.append(entry(Entry, (make(values), 0, 0)))
        except Exception as exc:
            unreadable(opts, exc)
            out.append(None)
    return out


# What every entry starts with, whatever its schema and version: ``fingerprint:version:
# expires:delta:``. Matched only when the fast compare failed, so never on a hit.
_HEADER = re.compile(rb"[0-9a-f]{%d}:[0-9]+:[0-9]+:[0-9]+:" % (2 * _FP_BYTES))


def _foreign(opts: CacheOptions, data: bytes, signed: bool) -> str | None:
    """Say what is wrong with bytes under an entry key that are not this schema's entry.

    None for an entry of another schema or an older version, signed or not as this
    process signs (a deploy, ``invalidate_model``), and for a signed one when this process
    does not sign (``SIGN`` turned off): a plain miss. Else the problem to report: no
    entry header, or, when this process signs, an entry of this schema without a MAC.
    """
    if _HEADER.match(data, TAG if signed else 0):
        return None
    if signed:
        if _HEADER.match(data) and data.startswith(opts.fingerprint.encode()):
            return "an entry without a MAC (is SIGN off in another process?)"
        return None if _HEADER.match(data) else "no entry header"
    return None if _HEADER.match(data, TAG) else "no entry header"


def unreadable(opts: CacheOptions, exc: Exception, what: str = "entry") -> None:
    """Log bytes read from Redis that cannot be used, count them and send ``cache_error``.

    ``what`` they were: an entry, a lookup pointer, a view. Unreadable or, with ``SIGN``
    on, not verified (``signing.Unverified``): either way a miss for the caller.
    """
    logger.warning(
        "django_cachestrat: unreadable %s for %s (%s); treated as a miss.", what, opts.label, exc
    )
    recorder.count(opts.label, recorder.ERRORS, 1)
    if signals.cache_error.receivers:
        signals.cache_error.send(sender=opts.model, error=exc, model=opts.model)


def encode_absent(opts: CacheOptions, version: bytes, key: str, expires: int) -> bytes:
    """Return the entry bytes that say the row does not exist (negative caching).

    ``key``: the entry key it is stored under; ``expires``: when its TTL ends (ms).
    """
    data = b"%s:%s:%d:0:" % (opts.fingerprint.encode(), version, expires)
    signer = conf.settings().signer
    return data if signer is None else signer.tag(signing.ENTRY, key.encode(), data) + data


def build(cls: type[models.Model], opts: CacheOptions, using: str, values: tuple):
    """Return the ``cls`` instance of the row ``values``, as ``from_db`` would."""
    return _builder(cls, opts, using)(values)


def _builder(cls: type[models.Model], opts: CacheOptions, using: str):
    """Return a function that builds ``cls`` instances from rows' values."""
    # Model.__init__ is most of a hit's Python time. When nothing can observe the
    # difference (no pre_init/post_init receivers for the class, no from_db override, no
    # field descriptor that acts on assignment), set the attributes directly, as
    # __init__ would. Django caches "no receivers" per sender and clears that cache on
    # every connect, so a receiver connected later is seen at once.
    if not (_silent(pre_init, cls) and _silent(post_init, cls) and _plain(cls)):
        # All the fields' values, in order: from_db reads field_names only for fewer.
        return functools.partial(cls.from_db, using, opts.attnames)
    new, attnames = cls.__new__, opts.attnames

    def make(values):
        obj = new(cls)
        # As many values as fields: the callers check it, so no strict zip on the hot path.
        obj.__dict__.update(zip(attnames, values, strict=False))
        state = obj._state = ModelState()
        state.adding = False
        state.db = using
        return obj

    return make


def _silent(signal, cls) -> bool:
    return not signal.receivers or signal.sender_receivers_cache.get(cls) is NO_RECEIVERS


@functools.cache
def _plain(cls: type[models.Model]) -> bool:
    # A classmethod read off its class has a __func__; the stubs type it as a plain callable.
    if getattr(cls.from_db, "__func__", None) is not models.Model.from_db.__func__:  # type: ignore[attr-defined]
        return False
    for field in cls._meta.concrete_fields:
        descriptor = inspect.getattr_static(cls, field.attname, None)
        # A foreign key's id descriptor only drops a cached related object on assignment,
        # and a new instance has none.
        if isinstance(descriptor, ForeignKeyDeferredAttribute):
            continue
        if descriptor is not None and hasattr(type(descriptor), "__set__"):
            return False
    return True


# The format of the entries and views this codec writes; part of the schema fingerprint,
# so that entries in an older format (an older codec, or values of another serializer:
# codec-4 pickled them) are misses after an upgrade, never errors. Change it with the
# format.
CODEC_FORMAT = "codec-5"

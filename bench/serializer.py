"""The serializer section of the benchmark (``python -m bench.run --only serializer``).

What one row costs to turn into bytes (``dumps``, on every fill and write-through save)
and back (``loads``, on every hit), for the candidates, in one run, interleaved in
rounds as the other comparisons are:

- ``pickle + codec-4``: the previous default, as the previous codec used it: aware UTC
  datetimes as ints of microseconds and Decimals as str before pickling (a plan per
  model), turned back after unpickling;
- ``pickle``: ``PickleSerializer`` as the codec uses it now (the opt-in), no plan;
- ``msgpack (ours)``: ``MsgpackSerializer``, the default;
- ``msgpack + codec-4``: plain msgpack of the codec-4 tuple (the same plan);
- ``ormsgpack``: ormsgpack with the same extension types as ours (a UTC datetime as an
  int of microseconds: ormsgpack reads no timestamp of its own);
- ``cbor2``: cbor2 with its own tags for datetime, Decimal and UUID. Not strict: its
  decoder builds what any of its semantic tags name (regular expressions it compiles,
  MIME messages it parses, sets, fractions, shared references), so it is measured but
  not a choice.

Then the read path end to end, on PostgreSQL and Redis as in the core section:
``get_cached(pk=)`` hits and ``get_many_cached(100)`` hits of ``WriteThroughItem`` with
the default serializer against ``Codec4Pickle`` (the previous default's pickle and
plan, as a serializer), each reading entries it wrote under a key prefix of its own,
interleaved. Goal: at most 1.05x (the issue's, for the default with its MAC).

Rows: ``bench`` is a ``WriteThroughItem`` (int pk, two str of 11 and 228 characters, an
int, a Decimal, an aware datetime, a bool), as the other sections store it; ``mixed``
adds a None, a date, a UUID and a JSON dict. Every candidate must give each row back
equal, with the same types, before it is timed; one that cannot is left out, with the
reason. The write-behind hashes encode one value at a time (``codec.encode_value``):
their cost for a datetime, a Decimal and a str is timed too, against the previous
``b"\\x00" + pickle``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import functools
import importlib.util
import pickle
import statistics
import uuid

from bench.run import Row, Setup, interleaved, prime, print_summary, print_table
from django_cachestrat.serializers import Serializer

BATCH = 200  # operations per variant per round
OURS, TODAY = "msgpack (ours)", "pickle + codec-4"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def rows() -> dict[str, tuple]:
    """The rows, as ``codec.encode`` hands them to the serializer."""
    from bench.models import WriteThroughItem
    from django_cachestrat import codec

    when = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=1234, microseconds=5)
    item = WriteThroughItem(
        pk=1234,
        name="item 001234",
        count=1234,
        price=decimal.Decimal("1234.99"),
        updated=when,
        active=True,
        body="Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 4,
    )
    mixed = (
        77,
        "Ann Example",
        "ann@example.org",
        41,
        None,
        when,
        decimal.Decimal("1200.50"),
        dt.date(2024, 5, 1),
        uuid.UUID(int=12345678901234567890),
        {"tags": ["a", "b"], "score": 4.5, "n": 3, "ok": True, "none": None},
    )
    return {"bench": codec._layout(WriteThroughItem).values(item.__dict__), "mixed": mixed}


class Codec4Pickle(Serializer):
    """The previous default as a serializer: codec-4's plan (aware UTC datetimes as ints
    of microseconds, Decimals as str, at the positions of the model's DateTimeFields and
    DecimalFields), then pickle (or ``dumps``/``loads`` given).

    ``loads`` gives the list codec-4's ``decode_many`` built, not a tuple: no copy.
    """

    def __init__(self, utc, dec, dumps=None, loads=None):
        self.utc, self.dec = utc, dec
        self._dumps = dumps or functools.partial(pickle.dumps, protocol=pickle.HIGHEST_PROTOCOL)
        self._loads = loads or pickle.loads

    @classmethod
    def of_model(cls, model):
        kinds = [f.get_internal_type() for f in model._meta.concrete_fields]
        return cls(
            [i for i, kind in enumerate(kinds) if kind == "DateTimeField"],
            [i for i, kind in enumerate(kinds) if kind == "DecimalField"],
        )

    @classmethod
    def of_row(cls, values, **kwargs):
        return cls(
            [i for i, v in enumerate(values) if type(v) is dt.datetime],
            [i for i, v in enumerate(values) if type(v) is decimal.Decimal],
            **kwargs,
        )

    def dumps(self, values):
        out = list(values)
        for i in self.utc:
            v = out[i]
            if type(v) is dt.datetime and v.tzinfo is not None and not v.utcoffset():
                out[i] = (v - _EPOCH) // _MICROSECOND
        for i in self.dec:
            if type(out[i]) is decimal.Decimal:
                out[i] = str(out[i])
        return self._dumps(tuple(out))

    def loads(self, data):
        # As codec-4's decode_many did: a function a position, with a type check each.
        out = list(self._loads(data))
        for i in self.utc:
            v = out[i]
            out[i] = _EPOCH + dt.timedelta(microseconds=v) if type(v) is int else v
        for i in self.dec:
            v = out[i]
            out[i] = decimal.Decimal(v) if type(v) is str else v
        return out


def candidates(values: tuple) -> dict[str, tuple | str]:
    """``{name: (dumps, loads)}``, or ``{name: reason}`` for one that is not installed."""
    import msgpack

    from django_cachestrat import serializers

    today = Codec4Pickle.of_row(values)
    plain = Codec4Pickle.of_row(values, dumps=msgpack.packb, loads=msgpack.unpackb)
    pickled = serializers.PickleSerializer()
    ours = serializers.MsgpackSerializer()
    found: dict[str, tuple | str] = {
        TODAY: (today.dumps, today.loads),
        "pickle": (pickled.dumps, pickled.loads),
        OURS: (ours.dumps, ours.loads),
        "msgpack + codec-4": (plain.dumps, plain.loads),
    }
    if importlib.util.find_spec("ormsgpack"):
        found["ormsgpack"] = _ormsgpack()
    else:
        found["ormsgpack"] = "not installed (pip install ormsgpack)"
    if importlib.util.find_spec("cbor2"):
        import cbor2

        found["cbor2"] = (cbor2.dumps, cbor2.loads)
    else:
        found["cbor2"] = "not installed (pip install cbor2)"
    return found


def _ormsgpack():
    import ormsgpack

    from django_cachestrat import serializers

    utc_code = 100

    def default(value):
        if type(value) is dt.datetime and value.tzinfo is dt.UTC:
            return ormsgpack.Ext(utc_code, ((value - _EPOCH) // _MICROSECOND).to_bytes(8, "big"))
        ext = serializers._default(value)  # the same extension types as ours
        return ormsgpack.Ext(ext.code, ext.data)

    def hook(code, data):
        if code == utc_code:
            return _EPOCH + dt.timedelta(microseconds=int.from_bytes(data, "big"))
        return serializers._ext(code, data)

    option = ormsgpack.OPT_PASSTHROUGH_DATETIME | ormsgpack.OPT_PASSTHROUGH_UUID

    def loads(data):
        return tuple(ormsgpack.unpackb(data, ext_hook=hook))

    return (lambda v: ormsgpack.packb(v, default=default, option=option), loads)


def exact(values, back) -> str | None:
    """None if ``back`` is ``values`` (equal, same types, same tzinfo), else what differs."""
    if len(back) != len(values):
        return f"{len(back)} values for {len(values)}"
    for i, (a, b) in enumerate(zip(values, back, strict=True)):
        if type(a) is not type(b) or a != b or getattr(a, "tzinfo", 0) != getattr(b, "tzinfo", 0):
            return f"value {i}: {a!r} came back as {b!r}"
    return None


def measure_rows(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    table: list[Row] = []
    notes: list[str] = []
    for shape, values in rows().items():
        usable = {}
        for name, found in candidates(values).items():
            if isinstance(found, str):
                notes.append(f"{shape}: {name} left out: {found}")
                continue
            dumps, loads = found
            try:
                data = dumps(values)
                wrong = exact(values, tuple(loads(data)))
            except Exception as exc:  # a type it does not carry
                wrong = f"{type(exc).__name__}: {exc}"
            if wrong:
                notes.append(f"{shape}: {name} left out: {wrong}")
                continue
            usable[name] = (dumps, loads, data)
        sizes = ", ".join(f"{name} {len(d)}" for name, (_, _, d) in usable.items())
        notes.append(f"{shape}: bytes per row: {sizes}")
        for phase in ("loads", "dumps"):
            if phase == "loads":
                variants = {n: _bound(lo, d) for n, (_, lo, d) in usable.items()}
            else:
                variants = {n: _bound(du, values) for n, (du, _, _) in usable.items()}
            samples = interleaved(variants, args.rounds, BATCH, warmup=2000)
            notes.append(
                f"{shape} {phase} raw µs: "
                + ", ".join(f"{n} {statistics.median(v):.3f}" for n, v in samples.items())
            )
            for name in usable:
                if name == TODAY:
                    continue
                goal = 1.0 if (name == OURS and phase == "loads") else None
                table.append(
                    Row(f"{shape} row {phase}: {name} vs {TODAY}", samples, name, TODAY, goal)
                )
    return table, notes


def _bound(fn, arg):
    return lambda i: fn(arg)


def measure_values(args: argparse.Namespace) -> list[Row]:
    """``codec.encode_value`` / ``decode_value`` of one value, against the previous pickle."""
    from django_cachestrat import codec

    table = []
    values = {
        "datetime": dt.datetime(2024, 1, 1, 12, 30, tzinfo=dt.UTC),
        "Decimal": decimal.Decimal("1234.99"),
        "str": "item 001234",
    }
    for kind, value in values.items():
        old = b"\x00" + pickle.dumps((value,), pickle.HIGHEST_PROTOCOL)
        new = codec.encode_value(value)
        assert codec.decode_value(new) == value
        samples = interleaved(
            {
                "encode new": lambda i, v=value: codec.encode_value(v),
                "encode old": lambda i, v=value: b"\x00" + pickle.dumps((v,), 5),
                "decode new": lambda i, d=new: codec.decode_value(d),
                "decode old": lambda i, d=old: pickle.loads(d[1:])[0],
            },
            args.rounds,
            BATCH,
            warmup=2000,
        )
        table.append(
            Row(f"encode_value({kind}) vs pickle", samples, "encode new", "encode old", None)
        )
        table.append(
            Row(f"decode_value({kind}) vs pickle", samples, "decode new", "decode old", None)
        )
    return table


def measure_reads(args: argparse.Namespace, started: bool) -> list[Row]:
    """Hits end to end: the default serializer against ``Codec4Pickle``, interleaved."""
    from django_cachestrat import conf

    b = Setup(args, started)  # its rows, primed with the default serializer
    cfg = conf.settings()
    new = (cfg.serializer, cfg.KEY_PREFIX)
    old = (Codec4Pickle.of_model(b.WT), cfg.KEY_PREFIX + "-codec4")
    cfg.serializer, cfg.KEY_PREFIX = old
    try:
        prime(b.WT, b.wt_pks, b.size)
    finally:
        cfg.serializer, cfg.KEY_PREFIX = new

    def using(which, read):
        # The same two attribute writes in both variants, so only the serializer differs.
        def op(i):
            cfg.serializer, cfg.KEY_PREFIX = which
            return read(i)

        return op

    try:
        point = interleaved(
            {OURS: using(new, b.get_cached), TODAY: using(old, b.get_cached)},
            args.rounds,
            args.point_batch,
            warmup=500,
        )
        bulk = interleaved(
            {OURS: using(new, b.get_many), TODAY: using(old, b.get_many)},
            args.rounds,
            args.bulk_batch,
            warmup=50,
        )
    finally:
        cfg.serializer, cfg.KEY_PREFIX = new
    return [
        Row(f"get_cached(pk=) hit: {OURS} vs {TODAY}", point, OURS, TODAY, 1.05),
        Row(f"get_many_cached({b.size}) hit: {OURS} vs {TODAY}", bulk, OURS, TODAY, 1.05),
    ]


def run_section(args: argparse.Namespace, started: bool) -> list[str]:
    """Measure and print the serializer section; return the goals missed."""
    print("=" * 100)
    print(f"Serializers: one row's dumps and loads, in µs, {TODAY} as the base")
    print("=" * 100)
    table, notes = measure_rows(args)
    values = measure_values(args)
    reads = measure_reads(args, started)
    print(
        f"Timings: median µs per operation over {args.rounds} interleaved rounds of {BATCH}; "
        "ratio = median of the per-round ratios (p25-p75 shown)"
    )
    print_table(table)
    print()
    print_table(values)
    print()
    print("The read path end to end (WriteThroughItem hits, PostgreSQL behind):")
    print_table(reads)
    print()
    for note in notes:
        print(f"  {note}")
    missed = [row.label for row in table + reads if row.passed is False]
    return print_summary(missed, "serializer")

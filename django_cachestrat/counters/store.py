"""Where the statistics live in Redis, and how they are added to, read and cleared.

All keys share the ``{stats}`` hash tag (``keys.stats``): a hash of totals since the last
reset and one hash per minute, which lives ``STATS_RETENTION`` minutes. Fields are
``<app_label.model_name>|<counter>``. Every process adds to the same keys, so what is
read is the whole fleet's. Each function takes the transport; none reads settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from django_cachestrat import keys
from django_cachestrat.backends import scripts

#: Counts by model label, then by counter name.
Counts = dict[str, dict[str, int]]

#: The label under which every bucket also holds its counts added up over all models, so
#: a chart of the whole cache reads a few fields a minute instead of every model's.
ALL = "*"


def add(
    transport,
    prefix: str,
    retention: int,
    unsent: Mapping[int, Mapping[tuple[str, str], int]],
    since: float,
) -> None:
    """Add counts (by minute, then ``(label, counter)``) to the totals and the buckets.

    One round trip, one ``STATS_ADD`` per minute. ``since``: when the sender began
    counting, written as the totals' start if they have none.
    """
    total = keys.stats(prefix)["total"]
    life = retention * 60 + 120  # a bucket outlives the window by the minute being read
    ops = []
    for minute, counts in unsent.items():
        args: list = [life, int(since)]
        summed: dict[str, int] = {}
        for (label, name), n in counts.items():
            args += [f"{label}|{name}", n]
            summed[name] = summed.get(name, 0) + n
        for name, n in summed.items():
            args += [f"{ALL}|{name}", n]
        ops.append((scripts.STATS_ADD, [total, keys.stats_minute(prefix, minute)], args))
    transport.execute(ops)


def _parse(raw: Mapping[bytes, bytes]) -> Counts:
    counts: Counts = {}
    for field, value in raw.items():
        label, _, name = field.decode().partition("|")
        if label and label != ALL:
            counts.setdefault(label, {})[name] = int(value)
    return counts


def totals(transport, prefix: str) -> tuple[float | None, Counts]:
    """Return ``(since, counts)``: when counting began (epoch seconds) and the totals."""
    (raw,) = transport.execute([("HGETALL", keys.stats(prefix)["total"])])
    since = raw.pop(b"|since", None)
    return (float(since) if since is not None else None), _parse(raw)


def buckets(transport, prefix: str, minutes: list[int]) -> list[Counts]:
    """Return the counts of each of ``minutes`` (epoch seconds // 60), in one round trip."""
    replies = transport.execute([("HGETALL", keys.stats_minute(prefix, m)) for m in minutes])
    return [_parse(raw) for raw in replies]


def overall(
    transport, prefix: str, minutes: list[int], names: Sequence[str]
) -> list[dict[str, int]]:
    """Return each of ``minutes``' counters ``names`` added up over all models (one round trip)."""
    fields = [f"{ALL}|{name}" for name in names]
    replies = transport.execute([("HMGET", keys.stats_minute(prefix, m), *fields) for m in minutes])
    return [
        {name: int(v) for name, v in zip(names, reply, strict=True) if v is not None}
        for reply in replies
    ]


def reset(transport, prefix: str, retention: int, now_minute: int) -> None:
    """Delete the totals, the census and every bucket of the retention window."""
    names = keys.stats(prefix)
    doomed = [names["total"], names["census"]]
    window = range(now_minute - retention - 2, now_minute + 2)
    doomed += [keys.stats_minute(prefix, minute) for minute in window]
    transport.execute([("DEL", *doomed)])

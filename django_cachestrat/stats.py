"""Statistics of every cached model, added up over every process that shares the cache.

::

    from django_cachestrat import stats

    stats.snapshot()                       # {"app_label.Model": {"hits": ..., "hit_rate": ...}}
    stats.series("shop.Book", minutes=60)  # one dict a minute, oldest first
    stats.flush()                          # send this process's counts now
    stats.reset()                          # start counting from zero, everywhere

Counts are made in each process (``counters.recorder``) and added up in Redis
(``counters.store``), so any process reads the whole fleet's. Entries and bytes come
from a scan of the keyspace (``counters.census``); write-behind backlogs from the queues
and the ``DeadLetter`` table, read when asked. Every function raises ``CacheUnavailable``
(``django_cachestrat.backends``) when Redis cannot be read.
"""

from __future__ import annotations

import datetime as dt
import difflib
import time
from typing import Any

from django.db import models
from django.db.models import Count

from django_cachestrat import backends, conf, options
from django_cachestrat.counters import census, recorder, store
from django_cachestrat.models import DeadLetter
from django_cachestrat.write_behind import inspect

__all__ = [
    "COUNTERS",
    "flush",
    "hit_rate",
    "models_counted",
    "report",
    "reset",
    "resolve",
    "series",
    "series_all",
    "since",
    "snapshot",
]

#: The counters of ``snapshot()`` and ``series()``, in the order tables show them.
COUNTERS = recorder.COUNTERS


def flush() -> bool:
    """Send what this process counted and has not sent yet, now; True if Redis took it.

    The background sender does this every ``STATS_INTERVAL`` seconds; call it before
    reading when this process's last counts must be in (tests, a dashboard).
    """
    return recorder.flush()


def reset() -> None:
    """Clear the statistics in Redis (totals, buckets, census) and this process's unsent counts.

    Other processes' counts made before the reset and not sent yet arrive after it: at
    most their last ``STATS_INTERVAL``.
    """
    cfg = conf.settings()
    recorder.discard()
    transport = backends.get(cfg.CACHE_ALIAS)
    store.reset(transport, cfg.KEY_PREFIX, cfg.STATS_RETENTION, int(time.time() // 60))


def since() -> dt.datetime | None:
    """Return when counting began (after the last reset), or None if nothing was counted."""
    cfg = conf.settings()
    start, _ = store.totals(backends.get(cfg.CACHE_ALIAS), cfg.KEY_PREFIX)
    return None if start is None else dt.datetime.fromtimestamp(start, tz=dt.UTC)


def models_counted() -> list[type[models.Model]]:
    """Return the models statistics are kept for: concrete cached ones (a proxy is its model)."""
    return [m for m in options.cached_models() if not m._meta.proxy]


def resolve(model: type[models.Model] | str) -> type[models.Model]:
    """Return the cached model ``model`` names: a class, or ``"app_label.Model"`` (any case).

    Raises ``ValueError`` naming the cached models (and the nearest one) when it names none.
    """
    counted = models_counted()
    if isinstance(model, type) and issubclass(model, models.Model):
        concrete = model._meta.concrete_model
        if concrete in counted:
            return concrete
        name = model._meta.label
    else:
        name = str(model)
        for candidate in counted:
            if candidate._meta.label_lower == name.lower():
                return candidate
    labels = [m._meta.label for m in counted]
    near = difflib.get_close_matches(name, labels, n=1, cutoff=0.5) or [
        label for label in labels if label.lower().endswith("." + name.lower())
    ]
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise ValueError(
        f"Unknown model {name!r}: expected 'app_label.Model' of a cached model.{hint} "
        f"Cached models: {', '.join(labels) or 'none'}."
    )


def hit_rate(hits: int, misses: int) -> float | None:
    """Return ``hits / (hits + misses)``, or None when there were no reads."""
    reads = hits + misses
    return hits / reads if reads else None


def snapshot(*, fresh: bool = False) -> dict[str, dict[str, Any]]:
    """Return the figures of every cached model, by ``"app_label.Model"``.

    Counters are totals since the last reset, from every process; see the README's
    Statistics section for each key. ``fresh`` takes a new census of entries and bytes
    instead of one up to ``census.MAX_AGE`` seconds old.
    """
    cfg = conf.settings()
    transport = backends.get(cfg.CACHE_ALIAS)
    _, totals = store.totals(transport, cfg.KEY_PREFIX)
    taken = census.read(transport, cfg.KEY_PREFIX, fresh=fresh)
    found = taken["models"]
    letters = dict(
        DeadLetter.objects.values_list("model").annotate(n=Count("pk")).values_list("model", "n")
    )
    exact = taken["exact"]
    out: dict[str, dict[str, Any]] = {}
    for model in models_counted():
        opts = options.get(model)
        strategy = model.cache_strategy  # type: ignore[attr-defined]  # from its mixin
        about: dict[str, Any] = {"strategy": strategy.name, "ttl": opts.ttl or cfg.DEFAULT_TTL}
        if strategy.defers_writes:
            rows, oldest = inspect.backlog(model)
            age = (dt.datetime.now(dt.UTC) - oldest).total_seconds() if oldest else 0.0
            about.update(
                pending_rows=rows,
                oldest_pending_age=round(max(0.0, age), 3),
                dead_letters=letters.get(opts.label, 0),
            )
        counts = totals.pop(opts.label, {})
        out[model._meta.label] = _row(counts, found.get(opts.label, (0, 0)), exact, about)
    for label, counts in totals.items():  # models this process does not have (a deploy)
        out[label] = _row(counts, found.get(label, (0, 0)), exact, {})
    return out


def _row(counts: dict[str, int], entries_bytes, exact: bool, about: dict) -> dict[str, Any]:
    """Return one model's snapshot: its counters, its census, then what ``about`` says."""
    figures = _figures(counts)
    figures.update(
        strategy=None,
        ttl=None,
        entries=entries_bytes[0],
        bytes=entries_bytes[1],
        entries_exact=exact,
        pending_rows=None,
        oldest_pending_age=None,
        dead_letters=None,
    )
    figures.update(about)
    return figures


def _figures(counts: dict[str, int]) -> dict[str, Any]:
    figures: dict[str, Any] = {name: counts.get(name, 0) for name in COUNTERS}
    figures["hit_rate"] = hit_rate(figures["hits"], figures["misses"])
    return figures


def series(model: type[models.Model] | str, minutes: int = 60) -> list[dict[str, Any]]:
    """Return ``model``'s counters per minute over the last ``minutes``, oldest first.

    One dict a minute, every minute present (zeros where nothing was counted): ``minute``
    (its start, epoch seconds), ``time`` (the same, ISO 8601 UTC), each counter and
    ``hit_rate``. The current minute is the last and still filling. ``minutes`` is 1 to
    ``STATS_RETENTION``; ``model`` a class or ``"app_label.Model"`` (``ValueError`` if it
    is not a cached model).
    """
    label = options.get(resolve(model)).label
    return [_point(minute, counts.get(label, {})) for minute, counts in _window(minutes)]


def series_all(minutes: int = 60) -> list[dict[str, Any]]:
    """Return ``series`` of every model added up (a few fields a minute: cheap for a day)."""
    cfg = conf.settings()
    window = _minutes(minutes)
    summed = store.overall(backends.get(cfg.CACHE_ALIAS), cfg.KEY_PREFIX, window, COUNTERS)
    return [_point(minute, counts) for minute, counts in zip(window, summed, strict=True)]


def _window(minutes: int) -> list[tuple[int, dict[str, dict[str, int]]]]:
    """Return ``(minute, counts by model label)`` for the last ``minutes``, oldest first."""
    cfg = conf.settings()
    window = _minutes(minutes)
    counted = store.buckets(backends.get(cfg.CACHE_ALIAS), cfg.KEY_PREFIX, window)
    return list(zip(window, counted, strict=True))


def _minutes(minutes: int) -> list[int]:
    """Return the last ``minutes`` (epoch seconds // 60), oldest first, checked."""
    cfg = conf.settings()
    if not isinstance(minutes, int) or isinstance(minutes, bool):
        raise ValueError(f"minutes must be an int, not {type(minutes).__name__}.")
    if not 1 <= minutes <= cfg.STATS_RETENTION:
        raise ValueError(
            f"minutes must be between 1 and STATS_RETENTION ({cfg.STATS_RETENTION}), not {minutes}."
        )
    now = int(time.time() // 60)
    return list(range(now - minutes + 1, now + 1))


def _point(minute: int, counts: dict[str, int]) -> dict[str, Any]:
    start = minute * 60
    point: dict[str, Any] = {
        "minute": start,
        "time": dt.datetime.fromtimestamp(start, tz=dt.UTC).isoformat(),
    }
    point.update(_figures(counts))
    return point


def report(*, fresh: bool = False) -> dict[str, Any]:
    """Return ``{"since": ISO 8601 or None, "models": snapshot()}``.

    What the JSON view and ``cachestrat_stats --json`` print. This process's counts are
    sent first.
    """
    flush()
    started = since()
    return {
        "since": started.isoformat() if started else None,
        "models": snapshot(fresh=fresh),
    }

"""What the admin dashboard shows, gathered in one place (the admin only renders it).

Per cached model: its strategy and TTL and its statistics (``stats.snapshot()``, added up
over every process that shares the cache); over the chosen period, the hit rate and the
requests per minute of all models (``stats.series``); and what the Redis server says of
itself (``INFO``; on a ring, each node's). A Redis that cannot be reached leaves those
parts empty, with a note.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django_cachestrat import backends, charts, conf, stats
from django_cachestrat.backends import CacheUnavailable

#: The periods the page offers: name -> minutes.
PERIODS = {"1h": 60, "24h": 24 * 60}

#: The figures of a model's table row, in order: (snapshot key, column title).
COLUMNS = [
    ("hits", "hits"),
    ("misses", "misses"),
    ("hit_rate", "hit rate"),
    ("fills", "fills"),
    ("invalidations", "invalidations"),
    ("entries", "entries"),
    ("bytes", "bytes"),
]
#: More columns for write-behind models.
BEHIND_COLUMNS = [
    ("pending_rows", "pending rows"),
    ("oldest_pending_age", "oldest pending (s)"),
    ("dead_letters", "dead letters"),
]


@dataclass
class ModelRow:
    """One cached model's line of the table."""

    label: str
    strategy: str
    ttl: int | None
    figures: list[Any]
    behind: list[Any] | None  # the write-behind columns, or None for other strategies


@dataclass
class Overview:
    """Everything the page shows."""

    period: str
    rows: list[ModelRow]
    hit_rate: float | None  # over every model, since the statistics were reset
    hit_rate_chart: charts.Chart | None
    requests_chart: charts.Chart | None
    server: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: On a ring, each node's figures (``name`` first); empty on one server.
    nodes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def hit_rate_shown(self) -> str:
        """Return the overall hit rate as the page prints it (a percentage, or "-")."""
        return _shown("hit_rate", self.hit_rate) or "-"


def overview(period: str = "1h") -> Overview:
    """Gather the page's figures for ``period`` (a key of ``PERIODS``; else ``1h``)."""
    if period not in PERIODS:
        period = "1h"
    problems: list[str] = []
    try:
        stats.flush()  # this process's own counts in too
        figures = stats.snapshot()
    except CacheUnavailable as exc:
        figures = {}
        problems.append(f"Statistics could not be read from Redis ({exc}).")
    rows, hits, misses = [], 0, 0
    for label, got in figures.items():
        hits += got["hits"]
        misses += got["misses"]
        behind = got.get("pending_rows") is not None
        rows.append(
            ModelRow(
                label=label,
                strategy=got.get("strategy") or "-",
                ttl=got.get("ttl"),
                figures=[_shown(key, got.get(key)) for key, _ in COLUMNS],
                behind=[got.get(key) for key, _ in BEHIND_COLUMNS] if behind else None,
            )
        )
    rate_chart = requests_chart = None
    try:
        rate_chart, requests_chart = _charts(PERIODS[period])
    except CacheUnavailable as exc:
        problems.append(f"The statistics' time series could not be read ({exc}).")
    server, nodes = _servers(problems)
    return Overview(
        period=period,
        rows=rows,
        hit_rate=stats.hit_rate(hits, misses),
        hit_rate_chart=rate_chart,
        requests_chart=requests_chart,
        server=server,
        problems=problems,
        nodes=nodes,
    )


def _shown(key: str, value: Any) -> Any:
    """Return a figure as the table shows it (a hit rate as a percentage)."""
    if key == "hit_rate" and value is not None:
        return f"{100 * value:.1f}%"
    return value


def _charts(minutes: int) -> tuple[charts.Chart, charts.Chart]:
    """Return the charts of the hit rate (%) and the requests per minute, all models."""
    points = stats.series_all(minutes)
    times = [dt.datetime.fromtimestamp(p["minute"], tz=dt.UTC) for p in points]
    requests = [p["hits"] + p["misses"] for p in points]
    rates = [None if p["hit_rate"] is None else 100 * p["hit_rate"] for p in points]
    return (
        charts.line_chart(times, rates, y_max=100, unit="%"),
        charts.line_chart(times, [float(n) for n in requests]),
    )


def _servers(problems: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return what the Redis server says of itself; on a ring, also each node's figures.

    On a cluster, each master's. One ``INFO`` a node. A ring's cards add up its nodes (keys,
    hits, clients); a node that cannot be reached is listed as such, and named among the
    problems.
    """
    nodes = backends.get(conf.settings().CACHE_ALIAS).servers
    infos: list[tuple[Any, dict[str, Any] | None]] = []
    for node in nodes:
        try:
            infos.append((node, node.info()))
        except CacheUnavailable as exc:
            infos.append((node, None))
            what = f"Redis node {node.name!r}" if len(nodes) > 1 else "Redis"
            problems.append(f"{what} cannot be reached ({exc}).")
    answered = [info for _, info in infos if info is not None]
    if not answered:
        return {}, []
    hits = sum(info.get("keyspace_hits", 0) for info in answered)
    misses = sum(info.get("keyspace_misses", 0) for info in answered)
    first = answered[0]
    server = {
        "version": first.get("redis_version"),
        "memory": first.get("used_memory_human") if len(nodes) == 1 else None,
        "peak memory": first.get("used_memory_peak_human") if len(nodes) == 1 else None,
        "keys": sum(_keys(info) for info in answered),
        "hit rate": _rate(hits, misses),
        "clients": sum(info.get("connected_clients", 0) for info in answered),
        "uptime (s)": first.get("uptime_in_seconds"),
    }
    if len(nodes) == 1:
        return server, []
    del server["memory"], server["peak memory"], server["uptime (s)"]
    server["nodes"] = f"{len(answered)} of {len(nodes)} up"
    return server, [_node_figures(node, info) for node, info in infos]


def _node_figures(node, info: dict[str, Any] | None) -> dict[str, Any]:
    """Return one ring node's line: its alias, state, memory, keys, hit rate, uptime."""
    if info is None:
        return {"node": node.name, "state": "down"}
    return {
        "node": node.name,
        "state": "up" if getattr(node, "settled", True) else "not settled (rebalance)",
        "memory": info.get("used_memory_human"),
        "keys": _keys(info),
        "hit_rate": _rate(info.get("keyspace_hits", 0), info.get("keyspace_misses", 0)),
        "clients": info.get("connected_clients"),
        "uptime": info.get("uptime_in_seconds"),
    }


def _keys(info: dict[str, Any]) -> int:
    return sum(db.get("keys", 0) for name, db in info.items() if name.startswith("db"))


def _rate(hits: int, misses: int) -> str:
    return f"{100 * hits / (hits + misses):.1f}%" if hits + misses else "-"

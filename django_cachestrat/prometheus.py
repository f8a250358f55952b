"""The statistics in Prometheus' text format (the optional ``prometheus`` extra).

Names follow Prometheus' conventions: a ``cachestrat_`` prefix, counters ending in
``_total``, base units (seconds, bytes), one ``model`` label (``app_label.Model``) and no
label that grows with the data (no pk). The figures are the fleet's, added up in Redis,
so one scrape of any process is enough.
"""

from __future__ import annotations

from typing import Any

try:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
except ImportError:  # the extra is not installed: ``available()`` says so
    CollectorRegistry = None  # type: ignore[misc,assignment]  # absent without the extra
    CONTENT_TYPE_LATEST = "text/plain; version=0.0.4; charset=utf-8"

#: Counter -> help text; each is exposed as ``cachestrat_<counter>_total``.
COUNTER_HELP = {
    "hits": "Rows served from Redis (cached 'no such row' answers included).",
    "misses": "Rows not found in Redis (or found unusable) by a read.",
    "negative_hits": "Hits that were a cached 'no such row' answer.",
    "fills": "Rows stored in Redis by a reader after a miss.",
    "invalidations": "Rows dropped from the cache by writes and invalidate().",
    "model_invalidations": "Whole-model invalidations (version bumps).",
    "write_through_stores": "Rows stored by write-through saves after commit.",
    "lease_waits": "Rows a reader waited for another reader's fill of.",
    "wait_timeouts": "Rows whose wait for a fill timed out (read from the database).",
    "stale_serves": "Rows served stale while another reader refreshed them.",
    "early_refreshes": "Rows refreshed early (XFetch) by a reader.",
    "errors": "Unreadable entries or views (treated as misses).",
    "degraded_reads": "Rows read from the database because Redis was unavailable.",
    "behind_writes": "Write-behind writes recorded in Redis.",
    "flushed_rows": "Write-behind rows written to the database by flushes.",
    "retries": "Write-behind rows put back for another flush after a failure.",
    "dead_lettered": "Write-behind rows moved to the dead-letter table.",
}

#: Gauge name -> (snapshot key, help text).
GAUGES = {
    "cachestrat_hit_ratio": ("hit_rate", "hits / (hits + misses) since the last reset."),
    "cachestrat_entries": ("entries", "Entries the model has in Redis (from a scan)."),
    "cachestrat_entries_bytes": ("bytes", "Memory of the model's entries in Redis (bytes)."),
    "cachestrat_ttl_seconds": ("ttl", "Seconds an entry of the model lives."),
    "cachestrat_write_behind_pending_rows": ("pending_rows", "Rows with unflushed writes."),
    "cachestrat_write_behind_oldest_pending_age_seconds": (
        "oldest_pending_age",
        "Age of the oldest unflushed write-behind write (seconds).",
    ),
    "cachestrat_write_behind_dead_letters": ("dead_letters", "Rows in the dead-letter table."),
}


def available() -> bool:
    """Tell whether ``prometheus_client`` is installed (the ``prometheus`` extra)."""
    return CollectorRegistry is not None


class _Collector:
    """Hands one snapshot to ``prometheus_client`` as metric families."""

    def __init__(self, figures: dict[str, dict[str, Any]]):
        self.figures = figures

    def collect(self):
        """Yield every counter and gauge, one sample per model."""
        for name, text in COUNTER_HELP.items():
            family = CounterMetricFamily(f"cachestrat_{name}", text, labels=["model"])
            for model, figures in self.figures.items():
                family.add_metric([model], figures[name])
            yield family
        info = GaugeMetricFamily(
            "cachestrat_model_info", "The model's caching strategy.", labels=["model", "strategy"]
        )
        for model, figures in self.figures.items():
            info.add_metric([model, figures["strategy"] or "unknown"], 1)
        yield info
        for metric, (key, text) in GAUGES.items():
            family = GaugeMetricFamily(metric, text, labels=["model"])
            for model, figures in self.figures.items():
                if figures[key] is not None:
                    family.add_metric([model], figures[key])
            yield family


def exposition(figures: dict[str, dict[str, Any]]) -> bytes:
    """Return ``stats.snapshot()``'s figures in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(figures))
    return generate_latest(registry)

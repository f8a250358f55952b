"""``manage.py cachestrat_stats [--json] [--watch N] [--fresh]``."""

import json as _json
import time

from django.core.management.base import BaseCommand, CommandError

from django_cachestrat import stats
from django_cachestrat.backends import CacheUnavailable

#: The table's columns: heading, snapshot key.
COLUMNS = [
    ("model", None),
    ("strategy", "strategy"),
    ("hits", "hits"),
    ("misses", "misses"),
    ("hit rate", "hit_rate"),
    ("fills", "fills"),
    ("invalid.", "invalidations"),
    ("waits", "lease_waits"),
    ("stale", "stale_serves"),
    ("errors", "errors"),
    ("degraded", "degraded_reads"),
    ("entries", "entries"),
    ("bytes", "bytes"),
    ("pending", "pending_rows"),
    ("oldest", "oldest_pending_age"),
    ("flushed", "flushed_rows"),
    ("dead", "dead_letters"),
]


def _cell(key, value) -> str:
    if value is None:
        return "-"
    if key == "hit_rate":
        return f"{value:.1%}"
    if key == "oldest_pending_age":
        return f"{value:.0f}s"
    return str(value)


def table(report: dict) -> str:
    """Return ``stats.report()`` as a text table, one line a model, totals first."""
    models = report["models"]
    hits = sum(f["hits"] for f in models.values())
    misses = sum(f["misses"] for f in models.values())
    rate = stats.hit_rate(hits, misses)
    lines = [
        f"Cache statistics since {report['since'] or '(nothing counted yet)'}, all processes: "
        f"{hits} hits, {misses} misses, hit rate {_cell('hit_rate', rate)}"
    ]
    rows = [[heading for heading, _ in COLUMNS]]
    for label, figures in models.items():
        rows.append([label] + [_cell(key, figures[key]) for _, key in COLUMNS[1:]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    if models and not next(iter(models.values()))["entries_exact"]:
        lines.append("(entries and bytes estimated from part of the keyspace)")
    return "\n".join(lines)


class Command(BaseCommand):
    """Print the statistics of every cached model, added up over every process."""

    help = (
        "Print hits, misses, hit rate, fills, invalidations, entries, bytes and the "
        "write-behind backlog of every cached model, from every process sharing the cache."
    )

    def add_arguments(self, parser):
        """Take --json, --watch and --fresh."""
        parser.add_argument(
            "--json", action="store_true", help="print one JSON document, as the JSON view does"
        )
        parser.add_argument(
            "--watch",
            type=float,
            metavar="N",
            help="print again every N seconds until interrupted",
        )
        parser.add_argument(
            "--fresh", action="store_true", help="count entries and bytes now (a keyspace scan)"
        )

    def handle(self, *args, json=False, watch=None, fresh=False, **options):
        """Print once, or every ``--watch`` seconds."""
        if watch is not None and watch <= 0:
            raise CommandError("--watch takes a number of seconds > 0.")
        while True:
            try:
                report = stats.report(fresh=fresh)
            except CacheUnavailable as exc:
                raise CommandError(f"Redis is unavailable: {exc}") from exc
            text = _json.dumps(report, indent=2) if json else table(report)
            if watch is not None and not json:
                self.stdout.write("\x1b[2J\x1b[H", ending="")  # clear the terminal
            self.stdout.write(text)
            if watch is None:
                return
            try:
                time.sleep(watch)
            except KeyboardInterrupt:
                return

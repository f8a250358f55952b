"""Benchmark: the admin dashboard's server time with 50 cached models and a full day of buckets.

Usage: ``python -m bench.dashboard [--renders N]`` (``bench.run --only dashboard`` runs it
in a process of its own, since it has settings of its own). Redis is ``REDIS_URL`` or a
server it starts itself; the database is a throwaway SQLite file. Every model gets every
counter in each of the 1,440 minute buckets of the last day, then the page is rendered
through Django's test client (the whole request: middleware, admin, figures, template)
and the median of the renders is compared with the goal (200 ms). Always exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

GOAL_MS = 200.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard")
    parser.add_argument("--renders", type=int, default=20, help="renders per period (20)")
    args = parser.parse_args(argv)
    server = None
    if not os.environ.get("REDIS_URL"):
        from tests.redis_server import Server

        server = Server().start()
        os.environ["REDIS_URL"] = server.url
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.dashboard_settings"
    try:
        import django

        django.setup()
        return run(args)
    finally:
        from django.conf import settings

        with contextlib.suppress(OSError):
            os.remove(settings.DATABASES["default"]["NAME"])
        if server is not None:
            server.stop()


def run(args: argparse.Namespace) -> int:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client

    from django_cachestrat import backends, conf, stats
    from django_cachestrat.counters import store

    call_command("migrate", verbosity=0)
    cfg = conf.settings()
    transport = backends.get(cfg.CACHE_ALIAS)
    stats.reset()
    labels = [m._meta.label_lower for m in stats.models_counted()]
    now = int(time.time() // 60)
    day = {
        minute: {(label, name): 3 for label in labels for name in stats.COUNTERS}
        for minute in range(now - 1439, now + 1)
    }
    started = time.perf_counter()
    for first in range(0, len(day), 120):  # a day of buckets, sent a few hours at a time
        chunk = dict(list(day.items())[first : first + 120])
        store.add(transport, cfg.KEY_PREFIX, cfg.STATS_RETENTION, chunk, time.time())
    filled = time.perf_counter() - started
    user = User.objects.create_superuser("admin", password="pw")
    client = Client()
    client.force_login(user)
    url = "/admin/django_cachestrat/cachedashboard/"
    print("django_cachestrat dashboard benchmark")
    print(
        f"  {len(labels)} cached models, {len(day)} minute buckets of {len(stats.COUNTERS)} "
        f"counters each (filled in {filled:.1f}s); {args.renders} renders per period"
    )
    missed = []
    for period in ("1h", "24h"):
        page = client.get(url, {"period": period})
        assert page.status_code == 200, page.status_code
        assert page.content.count(b'<tr data-model="') == len(labels)
        times = []
        for _ in range(args.renders):
            start = time.perf_counter()
            client.get(url, {"period": period})
            times.append((time.perf_counter() - start) * 1000)
        median = statistics.median(times)
        ok = median <= GOAL_MS
        if not ok:
            missed.append(period)
        print(
            f"  period {period:>3}: median {median:6.1f} ms (min {min(times):.1f}, "
            f"max {max(times):.1f}) goal <= {GOAL_MS:.0f} ms  {'PASS' if ok else 'MISS  <<<'}"
        )
    print(f"SUMMARY (dashboard): {len(missed)} goal(s) missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

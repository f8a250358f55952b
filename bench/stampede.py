"""The stampede section of the benchmark (``python -m bench.run --only stampede``).

32 threads read ONE cold row at the same instant (a ``threading.Barrier``), on
PostgreSQL with a real Redis, ``bench.models.CacheAsideItem``. Three variants:

- ``default``: ``get_cached(pk=)`` with the bench's settings (stampede protection on);
- ``protection off``: the same under ``FILL_WAIT = 0`` (the other settings unchanged);
- ``no cache``: ``objects.get(pk=)`` in every thread.

Before every stampede the row is made cold with ``django_cachestrat.invalidate(obj)``
(for every variant, so they all pay the same set-up). The variants run in interleaved
rounds, one stampede each per round, in an order that rotates from round to round, so
noise hits them alike.

Per stampede: the SQL queries on the model's table (counted in each thread with
``connection.execute_wrapper``) and the wall time from the barrier's release (its action,
run as the last thread arrives) to the last thread's return. The readers are a pool of
long-lived threads, each with its own database connection, as a threaded server's workers
are: thread start-up and PostgreSQL connects are not measured. Each closes its connection
when it ends (at the end of the section).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import itertools
import statistics
import threading
import time
from collections.abc import Callable

from bench.run import clear_redis, create_schema, paired, print_summary, quantiles, seed

THREADS = 32
ROUNDS = 60  # stampedes per variant (times --scale, 10 at least)
WARMUP = 3  # stampedes per variant before measuring
DEFAULT, OFF, NO_CACHE = "default", "protection off", "no cache"
EVENTS = ("cache_wait", "cache_wait_timeout", "cache_fill")


class Stampedes:
    """The section's set-up, its pool of reader threads, and its one operation: a stampede
    of one variant.

    The readers are ``threads`` long-lived threads, each with its own database connection
    (opened once, closed when the thread ends), as the workers of a threaded server have:
    no stampede pays for thread start-up, a PostgreSQL connect or a cold backend.
    """

    def __init__(self, args: argparse.Namespace, started: bool, threads: int = THREADS):
        from django.conf import settings
        from django_redis import get_redis_connection

        from bench.models import CacheAsideItem
        from django_cachestrat import conf, signals

        self.model = CacheAsideItem
        self.threads = threads
        self.table = CacheAsideItem._meta.db_table
        clear_redis(get_redis_connection("default"), conf.settings().KEY_PREFIX, started)
        create_schema([CacheAsideItem])
        pks = seed([CacheAsideItem], 10)[CacheAsideItem]
        self.obj = CacheAsideItem.objects.get(pk=pks[len(pks) // 2])
        self.off_settings = {**settings.CACHESTRAT, "FILL_WAIT": 0}
        self.lock = threading.Lock()
        self.events = collections.Counter()
        self.receivers = {}
        for name in EVENTS:
            self.receivers[name] = receiver = self._counter(name)
            getattr(signals, name).connect(receiver, sender=CacheAsideItem, weak=False)
        pk, manager = self.obj.pk, CacheAsideItem.objects
        self.variants: dict[str, tuple[Callable[[], object], Callable]] = {
            DEFAULT: (lambda: manager.get_cached(pk=pk), contextlib.nullcontext),
            OFF: (lambda: manager.get_cached(pk=pk), self._protection_off),
            NO_CACHE: (lambda: manager.get(pk=pk), contextlib.nullcontext),
        }
        # One stampede: the main thread sets the job and meets the readers at ``start``;
        # the readers meet at ``go`` (whose action, run by the last to arrive, notes the
        # release time), read, and meet the main thread again at ``done``.
        self.job: Callable[[], object] | None = None
        self.start = threading.Barrier(threads + 1)
        self.go = threading.Barrier(threads, action=self._released)
        self.done = threading.Barrier(threads + 1)
        self.released = 0.0
        self.queries: list[str] = []
        self.outcomes: list[tuple[float, object]] = []
        self.pool = [threading.Thread(target=self._reader, daemon=True) for _ in range(threads)]
        for t in self.pool:
            t.start()

    def _released(self) -> None:
        self.released = time.perf_counter()

    def _count(self, execute, sql, params, many, context):
        if self.table in sql:
            with self.lock:
                self.queries.append(sql)
        return execute(sql, params, many, context)

    def _reader(self) -> None:
        from django.db import connection, connections

        clock = time.perf_counter
        try:
            connection.ensure_connection()
            while True:
                self.start.wait(60)
                read = self.job
                if read is None:
                    return
                with connection.execute_wrapper(self._count):
                    self.go.wait(60)
                    try:
                        outcome = read()
                    except Exception as exc:  # counted as an error, the stampede goes on
                        outcome = exc
                    end = clock()
                with self.lock:
                    self.outcomes.append((end, outcome))
                self.done.wait(60)
        except threading.BrokenBarrierError:
            return
        except BaseException:
            for barrier in (self.start, self.go, self.done):
                barrier.abort()  # the main thread raises instead of hanging
            raise
        finally:
            connections.close_all()

    def _counter(self, name: str):
        def receive(sender, keys, **kwargs):
            with self.lock:
                self.events[name] += keys

        return receive

    def _protection_off(self):
        from django.test import override_settings

        return override_settings(CACHESTRAT=self.off_settings)

    def close(self) -> None:
        """Stop the readers (each closes its database connection) and the event counting."""
        from django_cachestrat import signals

        self.job = None
        with contextlib.suppress(threading.BrokenBarrierError):
            self.start.wait(60)
        for t in self.pool:
            t.join(60)
        for name, receiver in self.receivers.items():
            getattr(signals, name).disconnect(receiver, sender=self.model)

    def stampede(self, variant: str) -> dict:
        """Make the row cold, let the readers read it at once; return what happened:
        ``queries``, ``wall`` (ms), per-thread ``latencies`` (ms), ``errors``, ``events``."""
        from django_cachestrat import invalidate

        read, context = self.variants[variant]
        with context():
            invalidate(self.obj)
            gc.collect()
            self.events.clear()
            self.queries, self.outcomes = [], []
            self.job = read
            self.start.wait(60)
            self.done.wait(60)
            events = dict(self.events)
        ends = [end for end, _ in self.outcomes]
        errors = [outcome for _, outcome in self.outcomes if not self._right(outcome)]
        return {
            "queries": len(self.queries),
            "wall": (max(ends) - self.released) * 1000,
            "latencies": sorted((end - self.released) * 1000 for end in ends),
            "errors": errors,
            "events": events,
        }

    def _right(self, result: object) -> bool:
        return (
            isinstance(result, self.model)
            and result.pk == self.obj.pk
            and result.name == self.obj.name
        )


def measure(s: Stampedes, rounds: int) -> dict[str, list[dict]]:
    """``WARMUP`` stampedes per variant, then ``rounds`` interleaved rounds of one each."""
    names = list(s.variants)
    orders = list(itertools.permutations(names))
    for _ in range(WARMUP):
        for name in names:
            s.stampede(name)
    samples: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(rounds):
        for name in orders[r % len(orders)]:
            samples[name].append(s.stampede(name))
    return samples


def spread(values: list[float], fmt: str) -> str:
    """``median (p25-p75)``."""
    p25, p50, p75 = quantiles(values)
    return f"{p50:{fmt}} ({p25:{fmt}}-{p75:{fmt}})"


def report(s: Stampedes, samples: dict[str, list[dict]], rounds: int, took: float) -> list[str]:
    print(
        f"  {s.threads} threads read one cold row of {s.model.__name__} at once (barrier); "
        f"{rounds} interleaved stampedes per variant after {WARMUP} warm-up ones; "
        f"section took {took:.0f}s"
    )
    print()
    head = (
        f"{'variant':<16} {'queries/stampede p50 (p25-p75)':>31} {'mean':>6} {'max':>4} "
        f"{'wall ms p50 (p25-p75)':>24} {'thread ms p50':>13} {'errors':>6}"
    )
    print(head)
    print("-" * len(head))
    for name, runs in samples.items():
        queries = [r["queries"] for r in runs]
        walls = [r["wall"] for r in runs]
        thread_p50 = statistics.median(statistics.median(r["latencies"]) for r in runs)
        errors = sum(len(r["errors"]) for r in runs)
        print(
            f"{name:<16} {spread(queries, '.1f'):>31} {statistics.fmean(queries):>6.2f} "
            f"{max(queries):>4} {spread(walls, '.2f'):>24} {thread_p50:>13.2f} {errors:>6}"
        )
    print()
    for name in (DEFAULT, OFF):
        totals = collections.Counter()
        for r in samples[name]:
            totals.update(r["events"])
        per = ", ".join(f"{event} {totals[event] / rounds:.2f}" for event in EVENTS)
        print(f"  events per stampede, {name}: {per}")

    default_q = [r["queries"] for r in samples[DEFAULT]]
    one_query = all(q == 1 for q in default_q)
    r25, ratio, r75 = quantiles(
        paired([r["wall"] for r in samples[DEFAULT]], [r["wall"] for r in samples[OFF]])
    )
    no_errors = not any(r["errors"] for runs in samples.values() for r in runs)
    print()
    print("Goals:")
    print(
        f"  default: queries per stampede mean {statistics.fmean(default_q):.2f} "
        f"(min {min(default_q)}, max {max(default_q)}), goal exactly 1.00 in every "
        f"stampede: {'PASS' if one_query else 'MISS  <<<'}"
    )
    print(
        f"  default / protection off wall time: {ratio:.3f}x (p25-p75 {r25:.3f}-{r75:.3f}, "
        f"median of the per-round ratios), goal <=1.00x: "
        f"{'PASS' if ratio <= 1.0 else 'MISS  <<<'}"
    )
    print(f"  every thread got the right row: {'PASS' if no_errors else 'MISS  <<<'}")
    print("""
  wall: barrier release (its action, run by the last thread to arrive) to the last
    thread's return; thread ms: median over stampedes of the median thread's latency.
  queries: SQL statements on the table sent by the 32 threads (execute_wrapper in each).
  Readers: a pool of long-lived threads, each with its own PostgreSQL connection
    (opened before the first stampede, closed when the section ends).""")
    missed = []
    if not one_query:
        missed.append("default: exactly 1 query per stampede")
    if ratio > 1.0:
        missed.append("default wall time <= protection off")
    if not no_errors:
        missed.append("every thread got the right row")
    return print_summary(missed)


def run_section(args: argparse.Namespace, started: bool) -> list[str]:
    """Set up, measure and print the stampede section; return the goals missed."""
    print("=" * 100)
    print(f"Stampede: {THREADS} threads on one cold row (CacheAsideItem)")
    print("=" * 100)
    rounds = max(10, round(ROUNDS * args.scale))
    t = time.perf_counter()
    s = Stampedes(args, started)
    try:
        samples = measure(s, rounds)
    finally:
        s.close()
    return report(s, samples, rounds, time.perf_counter() - t)

"""Benchmark: django_cachestrat against the Redis floor and the ORM on PostgreSQL.

Usage: ``scripts/bench`` or ``.venv/bin/python -m bench.run [--rounds N] [--profile]
[--only SECTION]``. Sections: ``core`` (reads, write-through and cache-aside saves),
``serializer`` (one row's dumps and loads by each candidate serializer, see
``bench/serializer.py``), ``write-behind`` (ingest, coalescing and flushing; see
``bench/write_behind.py``), ``stampede``, ``dashboard`` (the admin page's server time,
``bench/dashboard.py``), ``workers`` (write-behind flush throughput with 1, 2 and 4
worker processes, on PostgreSQL and then on SQLite, ``bench/flush_workers.py``) and
``ring`` (hits through a ring of three Redis nodes against one server, ``bench/ring.py``)
and ``cluster`` (hits on a Redis Cluster of 3 masters against one server,
``bench/cluster.py``); all run by default.

Method. The operations compared with each other run interleaved, in rounds: each round
runs a small batch of every variant (in an order that rotates from round to round) and
records the batch's mean time per operation. Noise on this shared machine then hits all
variants of a round alike. A variant's figure is the median over rounds of its batch
means; a ratio is the median over rounds of the per-round ratio (the paired comparison),
with its 25th-75th percentiles to show the spread.

PostgreSQL comes from PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE (default
127.0.0.1:5432, postgres, database ``cachestrat_bench``, created when missing). Redis is
``REDIS_URL``, or a server the benchmark starts (and stops) itself. The benchmark always
exits 0: it is a report; missed goals are printed as MISS.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import decimal
import functools
import gc
import io
import itertools
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

SECTIONS = (
    "core",
    "serializer",
    "write-behind",
    "stampede",
    "dashboard",
    "workers",
    "ring",
    "cluster",
)

# -- set-up before Django -------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="rows per model (default 2000)")
    parser.add_argument(
        "--rounds", type=int, default=400, help="interleaved rounds per comparison (default 400)"
    )
    parser.add_argument(
        "--point-batch", type=int, default=25, help="point reads per variant per round (25)"
    )
    parser.add_argument(
        "--bulk-batch", type=int, default=4, help="100-row bulk reads per variant per round (4)"
    )
    parser.add_argument(
        "--write-batch", type=int, default=8, help="saves per variant per round (8)"
    )
    parser.add_argument("--bulk-size", type=int, default=100, help="rows per bulk read (100)")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every round count (e.g. 0.1 to smoke)"
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the cached hot paths with cProfile and print where time goes",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable; default: all of them)",
    )
    parser.add_argument(
        "--behind-rows",
        type=int,
        default=10_000,
        help="write-behind rows, all flushed at once in the flush timing (10000)",
    )
    parser.add_argument(
        "--flush-reps", type=int, default=3, help="repetitions of the 10,000-row flush (3)"
    )
    args = parser.parse_args(argv)
    args.only = [s for s in SECTIONS if s in (args.only or SECTIONS)]
    if args.flush_reps < 1:
        parser.error("--flush-reps must be at least 1")
    if args.rows < max(args.bulk_size, 200):
        parser.error(f"--rows must be at least 200 and --bulk-size ({args.bulk_size})")
    args.rounds = max(4, int(args.rounds * args.scale))
    return args


def pg_params() -> dict[str, str]:
    return {
        "host": os.environ.get("PGHOST", "127.0.0.1"),
        "port": os.environ.get("PGPORT", "5432"),
        "user": os.environ.get("PGUSER", "postgres"),
        "password": os.environ.get("PGPASSWORD", ""),
        "dbname": os.environ.get("PGDATABASE", "cachestrat_bench"),
    }


def ensure_database() -> None:
    """Create the benchmark's database when it does not exist."""
    import psycopg
    from psycopg import sql

    params = pg_params()
    name = params.pop("dbname")
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


# -- measuring ------------------------------------------------------------------------


def interleaved(
    variants: dict[str, Callable[[int], object]], rounds: int, batch: int, warmup: int
) -> dict[str, list[float]]:
    """Run ``variants`` in interleaved rounds; return each one's per-round µs per op.

    Each variant is called with an operation index (the same sequence for every variant,
    so they all touch the same rows). The order of the variants changes from round to
    round (every permutation, or every rotation both ways for more than four variants),
    so no variant always runs first or always follows the same one.
    """
    names = list(variants)
    if len(names) <= 4:
        orders = list(itertools.permutations(names))
    else:  # every rotation, forwards and backwards
        rotations = [names[k:] + names[:k] for k in range(len(names))]
        orders = rotations + [r[::-1] for r in rotations]
    for i in range(warmup):
        for name in names:
            variants[name](i)
    gc.collect()
    clock = time.perf_counter_ns
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        first = r * batch
        ops = range(first, first + batch)
        for name in orders[r % len(orders)]:
            fn = variants[name]
            start = clock()
            for i in ops:
                fn(i)
            samples[name].append((clock() - start) / batch / 1000)
    return samples


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """25th, 50th and 75th percentiles."""
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[1], q[2]


def paired(ours: list[float], base: list[float]) -> list[float]:
    """Per-round ratios: both numbers of a round were measured side by side."""
    return [a / b for a, b in zip(ours, base, strict=True)]


class Row:
    """One line of a results table: ours against a baseline, with a goal.

    The figure of a round is ours µs / base µs of that round (the paired comparison), or
    with ``speedup`` base µs / ours µs; the row shows the median over rounds and its
    25th-75th percentiles. The goal is a maximum, or with ``speedup`` a minimum.
    ``floor`` names a variant that does only the Redis round trips the design needs, with
    no Python of ours around them: its figure is the best ours could get.
    """

    def __init__(self, label, samples, ours, base, goal, floor=None, *, speedup=False):
        def figures(variant: str) -> list[float]:
            if speedup:
                return paired(samples[base], samples[variant])
            return paired(samples[variant], samples[base])

        self.label = label
        self.speedup = speedup
        self.ours = statistics.median(samples[ours])
        self.base = statistics.median(samples[base])
        self.r25, self.ratio, self.r75 = quantiles(figures(ours))
        self.floor = None if floor is None else statistics.median(figures(floor))
        self.goal = goal

    @property
    def passed(self) -> bool | None:
        if self.goal is None:
            return None
        return self.ratio >= self.goal if self.speedup else self.ratio <= self.goal


def print_table(rows: list[Row]) -> None:
    """Print rows: times and ratios, or with ``speedup`` rows, operations per second."""
    speedup = rows[0].speedup
    width = max(44, *(len(row.label) for row in rows))
    if speedup:
        units, figure = ("ours op/s", "base op/s", "speed-up"), "{:>7.2f}x {:>6.2f}-{:<6.2f}"
    else:
        units, figure = ("ours µs", "base µs", "ratio"), "{:>6.3f}x {:>6.3f}-{:<6.3f}"
    head = (
        f"{'comparison':<{width}} {units[0]:>9} {units[1]:>9} {units[2]:>8} "
        f"{'p25-p75':>13} {'floor':>7} {'goal':>7}  result"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        if speedup:
            ours, base = f"{1e6 / row.ours:>9.0f}", f"{1e6 / row.base:>9.0f}"
            goal = "" if row.goal is None else f">={row.goal:g}x"
            floor = "" if row.floor is None else f"{row.floor:.1f}x"
        else:
            ours, base = f"{row.ours:>9.1f}", f"{row.base:>9.1f}"
            goal = "" if row.goal is None else f"<={row.goal:.2f}x"
            floor = "" if row.floor is None else f"{row.floor:.3f}x"
        verdict = "" if row.passed is None else ("PASS" if row.passed else "MISS  <<<")
        print(
            f"{row.label:<{width}} {ours} {base} "
            f"{figure.format(row.ratio, row.r25, row.r75)} {floor:>7} {goal:>7}  {verdict}"
        )


# -- counting round trips -------------------------------------------------------------


class RedisCounter:
    """Counts what a block of code costs in Redis and in the database.

    Client side: calls of ``send_packed_command`` on any redis-py connection (a pipeline
    sends all its commands in one call, so this is the number of round trips). Server
    side: deltas of ``INFO`` (``total_commands_processed`` and ``commandstats``), taken
    outside the counted block and corrected for the ``INFO`` calls themselves.
    """

    def __init__(self, client):
        self.client = client
        self.overhead = 0
        self.overhead = min(self._measure(lambda: None, 1)[1] for _ in range(3))

    def _snapshot(self) -> tuple[int, dict[str, int]]:
        stats = self.client.info("commandstats")
        total = self.client.info("stats")["total_commands_processed"]
        calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
        return total, calls

    def _measure(self, fn, n):
        from django.db import connection
        from django.test.utils import CaptureQueriesContext
        from redis.connection import AbstractConnection

        sends = 0
        original = AbstractConnection.send_packed_command

        def counting(conn, command, check_health=True):
            nonlocal sends
            sends += 1
            return original(conn, command, check_health)

        before_total, before_calls = self._snapshot()
        AbstractConnection.send_packed_command = counting
        try:
            with CaptureQueriesContext(connection) as queries:
                for _ in range(n):
                    fn()
        finally:
            AbstractConnection.send_packed_command = original
        after_total, after_calls = self._snapshot()
        commands = {
            name: calls - before_calls.get(name, 0)
            for name, calls in after_calls.items()
            if name != "info" and calls != before_calls.get(name, 0)
        }
        server_total = after_total - before_total - self.overhead
        return sends, server_total, commands, len(queries)

    def per_op(self, fn, n: int = 20) -> dict:
        """Round trips, server commands, their names and DB queries per call of ``fn``."""
        # Three tries, keep the smallest server count: another client of a shared
        # REDIS_URL server can only add commands.
        best = min((self._measure(fn, n) for _ in range(3)), key=lambda m: m[1])
        sends, server_total, commands, queries = best
        return {
            "round_trips": sends / n,
            "server_commands": server_total / n,
            "commands": {k: v / n for k, v in sorted(commands.items())},
            "queries": queries / n,
        }


def describe(counts: dict) -> str:
    names = ", ".join(f"{k} x{v:g}" for k, v in counts["commands"].items()) or "-"
    return (
        f"{counts['round_trips']:g} round trip(s), {counts['server_commands']:g} server "
        f"command(s) [{names}], {counts['queries']:g} DB queries"
    )


# -- the benchmark --------------------------------------------------------------------


def header(args, redis_url: str, started: bool) -> None:
    import django
    import django_redis
    import psycopg
    import redis
    from django.db import connection
    from django_redis import get_redis_connection

    info = get_redis_connection("default").info("server")
    server = info.get("server_name", "redis")
    version = info.get("valkey_version") or info.get("redis_version")
    compat = f" (redis_version {info['redis_version']})" if "valkey_version" in info else ""
    try:
        import hiredis

        parser = f"hiredis {hiredis.__version__}"
    except ImportError:
        parser = "pure-Python parser"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT version(), current_setting('synchronous_commit'), current_setting('fsync')"
        )
        pg_version, sync_commit, fsync = cursor.fetchone()
    params = pg_params()
    print("django_cachestrat benchmark")
    print(
        f"  Python   {platform.python_implementation()} {platform.python_version()} on "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(
        f"  Django   {django.get_version()}; redis-py {redis.__version__} ({parser}); "
        f"django-redis {django_redis.__version__}; psycopg {psycopg.__version__}"
    )
    print(
        f"  Redis    {server} {version}{compat} at {redis_url} "
        f"({'started by the benchmark' if started else 'REDIS_URL'})"
    )
    print(
        f"  DB       {pg_version.split(' on ')[0]} at {params['host']}:{params['port']}/"
        f"{params['dbname']} (synchronous_commit={sync_commit}, fsync={fsync}, autocommit)"
    )
    print(
        f"  Load     {args.rows} rows per model; {args.rounds} interleaved rounds per "
        f"comparison; batches of {args.point_batch} point reads, {args.bulk_batch} bulk reads "
        f"of {args.bulk_size}, {args.write_batch} saves per variant per round"
    )
    print()


def create_schema(models: list) -> None:
    from django.db import connection

    existing = set(connection.introspection.table_names())
    with connection.schema_editor() as editor:
        for model in models:
            if model._meta.db_table in existing:
                editor.delete_model(model)
            editor.create_model(model)


def seed(models: list, rows: int) -> dict:
    """Create ``rows`` identical rows in every model; return ``{model: [pk, ...]}``."""
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    body = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 4
    pks = {}
    for model in models:
        objs = [
            model(
                name=f"item {i:06d}",
                count=i,
                price=decimal.Decimal(i) + decimal.Decimal("0.99"),
                updated=base + dt.timedelta(seconds=i),
                active=i % 2 == 0,
                body=body,
            )
            for i in range(rows)
        ]
        created = model.objects.bulk_create(objs, batch_size=1000)
        pks[model] = [obj.pk for obj in created]
    return pks


def clear_redis(client, prefix: str, owned: bool) -> None:
    """Remove the benchmark's keys: all of them on a server of its own, else by prefix."""
    if owned:
        client.flushall()
        return
    for pattern in (f"{prefix}:*", "bench-floor:*"):
        doomed = list(client.scan_iter(pattern, count=1000))
        for i in range(0, len(doomed), 1000):
            client.delete(*doomed[i : i + 1000])


def prime(model, pks: list, size: int) -> None:
    """Fill the cache with every row, then check that every row is a hit."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for i in range(0, len(pks), size):
        model.objects.get_many_cached(pks[i : i + size])
    with CaptureQueriesContext(connection) as queries:
        for i in range(0, len(pks), size):
            got = model.objects.get_many_cached(pks[i : i + size])
            assert len(got) == len(pks[i : i + size])
    if len(queries):
        raise RuntimeError(f"{model.__name__}: {len(queries)} queries after priming the cache")


class Setup:
    """Everything the measurements share: models, rows, keys, clients."""

    def __init__(self, args: argparse.Namespace, started: bool):
        from django_redis import get_redis_connection

        from bench.models import CacheAsideItem, PlainItem, WriteThroughItem
        from django_cachestrat import conf, keys, options

        self.models = [WriteThroughItem, CacheAsideItem, PlainItem]
        self.WT, self.CA, self.PLAIN = self.models
        self.client = get_redis_connection("default")
        cfg = conf.settings()
        clear_redis(self.client, cfg.KEY_PREFIX, started)
        create_schema(self.models)
        self.pks = seed(self.models, args.rows)
        self.size = size = args.bulk_size
        prime(self.WT, self.pks[self.WT], size)
        prime(self.CA, self.pks[self.CA], size)

        self.wt = self.WT.objects
        self.wt_pks = wt_pks = self.pks[self.WT]
        opts = options.get(self.WT)
        self.entry_keys = [keys.entry(cfg.KEY_PREFIX, opts.label, pk) for pk in wt_pks]
        self.version_key = keys.version(cfg.KEY_PREFIX, opts.label)
        if self.client.get(self.entry_keys[0]) is None:
            raise RuntimeError(f"no entry under {self.entry_keys[0]!r}: the key layout changed")
        self.chunks = [wt_pks[i : i + size] for i in range(0, len(wt_pks) - size + 1, size)]
        key_of = dict(zip(wt_pks, self.entry_keys, strict=True))
        self.chunk_keys = [[self.version_key, *(key_of[pk] for pk in c)] for c in self.chunks]
        # Objects the saves update: the first 200 rows of each model.
        self.write_objs = {
            model: list(model.objects.filter(pk__in=self.pks[model][:200]).order_by("pk"))
            for model in self.models
        }
        self.now = dt.datetime.now(dt.UTC)
        self._prime_unsigned()

    def _prime_unsigned(self) -> None:
        """Fill two more sets of entries of the same rows, without a MAC, under prefixes of
        their own: one with the default serializer, one with the previous default (pickle
        with codec-4's plan, ``bench.serializer.Codec4Pickle``).

        The comparisons read one set or another by switching the loaded setting's signer,
        prefix and serializer (what ``SIGN: False`` with another ``KEY_PREFIX`` and
        ``SERIALIZER`` would give), the same three attribute writes in every variant.
        """
        from django.conf import settings

        from bench.serializer import Codec4Pickle
        from django_cachestrat import conf, signing

        cfg = conf.settings()
        self.signed = (cfg.signer, cfg.KEY_PREFIX, cfg.serializer)
        # The same keys, remembering nothing: every entry's MAC is computed (a cold read).
        secrets = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
        cold = signing.Signer.from_secrets(secrets)
        cold.remember = lambda name, data: None  # type: ignore[method-assign]
        self.cold = (cold, cfg.KEY_PREFIX, cfg.serializer)
        self.plain = (None, f"{cfg.KEY_PREFIX}-nomac", cfg.serializer)
        self.previous = (None, f"{cfg.KEY_PREFIX}-nomac-pickle", Codec4Pickle.of_model(self.WT))
        for variant in (self.plain, self.previous):
            clear_redis(self.client, variant[1], owned=False)
            cfg.signer, cfg.KEY_PREFIX, cfg.serializer = variant
            try:
                prime(self.WT, self.wt_pks, self.size)
            finally:
                self.restore()

    def restore(self) -> None:
        """Set the loaded setting back to what it was: signing, the default serializer."""
        from django_cachestrat import conf

        cfg = conf.settings()
        cfg.signer, cfg.KEY_PREFIX, cfg.serializer = self.signed

    def variant(self, how: str, op):
        """``op`` with entries ``signed`` (the default), ``cold`` (signed, remembering no
        entry as verified), ``plain`` (no MAC) or ``previous`` (no MAC, pickle)."""
        from django_cachestrat import conf

        cfg = conf.settings()
        signer, prefix, serializer = getattr(self, how)

        def run(i):
            cfg.signer, cfg.KEY_PREFIX, cfg.serializer = signer, prefix, serializer
            return op(i)

        return run

    # -- operations, each called with an operation index --

    def get_cached(self, i):
        return self.wt.get_cached(pk=self.wt_pks[i % len(self.wt_pks)])

    def redis_get(self, i):
        return self.client.get(self.entry_keys[i % len(self.entry_keys)])

    def redis_mget_one(self, i):
        return self.client.mget([self.version_key, self.entry_keys[i % len(self.entry_keys)]])

    def orm_get(self, i):
        return self.wt.get(pk=self.wt_pks[i % len(self.wt_pks)])

    def get_many(self, i):
        got = self.wt.get_many_cached(self.chunks[i % len(self.chunks)])
        assert len(got) == self.size
        return got

    def in_bulk(self, i):
        got = self.wt.in_bulk(self.chunks[i % len(self.chunks)])
        assert len(got) == self.size
        return got

    def redis_mget_many(self, i):
        return self.client.mget(self.chunk_keys[i % len(self.chunk_keys)])

    def saver(self, model, before=None, after=None):
        """A save of one of ``model``'s rows (changed), between ``before(obj)`` and
        ``after(obj)`` when given."""
        objs = self.write_objs[model]
        now = self.now

        def save(i):
            obj = objs[i % len(objs)]
            if before is not None:
                before(obj)
            obj.count += 1
            obj.updated = now
            obj.save()
            if after is not None:
                after(obj)

        return save

    def delete_floor(self, obj):
        """What a cache-aside save needs from Redis: one DEL of the entry and its lease."""
        tag = f"bench-floor:{{ca:{obj.pk}}}"
        self.client.delete(f"{tag}:entry", f"{tag}:lease")

    def write_floor(self):
        """What a write-through save needs from Redis, as raw EVALSHAs of the app's own
        scripts: a pipelined begin (write-begin and version scripts) before the UPDATE and
        a write-end after it. Returns the ``(before, after)`` hooks of ``saver``."""
        from django_cachestrat.backends.scripts import VERSION, WRITE_BEGIN, WRITE_END

        client = self.client
        begin, version, end = (
            client.script_load(s.source) for s in (WRITE_BEGIN, VERSION, WRITE_END)
        )
        value = client.get(self.entry_keys[0])
        epochs = {}

        def before(obj):
            tag = f"bench-floor:{{wt:{obj.pk}}}"
            pipe = client.pipeline(transaction=False)
            pipe.evalsha(begin, 2, f"{tag}:inflight", f"{tag}:epoch", "token", 60)
            pipe.evalsha(version, 1, "bench-floor:{wt}:version", 1, "0")
            (epochs[obj.pk], _), _ = pipe.execute()

        def after(obj):
            tag = f"bench-floor:{{wt:{obj.pk}}}"
            client.evalsha(
                end,
                6,
                f"{tag}:inflight",
                f"{tag}:epoch",
                f"{tag}:entry",
                f"{tag}:lease",
                f"{tag}:gone",
                f"{tag}:ready",
                "token",
                epochs.pop(obj.pk),
                "0",
                value,
                3600,
                0,
            )

        return before, after


def run(args: argparse.Namespace, redis_url: str, started: bool) -> None:
    from django_redis import get_redis_connection

    from django_cachestrat import conf, stats

    header(args, redis_url, started)
    missed = {}
    try:
        if "core" in args.only:
            b = Setup(args, started)
            missed["core"] = measure(args, b)
            if args.profile:
                profile(b, args)
        if "serializer" in args.only:
            from bench import serializer

            print()
            missed["serializer"] = serializer.run_section(args, started)
        if "write-behind" in args.only:
            from bench import write_behind

            print()
            missed["write-behind"] = write_behind.run_section(args, started)
        if "stampede" in args.only:
            from bench import stampede

            print()
            missed["stampede"] = stampede.run_section(args, started)
        if "dashboard" in args.only:
            # Settings of its own (the admin, 50 cached models): a process of its own.
            print(flush=True)
            subprocess.run([sys.executable, "-m", "bench.dashboard"], check=False)
        if "workers" in args.only:
            # Worker processes, and settings of their own per database: a process per database.
            for db in ("postgres", "sqlite"):
                print(flush=True)
                command = [sys.executable, "-m", "bench.flush_workers", "--db", db]
                subprocess.run(command, check=False)
        if "ring" in args.only:
            from bench import ring

            print()
            missed["ring"] = ring.run_section(args, started)
        if "cluster" in args.only:
            from bench import cluster

            print()
            missed["cluster"] = cluster.run_section(args, started)
    finally:
        # Sent now, while the server runs: not at exit, once the benchmark has stopped it.
        stats.flush()
        if not started:  # leave a shared server as we found it
            client = get_redis_connection("default")
            clear_redis(client, conf.settings().KEY_PREFIX, owned=False)
            # The entries and writes without a MAC the signing comparisons made.
            for suffix in ("-nomac", "-nomac-pickle"):
                clear_redis(client, conf.settings().KEY_PREFIX + suffix, owned=False)
    if len(missed) > 1:
        total = sum(len(m) for m in missed.values())
        print()
        print(
            f"OVERALL: {total} goal(s) missed ("
            + ", ".join(f"{section} {len(m)}" for section, m in missed.items())
            + ")"
        )


def measure(args: argparse.Namespace, b: Setup) -> list[str]:
    """Count round trips, time the interleaved comparisons, print the table; return the
    goals missed."""
    from django.db import connection

    from django_cachestrat import conf, stats

    size = b.size
    cfg = conf.settings()

    # -- what one operation costs in round trips and queries --
    # Statistics off while counting: their sender thread's round trip is not an operation's.
    stats.flush()
    cfg.STATS = False
    counter = RedisCounter(b.client)
    counts = {
        "get_cached(pk=) hit": counter.per_op(lambda: b.get_cached(0)),
        f"get_many_cached({size}) hit": counter.per_op(lambda: b.get_many(0)),
        "write-through save()": counter.per_op(functools.partial(b.saver(b.WT), 0)),
        "cache-aside save()": counter.per_op(functools.partial(b.saver(b.CA), 0)),
        "plain save()": counter.per_op(functools.partial(b.saver(b.PLAIN), 0)),
    }
    print("Cost of one operation (client sends, INFO deltas, captured queries):")
    for label, c in counts.items():
        print(f"  {label:<28} {describe(c)}")
    many = counts[f"get_many_cached({size}) hit"]
    one_trip = many["round_trips"] == 1 and many["server_commands"] == 1 and not many["queries"]
    print(
        f"  => get_many_cached({size}) of hits is exactly one Redis round trip: "
        f"{'PASS' if one_trip else 'MISS  <<<'}"
    )
    print()
    cfg.STATS = True

    def counting(on: bool):
        # The same attribute write in both variants, so only the counting differs.
        def get(i):
            cfg.STATS = on
            return b.get_cached(i)

        return get

    t0 = time.perf_counter()
    counted = interleaved(
        {"stats on": counting(True), "stats off": counting(False)},
        args.rounds,
        args.point_batch,
        warmup=500,
    )
    cfg.STATS = True
    point = interleaved(
        {
            "get_cached": b.get_cached,
            "GET": b.redis_get,
            "MGET 2": b.redis_mget_one,
            "ORM get": b.orm_get,
        },
        args.rounds,
        args.point_batch,
        warmup=500,
    )
    bulk = interleaved(
        {"get_many_cached": b.get_many, "in_bulk": b.in_bulk, "MGET many": b.redis_mget_many},
        args.rounds,
        args.bulk_batch,
        warmup=50,
    )
    # Signed entries against the same rows' entries without a MAC, side by side.
    signed = {}
    try:
        for name, op, batch, warmup in (
            ("get_cached", b.get_cached, args.point_batch, 500),
            ("get_many", b.get_many, args.bulk_batch, 50),
        ):
            variants = {
                f"{name} MAC": b.variant("signed", op),
                f"{name} MAC cold": b.variant("cold", op),
                f"{name} no MAC": b.variant("plain", op),
                f"{name} pickle no MAC": b.variant("previous", op),
            }
            signed.update(interleaved(variants, args.rounds, batch, warmup=warmup))
    finally:
        b.restore()
    assert connection.get_autocommit()  # each save is its own transaction
    writes = interleaved(
        {
            "write-through save": b.saver(b.WT),
            "cache-aside save": b.saver(b.CA),
            "plain save": b.saver(b.PLAIN),
            "plain save + DEL": b.saver(b.PLAIN, after=b.delete_floor),
            "plain save + write RTTs": b.saver(b.PLAIN, *b.write_floor()),
        },
        args.rounds,
        args.write_batch,
        warmup=100,
    )
    elapsed = time.perf_counter() - t0

    # A write-through save must leave the saved row in the cache.
    last = b.write_objs[b.WT][-1]
    assert b.WT.objects.get_cached(pk=last.pk).count == last.count, "write-through did not store"

    samples = {**counted, **point, **bulk, **signed, **writes}
    rows = [
        Row("get_cached hit, statistics on vs off", samples, "stats on", "stats off", 1.03),
        Row(
            # What the MAC alone costs (no goal: issue 12's goal is the default against
            # the previous default, the rows marked "(before)").
            "get_cached(pk=) hit, signed vs no MAC",
            samples,
            "get_cached MAC",
            "get_cached no MAC",
            None,
        ),
        Row(
            f"get_many_cached({size}) hit, signed vs no MAC",
            samples,
            "get_many MAC",
            "get_many no MAC",
            None,
        ),
        *(
            Row(
                f"  same, no entry remembered: {op}",
                samples,
                f"{op} MAC cold",
                f"{op} no MAC",
                None,
            )
            for op in ("get_cached", "get_many")
        ),
        *(
            Row(
                f"{label} hit, default (MAC) vs pickle, no MAC (before)",
                samples,
                f"{op} MAC",
                f"{op} pickle no MAC",
                1.05,
            )
            for label, op in (
                ("get_cached(pk=)", "get_cached"),
                (f"get_many_cached({size})", "get_many"),
            )
        ),
        Row(
            "get_cached(pk=) hit vs Redis GET (floor)",
            samples,
            "get_cached",
            "GET",
            1.5,
            floor="MGET 2",
        ),
        Row(
            "get_cached(pk=) hit vs ORM get(pk=)",
            samples,
            "get_cached",
            "ORM get",
            0.2,
            floor="GET",
        ),
        Row(
            f"get_many_cached({size}) hit vs ORM in_bulk({size})",
            samples,
            "get_many_cached",
            "in_bulk",
            0.33,
            floor="MGET many",
        ),
        Row(
            f"get_many_cached({size}) hit vs Redis MGET",
            samples,
            "get_many_cached",
            "MGET many",
            None,
        ),
        Row(
            "write-through save() vs plain save()",
            samples,
            "write-through save",
            "plain save",
            1.3,
            floor="plain save + write RTTs",
        ),
        Row(
            "write-through save() vs its floor (plain save + 2 RTTs)",
            samples,
            "write-through save",
            "plain save + write RTTs",
            1.1,
        ),
        Row(
            "cache-aside save() vs plain save()",
            samples,
            "cache-aside save",
            "plain save",
            1.2,
            floor="plain save + DEL",
        ),
    ]
    print(
        f"Timings: median µs per operation over {args.rounds} interleaved rounds "
        f"({elapsed:.0f}s); ratio = median of the per-round ratios (p25-p75 shown)"
    )
    print_table(rows)
    print(
        f"""
  statistics on vs off: get_cached hits with CACHESTRAT["STATS"] True vs False, interleaved
    (on: counted in process, sent by the background thread once a second).
  signed vs no MAC: the same rows' entries with their MAC (the default) and without
    (SIGN off, another KEY_PREFIX), read alternately; the default serializer in both.
    "no entry remembered": a signer that remembers no entry as verified (signing.py
    Signer.remember), so every read computes every MAC, as for rows not read lately.
    "pickle, no MAC (before)": the previous default, pickle with codec-4's plan
    (bench.serializer.Codec4Pickle) and no MAC, its own entries of the same rows.
    {mac_cost(b)}
  ours / base: get_cached = WriteThroughItem.objects.get_cached(pk=); GET = redis-py GET of
    that row's entry key on the same pool; ORM get = WriteThroughItem.objects.get(pk=);
    get_many_cached / in_bulk / MGET: {size} pks, MGET of the version key + {size} entry keys;
    saves: one changed row per save, autocommit, same fields in all three models.
  floor: the ratio with no Python of ours, only the Redis round trips the design makes:
    MGET of version + entry (get_cached vs GET), GET (vs ORM get), MGET (get_many),
    raw pipelined EVALSHA begin + plain save + EVALSHA end (write-through),
    plain save + DEL of entry and lease (cache-aside).
  raw µs: """
        + ", ".join(f"{name} {statistics.median(v):.1f}" for name, v in samples.items())
    )
    missed = [row.label for row in rows if row.passed is False]
    if not one_trip:
        missed.append(f"get_many_cached({size}) in one round trip")
    return print_summary(missed)


def mac_cost(b: Setup) -> str:
    """Time the MAC of one entry alone (tag, and verify), on a real entry's bytes."""
    import timeit

    from django_cachestrat import signing

    entry = b.client.get(b.entry_keys[0])
    name, body, tag = b.entry_keys[0].encode(), entry[signing.TAG :], entry[: signing.TAG]
    signer = b.signed[0]
    check = signer.checker(signing.ENTRY)
    assert check(name, body, tag)
    n = 20_000

    def best(fn) -> float:
        return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e9

    signs = best(lambda: signer.tag(signing.ENTRY, name, body))
    checks = best(lambda: check(name, body, tag))
    return (
        f"raw MAC of one {len(entry)}-byte entry (keyed BLAKE2b, 16 bytes): tag {signs:.0f} ns, "
        f"verify {checks:.0f} ns (best of 5 x {n:,})"
    )


def print_summary(missed: list[str], section: str = "") -> list[str]:
    """Print a section's verdict line and return its missed goals."""
    label = f"SUMMARY ({section})" if section else "SUMMARY"
    print()
    if missed:
        print(f"{label}: {len(missed)} goal(s) MISSED: " + "; ".join(missed))
    else:
        print(f"{label}: every goal PASSED")
    return missed


def lean_reader(b: Setup):
    """A lean reader of the same design and entry format (MGET of version + entries, the
    ``fingerprint:version:expires:fill ms:values`` entry read by the configured serializer,
    an instance per row), without the app's checks, signals and fallbacks: a bound on what
    the app's read path could cost. Returns ``(get, get_many)``.

    Builds instances without ``Model.__init__`` (so only for models with no ``pre_init``
    or ``post_init`` receivers, which the bench's models have not).
    """
    from django.db.models import signals
    from django.db.models.base import ModelState

    from django_cachestrat import conf, keys, options

    model = b.WT
    if signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model):
        raise RuntimeError("the lean reader cannot build instances of a model with init signals")
    opts = options.get(model)
    prefix = conf.settings().KEY_PREFIX
    attnames = [f.attname for f in opts.fields]
    mget, version_key = b.client.mget, b.version_key
    loads = conf.settings().serializer.loads

    def build(values):
        obj = model.__new__(model)
        obj.__dict__.update(zip(attnames, values, strict=True))
        state = obj._state = ModelState()
        state.adding, state.db = False, "default"
        return obj

    fp = opts.fingerprint.encode()

    def get_many(pks):
        version, *entries = mget([version_key, *(keys.entry(prefix, opts.label, pk) for pk in pks)])
        found = {}
        for pk, data in zip(pks, entries, strict=True):
            mark, tag, _, _, payload = data.split(b":", 4)  # fp:version:expires:fill ms:values
            if mark == fp and tag == version:
                found[pk] = build(loads(payload))
        return found

    def get(pk):
        return get_many([pk])[pk]

    return get, get_many


def profile(b: Setup, args: argparse.Namespace) -> None:
    """Where the time of the cached hot paths goes: ladders, then cProfile."""
    from django_cachestrat import backends, codec, conf, options

    model = b.WT
    opts = options.get(model)
    transport = backends.get(conf.settings().CACHE_ALIAS)
    n, m = len(b.entry_keys), len(b.chunks)
    strategy = model.cache_strategy
    lean_get, lean_many = lean_reader(b)
    sample = b.get_cached(7)
    assert all(
        getattr(lean_get(sample.pk), f.attname) == getattr(sample, f.attname) for f in opts.fields
    )

    def mget_decode(i):
        version, data = transport.mget([b.version_key, b.entry_keys[i % n]])
        return codec.decode(opts, data, version, "default", model)

    rounds = max(20, args.rounds // 2)
    ladders = {
        "get_cached(pk=) hit": interleaved(
            {
                "1 redis-py GET of the entry": b.redis_get,
                "2 redis-py MGET version + entry": b.redis_mget_one,
                "3 transport.mget (breaker)": lambda i: transport.mget(
                    [b.version_key, b.entry_keys[i % n]]
                ),
                "4 + codec.decode": mget_decode,
                "5 Strategy.get_many([pk])": lambda i: strategy.get_many(
                    model, "default", [b.wt_pks[i % n]]
                ),
                "6 Strategy.get(pk)": lambda i: strategy.get(
                    model, "default", "pk", b.wt_pks[i % n]
                ),
                "7 manager.get_cached(pk=)": b.get_cached,
                "lean reader get (bound)": lambda i: lean_get(b.wt_pks[i % n]),
                "ORM get(pk=)": b.orm_get,
            },
            rounds,
            args.point_batch,
            warmup=300,
        ),
        f"get_many_cached({b.size}) hit": interleaved(
            {
                "1 redis-py MGET version + entries": b.redis_mget_many,
                "2 get_many_cached": b.get_many,
                "lean reader get_many (bound)": lambda i: lean_many(b.chunks[i % m]),
                "ORM in_bulk": b.in_bulk,
            },
            rounds,
            args.bulk_batch,
            warmup=30,
        ),
    }
    for title, ladder in ladders.items():
        print_ladder(title, ladder)

    m = len(b.chunks)
    cases = [
        ("get_cached(pk=) hit", 20000, b.get_cached),
        (f"get_many_cached({b.size}) hit", 300, lambda i: b.wt.get_many_cached(b.chunks[i % m])),
        ("write-through save()", 1000, b.saver(b.WT)),
        ("cache-aside save()", 1000, b.saver(b.CA)),
    ]
    for label, count, fn in cases:
        print_profile(
            f"{label}, {count} calls", lambda fn=fn, count=count: [fn(i) for i in range(count)]
        )


def print_ladder(title: str, ladder: dict[str, list[float]]) -> None:
    """Print the median µs of each variant; numbered steps also show what they add."""
    print()
    print(f"=== {title}, built up step by step (interleaved, median µs) ===")
    previous = None
    for name, values in ladder.items():
        median = statistics.median(values)
        step = ""
        if name[0].isdigit():
            step = "" if previous is None else f"  (+{median - previous:.1f})"
            previous = median
        print(f"  {name:<36} {median:8.1f}{step}")
    print()


def print_profile(label: str, fn: Callable[[], object]) -> None:
    """Run ``fn`` under cProfile; print the top functions and our own, paths shortened."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    print(f"=== cProfile: {label} ===")
    stats.sort_stats("tottime").print_stats(15)
    stats.sort_stats("cumulative").print_stats(r"django_cachestrat/", 20)
    text = out.getvalue()
    for path in sorted({*sys.path, os.getcwd()}, key=len, reverse=True):
        if len(path) > 1:
            text = text.replace(path + os.sep, "")
    print(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = None
    started = not os.environ.get("REDIS_URL")
    if started:
        from tests.redis_server import Server

        server = Server().start()
        os.environ["REDIS_URL"] = server.url
    try:
        ensure_database()
        os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
        import django

        django.setup()
        run(args, os.environ["REDIS_URL"], started)
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        if server is not None:
            server.stop()
            os.environ.pop("REDIS_URL", None)
    return 0


if __name__ == "__main__":
    sys.exit(main())

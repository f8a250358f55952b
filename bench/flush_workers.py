"""Benchmark: write-behind flush throughput with 1, 2 and 4 worker processes side by side.

Usage: ``python -m bench.flush_workers [--db postgres|sqlite] [--rows N] [--reps N]
[--batch-size N] [--workers 1,2,4]``. ``bench.run --only workers`` runs it on PostgreSQL,
then on SQLite (a throwaway file), each in a process of its own. Redis is ``REDIS_URL`` or a
server it starts itself; PostgreSQL is bench.run's (PG* variables), in a database of its
own (``PGDATABASE`` + ``_workers``, created when missing). A report: it exits 0, unless
a flush left a row without exactly the writes made to it (then it fails loudly).

Method. Every row of ``bench.models.WriteBehindItem`` gets one pending write (even rows an
increment, odd rows a save), then 1, 2 or 4 worker processes are told at the same moment to
flush: each runs ``flusher.flush()``, the loop a Celery worker's flush task runs (claim a
batch, write it in one transaction, acknowledge; until no row is left), with its own
database and Redis connections. A flush's time runs from the go to the last worker's
answer; throughput is rows written per second. The worker processes are started once and
reused. The worker counts take turns, in an order that rotates from repetition to
repetition, so noise on this shared machine is spread over all of them; a figure is the
median over repetitions, a speed-up the median of the per-repetition ratios to one worker.
Each worker reports the CPU time it used, and the CPU time of its PostgreSQL backend
process; Redis reports its own; the machine's busy cores are read from ``/proc/stat``.
After the last flush every row must hold exactly the writes made to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.flush_workers")
    parser.add_argument("--db", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--rows", type=int, default=20_000, help="pending rows per flush (20000)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per worker count (3)")
    parser.add_argument("--batch-size", type=int, default=500, help="BATCH_SIZE (500, the default)")
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated (1,2,4)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.counts = sorted({int(n) for n in args.workers.split(",")})
    if args.counts[0] < 1 or args.reps < 1:
        parser.error("worker counts and --reps must be at least 1")
    return args


# -- the worker processes ------------------------------------------------------------------


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` of this machine has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child() -> int:
    """A worker: on each ``flush`` line, flush until nothing is left; answer in JSON."""
    import django

    django.setup()
    from django.db import connection

    from bench.models import WriteBehindItem
    from django_cachestrat.write_behind import flusher

    backend = None
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            (backend,) = cursor.fetchone()
    label = WriteBehindItem._meta.label_lower
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "flush":
            break
        db0 = cpu_of(backend) if backend else 0.0
        cpu0, t0 = time.process_time(), time.perf_counter()
        report = flusher.flush([WriteBehindItem])
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        db = cpu_of(backend) - db0 if backend else None
        reply = {"rows": report.rows.get(label, 0), "batches": report.batches}
        print(json.dumps({**reply, "seconds": seconds, "cpu": cpu, "db_cpu": db}), flush=True)
    return 0


class Pool:
    """``count`` worker processes, started once, told to flush together."""

    def __init__(self, count: int):
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "bench.settings"}
        command = [sys.executable, "-m", "bench.flush_workers", "--child"]
        self.processes = [
            subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            for _ in range(count)
        ]

    def ready(self) -> None:
        for process in self.processes:
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a worker exited with {process.wait()} before it was ready")

    def flush(self) -> list[dict]:
        """Tell every worker to flush now; return their answers once all are done."""
        for process in self.processes:
            process.stdin.write("flush\n")
            process.stdin.flush()
        return [json.loads(process.stdout.readline()) for process in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(OSError):
                process.stdin.close()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of every CPU of the machine, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def redis_cpu(client) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


# -- the measurement -----------------------------------------------------------------------


def run(args: argparse.Namespace, started: bool) -> None:
    from celery import Celery
    from django.db import connection
    from django_redis import get_redis_connection

    from bench.models import WriteBehindItem
    from bench.run import clear_redis, create_schema, seed
    from bench.write_behind import check_flushed, chunks, fill_rows
    from django_cachestrat import conf
    from django_cachestrat.models import AppliedBatch, DeadLetter
    from django_cachestrat.write_behind import flusher
    from django_cachestrat.write_behind.queue import Queue

    model = WriteBehindItem
    # Size-triggered flushes go to a broker nothing consumes: the workers here flush.
    Celery("bench", broker="memory://", set_as_current=True)
    cfg = conf.settings()
    client = get_redis_connection("default")
    clear_redis(client, cfg.KEY_PREFIX, started)
    create_schema([model, AppliedBatch, DeadLetter])
    pks = seed([model], args.rows)[model]
    start = dict(model._base_manager.values_list("pk", "count"))
    model.objects.increment_behind(pks[0], hits=0)  # the version key first (write_behind.py)
    flusher.drain()
    for part in chunks(pks):
        model.objects.get_many_cached(part)
    queue = Queue(model)

    pools = {count: Pool(count) for count in args.counts}
    results: dict[int, list[dict]] = {count: [] for count in args.counts}
    fills = []
    t_all = time.perf_counter()
    try:
        for pool in pools.values():
            pool.ready()
        for rep in range(args.reps):
            k = rep % len(args.counts)
            for count in args.counts[k:] + args.counts[:k]:
                fills.append(fill_rows(model, pks))
                waiting, flying = queue.counts()
                if (waiting, flying) != (len(pks), 0):
                    raise RuntimeError(f"{waiting} rows pending, {flying} in flight after the fill")
                busy0, total0 = machine_cpu()
                r0 = redis_cpu(client)
                t0 = time.perf_counter()
                answers = pools[count].flush()
                wall = time.perf_counter() - t0
                busy1, total1 = machine_cpu()
                written = sum(a["rows"] for a in answers)
                if written != len(pks) or queue.counts() != (0, 0):
                    raise RuntimeError(f"{count} workers wrote {written} of {len(pks)} rows")
                results[count].append(
                    {
                        "wall": wall,
                        "answers": answers,
                        "redis_cpu": redis_cpu(client) - r0,
                        "cores": (busy1 - busy0) / max(1, total1 - total0) * os.cpu_count(),
                    }
                )
    finally:
        for pool in pools.values():
            pool.stop()
    elapsed = time.perf_counter() - t_all
    check_flushed(model, pks)
    # Each fill added 1 to ``hits`` of the even rows and to ``count`` of the odd ones.
    flushes, stored = len(fills), model._base_manager.in_bulk(pks)
    wrong = [
        pk
        for n, pk in enumerate(pks)
        if (stored[pk].hits, stored[pk].count)
        != ((flushes, start[pk]) if n % 2 == 0 else (0, start[pk] + flushes))
    ]
    if wrong:
        raise RuntimeError(f"{len(wrong)} rows do not hold exactly their writes: {wrong[:5]}")
    report(args, connection, cfg, results, fills, elapsed)


def report(args, connection, cfg, results, fills, elapsed) -> None:
    n = args.rows
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT version(), current_setting('synchronous_commit')")
            version, sync = cursor.fetchone()
        db = f"{version.split(' on ')[0]} (synchronous_commit={sync})"
    else:
        import sqlite3

        db = f"SQLite {sqlite3.sqlite_version} (a file; one writer at a time)"
    print("=" * 100)
    print(f"Write-behind flush throughput with {', '.join(map(str, args.counts))} worker processes")
    print("=" * 100)
    print(
        f"  {db}; {os.cpu_count()} CPUs; {n:,} pending rows per flush (half an increment, "
        f"half a save), BATCH_SIZE={cfg.BATCH_SIZE} ({-(-n // cfg.BATCH_SIZE)} batches); "
        f"{args.reps} repetitions per count; took {elapsed:.0f}s"
    )
    print()
    head = (
        f"  {'workers':>7} {'median s':>9} {'rows/s':>8} {'min-max s':>11} {'speed-up':>9} "
        f"{'batches per worker':>20} {'CPU µs/row: workers':>20} {'db':>5} {'redis':>6} "
        f"{'cores busy':>10} {'CPU bound':>9}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    one = results[args.counts[0]]
    for count, runs in results.items():
        walls = [r["wall"] for r in runs]
        median = statistics.median(walls)
        ratios = [a["wall"] / b["wall"] for a, b in zip(one, runs, strict=True)]
        shares = "/".join(
            str(round(statistics.median(r["answers"][i]["batches"] for r in runs)))
            for i in range(count)
        )
        per_row = 1e6 / n
        cpu = statistics.median(sum(a["cpu"] for a in r["answers"]) for r in runs) * per_row
        db_values = [sum(a["db_cpu"] or 0 for a in r["answers"]) for r in runs]
        db = statistics.median(db_values) * per_row
        db_cpu = f"{db:>5.0f}" if any(db_values) else "    -"
        redis = statistics.median(r["redis_cpu"] for r in runs) * per_row
        cores = statistics.median(r["cores"] for r in runs)
        # At most one core per worker (it waits for the database and Redis in turn), at
        # most every core of the machine.
        bound = min(count, os.cpu_count() or 1) * 1e6 / (cpu + db + redis)
        print(
            f"  {count:>7} {median:>9.2f} {n / median:>8,.0f} "
            f"{min(walls):>5.2f}-{max(walls):<5.2f} "
            f"{statistics.median(ratios):>8.2f}x {shares:>20} {cpu:>20.0f} {db_cpu} "
            f"{redis:>6.0f} {cores:>10.2f} {bound:>9,.0f}"
        )
    print(
        f"""
  speed-up: median over repetitions of (time with {args.counts[0]} worker / time with N), each
    pair measured in the same repetition. batches per worker: median per process.
  CPU µs/row: CPU time per row written, summed over the worker processes (Python: the
    flusher, the ORM, redis-py, the driver; on SQLite the database's work too), their
    PostgreSQL backends (db), and the Redis server. cores busy: the whole machine's, from
    /proc/stat, during the flush (anything else running on it is counted too).
  CPU bound: rows/s if the CPU time per row were all there is, with one core per worker
    (a worker's flush waits for the database and for Redis in turn, so the three of them
    keep about one core busy) and no more cores than the machine has: adding workers helps
    until they fill the machine's cores, or SQLite's one write lock, or Redis's one thread
    (one model's queue is one Redis key space; its CPU µs/row bounds every worker count).
  Filling {n:,} rows took {statistics.median(fills):.1f}s median; every row held exactly
    its writes after the last of {len(fills)} flushes."""
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child()
    server = None
    if not os.environ.get("REDIS_URL"):
        from tests.redis_server import Server

        server = Server().start()
        os.environ["REDIS_URL"] = server.url
    sqlite = None
    if args.db == "sqlite":
        fd, sqlite = tempfile.mkstemp(prefix="cachestrat-bench-", suffix=".sqlite3")
        os.close(fd)
        os.environ["CACHESTRAT_BENCH_SQLITE"] = sqlite
    else:
        from bench.run import ensure_database, pg_params

        os.environ.pop("CACHESTRAT_BENCH_SQLITE", None)
        # A database of its own: the other sections drop and recreate the same tables.
        os.environ["PGDATABASE"] = pg_params()["dbname"] + "_workers"
        ensure_database()
    os.environ["CACHESTRAT_BENCH_BATCH_SIZE"] = str(args.batch_size)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.settings"
    try:
        import django

        django.setup()
        run(args, started=server is not None)
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            from django_cachestrat import stats

            stats.flush()  # now, while Redis runs: not at exit, once it is stopped
            connections.close_all()
        if sqlite:
            for path in (sqlite, sqlite + "-journal"):
                with contextlib.suppress(OSError):
                    os.remove(path)
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

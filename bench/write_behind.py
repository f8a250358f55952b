"""The write-behind section of the benchmark (``python -m bench.run --only write-behind``).

Three questions, on PostgreSQL and Redis, with ``bench.models.WriteBehindItem`` (the six
shared fields plus a ``hits`` counter) against ``PlainItem`` (the same six fields, not
cached):

1. Ingest: writes per second of a write-behind ``save()`` of an existing row and of
   ``increment_behind`` against a plain ``save()`` (autocommit), interleaved in rounds as
   the other comparisons are; the same ops eight to a transaction (recorded in one round
   trip at commit); one Redis ``PING`` as the ceiling of any design that waits for Redis
   to acknowledge each write; again while more rows than ``BATCH_SIZE`` are pending.
2. Coalescing: 10,000 updates (half ``increment_behind``, half read-modify-``save()``)
   spread over 100 rows, then one flush: how many UPDATE statements reach the database.
3. Flush: the time to flush 10,000 distinct pending rows (half a save, half an
   increment), median over repetitions, against floors that send the same UPDATEs
   without the app (one ``execute`` per row, and psycopg's pipelined ``executemany``).

Size-triggered flushes go to an in-memory Celery broker that nothing consumes: the
benchmark flushes explicitly, and counts the tasks the saves queued.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import re
import statistics
import time

from bench.run import (
    RedisCounter,
    Row,
    clear_redis,
    create_schema,
    describe,
    interleaved,
    print_ladder,
    print_profile,
    print_summary,
    print_table,
    seed,
)

HOT = 200  # rows the ingest saves cycle through; as many others take the increments
COALESCE_ROWS = 100
COALESCE_OPS = 10_000
CHUNK = 100  # rows per get_many_cached when priming and checking
FLOOR = "bench-floor"  # the key prefix of the floor's own keys


def chunks(seq: list, size: int = CHUNK) -> list[list]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


class UpdateCounter:
    """Counts the statements (and the UPDATEs among them) sent on a connection.

    An ``execute_wrapper``: unlike ``CaptureQueriesContext`` it keeps no SQL and has no
    cap (that one keeps the last 9,000), so it can stay on while a flush is timed.
    """

    def __init__(self):
        self.statements = 0
        self.updates = 0

    def __call__(self, execute, sql, params, many, context):
        self.statements += 1
        if sql.lstrip()[:6].upper() == "UPDATE":
            self.updates += len(params) if many else 1
        return execute(sql, params, many, context)


class Behind:
    """Set-up of the section: tables, rows, primed views, instances, the Redis floor."""

    def __init__(self, args: argparse.Namespace, started: bool):
        from celery import Celery
        from celery.signals import before_task_publish
        from django_redis import get_redis_connection

        from bench.models import PlainItem, WriteBehindItem
        from django_cachestrat import conf
        from django_cachestrat.models import AppliedBatch, DeadLetter
        from django_cachestrat.write_behind import flusher
        from django_cachestrat.write_behind.pending import PendingWrites
        from django_cachestrat.write_behind.queue import Queue

        self.args = args
        self.WB, self.PLAIN = WriteBehindItem, PlainItem
        self.cfg = cfg = conf.settings()
        self.flusher = flusher
        self.pending = PendingWrites(WriteBehindItem)
        self.queue = Queue(WriteBehindItem)
        self.client = get_redis_connection("default")
        self.label = WriteBehindItem._meta.label_lower

        # Size-triggered flushes (trigger_flush -> flush_write_behind.delay) go here.
        self.celery = Celery("bench", broker="memory://", set_as_current=True)
        self.published = 0
        before_task_publish.connect(self._published, weak=False)

        clear_redis(self.client, cfg.KEY_PREFIX, started)
        create_schema([WriteBehindItem, PlainItem, AppliedBatch, DeadLetter])
        n = max(args.behind_rows, 4 * HOT + COALESCE_ROWS + 2)
        self.pks = seed([WriteBehindItem], n)[WriteBehindItem]
        self.plain_pks = seed([PlainItem], 2 * HOT)[PlainItem]
        self.findings: list[str] = []
        self._prime()
        self.now = dt.datetime.now(dt.UTC)
        self.save_pks = self.pks[:HOT]  # write-behind saves
        self.inc_pks = self.pks[HOT : 2 * HOT]  # increment_behind
        self.coalesce_pks = self.pks[2 * HOT : 2 * HOT + COALESCE_ROWS]
        self.refresh_instances()
        self.plain_objs = list(PlainItem.objects.filter(pk__in=self.plain_pks[:HOT]).order_by("pk"))
        self._floor_setup()

    def _published(self, **kwargs):
        self.published += 1

    def queries_for(self, fn) -> int:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as queries:
            fn()
        return len(queries)

    def _prime(self) -> None:
        """Fill every row's view; then every read of it must be a hit (no query).

        Views filled while the model has no version key in Redis were seen to be stored
        as version ``0`` and never match (reads stay misses, and the first write of each
        row has to rebuild its view): measure that, then let one write-behind write create
        the key, as any application's first write would, before priming for real.
        """
        from django_cachestrat import signals

        sample = self.pks[:CHUNK]
        get_many = self.WB.objects.get_many_cached
        had_version = self.client.get(self.pending.version_key()) is not None
        get_many(sample)
        misses = 0

        def missed(sender, keys, **kwargs):
            nonlocal misses
            misses += keys

        signals.cache_miss.connect(missed, weak=False)
        try:
            before = self.queries_for(lambda: get_many(sample))
        finally:
            signals.cache_miss.disconnect(missed)
        if before and not had_version:
            stored = self.client.hget(self.pending.row(sample[0])["view"], "__v")
            self.findings.append(
                f"views filled before the model's first write-behind write are never hits: "
                f"re-reading {len(sample)} just-filled rows gave {misses} misses and "
                f"{before} query(ies); the model had no version key in Redis and the fill "
                f"stored __v={stored!r} (strategies/write_behind.py _ViewForm.load)"
            )
        self.WB.objects.increment_behind(self.pks[0], hits=0)  # creates the version key
        self.flusher.drain()
        for part in chunks(self.pks):
            get_many(part)
        left = sum(self.queries_for(lambda p=part: get_many(p)) for part in chunks(self.pks))
        if left:
            raise RuntimeError(f"{left} queries re-reading {len(self.pks)} primed rows")

    def refresh_instances(self) -> None:
        """Instances of the saved rows as the cache has them now (so no save is stale)."""
        got = self.WB.objects.get_many_cached(self.save_pks)
        self.save_objs = [got[pk] for pk in self.save_pks]

    def _floor_setup(self) -> None:
        """The RECORD script as raw EVALSHAs: a save (every field, ``count`` changed) and
        an increment, as the app sends them, on keys of the floor's own.

        The app builds each call itself (``PendingWrites._record_op``, under the floor's
        key prefix, with a batch size never reached), ahead of the timing: every call is
        a new write of its writer (``RECORD`` counts a write sent twice once), and the
        floor can never drift from what the app sends.
        """
        from django.conf import settings
        from django.test import override_settings

        from django_cachestrat import codec
        from django_cachestrat.backends import scripts
        from django_cachestrat.write_behind.pending import PendingWrites

        self.record_sha = self.client.script_load(scripts.RECORD.source)
        obj = self.save_objs[0]
        names = [f.attname for f in self.WB._meta.concrete_fields if not f.primary_key]
        values = {
            name: codec.as_stored(self.WB._meta.get_field(name), getattr(obj, name))
            for name in names
        }
        # Every floor call of the run: the ingest's warmup and rounds, the ladder's.
        calls = 6 * self.args.write_batch + (ingest_rounds(self.args) + 8) * self.args.write_batch
        calls += (max(20, self.args.rounds // 4) + 3) * self.args.write_batch
        floor_cfg = {**settings.CACHESTRAT, "KEY_PREFIX": FLOOR, "BATCH_SIZE": 10**9}
        with override_settings(CACHESTRAT=floor_cfg):
            pending = PendingWrites(self.WB)
            self.floor_saves = iter(
                [
                    pending._record_op(i % HOT, {**values, "count": obj.count + i}, {}, True)
                    for i in range(2 * HOT + calls)
                ]
            )
            # The increments' rows need a view: a full save of each creates it.
            for n in range(HOT, 2 * HOT):
                self._send(pending._record_op(n, values, {}, True))
            self.floor_increments = iter(
                [pending._record_op(HOT + i % HOT, {}, {"hits": 1}, False) for i in range(calls)]
            )
        for _ in range(HOT):
            self.floor_save(0)

    def _send(self, op, client=None):
        _, keys, args = op
        return (client or self.client).evalsha(self.record_sha, len(keys), *keys, *args)

    def floor_save(self, i: int):
        return self._send(next(self.floor_saves))

    def floor_increment(self, i: int):
        return self._send(next(self.floor_increments))

    # -- operations, each called with an operation index --

    def behind_save(self, i: int) -> None:
        obj = self.save_objs[i % HOT]
        obj.count += 1
        obj.updated = self.now
        obj.save()

    def increment(self, i: int) -> None:
        self.WB.objects.increment_behind(self.inc_pks[i % HOT], hits=1)

    def ping(self, i: int) -> None:
        self.client.ping()

    def plain_save(self, i: int) -> None:
        obj = self.plain_objs[i % HOT]
        obj.count += 1
        obj.updated = self.now
        obj.save()

    # -- checks --

    def check_flushed(self, pks: list) -> None:
        """Nothing pending, and the database holds what the cache shows, field by field."""
        check_flushed(self.WB, pks)


def check_flushed(model, pks: list) -> None:
    """Nothing of ``model`` pending, and the database holds what the cache shows, field by
    field, for rows ``pks``."""
    from django_cachestrat.write_behind.queue import Queue

    waiting, flying = Queue(model).counts()
    if waiting or flying:
        raise RuntimeError(f"{waiting} rows still pending, {flying} batches in flight")
    names = [f.attname for f in model._meta.concrete_fields]
    for part in chunks(pks, 1000):
        cached = model.objects.get_many_cached(part)
        stored = model._base_manager.in_bulk(part)
        for pk in part:
            a = [getattr(cached[pk], n) for n in names]
            b = [getattr(stored[pk], n) for n in names]
            if a != b:
                raise RuntimeError(f"pk={pk}: cache {a} != database {b} after the flush")


# -- the measurements -----------------------------------------------------------------


def measure_ingest(b: Behind, counter: RedisCounter) -> tuple[dict, dict]:
    """Per-op costs and the interleaved ingest timings (few rows pending)."""
    from django.db import connection

    assert connection.get_autocommit()  # each plain save is its own transaction
    costs = {
        "write-behind save()": counter.per_op(functools.partial(b.behind_save, 0)),
        "increment_behind()": counter.per_op(functools.partial(b.increment, 0)),
        "plain save()": counter.per_op(functools.partial(b.plain_save, 0)),
    }
    size = b.args.write_batch  # a round's ops: one transaction for the *_tx variants
    samples = interleaved(
        {
            "plain save": b.plain_save,
            "write-behind save": b.behind_save,
            "increment_behind": b.increment,
            "RECORD save (floor)": b.floor_save,
            "RECORD increment (floor)": b.floor_increment,
            "PING (floor)": b.ping,
            "plain save_tx": per_transaction(b.plain_save, size),
            "write-behind save_tx": per_transaction(b.behind_save, size),
            "increment_behind_tx": per_transaction(b.increment, size),
        },
        ingest_rounds(b.args),
        size,
        warmup=6 * size,  # whole transactions
    )
    return costs, samples


def per_transaction(op, size: int):
    """``op`` with every ``size`` consecutive calls in one ``atomic`` block.

    Call ``i`` opens the block when ``i % size == 0`` and commits it when it is the
    block's last; ``interleaved`` runs rounds of ``size`` calls, so a round is one
    transaction, commit included.
    """
    from django.db import transaction

    block = None

    def in_block(i: int) -> None:
        nonlocal block
        if i % size == 0:
            block = transaction.atomic()
            block.__enter__()
        op(i)
        if i % size == size - 1:
            block.__exit__(None, None, None)
            block = None

    return in_block


def ingest_rounds(args: argparse.Namespace) -> int:
    """Half the rounds of the other comparisons: a write-behind round is long (a plain
    save commits), and the paired ratios settle well before."""
    return max(4, args.rounds // 2)


class Unsigned:
    """Switch the loaded setting between signing (the default) and no MAC, another prefix.

    What ``SIGN: False`` with another ``KEY_PREFIX`` gives, without reloading the setting:
    both variants of a comparison set the same two attributes before each op.
    """

    def __init__(self):
        from django_cachestrat import conf

        cfg = conf.settings()
        self.signed = (cfg.signer, cfg.KEY_PREFIX)
        self.plain = (None, f"{cfg.KEY_PREFIX}-nomac")

    def set(self, on: bool) -> None:
        from django_cachestrat import conf

        # The loaded setting of now: an override_settings (the floor's) loads another.
        cfg = conf.settings()
        cfg.signer, cfg.KEY_PREFIX = self.signed if on else self.plain

    def wrap(self, on: bool, op):
        def run(i):
            self.set(on)
            return op(i)

        return run

    @contextlib.contextmanager
    def off(self):
        self.set(False)
        try:
            yield
        finally:
            self.set(True)


def measure_signing(b: Behind) -> dict:
    """Write-behind save() and increment_behind() with a MAC and without, interleaved on
    rows of their own; then what a hot counter's pending increments cost in memory, in
    increment_behind() and at the flush, signed or not."""
    from django_cachestrat.write_behind.views import Views

    mac = Unsigned()
    first = 2 * HOT + COALESCE_ROWS
    save_pks, inc_pks = b.pks[first : first + HOT], b.pks[first + HOT : first + 2 * HOT]
    hot_signed, hot_plain = b.pks[-1], b.pks[-2]
    get_many, increment = b.WB.objects.get_many_cached, b.WB.objects.increment_behind
    with mac.off():
        increment(save_pks[0], hits=0)  # the prefix's version key, as in _prime
        b.flusher.drain()
        plain_objs = [get_many(save_pks)[pk] for pk in save_pks]
        get_many(inc_pks)
    now = b.now

    def plain_save(i):
        obj = plain_objs[i % HOT]
        obj.count += 1
        obj.updated = now
        obj.save()

    def plain_increment(i):
        increment(inc_pks[i % HOT], hits=1)

    b.refresh_instances()
    try:
        samples = interleaved(
            {
                "save MAC": mac.wrap(True, b.behind_save),
                "save no MAC": mac.wrap(False, plain_save),
                "increment MAC": mac.wrap(True, b.increment),
                "increment no MAC": mac.wrap(False, plain_increment),
            },
            ingest_rounds(b.args),
            b.args.write_batch,
            warmup=4 * b.args.write_batch,
        )
    finally:
        mac.set(True)
    b.flusher.drain()
    b.check_flushed(b.save_pks + b.inc_pks)
    with mac.off():
        b.flusher.drain()
        b.check_flushed(save_pks + inc_pks)
    try:
        memory = hot_rows(b, mac, {True: hot_signed, False: hot_plain})
    finally:
        mac.set(True)
    # The rows written without a MAC changed in the database behind the signed views'
    # back (another prefix): drop those views, as an invalidation would.
    views = Views(b.WB)
    b.client.delete(*(views.row(pk)["view"] for pk in [*save_pks, *inc_pks, hot_plain]))
    return {"samples": samples, "memory": memory}


HOT_COUNTS = (1, 100, 1_000, 10_000)


def hot_rows(b: Behind, mac: Unsigned, pks: dict[bool, object]) -> dict[bool, list[tuple]]:
    """Increment one row signed and one without a MAC ``n`` times each (for each of
    ``HOT_COUNTS``, from nothing pending), interleaved; per mode and ``n``: ``(n, bytes of
    the row's keys in Redis, median µs per increment_behind(), ms to flush the row)``."""
    from django_cachestrat import conf, keys, options

    increment = b.WB.objects.increment_behind
    out: dict[bool, list[tuple]] = {True: [], False: []}
    for n in HOT_COUNTS:
        for on, pk in pks.items():
            mac.set(on)
            b.flusher.drain()
            increment(pk, hits=0)  # a view with nothing pending yet but this
            b.flusher.drain()
        mac.set(True)
        batch = min(n, 10)
        timed = interleaved(
            {on: mac.wrap(on, lambda i, pk=pk: increment(pk, hits=1)) for on, pk in pks.items()},
            n // batch,
            batch,
            warmup=0,
        )
        for on, pk in pks.items():
            mac.set(on)
            row = keys.behind_row(conf.settings().KEY_PREFIX, options.get(b.WB).label, pk)
            names = [row["view"], row["fields"], row["deltas"], row["seen"]]
            names.append(keys.behind_increments(row["deltas"], "hits"))
            size = sum(b.client.memory_usage(k, samples=0) or 0 for k in names)
            t0 = time.perf_counter()
            report = b.flusher.flush([b.WB])
            flushed = (time.perf_counter() - t0) * 1000
            if report.rows.get(b.label) != 1 or report.dead_letters:
                raise RuntimeError(f"hot row flush reported {report}")
            out[on].append((n, size, statistics.median(timed[on]), flushed))
        mac.set(True)
    return out


def report_signing(b: Behind, signed: dict) -> list[str]:
    samples, memory = signed["samples"], signed["memory"]
    compared = (("write-behind save()", "save", 1.05), ("increment_behind()", "increment", None))
    rows = [
        Row(f"{what}, signed vs no MAC", samples, f"{op} MAC", f"{op} no MAC", goal)
        for what, op, goal in compared
    ]
    print(
        "4. Signing: the same ops with their MAC (the default) and without (SIGN off, another "
        "KEY_PREFIX), interleaved on rows of their own; median µs, ratio of per-round ratios"
    )
    print_table(rows)
    print(
        "\n  A hot counter: one row incremented n times with nothing else pending (Redis "
        "MEMORY USAGE of the row's view, pending hashes, seen hash and increment records; "
        "median µs per increment_behind(), the two rows interleaved; the flush of that row):"
    )
    head = (
        f"  {'n':>6} {'bytes signed':>13} {'no MAC':>9} {'per incr':>9} {'µs signed':>10} "
        f"{'no MAC':>7} {'flush ms signed':>16} {'no MAC':>7}"
    )
    print(head)
    print("  " + "-" * (len(head) - 2))
    for (n, size, us, ms), (_, size0, us0, ms0) in zip(memory[True], memory[False], strict=True):
        extra = (size - size0) / n
        print(
            f"  {n:>6} {size:>13,} {size0:>9,} {extra:>8.0f}B {us:>10.1f} {us0:>7.1f} "
            f"{ms:>16.1f} {ms0:>7.1f}"
        )
    print(
        "  per incr: what signing adds per pending increment (its signed record: 16-byte MAC, "
        "amount, writer id, number), in bytes"
    )
    print()
    return [f"signing: {r.label}" for r in rows if r.passed is False]


def measure_coalescing(b: Behind) -> dict:
    """10,000 updates of 100 rows, then one flush: the statements it sends."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    pks = b.coalesce_pks
    n = len(pks)
    start = {obj.pk: (obj.count, obj.hits) for obj in b.WB._base_manager.filter(pk__in=pks)}
    get_cached, increment = b.WB.objects.get_cached, b.WB.objects.increment_behind
    t0 = time.perf_counter()
    for i in range(COALESCE_OPS):
        pk = pks[i % n]
        if (i // n) % 2 == 0:
            increment(pk, hits=1)
        else:  # a read-modify-write, as a view would do it
            obj = get_cached(pk=pk)
            obj.count += 1
            obj.save()
    ingest = time.perf_counter() - t0
    with CaptureQueriesContext(connection) as queries:
        t0 = time.perf_counter()
        report = b.flusher.flush([b.WB])
        flush = time.perf_counter() - t0
    sql = [q["sql"] for q in queries]
    # One row written per UPDATE; an executemany is captured as "N times: UPDATE ...".
    updates = sum(
        int(m.group(1)) if (m := re.match(r"(\d+) times: UPDATE", s)) else 1
        for s in sql
        if re.match(r"(\d+ times: )?UPDATE", s.lstrip(), re.I)
    )
    rounds = COALESCE_OPS // n
    for obj in b.WB._base_manager.filter(pk__in=pks):
        count, hits = start[obj.pk]
        if (obj.count, obj.hits) != (count + rounds // 2, hits + (rounds + 1) // 2):
            raise RuntimeError(f"pk={obj.pk}: wrong values after the coalesced flush")
    b.check_flushed(pks)
    return {
        "ops": COALESCE_OPS,
        "rows": n,
        "updates": updates,
        "statements": len(sql),
        "written": report.rows.get(b.label, 0),
        "batches": report.batches,
        "ingest": ingest,
        "flush": flush,
    }


def fill(b: Behind, pks: list | None = None) -> float:
    """Give each row (all of them by default) one pending write (``fill_rows``)."""
    return fill_rows(b.WB, b.pks if pks is None else pks)


def fill_rows(model, pks: list) -> float:
    """Give each row one pending write: even rows an increment of ``hits``, odd rows a save
    of a freshly read instance (``count`` + 1). Return the seconds the writes took."""
    get_many = model.objects.get_many_cached
    objs = {}
    for part in chunks(pks[1::2]):
        objs.update(get_many(part))
    increment = model.objects.increment_behind
    t0 = time.perf_counter()
    for k, pk in enumerate(pks):
        if k % 2 == 0:
            increment(pk, hits=1)
        else:
            obj = objs[pk]
            obj.count += 1
            obj.save()
    return time.perf_counter() - t0


def floor_statements(b: Behind) -> list[list[tuple[str, list]]]:
    """The flush's UPDATEs as SQL with parameters, batch by batch, writing values the rows
    already hold in the database (so the floors change nothing): ``hits + 0`` for the
    incremented rows, the stored ``count`` for the saved ones. Same statements, same rows,
    same batches as the app's flush."""
    from django.db import connection

    qn = connection.ops.quote_name
    table = qn(b.WB._meta.db_table)
    where = f"WHERE {table}.{qn('id')} = %s"
    inc = f"UPDATE {table} SET {qn('hits')} = ({table}.{qn('hits')} + %s) {where}"
    save = f"UPDATE {table} SET {qn('count')} = %s {where}"
    counts = dict(b.WB._base_manager.filter(pk__in=b.pks[1::2]).values_list("pk", "count"))
    stmts = [
        (inc, [0, pk]) if k % 2 == 0 else (save, [counts[pk], pk]) for k, pk in enumerate(b.pks)
    ]
    return chunks(stmts, b.cfg.BATCH_SIZE)


def floor_execute(batches) -> None:
    """One ``execute`` per row, a transaction per batch: the app's statements, no app."""
    from django.db import connection, transaction

    for batch in batches:
        with transaction.atomic(), connection.cursor() as cursor:
            for sql, params in batch:
                cursor.execute(sql, params)


def floor_executemany(batches) -> None:
    """The same UPDATEs grouped by statement, one pipelined ``executemany`` per group."""
    from django.db import connection, transaction

    for batch in batches:
        groups: dict[str, list] = {}
        for sql, params in batch:
            groups.setdefault(sql, []).append(params)
        with transaction.atomic(), connection.cursor() as cursor:
            for sql, many in groups.items():
                cursor.executemany(sql, many)


def measure_flush(b: Behind, counter: RedisCounter) -> dict:
    """Repetitions of: fill every row, then (in rotating order) the app's flush and the
    two floors. The first repetition also times ingest with every row pending."""
    from django.db import connection

    n = len(b.pks)
    expect_batches = -(-n // b.cfg.BATCH_SIZE)
    times: dict[str, list[float]] = {"flush": [], "execute": [], "executemany": []}
    fills, updates = [], []
    pending = None
    for rep in range(b.args.flush_reps):
        fills.append(fill(b))
        waiting, _ = b.queue.counts()
        if waiting != n:
            raise RuntimeError(f"{waiting} rows pending after the fill, not {n}")
        if rep == 0:
            pending = measure_pending_ingest(b, counter)
        order = ["flush", "execute", "executemany"]
        k = rep % len(order)
        order = order[k:] + order[:k]
        for name in order:
            if name == "flush":
                count = UpdateCounter()
                with connection.execute_wrapper(count):
                    t0 = time.perf_counter()
                    report = b.flusher.flush([b.WB])
                    times[name].append(time.perf_counter() - t0)
                if report.rows.get(b.label) != n or report.batches != expect_batches:
                    raise RuntimeError(f"flush of {n} rows reported {report}")
                updates.append(count.updates)
            else:
                batches = floor_statements(b)
                fn = floor_execute if name == "execute" else floor_executemany
                t0 = time.perf_counter()
                fn(batches)
                times[name].append(time.perf_counter() - t0)
    b.check_flushed(b.pks)
    return {
        "rows": n,
        "batches": expect_batches,
        "times": times,
        "fills": fills,
        "updates": updates,
        "pending": pending,
    }


def measure_pending_ingest(b: Behind, counter: RedisCounter) -> dict:
    """Ingest again while every row is pending (more than ``BATCH_SIZE``): each save then
    also asks for a size-triggered flush."""
    b.refresh_instances()
    rounds = max(4, b.args.rounds // 8)
    costs = {
        "write-behind save(), all rows pending": counter.per_op(
            functools.partial(b.behind_save, 0)
        ),
        "increment_behind(), all rows pending": counter.per_op(functools.partial(b.increment, 0)),
    }
    samples = interleaved(
        {
            "plain save": b.plain_save,
            "write-behind save": b.behind_save,
            "increment_behind": b.increment,
        },
        rounds,
        b.args.write_batch,
        warmup=20,
    )
    return {"costs": costs, "samples": samples, "rounds": rounds}


# -- the section ----------------------------------------------------------------------


def run_section(args: argparse.Namespace, started: bool) -> list[str]:
    """Set up, measure and print the write-behind section; return the goals missed."""
    print("=" * 100)
    print("Write-behind (WriteBehindItem: the six fields + a hits counter; PlainItem as base)")
    print("=" * 100)
    phases: dict[str, float] = {}
    clock = time.perf_counter
    t = clock()
    b = Behind(args, started)
    counter = RedisCounter(b.client)
    phases["set-up"], t = clock() - t, clock()
    costs, samples = measure_ingest(b, counter)
    b.flusher.drain()
    b.check_flushed(b.save_pks + b.inc_pks)
    phases["ingest"], t = clock() - t, clock()
    signed = measure_signing(b)
    phases["signing"], t = clock() - t, clock()
    coal = measure_coalescing(b)
    phases["coalescing"], t = clock() - t, clock()
    flush = measure_flush(b, counter)
    phases["flush"] = clock() - t
    missed = report(b, costs, samples, coal, flush, phases, signed)
    if args.profile:
        profile(b)
    return missed


def report(b: Behind, costs, samples, coal, flush, phases, signed) -> list[str]:
    args, cfg = b.args, b.cfg
    pending = flush["pending"]
    took = ", ".join(f"{name} {seconds:.0f}" for name, seconds in phases.items())
    print(
        f"  {len(b.pks)} write-behind rows, {len(b.plain_pks)} plain rows; BATCH_SIZE="
        f"{cfg.BATCH_SIZE}; {ingest_rounds(args)} interleaved rounds of {args.write_batch} "
        f"ops per variant; {args.flush_reps} flush repetitions"
    )
    print(f"  section took {sum(phases.values()):.0f}s ({took})")
    print()
    print("Cost of one operation (client sends, INFO deltas, captured queries):")
    for label, c in {**costs, **pending["costs"]}.items():
        print(f"  {label:<40} {describe(c)}")
    print()

    rows = [
        Row(
            "write-behind save() vs plain save()",
            samples,
            "write-behind save",
            "plain save",
            None,
            floor="RECORD save (floor)",
            speedup=True,
        ),
        Row(
            "increment_behind() vs plain save()",
            samples,
            "increment_behind",
            "plain save",
            None,
            floor="RECORD increment (floor)",
            speedup=True,
        ),
        # The goals: a share of the one-round-trip ceiling measured in the same run.
        Row(
            "write-behind save() vs one round trip (PING)",
            samples,
            "write-behind save",
            "PING (floor)",
            0.5,
            speedup=True,
        ),
        Row(
            "increment_behind() vs one round trip (PING)",
            samples,
            "increment_behind",
            "PING (floor)",
            0.65,
            speedup=True,
        ),
    ]
    k = args.write_batch
    rows += [
        Row(
            "  one Redis round trip (PING) vs plain save()",
            samples,
            "PING (floor)",
            "plain save",
            None,
            speedup=True,
        ),
        Row(
            f"write-behind save(), {k} a transaction, vs plain save()",
            samples,
            "write-behind save_tx",
            "plain save",
            None,
            speedup=True,
        ),
        Row(
            f"increment_behind(), {k} a transaction, vs plain save()",
            samples,
            "increment_behind_tx",
            "plain save",
            None,
            speedup=True,
        ),
        Row(
            f"  same, base {k} plain save()s a transaction: save()",
            samples,
            "write-behind save_tx",
            "plain save_tx",
            None,
            speedup=True,
        ),
        Row(
            f"  same, base {k} plain save()s a transaction: increment",
            samples,
            "increment_behind_tx",
            "plain save_tx",
            None,
            speedup=True,
        ),
    ]
    ps = pending["samples"]
    rows_pending = [
        Row(
            f"  same, {len(b.pks)} rows pending: save()",
            ps,
            "write-behind save",
            "plain save",
            None,
            speedup=True,
        ),
        Row(
            f"  same, {len(b.pks)} rows pending: increment_behind()",
            ps,
            "increment_behind",
            "plain save",
            None,
            speedup=True,
        ),
    ]
    print(
        "1. Ingest: ops/s = 1e6 / median µs per op; speed-up = median of per-round "
        "(base µs / ours µs), p25-p75 shown; goals: a share of one round trip (PING)"
    )
    print_table(rows + rows_pending)
    print(
        f"""
  ours: obj.save() of an instance in hand (count += 1, updated = now; every field saved)
    over {HOT} rows; increment_behind(pk, hits=1) over {HOT} other rows. base: the same
    save() of PlainItem, autocommit (one UPDATE and its commit).
  floor: the RECORD script alone as a raw EVALSHA (same keys and arguments, no Python
    of ours): the best the one-round-trip design could do against this base.
  PING: one Redis round trip and nothing else, with the same client: the ceiling of any
    design whose save() waits for Redis to acknowledge the write (ours does, so that an
    acknowledged write is never lost with the process).
  "a transaction": {k} consecutive ops in one atomic block (as with ATOMIC_REQUESTS), the
    commit included; the write-behind writes of a transaction are merged per row and
    recorded in one round trip at commit. Against plain save()s that are one transaction
    each, then against {k} plain save()s in one transaction too.
  "rows pending": the same ops while all {len(b.pks)} rows have a pending write (more
    than BATCH_SIZE), {pending["rounds"]} rounds; size-triggered flush tasks queued during
    the section: {b.published} (memory broker, not consumed).
  raw µs: """
        + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in samples.items())
        + "; pending: "
        + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in ps.items())
    )
    print()

    ratio = coal["ops"] / coal["updates"] if coal["updates"] else float("inf")
    coal_pass = coal["updates"] <= coal["rows"]
    print(
        f"2. Database writes for {coal['ops']:,} updates of {coal['rows']} hot rows "
        f"(half increment_behind, half get_cached + save()), then one flush"
    )
    print(
        f"  UPDATE statements the flush sent  {coal['updates']:>6}   goal <= {coal['rows']}  "
        f"{'PASS' if coal_pass else 'MISS  <<<'}"
    )
    print(
        f"  coalescing: {ratio:.0f} updates per UPDATE; {coal['written']} rows in "
        f"{coal['batches']} batch(es), {coal['statements']} statements in all; the "
        f"{coal['ops']:,} updates took {coal['ingest']:.2f}s "
        f"({coal['ops'] / coal['ingest']:,.0f}/s), the flush {coal['flush'] * 1000:.0f} ms"
    )
    print()

    times = flush["times"]
    n = flush["rows"]
    print(
        f"3. Flush of {n:,} pending rows (half an increment, half a save): "
        f"{flush['batches']} batches of <= {cfg.BATCH_SIZE}, median of "
        f"{len(times['flush'])} repetitions"
    )
    head = f"  {'what':<46} {'median s':>9} {'rows/s':>8} {'min-max s':>13} {'x ours':>7}"
    print(head)
    print("  " + "-" * (len(head) - 2))
    ours = statistics.median(times["flush"])
    labels = {
        "flush": "flusher.flush() (the app)",
        "execute": "floor: same UPDATEs, one execute() per row",
        "executemany": "floor: same UPDATEs, executemany() per batch",
    }
    for name, label in labels.items():
        t = statistics.median(times[name])
        print(
            f"  {label:<46} {t:>9.2f} {n / t:>8,.0f} "
            f"{min(times[name]):>6.2f}-{max(times[name]):<6.2f} {t / ours:>6.2f}x"
        )
    fill_s = statistics.median(flush["fills"])
    print(f"""
  UPDATEs per flush: {", ".join(str(u) for u in flush["updates"])} (one per row, as designed).
  Filling the {n:,} rows (one write each, untimed reads first) took {fill_s:.1f}s median
    ({n / fill_s:,.0f} writes/s), most of them with more than BATCH_SIZE rows pending.
  Per flushed row, against a plain save(): {ours / n * 1e6:.0f} µs vs \
{statistics.median(samples["plain save"]):.0f} µs.
  The floors write values the rows already hold (hits + 0, the stored count), so the
    database does the same work and the data stays as the app left it.""")
    print()

    missed = [r.label for r in rows if r.passed is False]
    missed += report_signing(b, signed)
    if not coal_pass:
        missed.append("coalescing: UPDATEs <= rows")
    findings = list(b.findings)
    if findings:
        print("Findings:")
        for f in findings:
            print(f"  - {f}")
    return print_summary(missed, "write-behind")


# -- where the time goes ----------------------------------------------------------------


def profile(b: Behind) -> None:
    """A ladder of the save path, then cProfile of the save, increment and flush paths."""
    from django_cachestrat import codec, options

    opts = options.get(b.WB)
    strategy = b.WB.cache_strategy
    buf = b.pending
    fields_of = [f for f in opts.fields if not f.primary_key]

    def encode_only(i):
        obj = b.save_objs[i % HOT]
        obj.count += 1
        encode, stored = codec.encode_value, codec.as_stored
        return {f.attname: encode(stored(f, f.pre_save(obj, False))) for f in fields_of}

    def buffer_record(i):
        obj = b.save_objs[i % HOT]
        obj.count += 1
        fields = {f.attname: codec.as_stored(f, f.pre_save(obj, False)) for f in fields_of}
        return buf.record(obj.pk, fields, {}, full=True)

    def save_behind(i):
        obj = b.save_objs[i % HOT]
        obj.count += 1
        return strategy.save_behind(obj, None, "default")

    per_pipe = b.args.write_batch
    pipe = b.client.pipeline(transaction=False)

    def pipelined(i):
        """The floor's EVALSHAs, sent ``write_batch`` to a round trip (what a client-side
        batch of writes could cost per write)."""
        b._send(next(b.floor_saves), pipe)
        if (i + 1) % per_pipe == 0:
            pipe.execute()

    b.flusher.drain()
    b.refresh_instances()
    ladder = interleaved(
        {
            "1 RECORD as raw EVALSHA (floor)": b.floor_save,
            "2 PendingWrites.record(all fields)": buffer_record,
            "3 WriteBehind.save_behind(obj)": save_behind,
            "4 obj.save()": b.behind_save,
            "fields + encode only (no Redis)": encode_only,
            "increment_behind()": b.increment,
            f"RECORD, {per_pipe} per pipeline (per op)": pipelined,
            "plain save()": b.plain_save,
        },
        max(20, b.args.rounds // 4),
        per_pipe,
        warmup=per_pipe * 3,
    )
    print_ladder("write-behind save()", ladder)
    b.flusher.drain()
    b.refresh_instances()
    flushed = b.pks[:2000]

    def flush():
        report = b.flusher.flush([b.WB])
        assert report.rows.get(b.label) == len(flushed), report

    cases = [
        ("write-behind save(), 2000 calls", None, lambda: [b.behind_save(i) for i in range(2000)]),
        ("increment_behind(), 2000 calls", None, lambda: [b.increment(i) for i in range(2000)]),
        (f"flusher.flush() of {len(flushed)} pending rows", lambda: fill(b, flushed), flush),
    ]
    for label, before, fn in cases:
        b.flusher.drain()
        if before is not None:
            before()
        print_profile(label, fn)
    b.flusher.drain()

"""Flush write-behind batches: claim, write in one transaction, acknowledge.

The batch id is written to ``AppliedBatch`` (``applied``) in the same transaction as the
rows, so a batch reclaimed after its worker died at any point is applied exactly once. A
worker whose claim outlived ``VISIBILITY_TIMEOUT`` before its commit gives the batch up
(another worker may have reclaimed it). If the batch transaction fails, its rows are tried
one by one (each with its own marker): the good ones are written, a failing one is put
back with a growing delay and, after ``MAX_RETRIES`` failures, moved to ``DeadLetter``. A
database that is down fails every row alike: then the whole batch goes back, uncounted,
to be tried again later. Writes of fields this process's model does not have (recorded
by a process of another schema, during a rolling deploy) are set aside as a dead letter
in the batch's transaction, logged, and the rest of the row is written.

A model's batches are written to ``flush_alias(model)``, its router's write database, with
their markers; the write-behind saves of rows in any other database were written there at
once. Dead letters go to the ``DeadLetter`` model's own database, where the management
commands list them.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field

from django.apps import apps
from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connections,
    models,
    transaction,
)

from django_cachestrat import conf, options, signals
from django_cachestrat.backends import CacheUnavailable
from django_cachestrat.counters import recorder
from django_cachestrat.models import DeadLetter
from django_cachestrat.strategies.write_behind import flush_alias
from django_cachestrat.write_behind import applied
from django_cachestrat.write_behind.pending import PendingWrites
from django_cachestrat.write_behind.queue import Batch, Queue

logger = logging.getLogger("django_cachestrat")


class RowMissing(DatabaseError):
    """The row a pending write is for is not in the database (deleted by another path)."""


class UnknownFields(Exception):
    """Pending writes name fields this process's model does not have (another schema's)."""


class ForgedWrite(Exception):
    """Pending writes whose MAC does not verify (not this app's, or not signed), or unreadable."""


class ClaimExpired(DatabaseError):
    """The batch's visibility deadline passed before its commit: another worker may own it."""


@dataclass
class FlushReport:
    """What one flush did, by model label."""

    rows: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    dead_letters: int = 0
    requeued: int = 0

    def add(self, label: str, rows: int) -> None:
        """Count ``rows`` written for ``label``."""
        self.rows[label] = self.rows.get(label, 0) + rows

    def merge(self, other: FlushReport) -> None:
        """Add what ``other`` did to this report."""
        self.batches += other.batches
        self.dead_letters += other.dead_letters
        self.requeued += other.requeued
        for label, rows in other.rows.items():
            self.add(label, rows)


def write_behind_models() -> list[type[models.Model]]:
    """Every installed concrete model whose strategy defers writes (write-behind)."""
    return [
        m
        for m in apps.get_models()
        if not m._meta.proxy and getattr(getattr(m, "cache_strategy", None), "defers_writes", False)
    ]


def flush(
    models_to_flush: list[type[models.Model]] | None = None,
    *,
    max_batches: int | None = None,
    transport=None,
) -> FlushReport:
    """Flush pending writes until none are ready (or ``max_batches`` were written).

    Then prune the ``AppliedBatch`` markers no flush can need any more. On a ring, each
    node's queue is flushed (a node that cannot be reached is passed over). ``transport``:
    the cache's by default (``cachestrat_rebalance`` drains the nodes of a previous ring).
    """
    cfg = conf.settings()
    report = FlushReport()
    for model in models_to_flush or write_behind_models():
        queue = Queue(model, transport)
        settle_open_cuts(model, transport)
        while max_batches is None or report.batches < max_batches:
            started = time.monotonic()
            batch = queue.claim(cfg.BATCH_SIZE, cfg.VISIBILITY_TIMEOUT)
            if batch is None:
                break
            apply(model, queue, batch, report, deadline=started + cfg.VISIBILITY_TIMEOUT)
    if transport is None:  # one node's view of the batches in flight is not enough to prune
        prune()
    return report


def prune() -> int:
    """Delete the ``AppliedBatch`` markers no flush can need (see ``applied``)."""
    cfg = conf.settings()
    everyone = write_behind_models()

    def in_flight() -> set[str]:
        # Markers still needed: batches in flight, and direct writes not settled yet.
        batches = {batch for model in everyone for batch in Queue(model).in_flight()}
        return batches | {cut.marker for model in everyone for cut in PendingWrites(model).cuts()}

    pruned = 0
    for using in {flush_alias(model) for model in everyone}:
        try:
            pruned += applied.prune(using, cfg.VISIBILITY_TIMEOUT, in_flight)
        except CacheUnavailable:
            pass  # batches in flight are unknown: keep every marker
    return pruned


def apply(model, queue: Queue, batch: Batch, report: FlushReport, *, deadline: float) -> None:
    """Write one claimed batch and acknowledge it.

    ``deadline`` (monotonic) is when the claim's visibility ends: past it, the batch is
    given up before its commit, for the worker that reclaims it.
    """
    cfg = conf.settings()
    opts = options.get(model)
    using = flush_alias(model)
    pks = list(batch.pks)
    report.batches += 1
    try:
        foreign = _commit(model, using, queue, batch, pks, [batch.id], deadline)
    except ClaimExpired as exc:
        _gave_up(exc)
        return
    except (OperationalError, InterfaceError) as exc:
        # The database is unreachable: every row would fail alike. Put it all back.
        logger.error("django_cachestrat: flush of %s failed (%s); retrying later.", opts.label, exc)
        if _requeue(queue, batch, pks, cfg.RETRY_BACKOFF):
            report.requeued += len(pks)
            recorder.count(opts.label, recorder.RETRIES, len(pks))
        return
    except DatabaseError as exc:
        logger.warning(
            "django_cachestrat: batch of %d %s rows failed (%s); writing them one by one.",
            len(pks),
            opts.label,
            exc,
        )
        _one_by_one(model, queue, batch, using, report, deadline)
        return
    if not _ack(queue, batch, pks, _ttl(opts, cfg)):
        return  # its new owner finds the marker, acknowledges it, and reports it
    queue.drop_views(foreign)  # they show writes the database does not have
    report.add(opts.label, len(pks))
    report.dead_letters += len(foreign)
    recorder.count(opts.label, recorder.FLUSHED_ROWS, len(pks))
    recorder.count(opts.label, recorder.DEAD_LETTERED, len(foreign))
    if signals.write_behind_flushed.receivers:
        signals.write_behind_flushed.send(
            sender=model, batch=batch.id, pks=pks, dead_letters=foreign
        )


def _write_locked(model, using: str, queue: Queue, batch_id: str, pks: list, markers: list) -> list:
    """In the open transaction, write rows ``pks`` of a batch unless ``markers`` say it's done.

    The rows are locked first; then every direct write that set some of their pending
    writes aside has ended (it wrote the row, holding its lock, before it set them
    aside), so each is settled for certain, and the batch is read again: what a direct
    write committed since the claim is no longer in it. The last marker is written.
    Return the pks of rows whose writes of unknown fields were dead-lettered
    (``_set_foreign_aside``).
    """
    _lock_rows(model, using, pks)
    settle_cuts(model, using, pks, batch_id, queue.transport)
    if applied.applied(using, markers):
        return []
    batch = queue.contents(batch_id, pks)
    forged = _set_forged_aside(model, batch.forged)
    foreign = _set_foreign_aside(model, using, batch.rows)
    _write(model, using, batch.rows)
    applied.mark(using, markers[-1])
    return list(dict.fromkeys(forged + foreign))


def _set_forged_aside(model, forged: dict) -> list:
    """Dead-letter the writes whose MAC did not verify, naming each field and why.

    ``forged``: per pk, field name -> why (``Queue.contents`` left them out of the rows,
    so they are never written). Written by someone without the signing key (or signed
    with a key no longer listed, or while ``SIGN`` was off): the dead letter keeps the
    reason and none of the bytes as values, so a retry cannot write them. In the batch's
    transaction, as ``_set_foreign_aside`` does. Return the rows' pks.
    """
    opts = options.get(model)
    for pk, problems in forged.items():
        names = ", ".join(sorted(problems))
        why = "; ".join(f"{n}: {reason}" for n, reason in sorted(problems.items()))
        error = ForgedWrite(
            f"{opts.label} pk={pk}: the pending write(s) of {names} do not verify (or cannot "
            f"be read) and were not written: {why}"
        )
        _keep_dead(opts, pk, {}, {}, error, 0)
        logger.error(
            "django_cachestrat: %s; moved to dead letters, the row's other writes are flushed.",
            error,
        )
        # Counted and sent as reads count bytes that do not verify.
        recorder.count(opts.label, recorder.ERRORS, 1)
        if signals.cache_error.receivers:
            signals.cache_error.send(sender=model, error=error, model=model)
    return list(forged)


def _set_foreign_aside(model, using: str, rows: dict) -> list:
    """Take writes of fields ``model`` does not have out of ``rows``, into dead letters.

    A process of another schema recorded them (a rolling deploy that adds or removes a
    field). This process cannot write them, and they must not be lost silently nor
    block the row's other writes: they are kept as a dead letter naming the fields, in
    the batch's transaction (so once, with the batch) unless a router puts dead letters
    in another database, to be retried by a process that has them
    (``cachestrat_write_behind retry``) or discarded. Return the rows' pks.
    """
    known = {f.attname for f in model._meta.concrete_fields}
    opts = options.get(model)
    foreign = []
    for pk, (fields, deltas) in rows.items():
        unknown = (set(fields) | set(deltas)) - known
        if not unknown:
            continue
        names = ", ".join(sorted(unknown))
        error = UnknownFields(
            f"{opts.label} has no field {names} in this process's schema (written by a "
            "process with another schema: a deploy?); the row's other writes were flushed"
        )
        aside = {n: fields.pop(n) for n in unknown if n in fields}
        added = {n: deltas.pop(n) for n in unknown if n in deltas}
        _keep_dead(opts, pk, aside, added, error, 0)
        logger.warning(
            "django_cachestrat: %s pk=%r: writes of %s, which this process's model does not "
            "have, moved to dead letters; the row's other writes are flushed.",
            opts.label,
            pk,
            names,
        )
        foreign.append(pk)
    return foreign


def _lock_rows(model, using: str, pks: list, *, skip_locked: bool = False) -> list:
    """Lock rows ``pks`` in the open transaction; return those locked.

    ``skip_locked`` leaves out rows another transaction holds, where the database can.
    """
    connection = connections[using]
    if connection.features.has_select_for_update:
        skip = skip_locked and connection.features.has_select_for_update_skip_locked
        locked = model._base_manager.using(using).select_for_update(skip_locked=skip)
        got = set(locked.filter(pk__in=pks).values_list("pk", flat=True))
        return [pk for pk in pks if pk in got] if skip else list(pks)
    # SQLite locks the whole database at a transaction's first write: take it now, with
    # a write that changes nothing.
    quote = connection.ops.quote_name
    pk = quote(model._meta.pk.column)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {quote(model._meta.db_table)} SET {pk} = {pk} WHERE 1 = 0")
    return list(pks)


def settle_cuts(model, using: str, pks: list, batch_id: str | None = None, transport=None) -> None:
    """Settle what direct writes set aside of rows ``pks``, which the caller has locked.

    A direct write whose marker is committed committed: drop. Else it rolled back (it
    held the row's lock until it ended): put back, the part taken from ``batch_id`` into
    that batch (the caller writes it now), the part of an earlier batch only if that
    batch is not in the database already.
    """
    pending = PendingWrites(model, transport)
    cuts = pending.cuts_of(pks)
    if not cuts:
        return
    markers = {cut.marker for cut in cuts}
    for cut in cuts:
        if cut.batch and cut.batch != batch_id:
            markers |= {cut.batch, applied.row_marker(cut.batch, cut.pk)}
    done = applied.applied(using, markers)
    for cut in cuts:
        if cut.marker in done:
            pending.settle(cut, committed=True, keep_batch=False, into_batch=False)
            continue
        written = cut.batch is not None and (
            cut.batch in done or applied.row_marker(cut.batch, cut.pk) in done
        )
        into = cut.batch is not None and cut.batch == batch_id
        pending.settle(cut, committed=False, keep_batch=into or not written, into_batch=into)


def settle_open_cuts(model, transport=None) -> None:
    """Settle what direct writes set aside and nobody settled at their commit.

    Those that rolled back (their pending writes go back to be flushed), and those whose
    process died after the commit or found Redis down then. A row still locked by a
    direct write that is running is left for the next flush (on SQLite, the lock of the
    database is waited for). On a ring, node by node.
    """
    for node in PendingWrites(model, transport).transport.nodes:
        try:
            cuts = PendingWrites(model, node).cuts()
        except CacheUnavailable:
            continue
        if not cuts:
            continue
        using = flush_alias(model)
        pks = list(dict.fromkeys(cut.pk for cut in cuts))
        with transaction.atomic(using=using):
            locked = _lock_rows(model, using, pks, skip_locked=True)
            if locked:
                settle_cuts(model, using, locked, transport=node)


def _ack(queue: Queue, batch: Batch, pks, ttl: int) -> bool:
    """Acknowledge rows of a batch; False (logged) if another worker reclaimed it since."""
    return _owned(queue.ack(batch, pks, ttl), batch, "acknowledged it")


def _requeue(queue: Queue, batch: Batch, pks, delay: float) -> bool:
    """Requeue rows of a batch; False (logged) if another worker reclaimed it since."""
    return _owned(queue.requeue(batch, pks, delay), batch, "put its rows back")


def _owned(done: bool, batch: Batch, what: str) -> bool:
    if not done:
        logger.warning(
            "django_cachestrat: batch %s was reclaimed before this worker %s; left to the "
            "worker that reclaimed it.",
            batch.id,
            what,
        )
    return done


def _commit(model, using: str, queue: Queue, batch: Batch, pks, markers, deadline) -> list:
    """Write rows ``pks`` of a batch in one transaction (see ``_write_locked``).

    Return what ``_write_locked`` does. Raises ``ClaimExpired`` (rolled back) when the
    claim's visibility ended first.
    """
    with transaction.atomic(using=using):
        foreign = _write_locked(model, using, queue, batch.id, pks, markers)
        _before_commit(batch, deadline)
    return foreign


def _gave_up(exc: ClaimExpired) -> None:
    logger.warning("django_cachestrat: %s; left to the worker that reclaims it.", exc)


def _before_commit(batch: Batch, deadline: float) -> None:
    if time.monotonic() >= deadline:
        raise ClaimExpired(f"batch {batch.id} outlived its visibility timeout before its commit")


def _write(model, using: str, rows: dict) -> None:
    # One UPDATE a row, in the batch's transaction, sent with executemany() for rows that
    # change the same fields: the SQL is built once per shape, not once per row. Not
    # bulk_update(): on PostgreSQL its CASTs silently truncate a value too long for its
    # column, where an UPDATE fails (and the row is dead-lettered, not corrupted).
    connection = connections[using]
    meta = model._meta
    quote = connection.ops.quote_name
    by_shape: dict[tuple, list] = {}
    for pk, (fields, deltas) in rows.items():
        if fields or deltas:
            shape = (tuple(sorted(fields)), tuple(sorted(set(deltas) - set(fields))))
            by_shape.setdefault(shape, []).append((pk, fields, deltas))
    pk_field = meta.pk
    columns = {f.attname: f for f in meta.concrete_fields}
    with connection.cursor() as cursor:
        for (set_names, add_names), group in by_shape.items():
            assignments = [f"{quote(columns[n].column)} = %s" for n in set_names]
            assignments += [
                f"{quote(columns[n].column)} = {quote(columns[n].column)} + %s" for n in add_names
            ]
            sql = (
                f"UPDATE {quote(meta.db_table)} SET {', '.join(assignments)} "
                f"WHERE {quote(pk_field.column)} = %s"
            )
            params = []
            for pk, fields, deltas in group:
                # A field saved and then incremented is its saved value plus the increments.
                row = [
                    columns[n].get_db_prep_save(fields[n] + deltas.get(n, 0), connection)
                    if n in deltas
                    else columns[n].get_db_prep_save(fields[n], connection)
                    for n in set_names
                ]
                row += [deltas[n] for n in add_names]
                row.append(pk_field.get_db_prep_save(pk, connection))
                params.append(row)
            cursor.executemany(sql, params)
            if cursor.rowcount != len(params):
                raise RowMissing(
                    f"{len(params) - max(cursor.rowcount, 0)} {meta.label} rows do not exist"
                )


def _one_by_one(model, queue: Queue, batch: Batch, using, report, deadline) -> None:
    cfg = conf.settings()
    opts = options.get(model)
    done, failed, dead, foreign = [], [], [], []
    for pk in batch.pks:
        marker = applied.row_marker(batch.id, pk)
        try:
            partly = _commit(model, using, queue, batch, [pk], [batch.id, marker], deadline)
        except ClaimExpired as exc:
            _gave_up(exc)
            break
        except (OperationalError, InterfaceError) as exc:
            logger.error("django_cachestrat: flush of %s failed (%s).", opts.label, exc)
            rest = [p for p in batch.pks if p not in done and p not in dead]
            if _requeue(queue, batch, rest, cfg.RETRY_BACKOFF):
                report.requeued += len(rest)
                recorder.count(opts.label, recorder.RETRIES, len(rest))
            break
        except Exception as exc:  # this row's own fault: integrity, data, missing row
            attempts = queue.failed(pk)
            if attempts >= cfg.MAX_RETRIES:
                last = queue.contents(batch.id, [pk])  # as last written
                fields, deltas = last.rows[pk]
                _dead_letter(opts, pk, fields, deltas, exc, attempts)
                _set_forged_aside(model, last.forged)  # set aside in the rolled-back try
                dead.append(pk)
            else:
                failed.append((pk, attempts))
        else:
            done.append(pk)
            foreign += partly
    else:
        for pk, attempts in failed:
            if _requeue(queue, batch, [pk], cfg.RETRY_BACKOFF * 2 ** (attempts - 1)):
                report.requeued += 1
                recorder.count(opts.label, recorder.RETRIES, 1)
    finished = done + dead
    if finished and _ack(queue, batch, finished, _ttl(opts, cfg)):
        queue.finished(finished)
    dead += foreign  # written, but for the writes of fields this schema does not have
    queue.drop_views(dead)  # they show writes the database will not have
    report.add(opts.label, len(done))
    report.dead_letters += len(dead)
    recorder.count(opts.label, recorder.FLUSHED_ROWS, len(done))
    recorder.count(opts.label, recorder.DEAD_LETTERED, len(dead))
    if signals.write_behind_flushed.receivers:
        signals.write_behind_flushed.send(sender=model, batch=batch.id, pks=done, dead_letters=dead)


def _dead_letter(opts, pk, fields, deltas, exc, attempts) -> None:
    # Not in the batch's transaction (it failed).
    _keep_dead(opts, pk, fields, deltas, exc, attempts)
    logger.error(
        "django_cachestrat: %s pk=%r failed %d times (%s); moved to dead letters.",
        opts.label,
        pk,
        attempts,
        exc,
    )


def _keep_dead(opts, pk, fields, deltas, exc, attempts) -> None:
    """Write a row's pending writes to the ``DeadLetter`` table, with ``exc`` as the reason.

    In ``DeadLetter``'s own database, which the commands that list, retry and discard
    dead letters read; inside an open transaction of that database, as part of it.
    """
    DeadLetter.objects.create(
        model=opts.label,
        object_pk=str(pk),
        fields=pickle.dumps(fields),
        deltas=deltas,
        error=f"{type(exc).__name__}: {exc}",
        attempts=attempts,
    )


def _ttl(opts, cfg) -> int:
    return opts.ttl or cfg.DEFAULT_TTL


def drain(*, reclaim: bool = False, transport=None) -> FlushReport:
    """Flush until nothing is ready, as for a deploy or a shutdown.

    ``reclaim=True`` also takes over batches other workers claimed and have not
    acknowledged (run it when those workers are stopped); they are applied exactly once
    whatever point their worker reached. ``transport``: as for ``flush``.
    """
    models_ = write_behind_models()
    if reclaim:
        for model in models_:
            Queue(model, transport).expire_inflight()
    report = FlushReport()
    for model in models_:
        while True:
            step = flush([model], transport=transport)
            report.merge(step)
            if not step.batches or step.requeued:
                break  # nothing left, or only rows waiting for their retry time
    return report


def retry_dead_letter(letter: DeadLetter) -> None:
    """Put a dead letter's writes back in the write-behind queue, then forget the letter."""
    model = apps.get_model(letter.model)
    opts = options.get(model)
    fields = letter.saved_fields()
    if not fields and not letter.deltas:  # a forged write's: nothing to put back
        letter.delete()
        return
    if not model.cache_strategy.record(
        model, opts.to_pk(letter.object_pk), fields, dict(letter.deltas), full=False
    ):
        raise RuntimeError("Redis cannot be reached; the dead letter is kept.")
    letter.delete()


def waiting() -> dict[str, tuple[int, int]]:
    """Return ``{label: (rows waiting, batches in flight)}`` for models with any."""
    result = {}
    for model in write_behind_models():
        rows, batches = Queue(model).counts()
        if rows or batches:
            result[options.get(model).label] = (rows, batches)
    return result

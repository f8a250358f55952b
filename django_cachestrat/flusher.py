"""Flush write-behind batches: claim, write in one transaction, acknowledge.

The batch id is written to ``AppliedBatch`` in the same transaction as the rows, so a
batch reclaimed after its worker died at any point is applied exactly once. If the batch
transaction fails, its rows are tried one by one (each with its own marker): the good ones
are written, a failing one is put back with a growing delay and, after ``MAX_RETRIES``
failures, moved to ``DeadLetter``. A database that is down fails every row alike: then the
whole batch goes back, uncounted, to be tried again later.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from dataclasses import dataclass, field

from django.db import (
    DatabaseError,
    InterfaceError,
    OperationalError,
    connections,
    models,
    router,
    transaction,
)

from django_cachestrat import buffer, conf, options, signals
from django_cachestrat.models import AppliedBatch, DeadLetter

logger = logging.getLogger("django_cachestrat")


class RowMissing(DatabaseError):
    """The row a pending write is for is not in the database (deleted by another path)."""


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


def write_behind_models() -> list[type[models.Model]]:
    """Every installed concrete model that uses ``WriteBehindMixin``."""
    from django.apps import apps

    from django_cachestrat.strategies import WriteBehind

    return [
        m
        for m in apps.get_models()
        if not m._meta.proxy and isinstance(getattr(m, "cache_strategy", None), WriteBehind)
    ]


def flush(
    models_to_flush: list[type[models.Model]] | None = None, *, max_batches: int | None = None
) -> FlushReport:
    """Flush pending writes until none are ready (or ``max_batches`` were written)."""
    cfg = conf.settings()
    report = FlushReport()
    for model in models_to_flush or write_behind_models():
        buf = buffer.Buffer(model)
        while max_batches is None or report.batches < max_batches:
            batch = buf.claim(cfg.BATCH_SIZE, cfg.VISIBILITY_TIMEOUT)
            if batch is None:
                break
            apply(model, buf, batch, report)
    return report


def apply(model, buf: buffer.Buffer, batch: buffer.Batch, report: FlushReport) -> None:
    """Write one claimed batch and acknowledge it."""
    cfg = conf.settings()
    opts = options.get(model)
    using = router.db_for_write(model)
    pks = list(batch.rows)
    report.batches += 1
    _pause("before_write")
    try:
        with transaction.atomic(using=using):
            if not AppliedBatch.objects.using(using).filter(pk=batch.id).exists():
                _write(model, using, batch.rows)
                AppliedBatch.objects.using(using).create(id=batch.id)
    except (OperationalError, InterfaceError) as exc:
        # The database is unreachable: every row would fail alike. Put it all back.
        logger.error("django_cachestrat: flush of %s failed (%s); retrying later.", opts.label, exc)
        buf.requeue(batch.id, pks, cfg.RETRY_BACKOFF)
        report.requeued += len(pks)
        return
    except DatabaseError as exc:
        logger.warning(
            "django_cachestrat: batch of %d %s rows failed (%s); writing them one by one.",
            len(pks),
            opts.label,
            exc,
        )
        _one_by_one(model, buf, batch, using, report)
        return
    _pause("after_commit")
    buf.ack(batch.id, pks, _ttl(opts, cfg))
    report.add(opts.label, len(pks))
    if signals.write_behind_flushed.receivers:
        signals.write_behind_flushed.send(sender=model, batch=batch.id, pks=pks, dead_letters=[])


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
    paused = False
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
            if not paused:
                _pause("during_write")
                paused = True


def _one_by_one(model, buf, batch, using, report) -> None:
    cfg = conf.settings()
    opts = options.get(model)
    done, failed, dead = [], [], []
    for pk, (fields, deltas) in batch.rows.items():
        marker = f"{batch.id}:{pk}"
        try:
            with transaction.atomic(using=using):
                applied = AppliedBatch.objects.using(using).filter(pk__in=[batch.id, marker])
                if not applied.exists():
                    _write(model, using, {pk: (fields, deltas)})
                    AppliedBatch.objects.using(using).create(id=marker)
        except (OperationalError, InterfaceError) as exc:
            logger.error("django_cachestrat: flush of %s failed (%s).", opts.label, exc)
            rest = [p for p in batch.rows if p not in done and p not in dead]
            buf.requeue(batch.id, rest, cfg.RETRY_BACKOFF)
            report.requeued += len(rest)
            break
        except Exception as exc:  # this row's own fault: integrity, data, missing row
            attempts = buf.transport.call(
                buf.transport.client.hincrby, buf.queue["attempts"], buffer.member(pk), 1
            )
            if attempts >= cfg.MAX_RETRIES:
                DeadLetter.objects.using(using).create(
                    model=opts.label,
                    object_pk=str(pk),
                    fields=pickle.dumps(fields),
                    deltas=deltas,
                    error=f"{type(exc).__name__}: {exc}",
                    attempts=attempts,
                )
                logger.error(
                    "django_cachestrat: %s pk=%r failed %d times (%s); moved to dead letters.",
                    opts.label,
                    pk,
                    attempts,
                    exc,
                )
                dead.append(pk)
            else:
                failed.append((pk, attempts))
        else:
            done.append(pk)
    else:
        for pk, attempts in failed:
            buf.requeue(batch.id, [pk], cfg.RETRY_BACKOFF * 2 ** (attempts - 1))
        report.requeued += len(failed)
    finished = done + dead
    if finished:
        buf.ack(batch.id, finished, _ttl(opts, cfg))
        attempts_key = buf.queue["attempts"]
        buf.transport.call(buf.transport.client.hdel, attempts_key, *map(buffer.member, finished))
    for pk in dead:
        buf.drop_view(pk)  # it shows writes the database will not have
    report.add(opts.label, len(done))
    report.dead_letters += len(dead)
    if signals.write_behind_flushed.receivers:
        signals.write_behind_flushed.send(sender=model, batch=batch.id, pks=done, dead_letters=dead)


def _ttl(opts, cfg) -> int:
    return opts.ttl or cfg.DEFAULT_TTL


def _pause(point: str) -> None:
    # A hook for the durability tests only: a worker told to stop at a point says so in a
    # file and waits there to be killed. Never set in production.
    if os.environ.get("CACHESTRAT_TEST_PAUSE_AT") == point:
        path = os.environ["CACHESTRAT_TEST_PAUSE_FILE"]
        with open(path, "w") as fh:
            fh.write(point)
        time.sleep(600)


def drain(*, reclaim: bool = False) -> FlushReport:
    """Flush until nothing is ready, as for a deploy or a shutdown.

    ``reclaim=True`` also takes over batches other workers claimed and have not
    acknowledged (run it when those workers are stopped); they are applied exactly once
    whatever point their worker reached.
    """
    models_ = write_behind_models()
    if reclaim:
        for model in models_:
            buffer.Buffer(model).expire_inflight()
    report = FlushReport()
    for model in models_:
        while True:
            step = flush([model])
            report.batches += step.batches
            report.dead_letters += step.dead_letters
            report.requeued += step.requeued
            for label, rows in step.rows.items():
                report.add(label, rows)
            if not step.batches or step.requeued:
                break  # nothing left, or only rows waiting for their retry time
    return report


def retry_dead_letter(letter: DeadLetter) -> None:
    """Put a dead letter's writes back in the write-behind queue, then forget the letter."""
    from django.apps import apps

    model = apps.get_model(letter.model)
    opts = options.get(model)
    fields = pickle.loads(bytes(letter.fields))
    if not model.cache_strategy._record(
        model, opts.to_pk(letter.object_pk), fields, dict(letter.deltas), full=False
    ):
        raise RuntimeError("Redis cannot be reached; the dead letter is kept.")
    letter.delete()


def waiting() -> dict[str, tuple[int, int]]:
    """Return ``{label: (rows waiting, batches in flight)}`` for models with any."""
    result = {}
    for model in write_behind_models():
        rows, batches = buffer.Buffer(model).counts()
        if rows or batches:
            result[options.get(model).label] = (rows, batches)
    return result

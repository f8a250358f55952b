"""What is pending and dead-lettered, for ``manage.py cachestrat_write_behind list``.

Reading only: nothing here changes Redis or the database, and nothing is printed. Each
model's queue is read in two round trips, however many rows wait: its indexes (the dirty
set, the busy, first and attempts hashes), then the writes of the rows that are shown.

When a row was first written: the dirty set scores a row by when it may next be claimed,
which is when it was first written until a failed flush puts it back with a delay (then
the score is the retry time). ``CLAIM`` keeps the original time in the model's ``first``
hash while the row is in a batch, and after a requeue, until the row is flushed.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from django_cachestrat import options
from django_cachestrat.models import DeadLetter
from django_cachestrat.write_behind.flusher import write_behind_models
from django_cachestrat.write_behind.queue import Queue, decode_writes

#: Rows (and dead letters) listed per section unless the caller asks for another number.
DEFAULT_LIMIT = 50


@dataclass
class PendingRow:
    """One row with writes not in the database yet.

    ``fields``: the values saved (the latest of each field); ``deltas``: the increments
    added after them (or to the database's value). ``since``: when its oldest unflushed
    write was recorded. ``retries``: failed flushes so far. ``next_retry``: when a row put
    back after a failure may be claimed again (None when it may be now). ``batch``: the id
    of the batch in flight holding some of its writes, if any.
    """

    model: str
    pk: Any
    since: dt.datetime
    fields: dict[str, Any] = field(default_factory=dict)
    deltas: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    next_retry: dt.datetime | None = None
    batch: str | None = None


@dataclass
class ModelSummary:
    """How much one model has waiting: rows with unflushed writes, batches in flight."""

    model: str
    rows: int
    batches: int


@dataclass
class Letter:
    """One dead letter: the row's writes that kept failing, and the last error."""

    id: int
    model: str
    pk: str
    error: str
    created_at: dt.datetime
    attempts: int
    fields: dict[str, Any] = field(default_factory=dict)
    deltas: dict[str, int] = field(default_factory=dict)


@dataclass
class Inspection:
    """What ``inspect`` found: newest first, at most ``limit`` of each; totals uncut."""

    summaries: list[ModelSummary]
    rows: list[PendingRow]
    rows_total: int
    letters: list[Letter]
    letters_total: int


def inspect(
    chosen: list[type[models.Model]] | None = None, *, limit: int = DEFAULT_LIMIT
) -> Inspection:
    """Read the pending rows and dead letters of ``chosen`` write-behind models (or all).

    Raises ``CacheUnavailable`` when Redis cannot be read.
    """
    chosen = chosen if chosen is not None else write_behind_models()
    summaries, rows, total = pending(chosen, limit=limit)
    letters, letters_total = dead_letters([options.get(m).label for m in chosen], limit=limit)
    return Inspection(summaries, rows, total, letters, letters_total)


def pending(
    chosen: list[type[models.Model]], *, limit: int = DEFAULT_LIMIT
) -> tuple[list[ModelSummary], list[PendingRow], int]:
    """Return per-model counts, the ``limit`` most recently dirtied rows, and how many there are."""
    summaries = []
    found: list[tuple[Queue, PendingRow]] = []
    for model in chosen:
        waiting, flying = 0, 0
        for queue in _queues(model):
            rows, batches = _index(queue)
            waiting += len(rows)
            flying += batches
            found += [(queue, row) for row in rows]
        if waiting or flying:
            summaries.append(ModelSummary(options.get(model).label, waiting, flying))
    found.sort(key=lambda item: item[1].since, reverse=True)
    shown = found[: max(0, limit)]
    by_queue: dict[int, tuple[Queue, list[PendingRow]]] = {}
    for queue, row in shown:
        by_queue.setdefault(id(queue), (queue, []))[1].append(row)
    for queue, rows in by_queue.values():
        _writes(queue, rows)
    return summaries, [row for _, row in shown], len(found)


def _queues(model: type[models.Model]) -> list[Queue]:
    """Return the model's queue on each node (one, on one server)."""
    return [Queue(model, node) for node in Queue(model).transport.nodes]


def backlog(model: type[models.Model]) -> tuple[int, dt.datetime | None]:
    """Return how many rows of ``model`` have unflushed writes, and the oldest one's time.

    Two round trips at most (a node), reading the queue's indexes (not the writes).
    """
    rows = [row for queue in _queues(model) for row in _index(queue)[0]]
    return len(rows), min((row.since for row in rows), default=None)


def _index(queue: Queue) -> tuple[list[PendingRow], int]:
    """Read a model's queue indexes; return its pending rows (writes not read yet)."""
    q = queue.queue
    now_ms = queue.transport.now() * 1000
    dirty, busy, first, attempts, batches = queue.transport.execute(
        [
            ("ZRANGE", q["dirty"], 0, -1, "WITHSCORES"),
            ("HGETALL", q["busy"]),
            ("HGETALL", q["first"]),
            ("HGETALL", q["attempts"]),
            ("ZCARD", q["inflight"]),
        ]
    )
    scores = dict(_scored(dirty))
    busy = {k.decode(): v.decode() for k, v in busy.items()}
    first = {k.decode(): float(v) for k, v in first.items()}
    rows = []
    for name in dict.fromkeys([*scores, *busy]):
        score = scores.get(name)
        batch = busy.get(name)
        # The oldest of what is known: the first hash (a batch's or a requeued row's
        # time), a dirty score that is not a retry time, the claim of a batch.
        times = [t for t in (first.get(name), score) if t is not None and t <= now_ms]
        if batch and name not in first:
            times.append(_batch_time(batch, now_ms))
        since = min(times) if times else now_ms
        rows.append(
            PendingRow(
                model=queue.opts.label,
                pk=queue.opts.to_pk(name),
                since=_from_ms(since),
                retries=int(attempts.get(name.encode(), 0)),
                next_retry=_from_ms(score) if score is not None and score > now_ms else None,
                batch=batch,
            )
        )
    return rows, batches


def _writes(queue: Queue, rows: list[PendingRow]) -> None:
    """Fill in the rows' writes: those of their batch in flight, then those not claimed."""
    ops = []
    for row in rows:
        keys = queue.row(row.pk)
        if row.batch:
            ops += [("HGETALL", key) for key in queue.batch_row(row.pk, row.batch)]
        ops += [("HGETALL", keys["fields"]), ("HGETALL", keys["deltas"])]
    replies = iter(queue.transport.execute(ops))
    for row in rows:
        layers = [(next(replies), next(replies)) for _ in range(2 if row.batch else 1)]
        for raw_fields, raw_deltas in layers:
            # What does not verify is left out, never decoded (the flush dead-letters it).
            fields, deltas, _ = decode_writes(raw_fields, raw_deltas, queue.row_tag(row.pk))
            # As a flush applies them: a saved value replaces the increments before it.
            for name, value in fields.items():
                row.fields[name] = value
                row.deltas.pop(name, None)
            for name, amount in deltas.items():
                row.deltas[name] = row.deltas.get(name, 0) + amount


def dead_letters(labels: list[str], *, limit: int = DEFAULT_LIMIT) -> tuple[list[Letter], int]:
    """Return the ``limit`` newest dead letters of models ``labels`` and how many there are."""
    letters = DeadLetter.objects.filter(model__in=labels)
    total = letters.count()
    newest = letters.order_by("-created_at", "-pk")[: max(0, limit)]
    return [_letter(letter) for letter in newest], total


def _letter(letter: DeadLetter) -> Letter:
    try:
        fields = letter.saved_fields()
    except Exception as exc:  # listed anyway: the point is to see what is wrong
        fields = {"<unreadable>": f"{type(exc).__name__}: {exc}"}
    return Letter(
        id=letter.pk,
        model=letter.model,
        pk=letter.object_pk,
        error=letter.error,
        created_at=letter.created_at,
        attempts=letter.attempts,
        fields=fields,
        deltas=dict(letter.deltas or {}),
    )


def _scored(reply) -> list[tuple[str, float]]:
    """Return a ``ZRANGE ... WITHSCORES`` reply as ``(member, score)`` pairs.

    redis-py answers with pairs; a flat list (another protocol version) is paired here.
    """
    if reply and not isinstance(reply[0], list | tuple):
        reply = list(zip(reply[::2], reply[1::2], strict=True))
    return [(m.decode(), float(s)) for m, s in reply]


def _batch_time(batch_id: str, default: float) -> float:
    """Return when a batch was claimed (ms), from its id (``<ms in hex>-<random>``)."""
    try:
        return float(int(batch_id.split("-", 1)[0], 16))
    except ValueError:
        return default


def _from_ms(ms: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


# -- presenting values -------------------------------------------------------------------


def shorten(text: str, width: int) -> str:
    """Return ``text`` cut to ``width`` characters, an ellipsis marking the cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def jsonable(value: Any, width: int | None = None) -> Any:
    """Return ``value`` as JSON can hold it: ISO 8601 times, Decimals and UUIDs as text.

    Containers are converted item by item; bytes become ``"<N bytes>"``; anything else
    unknown becomes its ``str()``. With ``width``, longer strings are shortened.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v, width) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, width) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        text = value.isoformat()
    elif isinstance(value, dt.timedelta):
        return value.total_seconds()
    elif isinstance(value, bytes | bytearray | memoryview):
        text = f"<{len(bytes(value))} bytes>"
    elif isinstance(value, decimal.Decimal | uuid.UUID):
        text = str(value)
    else:
        text = str(value)
    return shorten(text, width) if width else text


def as_dict(
    item: PendingRow | Letter, *, width: int | None = None, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Return a pending row or a dead letter as a JSON-safe dict.

    Field values are shortened to ``width`` (the rest is kept whole: a pk or an id is
    what a script acts on). A pending row also gets ``age_seconds``, as of ``now``.
    """
    out = {
        name: jsonable(value, width if name == "fields" else None)
        for name, value in vars(item).items()
    }
    if isinstance(item, PendingRow):
        now = now or dt.datetime.now(dt.UTC)
        out["age_seconds"] = round(max(0.0, (now - item.since).total_seconds()), 3)
    return out

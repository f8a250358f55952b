"""Recording write-behind writes in Redis, and reading back what is still pending.

A write-behind row has a *view* (a Redis hash of encoded field values: what reads return)
and, while it has unflushed writes, *pending* hashes: the latest value of each field saved
and the sum of each counter's increments. Recording a save merges into both in one Lua
script (``RECORD``), so a save is one round trip and counters add up on the server.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.db import models

from django_cachestrat import codec
from django_cachestrat.backends import scripts
from django_cachestrat.backends.scripts import Recorded
from django_cachestrat.write_behind.queue import Queue, decode_writes
from django_cachestrat.write_behind.state import ModelState, member


class NeedsView(Exception):
    """The row has no usable view to merge a partial save or an increment into."""


class NotACounter(Exception):
    """An increment named a field whose cached value is not an integer."""


#: What ``record_all`` says of one write: its ``Recorded`` status, or the refusal.
Outcome = Recorded | NeedsView | NotACounter


class PendingWrites(ModelState):
    """The pending writes in Redis of one model."""

    def record(
        self,
        pk: Any,
        fields: dict[str, Any],
        deltas: dict[str, int],
        *,
        full: bool,
        superseded: Iterable[str] = (),
    ) -> Recorded:
        """Merge a save (``fields``) and increments (``deltas``) into the row.

        Return ``FLUSH_NOW`` when this write made ``BATCH_SIZE`` rows wait and the caller
        should queue a flush (only one writer is told so per flush interval).

        ``full`` means ``fields`` holds every field, so a missing view may be rebuilt from
        it; otherwise ``NeedsView`` asks the caller to fill the view first.
        ``superseded`` names fields written to the database directly before this write:
        their earlier pending writes are dropped first.
        """
        reply = self.transport.script(*self._record_op(pk, fields, deltas, full, superseded))
        return _outcome(pk, deltas, reply)

    def _record_op(self, pk, fields, deltas, full, superseded=()) -> tuple:
        row = self.row(pk)
        now = self.transport.now()
        args: list[Any] = [
            member(pk),
            int(now * 1000),
            "1" if full else "0",
            int(now * 1_000_000),
            len(fields),
        ]
        for name, value in fields.items():
            args += [name, codec.encode_value(value)]
        args.append(len(deltas))
        for name, amount in deltas.items():
            args += [name, int(amount)]
        args += [self.cfg.BATCH_SIZE, max(1, int(self.cfg.FLUSH_INTERVAL * 1000))]
        superseded = list(superseded)
        args += [len(superseded), *superseded]
        script_keys = [
            row["view"],
            row["fields"],
            row["deltas"],
            self.queue["dirty"],
            self.version_key(),
            row["lease"],
            self.queue["trigger"],
            self.queue["busy"],
            self.queue["first"],
        ]
        return scripts.RECORD, script_keys, args

    def discard(self, pk: Any) -> None:
        """Forget the row's unflushed writes and its view (it was deleted)."""
        row = self.row(pk)
        self.transport.script(
            scripts.DISCARD,
            [
                row["view"],
                row["fields"],
                row["deltas"],
                self.queue["dirty"],
                self.queue["busy"],
                self.queue["first"],
            ],
            [member(pk)],
        )

    def supersede(self, items: Sequence[tuple[Any, Sequence[str]]]) -> None:
        """Drop the unflushed writes of fields written synchronously, per ``(pk, attnames)``.

        One round trip. A batch already claimed is not changed (see the README).
        """
        self.transport.execute(
            [self._record_op(pk, {}, {}, False, names) for pk, names in items if names]
        )

    def pending_pks(self, among: Sequence[Any] | None = None) -> list[Any]:
        """Return the pks of rows with unflushed writes, claimed or not.

        All of them, or those of ``among`` (checked in Redis, one round trip either way).
        """
        if among is None:
            first, second = self.transport.execute(
                [("ZRANGE", self.queue["dirty"], 0, -1), ("HKEYS", self.queue["busy"])]
            )
            return list(dict.fromkeys(self.opts.to_pk(m.decode()) for m in [*first, *second]))
        if not among:
            return []
        members = [member(pk) for pk in among]
        first, second = self.transport.execute(
            [("ZMSCORE", self.queue["dirty"], *members), ("HMGET", self.queue["busy"], *members)]
        )
        return [pk for pk, a, b in zip(among, first, second, strict=True) if a or b]

    def layers(self, pks: Sequence[Any]) -> dict[Any, list[tuple[str | None, dict, dict]]]:
        """Return, for each of ``pks`` with unflushed writes, its layers of writes.

        Oldest first: ``(batch_id, fields, deltas)`` for a batch in flight, then
        ``(None, fields, deltas)`` for writes not yet claimed.
        """
        ops = []
        for pk in pks:
            row = self.row(pk)
            ops += [
                ("HGET", self.queue["busy"], member(pk)),
                ("HGETALL", row["fields"]),
                ("HGETALL", row["deltas"]),
            ]
        replies = self.transport.execute(ops)
        found: dict[Any, list[tuple[str | None, dict, dict]]] = {}
        in_flight = []
        for n, pk in enumerate(pks):
            busy, fields, deltas = replies[3 * n : 3 * n + 3]
            if busy:
                in_flight.append((pk, busy.decode()))
            if fields or deltas:
                found.setdefault(pk, []).append((None, *decode_writes(fields, deltas)))
        queue = Queue(self.model)
        for pk, batch_id in in_flight:
            fields, deltas = queue.contents(batch_id, [pk]).rows[pk]
            found.setdefault(pk, []).insert(0, (batch_id, fields, deltas))
        return found


def _outcome(pk: Any, deltas: dict[str, int], reply: int) -> Recorded:
    """Turn what ``RECORD`` replied into its status, or raise what it refused."""
    status = Recorded(reply)
    if status is Recorded.NEEDS_VIEW:
        raise NeedsView(pk)
    if status is Recorded.NOT_A_COUNTER:
        names = ", ".join(deltas)
        raise NotACounter(names if len(deltas) == 1 else f"one of {names}")
    return status


def record_all(
    writes: Sequence[
        tuple[type[models.Model], Any, dict[str, Any], dict[str, int], bool, Iterable[str]]
    ],
) -> list[Outcome]:
    """Record several writes ``(model, pk, fields, deltas, full, superseded)`` at once.

    One round trip. Each write's outcome is what ``PendingWrites.record`` would return
    for it, or the ``NeedsView``/``NotACounter`` it would raise. Writes to one row must
    be merged into one beforehand (the batch's calls must be independent).
    """
    stores: dict[type[models.Model], PendingWrites] = {}
    ops = []
    for model, pk, fields, deltas, full, superseded in writes:
        store = stores.get(model)
        if store is None:
            store = stores[model] = PendingWrites(model)
        if fields or deltas or superseded:
            ops.append(store._record_op(pk, fields, deltas, full, superseded))
    replies = iter(next(iter(stores.values())).transport.execute(ops) if ops else ())
    outcomes: list[Outcome] = []
    for _, pk, fields, deltas, _, superseded in writes:
        if not (fields or deltas or superseded):
            outcomes.append(Recorded.RECORDED)  # nothing to record
            continue
        try:
            outcomes.append(_outcome(pk, deltas, next(replies)))
        except (NeedsView, NotACounter) as exc:
            outcomes.append(exc)
    return outcomes

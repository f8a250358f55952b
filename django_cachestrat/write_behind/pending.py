"""Recording write-behind writes in Redis, and reading back what is still pending.

A write-behind row has a *view* (a Redis hash of encoded field values: what reads return)
and, while it has unflushed writes, *pending* hashes: the latest value of each field saved
and the sum of each counter's increments. Recording a save merges into both in one Lua
script (``RECORD``), so a save is one round trip and counters add up on the server.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from django.db import models

from django_cachestrat import codec, keys
from django_cachestrat.backends import CacheUnavailable, scripts
from django_cachestrat.backends.scripts import Recorded
from django_cachestrat.write_behind import applied
from django_cachestrat.write_behind.queue import Queue, decode_writes
from django_cachestrat.write_behind.state import ModelState, member

logger = logging.getLogger("django_cachestrat")

#: Logged for rows of a ring's node that could not be reached by a direct write's ``cut``.
_NOT_CUT = (
    "django_cachestrat: Redis node unreachable; unflushed writes of %s rows %s, written "
    "directly, will be flushed over them (%s)."
)

#: How long a row remembers a writer's recent writes (``RECORD``'s anti-replay window):
#: far longer than any copy of a write that timed out can wait in the server.
SEEN_TTL = 300

# Each thread is a writer of its own, with its own numbering (a thread sends a row one
# write at a time, which the anti-replay window relies on).
_writer = threading.local()


def _next_write() -> tuple[str, int]:
    """Return this thread's writer id and the number of its next write."""
    try:
        return _writer.id, next(_writer.numbers)
    except AttributeError:
        _writer.id, _writer.numbers = secrets.token_hex(8), itertools.count(1)
        return _writer.id, next(_writer.numbers)


class NeedsView(Exception):
    """The row has no usable view to merge a partial save or an increment into."""


class NotACounter(Exception):
    """An increment named a field whose cached value is not an integer."""


#: What ``record_all`` says of one write: its ``Recorded`` status, the refusal, the
#: ``CacheUnavailable`` (a ``WriteUncertain`` too) of the node it was sent to, or
#: ``Unstorable``: a value the serializer cannot carry (for the database at once).
Outcome = Recorded | NeedsView | NotACounter | CacheUnavailable | codec.Unstorable


class Layer(NamedTuple):
    """Writes of one row not in the database yet, or maybe: void if any marker is committed.

    ``markers`` are ``AppliedBatch`` ids: a batch's (its writes are in the database once
    it is), a direct write's (what it set aside is void once it committed).
    """

    markers: tuple[str, ...]
    fields: dict[str, Any]
    deltas: dict[str, int]


class Cut(NamedTuple):
    """Pending writes of a row that a direct write set aside (``PendingWrites.cut``)."""

    pk: Any
    id: str
    batch: str | None  #: the batch in flight that some were taken from
    member: str  #: as the model's ``cuts`` set holds it

    @property
    def marker(self) -> str:
        """The ``AppliedBatch`` id the direct write commits with."""
        return applied.cut_marker(self.id)


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
        (reply,) = self.transport.execute(
            [self._record_op(pk, fields, deltas, full, superseded)], once=True
        )
        return _outcome(pk, deltas, reply)

    def _record_op(self, pk, fields, deltas, full, superseded=()) -> tuple:
        row = self.row(pk)
        now = self.transport.now()
        writer, number = _next_write()
        tag = self.row_tag(pk)
        counters = self.opts.counters
        signer = self.cfg.signer
        args: list[Any] = [
            member(pk),
            int(now * 1000),
            "1" if full else "0",
            int(now * 1_000_000),
            len(fields),
        ]
        for name, value in fields.items():
            # The pending form (signed), then the view's: "" when it is the same bytes.
            stored = codec.seal_value(tag, name, value)
            plain = codec.plain_in_view(name, value, counters) and signer is not None
            args += [name, stored, codec.encode_value(value) if plain else b""]
        args.append(len(deltas))
        for name, amount in deltas.items():
            # Redis sums the amounts; the signed record of each is what a flush writes.
            record = (
                signer.seal_increment(tag, name, int(amount), writer, number) if signer else b""
            )
            args += [name, int(amount), record]
        args += [self.cfg.BATCH_SIZE, max(1, int(self.cfg.FLUSH_INTERVAL * 1000))]
        superseded = list(superseded)
        args += [len(superseded), *superseded, writer, number, SEEN_TTL, self.opts.fingerprint]
        script_keys = [
            row["view"],
            row["fields"],
            row["deltas"],
            self.queue["dirty"],
            self.version_key(),
            row["lease"],
            self.queue["trigger"],
            row["seen"],
            self.queue["busy"],
            self.queue["first"],
        ]
        return scripts.RECORD, script_keys, args

    def pending_pks(self, among: Sequence[Any] | None = None) -> list[Any]:
        """Return the pks of rows with unflushed writes, claimed or not.

        All of them, or those of ``among`` (checked in Redis, one round trip either way).
        """
        if among is None:
            found: list[bytes] = []
            for node in self.transport.nodes:  # each node's queue has its own rows
                first, second = node.execute(
                    [("ZRANGE", self.queue["dirty"], 0, -1), ("HKEYS", self.queue["busy"])]
                )
                found += [*first, *second]
            return list(dict.fromkeys(self.opts.to_pk(m.decode()) for m in found))
        if not among:
            return []
        waiting: set[Any] = set()
        for node, part in self.by_node(among):
            members = [member(pk) for pk in part]
            first, second = node.execute(
                [
                    ("ZMSCORE", self.queue["dirty"], *members),
                    ("HMGET", self.queue["busy"], *members),
                ]
            )
            waiting.update(pk for pk, a, b in zip(part, first, second, strict=True) if a or b)
        return [pk for pk in among if pk in waiting]

    def layers(self, pks: Sequence[Any]) -> dict[Any, list[Layer]]:
        """Return, for each of ``pks`` with unflushed writes, its layers of writes.

        Oldest first: the batch in flight, then what direct writes not known to be
        committed set aside (taken from the batch, then not claimed), then the writes
        not yet claimed. A layer is void if any of its markers is committed. Saved
        values whose MAC does not verify are left out (the flush dead-letters them);
        increments are the sums Redis holds (a read's bound: see the README's Security).
        """
        found: dict[Any, list[Layer]] = {}
        for node, part in self.by_node(pks):
            found.update(self._layers(node, part))
        return found

    def _layers(self, node, pks: Sequence[Any]) -> dict[Any, list[Layer]]:
        """``layers`` of rows ``pks``, which are all on ``node`` (two round trips)."""
        ops: list[tuple] = [("ZRANGE", self.queue["cuts"], 0, -1)]
        for pk in pks:
            row = self.row(pk)
            ops += [
                ("HGET", self.queue["busy"], member(pk)),
                ("HGETALL", row["fields"]),
                ("HGETALL", row["deltas"]),
            ]
        cut_members, *replies = node.execute(ops)
        wanted = set(map(member, pks))
        cuts = [c for c in map(self._parse_cut, cut_members) if member(c.pk) in wanted]
        cut_parts = node.execute(
            [("HGETALL", key) for c in cuts for key in self._cut_keys(c.pk, c.id)]
        )
        found: dict[Any, list[Layer]] = {}
        queue = Queue(self.model, node)
        for n, pk in enumerate(pks):
            busy, fields, deltas = replies[3 * n : 3 * n + 3]
            stack = found.setdefault(pk, [])
            if busy:
                batch_id = busy.decode()
                batch = queue.contents(batch_id, [pk]).rows[pk]
                stack.append(Layer((batch_id, applied.row_marker(batch_id, pk)), *batch))
            tag = self.row_tag(pk)
            for i, cut in enumerate(cuts):
                if cut.pk != pk:
                    continue
                cf, cd, bf, bd = cut_parts[4 * i : 4 * i + 4]
                if cut.batch and (bf or bd):
                    void = (cut.marker, cut.batch, applied.row_marker(cut.batch, pk))
                    stack.append(Layer(void, *decode_writes(bf, bd, tag)[:2]))
                if cf or cd:
                    stack.append(Layer((cut.marker,), *decode_writes(cf, cd, tag)[:2]))
            if fields or deltas:
                stack.append(Layer((), *decode_writes(fields, deltas, tag)[:2]))
            if not stack:
                del found[pk]
        return found

    # -- direct writes -------------------------------------------------------------------

    def cut(self, items: Sequence[tuple[Any, Sequence[str]]], cut_id: str, window: float):
        """Set aside the pending writes of fields a direct write is about to commit.

        Per ``(pk, attnames)``; one round trip. The writes the flusher has claimed are
        set aside too, so no flush writes them over the direct write. Call it after the
        direct write reached the database and before its transaction commits, and write
        ``applied.cut_marker(cut_id)`` in that transaction: the marker tells whether to
        drop what was set aside (committed) or put it back (rolled back). Settled by
        ``settle``: at the commit, or by the next flush. ``window`` (seconds) orders the
        cuts set; it is when an inspection calls a cut overdue.
        Return a ``Cut`` per row whose writes were set aside (none: no marker needed).
        """
        items = [(pk, list(names)) for pk, names in items if names]
        deadline = int((self.transport.now() + window) * 1000)
        ops = []
        for pk, names in items:
            row = self.row(pk)
            ops.append(
                (
                    scripts.CUT,
                    [
                        row["fields"],
                        row["deltas"],
                        self.queue["dirty"],
                        self.queue["busy"],
                        self.queue["cuts"],
                        *self._cut_keys(pk, cut_id),
                        self.queue["first"],
                    ],
                    [member(pk), cut_id, deadline, self._tag(pk), *names],
                )
            )
        made: list[Cut] = []
        failed: CacheUnavailable | None = None
        for node, where in self.transport.split([op[1][0] for op in ops]):  # by row
            try:
                replies = node.execute([ops[i] for i in where])
            except CacheUnavailable as exc:
                # On a ring, the other nodes' rows are set aside all the same.
                failed = exc
                skipped = ", ".join(repr(items[i][0]) for i in where)
                if len(ops) > len(where):
                    logger.warning(_NOT_CUT, self.opts.label, skipped, exc)
                continue
            made += [self._parse_cut(entry) for entry in replies if entry]
        if failed is not None and not made:
            raise failed
        return made

    def cuts(self) -> list[Cut]:
        """Return the writes set aside by direct writes and not settled yet, oldest first."""
        found: list[Cut] = []
        for node in self.transport.nodes:  # oldest first per node
            found += self._cuts(node)
        return found

    def _cuts(self, node) -> list[Cut]:
        (found,) = node.execute([("ZRANGE", self.queue["cuts"], 0, -1)])
        return [self._parse_cut(m) for m in found]

    def cuts_of(self, pks: Iterable[Any]) -> list[Cut]:
        """Return the unsettled cuts of rows ``pks``."""
        found = []
        for node, part in self.by_node(list(pks)):
            wanted = set(map(member, part))
            found += [c for c in self._cuts(node) if member(c.pk) in wanted]
        return found

    def settle(self, cut: Cut, *, committed: bool, keep_batch: bool, into_batch: bool) -> None:
        """Settle a cut: drop it (its direct write ``committed``) or put it back.

        Put back: the unclaimed part under the row's pending writes; the part taken from
        the batch back into that batch (``into_batch``: its flusher, holding the row's
        lock, writes it now) or under the pending writes, unless ``keep_batch`` is
        False (the batch is in the database already, with those writes).
        """
        row = self.row(cut.pk)
        if into_batch and cut.batch:
            target = list(self.batch_row(cut.pk, cut.batch))
        else:
            target = [row["fields"], row["deltas"]]
        self.node(cut.pk).script(
            scripts.CUT_SETTLE,
            [
                self.queue["cuts"],
                row["fields"],
                row["deltas"],
                self.queue["dirty"],
                *self._cut_keys(cut.pk, cut.id),
                *target,
            ],
            [
                cut.member,
                member(cut.pk),
                "0" if committed else "1",
                "1" if keep_batch else "0",
                int(self.transport.now() * 1000),
            ],
        )

    def _cut_keys(self, pk: Any, cut_id: str) -> tuple[str, str, str, str]:
        return keys.behind_cut(self.prefix, self.opts.label, pk, cut_id)

    def _tag(self, pk: Any) -> str:
        return keys.behind_row_tag(self.prefix, self.opts.label, pk)

    def _parse_cut(self, raw: bytes) -> Cut:
        text = raw.decode()
        pk, cut_id, batch = text.rsplit("|", 2)
        return Cut(self.opts.to_pk(pk), cut_id, batch or None, text)


def _outcome(pk: Any, deltas: dict[str, int], reply: int) -> Recorded:
    """Turn what ``RECORD`` replied into its status, or raise what it refused."""
    status = Recorded(reply)
    if status is Recorded.DUPLICATE:  # an earlier copy of this write was recorded
        return Recorded.RECORDED
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

    One round trip (a node: on a ring, one per node holding some of the rows). Each
    write's outcome is what ``PendingWrites.record`` would return for it, the
    ``NeedsView``/``NotACounter``/``Unstorable`` it would raise, or the
    ``CacheUnavailable`` (or ``WriteUncertain``) of its node: one node failing leaves the
    others' writes recorded. Writes to one row must be merged into one beforehand (the batch's calls
    must be independent).
    """
    stores: dict[type[models.Model], PendingWrites] = {}
    ops: list[tuple[int, tuple]] = []
    outcomes: list[Outcome] = [Recorded.RECORDED] * len(writes)  # nothing to record: done
    for n, (model, pk, fields, deltas, full, superseded) in enumerate(writes):
        store = stores.get(model)
        if store is None:
            store = stores[model] = PendingWrites(model)
        if fields or deltas or superseded:
            try:
                ops.append((n, store._record_op(pk, fields, deltas, full, superseded)))
            except codec.Unstorable as exc:
                outcomes[n] = exc
    if not ops:
        return outcomes
    transport = next(iter(stores.values())).transport
    for node, where in transport.split([op[1][0] for _, op in ops]):  # by the row's view
        try:
            replies: list = node.execute([ops[i][1] for i in where], once=True)
        except CacheUnavailable as exc:
            replies = [exc] * len(where)
        for i, reply in zip(where, replies, strict=True):
            n = ops[i][0]
            if isinstance(reply, CacheUnavailable):
                outcomes[n] = reply
                continue
            try:
                outcomes[n] = _outcome(writes[n][1], writes[n][3], reply)
            except (NeedsView, NotACounter) as exc:
                outcomes[n] = exc
    return outcomes

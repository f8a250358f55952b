"""The flush queue of one model: claim a batch, read it, acknowledge or requeue it.

Flushing is claim -> write -> acknowledge. A claim moves rows' pending hashes into a
batch and marks the rows busy; an acknowledgement deletes the batch. A batch whose worker
died is reclaimed after the visibility timeout, never lost. While a row is in a batch it
is not claimed again, so two batches of one row never race in the database. Any number of
workers flush one model side by side: each claim takes rows no batch holds, so the rows
waiting are shared out among them, batch by batch.

A claim is the batch's deadline in the in-flight set. Only the worker whose claim it still
is may acknowledge or requeue the batch: one that stalled past its deadline, while another
reclaimed the batch, is refused, or it would take the batch out of flight under its new
owner (whose ``AppliedBatch`` marker could then be pruned before it looks for it), or put
rows back that the new owner is writing.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from django_cachestrat import codec, conf, keys
from django_cachestrat.backends import CacheUnavailable, scripts
from django_cachestrat.signing import Unverified
from django_cachestrat.write_behind.state import ModelState, member

#: Times a claim looks again when other workers claimed its rows first (each such loss
#: means another worker took a batch, so the queue moved on).
CLAIM_TRIES = 5


@dataclass
class Batch:
    """A batch: its id, its pks and, once read (``Queue.contents``), its writes per pk.

    A claim lists the pks only: the flusher reads the writes under the rows' locks, since
    a direct write may set some aside after the claim. ``deadline``: the claim's
    visibility deadline (ms, Redis's clock), which names the claim: ``ack`` and
    ``requeue`` act only while the batch still has it.
    """

    id: str
    pks: list[Any] = field(default_factory=list)
    rows: dict[Any, tuple[dict[str, Any], dict[str, int]]] = field(default_factory=dict)
    deadline: int | None = None
    #: The node whose queue it was claimed from (on a ring, each node has its own).
    node: Any = None
    #: Per pk, the writes whose MAC did not verify: field name -> why (never written).
    forged: dict[Any, dict[str, str]] = field(default_factory=dict)


class Queue(ModelState):
    """The write-behind queue of one model (on a ring, one on each node)."""

    def _now_ms(self) -> int:
        return int(self.transport.now() * 1000)

    def claim(self, limit: int, visibility: float) -> Batch | None:
        """Claim up to ``limit`` pending rows (a timed-out batch first); None if none wait.

        Several workers claim from one queue at once. Rows held by a batch in flight
        (another worker's, or a dead worker's not reclaimable yet) are passed over, not
        counted against ``limit``: written again, such a row waits in ``dirty``, comes to
        its head once the rows before it are claimed and stays there until its batch is
        acknowledged; a window of only ``limit`` rows would then hold nothing claimable and
        stop every flush for as long as the batch is held. A claim whose rows another
        worker took first (both read the same head of ``dirty``) looks again, instead of
        ending this worker's flush while rows wait. None: no row can be claimed now.

        On a ring, from the first node (in turn) that has some; a node that cannot be
        reached is passed over, unless none can.
        """
        nodes = self.transport.nodes
        failed: list[CacheUnavailable] = []
        start = random.randrange(len(nodes))  # so that workers start on different nodes
        for node in nodes[start:] + nodes[:start]:
            try:
                batch = self._claim(node, limit, visibility)
            except CacheUnavailable as exc:
                failed.append(exc)
                continue
            if batch is not None:
                return batch
        if len(failed) == len(nodes):
            raise failed[0]
        return None

    def _claim(self, node, limit: int, visibility: float) -> Batch | None:
        """Claim from ``node``'s queue, as ``claim`` says."""
        for _ in range(CLAIM_TRIES):
            now = self._now_ms()
            deadline = now + int(visibility * 1000)
            stale, held = node.execute(
                [
                    ("ZRANGEBYSCORE", self.queue["inflight"], "-inf", now, "LIMIT", 0, 1),
                    ("HKEYS", self.queue["busy"]),
                ]
            )
            if stale and (batch := self._reclaim(node, stale[0].decode(), now, deadline)):
                return batch
            # The first ``limit`` rows in no batch are among these (unless other workers
            # claim meanwhile: CLAIM checks each row again, atomically).
            window = limit + len(held)
            (candidates,) = node.execute(
                [("ZRANGEBYSCORE", self.queue["dirty"], "-inf", now, "LIMIT", 0, window)]
            )
            busy = set(held)
            free = [self.opts.to_pk(c.decode()) for c in candidates if c not in busy][:limit]
            if not free:
                return None
            if batch := self._claim_rows(node, free, now, deadline):
                return batch
        return None

    def _reclaim(self, node, batch_id: str, now: int, deadline: int) -> Batch | None:
        """Take over batch ``batch_id``, whose deadline passed; None if another worker did."""
        members_key = keys.behind_batch(self.prefix, self.opts.label, batch_id)
        members = node.script(
            scripts.RECLAIM, [self.queue["inflight"], members_key], [batch_id, now, deadline]
        )
        if not members:
            return None
        pks = [self.opts.to_pk(m.decode()) for m in members]
        return Batch(batch_id, pks, deadline=deadline, node=node)

    def _claim_rows(self, node, pks: list, now: int, deadline: int) -> Batch | None:
        """Claim those of rows ``pks`` still in no batch; None if other workers took all."""
        batch_id = f"{now:x}-{secrets.token_hex(6)}"
        claimed = node.script(
            scripts.CLAIM,
            self._batch_keys(batch_id, pks, pending=True),
            [batch_id, deadline, *map(member, pks)],
        )
        if not claimed:
            return None
        pks = [self.opts.to_pk(c.decode()) for c in claimed]
        return Batch(batch_id, pks, deadline=deadline, node=node)

    def contents(self, batch_id: str, pks: Iterable[Any]) -> Batch:
        """Read what batch ``batch_id`` holds for ``pks``, as a flush writes it.

        One round trip a node, and with ``SIGN`` on a second one: only what verifies, the
        saved values whose MAC does and per counter the sum of the signed increment
        records that do, never the sum Redis holds. What does not is in ``Batch.forged``.
        """
        pks = list(pks)
        batch = Batch(batch_id, pks)
        for node, part in self.by_node(pks):
            replies = node.execute(
                [("HGETALL", key) for pk in part for key in self.batch_row(pk, batch_id)]
            )
            records: list[Any] = [None] * len(part)
            if self.cfg.signer is not None:
                wanted = [
                    (n, name, keys.behind_increments(self.batch_row(pk, batch_id)[1], name))
                    for n, pk in enumerate(part)
                    for name in map(bytes.decode, replies[2 * n + 1])
                ]
                lists = node.execute([("LRANGE", key, 0, -1) for *_, key in wanted])
                records = [{} for _ in part]
                for (n, name, _), found in zip(wanted, lists, strict=True):
                    records[n][name] = found
            for n, pk in enumerate(part):
                tag = self.row_tag(pk)
                writes = decode_writes(replies[2 * n], replies[2 * n + 1], tag, records[n])
                batch.rows[pk] = (writes.fields, writes.deltas)
                if writes.forged:
                    batch.forged[pk] = writes.forged
        batch.rows = {pk: batch.rows[pk] for pk in pks}  # in the order asked
        return batch

    def ack(self, batch: Batch, pks: Sequence[Any], ttl: int) -> bool:
        """Forget rows ``pks`` of the batch (they are in the database); unpin their views.

        False, doing nothing, when the claim is no longer ours (the batch was reclaimed).
        """
        script_keys = self._batch_keys(batch.id, ())
        for pk in pks:
            script_keys += [*self.batch_row(pk, batch.id), self.row(pk)["view"]]
        args = [batch.id, ttl, batch.deadline, *map(member, pks)]
        return bool((batch.node or self.transport).script(scripts.ACK, script_keys, args))

    def requeue(self, batch: Batch, pks: Sequence[Any], delay: float) -> bool:
        """Put rows of the batch back as pending, claimable again after ``delay`` seconds.

        False, doing nothing, when the claim is no longer ours (the batch was reclaimed).
        """
        when = self._now_ms() + int(delay * 1000)
        return bool(
            (batch.node or self.transport).script(
                scripts.REQUEUE,
                self._batch_keys(batch.id, pks, pending=True),
                [batch.id, when, batch.deadline, *map(member, pks)],
            )
        )

    def _batch_keys(self, batch_id: str, pks: Iterable[Any], *, pending=False) -> list[str]:
        q = self.queue
        members = keys.behind_batch(self.prefix, self.opts.label, batch_id)
        script_keys = [q["inflight"], q["busy"], q["dirty"], members, q["first"]]
        for pk in pks if pending else ():
            row = self.row(pk)
            script_keys += [row["fields"], row["deltas"], *self.batch_row(pk, batch_id)]
        return script_keys

    def failed(self, pk: Any) -> int:
        """Count a failed flush of row ``pk``; return how many it has had."""
        (attempts,) = self.node(pk).execute([("HINCRBY", self.queue["attempts"], member(pk), 1)])
        return attempts

    def finished(self, pks: Sequence[Any]) -> None:
        """Forget the failure counts of rows ``pks`` (written, or dead-lettered)."""
        for node, part in self.by_node(pks):
            node.execute([("HDEL", self.queue["attempts"], *map(member, part))])

    def drop_views(self, pks: Sequence[Any]) -> None:
        """Delete rows' views (their writes were dead-lettered: the views are not the rows)."""
        for node, part in self.by_node(pks):
            node.execute([("DEL", *(self.row(pk)["view"] for pk in part))])

    def expire_inflight(self) -> None:
        """Make every batch in flight reclaimable now (its workers are known to be gone).

        Their claims end: a worker still running could no longer acknowledge its batch.
        """
        for node in self.transport.nodes:
            (batches,) = node.execute([("ZRANGE", self.queue["inflight"], 0, -1)])
            if batches:
                args = [x for b in batches for x in (0, b)]
                node.execute([("ZADD", self.queue["inflight"], "XX", *args)])

    def release_trigger(self) -> None:
        """Let the next size trigger queue another flush (one has started)."""
        for node in self.transport.nodes:
            try:
                node.execute([("DEL", self.queue["trigger"])])
            except CacheUnavailable:
                pass  # its flag lapses on its own; the other nodes' flush goes on

    def in_flight(self) -> list[str]:
        """Return the ids of the batches in flight (claimed, not acknowledged)."""
        found = []
        for node in self.transport.nodes:
            (batches,) = node.execute([("ZRANGE", self.queue["inflight"], 0, -1)])
            found += [b.decode() for b in batches]
        return found

    def counts(self) -> tuple[int, int]:
        """Return ``(rows waiting to be claimed, batches in flight)``, over every node."""
        waiting = flying = 0
        for node in self.transport.nodes:
            rows, batches = node.execute(
                [("ZCARD", self.queue["dirty"]), ("ZCARD", self.queue["inflight"])]
            )
            waiting += rows
            flying += batches
        return waiting, flying


class Writes(NamedTuple):
    """A row's pending writes as read back: values saved, increments, and what is refused.

    ``forged``: field name -> why its write is not used (its MAC does not verify).
    """

    fields: dict[str, Any]
    deltas: dict[str, int]
    forged: dict[str, str]


def decode_writes(
    fields: dict, deltas: dict, row: bytes, records: dict[str, list[bytes]] | None = None
) -> Writes:
    """Decode a row's pending (or batched, or set aside) fields and deltas hashes.

    ``row``: the row's key tag, which the values' MACs bind. A value whose MAC does not
    verify is left out (and never decoded), named in ``forged``, and so is one the
    serializer cannot read (a flush would otherwise stop at it, batch after batch).
    ``records``: per counter, its signed increment records (``Queue.contents`` reads them
    for a flush); the increments are then their sum, and what Redis summed beyond them is
    refused. Without them (reads, listings) a counter's increments are the sum Redis holds.
    """
    out, forged = {}, {}
    for key, value in fields.items():
        name = key.decode()
        try:
            out[name] = codec.open_value(row, name, value)
        except Exception as exc:  # not verified, or (signed, yet) not the serializer's
            forged[name] = f"saved value {_shown(value)}: {exc}"
    sums = {}
    for key, value in deltas.items():
        name = key.decode()
        if records is None:
            sums[name] = int(value)
            continue
        amount, problem = _verified_sum(row, name, value, records.get(name, []))
        if amount:
            sums[name] = amount
        if problem:
            forged[name] = problem
    return Writes(out, sums, forged)


def _verified_sum(row: bytes, name: str, total: bytes, records: list[bytes]) -> tuple[int, str]:
    """Return the sum of a counter's increment records that verify, and what is wrong.

    Each record counts once (its writer and number make it unique); ``total`` is what
    Redis summed, and any difference with the verified sum is refused.
    """
    signer = conf.settings().signer
    assert signer is not None  # records are read only when signing
    seen, amount, bad = set(), 0, 0
    for record in records:
        try:
            step, origin = signer.open_increment(row, name, record)
        except (Unverified, ValueError):
            bad += 1
            continue
        if origin not in seen:
            seen.add(origin)
            amount += step
    problems = []
    if bad:
        problems.append(f"{bad} increment record(s) do not verify")
    try:
        summed = int(total)
    except ValueError:
        summed = None
    if summed != amount:
        problems.append(
            f"Redis holds a sum of {_shown(total)}, its signed increments add up to "
            f"{amount}; {amount} is written"
        )
    return amount, "; ".join(problems)


def _shown(value: bytes) -> str:
    """Return bytes read from Redis as a log or a dead letter shows them: short, inert."""
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"

"""A consistent-hash ring over independent Redis nodes (``CACHESTRAT["NODES"]``).

**Placement.** A key goes to a node by its hash tag (``keys.hash_tag``) on a ketama ring
(``uhashring``, MD5; ``VNODES``): every key of one row (entry,
lease, tombstone, write-behind state) shares the row's tag, so a row lives on one node
and every script of a row runs there. A model's own keys (its version, its write-behind
queue and batches) exist on every node, each copy covering the rows that node holds: a
read sends one ``MGET`` of a node's version and entries to that node (a hit stays one
round trip), a model's invalidation bumps every node's version, and each node's queue is
flushed on its own. The statistics (``{stats}``) live on the first node listed.

**A node that is down** fails alone: each node is a ``RedisTransport`` with its own
breaker and its own replay of the invalidations it missed. Its rows are read from the
database, never moved to another node (moving them, then back, would serve rows written
meanwhile as they were before).

**Ring changes.** Each node keeps a record of the ring it serves (``Record``: the ring's
fingerprint, an epoch and the node's alias in it), written by ``cachestrat_rebalance``. A
process uses a node only while that record names the process's own ring at the newest
epoch it has seen on any node; otherwise the node's rows go to the database (logged
once) and only deletions and version bumps reach it, so its entries can only get colder.
While a node names another ring, deletions also go to the row's node in that ring, so
that processes still running it (a rolling deploy) see this process's writes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from uhashring import HashRing

from django_cachestrat import keys
from django_cachestrat.backends.redis import CacheUnavailable, Op, RedisTransport
from django_cachestrat.backends.scripts import Script

logger = logging.getLogger("django_cachestrat")

#: Plain commands that name several keys (all after the command's name).
_MULTI_KEY = frozenset({"DEL", "UNLINK", "EXISTS", "MGET", "TOUCH"})


class Unsettled(CacheUnavailable):
    """A node's ring record does not name this process's ring: run ``cachestrat_rebalance``."""


#: Ketama's point groups per node of average weight (4 points each): libketama's 40 leave a
#: node up to 11% off its share on four or five nodes; 320 (1,280 points) keep every node
#: within 8% and the keys a fifth node takes within a point of a fifth.
VNODES = 320


class Placement:
    """Which node of a ring holds a hash tag: a ketama continuum over ``(alias, weight)``."""

    def __init__(self, nodes: Sequence[tuple[str, int]]):
        self.nodes = tuple(nodes)
        spec = json.dumps(sorted(self.nodes))
        #: Names the placement: nodes and weights, whatever their order.
        self.fingerprint = hashlib.sha256(f"ketama{VNODES}:{spec}".encode()).hexdigest()[:16]
        ring = HashRing(
            {alias: {"weight": weight} for alias, weight in self.nodes},
            hash_fn="ketama",
            vnodes=VNODES,
        )
        # A tag's node never changes for a placement: remember the hot ones (an MD5 and a
        # bisect are a few microseconds a key).
        self.owner: Callable[[str], str] = functools.lru_cache(maxsize=1 << 16)(ring.get_node)


@dataclass(frozen=True)
class Record:
    """What a node says of the ring it serves (JSON under ``keys.ring_record``)."""

    ring: str  #: the placement's fingerprint
    epoch: int  #: incremented by each rebalance
    node: str  #: this node's alias in that ring
    nodes: tuple[tuple[str, int], ...]  #: the ring's nodes and weights

    def dumps(self) -> str:
        """Return the record as stored."""
        return json.dumps(
            {"ring": self.ring, "epoch": self.epoch, "node": self.node, "nodes": self.nodes}
        )

    @classmethod
    def loads(cls, raw: bytes | str | None) -> Record | None:
        """Read a stored record; None when there is none or it is not one of ours."""
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            nodes = tuple((str(alias), int(weight)) for alias, weight in data["nodes"])
            return cls(str(data["ring"]), int(data["epoch"]), str(data["node"]), nodes)
        except (ValueError, TypeError, KeyError):
            return None  # bytes in Redis are input: an unreadable record names no ring


#: Seconds between reads of a settled node's record (one ``GET``): a rebalance done while
#: this process runs, against the README's order, is seen within this time.
SETTLED_RECHECK = 5.0


class RingNode(RedisTransport):
    """One node of a ring: a ``RedisTransport`` that serves only while its record is settled.

    Deletions and version bumps always pass (they only make entries colder); every other
    call raises ``Unsettled`` while the node's record names another ring. The record is
    read again every ``recheck`` seconds while unsettled (``SETTLED_RECHECK`` once
    settled) and after every failure.
    """

    def __init__(self, client: Any, *, recheck: float, **kwargs: Any):
        super().__init__(client, **kwargs)
        self.ring: RingTransport | None = None
        self.record_key = ""  # set by the ring, which knows the prefix
        self.recheck = recheck
        self.settled = False
        #: This process has seen the node settled: an empty node (it restarted without its
        #: data) may then be given its record back.
        self.known = False
        self._check_at = 0.0
        self._monotonic = kwargs.get("monotonic", time.monotonic)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not (self.settled and self._monotonic() < self._check_at):
            try:
                self._check()
            except Unsettled:
                if self.replay:  # kept deletions still go: they only make entries colder
                    RedisTransport._call(self, _nothing)
                raise
        return super()._call(fn, *args)

    def _call_invalidation(self, fn: Callable[..., Any], *args: Any) -> Any:
        return RedisTransport._call(self, fn, *args)

    def _failed(self, exc: Exception) -> None:
        self._check_at = 0.0  # back from an outage: read the record again first
        super()._failed(exc)

    def _check(self) -> None:
        now = self._monotonic()
        if now >= self._check_at:
            assert self.ring is not None
            self.ring.survey(self)
            self._check_at = now + (SETTLED_RECHECK if self.settled else self.recheck)
        if not self.settled:
            raise Unsettled(f"Redis node {self.name!r} is not settled in this ring")

    def read_record(self) -> Record | None:
        """Return the node's record (the breaker applies, not the ring's gate)."""
        return Record.loads(RedisTransport._call(self, self._client.get, self.record_key))

    def adopt(self, record: Record) -> bool:
        """Write ``record`` if the node has none (``SET NX``); True if it did."""
        client, key = self._client, self.record_key
        return bool(RedisTransport._call(self, lambda: client.set(key, record.dumps(), nx=True)))

    def write_end(self, *args: Any, **kwargs: Any) -> bool:
        """As ``RedisTransport.write_end``; on a node no longer settled, the row is dropped."""
        try:
            return super().write_end(*args, **kwargs)
        except Unsettled:
            # The store was refused and its deletion kept for replay: send it now.
            RedisTransport._call(self, _nothing)
            return False


def _nothing() -> None:
    """Nothing: a call that only lets the transport replay what it kept."""


class Routed:
    """What a transport over several nodes shares: each call goes to the node of its keys.

    A subclass says where a key lives (``_place``: a node, or None for a model-level key
    that every node has its own copy of) and lists its ``nodes``. A call whose keys are on
    several nodes, or only model-level keys, is a caller's mistake and raises
    ``ValueError``: split batches with ``split`` and send model-level calls to each of
    ``nodes``. ``delete`` and ``bump`` split by themselves.
    """

    nodes: tuple[RedisTransport, ...]
    _node_of: Callable[[str], Any]

    def _place(self, key: str) -> Any:
        raise NotImplementedError

    def _owners(self, key: str) -> list[RedisTransport]:
        return [self.node(key)]

    def _everywhere(self) -> list[RedisTransport]:
        return list(self.nodes)

    @property
    def servers(self) -> Sequence[Any]:
        """The servers, each with a ``name`` and ``info()`` (the dashboard's): the nodes."""
        return self.nodes

    # -- where keys live ---------------------------------------------------------------

    def node(self, key: str) -> Any:
        """Return the node holding ``key``; ``ValueError`` for a key every node has."""
        found = self._node_of(key)
        if found is None:
            raise ValueError(f"{key!r} is kept on every node: ask each of .nodes")
        return found

    def split(self, keys_: Sequence[str]) -> list[tuple[Any, list[int]]]:
        """Group the positions of ``keys_`` by the node holding each, in first-seen order."""
        if len(keys_) == 1:  # a point read
            return [(self.node(keys_[0]), [0])]
        groups: dict[Any, list[int]] = {}
        node = self.node
        for i, key in enumerate(keys_):
            groups.setdefault(node(key), []).append(i)
        return list(groups.items())

    def _op_node(self, op: Op) -> Any:
        if isinstance(op[0], Script):
            names = op[1]
        elif op[0].upper() in _MULTI_KEY:
            names = op[1:]
        else:
            names = op[2:3] if op[0].upper() == "MEMORY" else op[1:2]
        placed = [n for n in map(self._place, names) if n is not None]
        if not placed:
            raise ValueError(f"{op!r} names only keys every node has: send it to each of .nodes")
        if any(n is not placed[0] for n in placed):
            raise ValueError(f"{op!r} names keys of several nodes")
        return placed[0]

    def _one_node(self, ops: Sequence[Op]) -> Any:
        node = self._op_node(ops[0])
        for op in ops[1:]:
            if self._op_node(op) is not node:
                raise ValueError("a batch spans nodes: split it (transport.split)")
        return node

    # -- what RedisTransport offers, routed --------------------------------------------

    def now(self) -> float:
        """Return the wall clock's time (seconds), as ``RedisTransport.now``."""
        return self.nodes[0].now()

    @property
    def available(self) -> bool:
        """False while any node's breaker is open."""
        return all(node.available for node in self.nodes)

    @property
    def pending_invalidations(self) -> int:
        """How many failed invalidations wait, over every node."""
        return sum(node.pending_invalidations for node in self.nodes)

    def execute(self, ops: Sequence[Op], *, once: bool = False) -> list:
        """Send ``ops`` (all of one node) to their node; see ``RedisTransport.execute``."""
        if not ops:
            return []
        return self._one_node(ops).execute(ops, once=once)

    def script(self, script: Script, keys_: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script on its keys' node; return its reply."""
        return self.execute([(script, keys_, args)])[0]

    def get(self, key: str) -> bytes | None:
        """Value of ``key``, from its node."""
        return self.node(key).get(key)

    def write_begin(self, version_key: str, keys_: tuple[str, str], token: str, window: int):
        """``RedisTransport.write_begin`` on the row's node (with that node's version)."""
        return self.node(keys_[0]).write_begin(version_key, keys_, token, window)

    def write_end(self, version_key: str, keys_, *args: Any) -> bool:
        """``RedisTransport.write_end`` on the row's node."""
        return self.node(keys_[0]).write_end(version_key, keys_, *args)

    def write_abort(self, inflight_key: str, token: str) -> None:
        """``RedisTransport.write_abort`` on the row's node."""
        self.node(inflight_key).write_abort(inflight_key, token)

    def delete(
        self,
        version_key: str,
        keys_: Sequence[str],
        *,
        tombstones: Sequence[str] = (),
        tombstone_ms: int = 0,
    ) -> None:
        """Delete ``keys_`` on their nodes (one round trip each); see ``RedisTransport.delete``.

        Each node keeps what it could not take for its own replay; ``CacheUnavailable`` is
        raised after the others were sent. While a node names another ring, the keys also
        go to their node in that ring, for the processes still running it.
        """
        doomed: dict[RedisTransport, tuple[list[str], list[str]]] = {}
        for names, at in ((keys_, 0), (tombstones, 1)):
            for key in names:
                for target in self._owners(key):
                    doomed.setdefault(target, ([], []))[at].append(key)
        failed: CacheUnavailable | None = None
        for target, (names, stones) in doomed.items():
            try:
                target.delete(version_key, names, tombstones=stones, tombstone_ms=tombstone_ms)
            except CacheUnavailable as exc:
                failed = exc
        if failed is not None:
            raise failed

    def bump(self, version_key: str) -> None:
        """Bump the model's version on every node (each keeps a failed bump for replay)."""
        failed: CacheUnavailable | None = None
        for target in self._everywhere():
            try:
                target.bump(version_key)
            except CacheUnavailable as exc:
                failed = exc
        if failed is not None:
            raise failed


class RingTransport(Routed):
    """The transport over a ring of ``RingNode``s (see ``Routed``).

    A row's keys go to the node its tag hashes to, a model's keys are on every node, the
    statistics on the first.
    """

    def __init__(
        self,
        nodes: Sequence[RingNode],
        weights: Sequence[tuple[str, int]],
        *,
        prefix: str,
        connect: Callable[[str], RedisTransport] | None = None,
    ):
        self.prefix = prefix
        self.placement = Placement(weights)
        self.by_alias = {node.name: node for node in nodes}
        self.nodes: tuple[RingNode, ...] = tuple(nodes)
        self.stats_node = self.nodes[0]
        #: The newest epoch seen in any node's record.
        self.epoch = 0
        #: Other rings that nodes' records name (a deploy in progress), with their nodes.
        self.others: dict[str, tuple[Placement, dict[str, RedisTransport]]] = {}
        self._connect = connect
        # The hot path of a read: a key's node, remembered (a key never changes node).
        self._node_of: Callable[[str], RingNode | None] = functools.lru_cache(maxsize=1 << 16)(
            self._place
        )
        self._lock = threading.Lock()
        self._surveyed = False
        self._warned: set[str] = set()
        for node in nodes:
            node.ring = self
            node.record_key = keys.ring_record(prefix)

    # -- where keys live (a ring's) ---------------------------------------------------

    def _place(self, key: str) -> RingNode | None:
        tag = keys.hash_tag(key)
        if ":" in tag:  # a row's (or a lookup value's)
            return self.by_alias[self.placement.owner(tag)]
        if tag == keys.STATS_TAG:
            return self.stats_node
        return None  # a model's, or a node's own: on every node

    def _owners(self, key: str) -> list[RedisTransport]:
        own: RedisTransport = self.node(key)
        if not self.others:
            return [own]
        found = [own]
        tag = keys.hash_tag(key)
        for placement, transports in list(self.others.values()):
            other = transports.get(placement.owner(tag)) if ":" in tag else None
            if other is not None and other not in found:
                found.append(other)
        return found

    def _everywhere(self) -> list[RedisTransport]:
        found: list[RedisTransport] = list(self.nodes)
        for _, transports in list(self.others.values()):
            found += [t for t in transports.values() if t not in found]
        return found

    # -- ring records ------------------------------------------------------------------

    def record_for(self, node: RedisTransport, epoch: int) -> Record:
        """Return the record ``node`` has once settled in this ring at ``epoch``."""
        return Record(self.placement.fingerprint, epoch, node.name, self.placement.nodes)

    def survey(self, asking: RingNode) -> None:
        """Read ``asking``'s record (every node's, the first time) and judge the nodes.

        A node is settled when its record names this ring, itself and the newest epoch
        seen on any node. A node this process saw settled that has no record any more
        (it restarted without its data: it holds nothing stale) gets its record back.
        """
        with self._lock:
            targets = self.nodes if not self._surveyed else (asking,)
            self._surveyed = True
            records: dict[RingNode, Record | None] = {}
            for node in targets:
                try:
                    records[node] = node.read_record()
                except CacheUnavailable:
                    if node is asking:
                        raise
            newest = max((r.epoch for r in records.values() if r), default=0)
            if newest > self.epoch:
                self.epoch = newest
                for node in self.nodes:
                    node._check_at = 0.0  # judged against an older epoch: again
            for node, record in records.items():
                self._judge(node, record)

    def _judge(self, node: RingNode, record: Record | None) -> None:
        if record is None and node.known and self.epoch:
            node.adopt(self.record_for(node, self.epoch))
            record = node.read_record()
        mine = (
            record is not None
            and record.ring == self.placement.fingerprint
            and record.node == node.name
            and record.epoch == self.epoch
        )
        if record is not None and record.ring != self.placement.fingerprint:
            self._note_other(record)
        if mine:
            node.settled = node.known = True
            self._warned.discard(node.name)
            if all(n.settled for n in self.nodes):
                self.others.clear()
            return
        node.settled = False
        if node.name not in self._warned:
            self._warned.add(node.name)
            logger.error(
                "django_cachestrat: Redis node %r serves %s, not this process's ring %s at "
                "epoch %d; its rows are read from the database until `manage.py "
                "cachestrat_rebalance` settles the ring.",
                node.name,
                f"ring {record.ring} at epoch {record.epoch} as {record.node!r}"
                if record
                else "no ring (no record)",
                self.placement.fingerprint,
                self.epoch,
            )

    def _note_other(self, record: Record) -> None:
        """Remember the ring ``record`` names, to send deletions to its nodes too."""
        if record.ring in self.others or self._connect is None:
            return
        placement = Placement(record.nodes)
        if placement.fingerprint != record.ring:
            return  # not a ring this version of the app builds alike
        transports: dict[str, RedisTransport] = {}
        for alias, _ in record.nodes:
            transport: RedisTransport | None = self.by_alias.get(alias)
            if transport is None:
                try:
                    transport = self._connect(alias)
                except Exception:
                    logger.warning(
                        "django_cachestrat: node %r of the ring the records name is not in "
                        "CACHES; deletions cannot reach it.",
                        alias,
                    )
                    continue
            transports[alias] = transport
        self.others[record.ring] = (placement, transports)

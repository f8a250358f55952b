"""Settle a ring of Redis nodes after a change of ``NODES`` (``manage.py cachestrat_rebalance``).

A process uses a node only while the node's record names the process's ring
(``backends.ring``), so a changed ring reads the database until this has run. It runs
once, at deploy, when no process of the previous ring is left:

1. Every node's write-behind queue (of the new ring and of the previous one) is drained to
   the database: a row's pending writes are on the node that held it, which may not hold
   it any more. A node's queue holds only rows of that node, so each is flushed alone.
2. A node that served the previous ring (its record names it at the newest epoch) keeps
   its entries, but drops those of the rows it gains: it may have held them under an
   earlier ring, and missed the writes made while they were elsewhere.
3. A node that did not (new, back after being removed, no record) loses every key of the
   prefix: anything it holds may be from an earlier ring.
4. The new records are written (the epoch incremented); a node of the previous ring that
   is not in the new one is marked retired, so that no process uses it by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import ImproperlyConfigured

from django_cachestrat import backends, conf, keys
from django_cachestrat.backends import CacheUnavailable, RedisTransport
from django_cachestrat.backends.ring import Placement, Record
from django_cachestrat.write_behind import flusher

#: The ``ring`` a retired node's record names: no process's ring.
RETIRED = "retired"
#: Keys a ``SCAN`` page asks for, and that one ``UNLINK`` drops.
PAGE = 1000


class RebalanceError(Exception):
    """The ring cannot be settled now (a node cannot be reached); nothing was changed."""


@dataclass
class NodeState:
    """What the rebalance found on one node, and what it did."""

    alias: str
    record: Record | None
    served_previous: bool = False  #: its record names the previous ring at the newest epoch
    dropped: int = 0  #: keys deleted (rows it gains, or all of the prefix)
    reachable: bool = True


@dataclass
class Report:
    """What ``run`` found and did."""

    ring: str  #: the new ring's fingerprint
    epoch: int  #: the epoch its records were written with
    previous: Record | None  #: the newest record found (the ring served until now)
    nodes: list[NodeState] = field(default_factory=list)
    retired: list[NodeState] = field(default_factory=list)
    drained: flusher.FlushReport = field(default_factory=flusher.FlushReport)
    changed: bool = True  #: False when every node was settled already


def run(*, force: bool = False) -> Report:
    """Settle the ring ``CACHESTRAT["NODES"]`` names (see the module's docstring).

    Raises ``RebalanceError`` when a node of the new or of the previous ring cannot be
    reached, unless ``force``: then the new ring's unreachable nodes stay unsettled (run
    again when they answer) and the previous ring's are not drained.
    """
    cfg = conf.settings()
    if len(cfg.ring) < 2:
        raise ImproperlyConfigured(
            "CACHESTRAT['NODES'] names fewer than two nodes: there is no ring to rebalance."
        )
    target = Placement(cfg.ring)
    transports: dict[str, RedisTransport] = {}
    states = {alias: _state(alias, transports) for alias, _ in cfg.ring}
    epoch = max((s.record.epoch for s in states.values() if s.record), default=0)
    if epoch:
        newest = [s.record for s in states.values() if s.record and s.record.epoch == epoch]
        previous = next((r for r in newest if r.ring != RETIRED), None)
    else:
        # No node has a record: the first ring, after one server (CACHE_ALIAS) served alone.
        alone = ((cfg.CACHE_ALIAS, 1),)
        previous = Record(Placement(alone).fingerprint, 0, cfg.CACHE_ALIAS, alone)
    leaving = [a for a, _ in previous.nodes if a not in states] if previous else []
    gone = {alias: _state(alias, transports) for alias in leaving}
    everyone = [*states.values(), *gone.values()]
    unreachable = [s.alias for s in everyone if not s.reachable]
    if unreachable and not force:
        raise RebalanceError(
            f"Redis node(s) {', '.join(map(repr, unreachable))} cannot be reached (or are not "
            "in CACHES); nothing was changed. Run again when they answer, or with --force to "
            "leave them out (their pending write-behind writes are then not drained)."
        )
    for state in everyone:
        state.served_previous = previous is not None and (
            (state.record.ring, state.record.epoch, state.record.node)
            == (previous.ring, epoch, state.alias)
            if state.record
            else not epoch and state.alias == previous.node
        )
    if (
        previous
        and previous.ring == target.fingerprint
        and all(s.served_previous for s in states.values())
    ):
        return Report(target.fingerprint, epoch, previous, list(states.values()), changed=False)
    # The same ring settled again (a node was out last time): its epoch is kept.
    new_epoch = epoch if previous and previous.ring == target.fingerprint else epoch + 1
    report = Report(target.fingerprint, new_epoch, previous, list(states.values()))
    # Only the nodes that served the previous ring hold pending writes of now: another
    # node's are from an earlier ring, older than what the database has since.
    for state in (s for s in everyone if s.reachable and s.served_previous):
        report.drained.merge(flusher.drain(reclaim=True, transport=transports[state.alias]))
    before = Placement(previous.nodes) if previous else None
    for state in (s for s in states.values() if s.reachable):
        node = transports[state.alias]
        if state.served_previous and before is not None:
            state.dropped = _drop(node, cfg.KEY_PREFIX, _gained(state.alias, before, target))
        else:
            state.dropped = _drop(node, cfg.KEY_PREFIX, lambda key: True)
    for state in (s for s in gone.values() if s.reachable):
        _write(transports[state.alias], cfg.KEY_PREFIX, Record(RETIRED, new_epoch, state.alias, ()))
        report.retired.append(state)
    for state in (s for s in states.values() if s.reachable):
        record = Record(target.fingerprint, new_epoch, state.alias, target.nodes)
        _write(transports[state.alias], cfg.KEY_PREFIX, record)
        state.record = record
    backends.reset()  # this process's transports read the new records at once
    return report


def _state(alias: str, transports: dict[str, RedisTransport]) -> NodeState:
    """Connect to ``alias`` (a plain transport: no ring gate) and read its record."""
    try:
        node = transports[alias] = backends.connect(alias)
        return NodeState(alias, _read(node, conf.settings().KEY_PREFIX))
    except (CacheUnavailable, ImproperlyConfigured):
        return NodeState(alias, None, reachable=False)


def _read(node: RedisTransport, prefix: str) -> Record | None:
    (raw,) = node.execute([("GET", keys.ring_record(prefix))])
    return Record.loads(raw)


def _write(node: RedisTransport, prefix: str, record: Record) -> None:
    node.execute([("SET", keys.ring_record(prefix), record.dumps())])


def _gained(alias: str, before: Placement, after: Placement):
    """Return a test of keys: a row's that ``alias`` holds under ``after`` and not ``before``.

    Model-level keys (versions, queues), the node's record and the statistics are kept.
    """

    def gains(key: str) -> bool:
        tag = keys.hash_tag(key)
        return ":" in tag and after.owner(tag) == alias and before.owner(tag) != alias

    return gains


def _drop(node: RedisTransport, prefix: str, doomed) -> int:
    """Delete the keys of ``prefix`` on ``node`` that ``doomed(key)`` says; return how many."""
    count = 0
    cursor = 0
    while True:
        ((cursor, names),) = node.execute([("SCAN", cursor, "MATCH", f"{prefix}:*", "COUNT", PAGE)])
        chosen = [name for name in names if doomed(name.decode("utf-8", "replace"))]
        if chosen:
            node.execute([("UNLINK", *chosen)])
            count += len(chosen)
        if int(cursor) == 0:
            return count

r"""Write-behind pending writes in Redis: record, claim, acknowledge, requeue.

A write-behind row has a *view* (a Redis hash of encoded field values: what reads return)
and, while it has unflushed writes, *pending* hashes: the latest value of each field saved
and the sum of each counter's increments. Recording a save merges into both in one Lua
script, so a save is one round trip and counters add up on the server.

Flushing is claim -> write -> acknowledge. A claim moves rows' pending hashes into a
batch and marks the rows busy; an acknowledgement deletes the batch. A batch whose worker
died is reclaimed after the visibility timeout, never lost. While a row is in a batch it
is not claimed again, so two batches of one row never race in the database.

Values are encoded one by one: integers as ASCII digits (so ``HINCRBY`` works on them),
``None`` as ``\x01``, anything else as ``\x00`` + the configured serializer's bytes.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import models

from django_cachestrat import backends, conf, keys, options
from django_cachestrat.backends.redis import wake

_NULL = b"\x01"
_OBJECT = b"\x00"

# ARGV: pk, now (ms), full ('1'/'0'), initial version, nf, nf (name, value) pairs, nd,
# nd (name, amount) pairs, BATCH_SIZE, trigger hold (ms). One HMGET reads what the view
# holds of every field named, so a save costs about ten commands however wide the row.
RECORD = """
local view, fields, deltas, dirty = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local nf = tonumber(ARGV[5])
local d0 = 7 + 2 * nf
local nd = tonumber(ARGV[d0 - 1])
local version = redis.call('GET', KEYS[5])
if not version then
  version = ARGV[4]
  redis.call('SET', KEYS[5], version)
end
local names = {'__p', '__v'}
for j = 1, nf do names[#names + 1] = ARGV[4 + 2 * j] end
for j = 0, nd - 1 do names[#names + 1] = ARGV[d0 + 2 * j] end
local held = redis.call('HMGET', view, unpack(names))
local valid = held[1] == '1' or held[2] == version
if not valid and ARGV[3] ~= '1' then return -1 end
local saved = {}
for j = 1, nf do saved[ARGV[4 + 2 * j]] = ARGV[5 + 2 * j] end
-- An increment adds to the value saved with it, else to the view's.
for j = 1, nd do
  local current = saved[ARGV[d0 + 2 * (j - 1)]] or (valid and held[2 + nf + j])
  if not current or not tonumber(current) then return -2 end
end
if not valid then redis.call('DEL', view) end
-- Only values that differ from the view are writes; a saved value replaces the
-- field's earlier pending increments, which the view (and so the value) included.
local set, changed = {}, {}
for j = 1, nf do
  local value = ARGV[5 + 2 * j]
  if not valid or held[2 + j] ~= value then
    set[#set + 1] = ARGV[4 + 2 * j]
    set[#set + 1] = value
    changed[#changed + 1] = ARGV[4 + 2 * j]
  end
end
if #changed > 0 then
  redis.call('HSET', fields, unpack(set))
  redis.call('HDEL', deltas, unpack(changed))
end
set[#set + 1] = '__p'
set[#set + 1] = '1'
set[#set + 1] = '__v'
set[#set + 1] = version
redis.call('HSET', view, unpack(set))
for j = 0, nd - 1 do
  redis.call('HINCRBY', view, ARGV[d0 + 2 * j], ARGV[d0 + 2 * j + 1])
  redis.call('HINCRBY', deltas, ARGV[d0 + 2 * j], ARGV[d0 + 2 * j + 1])
end
redis.call('PERSIST', view)
redis.call('DEL', KEYS[6])
redis.call('ZADD', dirty, 'NX', ARGV[2], ARGV[1])
-- Enough rows wait for a batch: the first writer to see it queues a flush (the trigger
-- key, held for a flush interval, keeps the others from queueing one each).
if redis.call('ZCARD', dirty) >= tonumber(ARGV[d0 + 2 * nd]) then
  if redis.call('SET', KEYS[7], '1', 'NX', 'PX', ARGV[d0 + 2 * nd + 1]) then return 1 end
end
return 0
"""

READ = """
local out = {redis.call('GET', KEYS[1]) or false}
for i = 2, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
"""

# KEYS: lease, view, waiters, ready. Store a view read from the database only if the
# caller's lease (taken before the read) still holds: a write or an invalidation since
# deleted it. Wake the readers waiting for the fill either way.
FILL = (
    """
local stored = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[2], unpack(ARGV, 3))
  if ARGV[2] ~= '0' then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
  stored = 1
end
"""
    + wake(3, 4)
    + "return stored"
)

# A view is usable when it has pending writes (pinned), or was filled under the model's
# current version: as a row (__v) or as "no such row" (__n, for NEGATIVE_TTL).
_USABLE = """
local function usable(view, version)
  local h = redis.call('HMGET', view, '__p', '__v', '__n')
  return h[1] == '1' or (version and (h[2] == version or h[3] == version))
end
"""

# KEYS: view, lease, version. A reader that missed takes the row's lease, unless a usable
# view arrived since its read ({2, version, view}: another reader filled it). The version
# is created if missing, as RECORD does, and returned: the fill is tagged with it.
ACQUIRE = (
    _USABLE
    + """
local version = redis.call('GET', KEYS[3])
if not version then
  version = ARGV[3]
  redis.call('SET', KEYS[3], version)
end
if usable(KEYS[1], version) then return {2, version, redis.call('HGETALL', KEYS[1])} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, version} end
return {0, version}
"""
)

# KEYS: view, lease, waiters, version. A reader waiting for another's fill: the view if it
# is there ({1, version, view}), {2} if nobody holds the lease any more (take it over),
# else count the reader as waiting ({0}) in the same step, so no wake-up is missed.
WAIT = (
    _USABLE
    + """
local version = redis.call('GET', KEYS[4])
if usable(KEYS[1], version) then return {1, version or '', redis.call('HGETALL', KEYS[1])} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {2} end
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], 30)
return {0}
"""
)

CLAIM = """
local inflight, busy, dirty, members = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local claimed = {}
for j = 1, #ARGV - 2 do
  local pk = ARGV[j + 2]
  local k = 4 + (j - 1) * 4
  if redis.call('ZSCORE', dirty, pk) and redis.call('HEXISTS', busy, pk) == 0 then
    for m = 1, 2 do
      if redis.call('EXISTS', KEYS[k + m]) == 1 then
        redis.call('RENAME', KEYS[k + m], KEYS[k + m + 2])
      end
    end
    redis.call('ZREM', dirty, pk)
    redis.call('HSET', busy, pk, ARGV[1])
    redis.call('SADD', members, pk)
    claimed[#claimed + 1] = pk
  end
end
if #claimed > 0 then redis.call('ZADD', inflight, ARGV[2], ARGV[1]) end
return claimed
"""

RECLAIM = """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline or tonumber(deadline) > tonumber(ARGV[2]) then return false end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return redis.call('SMEMBERS', KEYS[2])
"""

ACK = """
local inflight, busy, dirty, members = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
for j = 1, #ARGV - 2 do
  local pk = ARGV[j + 2]
  local k = 4 + (j - 1) * 3
  redis.call('DEL', KEYS[k + 1], KEYS[k + 2])
  redis.call('HDEL', busy, pk)
  redis.call('SREM', members, pk)
  if not redis.call('ZSCORE', dirty, pk) then
    if redis.call('HDEL', KEYS[k + 3], '__p') == 1 then
      redis.call('EXPIRE', KEYS[k + 3], ARGV[2])
    end
  end
end
if redis.call('SCARD', members) == 0 then redis.call('ZREM', inflight, ARGV[1]) end
return 1
"""

# Put a batch's rows back as pending, under any writes recorded since the claim: newer
# field values win, deltas add up. The rows may be claimed again from ``ARGV[2]`` (ms).
REQUEUE = """
local inflight, busy, dirty, members = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
for j = 1, #ARGV - 2 do
  local pk = ARGV[j + 2]
  local k = 4 + (j - 1) * 4
  local inc = redis.call('HGETALL', KEYS[k + 4])
  for i = 1, #inc, 2 do
    -- A value saved since the claim already includes this increment.
    if redis.call('HEXISTS', KEYS[k + 1], inc[i]) == 0 then
      redis.call('HINCRBY', KEYS[k + 2], inc[i], inc[i + 1])
    end
  end
  local old = redis.call('HGETALL', KEYS[k + 3])
  for i = 1, #old, 2 do redis.call('HSETNX', KEYS[k + 1], old[i], old[i + 1]) end
  redis.call('DEL', KEYS[k + 3], KEYS[k + 4])
  redis.call('HDEL', busy, pk)
  redis.call('SREM', members, pk)
  redis.call('ZADD', dirty, ARGV[2], pk)
end
if redis.call('SCARD', members) == 0 then redis.call('ZREM', inflight, ARGV[1]) end
return 1
"""

DISCARD = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
"""


# KEYS: the row's pending fields, its pending deltas, the model's dirty set. A synchronous
# write of fields ARGV[2..] (a save, an update) replaces the pending writes of those
# fields; a row left with none is no longer dirty.
SUPERSEDE = """
redis.call('HDEL', KEYS[1], unpack(ARGV, 2))
redis.call('HDEL', KEYS[2], unpack(ARGV, 2))
if redis.call('EXISTS', KEYS[1], KEYS[2]) == 0 then redis.call('ZREM', KEYS[3], ARGV[1]) end
return 1
"""


class NeedsView(Exception):
    """The row has no usable view to merge a partial save or an increment into."""


class NotACounter(Exception):
    """An increment named a field whose cached value is not an integer."""


@dataclass
class Batch:
    """A claimed batch: its id and, per pk, the pending field values and deltas."""

    id: str
    rows: dict[Any, tuple[dict[str, Any], dict[str, int]]] = field(default_factory=dict)


def _outcome(pk: Any, deltas: dict[str, int], result: int) -> bool:
    """Turn what ``RECORD`` returned into the flush hint, or raise what it refused."""
    if result == -1:
        raise NeedsView(pk)
    if result == -2:
        names = ", ".join(deltas)
        raise NotACounter(names if len(deltas) == 1 else f"one of {names}")
    return result == 1


def record_all(
    writes: Sequence[
        tuple[type[models.Model], Any, dict[str, Any], dict[str, int], bool, Iterable[str]]
    ],
) -> list[bool | NeedsView | NotACounter]:
    """Record several writes ``(model, pk, fields, deltas, full, superseded)`` at once.

    One round trip. ``superseded`` names fields written synchronously before ``fields``
    and ``deltas``: their earlier pending writes are dropped first (``Buffer.supersede``).
    Each write's outcome is what ``Buffer.record`` would return for it (False when it
    only supersedes), or the ``NeedsView``/``NotACounter`` it would raise. Writes to one
    row must be merged into one beforehand: a refused write does not stop a later one.
    """
    buffers: dict[type[models.Model], Buffer] = {}
    calls: list[tuple] = []
    recorded: list[int | None] = []
    for model, pk, fields, deltas, full, superseded in writes:
        buf = buffers.get(model)
        if buf is None:
            buf = buffers[model] = Buffer(model)
        if superseded:
            calls.append(buf._supersede_call(pk, superseded))
        if fields or deltas:
            recorded.append(len(calls))
            calls.append((buf._script(RECORD), *buf._record_call(pk, fields, deltas, full)))
        else:
            recorded.append(None)
    if not calls:
        return [False] * len(writes)
    results = buf.transport.run_scripts(calls)
    outcomes: list[bool | NeedsView | NotACounter] = []
    for (_, pk, _, deltas, _, _), at in zip(writes, recorded, strict=True):
        try:
            outcomes.append(False if at is None else _outcome(pk, deltas, results[at]))
        except (NeedsView, NotACounter) as exc:
            outcomes.append(exc)
    return outcomes


def member(pk: Any) -> str:
    """Return how a pk is written in the model's queue (``opts.to_pk`` reads it back).

    Whatever its type (an int, a UUID): redis-py takes only str, bytes and numbers.
    """
    return str(pk)


def encode(value: Any) -> bytes:
    """Encode one field value for a view or pending hash."""
    if value is None:
        return _NULL
    if type(value) is int:
        return str(value).encode()
    return _OBJECT + conf.settings().serializer.dumps((value,))


def decode(data: bytes) -> Any:
    """Decode what ``encode`` made."""
    if data == _NULL:
        return None
    if data[:1] == _OBJECT:
        return conf.settings().serializer.loads(data[1:])[0]
    return int(data)


def _pairs(flat: Sequence[bytes]) -> dict[str, bytes]:
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}


class Buffer:
    """The write-behind state in Redis of one model."""

    _scripts: dict[tuple[int, str], Any] = {}

    def __init__(self, model: type[models.Model]):
        self.model = model
        self.opts = options.get(model)
        self.cfg = conf.settings()
        self.transport = backends.get(self.cfg.CACHE_ALIAS)
        self.prefix = self.cfg.KEY_PREFIX
        self.queue = keys.behind_model(self.prefix, self.opts.label)

    def _script(self, source: str):
        client = self.transport.client
        key = (id(client), source)
        script = self._scripts.get(key)
        if script is None:
            script = self._scripts[key] = client.register_script(source)
        return script

    def _run(self, source: str, script_keys: list[str], args: list[Any]) -> Any:
        return self.transport.call(self._script(source), script_keys, args)

    def row(self, pk: Any) -> dict[str, str]:
        """Return the keys of row ``pk``."""
        return keys.behind_row(self.prefix, self.opts.label, self.opts.fingerprint, pk)

    def version_key(self) -> str:
        """Return the model's version key."""
        return keys.version(self.prefix, self.opts.label)

    # -- saves ---------------------------------------------------------------------------

    def record(self, pk: Any, fields: dict[str, Any], deltas: dict[str, int], *, full: bool) -> int:
        """Merge a save (``fields``) and increments (``deltas``) into the row.

        Return True when this write made ``BATCH_SIZE`` rows wait and the caller should
        queue a flush (only one writer is told so per flush interval).

        ``full`` means ``fields`` holds every field, so a missing view may be rebuilt from
        it; otherwise ``NeedsView`` asks the caller to fill the view first.
        """
        result = self._run(RECORD, *self._record_call(pk, fields, deltas, full))
        return _outcome(pk, deltas, result)

    def _record_call(self, pk, fields, deltas, full) -> tuple[list[str], list[Any]]:
        """Return the keys and arguments of ``RECORD`` for one write."""
        row = self.row(pk)
        args: list[Any] = [
            member(pk),
            int(time.time() * 1000),
            "1" if full else "0",
            time.time_ns() // 1000,
            len(fields),
        ]
        for name, value in fields.items():
            args += [name, encode(value)]
        args.append(len(deltas))
        for name, amount in deltas.items():
            args += [name, int(amount)]
        args += [self.cfg.BATCH_SIZE, max(1, int(self.cfg.FLUSH_INTERVAL * 1000))]
        script_keys = [
            row["view"],
            row["fields"],
            row["deltas"],
            self.queue["dirty"],
            self.version_key(),
            row["lease"],
            self.queue["trigger"],
        ]
        return script_keys, args

    def discard(self, pk: Any) -> None:
        """Forget the row's unflushed writes and its view (it was deleted)."""
        row = self.row(pk)
        self._run(
            DISCARD, [row["view"], row["fields"], row["deltas"], self.queue["dirty"]], [member(pk)]
        )

    def supersede(self, items: Sequence[tuple[Any, Sequence[str]]]) -> None:
        """Drop the unflushed writes of fields written synchronously, per ``(pk, attnames)``.

        One round trip. A batch already claimed is not changed (see the README).
        """
        calls = [self._supersede_call(pk, names) for pk, names in items if names]
        if calls:
            self.transport.run_scripts(calls)

    def _supersede_call(self, pk: Any, names: Iterable[str]) -> tuple:
        row = self.row(pk)
        script_keys = [row["fields"], row["deltas"], self.queue["dirty"]]
        return self._script(SUPERSEDE), script_keys, [member(pk), *names]

    def pending_pks(self, among: Sequence[Any] | None = None) -> list[Any]:
        """Return the pks of rows with unflushed writes, claimed or not.

        All of them, or those of ``among`` (checked in Redis, one round trip either way).
        """

        def run():
            pipe = self.transport.client.pipeline(transaction=False)
            if among is None:
                pipe.zrange(self.queue["dirty"], 0, -1)
                pipe.hkeys(self.queue["busy"])
            else:
                members = [member(pk) for pk in among]
                pipe.zmscore(self.queue["dirty"], members)
                pipe.hmget(self.queue["busy"], members)
            return pipe.execute()

        if among is not None and not among:
            return []
        first, second = self.transport.call(run)
        if among is not None:
            return [pk for pk, a, b in zip(among, first, second, strict=True) if a or b]
        return list(dict.fromkeys(self.opts.to_pk(m.decode()) for m in [*first, *second]))

    # -- views ---------------------------------------------------------------------------

    def read(self, pks: Sequence[Any]) -> tuple[bytes | None, list[dict[str, bytes] | None]]:
        """Return the model version and each row's view (None where there is none)."""
        script_keys = [self.version_key(), *(self.row(pk)["view"] for pk in pks)]
        version, *views = self._run(READ, script_keys, [])
        return version or None, [_pairs(v) if v else None for v in views]

    def acquire(self, pks: Sequence[Any], token: str, timeout: float) -> list[tuple]:
        """Take the leases of rows whose views are missing, in one round trip.

        Per pk: ``(2, version, view)`` if a usable view arrived meanwhile, ``(1, version,
        None)`` if the lease is now ours, ``(0, version, None)`` if another reader holds it.
        """
        initial = time.time_ns() // 1000
        ms = max(1, int(timeout * 1000))
        script, version_key = self._script(ACQUIRE), self.version_key()
        calls = [
            (script, [row["view"], row["lease"], version_key], [token, ms, initial])
            for row in map(self.row, pks)
        ]
        return [
            (r[0], r[1], _pairs(r[2]) if len(r) > 2 else None)
            for r in self.transport.run_scripts(calls)
        ]

    def wait(self, slots: Sequence[tuple[str, tuple[str, str, str]]]) -> list[tuple]:
        """Check on fills others hold, per ``(view_key, (lease, waiters, ready))`` slot.

        ``(1, (version, view))`` if the view is there, ``(2, None)`` if nobody holds the
        lease, else ``(0, None)``: the caller is now counted as waiting. The shape of
        ``RedisTransport.wait_many``, for the shared wait loop.
        """
        script, version_key = self._script(WAIT), self.version_key()
        calls = [
            (script, [view, lease, waiters, version_key], []) for view, (lease, waiters, _) in slots
        ]
        return [
            (r[0], (r[1], _pairs(r[2])) if r[0] == 1 else None)
            for r in self.transport.run_scripts(calls)
        ]

    def fill_keys(self, pk: Any) -> tuple[str, str, str]:
        """Return the keys of a fill of row ``pk``: its lease, waiter count and ready list."""
        return keys.fill(self.prefix, self.opts.label, pk)

    def fill(self, token: str, items: Sequence[tuple[Any, dict | None, int, bool]], version: bytes):
        """Store views read from the database where the lease ``token`` still holds.

        Items are ``(pk, values, ttl, pinned)``; ``values`` None stores "no such row".
        One round trip; waiters are woken. Return how many views were stored.
        """
        script = self._script(FILL)
        calls = []
        for pk, values, ttl, pinned in items:
            lease, waiters, ready = self.fill_keys(pk)
            args: list[Any] = [token, 0 if pinned else ttl]
            if values is None:
                args += ["__a", "1", "__n", version]
            else:
                for name, value in values.items():
                    args += [name, encode(value)]
                args += ["__v", version]
                if pinned:
                    args += ["__p", "1"]
            calls.append((script, [lease, self.row(pk)["view"], waiters, ready], args))
        return sum(self.transport.run_scripts(calls)) if calls else 0

    # -- flushing ------------------------------------------------------------------------

    def claim(self, limit: int, visibility: float) -> Batch | None:
        """Claim up to ``limit`` pending rows (a timed-out batch first); None if none wait."""
        client = self.transport.client
        now = int(time.time() * 1000)
        deadline = now + int(visibility * 1000)
        stale = self.transport.call(client.zrangebyscore, self.queue["inflight"], "-inf", now, 0, 1)
        if stale:
            batch_id = stale[0].decode()
            members_key = keys.behind_batch(self.prefix, self.opts.label, batch_id)
            members = self._run(
                RECLAIM, [self.queue["inflight"], members_key], [batch_id, now, deadline]
            )
            if members:
                return self.contents(batch_id, [self.opts.to_pk(m.decode()) for m in members])
        candidates = self.transport.call(
            client.zrangebyscore, self.queue["dirty"], "-inf", now, 0, limit
        )
        if not candidates:
            return None
        batch_id = f"{now:x}-{secrets.token_hex(6)}"
        pks = [self.opts.to_pk(c.decode()) for c in candidates]
        script_keys = self._batch_keys(batch_id)
        for pk in pks:
            row = self.row(pk)
            script_keys += [row["fields"], row["deltas"], *self._batch_row(pk, batch_id)]
        claimed = self._run(CLAIM, script_keys, [batch_id, deadline, *map(member, pks)])
        if not claimed:
            return None
        return self.contents(batch_id, [self.opts.to_pk(c.decode()) for c in claimed])

    def contents(self, batch_id: str, pks: Iterable[Any]) -> Batch:
        """Read what batch ``batch_id`` holds for ``pks``."""
        pks = list(pks)

        def run():
            pipe = self.transport.client.pipeline(transaction=False)
            for pk in pks:
                for key in self._batch_row(pk, batch_id):
                    pipe.hgetall(key)
            return pipe.execute()

        results = self.transport.call(run)
        batch = Batch(batch_id)
        for n, pk in enumerate(pks):
            fields = {k.decode(): decode(v) for k, v in results[2 * n].items()}
            deltas = {k.decode(): int(v) for k, v in results[2 * n + 1].items()}
            batch.rows[pk] = (fields, deltas)
        return batch

    def ack(self, batch_id: str, pks: Sequence[Any], ttl: int) -> None:
        """Forget rows ``pks`` of the batch (they are in the database); unpin their views."""
        script_keys = self._batch_keys(batch_id)
        for pk in pks:
            script_keys += [*self._batch_row(pk, batch_id), self.row(pk)["view"]]
        self._run(ACK, script_keys, [batch_id, ttl, *map(member, pks)])

    def requeue(self, batch_id: str, pks: Sequence[Any], delay: float) -> None:
        """Put rows of the batch back as pending, claimable again after ``delay`` seconds."""
        script_keys = self._batch_keys(batch_id)
        for pk in pks:
            row = self.row(pk)
            script_keys += [row["fields"], row["deltas"], *self._batch_row(pk, batch_id)]
        when = int((time.time() + delay) * 1000)
        self._run(REQUEUE, script_keys, [batch_id, when, *map(member, pks)])

    def drop_view(self, pk: Any) -> None:
        """Delete a row's view (its writes were dead-lettered: the view is not the row)."""
        self.transport.call(self.transport.client.delete, self.row(pk)["view"])

    def _batch_keys(self, batch_id: str) -> list[str]:
        q = self.queue
        members = keys.behind_batch(self.prefix, self.opts.label, batch_id)
        return [q["inflight"], q["busy"], q["dirty"], members]

    def _batch_row(self, pk: Any, batch_id: str) -> tuple[str, str]:
        return keys.behind_batch_row(self.prefix, self.opts.label, pk, batch_id)

    def expire_inflight(self) -> None:
        """Make every batch in flight reclaimable now (its workers are known to be gone)."""

        def run() -> None:
            client = self.transport.client
            batches = client.zrange(self.queue["inflight"], 0, -1)
            if batches:
                client.zadd(self.queue["inflight"], {b: 0 for b in batches}, xx=True)

        self.transport.call(run)

    def release_trigger(self) -> None:
        """Let the next size trigger queue another flush (one has started)."""
        self.transport.call(self.transport.client.delete, self.queue["trigger"])

    # -- looking -------------------------------------------------------------------------

    def pending(self, pks: Sequence[Any]) -> dict[Any, list[tuple[str | None, dict, dict]]]:
        """Return, for each of ``pks`` with unflushed writes, its layers of writes.

        Oldest first: ``(batch_id, fields, deltas)`` for a batch in flight, then
        ``(None, fields, deltas)`` for writes not yet claimed.
        """

        def run():
            pipe = self.transport.client.pipeline(transaction=False)
            for pk in pks:
                row = self.row(pk)
                pipe.hget(self.queue["busy"], member(pk))
                pipe.hgetall(row["fields"])
                pipe.hgetall(row["deltas"])
            return pipe.execute()

        results = self.transport.call(run)
        layers: dict[Any, list[tuple[str | None, dict, dict]]] = {}
        in_flight = []
        for n, pk in enumerate(pks):
            busy, fields, deltas = results[3 * n : 3 * n + 3]
            if busy:
                in_flight.append((pk, busy.decode()))
            if fields or deltas:
                layers.setdefault(pk, []).append(
                    (
                        None,
                        {k.decode(): decode(v) for k, v in fields.items()},
                        {k.decode(): int(v) for k, v in deltas.items()},
                    )
                )
        for pk, batch_id in in_flight:
            fields, deltas = self.contents(batch_id, [pk]).rows[pk]
            layers.setdefault(pk, []).insert(0, (batch_id, fields, deltas))
        return layers

    def counts(self) -> tuple[int, int]:
        """Return ``(rows waiting to be claimed, batches in flight)``."""

        def run():
            pipe = self.transport.client.pipeline(transaction=False)
            pipe.zcard(self.queue["dirty"])
            pipe.zcard(self.queue["inflight"])
            return pipe.execute()

        waiting, flying = self.transport.call(run)
        return waiting, flying

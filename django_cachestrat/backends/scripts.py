"""Every Lua script the app runs, in one registry, and what their replies mean.

A ``Script`` knows its source and its SHA1 (computed here, so sending it costs no
``SCRIPT LOAD`` round trip until Redis says it lost it). Each script touches the keys of
one row (one hash tag) or of one model, never both, except where its comment says so.
Replies that are status codes are read through the ``IntEnum`` next to the script.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Script:
    """A Lua script: its name (for errors and logs), its source and its SHA1."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


#: Every script of the app, by name.
REGISTRY: dict[str, Script] = {}


def _script(name: str, source: str) -> Script:
    script = REGISTRY[name] = Script(name, source)
    return script


class Acquired(enum.IntEnum):
    """What a reader that missed got from ``ACQUIRE``/``VIEW_ACQUIRE``."""

    HELD = 0  #: another reader holds the lease: wait for its fill
    TAKEN = 1  #: the lease is ours: read the database and fill
    FILLED = 2  #: a usable value arrived since the read: here it is


class Waited(enum.IntEnum):
    """What a reader waiting for another's fill got from ``WAIT``/``VIEW_WAIT``."""

    WAITING = 0  #: still filling; the reader is now counted among the waiters
    READY = 1  #: the value is there
    TAKE_OVER = 2  #: nobody holds the lease any more: take it


class LookupFilled(enum.IntEnum):
    """What ``LOOKUP_FILL`` stored."""

    NOTHING = 0  #: the pointer's lease was no longer ours
    POINTER = 1  #: the pointer; the row was kept out (a tombstone, a lease or an entry)
    BOTH = 2  #: the pointer and the row's entry


class Recorded(enum.IntEnum):
    """What ``RECORD`` did with a write-behind write."""

    RECORDED = 0
    FLUSH_NOW = 1  #: recorded, and enough rows wait: this writer queues a flush
    NEEDS_VIEW = -1  #: refused: a partial write needs the row's view, and there is none
    NOT_A_COUNTER = -2  #: refused: an increment of a field that is NULL or not an integer
    DUPLICATE = 2  #: this write (its writer and number) was recorded already: nothing done


def _fill(store: str, push: str = "'1'", hold: str = "5") -> str:
    """Lua of a fill (KEYS: lease, value, waiters, ready; ARGV[1]: the filler's token).

    ``store`` stores the value, run only while the filler still holds the lease (an
    invalidation deletes it, so a reader that read the old row before a write committed
    can no longer store it); the lease is deleted with it. Either way, the readers
    waiting for the fill are woken: ``push`` (Lua) is what each finds on the ready list,
    which lives ``hold`` (Lua) seconds.
    """
    return (
        "local stored = 0\n"
        "local push = '1'\n"
        "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
        f"{store}"
        "  redis.call('DEL', KEYS[1])\n"
        "  stored = 1\n"
        f"  push = {push}\n"
        "end\n" + _wake(3, 4, "push", hold) + "return stored"
    )


def _waiter(found: str) -> str:
    """Lua of a reader waiting for another's fill (KEYS: value, lease, waiters, ...).

    ``found`` returns ``{1, ...}`` when the value is there. Else TAKE_OVER if nobody holds
    the lease any more, else the reader is counted as waiting, in the same step, so no
    wake-up is missed.
    """
    return (
        found
        + """
if redis.call('EXISTS', KEYS[2]) == 0 then return {2} end
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], 30)
return {0}
"""
    )


def _wake(waiters: int, ready: int, push: str = "'1'", hold: str = "5") -> str:
    # Wake the readers waiting for a fill: one item each on the ready list, ``push`` (Lua):
    # '1' (look again) or the value itself (a waiter then needs no other round trip).
    return f"""
local waiting = tonumber(redis.call('GET', KEYS[{waiters}]) or '0')
if waiting > 0 then
  for i = 1, waiting do redis.call('RPUSH', KEYS[{ready}], {push}) end
  redis.call('EXPIRE', KEYS[{ready}], {hold})
  redis.call('DEL', KEYS[{waiters}])
end
"""


# -- entries (cache-aside and write-through) -----------------------------------------------

# KEYS: lease, entry, waiters, ready. Fill a missed row only if the caller still holds the
# lease it took before reading the database: an invalidation deletes the lease, so a
# reader that read the old row before a write committed can no longer store it. Either
# way, the readers waiting for the fill are woken: with the entry itself when it was
# stored. The ready list lives no longer than the entry, and every invalidation and
# write-through end deletes it, so what a waiter pops was the entry since it began.
FILL = _script(
    "fill",
    _fill(
        "  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])\n",
        push="ARGV[2]",
        hold="math.min(5, tonumber(ARGV[3]))",
    ),
)

# KEYS: lease, waiters, ready. A filler that failed gives its lease back and wakes the
# waiters, so one of them takes over at once.
RELEASE = _script(
    "release",
    "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end\n"
    + _wake(2, 3)
    + "return 1",
)

# KEYS: entry, lease, waiters. A reader that missed takes the lease, unless a value arrived
# since its read (another reader filled it): then it gets the value, and reads no
# database. ARGV[3] is the unusable value the reader saw (an old version's, another
# schema's, unreadable), if any; ARGV[4] '1': a reader that finds the lease held will
# wait, so it is counted among the waiters here (the filler then pushes it the value: one
# BLPOP, no WAIT).
ACQUIRE = _script(
    "acquire",
    """
local value = redis.call('GET', KEYS[1])
if value and value ~= ARGV[3] then return {2, value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1} end
if ARGV[4] == '1' then  -- it will wait: count it now, and it needs no WAIT before BLPOP
  redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], 30)
end
return {0}
""",
)

# KEYS: entry, lease, waiters. A reader that missed while another fills: the value if it
# arrived meanwhile; TAKE_OVER if nobody holds the lease any more; else count the reader
# as waiting, in the same step, so no wake-up is missed.
WAIT = _script(
    "wait",
    _waiter(
        """
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
"""
    ),
)

# KEYS: the pointer's lease, the pointer, its waiters and ready list, then the row's entry,
# lease and tombstone. This one spans a lookup value's keys and its row's (two hash tags;
# see the README on Redis Cluster). A lookup filler read the row by value under the
# pointer's lease, so it could not take the row's lease first. It stores the pointer while
# its lease holds, as FILL does; and with it the row, unless the row's tombstone is there
# (an invalidation came, maybe after the read: the tombstone outlives the lease, so one
# set after the read is still there), another reader holds the row's lease (it fills the
# row), or an entry is there (a write-through store or another fill: kept). Either way,
# the readers waiting for the pointer are woken.
# ARGV: token, pk, pointer TTL, entry, entry TTL.
LOOKUP_FILL = _script(
    "lookup_fill",
    """
local stored = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  redis.call('DEL', KEYS[1])
  stored = 1
  if redis.call('EXISTS', KEYS[7], KEYS[6], KEYS[5]) == 0 then
    redis.call('SET', KEYS[5], ARGV[4], 'EX', ARGV[5])
    stored = 2
  end
end
"""
    + _wake(3, 4)
    + "return stored",
)

# A write-through save announces itself before its commit: it joins the set of writes in
# flight (each with a deadline, so a writer that died or rolled back drops out by itself)
# and takes the next epoch. The epoch starts from the clock, never from 1, so a writer
# that outlived an expired epoch key cannot match a fresh one.
WRITE_BEGIN = _script(
    "write_begin",
    """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + window * 1000000, ARGV[1])
redis.call('EXPIRE', KEYS[1], window + 1)
redis.call('SET', KEYS[2], now, 'NX')
local epoch = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], window + 1)
return {epoch, redis.call('ZCARD', KEYS[1])}
""",
)

# KEYS: in-flight set, epoch, entry, lease, tombstone, ready list (deleted: what a fill
# pushed there is older than this write). After commit: store the saved row
# only when no other write of the row overlapped this one (none in flight when it began,
# none begun since). Otherwise the commit order is unknown, so delete the entry and let
# the next read fill from the database; a drop leaves the row's tombstone for ARGV[6] ms
# (none if '0'), as every invalidation does.
WRITE_END = _script(
    "write_end",
    """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[4], KEYS[6])
if ARGV[3] == '0' and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
  return 1
end
if ARGV[6] ~= '0' then redis.call('SET', KEYS[5], '1', 'PX', ARGV[6]) end
redis.call('DEL', KEYS[3])
return 0
""",
)

# A model's version: created from the clock when missing (an evicted or lost version key
# must never bring back entries tagged with an old number), incremented to bump.
VERSION = _script(
    "version",
    """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
if ARGV[2] == '1' then return tostring(redis.call('INCR', KEYS[1])) end
return v
""",
)

# -- write-behind: recording writes -----------------------------------------------------------

# The signed records of a deltas hash's increments (``signing``): beside each field of a
# deltas hash ``D`` (pending, in a batch, set aside by a direct write), the list ``D:name``
# holds one signed record per increment Redis summed into it, so a flush can write what
# verifies rather than the sum. The lists follow their hash's fields wherever the scripts
# move, merge or drop them. Their names are built from the hash's, so they share its hash
# tag (the row's): like CUT's batch keys, they are not in KEYS.
_INCREMENTS = """
local function incs(deltas, name) return deltas .. ':' .. name end
-- Append the list src to dst (renamed if dst has none); src is gone after.
local function append_incs(src, dst)
  if redis.call('EXISTS', src) == 0 then return end
  if redis.call('EXISTS', dst) == 0 then
    redis.call('RENAME', src, dst)
    return
  end
  local n = redis.call('LLEN', src)
  for i = 0, n - 1, 1000 do
    redis.call('RPUSH', dst, unpack(redis.call('LRANGE', src, i, i + 999)))
  end
  redis.call('DEL', src)
end
-- Drop the lists of these fields of a deltas hash (a list of names).
local function drop_incs(deltas, names)
  for _, name in ipairs(names) do redis.call('DEL', incs(deltas, name)) end
end
-- Drop the lists of every field of a deltas hash (before the hash goes).
local function drop_all_incs(deltas)
  drop_incs(deltas, redis.call('HKEYS', deltas))
end
"""

# KEYS: view, pending fields, pending deltas, dirty set, version, lease, trigger, seen,
# busy, first. This one spans a row and its model (the dirty set, the version): see the
# README on Redis Cluster. ARGV: pk, now (ms), full ('1'/'0'), initial version, nf, nf
# (name, value, view value) triples, nd, nd (name, amount, signed record) triples,
# BATCH_SIZE, trigger hold (ms), ns, ns names, writer id, write number, seen TTL (s), the
# writer's schema fingerprint. A value is its pending form (signed); the view's is the
# same bytes ('' says so) but for a counter's, plain digits that HINCRBY adds to. A record
# ('' when signing is off) goes to the list beside the deltas hash's field.
# Each writer (a thread) numbers its writes; ``seen`` keeps, per writer, the highest
# number recorded and a mask of the 30 before it, so a write sent again after its reply
# timed out (the server may have run it anyway) is recorded once (the IPsec anti-replay
# window; a writer sends a row one write at a time, so 30 is plenty).
# The ns names are fields written to the database directly since the row's pending
# writes (a save, an update): their pending writes are dropped first, and the view's
# value of them is not trusted. With no field and no delta, that is all it does (and a row
# left with nothing unflushed, in no batch, forgets when it was first written). One
# HMGET reads what the view holds of every field named, so a save costs about ten
# commands however wide the row. A view written by another schema (its __f, during a
# rolling deploy) is no view: a write never merges into values it cannot read, and a
# full save replaces it.
RECORD = _script(
    "record",
    _INCREMENTS
    + """
local view, fields, deltas, dirty = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local nf = tonumber(ARGV[5])
local d0 = 7 + 3 * nf
local nd = tonumber(ARGV[d0 - 1])
local s0 = d0 + 3 * nd + 2
local ns = tonumber(ARGV[s0])
local w0 = s0 + ns + 1
local writer, number, fp = ARGV[w0], tonumber(ARGV[w0 + 1]), ARGV[w0 + 3]
local last, mask = 0, 0
local state = redis.call('HGET', KEYS[8], writer)
if state then
  local a, b = string.match(state, '(%d+):(%d+)')
  last, mask = tonumber(a), tonumber(b)
end
if number <= last then
  local back = last - number
  if back >= 30 or bit.band(mask, bit.lshift(1, back)) ~= 0 then return 2 end
  mask = bit.bor(mask, bit.lshift(1, back))
else
  local ahead = number - last
  mask = ahead >= 30 and 1 or bit.bor(bit.band(bit.lshift(mask, ahead), 1073741823), 1)
  last = number
end
local function seen()
  redis.call('HSET', KEYS[8], writer, last .. ':' .. mask)
  -- Set when the writer is new to the row, not at every write (a command saved on the hot
  -- path): a duplicate only ever follows its original by a stall's length.
  if not state then redis.call('EXPIRE', KEYS[8], ARGV[w0 + 2]) end
end
local void = {}
if ns > 0 then
  local names = {}
  for j = 1, ns do names[j] = ARGV[s0 + j]; void[ARGV[s0 + j]] = true end
  redis.call('HDEL', fields, unpack(names))
  redis.call('HDEL', deltas, unpack(names))
  drop_incs(deltas, names)
  if nf == 0 and nd == 0 then
    if redis.call('EXISTS', fields, deltas) == 0 then
      redis.call('ZREM', dirty, ARGV[1])
      if redis.call('HEXISTS', KEYS[9], ARGV[1]) == 0 then redis.call('HDEL', KEYS[10], ARGV[1]) end
    end
    seen()
    return 0
  end
end
local version = redis.call('GET', KEYS[5])
if not version then
  version = ARGV[4]
  redis.call('SET', KEYS[5], version)
end
local names = {'__p', '__v', '__f'}
for j = 1, nf do names[#names + 1] = ARGV[3 + 3 * j] end
for j = 0, nd - 1 do names[#names + 1] = ARGV[d0 + 3 * j] end
local held = redis.call('HMGET', view, unpack(names))
local valid = held[3] == fp and (held[1] == '1' or held[2] == version)
if not valid and ARGV[3] ~= '1' then return -1 end
-- What the view holds of saved field j: its pending value, or its own plain one.
local function shown(j)
  local v = ARGV[5 + 3 * j]
  if v == '' then return ARGV[4 + 3 * j] end
  return v
end
local saved = {}
for j = 1, nf do saved[ARGV[3 + 3 * j]] = shown(j) end
-- An increment adds to the value saved with it, else to the view's.
for j = 1, nd do
  local name = ARGV[d0 + 3 * (j - 1)]
  local current = saved[name] or (valid and held[3 + nf + j])
  if not current or not tonumber(current) then return -2 end
end
if not valid then redis.call('DEL', view) end
-- Only values that differ from the view are writes; a saved value replaces the
-- field's earlier pending increments, which the view (and so the value) included.
local set, show, changed = {}, {}, {}
for j = 1, nf do
  local name, value = ARGV[3 + 3 * j], shown(j)
  if not valid or void[name] or held[3 + j] ~= value then
    set[#set + 1] = name
    set[#set + 1] = ARGV[4 + 3 * j]
    show[#show + 1] = name
    show[#show + 1] = value
    changed[#changed + 1] = name
  end
end
if #changed > 0 then
  redis.call('HSET', fields, unpack(set))
  redis.call('HDEL', deltas, unpack(changed))
  drop_incs(deltas, changed)
end
show[#show + 1] = '__p'
show[#show + 1] = '1'
show[#show + 1] = '__v'
show[#show + 1] = version
show[#show + 1] = '__f'
show[#show + 1] = fp
redis.call('HSET', view, unpack(show))
for j = 0, nd - 1 do
  local name, amount, record = ARGV[d0 + 3 * j], ARGV[d0 + 3 * j + 1], ARGV[d0 + 3 * j + 2]
  redis.call('HINCRBY', view, name, amount)
  redis.call('HINCRBY', deltas, name, amount)
  if record ~= '' then redis.call('RPUSH', incs(deltas, name), record) end
end
redis.call('PERSIST', view)
redis.call('DEL', KEYS[6])
seen()
redis.call('ZADD', dirty, 'NX', ARGV[2], ARGV[1])
-- Enough rows wait for a batch: the first writer to see it queues a flush (the trigger
-- key, held for a flush interval, keeps the others from queueing one each).
if redis.call('ZCARD', dirty) >= tonumber(ARGV[d0 + 3 * nd]) then
  if redis.call('SET', KEYS[7], '1', 'NX', 'PX', ARGV[d0 + 3 * nd + 1]) then return 1 end
end
return 0
""",
)

# -- write-behind: views ------------------------------------------------------------------------

# KEYS: the model's version, then views. The version and every view, in one step.
VIEW_READ = _script(
    "view_read",
    """
local out = {redis.call('GET', KEYS[1]) or false}
for i = 2, #KEYS do out[i] = redis.call('HGETALL', KEYS[i]) end
return out
""",
)

# KEYS: lease, view, waiters, ready. ARGV: token, TTL ('0': none), then the view's (name,
# value) pairs, its __v and __f among them. Store a view read from the database only if
# the caller's lease (taken before the read) still holds: a write or an invalidation since
# deleted it. It replaces whatever is there (another schema's view too). Wake the readers
# waiting for the fill either way.
VIEW_FILL = _script(
    "view_fill",
    _fill(
        """  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], unpack(ARGV, 3))
  if ARGV[2] ~= '0' then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
"""
    ),
)

# KEYS: view, lease, version, pending fields, pending deltas. ARGV: ttl, initial version,
# the schema fingerprint, then (name, value) pairs. After a new row's insert commits: store
# its view, unless one as new of this schema is there (pinned by a write-behind write, or
# filled under the current version by a reader since the commit) or the row has pending
# writes (a read rebuilds the view with them). The lease goes either way, as an
# invalidation's does: a reader that took it before the commit may have read "no such
# row", and must not store that.
VIEW_STORE = _script(
    "view_store",
    """
local version = redis.call('GET', KEYS[3])
if not version then
  version = ARGV[2]
  redis.call('SET', KEYS[3], version)
end
redis.call('DEL', KEYS[2])
local held = redis.call('HMGET', KEYS[1], '__p', '__v', '__f')
if held[3] == ARGV[3] and (held[1] == '1' or held[2] == version) then return 0 end
redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[4], KEYS[5]) > 0 then return 0 end
local values = {unpack(ARGV, 4)}
values[#values + 1] = '__v'
values[#values + 1] = version
values[#values + 1] = '__f'
values[#values + 1] = ARGV[3]
redis.call('HSET', KEYS[1], unpack(values))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
""",
)

# A view is usable when the reader's schema wrote it (__f: its fingerprint) and it has
# pending writes (pinned), or was filled under the model's current version: as a row
# (__v) or as "no such row" (__n, for NEGATIVE_TTL). Another schema's view (a rolling
# deploy) is a miss: the reader fills its own over it.
_USABLE = """
local function usable(view, version, fp)
  local h = redis.call('HMGET', view, '__p', '__v', '__n', '__f')
  if h[4] ~= fp then return false end
  return h[1] == '1' or (version and (h[2] == version or h[3] == version))
end
"""

# KEYS: view, lease, version. ARGV: token, lease ms, initial version, schema fingerprint.
# A reader that missed takes the row's lease, unless a usable view arrived since its read
# (another reader filled it). The version is created if missing, as RECORD does, and
# returned: the fill is tagged with it.
VIEW_ACQUIRE = _script(
    "view_acquire",
    _USABLE
    + """
local version = redis.call('GET', KEYS[3])
if not version then
  version = ARGV[3]
  redis.call('SET', KEYS[3], version)
end
if usable(KEYS[1], version, ARGV[4]) then return {2, version, redis.call('HGETALL', KEYS[1])} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, version} end
return {0, version}
""",
)

# KEYS: view, lease, waiters, version; ARGV: the schema fingerprint. A reader waiting for
# another's fill: the view if it is there (and of its schema), TAKE_OVER if nobody holds
# the lease any more, else count the reader as waiting in the same step, so no wake-up is
# missed.
VIEW_WAIT = _script(
    "view_wait",
    _waiter(
        _USABLE
        + """
local version = redis.call('GET', KEYS[4])
if usable(KEYS[1], version, ARGV[1]) then
  return {1, version or '', redis.call('HGETALL', KEYS[1])}
end
"""
    ),
)

# -- write-behind: the flush queue ------------------------------------------------------------
# These span the model's queue keys and its rows' pending keys: one script per batch.

# KEYS: inflight, busy, dirty, members, first, then per pk: fields, deltas, batch fields,
# batch deltas. ARGV: batch id, deadline (ms), pks. Moves each claimable row's pending
# writes into the batch and marks it busy. Out of the dirty set, a row's score (when it
# was first written) goes to the first hash, where a requeued row's older one is kept.
CLAIM = _script(
    "claim",
    _INCREMENTS
    + """
local inflight, busy, dirty, members, first = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local claimed = {}
for j = 1, #ARGV - 2 do
  local pk = ARGV[j + 2]
  local k = 5 + (j - 1) * 4
  local since = redis.call('ZSCORE', dirty, pk)
  if since and redis.call('HEXISTS', busy, pk) == 0 then
    redis.call('HSETNX', first, pk, since)
    for _, name in ipairs(redis.call('HKEYS', KEYS[k + 2])) do
      append_incs(incs(KEYS[k + 2], name), incs(KEYS[k + 4], name))
    end
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
""",
)

# KEYS: inflight, members. Take over a batch whose deadline passed: a new deadline, and
# its pks.
RECLAIM = _script(
    "reclaim",
    """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline or tonumber(deadline) > tonumber(ARGV[2]) then return false end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return redis.call('SMEMBERS', KEYS[2])
""",
)

# Whether the caller's claim of batch ARGV[1] (its deadline, ARGV[3]) is still the batch's:
# a worker that stalled past its deadline while another reclaimed the batch is not its
# owner any more (see queue.py).
_OWNED = """
local claim = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not claim or tonumber(claim) ~= tonumber(ARGV[3]) then return 0 end
"""

# KEYS: inflight, busy, dirty, members, first, then per pk: batch fields, batch deltas,
# view. ARGV: batch id, ttl, claim deadline, pks. Forget rows of a batch that are in the
# database; unpin their views. A row's writes since the claim are in the dirty set, scored
# by when they were made: its first entry, the batch's, goes. 0 if the claim is not ours.
ACK = _script(
    "ack",
    _OWNED
    + _INCREMENTS
    + """
local inflight, busy, dirty, members, first = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
for j = 1, #ARGV - 3 do
  local pk = ARGV[j + 3]
  local k = 5 + (j - 1) * 3
  drop_all_incs(KEYS[k + 2])
  redis.call('DEL', KEYS[k + 1], KEYS[k + 2])
  redis.call('HDEL', busy, pk)
  redis.call('HDEL', first, pk)
  redis.call('SREM', members, pk)
  if not redis.call('ZSCORE', dirty, pk) then
    if redis.call('HDEL', KEYS[k + 3], '__p') == 1 then
      redis.call('EXPIRE', KEYS[k + 3], ARGV[2])
    end
  end
end
if redis.call('SCARD', members) == 0 then redis.call('ZREM', inflight, ARGV[1]) end
return 1
""",
)

# KEYS as CLAIM's; ARGV: batch id, when, claim deadline, pks. Put a batch's rows back as
# pending, under any writes recorded since the claim: newer field values win, deltas add
# up. Claimable again from ARGV[2] (ms); the dirty score is then that time, so the first
# hash keeps when the row was first written. 0 if the claim is not ours.
REQUEUE = _script(
    "requeue",
    _OWNED
    + _INCREMENTS
    + """
local inflight, busy, dirty, members = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
for j = 1, #ARGV - 3 do
  local pk = ARGV[j + 3]
  local k = 5 + (j - 1) * 4
  local inc = redis.call('HGETALL', KEYS[k + 4])
  for i = 1, #inc, 2 do
    -- A value saved since the claim already includes this increment.
    if redis.call('HEXISTS', KEYS[k + 1], inc[i]) == 0 then
      redis.call('HINCRBY', KEYS[k + 2], inc[i], inc[i + 1])
      append_incs(incs(KEYS[k + 4], inc[i]), incs(KEYS[k + 2], inc[i]))
    else
      redis.call('DEL', incs(KEYS[k + 4], inc[i]))
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
""",
)

# -- write-behind: direct writes over pending ones ---------------------------------------------

# KEYS: the row's pending fields and deltas, the model's dirty set, busy hash and cuts, the
# cut's fields, deltas, batch fields and batch deltas, the model's first-write hash.
# ARGV: pk, cut id, deadline (ms), the row's key tag, field names.
# A direct write of these fields (a save, an update) is about to commit: set their pending
# writes aside, those not claimed and those in the row's batch in flight (whose keys are
# built from the row's tag: they share its hash tag), so no flush writes them over it.
# Settled by CUT_SETTLE: dropped if the direct write committed, put back if it rolled
# back. Returns its member of the cuts set (``pk|cut id|batch``), or nil if nothing was
# set aside.
CUT = _script(
    "cut",
    _INCREMENTS
    + """
local fields, deltas, dirty, busy, cuts = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local pk = ARGV[1]
local function move(src, dst, name)
  local v = redis.call('HGET', src, name)
  if not v then return 0 end
  redis.call('HSET', dst, name, v)
  redis.call('HDEL', src, name)
  return 1
end
-- A delta goes with its signed records.
local function move_delta(src, dst, name)
  if move(src, dst, name) == 0 then return 0 end
  append_incs(incs(src, name), incs(dst, name))
  return 1
end
local moved = 0
for j = 5, #ARGV do
  moved = moved + move(fields, KEYS[6], ARGV[j]) + move_delta(deltas, KEYS[7], ARGV[j])
end
local batch = redis.call('HGET', busy, pk)
if moved > 0 and redis.call('EXISTS', fields, deltas) == 0 then
  redis.call('ZREM', dirty, pk)
  if not batch then redis.call('HDEL', KEYS[10], pk) end
end
local taken = 0
if batch then
  local bf = ARGV[4] .. ':wb:' .. batch .. ':fields'
  local bd = ARGV[4] .. ':wb:' .. batch .. ':deltas'
  for j = 5, #ARGV do
    taken = taken + move(bf, KEYS[8], ARGV[j]) + move_delta(bd, KEYS[9], ARGV[j])
  end
end
if moved + taken == 0 then return false end
local entry = pk .. '|' .. ARGV[2] .. '|' .. (taken > 0 and batch or '')
redis.call('ZADD', cuts, ARGV[3], entry)
return entry
""",
)

# KEYS: cuts, the row's pending fields and deltas, dirty, the cut's four hashes, and where
# its batch part goes back to (the batch's own hashes, or the pending ones again).
# ARGV: the cuts member, pk, restore ('1': the direct write rolled back; '0': it
# committed, drop what it set aside), keep the batch part ('1'/'0': not if that batch
# is in the database already), now (ms). Put back under what was written since: newer
# values win, and a value saved since already includes the increments set aside.
CUT_SETTLE = _script(
    "cut_settle",
    _INCREMENTS
    + """
local function merge(sf, sd, df, dd)
  local n = 0
  local inc = redis.call('HGETALL', sd)
  for i = 1, #inc, 2 do
    if redis.call('HEXISTS', df, inc[i]) == 0 then
      redis.call('HINCRBY', dd, inc[i], inc[i + 1])
      append_incs(incs(sd, inc[i]), incs(dd, inc[i]))
    end
    n = n + 1
  end
  local old = redis.call('HGETALL', sf)
  for i = 1, #old, 2 do redis.call('HSETNX', df, old[i], old[i + 1]); n = n + 1 end
  return n
end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[3] == '1' then
  local n = merge(KEYS[5], KEYS[6], KEYS[2], KEYS[3])
  if ARGV[4] == '1' then
    local b = merge(KEYS[7], KEYS[8], KEYS[9], KEYS[10])
    if KEYS[9] == KEYS[2] then n = n + b end
  end
  if n > 0 then redis.call('ZADD', KEYS[4], 'NX', ARGV[5], ARGV[2]) end
end
drop_all_incs(KEYS[6])
drop_all_incs(KEYS[8])
redis.call('DEL', KEYS[5], KEYS[6], KEYS[7], KEYS[8])
return 1
""",
)

# Statistics: add one process's counters of one minute to the totals and to that
# minute's bucket. KEYS: the totals hash, the minute's hash. ARGV: the bucket's life in
# seconds, the time counting began (kept if the totals have one), then field, amount
# pairs. Keys of the ``{stats}`` hash tag only.
STATS_ADD = _script(
    "STATS_ADD",
    """
redis.call('HSETNX', KEYS[1], '|since', ARGV[2])
for i = 3, #ARGV, 2 do
  local n = tonumber(ARGV[i + 1])
  redis.call('HINCRBY', KEYS[1], ARGV[i], n)
  redis.call('HINCRBY', KEYS[2], ARGV[i], n)
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return 1
""",
)

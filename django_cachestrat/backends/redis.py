"""Transport: every Redis call the app makes, its Lua scripts, and the circuit breaker.

Policy (when to read, fill or invalidate) lives in ``strategies``; this module only moves
bytes. Every public method raises ``CacheUnavailable`` instead of a Redis error, and after
a failure it raises at once, without touching the network, for ``FAILURE_COOLDOWN``
seconds, so a dead Redis costs callers nothing but a database read. Invalidations that
could not be sent are kept (bounded) and replayed before anything else once Redis answers
again, so an outage does not leave stale rows behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import DataError, NoScriptError, RedisError

from django_cachestrat import signals

logger = logging.getLogger("django_cachestrat")


class CacheUnavailable(Exception):
    """Redis could not be used for this call; the caller falls back to the database."""


# Fill a missed row only if the caller still holds the lease it took before reading the
# database. An invalidation deletes the lease, so a reader that read the old row before a
# write committed can no longer store it afterwards.
def wake(waiters: int, ready: int) -> str:
    """Lua that wakes the readers waiting for a fill: one token each on the ready list."""
    return f"""
local waiting = tonumber(redis.call('GET', KEYS[{waiters}]) or '0')
if waiting > 0 then
  for i = 1, waiting do redis.call('RPUSH', KEYS[{ready}], '1') end
  redis.call('EXPIRE', KEYS[{ready}], 5)
  redis.call('DEL', KEYS[{waiters}])
end
"""


# KEYS: lease, entry, waiters, ready. Fill a missed row only if the caller still holds the
# lease it took before reading the database: an invalidation deletes the lease, so a
# reader that read the old row before a write committed can no longer store it. Either
# way, the readers waiting for the fill are woken.
FILL = (
    """
local stored = 0
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
  redis.call('DEL', KEYS[1])
  stored = 1
end
"""
    + wake(3, 4)
    + "return stored"
)

# KEYS: lease, waiters, ready. A filler that failed gives its lease back and wakes the
# waiters, so one of them takes over at once.
RELEASE = (
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"""
    + wake(2, 3)
    + "return 1"
)

# KEYS: entry, lease. A reader that missed takes the lease, unless a value arrived since
# its read (another reader filled it): then it gets the value, and reads no database.
# ARGV[3] is the unusable value the reader saw (an old version's, unreadable), if any.
ACQUIRE = """
local value = redis.call('GET', KEYS[1])
if value and value ~= ARGV[3] then return {2, value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1} end
return {0}
"""

# KEYS: entry, lease, waiters. A reader that missed while another fills: the value if it
# arrived meanwhile ({1, value}); {2} if nobody holds the lease any more (take it over);
# else count the reader as waiting ({0}), in the same step, so no wake-up is missed.
WAIT = """
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {2} end
redis.call('INCR', KEYS[3])
redis.call('EXPIRE', KEYS[3], 30)
return {0}
"""

# A write-through save announces itself before its commit: it joins the set of writes in
# flight (each with a deadline, so a writer that died or rolled back drops out by itself)
# and takes the next epoch. The epoch starts from the clock, never from 1, so a writer
# that outlived an expired epoch key cannot match a fresh one.
WRITE_BEGIN = """
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
"""

# After commit: store the saved row only when no other write of the row overlapped this
# one (none in flight when it began, none begun since). Otherwise the commit order is
# unknown, so delete the entry and let the next read fill from the database.
WRITE_END = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[4])
if ARGV[3] == '0' and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5])
  return 1
end
redis.call('DEL', KEYS[3])
return 0
"""

# A model's version: created from the clock when missing (an evicted or lost version key
# must never bring back entries tagged with an old number), incremented to bump.
VERSION = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1])
  return ARGV[1]
end
if ARGV[2] == '1' then return tostring(redis.call('INCR', KEYS[1])) end
return v
"""


class RedisTransport:
    """Redis I/O for one cache alias, behind a circuit breaker.

    Built from ``django_redis.get_redis_connection`` so the connection pool, the
    timeouts and the server list are the ones the user configured in ``CACHES``.
    """

    def __init__(self, client: Any, *, cooldown: float, max_pending: int):
        self.client = client
        self.cooldown = cooldown
        self.max_pending = max_pending
        self._fill = client.register_script(FILL)
        self._release = client.register_script(RELEASE)
        self._wait = client.register_script(WAIT)
        self._acquire = client.register_script(ACQUIRE)
        self._write_begin = client.register_script(WRITE_BEGIN)
        self._write_end = client.register_script(WRITE_END)
        self._version = client.register_script(VERSION)
        self._scripts = (
            self._fill,
            self._release,
            self._wait,
            self._acquire,
            self._write_begin,
            self._write_end,
            self._version,
        )
        self._lock = threading.Lock()
        self._down_until = 0.0
        # version key -> entry keys to delete, or None: bump the whole model.
        self._pending: dict[str, set[str] | None] = {}
        self._pending_count = 0

    def _pipeline(self, build: Callable[[Any], None], scripts: Sequence[Any] = ()) -> list:
        """Run the commands ``build(pipe)`` queues, in one round trip.

        Scripts go as plain ``EVALSHA`` (redis-py's own script handling in a pipeline
        costs a ``SCRIPT EXISTS`` round trip each time); if Redis lost them (a restart),
        they are loaded once and the pipeline is sent again. A missing script fails
        every ``EVALSHA`` of it, so nothing ran twice.
        """
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            try:
                return pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                for script in (*self._scripts, *scripts):
                    self.client.script_load(script.script)
        raise AssertionError("unreachable")  # pragma: no cover

    def run_scripts(self, calls: Sequence[tuple[Any, list, list]]) -> list:
        """Run ``(script, keys, args)`` calls in one round trip, behind the breaker.

        ``script`` is what ``client.register_script`` returned; results come in order.
        """

        def build(pipe) -> None:
            for script, script_keys, args in calls:
                _evalsha(pipe, script, script_keys, args)

        scripts = {script.sha: script for script, _, _ in calls}
        return self.call(self._pipeline, build, tuple(scripts.values()))

    # -- the breaker -------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` behind the breaker; raise ``CacheUnavailable`` on failure."""
        # While open, fail at once; after the cooldown, this call is the probe (half-open).
        if self._down_until and time.monotonic() < self._down_until:
            raise CacheUnavailable("Redis is marked down")
        try:
            if self._pending:
                self._replay()
            result = fn(*args)
        except DataError:
            raise  # a value redis-py cannot send: our caller's bug, not an outage
        except RedisError as exc:
            self._trip(exc)
            raise CacheUnavailable(str(exc)) from exc
        if self._down_until:
            with self._lock:
                if self._down_until:
                    self._down_until = 0.0
                    logger.warning("django_cachestrat: Redis answers again; using the cache.")
        return result

    def _trip(self, exc: Exception) -> None:
        with self._lock:
            first = not self._down_until
            self._down_until = time.monotonic() + self.cooldown
        if first:
            # Once per episode, not once per call.
            logger.error(
                "django_cachestrat: Redis failed (%s: %s); reading and writing the database "
                "only for %.1fs at a time until it answers.",
                type(exc).__name__,
                exc,
                self.cooldown,
            )
        if signals.cache_error.receivers:
            signals.cache_error.send(sender=None, error=exc, model=None)

    @property
    def pending_invalidations(self) -> int:
        """How many failed invalidations wait for Redis (a whole model counts as one)."""
        with self._lock:
            return sum(1 if k is None else len(k) for k in self._pending.values())

    @property
    def available(self) -> bool:
        """False while the breaker is open."""
        return not self._down_until or time.monotonic() >= self._down_until

    # -- reads -------------------------------------------------------------------------

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` in one round trip."""
        return self.call(self.client.mget, keys)

    def get(self, key: str) -> bytes | None:
        """Value of ``key``."""
        return self.call(self.client.get, key)

    def version(self, key: str, *, bump: bool = False) -> bytes:
        """Return a model's version, creating it when missing; ``bump`` increments it."""
        initial = time.time_ns() // 1000
        return _as_bytes(self.call(self._version, [key], [initial, "1" if bump else "0"]))

    # -- fills -------------------------------------------------------------------------

    def acquire_leases(self, keys: Sequence[str], token: str, timeout: float) -> list[bool]:
        """Try to take each lease (``SET NX PX``) in one round trip; True where taken."""

        def run() -> list[bool]:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, token, nx=True, px=max(1, int(timeout * 1000)))
            return [bool(r) for r in pipe.execute()]

        return self.call(run)

    def acquire_or_get(
        self, items: Sequence[tuple[str, str, bytes | None]], token: str, timeout: float
    ) -> list[tuple[int, bytes | None]]:
        """Take leases, unless a value arrived meanwhile; per ``(value_key, lease_key, seen)``.

        ``(2, value)`` if a value other than ``seen`` (what the caller read and could not
        use) is there now, else ``(1, None)`` if the lease was taken, ``(0, None)`` if
        another reader holds it.
        """
        ms = max(1, int(timeout * 1000))

        def build(pipe) -> None:
            for value_key, lease_key, seen in items:
                _evalsha(pipe, self._acquire, [value_key, lease_key], [token, ms, seen or b""])

        results = self.call(self._pipeline, build)
        return [(r[0], r[1] if len(r) > 1 else None) for r in results]

    def fill_many(
        self, items: Sequence[tuple[tuple[str, str, str], str, bytes, int]], token: str
    ) -> list[bool]:
        """Store the items whose lease ``token`` still holds; wake their waiters.

        Items are ``((lease, waiters, ready), entry_key, value, ttl)``; True where stored.
        """

        def build(pipe) -> None:
            for (lease, waiters, ready), entry_key, value, ttl in items:
                _evalsha(pipe, self._fill, [lease, entry_key, waiters, ready], [token, value, ttl])

        return self.call(lambda: [bool(r) for r in self._pipeline(build)])

    def release(self, fills: Sequence[tuple[str, str, str]], token: str) -> None:
        """Give back the leases ``token`` holds among ``fills`` and wake their waiters."""

        def build(pipe) -> None:
            for lease, waiters, ready in fills:
                _evalsha(pipe, self._release, [lease, waiters, ready], [token])

        self.call(self._pipeline, build)

    def wait_many(
        self, items: Sequence[tuple[str, tuple[str, str, str]]]
    ) -> list[tuple[int, bytes | None]]:
        """Check on fills others hold: per ``(entry_key, (lease, waiters, ready))`` item.

        ``(1, value)`` if the value is there, ``(2, None)`` if no one holds the lease,
        else ``(0, None)``: the caller is now counted as waiting.
        """

        def build(pipe) -> None:
            for entry_key, (lease, waiters, _) in items:
                _evalsha(pipe, self._wait, [entry_key, lease, waiters], [])

        results = self.call(self._pipeline, build)
        return [(r[0], r[1] if len(r) > 1 else None) for r in results]

    def block(self, ready_keys: Sequence[str], timeout: float) -> None:
        """Wait (``BLPOP``) until a filler wakes us or ``timeout`` passes.

        The wait is cut in slices shorter than the connection's socket timeout, so a
        blocked read is never mistaken for a dead server.
        """
        socket_timeout = self.client.connection_pool.connection_kwargs.get("socket_timeout")
        slice_ = min(timeout, 0.5 * socket_timeout if socket_timeout else 1.0)
        self.call(self.client.blpop, list(ready_keys), max(0.01, slice_))

    # -- write-through -----------------------------------------------------------------

    def write_begin(
        self, version_key: str, keys: tuple[str, str], token: str, window: int
    ) -> tuple[bytes, bool, bytes]:
        """Announce a write of one row; return ``(epoch, contended, model_version)``.

        ``keys`` are the row's in-flight set and epoch keys; ``token`` names this write.
        One round trip: the model's version is read in the same pipeline.
        """
        initial = time.time_ns() // 1000

        def build(pipe) -> None:
            _evalsha(pipe, self._write_begin, list(keys), [token, window])
            _evalsha(pipe, self._version, [version_key], [initial, "0"])

        def run() -> tuple[bytes, bool, bytes]:
            (epoch, inflight), ver = self._pipeline(build)
            return str(epoch).encode(), inflight > 1, _as_bytes(ver)

        return self.call(run)

    def write_end(
        self,
        version_key: str,
        keys: tuple[str, str, str, str],
        token: str,
        epoch: bytes,
        contended: bool,
        value: bytes,
        ttl: int,
    ) -> bool:
        """Finish a write after commit: store ``value`` if uncontended, else delete the entry.

        ``keys`` are the row's in-flight set, epoch, entry and lease keys. If Redis cannot
        be reached the entry's deletion is kept for replay, as for ``delete``.
        """
        args = [token, epoch, "1" if contended else "0", value, ttl]
        try:
            return bool(self.call(self._write_end, list(keys), args))
        except CacheUnavailable:
            self._remember(version_key, keys[2:])
            raise

    def write_abort(self, inflight_key: str, token: str) -> None:
        """Take back a ``write_begin`` whose save failed before it reached the database."""
        self.call(self.client.zrem, inflight_key, token)

    # -- invalidation ------------------------------------------------------------------

    def delete(self, version_key: str, keys: Sequence[str]) -> None:
        """Delete ``keys`` (one model's); kept for replay if Redis cannot be reached."""
        try:
            self.call(self.client.delete, *keys)
        except CacheUnavailable:
            self._remember(version_key, keys)
            raise

    def bump(self, version_key: str) -> None:
        """Bump a model's version; kept for replay if Redis cannot be reached."""
        try:
            self.version(version_key, bump=True)
        except CacheUnavailable:
            self._remember(version_key, None)
            raise

    def _remember(self, version_key: str, keys: Sequence[str] | None) -> None:
        with self._lock:
            known = self._pending.get(version_key, set())
            if known is None:
                return
            if keys is None or self._pending_count + len(keys) > self.max_pending:
                # Too many to remember one by one: the whole model is bumped on replay.
                self._pending_count -= len(known)
                self._pending[version_key] = None
                return
            fresh = set(keys) - known
            known |= fresh
            self._pending[version_key] = known
            self._pending_count += len(fresh)

    def _replay(self) -> None:
        with self._lock:
            pending, self._pending, self._pending_count = self._pending, {}, 0
        initial = time.time_ns() // 1000

        def build(pipe) -> None:
            for version_key, entry_keys in pending.items():
                if entry_keys is None:
                    _evalsha(pipe, self._version, [version_key], [initial, "1"])
                else:
                    pipe.delete(*entry_keys)

        try:
            self._pipeline(build)
        except RedisError:
            with self._lock:
                for version_key, entry_keys in pending.items():
                    self._pending_count += len(entry_keys or ())
                    self._pending.setdefault(version_key, set())
                    if entry_keys is None or self._pending[version_key] is None:
                        self._pending[version_key] = None
                    else:
                        self._pending[version_key] |= entry_keys
            raise
        logger.warning(
            "django_cachestrat: replayed %d invalidations that failed while Redis was down.",
            sum(1 if k is None else len(k) for k in pending.values()),
        )


def _as_bytes(value: Any) -> bytes:
    # Scripts return INCR results as integers and GET results as bytes.
    return value if isinstance(value, bytes) else str(value).encode()


def _evalsha(pipe: Any, script: Any, keys: list, args: list) -> None:
    pipe.evalsha(script.sha, len(keys), *keys, *args)

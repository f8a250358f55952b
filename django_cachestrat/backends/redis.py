"""The transport: every Redis command and script the app sends goes through here.

Policy (when to read, fill or invalidate) lives in ``strategies`` and ``write_behind``;
this module only moves bytes, in terms of keys and scripts, never connections. Where keys
live is the transport's to say (``node``, ``split``, ``nodes``): here, one server holds
them all; a ring of nodes (``backends.ring``) or a Redis Cluster answers otherwise.

Every public method raises ``CacheUnavailable`` instead of a Redis error, behind a
``CircuitBreaker``; invalidations that could not be sent go to an ``InvalidationReplay``
and are sent before anything else once Redis answers again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import DataError, NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeout

from django_cachestrat import signals
from django_cachestrat.backends import scripts
from django_cachestrat.backends.breaker import CircuitBreaker
from django_cachestrat.backends.replay import BUMP, InvalidationReplay, KeptWrites
from django_cachestrat.backends.scripts import Acquired, LookupFilled, Script, Waited

logger = logging.getLogger("django_cachestrat")

#: One operation of a batch: ``(script, keys, args)``, or a plain command
#: ``("HGETALL", key)`` whose reply is parsed as redis-py parses it.
Op = tuple


class CacheUnavailable(Exception):
    """Redis could not be used for this call; the caller falls back to the database."""


class WriteUncertain(CacheUnavailable):
    """Writes sent with ``once=True`` got no reply, even sent again: Redis may have them.

    They are kept and sent again when Redis answers (they count once), so the caller must
    not write them anywhere else.
    """


class RedisTransport:
    """Redis I/O for one cache alias.

    Built from ``django_redis.get_redis_connection`` so the connection pool, the
    timeouts and the server are the ones the user configured in ``CACHES``. ``clock``
    (wall time, seconds) and ``monotonic`` are injectable for tests.
    """

    def __init__(
        self,
        client: Any,
        *,
        cooldown: float,
        max_pending: int,
        resends: int = 3,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        name: str = "",
    ):
        self._client = client
        #: The cache alias it talks to (for logs and the dashboard).
        self.name = name
        self._clock = clock
        self.breaker = CircuitBreaker(cooldown, clock=monotonic)
        self.replay = InvalidationReplay(max_pending)
        self.kept_writes = KeptWrites(max_pending)
        self.resends = resends

    # -- where keys live ------------------------------------------------------------------
    # One server holds every key. Callers ask these where a call is inherently per node
    # (a model's keys exist on each node of a ring, each copy covering that node's rows),
    # or to send each node its share of a batch of rows.

    @property
    def nodes(self) -> tuple[RedisTransport, ...]:
        """The servers, each with its own copy of the model-level keys: this one."""
        return (self,)

    @property
    def servers(self) -> tuple[RedisTransport, ...]:
        """The Redis servers, each with a ``name`` and ``info()`` (the dashboard's): this one."""
        return (self,)

    def node(self, key: str) -> RedisTransport:
        """Return the server that holds ``key`` (a row's or the statistics'): this one."""
        return self

    def split(self, keys: Sequence[str]) -> list[tuple[RedisTransport, Sequence[int]]]:
        """Group the positions of ``keys`` by the server holding each: all here (none: no group)."""
        return [(self, range(len(keys)))] if keys else []

    # -- the breaker ---------------------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` behind the breaker; raise ``CacheUnavailable`` on failure."""
        if not self.breaker.allows:
            raise CacheUnavailable("Redis is marked down")
        try:
            if self.replay or self.kept_writes:
                self._replay()
            result = fn(*args)
        except DataError:
            raise  # a value redis-py cannot send: our caller's bug, not an outage
        except RedisError as exc:
            self._failed(exc)
            raise CacheUnavailable(str(exc)) from exc
        if self.breaker.succeeded():
            logger.warning("django_cachestrat: Redis answers again; using the cache.")
        return result

    def _call_invalidation(self, fn: Callable[..., Any], *args: Any) -> Any:
        """As ``_call``, for a deletion or a version bump: always safe to send.

        A ring node whose record is not settled refuses everything else (``ring``).
        """
        return self._call(fn, *args)

    def _failed(self, exc: Exception) -> None:
        if self.breaker.failed():
            # Once per episode, not once per call.
            logger.error(
                "django_cachestrat: Redis failed (%s: %s); reading and writing the database "
                "only for %.1fs at a time until it answers.",
                type(exc).__name__,
                exc,
                self.breaker.cooldown,
            )
        if signals.cache_error.receivers:
            signals.cache_error.send(sender=None, error=exc, model=None)

    @property
    def available(self) -> bool:
        """False while the breaker is open."""
        return self.breaker.allows

    @property
    def pending_invalidations(self) -> int:
        """How many failed invalidations wait for Redis (a whole model counts as one)."""
        return len(self.replay)

    def now(self) -> float:
        """Return the wall clock's time (seconds) that keys and scores are written with."""
        return self._clock()

    def _now_us(self) -> int:
        return int(self._clock() * 1_000_000)

    # -- batches ---------------------------------------------------------------------------

    def execute(self, ops: Sequence[Op], *, once: bool = False) -> list:
        """Send ``ops`` in one round trip, behind the breaker; replies come in order.

        Ops of one batch must not depend on each other (different rows, or reads): if
        Redis lost some scripts (a restart, ``SCRIPT FLUSH``), only the calls it refused
        with ``NOSCRIPT`` are sent again, after loading those scripts, so no script runs
        twice, but they then run after the others.

        ``once=True``: the ops are writes that count once however often they are sent
        (``RECORD`` with its writer's id and number). A batch whose reply times out (the
        server may be stalled, and run it later) is sent again, up to ``resends`` times,
        instead of being given up; still unanswered, it is kept to be sent when Redis
        answers, and ``WriteUncertain`` is raised.
        """
        if not ops:
            return []
        if not once:
            return self._call(self._execute, ops)
        try:
            return self._call(self._execute_resending, ops)
        except CacheUnavailable as exc:
            if isinstance(exc.__cause__, RedisTimeout) and self.kept_writes.keep(ops):
                raise WriteUncertain(str(exc)) from exc
            raise

    def _execute_resending(self, ops: Sequence[Op]) -> list:
        for attempt in range(self.resends + 1):
            try:
                return self._execute(ops)
            except RedisTimeout:
                if attempt == self.resends:
                    raise
                logger.warning("django_cachestrat: a write-behind write timed out; sent again.")
        raise AssertionError("unreachable")  # pragma: no cover

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script; return its reply."""
        return self.execute([(script, keys, args)])[0]

    def _execute(self, ops: Sequence[Op]) -> list:
        if len(ops) == 1:
            return [self._send_one(ops[0])]  # a pipeline costs more than it saves here
        replies = self._send(ops, ())
        refused = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if refused:
            lost = {ops[i][0].sha: ops[i][0] for i in refused}
            again = self._send([ops[i] for i in refused], lost.values())
            for i, reply in zip(refused, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _send_one(self, op: Op) -> Any:
        if not isinstance(op[0], Script):
            return self._client.execute_command(*op)
        script, keys, args = op
        try:
            return self._client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            # Refused, so it did not run: load it and send it again.
            self._client.script_load(script.source)
            return self._client.evalsha(script.sha, len(keys), *keys, *args)

    def _send(self, ops: Sequence[Op], load: Any) -> list:
        pipe = self._client.pipeline(transaction=False)
        for script in load:
            pipe.script_load(script.source)
        for op in ops:
            if isinstance(op[0], Script):
                script, keys, args = op
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            else:
                pipe.execute_command(*op)
        replies = pipe.execute(raise_on_error=False)
        return replies[len(load) :] if load else replies

    # -- reads -----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Return what the server says of itself (``INFO``: memory, keys, hits, clients)."""
        return self._call(self._client.info)

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of ``keys`` in one round trip."""
        return self._call(self._client.mget, keys)

    def get(self, key: str) -> bytes | None:
        """Value of ``key``."""
        return self._call(self._client.get, key)

    def version(self, key: str, *, bump: bool = False) -> bytes:
        """Return a model's version, creating it when missing; ``bump`` increments it."""
        return _as_bytes(
            self.script(scripts.VERSION, [key], [self._now_us(), "1" if bump else "0"])
        )

    def block(self, ready_keys: Sequence[str], timeout: float) -> tuple[str, bytes] | None:
        """Wait (``BLPOP``) until a filler wakes us or ``timeout`` passes.

        Return ``(ready key, what the filler pushed)``, or None when the time is up. The
        wait is cut in slices shorter than the connection's socket timeout, so a blocked
        read is never mistaken for a dead server.
        """
        socket_timeout = self._client.connection_pool.connection_kwargs.get("socket_timeout")
        slice_ = min(timeout, 0.5 * socket_timeout if socket_timeout else 1.0)
        popped = self._call(self._client.blpop, list(ready_keys), max(0.01, slice_))
        return None if popped is None else (popped[0].decode(), popped[1])

    # -- fills of entries ------------------------------------------------------------------

    def acquire_leases(self, keys: Sequence[str], token: str, timeout: float) -> list[bool]:
        """Try to take each lease (``SET NX PX``) in one round trip; True where taken."""
        ms = max(1, int(timeout * 1000))
        return [
            bool(r) for r in self.execute([("SET", key, token, "NX", "PX", ms) for key in keys])
        ]

    def acquire_or_get(
        self,
        items: Sequence[tuple[str, tuple[str, str, str], bytes | None]],
        token: str,
        timeout: float,
        *,
        wait: bool = False,
    ) -> list[tuple[Acquired, bytes | None]]:
        """Take leases, unless a value arrived; per ``(value_key, fill_keys, seen)``.

        ``(FILLED, value)`` if a value other than ``seen`` (what the caller read and could
        not use) is there now, else ``(TAKEN, None)`` if the lease was taken, ``(HELD,
        None)`` if another reader holds it: with ``wait``, the caller is then counted
        among its waiters (as ``wait_many`` would count it).
        """
        ms = max(1, int(timeout * 1000))
        count = "1" if wait else "0"
        replies = self.execute(
            [
                (scripts.ACQUIRE, [value_key, lease, waiters], [token, ms, seen or b"", count])
                for value_key, (lease, waiters, _), seen in items
            ]
        )
        return [(Acquired(r[0]), r[1] if len(r) > 1 else None) for r in replies]

    def fill_many(
        self, items: Sequence[tuple[tuple[str, str, str], str, bytes, int]], token: str
    ) -> list[bool]:
        """Store the items whose lease ``token`` still holds; wake their waiters.

        Items are ``((lease, waiters, ready), entry_key, value, ttl)``; True where stored.
        """
        ops = [
            (scripts.FILL, [lease, entry_key, waiters, ready], [token, value, ttl])
            for (lease, waiters, ready), entry_key, value, ttl in items
        ]
        return [bool(r) for r in self.execute(ops)]

    def acquire_pointer(
        self,
        version_key: str,
        pointer: str,
        lease: str,
        seen: bytes | None,
        token: str,
        timeout: float,
    ) -> tuple[Acquired, bytes | None, bytes]:
        """Take a lookup pointer's lease, as ``acquire_or_get``, and read the model's version.

        One round trip; returns ``(status, value, version)``. The version is read before
        the filler reads the database, so what it stores under it is retired by any
        ``invalidate_model`` since.
        """
        ms = max(1, int(timeout * 1000))
        taken, version = self.execute(
            [
                (scripts.ACQUIRE, [pointer, lease], [token, ms, seen or b""]),
                (scripts.VERSION, [version_key], [self._now_us(), "0"]),
            ]
        )
        return Acquired(taken[0]), taken[1] if len(taken) > 1 else None, _as_bytes(version)

    def fill_lookup(
        self,
        token: str,
        pointer: tuple[tuple[str, str, str], str, bytes, int],
        row: tuple[tuple[str, str, str], bytes, int],
    ) -> LookupFilled:
        """Store a lookup's pointer while the lease ``token`` holds, and its row if it may.

        ``pointer`` is ``((lease, waiters, ready), pointer_key, pk, ttl)``, ``row`` is
        ``((entry_key, lease, tombstone), entry, ttl)``; see ``scripts.LOOKUP_FILL``.
        """
        (lease, waiters, ready), pointer_key, pk, pointer_ttl = pointer
        (entry_key, row_lease, tombstone), entry, entry_ttl = row
        reply = self.script(
            scripts.LOOKUP_FILL,
            [lease, pointer_key, waiters, ready, entry_key, row_lease, tombstone],
            [token, pk, pointer_ttl, entry, entry_ttl],
        )
        return LookupFilled(reply)

    def release(self, fills: Sequence[tuple[str, str, str]], token: str) -> None:
        """Give back the leases ``token`` holds among ``fills`` and wake their waiters."""
        self.execute([(scripts.RELEASE, list(fill), [token]) for fill in fills])

    def wait_many(
        self, items: Sequence[tuple[str, tuple[str, str, str]]]
    ) -> list[tuple[Waited, bytes | None]]:
        """Check on fills others hold: per ``(entry_key, (lease, waiters, ready))`` item.

        ``(READY, value)`` if the value is there, ``(TAKE_OVER, None)`` if no one holds
        the lease, else ``(WAITING, None)``: the caller is now counted as waiting.
        """
        replies = self.execute(
            [
                (scripts.WAIT, [entry_key, lease, waiters], [])
                for entry_key, (lease, waiters, _) in items
            ]
        )
        return [(Waited(r[0]), r[1] if len(r) > 1 else None) for r in replies]

    # -- write-through -----------------------------------------------------------------------

    def write_begin(
        self, version_key: str, keys: tuple[str, str], token: str, window: int
    ) -> tuple[bytes, bool, bytes]:
        """Announce a write of one row; return ``(epoch, contended, model_version)``.

        ``keys`` are the row's in-flight set and epoch keys; ``token`` names this write.
        One round trip: the model's version is read in the same batch.
        """
        (epoch, inflight), version = self.execute(
            [
                (scripts.WRITE_BEGIN, list(keys), [token, window]),
                (scripts.VERSION, [version_key], [self._now_us(), "0"]),
            ]
        )
        return str(epoch).encode(), inflight > 1, _as_bytes(version)

    def write_end(
        self,
        version_key: str,
        keys: tuple[str, str, str, str, str, str],
        token: str,
        epoch: bytes,
        contended: bool,
        value: bytes,
        ttl: int,
        tombstone_ms: int = 0,
    ) -> bool:
        """Finish a write after commit: store ``value`` if uncontended, else delete the entry.

        ``keys`` are the row's in-flight set, epoch, entry, lease, tombstone and ready keys; a
        deletion sets the tombstone for ``tombstone_ms`` (none if 0). If Redis cannot be
        reached the entry's deletion is kept for replay, as for ``delete``.
        """
        args = [token, epoch, "1" if contended else "0", value, ttl, tombstone_ms]
        try:
            return bool(self.script(scripts.WRITE_END, list(keys), args))
        except CacheUnavailable:
            self.replay.keep(version_key, [*keys[2:4], keys[5]])
            raise

    def write_abort(self, inflight_key: str, token: str) -> None:
        """Take back a ``write_begin`` whose save failed before it reached the database."""
        self.execute([("ZREM", inflight_key, token)])

    # -- invalidation ----------------------------------------------------------------------

    def delete(
        self,
        version_key: str,
        keys: Sequence[str],
        *,
        tombstones: Sequence[str] = (),
        tombstone_ms: int = 0,
    ) -> None:
        """Delete ``keys`` (one model's); kept for replay if Redis cannot be reached.

        ``tombstones`` are set first (``SET PX tombstone_ms``), in the same round trip:
        Redis runs a pipeline's plain commands in order, so a script that runs between
        them and the deletion already sees them. A replay deletes ``keys`` only: it comes
        after ``FAILURE_COOLDOWN``, later than the fills that may have read the rows
        before the invalidation failed (they store only while their lease holds).
        """
        ops: list[Op] = [("SET", key, "1", "PX", tombstone_ms) for key in tombstones]
        ops.append(("DEL", *keys))
        try:
            self._call_invalidation(self._execute, ops)
        except CacheUnavailable:
            self.replay.keep(version_key, keys)
            raise

    def bump(self, version_key: str) -> None:
        """Bump a model's version; kept for replay if Redis cannot be reached."""
        try:
            self._call_invalidation(
                self._execute, [(scripts.VERSION, [version_key], [self._now_us(), "1"])]
            )
        except CacheUnavailable:
            self.replay.keep(version_key, None)
            raise

    def _replay(self) -> None:
        if self.kept_writes:
            self._replay_writes()
        if not self.replay:
            return
        kept = self.replay.take()
        now = self._now_us()
        ops: list[Op] = [
            (scripts.VERSION, [version_key], [now, "1"])
            if entry_keys is BUMP
            else ("DEL", *entry_keys)
            for version_key, entry_keys in kept.items()
        ]
        try:
            self._execute(ops)
        except RedisError:
            self.replay.put_back(kept)
            raise
        logger.warning(
            "django_cachestrat: replayed %d invalidations that failed while Redis was down.",
            sum(1 if k is BUMP else len(k) for k in kept.values()),
        )

    def _replay_writes(self) -> None:
        batches = self.kept_writes.take()
        for n, ops in enumerate(batches):
            try:
                replies = self._execute(ops)
            except RedisError:
                self.kept_writes.put_back(batches[n:])
                raise
            for op, reply in zip(ops, replies, strict=True):
                if isinstance(reply, int) and reply < 0:
                    # A refusal (no view to merge into any more): say what is lost.
                    logger.error(
                        "django_cachestrat: a write-behind write kept during a Redis stall "
                        "was refused when sent again (%s); keys %s, arguments %s.",
                        reply,
                        op[1],
                        op[2],
                    )
        logger.warning(
            "django_cachestrat: sent %d write-behind batch(es) again that got no reply during "
            "a Redis stall.",
            len(batches),
        )


def _as_bytes(value: Any) -> bytes:
    # Scripts return INCR results as integers and GET results as bytes.
    return value if isinstance(value, bytes) else str(value).encode()

"""Redis Cluster: each model's keys sharded by hash tag, so every script touches one slot.

**The layout.** On one server (and on a ring) a row's keys share the tag
``{<label>:<pk>}`` and a model's keys (its version, its write-behind queue) the tag
``{<label>}``: two slots on a cluster, and the scripts that touch a row and its model
(``RECORD``, the write-behind views, the queue's claims) would be refused. Here every
model has ``SHARDS`` shards, and a shard's keys share one tag, ``{<label>|<s>}``: its rows
(``<prefix>:{<label>|<s>}:r:<pk>:entry``, placed by a hash of the row's own tag) and its
own copy of the model-level keys (``<prefix>:{<label>|<s>}:version``, ``...:wb:dirty``).
A lookup value's pointer is placed the same way, by the value's tag. ``{stats}`` keys are
unchanged (one slot).

**The seam.** The callers keep building the one-server key names (``keys``) and asking
the transport where they live (``node``, ``split``, ``nodes``), as for a ring: here a
"node" is a shard (``ClusterTransport``), each a ``ClusterNode`` over the one
``RedisCluster`` client through a ``ShardClient``, which renames the keys of every command
into the cluster layout on the way out (and the keys in replies back). So a hit is one
``MGET`` of the shard's version and the row's entry: one slot, one round trip.

**Failures.** Each shard has its own breaker and replay (a dead master opens the breakers
of the shards on it, one by one as they are used; the others keep serving). Writes that
must survive a failover (write-behind records) are followed, in the same pipeline, by a
``WAIT`` on the shard's master for ``REPLICA_ACKS`` replicas.
"""

from __future__ import annotations

import functools
import logging
import time
import zlib
from collections.abc import Sequence
from typing import Any

from django_redis.pool import ConnectionFactory
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError
from redis.retry import Retry

from django_cachestrat import keys
from django_cachestrat.backends import scripts
from django_cachestrat.backends.redis import CacheUnavailable, Op, RedisTransport
from django_cachestrat.backends.ring import Routed

logger = logging.getLogger("django_cachestrat")

#: Commands whose arguments are all keys; ``BLPOP``'s are all but its timeout.
_ALL_KEYS = frozenset({"DEL", "UNLINK", "EXISTS", "MGET", "TOUCH"})
#: Commands that name no key: sent to every primary and their replies combined.
_PER_PRIMARY = frozenset({"SCAN", "DBSIZE"})
#: Scripts whose arguments (0-based positions) hold a row's key tag, from which they
#: build keys of their own: renamed as keys are.
_TAG_ARGS = {scripts.CUT.sha: (3,)}
#: Base of the cursor a shard's ``SCAN`` hands out: the node's cursor times this, plus the
#: index of the primary it walks.
_CURSOR_BASE = 1024


def shard_of(tag: str, shards: int) -> int:
    """Return the shard of a row's (or lookup value's) hash tag, among ``shards``."""
    return zlib.crc32(tag.encode("utf-8", "surrogatepass")) % shards


@functools.lru_cache(maxsize=1 << 16)
def placed(key: str, shard: int, shards: int) -> str:
    """Return ``key`` (one-server layout) as it is named on a cluster, for shard ``shard``.

    A row's key goes to its own shard (whatever ``shard`` says); a model's to ``shard``'s
    copy; ``{stats}`` and keys without a tag are unchanged.
    """
    start = key.find("{")
    end = key.find("}", start + 1)
    if start < 0 or end < 0:
        return key
    tag = key[start + 1 : end]
    label, sep, rest = tag.partition(":")
    if sep:
        return f"{key[:start]}{{{label}|{shard_of(tag, shards)}}}:r:{rest}{key[end + 1 :]}"
    if tag in (keys.STATS_TAG, keys.RING_TAG):
        return key
    return f"{key[:start]}{{{label}|{shard}}}{key[end + 1 :]}"


def unplaced(key: str) -> str:
    """Return a cluster key name in the one-server layout (``placed``'s inverse)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    bar = key.rfind("|", start, end)
    if start < 0 or end < 0 or bar < 0:
        return key
    label, tail = key[start + 1 : bar], key[end + 1 :]
    if tail.startswith(":r:"):
        row, colon, rest = tail[3:].partition(":")
        return f"{key[:start]}{{{label}:{row}}}{colon}{rest}"
    return f"{key[:start]}{{{label}}}{tail}"


class ClusterConnectionFactory(ConnectionFactory):
    """A django-redis connection factory whose clients are ``RedisCluster``s.

    Set ``CACHES[alias]["OPTIONS"]["CONNECTION_FACTORY"]`` to its dotted path;
    ``LOCATION`` names one node (the client finds the others). ``SOCKET_TIMEOUT``,
    ``SOCKET_CONNECT_TIMEOUT``, ``USERNAME`` and ``PASSWORD`` apply to every node. One
    client per URL per process: it holds the slot table and a pool per node.
    """

    _clients: dict[str, RedisCluster] = {}

    def connect(self, url: str) -> RedisCluster:
        """Return the process's ``RedisCluster`` for ``url`` (made on first use)."""
        client = self._clients.get(url)
        if client is None:
            params = self.make_connection_params(url)
            params.pop("parser_class", None)
            params.pop("url", None)
            # One quick retry: the database is the fallback for reads, and write-behind
            # records resend by themselves (RESENDS); redis-py's default (10 retries with
            # backoff) holds a call for seconds on a hung master.
            client = RedisCluster.from_url(url, retry=Retry(NoBackoff(), 1), **params)
            self._clients[url] = client
        return client

    def disconnect(self, connection: Any) -> None:
        """Close the client's connections (a ``RedisCluster`` has no single pool)."""
        connection.close()


class _Pool:
    # What RedisTransport.block reads of a client's pool: its connection arguments.
    def __init__(self, client: RedisCluster):
        self.connection_kwargs = client.get_connection_kwargs()


class ShardClient:
    """The ``RedisCluster`` client seen by one shard, with keys renamed (``placed``).

    It answers the calls ``RedisTransport`` makes of a ``redis.Redis``, with their keys
    renamed into the cluster layout, and the keys in replies named back.

    Cluster errors that mean "this slot cannot be served now" (``SlotNotCoveredError``) are
    raised as a ``ConnectionError``, so the transport falls back to the database; other
    ``RedisClusterException``s (a cross-slot call) are bugs of ours and raise.
    """

    def __init__(self, client: RedisCluster, shard: int, shards: int, prefix: str):
        self.cluster = client
        self.shard = shard
        self.shards = shards
        self.prefix = prefix
        self.connection_pool = _Pool(client)

    def key(self, name: str | bytes) -> str:
        """Return ``name`` as this shard names it on the cluster."""
        return placed(name.decode() if isinstance(name, bytes) else name, self.shard, self.shards)

    def command(self, args: Sequence[Any]) -> list[Any]:
        """Return a plain command's words with its keys renamed."""
        name = str(args[0]).upper()
        if name in _ALL_KEYS:
            return [args[0], *map(self.key, args[1:])]
        if name == "BLPOP":
            return [args[0], *map(self.key, args[1:-1]), args[-1]]
        if name == "MEMORY":
            return [*args[:2], self.key(args[2]), *args[3:]]
        if name == "EVALSHA":
            sha, count = args[1], int(args[2])
            names = [self.key(k) for k in args[3 : 3 + count]]
            rest = list(args[3 + count :])
            for i in _TAG_ARGS.get(sha, ()):
                rest[i] = self.key(rest[i])
            return [args[0], sha, count, *names, *rest]
        if len(args) > 1 and name not in ("WAIT", "INFO"):
            return [args[0], self.key(args[1]), *args[2:]]
        return list(args)

    def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SlotNotCoveredError as exc:
            raise RedisConnectionError(str(exc)) from exc

    def execute_command(self, *args: Any) -> Any:
        """Send one command (``SCAN`` and ``DBSIZE``: to every primary, see ``_scan``)."""
        name = str(args[0]).upper()
        if name == "SCAN":
            return self._scan(*args[1:])
        if name == "DBSIZE":
            # Every model's shard ``shard`` lives on every primary: a share of the sum.
            sizes = self._run(self.cluster.dbsize, target_nodes=RedisCluster.PRIMARIES)
            total = sum(sizes.values()) if isinstance(sizes, dict) else int(sizes)
            return total // self.shards
        reply = self._run(self.cluster.execute_command, *self.command(args))
        return reply

    def _scan(self, cursor: Any, *options: Any) -> tuple[int, list[bytes]]:
        # A shard's keys are spread over every primary (one slot per model): walk each in
        # turn; the cursor says which primary and where in it.
        words = list(options)
        if "MATCH" in words:
            at = words.index("MATCH") + 1
            words[at] = self._pattern(str(words[at]))
        primaries = sorted(self.cluster.get_primaries(), key=lambda node: node.name)
        cursor = int(cursor)
        index, inner = cursor % _CURSOR_BASE, cursor // _CURSOR_BASE
        if index >= len(primaries):
            return 0, []
        node = primaries[index]
        connection = self.cluster.get_redis_connection(node)
        inner, names = self._run(connection.execute_command, "SCAN", inner, *words)
        found = [unplaced(n.decode()).encode() for n in names]
        if int(inner) == 0:
            index, inner = index + 1, 0
            if index >= len(primaries):
                return 0, found
        return int(inner) * _CURSOR_BASE + index, found

    def _pattern(self, pattern: str) -> str:
        # The census's ``<prefix>:{*}:<rest>`` (entries of every model): this shard's rows.
        head = f"{self.prefix}:{{*}}"
        if pattern.startswith(head):
            return f"{self.prefix}:{{*|{self.shard}}}:r:*{pattern[len(head) :]}"
        return pattern

    def evalsha(self, sha: str, count: int, *rest: Any) -> Any:
        """Run a loaded script on its keys' slot."""
        return self.execute_command("EVALSHA", sha, count, *rest)

    def script_load(self, source: str) -> str:
        """Load a script on every primary."""
        return self._run(self.cluster.script_load, source)

    def mget(self, names: Sequence[str]) -> list[bytes | None]:
        """``MGET`` of keys of one slot."""
        return self.execute_command("MGET", *names)

    def get(self, name: str) -> bytes | None:
        """``GET``."""
        return self.execute_command("GET", name)

    def blpop(self, names: Sequence[str], timeout: float) -> tuple[bytes, bytes] | None:
        """``BLPOP`` on lists of one slot; the key popped is named as the caller named it."""
        popped = self.execute_command("BLPOP", *names, timeout)
        if popped is None:
            return None
        return unplaced(popped[0].decode()).encode(), popped[1]

    def pipeline(self, transaction: bool = False) -> ShardPipeline:
        """Return a pipeline whose commands go to their slots' masters (one round)."""
        return ShardPipeline(self)


class ShardPipeline:
    """A ``ClusterPipeline`` taking what ``RedisTransport._send`` gives a redis-py pipeline.

    Scripts go as ``EVALSHA`` through ``execute_command`` (redis-py blocks a cluster
    pipeline's ``evalsha``); ``script_load`` loads at once on every primary (it cannot be
    pipelined) and answers its place in the replies. ``WAIT`` goes to the master of the
    command before it.
    """

    def __init__(self, client: ShardClient):
        self.client = client
        self.pipe = client.cluster.pipeline(transaction=False)
        self.loaded: list[str] = []
        self.last_key: str | None = None

    def script_load(self, source: str) -> None:
        """Load ``source`` now; its reply comes first in ``execute``'s."""
        self.loaded.append(self.client.script_load(source))

    def evalsha(self, sha: str, count: int, *rest: Any) -> None:
        """Queue a script."""
        self.execute_command("EVALSHA", sha, count, *rest)

    def execute_command(self, *args: Any) -> None:
        """Queue a command, its keys renamed, for the master of its (first) key's slot.

        The node is named here (``target_nodes``), from the client's slot table: else
        redis-py may ask a server for the keys of a script (``COMMAND GETKEYS``, a round
        trip a script). A command refused with ``MOVED`` or ``ASK`` is sent again by
        redis-py's own routing.
        """
        if str(args[0]).upper() == "WAIT":
            assert self.last_key is not None, "WAIT follows the write it waits for"
            words: list[Any] = list(args)
        else:
            words = self.client.command(args)
            names = _named(words)
            if len({key_slot(n.encode()) for n in names}) > 1:
                # Named to a node, the command skips redis-py's own check: ours, so a
                # cross-slot call is our bug, raised, not an outage the breaker hides.
                raise RedisClusterException(f"keys of several slots in one command: {names}")
            self.last_key = names[0]
        node = self.client._run(self.client.cluster.get_node_from_key, self.last_key)
        self.pipe.execute_command(*words, target_nodes=node)

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send the queued commands; replies in order (``script_load``'s first)."""
        replies = self.client._run(self.pipe.execute, raise_on_error=raise_on_error)
        return [*self.loaded, *replies]


def _named(words: Sequence[Any]) -> list[str]:
    # The keys a renamed command names (for its slot).
    name = str(words[0]).upper()
    if name == "EVALSHA":
        return list(words[3 : 3 + int(words[2])])
    if name in _ALL_KEYS:
        return list(words[1:])
    return [words[2] if name == "MEMORY" else words[1]]


class ClusterNode(RedisTransport):
    """One shard of a cluster: a ``RedisTransport`` over a ``ShardClient``.

    ``acks`` > 0: writes sent ``once`` (write-behind records) are followed by ``WAIT acks
    <ack_timeout>`` on the shard's master, in the same round trip, so an acknowledged
    write is on a replica before the caller goes on. A ``WAIT`` that gets fewer acks (the
    replica is down, or a failover left the master without one) is logged, and ``WAIT``
    is then left out for ``FAILURE_COOLDOWN`` seconds: else every write would wait its
    whole timeout.
    """

    def __init__(self, client: ShardClient, *, acks: int, ack_timeout: float, **kwargs: Any):
        super().__init__(client, **kwargs)
        self.acks = acks
        self.ack_ms = max(1, int(ack_timeout * 1000))
        self._acks_off_until = 0.0
        self._monotonic = kwargs.get("monotonic", time.monotonic)

    def execute(self, ops: Sequence[Op], *, once: bool = False) -> list:
        """As ``RedisTransport.execute``; writes sent ``once`` wait for the replica's ack."""
        if not (once and self.acks and ops) or self._monotonic() < self._acks_off_until:
            return super().execute(ops, once=once)
        replies = super().execute([*ops, ("WAIT", self.acks, self.ack_ms)], once=once)
        acked = replies.pop()
        if int(acked) < self.acks:
            self._acks_off_until = self._monotonic() + self.breaker.cooldown
            logger.warning(
                "django_cachestrat: a Redis Cluster master (shard %s) acknowledged a "
                "write-behind write on %s of %d replicas; not waiting for replicas for %.1fs.",
                self.name,
                acked,
                self.acks,
                self.breaker.cooldown,
            )
        return replies


class Primary:
    """One master of a cluster, as the dashboard lists servers: a name and its ``INFO``."""

    def __init__(self, client: RedisCluster, node: Any):
        self.name = node.name
        self._client = client
        self._node = node

    def info(self) -> dict[str, Any]:
        """Return the master's ``INFO``; ``CacheUnavailable`` if it cannot be reached."""
        try:
            return self._client.get_redis_connection(self._node).info()
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc


class ClusterTransport(Routed):
    """The transport over a Redis Cluster: ``shards`` ``ClusterNode``s over one client.

    A row's keys go to the shard its tag hashes to; a model's keys are on every shard (each
    its own copy, in that shard's slot); the statistics on the first shard (``Routed``).
    """

    def __init__(self, nodes: Sequence[ClusterNode], *, shards: int):
        self.shards = shards
        self.nodes: tuple[ClusterNode, ...] = tuple(nodes)
        self.stats_node = self.nodes[0]
        self._node_of = functools.lru_cache(maxsize=1 << 16)(self._place)

    @property
    def servers(self) -> list[Primary]:
        """The cluster's masters now (from the client's slot table), by name."""
        client = self.nodes[0]._client.cluster
        return [Primary(client, n) for n in sorted(client.get_primaries(), key=lambda n: n.name)]

    def _place(self, key: str) -> ClusterNode | None:
        tag = keys.hash_tag(key)
        if ":" in tag:
            return self.nodes[shard_of(tag, self.shards)]
        if tag == keys.STATS_TAG:
            return self.stats_node
        return None

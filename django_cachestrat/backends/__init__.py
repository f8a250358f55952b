"""Transports, one per cache alias, built on first use and dropped when settings change.

``CACHESTRAT["NODES"]`` with two or more aliases makes the transport a ring of those
nodes (``ring.RingTransport``); a cache whose connection is a ``RedisCluster``
(``cluster.ClusterConnectionFactory``) makes it a ``cluster.ClusterTransport``; otherwise
it is one ``RedisTransport``.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django_redis import get_redis_connection
from redis.cluster import RedisCluster

from django_cachestrat import conf
from django_cachestrat.backends.cluster import ClusterNode, ClusterTransport, ShardClient
from django_cachestrat.backends.redis import CacheUnavailable, RedisTransport, WriteUncertain
from django_cachestrat.backends.ring import RingNode, RingTransport

__all__ = [
    "CacheUnavailable",
    "ClusterTransport",
    "RedisTransport",
    "RingTransport",
    "Transport",
    "WriteUncertain",
    "connect",
    "get",
    "reset",
]

#: What ``get`` returns: one server, a ring of them, or a Redis Cluster.
Transport = RedisTransport | RingTransport | ClusterTransport

_lock = threading.Lock()
_transports: dict[str, Transport] = {}


def get(alias: str) -> Transport:
    """Return the transport of cache ``alias`` (the ring, with ``NODES``), built on first use."""
    transport = _transports.get(alias)
    if transport is None:
        with _lock:
            transport = _transports.get(alias)
            if transport is None:
                transport = _transports[alias] = _build(alias)
    return transport


def _build(alias: str) -> Transport:
    options = conf.settings()
    if len(options.ring) < 2:
        alias = options.ring[0][0] if options.ring else alias
        client = _client(alias)
        if isinstance(client, RedisCluster):
            return _cluster(alias, client)
        return connect(alias)
    nodes = [connect(name, ring=True) for name, _ in options.ring]
    return RingTransport(
        [node for node in nodes if isinstance(node, RingNode)],
        options.ring,
        prefix=options.KEY_PREFIX,
        connect=connect,
    )


def _client(alias: str) -> Any:
    if alias not in django_settings.CACHES:
        raise ImproperlyConfigured(
            f"CACHESTRAT['CACHE_ALIAS'] is {alias!r}, which is not in CACHES "
            f"({', '.join(django_settings.CACHES) or 'empty'})."
        )
    try:
        client = get_redis_connection(alias)
    except NotImplementedError as exc:
        raise ImproperlyConfigured(
            f"CACHES[{alias!r}] must use django_redis.cache.RedisCache: django_cachestrat "
            "needs a Redis connection."
        ) from exc
    return client


def _cluster(alias: str, client: RedisCluster) -> ClusterTransport:
    options = conf.settings()
    shards = options.SHARDS
    nodes = [
        ClusterNode(
            ShardClient(client, shard, shards, options.KEY_PREFIX),
            acks=options.REPLICA_ACKS,
            ack_timeout=options.REPLICA_ACK_TIMEOUT,
            cooldown=options.FAILURE_COOLDOWN,
            max_pending=options.MAX_PENDING_INVALIDATIONS,
            resends=options.RESENDS,
            name=f"{alias}|{shard}",
        )
        for shard in range(shards)
    ]
    return ClusterTransport(nodes, shards=shards)


def connect(alias: str, *, ring: bool = False) -> RedisTransport:
    """Return a new transport to the server of cache ``alias`` (a ``RingNode`` if ``ring``)."""
    client = _client(alias)
    if isinstance(client, RedisCluster):
        raise ImproperlyConfigured(
            f"CACHES[{alias!r}] connects to a Redis Cluster: a cluster cannot be a node of "
            "CACHESTRAT['NODES'] (use it alone, as CACHE_ALIAS)."
        )
    options = conf.settings()
    cooldown, kept, resends = (
        options.FAILURE_COOLDOWN,
        options.MAX_PENDING_INVALIDATIONS,
        options.RESENDS,
    )
    if ring:
        return RingNode(
            client,
            recheck=cooldown,
            cooldown=cooldown,
            max_pending=kept,
            resends=resends,
            name=alias,
        )
    return RedisTransport(client, cooldown=cooldown, max_pending=kept, resends=resends, name=alias)


def reset() -> None:
    """Forget every transport (settings changed); the next ``get`` builds anew."""
    with _lock:
        _transports.clear()


@receiver(setting_changed, dispatch_uid="cachestrat.backends.reset")
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CACHESTRAT", "CACHES"):
        reset()

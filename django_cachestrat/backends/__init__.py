"""Transports, one per cache alias, built on first use and dropped when settings change.

``CACHESTRAT["NODES"]`` with two or more aliases makes the transport a ring of those
nodes (``ring.RingTransport``); otherwise it is one ``RedisTransport``.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django_redis import get_redis_connection

from django_cachestrat import conf
from django_cachestrat.backends.redis import CacheUnavailable, RedisTransport, WriteUncertain
from django_cachestrat.backends.ring import RingNode, RingTransport

__all__ = [
    "CacheUnavailable",
    "RedisTransport",
    "RingTransport",
    "Transport",
    "WriteUncertain",
    "connect",
    "get",
    "reset",
]

#: What ``get`` returns: one server, or a ring of them.
Transport = RedisTransport | RingTransport

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
        return connect(options.ring[0][0] if options.ring else alias)
    nodes = [connect(name, ring=True) for name, _ in options.ring]
    return RingTransport(
        [node for node in nodes if isinstance(node, RingNode)],
        options.ring,
        prefix=options.KEY_PREFIX,
        connect=connect,
    )


def connect(alias: str, *, ring: bool = False) -> RedisTransport:
    """Return a new transport to the server of cache ``alias`` (a ``RingNode`` if ``ring``)."""
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

"""Transports, one per cache alias, built on first use and dropped when settings change."""

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

__all__ = ["CacheUnavailable", "RedisTransport", "WriteUncertain", "get", "reset"]

_lock = threading.Lock()
_transports: dict[str, RedisTransport] = {}


def get(alias: str) -> RedisTransport:
    """Return the transport of cache ``alias``, building it on first use."""
    transport = _transports.get(alias)
    if transport is None:
        with _lock:
            transport = _transports.get(alias)
            if transport is None:
                transport = _transports[alias] = _build(alias)
    return transport


def _build(alias: str) -> RedisTransport:
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
    return RedisTransport(
        client,
        cooldown=options.FAILURE_COOLDOWN,
        max_pending=options.MAX_PENDING_INVALIDATIONS,
        resends=options.RESENDS,
    )


def reset() -> None:
    """Forget every transport (settings changed); the next ``get`` builds anew."""
    with _lock:
        _transports.clear()


@receiver(setting_changed, dispatch_uid="cachestrat.backends.reset")
def _reset(*, setting: str, **kwargs: Any) -> None:
    if setting in ("CACHESTRAT", "CACHES"):
        reset()

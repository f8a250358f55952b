"""The ``CACHESTRAT`` setting: defaults, validation and reload.

Everything the app can be told lives in one dict setting. It is read at call time
(never at import time), validated once, and re-read when ``setting_changed`` fires,
so ``override_settings(CACHESTRAT=...)`` works in tests.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from django_cachestrat.serializers import Serializer
from django_cachestrat.signing import Signer


@dataclass(frozen=True)
class _Key:
    default: Any
    types: tuple[type, ...]
    help: str
    minimum: float | None = 0


# One table says what each key is, its type and its default; the README's settings
# reference is written from it.
KEYS: dict[str, _Key] = {
    "CACHE_ALIAS": _Key("default", (str,), "alias in CACHES of a django-redis cache", None),
    "NODES": _Key(
        (),
        (list, tuple),
        "aliases in CACHES of the Redis nodes of a consistent-hash ring, each a name or "
        '{"alias": name, "weight": n}; two or more replace CACHE_ALIAS (see Scaling out)',
        None,
    ),
    "SHARDS": _Key(
        16,
        (int,),
        "shards of each model's keys on a Redis Cluster, spread over its masters (ignored "
        "on one server and on a ring; changing it is a key layout change, see Scaling out)",
        1,
    ),
    "REPLICA_ACKS": _Key(
        1,
        (int,),
        "on a Redis Cluster, replicas a write-behind write must reach (WAIT) before it is "
        "acknowledged, so a failover loses none; 0: do not wait",
    ),
    "REPLICA_ACK_TIMEOUT": _Key(
        0.1,
        (int, float),
        "seconds a write-behind write waits for REPLICA_ACKS replicas at most (then it is "
        "acknowledged anyway, logged, and replicas are not waited for during FAILURE_COOLDOWN)",
    ),
    "DEFAULT_TTL": _Key(3600, (int,), "seconds an entry lives unless CacheMeta.ttl says"),
    "TTL_JITTER": _Key(0.1, (int, float), "fraction of the TTL taken off at random"),
    "KEY_PREFIX": _Key("cachestrat", (str,), "first part of every Redis key", None),
    "SERIALIZER": _Key(
        "django_cachestrat.serializers.MsgpackSerializer",
        (str,),
        "dotted path of a Serializer subclass",
        None,
    ),
    "SIGN": _Key(
        True,
        (bool,),
        "False stores entries, lookup pointers and write-behind writes without a MAC, so "
        "anyone who can write to Redis can forge them",
        None,
    ),
    "SIGNING_KEYS": _Key(
        None,
        (list, tuple, type(None)),
        "secrets (str or bytes, 16 or more long) the MAC keys are derived from: the first "
        "signs, every one listed verifies; None: SECRET_KEY, then SECRET_KEY_FALLBACKS",
        None,
    ),
    "LEASE_TIMEOUT": _Key(
        2.0, (int, float), "seconds a reader's fill lease lasts (a dead filler's is taken over)"
    ),
    "FILL_WAIT": _Key(
        3.0,
        (int, float),
        "seconds a reader waits for another reader's fill before reading the database; "
        "0 turns stampede protection off",
    ),
    "NEGATIVE_TTL": _Key(10, (int,), "seconds a 'no such row' answer is cached; 0: never"),
    "WRITE_WINDOW": _Key(60, (int,), "seconds a write-through write stays in flight at most"),
    "FAILURE_COOLDOWN": _Key(
        5.0, (int, float), "seconds Redis is left alone after a connection failure"
    ),
    "MAX_PENDING_INVALIDATIONS": _Key(
        10_000, (int,), "failed invalidations kept per process to replay on recovery"
    ),
    "RESENDS": _Key(
        3,
        (int,),
        "times a write-behind write whose reply timed out is sent again (it counts once)",
    ),
    "ENABLED": _Key(True, (bool,), "False sends every read to the database", None),
    "FLUSH_INTERVAL": _Key(5.0, (int, float), "seconds between scheduled write-behind flushes"),
    "BATCH_SIZE": _Key(500, (int,), "rows a write-behind flush writes per transaction"),
    "VISIBILITY_TIMEOUT": _Key(
        60.0, (int, float), "seconds before a claimed write-behind batch may be reclaimed"
    ),
    "MAX_RETRIES": _Key(5, (int,), "failed flushes of a row before it is dead-lettered"),
    "RETRY_BACKOFF": _Key(
        1.0, (int, float), "seconds before a failed row is retried, doubled each time"
    ),
    "STATS": _Key(True, (bool,), "False counts nothing and sends no statistics to Redis", None),
    "STATS_INTERVAL": _Key(
        1.0,
        (int, float),
        "seconds between sends of a process's counters to Redis (a killed process loses "
        "at most this much)",
    ),
    "STATS_RETENTION": _Key(
        1440, (int,), "minutes of per-minute statistics buckets kept in Redis (24 h)"
    ),
    "STATS_TOKEN": _Key(
        "",
        (str,),
        "a bearer token that lets a scraper read the statistics views without a login; empty: none",
        None,
    ),
}


class Settings:
    """The validated ``CACHESTRAT`` values, read as attributes (``conf.settings().DEFAULT_TTL``)."""

    # Set from KEYS in __init__; declared for the type checker.
    CACHE_ALIAS: str
    NODES: list | tuple
    SHARDS: int
    REPLICA_ACKS: int
    REPLICA_ACK_TIMEOUT: float
    DEFAULT_TTL: int
    TTL_JITTER: float
    KEY_PREFIX: str
    SERIALIZER: str
    SIGN: bool
    SIGNING_KEYS: list[str | bytes] | tuple[str | bytes, ...] | None
    LEASE_TIMEOUT: float
    FILL_WAIT: float
    NEGATIVE_TTL: int
    WRITE_WINDOW: int
    FAILURE_COOLDOWN: float
    MAX_PENDING_INVALIDATIONS: int
    RESENDS: int
    ENABLED: bool
    FLUSH_INTERVAL: float
    BATCH_SIZE: int
    VISIBILITY_TIMEOUT: float
    MAX_RETRIES: int
    RETRY_BACKOFF: float
    STATS: bool
    STATS_INTERVAL: float
    STATS_RETENTION: int
    STATS_TOKEN: str
    serializer: Serializer
    #: What signs and verifies what the app stores in Redis; None when ``SIGN`` is False.
    signer: Signer | None
    #: ``NODES`` read: ``(alias, weight)`` per node, in the order given (empty: no ring).
    ring: tuple[tuple[str, int], ...]

    def __init__(self, user: Any):
        if user is None:
            user = {}
        if not isinstance(user, dict):
            raise ImproperlyConfigured(f"CACHESTRAT must be a dict, not {type(user).__name__}.")
        for name, value in user.items():
            spec = KEYS.get(name)
            if spec is None:
                near = difflib.get_close_matches(str(name), KEYS, n=1)
                hint = f" Did you mean {near[0]!r}?" if near else ""
                raise ImproperlyConfigured(
                    f"CACHESTRAT has an unknown key {name!r}.{hint} "
                    f"Valid keys: {', '.join(sorted(KEYS))}."
                )
            _check_type(name, value, spec)
        for name, spec in KEYS.items():
            setattr(self, name, user.get(name, spec.default))
        try:
            serializer_class = import_string(self.SERIALIZER)
        except ImportError as exc:
            raise ImproperlyConfigured(
                f"CACHESTRAT['SERIALIZER'] = {self.SERIALIZER!r} cannot be imported: {exc}"
            ) from exc
        if not (isinstance(serializer_class, type) and issubclass(serializer_class, Serializer)):
            raise ImproperlyConfigured(
                f"CACHESTRAT['SERIALIZER'] = {self.SERIALIZER!r} is not a subclass of "
                "django_cachestrat.serializers.Serializer."
            )
        self.serializer = serializer_class()
        # Listed keys are checked even with SIGN off, so turning it on cannot fail later.
        signer = _signer(self.SIGNING_KEYS) if self.SIGN or self.SIGNING_KEYS else None
        self.signer = signer if self.SIGN else None
        if "\n" in self.KEY_PREFIX:
            # A MAC binds the key name its bytes are stored under, ended by a newline.
            raise ImproperlyConfigured("CACHESTRAT['KEY_PREFIX'] must not contain a newline.")
        if not 0 <= self.TTL_JITTER < 1:
            raise ImproperlyConfigured("CACHESTRAT['TTL_JITTER'] must be in [0, 1).")
        if self.STATS_INTERVAL <= 0:
            raise ImproperlyConfigured("CACHESTRAT['STATS_INTERVAL'] must be > 0.")
        for name in ("BATCH_SIZE", "MAX_RETRIES", "STATS_RETENTION"):
            if getattr(self, name) < 1:
                raise ImproperlyConfigured(f"CACHESTRAT[{name!r}] must be >= 1.")
        self.ring = _ring_nodes(self.NODES)


def _ring_nodes(nodes: list | tuple) -> tuple[tuple[str, int], ...]:
    """Read ``NODES``: each an alias of ``CACHES``, or ``{"alias": ..., "weight": n}``."""
    caches = getattr(django_settings, "CACHES", {})
    found: dict[str, int] = {}
    for node in nodes:
        if isinstance(node, str):
            alias, weight = node, 1
        elif isinstance(node, dict) and isinstance(node.get("alias"), str):
            unknown = set(node) - {"alias", "weight"}
            if unknown:
                raise ImproperlyConfigured(
                    f"CACHESTRAT['NODES'] entry {node!r} has unknown keys "
                    f"{', '.join(sorted(map(str, unknown)))}; it takes 'alias' and 'weight'."
                )
            alias, weight = node["alias"], node.get("weight", 1)
        else:
            raise ImproperlyConfigured(
                f"CACHESTRAT['NODES'] entries are aliases of CACHES or "
                f'{{"alias": name, "weight": n}} dicts, not {node!r}.'
            )
        if type(weight) is not int or weight < 1:
            # The ring gives a node points in proportion to its weight: a whole number.
            raise ImproperlyConfigured(
                f"CACHESTRAT['NODES'] weight of {alias!r} must be an int >= 1, not {weight!r}."
            )
        if alias not in caches:
            raise ImproperlyConfigured(
                f"CACHESTRAT['NODES'] names {alias!r}, which is not in CACHES "
                f"({', '.join(caches) or 'empty'})."
            )
        if alias in found:
            raise ImproperlyConfigured(f"CACHESTRAT['NODES'] names {alias!r} twice.")
        found[alias] = weight
    return tuple(found.items())


#: The shortest secret ``SIGNING_KEYS`` takes: a MAC key guessed is every entry forged.
MIN_SECRET = 16


def _signer(secrets: Any) -> Signer:
    """Return the signer of ``SIGNING_KEYS``, else of ``SECRET_KEY`` and its fallbacks.

    The keys are derived here, once per load of the setting, never per call.
    """
    if secrets is None:
        # Django raises its own ImproperlyConfigured for an empty SECRET_KEY.
        fallbacks = getattr(django_settings, "SECRET_KEY_FALLBACKS", [])
        return Signer.from_secrets([django_settings.SECRET_KEY, *fallbacks])
    if not secrets:
        raise ImproperlyConfigured(
            "CACHESTRAT['SIGNING_KEYS'] is empty: list at least one secret (the first "
            "signs), or leave the key out to derive it from SECRET_KEY."
        )
    for n, secret in enumerate(secrets):
        if not isinstance(secret, str | bytes):
            raise ImproperlyConfigured(
                f"CACHESTRAT['SIGNING_KEYS'][{n}] must be str or bytes, not "
                f"{type(secret).__name__}."
            )
        if len(secret) < MIN_SECRET:
            raise ImproperlyConfigured(
                f"CACHESTRAT['SIGNING_KEYS'][{n}] is {len(secret)} long; a secret must be "
                f"at least {MIN_SECRET} long (a random one: secrets.token_urlsafe(32))."
            )
    return Signer.from_secrets(list(secrets))


def _check_type(name: str, value: Any, spec: _Key) -> None:
    # bool is an int in Python; a True TTL is a mistake worth naming.
    wrong = not isinstance(value, spec.types) or (
        isinstance(value, bool) and bool not in spec.types
    )
    if wrong:
        expected = " or ".join(t.__name__ for t in spec.types)
        raise ImproperlyConfigured(
            f"CACHESTRAT[{name!r}] must be {expected}, not {type(value).__name__} ({value!r})."
        )
    if spec.minimum is not None and value < spec.minimum:
        raise ImproperlyConfigured(f"CACHESTRAT[{name!r}] must be >= {spec.minimum}, not {value}.")


@functools.cache
def settings() -> Settings:
    """Return the validated setting; raises ``ImproperlyConfigured`` when it is wrong."""
    return Settings(getattr(django_settings, "CACHESTRAT", None))


@receiver(setting_changed, dispatch_uid="cachestrat.conf.reload")
def _reload(*, setting: str, **kwargs: Any) -> None:
    # NODES are checked against CACHES; the MAC keys may be derived from SECRET_KEY and
    # its fallbacks.
    if setting in ("CACHESTRAT", "CACHES", "SECRET_KEY", "SECRET_KEY_FALLBACKS"):
        settings.cache_clear()

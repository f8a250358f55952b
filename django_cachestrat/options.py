"""Per-model options, read from the model's inner ``class CacheMeta``.

```python
class Author(WriteThroughMixin, models.Model):
    class CacheMeta:
        ttl = 600            # seconds; None or absent: CACHESTRAT["DEFAULT_TTL"]
        lookups = ["email"]  # unique fields get_cached accepts besides pk
```
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import models

# The attributes CacheMeta may have, and what each must be.
ALLOWED = {
    "ttl": "a positive int or None",
    "lookups": "a list of unique field names",
    "stale_ttl": "an int >= 0 (seconds an expired row may still be served while it refreshes)",
    "early_refresh": "a bool, or a float beta > 0 (XFetch: refresh before expiry)",
    "counters": "a list of the integer fields increment_behind() may add to (write-behind)",
}


@dataclass(frozen=True)
class CacheOptions:
    """What the cache needs to know about one model, computed once."""

    model: type[models.Model]
    label: str
    ttl: int | None
    lookups: tuple[str, ...]
    stale_ttl: int
    early_refresh: float
    fields: tuple[models.Field, ...]
    attnames: tuple[str, ...]
    fingerprint: str
    int_pk: bool = False  # an integer primary key: an int needs no to_python
    generated: tuple[str, ...] = ()  # generated fields: their values are the database's
    #: Attnames of the fields ``increment_behind()`` may add to: ``CacheMeta.counters``, by
    #: default every integer field but the pk. Redis adds to them in a write-behind view,
    #: so their values there are the one part of a view that carries no MAC.
    counters: frozenset[str] = frozenset()

    @property
    def pk_field(self) -> models.Field:
        """The model's primary key field."""
        return self.model._meta.pk

    @property
    def grace(self) -> int:
        """Return the seconds an entry outlives its TTL in Redis.

        ``stale_ttl``, and at least one for ``early_refresh``, so that a refresh that
        comes a little late still finds the value.
        """
        return max(self.stale_ttl, 1 if self.early_refresh else 0)

    def to_pk(self, value: object) -> object:
        """Normalize a pk the way the database would (``"1"`` -> ``1``), or raise ``ValueError``."""
        if type(value) is int and self.int_pk:
            return value  # the common case, as to_python would return it
        if isinstance(value, models.Model):
            raise ValueError(f"expected a primary key value, got a {type(value).__name__} instance")
        try:
            return self.pk_field.to_python(value)
        except ValidationError as exc:
            raise ValueError(
                f"{value!r} is not a valid primary key for {self.label}: {exc.messages[0]}"
            ) from None


def errors(model: type[models.Model]) -> list[str]:
    """Return what is wrong with ``model``'s caching setup, as readable sentences."""
    problems = []
    meta = model._meta
    if meta.pk is None or getattr(meta, "is_composite_pk", False):
        problems.append(f"{meta.label} has a composite or no primary key; it cannot be cached.")
    cache_meta = getattr(model, "CacheMeta", None)
    if cache_meta is None:
        return problems
    for name in vars(cache_meta):
        if not name.startswith("_") and name not in ALLOWED:
            allowed = ", ".join(sorted(ALLOWED))
            problems.append(
                f"{meta.label}.CacheMeta has an unknown attribute {name!r} ({allowed})."
            )
    ttl = getattr(cache_meta, "ttl", None)
    if ttl is not None and (type(ttl) is not int or ttl <= 0):
        problems.append(f"{meta.label}.CacheMeta.ttl must be {ALLOWED['ttl']}, not {ttl!r}.")
    stale = getattr(cache_meta, "stale_ttl", 0)
    if type(stale) is not int or stale < 0:
        problems.append(f"{meta.label}.CacheMeta.stale_ttl must be {ALLOWED['stale_ttl']}.")
    early = getattr(cache_meta, "early_refresh", False)
    if not isinstance(early, bool | int | float) or (not isinstance(early, bool) and early <= 0):
        problems.append(f"{meta.label}.CacheMeta.early_refresh must be {ALLOWED['early_refresh']}.")
    counters = getattr(cache_meta, "counters", None)
    if counters is not None:
        problems += [f"{meta.label}.CacheMeta.counters: {p}" for p in _counter_problems(model)]
    lookups = getattr(cache_meta, "lookups", ())
    if not isinstance(lookups, list | tuple) or not all(isinstance(n, str) for n in lookups):
        problems.append(f"{meta.label}.CacheMeta.lookups must be {ALLOWED['lookups']}.")
        return problems
    for name in lookups:
        problem = _lookup_problem(model, name)
        if problem:
            problems.append(f"{meta.label}.CacheMeta.lookups: {problem}")
    return problems


def _counter_problems(model: type[models.Model]) -> list[str]:
    names = getattr(model.CacheMeta, "counters", None)  # type: ignore[attr-defined]
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        return [f"must be {ALLOWED['counters']}."]
    problems = []
    for name in names:
        try:
            field = model._meta.get_field(name)
        except Exception:
            problems.append(f"{name!r} is not a field of {model._meta.label}.")
            continue
        if not _is_counter(field):
            problems.append(f"{name!r} is not an integer field other than the primary key.")
    return problems


def _is_counter(field: object) -> bool:
    """Tell whether ``increment_behind()`` can add to ``field``: an integer, not the pk."""
    return isinstance(field, models.IntegerField) and not field.primary_key


def _counters(model: type[models.Model]) -> frozenset[str]:
    names = getattr(getattr(model, "CacheMeta", None), "counters", None)
    if names is None:
        return frozenset(f.attname for f in model._meta.concrete_fields if _is_counter(f))
    return frozenset(model._meta.get_field(n).attname for n in names)  # type: ignore[union-attr]


def _lookup_problem(model: type[models.Model], name: str) -> str | None:
    try:
        field = model._meta.get_field(name)
    except Exception:
        return f"{name!r} is not a field of {model._meta.label}."
    if not isinstance(field, models.Field) or not field.concrete or field.many_to_many:
        return f"{name!r} is not a concrete field."
    if field.primary_key:
        return f"{name!r} is the primary key; get_cached(pk=...) already covers it."
    # A single-field unconditional UniqueConstraint is as good as unique=True.
    constrained = any(
        isinstance(c, models.UniqueConstraint)
        and tuple(c.fields) == (name,)
        and c.condition is None
        and not c.expressions
        for c in model._meta.constraints
    )
    if not (field.unique or constrained):
        return f"{name!r} is not unique, so it cannot name one row."
    return None


# The registry of cached models, filled by ``AppConfig.ready()``: model -> its schema
# fingerprint (which the codec computes: it knows what makes an old entry unreadable).
_registry: dict[type[models.Model], str] = {}


def is_cached(model: object) -> bool:
    """Tell whether ``model`` is a model class with a caching strategy (a strategy mixin)."""
    return isinstance(model, type) and getattr(model, "cache_strategy", None) is not None


def register(model: type[models.Model], fingerprint: str) -> None:
    """Add a cached model (proxies too) to the registry, with its schema fingerprint."""
    _registry[model] = fingerprint
    family.cache_clear()
    _get.cache_clear()


def cached_models() -> list[type[models.Model]]:
    """Every registered cached model, proxies included, in registration order."""
    return list(_registry)


def get(model: type[models.Model]) -> CacheOptions:
    """Return ``model``'s options; raises ``ImproperlyConfigured`` when they are wrong.

    A proxy shares its concrete model's options (and so its cache entries).
    """
    return _get(model._meta.concrete_model)


@functools.cache
def family(model: type[models.Model]) -> tuple[type[models.Model], ...]:
    """Return ``model``'s concrete model and its cached relatives by inheritance.

    Those are the cached models that inherit from it or that it inherits from
    (multi-table inheritance): their entries hold columns of the same rows.
    """
    concrete = model._meta.concrete_model
    assert concrete is not None  # set for every model class (None only while it is built)
    related = [
        other
        for other in _registry
        if other is not concrete
        and not other._meta.proxy
        and (concrete in other._meta.all_parents or other in concrete._meta.all_parents)
    ]
    return (concrete, *related)


@functools.cache
def _get(model: type[models.Model]) -> CacheOptions:
    problems = errors(model)
    if problems:
        raise ImproperlyConfigured(" ".join(problems))
    if model not in _registry:
        raise ImproperlyConfigured(
            f"{model._meta.label} is not a registered cached model: give it a strategy "
            "mixin and put django_cachestrat in INSTALLED_APPS."
        )
    meta = model._meta
    cache_meta = getattr(model, "CacheMeta", None)
    fields = tuple(meta.concrete_fields)
    return CacheOptions(
        model=model,
        label=meta.label_lower,
        ttl=getattr(cache_meta, "ttl", None),
        lookups=tuple(getattr(cache_meta, "lookups", ())),
        stale_ttl=getattr(cache_meta, "stale_ttl", 0),
        early_refresh=float(getattr(cache_meta, "early_refresh", False)),
        fields=fields,
        attnames=tuple(f.attname for f in fields),
        fingerprint=_registry[model],
        int_pk=isinstance(meta.pk, models.IntegerField),
        generated=tuple(f.name for f in fields if f.generated),
        counters=_counters(model),
    )

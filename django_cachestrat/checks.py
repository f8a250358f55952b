"""System checks, with stable ids.

- ``cachestrat.E001``: the ``CACHESTRAT`` setting is invalid.
- ``cachestrat.E002``: ``CACHE_ALIAS`` is not in ``CACHES``.
- ``cachestrat.E003``: that cache is not a django-redis cache.
- ``cachestrat.E004``: a cached model's default manager is not a ``CachedManager``.
- ``cachestrat.E005``: a cached model's ``CacheMeta`` is wrong, or its pk cannot be cached.
- ``cachestrat.E006``: a cached model inherits from a model that is not cached (multi-table
  inheritance, or a proxy of an uncached model): writes through that model (its
  ``save()``, its querysets' ``update()``) change the cached rows without dropping them.
- ``cachestrat.E007``: a cached model has a field whose values the configured serializer
  cannot carry (``Serializer.supports``).
- ``cachestrat.W001``: a cached model's base manager is not a ``CachedManager``, so updates
  Django makes through it (a reverse foreign key's ``add()``) drop nothing.
- ``cachestrat.W002``: a write-behind model sets ``stale_ttl`` or ``early_refresh``, which
  only cache-aside and write-through entries use.
- ``cachestrat.W003``: ``SIGN`` is off, so anyone who can write to Redis can forge cached
  rows and write-behind writes (and, with pickle, run code in every process).
"""

from __future__ import annotations

from django.conf import settings as django_settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string
from django_redis.cache import RedisCache

from django_cachestrat import conf, options
from django_cachestrat.managers import CachedManager


@checks.register(checks.Tags.caches)
def check_settings(app_configs=None, **kwargs):
    """Check ``CACHESTRAT`` and the cache it names."""
    try:
        cfg = conf.settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="cachestrat.E001")]
    caches = getattr(django_settings, "CACHES", {})
    if cfg.CACHE_ALIAS not in caches:
        return [
            checks.Error(
                f"CACHESTRAT['CACHE_ALIAS'] is {cfg.CACHE_ALIAS!r}, which is not in CACHES.",
                hint=f"Add it to CACHES or set CACHE_ALIAS to one of: {', '.join(caches)}.",
                id="cachestrat.E002",
            )
        ]
    backend = caches[cfg.CACHE_ALIAS].get("BACKEND", "")
    try:
        is_redis = issubclass(import_string(backend), RedisCache)
    except ImportError:
        is_redis = False
    if not is_redis:
        return [
            checks.Error(
                f"CACHES[{cfg.CACHE_ALIAS!r}] uses {backend!r}; django_cachestrat needs "
                "django_redis.cache.RedisCache.",
                id="cachestrat.E003",
            )
        ]
    if not cfg.SIGN:
        return [
            checks.Warning(
                "CACHESTRAT['SIGN'] is False: entries, lookup pointers and write-behind "
                "writes carry no MAC, so anyone who can write to the cache's Redis can forge "
                "cached rows and writes that a flush puts in the database.",
                hint="Leave SIGN on unless Redis is private to this application "
                "(see the README's Security section).",
                id="cachestrat.W003",
            )
        ]
    return []


@checks.register(checks.Tags.models)
def check_models(app_configs=None, **kwargs):
    """Check every cached model's manager and ``CacheMeta``."""
    errors = []
    try:
        cfg: conf.Settings | None = conf.settings()
    except ImproperlyConfigured:
        cfg = None  # check_settings reports it (E001)
    for model in options.cached_models():
        if app_configs is not None and model._meta.app_config not in app_configs:
            continue
        if not isinstance(model._default_manager, CachedManager):
            errors.append(
                checks.Error(
                    f"{model._meta.label} has a caching mixin but its default manager "
                    f"{model._default_manager.name!r} is not a CachedManager.",
                    hint="Add `objects = CachedManager()` as the model's first manager.",
                    obj=model,
                    id="cachestrat.E004",
                )
            )
        elif not isinstance(model._base_manager, CachedManager):
            errors.append(
                checks.Warning(
                    f"{model._meta.label}'s base manager is a plain Manager: updates Django "
                    "makes through it, such as a reverse foreign key's add(), do not drop "
                    "cached rows.",
                    hint='Add `base_manager_name = "objects"` to the model\'s Meta.',
                    obj=model,
                    id="cachestrat.W001",
                )
            )
        if model.cache_strategy.defers_writes:
            cache_meta = getattr(model, "CacheMeta", None)
            unused = [n for n in ("stale_ttl", "early_refresh") if getattr(cache_meta, n, 0)]
            if unused:
                errors.append(
                    checks.Warning(
                        f"{model._meta.label} is write-behind: CacheMeta "
                        f"{' and '.join(unused)} has no effect on it (its views are kept "
                        "current by the writes themselves, and refilled single-flight).",
                        hint="Remove it from CacheMeta.",
                        obj=model,
                        id="cachestrat.W002",
                    )
                )
        errors.extend(
            checks.Error(problem, obj=model, id="cachestrat.E005")
            for problem in options.errors(model)
        )
        errors.extend(_uncached_ancestors(model))
        if cfg is not None:
            errors.extend(_uncarried(model, cfg))
    return errors


def _uncarried(model, cfg: conf.Settings) -> list[checks.Error]:
    return [
        checks.Error(
            f"{model._meta.label}.{field.name} ({type(field).__name__}) may hold values "
            f"that {cfg.SERIALIZER} cannot carry: entries of {model._meta.object_name} "
            "could not be stored or read.",
            hint=(
                "Give it a field of Django's own types, or set CACHESTRAT['SERIALIZER'] to "
                "'django_cachestrat.serializers.PickleSerializer', which carries any "
                "picklable value but runs code a pickle names: only on a Redis nobody else "
                "can write (see the README's Serializers section). If its values are only of "
                "the types the serializer carries, subclass it and return True from "
                "supports() for this field."
            ),
            obj=model,
            id="cachestrat.E007",
        )
        for field in model._meta.concrete_fields
        if not cfg.serializer.supports(field)
    ]


def _uncached_ancestors(model) -> list[checks.Error]:
    meta = model._meta
    # The models whose tables hold columns of this model's rows, the concrete model of a
    # proxy included: a write through any of them must reach the cache.
    tables = [meta.concrete_model] if meta.proxy else []
    tables += [p for p in meta.concrete_model._meta.all_parents if not p._meta.proxy]
    return [
        checks.Error(
            f"{meta.label} is cached but {parent._meta.label}, whose table holds columns "
            f"of its rows, is not: a save() or update() through {parent._meta.object_name} "
            f"leaves {meta.object_name}'s cached rows stale.",
            hint=(
                f"Give {parent._meta.object_name} a strategy mixin and a CachedManager too, "
                f"or do not cache {meta.object_name}."
            ),
            obj=model,
            id="cachestrat.E006",
        )
        for parent in tables
        if not options.is_cached(parent)
    ]

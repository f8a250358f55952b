"""django_cachestrat: caching strategies for Django models, on Redis.

The public names, and nothing else::

    from django_cachestrat import (
        CacheAsideMixin, WriteThroughMixin, WriteBehindMixin, CachedManager, CachedQuerySet,
        invalidate, invalidate_model,
    )

Events are in ``django_cachestrat.signals``; statistics in ``django_cachestrat.stats``
(``from django_cachestrat import stats``, once the apps are loaded).
"""

from django_cachestrat.invalidation import invalidate, invalidate_model
from django_cachestrat.managers import CachedManager, CachedQuerySet
from django_cachestrat.mixins import CacheAsideMixin, WriteBehindMixin, WriteThroughMixin

__all__ = [
    "CacheAsideMixin",
    "CachedManager",
    "CachedQuerySet",
    "WriteBehindMixin",
    "WriteThroughMixin",
    "invalidate",
    "invalidate_model",
]

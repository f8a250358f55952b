"""Receivers of ``pre_save``, ``post_save`` and ``post_delete`` for the cached models.

``connect()`` wires them explicitly, one model at a time (with a ``dispatch_uid``), from
``AppConfig.ready()``; each hands the event to the model's strategy.
"""

from __future__ import annotations

from django.apps import apps
from django.db.models import signals

from django_cachestrat.mixins import CachedModelMixin


def on_pre_save(sender, instance, raw=False, using=None, **kwargs):
    """Let the strategy act before the row is written (write-through announces the write)."""
    sender.cache_strategy.before_save(instance, using)


def on_post_save(sender, instance, created=False, raw=False, using=None, update_fields=None,
                 **kwargs):
    """Let the strategy store or drop the row after commit."""
    sender.cache_strategy.after_save(instance, using, created, update_fields)


def on_post_delete(sender, instance, using=None, **kwargs):
    """Drop the deleted row after commit."""
    sender.cache_strategy.after_delete(instance, using)


def cached_models() -> list[type]:
    """Every installed model with a strategy mixin, proxies included."""
    return [m for m in apps.get_models() if issubclass(m, CachedModelMixin)]


def connect() -> None:
    """Connect the receivers for every cached model (idempotent)."""
    for model in cached_models():
        label = model._meta.label_lower
        signals.pre_save.connect(on_pre_save, sender=model, dispatch_uid=f"cachestrat.pre_save.{label}")
        signals.post_save.connect(on_post_save, sender=model, dispatch_uid=f"cachestrat.post_save.{label}")
        signals.post_delete.connect(
            on_post_delete, sender=model, dispatch_uid=f"cachestrat.post_delete.{label}"
        )

"""Receivers of ``pre_save``, ``post_save`` and ``post_delete`` for the cached models.

``connect()`` wires them explicitly, one model at a time (with a ``dispatch_uid``), from
``AppConfig.ready()``; each hands the event to the model's strategy.
"""

from __future__ import annotations

from functools import partial
from typing import cast

from django.apps import apps
from django.db import models
from django.db.models import signals

from django_cachestrat import invalidation, options
from django_cachestrat.managers import CachedQuerySet

# on_delete handlers whose rows Django deletes with signals (CASCADE) or leaves alone.
_NO_UPDATE = (models.CASCADE, models.PROTECT, models.RESTRICT, models.DO_NOTHING)


def on_pre_save(sender, instance, raw=False, using=None, **kwargs):
    """Let the strategy act before the row is written (write-through announces the write)."""
    sender.cache_strategy.before_save(instance, using)


def on_post_save(
    sender, instance, created=False, raw=False, using=None, update_fields=None, **kwargs
):
    """Let the strategy store or drop the row after commit."""
    sender.cache_strategy.after_save(instance, using, created, update_fields)
    if created:
        invalidation.pointers(sender, [instance], using)


def on_post_delete(sender, instance, using=None, **kwargs):
    """Drop the deleted row after commit."""
    sender.cache_strategy.after_delete(instance, using)


def on_target_pre_delete(model, field, sender, instance, using=None, **kwargs):
    """Drop the rows of ``model`` that ``field`` points from at ``instance``.

    Deleting ``instance`` makes Django set ``field`` (SET_NULL, SET_DEFAULT, SET(...)) on
    those rows with a plain UPDATE that sends no signal; they are listed before it runs.
    """
    limit = CachedQuerySet.bulk_row_limit
    # By the value the column holds: ``instance`` may be of a proxy of the field's target,
    # or of the concrete model of the proxy the field points to.
    target = getattr(instance, field.target_field.attname)
    pointing = model._base_manager.using(using).filter(**{field.attname: target})
    pks = list(pointing.values_list("pk", flat=True)[: limit + 1])
    if len(pks) > limit:
        invalidation.model(model, using)
    else:
        invalidation.rows(model, pks, using)


def connect() -> None:
    """Connect the receivers for every cached model (idempotent)."""
    for model in options.cached_models():
        label = model._meta.label_lower
        signals.pre_save.connect(
            on_pre_save, sender=model, dispatch_uid=f"cachestrat.pre_save.{label}"
        )
        signals.post_save.connect(
            on_post_save, sender=model, dispatch_uid=f"cachestrat.post_save.{label}"
        )
        signals.post_delete.connect(
            on_post_delete, sender=model, dispatch_uid=f"cachestrat.post_delete.{label}"
        )
        if model._meta.proxy:
            continue
        for field in model._meta.concrete_fields:
            if field.many_to_one or field.one_to_one:
                remote = field.remote_field
                assert remote is not None  # a relation has one
                if remote.on_delete in _NO_UPDATE or remote.parent_link:
                    continue
                # Django sends pre_delete with the class of the instances deleted: the
                # target's concrete model, or any proxy of it (the field may be declared
                # to either), so the receiver listens to all of them.
                receiver = partial(on_target_pre_delete, model, field)
                # Resolved to a model class once the apps are ready.
                target_model = cast("type[models.Model]", field.related_model)
                for target in _sharing_table(target_model):
                    signals.pre_delete.connect(
                        receiver,
                        sender=target,
                        weak=False,
                        dispatch_uid=(
                            f"cachestrat.set_on_delete.{label}.{field.name}."
                            f"{target._meta.label_lower}"
                        ),
                    )


def _sharing_table(model: type[models.Model]) -> list[type[models.Model]]:
    """Return ``model``'s concrete model and every proxy of it."""
    concrete = model._meta.concrete_model
    return [m for m in apps.get_models() if m._meta.concrete_model is concrete]

"""Invalidate one row, some rows, or a whole model: always after the commit.

Dropping a row deletes its entry and its lease, so a reader that read the row before the
write committed can no longer store it. First it sets the row's tombstone, for a moment:
a reader that read the row by a lookup value could not take its lease before its read,
and stores the row only if there is none. Dropping a model bumps its version: O(1), no
``KEYS``/``SCAN``. Inside a transaction the work waits for the commit (and is dropped on
rollback); outside one it happens at once. If Redis cannot be reached, the transport keeps
the work and replays it when Redis answers again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from functools import partial

from django.db import models, router, transaction

from django_cachestrat import backends, conf, keys, options, signals, transactions
from django_cachestrat.backends import CacheUnavailable
from django_cachestrat.counters import recorder

#: How much longer than a fill's lease a row's tombstone lives, in ms.
TOMBSTONE_MARGIN_MS = 1000


def rows(
    model: type[models.Model], pks: Iterable[object], using: str, *, created: bool = False
) -> None:
    """Drop the cached rows ``pks`` of ``model`` once the transaction on ``using`` commits.

    ``created``: the rows were just inserted (a negative entry may be cached), so no
    reader can hold an older copy of them, and they need no tombstone.
    """
    pks = list(pks)
    if not pks:
        return
    mark_written(model, using)
    transaction.on_commit(partial(_drop_rows, model, pks, created), using=using)


def tombstone_ms(cfg: conf.Settings) -> int:
    """Return how long a row's tombstone lives (ms): longer than any fill's lease.

    A lookup filler stores the row it read only while the lease it took before that read
    holds, so a tombstone set after its read is still there when it stores.
    """
    return int(cfg.LEASE_TIMEOUT * 1000) + TOMBSTONE_MARGIN_MS


def needs_tombstones(model: type[models.Model]) -> bool:
    """Tell whether dropping a row of ``model`` must leave a tombstone.

    Only lookup fillers look at tombstones, and they store rows of models with lookups
    only, and not of write-behind models (whose rows are views they leave alone).
    """
    strategy = model.cache_strategy  # type: ignore[attr-defined]  # a cached model's, from its mixin
    return bool(options.get(model).lookups) and not strategy.defers_writes


def model(model: type[models.Model], using: str) -> None:
    """Drop every cached row of ``model`` once the transaction on ``using`` commits."""
    mark_written(model, using)
    transaction.on_commit(partial(_drop_model, model), using=using)


def pointers(model: type[models.Model], instances, using: str) -> None:
    """Drop the lookup pointers of ``instances``' values once the transaction commits.

    A pointer can say "no such row" (``NEGATIVE_TTL``); a new row with that value must
    not wait for it to expire. Their leases go too, so a reader that found no row before
    the commit cannot store that answer after it.
    """
    opts = options.get(model)
    if not opts.lookups:
        return
    cfg = conf.settings()
    doomed = []
    for instance in instances:
        for name in opts.lookups:
            attname = model._meta.get_field(name).attname  # type: ignore[union-attr]  # a lookup is a concrete field
            value = getattr(instance, attname, None)
            if value is not None:
                doomed.append(keys.lookup(cfg.KEY_PREFIX, opts.label, attname, value))
                doomed.append(keys.lookup_fill(cfg.KEY_PREFIX, opts.label, attname, value)[0])
    if doomed:
        transaction.on_commit(partial(_drop_keys, model, doomed), using=using)


def _drop_keys(model: type[models.Model], doomed: list[str]) -> None:
    cfg = conf.settings()
    with contextlib.suppress(CacheUnavailable):
        backends.get(cfg.CACHE_ALIAS).delete(
            keys.version(cfg.KEY_PREFIX, options.get(model).label), doomed
        )


def mark_written(model: type[models.Model], using: str) -> None:
    """Note that the open transaction on ``using`` wrote ``model`` (and so its family)."""
    for member in options.family(model):
        transactions.mark_written(using, options.get(member).label)


def _drop_rows(model: type[models.Model], pks: list[object], created: bool = False) -> None:
    cfg = conf.settings()
    transport = backends.get(cfg.CACHE_ALIAS)
    prefix = cfg.KEY_PREFIX
    concrete = model._meta.concrete_model
    # A child's entry (multi-table inheritance) holds its parents' columns and the other
    # way round, so a row is dropped from every cached model of the family.
    for member in options.family(model):
        opts = options.get(member)
        # An insert is new to the model and its children; a parent's row may have existed
        # (a child saved over an existing parent updates it).
        new = created and (member is concrete or concrete in member._meta.all_parents)
        doomed, gone = [], []
        for pk in pks:
            # One entry key a row, whatever schema wrote it (see keys.entry).
            doomed.append(keys.entry(prefix, opts.label, pk))
            lease, _, ready = keys.fill(prefix, opts.label, pk)
            # The ready list too: what a fill pushed there for its waiters is older.
            doomed += [lease, ready]
        if not new and needs_tombstones(member):
            gone = [keys.gone(prefix, opts.label, pk) for pk in pks]
        try:
            transport.delete(
                keys.version(prefix, opts.label),
                doomed,
                tombstones=gone,
                tombstone_ms=tombstone_ms(cfg),
            )
        except CacheUnavailable:
            pass  # kept by the transport and replayed when Redis answers
        recorder.count(opts.label, recorder.INVALIDATIONS, len(pks))
        if signals.cache_invalidate.receivers:
            signals.cache_invalidate.send(sender=member, pks=pks)


def _drop_model(model: type[models.Model]) -> None:
    cfg = conf.settings()
    transport = backends.get(cfg.CACHE_ALIAS)
    for member in options.family(model):
        try:
            transport.bump(keys.version(cfg.KEY_PREFIX, options.get(member).label))
        except CacheUnavailable:
            pass  # kept by the transport and replayed when Redis answers
        recorder.count(options.get(member).label, recorder.MODEL_INVALIDATIONS, 1)
        if signals.cache_invalidate.receivers:
            signals.cache_invalidate.send(sender=member, pks=None)


def invalidate(
    obj: models.Model | type[models.Model], pk: object = None, *, using: str | None = None
) -> None:
    """Drop one cached row: ``invalidate(author)`` or ``invalidate(Author, pk=1)``.

    For writes the app cannot see (raw SQL, other programs). Inside a transaction the row
    is dropped when it commits. ``using`` names the database whose transaction to wait
    for (default: the router's write database for the instance, as its ``save()`` would
    write to; for the model, given a class).
    """
    hints = {}
    if isinstance(obj, models.Model):
        if pk is not None:
            raise TypeError("invalidate(instance) takes no pk; use invalidate(Model, pk=...)")
        model_class, pk, hints = type(obj), obj.pk, {"instance": obj}
        if pk is None:
            raise ValueError(
                f"cannot invalidate an unsaved {model_class.__name__} (its pk is None)"
            )
    elif isinstance(obj, type) and issubclass(obj, models.Model):
        model_class = obj
        if pk is None:
            raise TypeError(
                f"invalidate({obj.__name__}) needs pk=...; "
                f"use invalidate_model({obj.__name__}) to drop every row"
            )
    else:
        raise TypeError(f"invalidate() takes a model instance or class, not {type(obj).__name__}")
    _require_cached(model_class)
    using = using or router.db_for_write(model_class, **hints)
    rows(model_class, [options.get(model_class).to_pk(pk)], using)


def invalidate_model(model_class: type[models.Model], *, using: str | None = None) -> None:
    """Drop every cached row of ``model_class`` in O(1) (a version bump, no key scan)."""
    if not (isinstance(model_class, type) and issubclass(model_class, models.Model)):
        raise TypeError(f"invalidate_model() takes a model class, not {model_class!r}")
    _require_cached(model_class)
    model(model_class, using or router.db_for_write(model_class))


def _require_cached(model_class: type[models.Model]) -> None:
    if not options.is_cached(model_class):
        raise TypeError(
            f"{model_class._meta.label} is not cached: add CacheAsideMixin, "
            "WriteThroughMixin or WriteBehindMixin to its bases."
        )

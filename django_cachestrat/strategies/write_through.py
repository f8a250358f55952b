"""Write-through: a save writes the database, and after commit the cache holds the row."""

from __future__ import annotations

import secrets
import time
from functools import partial

from django.db import models, transaction

from django_cachestrat import backends, codec, conf, invalidation, keys, options, signals
from django_cachestrat.backends import CacheUnavailable
from django_cachestrat.counters import recorder
from django_cachestrat.strategies.base import Strategy, ttl

# Where a save keeps, between pre_save and post_save, what write_begin answered.
_STATE = "_cachestrat_write"
_NOT_BEGUN = object()


class WriteThrough(Strategy):
    """After a save commits, the saved row is stored, so the next read is a hit.

    Two saves of one row whose transactions overlap cannot be ordered from here, so
    when Redis sees that (a write in flight when another begins), the row is dropped
    instead of stored and the next read fills it from the database. The same happens
    for ``save(update_fields=...)`` (the other fields may be stale), deferred fields
    and expressions such as ``F("n") + 1`` (their value is the database's).
    """

    name = "write-through"

    def before_save(self, instance: models.Model, using: str) -> None:
        """Announce the write before it reaches the database (it may autocommit)."""
        if instance.pk is not None:
            instance.__dict__[_STATE] = self._begin(instance)

    def _begin(self, instance: models.Model):
        opts = options.get(type(instance))
        cfg = conf.settings()
        token = secrets.token_hex(8)
        try:
            epoch, contended, version = backends.get(cfg.CACHE_ALIAS).write_begin(
                keys.version(cfg.KEY_PREFIX, opts.label),
                keys.writes(cfg.KEY_PREFIX, opts.label, instance.pk),
                token,
                cfg.WRITE_WINDOW,
            )
        except CacheUnavailable:
            return None
        return instance.pk, token, epoch, contended, version

    def after_save(self, instance: models.Model, using: str, created: bool, update_fields) -> None:
        """Store the saved values after commit, or drop the row when they cannot be trusted."""
        state = instance.__dict__.pop(_STATE, _NOT_BEGUN)
        if state is _NOT_BEGUN or (state is not None and state[0] != instance.pk):
            # A new row whose pk the database chose: nobody else can be writing it yet.
            state = self._begin(instance)
        if state is None:
            # Redis is down: drop the row (replayed later) rather than risk a stale one.
            super().after_save(instance, using, created, update_fields)
            return
        pk, token, epoch, contended, version = state
        opts = options.get(type(instance))
        cfg = conf.settings()
        life = ttl(opts, cfg)
        value = b""
        if update_fields is None:
            expires = int(time.time() * 1000) + life * 1000
            key = keys.entry(cfg.KEY_PREFIX, opts.label, pk)
            try:
                value = codec.encode(opts, version, instance, clean=True, expires=expires, key=key)
            except codec.Unstorable:
                pass
        if len(options.family(type(instance))) > 1:
            # Parents and children (multi-table inheritance) hold columns of this row too;
            # dropped first, since commit callbacks run in the order they were added.
            super().after_save(instance, using, created, update_fields)
        invalidation.mark_written(type(instance), using)
        end = partial(
            self._end,
            type(instance),
            pk,
            token,
            epoch,
            contended or not value,
            value,
            life + opts.grace,
        )
        transaction.on_commit(end, using=using)

    def _end(self, model, pk, token, epoch, contended, value, life) -> None:
        opts = options.get(model)
        cfg = conf.settings()
        prefix = cfg.KEY_PREFIX
        row_keys = (
            *keys.writes(prefix, opts.label, pk),
            keys.entry(prefix, opts.label, pk),
            keys.lease(prefix, opts.label, pk),
            keys.gone(prefix, opts.label, pk),
            keys.fill(prefix, opts.label, pk)[2],
        )
        try:
            stored = backends.get(cfg.CACHE_ALIAS).write_end(
                keys.version(prefix, opts.label),
                row_keys,
                token,
                epoch,
                contended,
                value,
                life,
                invalidation.tombstone_ms(cfg) if invalidation.needs_tombstones(model) else 0,
            )
        except CacheUnavailable:
            return
        counter = recorder.WRITE_THROUGH_STORES if stored else recorder.INVALIDATIONS
        recorder.count(opts.label, counter, 1)
        signal = signals.cache_fill if stored else signals.cache_invalidate
        if signal.receivers:
            kwargs: dict[str, object] = {"keys": 1} if stored else {"pks": [pk]}
            signal.send(sender=model, **kwargs)

    def abort(self, instance: models.Model) -> None:
        """Leave the set of writes in flight when the save raised."""
        state = instance.__dict__.pop(_STATE, None)
        if state is None or state is _NOT_BEGUN:
            return
        cfg = conf.settings()
        opts = options.get(type(instance))
        inflight_key = keys.writes(cfg.KEY_PREFIX, opts.label, state[0])[0]
        try:
            backends.get(cfg.CACHE_ALIAS).write_abort(inflight_key, state[1])
        except CacheUnavailable:
            pass  # the write's deadline takes it out of the set

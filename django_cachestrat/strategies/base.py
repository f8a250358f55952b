"""The read path every strategy shares, and the write hooks a strategy overrides.

Read hit: one ``MGET`` of the model's version and the rows' entries, decode, done.
Read miss: take a lease per missed row, read the database once, store each row only if its
lease still holds (an invalidation in between deletes the lease). Reads inside a
transaction that wrote the model, and reads while Redis is down, go to the database.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Sequence

from django.core.exceptions import ValidationError
from django.db import models

from django_cachestrat import (
    backends,
    codec,
    conf,
    invalidation,
    keys,
    options,
    signals,
    transactions,
)
from django_cachestrat.backends import CacheUnavailable


def _send(signal, model: type[models.Model], count: int) -> None:
    if count and signal.receivers:
        signal.send(sender=model, keys=count)


def ttl(opts: options.CacheOptions, cfg: conf.Settings) -> int:
    """Return the seconds a new entry lives: the model's TTL less a random jitter.

    The jitter keeps keys filled together from expiring together.
    """
    base = opts.ttl or cfg.DEFAULT_TTL
    return max(1, base - random.randint(0, int(base * cfg.TTL_JITTER)))


class Strategy:
    """A caching strategy: the shared read path plus what happens on save and delete.

    The base class is cache-aside: writes go to the database and the row is dropped
    from the cache after commit. Subclasses override the write hooks only.
    """

    name = "cache-aside"

    # -- reads ---------------------------------------------------------------------------

    def get_many(
        self, model: type[models.Model], using: str, pks: Sequence[object]
    ) -> dict[object, models.Model]:
        """Return ``{pk: instance}`` for the rows of ``pks`` that exist, in their order."""
        opts = options.get(model)
        return self._read(model, opts, using, list(dict.fromkeys(opts.to_pk(pk) for pk in pks)))

    def get(self, model: type[models.Model], using: str, lookup: str, value: object):
        """Return the row whose ``lookup`` (``"pk"`` or a ``CacheMeta.lookups`` field) is ``value``.

        Raises ``model.DoesNotExist`` like ``QuerySet.get``.
        """
        if lookup != "pk":
            return self._get_by_lookup(model, using, lookup, value)
        opts = options.get(model)
        pk = opts.to_pk(value)
        obj = self._read(model, opts, using, [pk]).get(pk) if pk is not None else None
        if obj is None:
            raise model.DoesNotExist(
                f"{model._meta.object_name} matching pk={value!r} does not exist."
            )
        return obj

    def _read(self, model, opts, using, pks: list) -> dict[object, models.Model]:
        # The hot path: pks are normalized and unique. A hit is one MGET and a decode.
        cfg = conf.settings()
        if not cfg.ENABLED or not pks or transactions.written(using, opts.label):
            return self._from_db(model, using, pks)
        transport = backends.get(cfg.CACHE_ALIAS)
        prefix = cfg.KEY_PREFIX
        label = opts.label
        fp = opts.fingerprint
        try:
            version, *entries = transport.mget(
                [keys.version(prefix, label), *(keys.entry(prefix, label, fp, pk) for pk in pks)]
            )
        except CacheUnavailable:
            return self._from_db(model, using, pks)
        found: dict[object, models.Model] = {}
        missing = []
        for pk, data in zip(pks, entries, strict=True):
            obj = None
            if data is not None and version is not None:
                obj = codec.decode(opts, data, version, using, model)
            if obj is None:
                missing.append(pk)
            else:
                found[pk] = obj
        if found and signals.cache_hit.receivers:
            signals.cache_hit.send(sender=model, keys=len(found))
        if not missing:
            return found
        _send(signals.cache_miss, model, len(missing))
        found.update(self._fill(model, using, transport, version, missing))
        return {pk: found[pk] for pk in pks if pk in found}

    def _get_by_lookup(self, model, using, name, value):
        # A lookup key holds only the pk. It needs no invalidation: the row it leads to is
        # checked against the value, and a pointer that leads astray is a miss.
        opts = options.get(model)
        cfg = conf.settings()
        field = model._meta.get_field(name)
        if isinstance(value, models.Model):
            value = value.pk
        db = model._base_manager.db_manager(using)
        try:
            value = field.to_python(value)
        except ValidationError:
            return db.get(**{name: value})  # let the database say what is wrong
        if value is None or not cfg.ENABLED or transactions.written(using, opts.label):
            return db.get(**{name: value})
        transport = backends.get(cfg.CACHE_ALIAS)
        pointer = keys.lookup(cfg.KEY_PREFIX, opts.label, field.attname, value)
        try:
            raw_pk = transport.get(pointer)
        except CacheUnavailable:
            return db.get(**{name: value})
        if raw_pk is not None:
            try:
                pk = opts.to_pk(raw_pk.decode())
            except (ValueError, UnicodeDecodeError):
                pk = None
            obj = self._read(model, opts, using, [pk]).get(pk) if pk is not None else None
            if obj is not None and getattr(obj, field.attname) == value:
                return obj
        _send(signals.cache_miss, model, 1)
        obj = db.get(**{name: value})
        if transactions.may_fill(using):
            try:
                transport.set_many([(pointer, str(obj.pk).encode(), ttl(opts, cfg))])
            except CacheUnavailable:
                pass
        return obj

    def _fill(self, model, using, transport, version, pks):
        opts = options.get(model)
        cfg = conf.settings()
        if not transactions.may_fill(using):
            return self._from_db(model, using, pks)
        prefix = cfg.KEY_PREFIX
        lease_keys = [keys.lease(prefix, opts.label, pk) for pk in pks]
        token = secrets.token_hex(8)
        try:
            if version is None:
                version = transport.version(keys.version(prefix, opts.label))
            # The leases are taken before the database is read: that is what lets an
            # invalidation after the read cancel the fill.
            held = transport.acquire_leases(lease_keys, token, cfg.LEASE_TIMEOUT)
        except CacheUnavailable:
            return self._from_db(model, using, pks)
        rows = self._from_db(model, using, pks)
        items = [
            (
                lease_key,
                keys.entry(prefix, opts.label, opts.fingerprint, pk),
                codec.encode(opts, version, rows[pk]),
                ttl(opts, cfg),
            )
            for pk, lease_key, got in zip(pks, lease_keys, held, strict=True)
            if got and pk in rows
        ]
        if items:
            try:
                _send(signals.cache_fill, model, sum(transport.fill_many(items, token)))
            except CacheUnavailable:
                pass
        return rows

    def _from_db(self, model, using, pks) -> dict[object, models.Model]:
        if not pks:
            return {}
        return model._base_manager.using(using).in_bulk(pks)

    # -- writes --------------------------------------------------------------------------

    def before_save(self, instance: models.Model, using: str) -> None:
        """Act before the row is written (``pre_save``, inside the saving transaction)."""

    def after_save(self, instance: models.Model, using: str, created: bool, update_fields) -> None:
        """Act after the row is written (``post_save``): cache-aside drops it after commit."""
        invalidation.rows(type(instance), [instance.pk], using)

    def after_delete(self, instance: models.Model, using: str) -> None:
        """Act after the row is deleted (``post_delete``): drop it after commit."""
        invalidation.rows(type(instance), [instance.pk], using)

    def abort(self, instance: models.Model) -> None:
        """Undo what ``before_save`` announced, after ``save()`` raised."""

"""The read path every strategy shares, and the write hooks a strategy overrides.

Read hit: one ``MGET`` of the model's version and the rows' entries, decode, done.
Read miss: take a lease per missed row, read the database once, store each row only if its
lease still holds (an invalidation in between deletes the lease). A cold lookup reads the
row by value once, under its pointer's lease, and stores the row with the pointer unless
the row's tombstone says an invalidation may have come since. Reads inside a transaction
that wrote the model, and reads while Redis is down, go to the database.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import secrets
import time
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

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
from django_cachestrat.backends.scripts import Acquired, LookupFilled
from django_cachestrat.counters import recorder
from django_cachestrat.counters.recorder import count
from django_cachestrat.signing import Unverified
from django_cachestrat.strategies import reads
from django_cachestrat.strategies.reads import send

logger = logging.getLogger("django_cachestrat")


def ttl(opts: options.CacheOptions, cfg: conf.Settings) -> int:
    """Return the seconds a new entry lives: the model's TTL less a random jitter.

    The jitter keeps keys filled together from expiring together.
    """
    base = opts.ttl or cfg.DEFAULT_TTL
    return max(1, base - random.randint(0, int(base * cfg.TTL_JITTER)))


def _encode_fill(
    opts, cfg, version: bytes, obj, delta: int, now: int, key: str
) -> tuple[bytes, int]:
    """Return the entry of a row read from the database, and its life in Redis (seconds).

    ``delta``: how long the read took (ms); ``now``: the time (ms since the epoch);
    ``key``: the entry key it is stored under.
    """
    fresh = ttl(opts, cfg)
    entry = codec.encode(opts, version, obj, expires=now + fresh * 1000, delta=delta, key=key)
    return entry, fresh + opts.grace


def _not_stored(opts, exc: Exception) -> None:
    """Log a row read from the database that cannot be stored: it is served, not cached.

    A value the serializer cannot carry, where check ``cachestrat.E007`` was silenced:
    each read of the row reads the database.
    """
    logger.warning("django_cachestrat: a row of %s is not cached: %s", opts.label, exc)


class _Lookup(NamedTuple):
    """One ``get_cached(<field>=value)`` read: what its steps share."""

    model: type[models.Model]
    opts: options.CacheOptions
    using: str
    field: models.Field
    value: object
    pointer: str  #: the pointer's key: it holds the row's pk, or "-" (no such row)
    fill_keys: tuple[str, str, str]  #: the pointer's lease, waiters and ready list


class Strategy:
    """A caching strategy: the shared read path plus what happens on save and delete.

    The base class is cache-aside: writes go to the database and the row is dropped
    from the cache after commit. Subclasses override the write hooks only.
    """

    name = "cache-aside"
    #: True when saves may reach the database after they return (write-behind).
    defers_writes = False

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
            raise model.DoesNotExist(  # type: ignore[attr-defined]  # every model's; not in the stubs
                f"{model._meta.object_name} matching pk={value!r} does not exist."
            )
        return obj

    def _read(self, model, opts, using, pks: list) -> dict[object, models.Model]:
        # The hot path: pks are normalized and unique. A hit is one MGET and a decode.
        cfg = conf.settings()
        if not cfg.ENABLED or not pks or transactions.written(using, opts.label):
            return self._from_db(model, using, pks)
        entry_keys = keys.entries(cfg.KEY_PREFIX, opts.label, pks)
        version_key = keys.version(cfg.KEY_PREFIX, opts.label)
        groups = backends.get(cfg.CACHE_ALIAS).split(entry_keys)
        if len(groups) == 1:
            node = groups[0][0]
            return self._read_node(node, model, opts, using, pks, [version_key, *entry_keys])
        # A ring: each node's rows with that node's version, one round trip a node.
        found: dict[object, models.Model] = {}
        for node, where in groups:
            part = [pks[i] for i in where]
            names = [version_key, *(entry_keys[i] for i in where)]
            found.update(self._read_node(node, model, opts, using, part, names))
        return {pk: found[pk] for pk in pks if pk in found}

    def _read_node(self, transport, model, opts, using, pks: list, names: list) -> dict:
        """Read rows ``pks`` from the node holding them: ``names`` are its version and entries."""
        label = opts.label
        try:
            version, *entries = transport.mget(names)
        except CacheUnavailable:
            count(label, recorder.DEGRADED_READS, len(pks))
            return self._from_db(model, using, pks)
        # Only models with stale_ttl or early_refresh look at an entry's age.
        now = time.time() * 1000 if opts.stale_ttl or opts.early_refresh else 0
        found: dict[object, models.Model] = {}
        missing = []
        unusable: dict[object, bytes] = {}
        stale = []
        early = []
        decoded = (
            codec.decode_many(opts, entries, version, using, model, names[1:], ages=bool(now))
            if version is not None
            else [None] * len(pks)
        )
        for pk, data, entry in zip(pks, entries, decoded, strict=True):
            if entry is None:
                missing.append(pk)
                if data is not None:
                    unusable[pk] = data
                continue
            obj = entry[0]
            if obj is not None:
                found[pk] = obj
            if now and entry.expires:
                if now >= entry.expires:
                    stale.append(pk)
                elif opts.early_refresh and _xfetch(now, entry, opts.early_refresh):
                    early.append(pk)
        hits = len(pks) - len(missing)
        if hits:
            # Counted in process, sent later: no Redis call (``counters.recorder``).
            count(label, recorder.HITS, hits)
            if len(found) < hits:  # cached "no such row" answers
                count(label, recorder.NEGATIVE_HITS, hits - len(found))
            if signals.cache_hit.receivers:
                signals.cache_hit.send(sender=model, keys=hits)
        if stale or early:
            self._refresh(model, using, transport, version, stale, early, found)
        if not missing:
            return found
        send(signals.cache_miss, model, len(missing))
        found.update(reads.fill(Entries(self, model, using, transport, version, unusable), missing))
        return {pk: found[pk] for pk in pks if pk in found}

    def _get_by_lookup(self, model, using, name, value):
        # A lookup key holds only the pk (or "-": no such row, for NEGATIVE_TTL). It needs
        # no invalidation on update: the row it leads to is checked against the value, and
        # a pointer that leads astray is a miss. A miss is single-flight, as for rows.
        opts = options.get(model)
        cfg = conf.settings()
        field = model._meta.get_field(name)
        if isinstance(value, models.Model):
            value = value.pk
        try:
            value = field.to_python(value)
        except ValidationError:
            return self._lookup_db(model, using, name, value)  # let the database say what is wrong
        if value is None or not cfg.ENABLED or transactions.written(using, opts.label):
            return self._lookup_db(model, using, name, value)
        prefix = cfg.KEY_PREFIX
        lookup = _Lookup(
            model,
            opts,
            using,
            field,
            value,
            keys.lookup(prefix, opts.label, field.attname, value),
            keys.lookup_fill(prefix, opts.label, field.attname, value),
        )
        # The pointer's node (on a ring, maybe not its row's) does the whole lookup.
        transport = backends.get(cfg.CACHE_ALIAS).node(lookup.pointer)
        try:
            raw = transport.get(lookup.pointer)
        except CacheUnavailable:
            count(opts.label, recorder.DEGRADED_READS, 1)
            return self._lookup_db(model, using, name, value)
        if raw is not None:
            found = self._follow(lookup, raw)
            if found is not None:
                return found
        send(signals.cache_miss, model, 1)
        if not transactions.may_fill(using):
            return self._lookup_db(model, using, name, value)
        return self._fill_lookup(lookup, transport, raw)

    def _fill_lookup(self, lookup: _Lookup, transport, seen: bytes | None):
        """Fill a missed pointer, single-flight; ``seen`` is a pointer that led astray."""
        cfg = conf.settings()
        token = secrets.token_hex(8)
        try:
            status, raw, version = transport.acquire_pointer(
                keys.version(cfg.KEY_PREFIX, lookup.opts.label),
                lookup.pointer,
                lookup.fill_keys[0],
                seen,
                token,
                cfg.LEASE_TIMEOUT,
            )
        except CacheUnavailable:
            return self._db_lookup(lookup)
        if status is Acquired.TAKEN:
            return self._load_lookup(lookup, transport, token, version)
        if status is Acquired.HELD:  # another reader fills it: wait for its pointer
            if not cfg.FILL_WAIT:
                return self._db_lookup(lookup)
            (raw,) = reads.await_fills(
                lookup.model, transport, [(lookup.pointer, lookup.fill_keys)], transport.wait_many
            )
            if raw is reads.TAKE_OVER:  # its filler failed or died: fill it ourselves
                return self._fill_lookup(lookup, transport, seen)
        # The pointer (FILLED: another reader filled it since our read), or TIMEOUT.
        found = self._follow(lookup, raw) if isinstance(raw, bytes) else None
        return found if found is not None else self._db_lookup(lookup)

    def _load_lookup(self, lookup: _Lookup, transport, token: str, version: bytes):
        """Under the pointer's lease, read the row by value; store the pointer and the row.

        One query. The row's entry goes in with the pointer, in one script, unless an
        invalidation may have come since the read (see ``scripts.LOOKUP_FILL``).
        """
        opts = lookup.opts
        cfg = conf.settings()
        prefix = cfg.KEY_PREFIX
        started = time.monotonic()
        obj = self._read_by_value(lookup, transport, token, self._lookup_db)
        delta = int((time.monotonic() - started) * 1000)
        row_keys = (
            keys.entry(prefix, opts.label, obj.pk),
            keys.lease(prefix, opts.label, obj.pk),
            keys.gone(prefix, opts.label, obj.pk),
        )
        now = int(time.time() * 1000)
        pointer = pointer_item(cfg, lookup, str(obj.pk).encode(), ttl(opts, cfg))
        try:
            entry, life = _encode_fill(opts, cfg, version, obj, delta, now, row_keys[0])
        except codec.Unstorable as exc:
            _not_stored(opts, exc)
            self._store_pointer(transport, token, lookup.fill_keys, pointer)
            return obj
        if backends.get(cfg.CACHE_ALIAS).node(row_keys[0]) is not transport:
            # On a ring, a row on another node than its pointer: the version read with the
            # pointer's lease is not its node's, so only the pointer is stored; the row
            # fills on its first read by pk.
            self._store_pointer(transport, token, lookup.fill_keys, pointer)
            return obj
        try:
            filled = transport.fill_lookup(token, pointer, (row_keys, entry, life))
        except CacheUnavailable:
            return obj
        if filled is LookupFilled.BOTH:
            send(signals.cache_fill, lookup.model, 1)
        return obj

    def _read_by_value(self, lookup: _Lookup, transport, token: str, read):
        """Return ``read(model, using, name, value)``, run under the pointer's lease.

        "No such row" is stored as the pointer ``-`` (for ``NEGATIVE_TTL``) and raised; on
        any other error the lease is given back, so a waiting reader takes over at once.
        """
        cfg = conf.settings()
        try:
            return read(lookup.model, lookup.using, lookup.field.name, lookup.value)
        except lookup.model.DoesNotExist:  # type: ignore[attr-defined]  # as above
            negative = pointer_item(cfg, lookup, b"-", cfg.NEGATIVE_TTL)
            self._store_pointer(
                transport, token, lookup.fill_keys, negative if cfg.NEGATIVE_TTL else None
            )
            raise
        except BaseException:
            self._store_pointer(transport, token, lookup.fill_keys, None)
            raise

    def _lookup_db(self, model, using, name, value):
        """Read the row whose ``name`` is ``value`` from the database (a lookup miss)."""
        return model._base_manager.db_manager(using).get(**{name: value})

    def _db_lookup(self, lookup: _Lookup):
        """Read a lookup's row from the database, filling nothing."""
        return self._lookup_db(lookup.model, lookup.using, lookup.field.name, lookup.value)

    def _follow(self, lookup: _Lookup, raw: bytes):
        """Return the row a pointer leads to if it still has the lookup's value, else None.

        Raises ``DoesNotExist`` for a cached "no such row".
        """
        model, field = lookup.model, lookup.field
        signer = conf.settings().signer
        if signer is not None:
            try:
                opened = signer.open_pointer(lookup.pointer, raw, time.time())
            except (Unverified, ValueError) as exc:
                codec.unreadable(lookup.opts, exc, "lookup pointer")
                return None
            if opened is None:
                return None  # past its TTL: a copy of an older pointer, put back
            raw = opened
        if raw == b"-":
            # Answered by the cache: a hit for the statistics (no ``cache_hit`` is sent).
            count(lookup.opts.label, recorder.HITS, 1)
            count(lookup.opts.label, recorder.NEGATIVE_HITS, 1)
            raise model.DoesNotExist(  # type: ignore[attr-defined]  # as above
                f"{model._meta.object_name} matching {field.name}={lookup.value!r} does not exist."
            )
        try:
            pk = lookup.opts.to_pk(raw.decode())
        except (ValueError, UnicodeDecodeError):
            return None
        obj = self._read(model, lookup.opts, lookup.using, [pk]).get(pk) if pk is not None else None
        if obj is not None and getattr(obj, field.attname) == lookup.value:
            return obj
        return None

    @staticmethod
    def _store_pointer(transport, token, fill_keys, item) -> None:
        with contextlib.suppress(CacheUnavailable):
            if item is None:
                transport.release([fill_keys], token)
            else:
                transport.fill_many([item], token)

    def _refresh(self, model, using, transport, version, stale, early, found) -> None:
        # One reader refreshes (the one that gets the lease); the others keep the value
        # they have: stale-while-revalidate for expired rows, XFetch for early ones.
        cfg = conf.settings()
        opts = options.get(model)
        pks = stale + early
        token = secrets.token_hex(8)
        try:
            held = transport.acquire_leases(
                [keys.lease(cfg.KEY_PREFIX, opts.label, pk) for pk in pks],
                token,
                cfg.LEASE_TIMEOUT,
            )
        except CacheUnavailable:
            return
        mine = [pk for pk, got in zip(pks, held, strict=True) if got]
        if mine and transactions.may_fill(using):
            rows = Entries(self, model, using, transport, version).load(mine, token)
            for pk in mine:
                if pk in rows:
                    found[pk] = rows[pk]
                else:
                    found.pop(pk, None)
        served_stale = len([pk for pk in stale if pk not in mine])
        send(signals.cache_stale, model, served_stale)
        count(opts.label, recorder.EARLY_REFRESHES, len([pk for pk in early if pk in mine]))

    def _from_db(self, model, using, pks) -> dict[object, models.Model]:
        if not pks:
            return {}
        return model._base_manager.using(using).in_bulk(pks)

    # -- writes --------------------------------------------------------------------------

    def before_save(self, instance: models.Model, using: str) -> None:
        """Act before the row is written (``pre_save``, inside the saving transaction)."""

    def after_save(self, instance: models.Model, using: str, created: bool, update_fields) -> None:
        """Act after the row is written (``post_save``): cache-aside drops it after commit."""
        invalidation.rows(type(instance), [instance.pk], using, created=created)

    def pending_rows(self, model: type[models.Model], among=None) -> list:
        """Return the pks of rows (of ``among``, if given) with writes not in the database yet.

        Only a strategy that ``defers_writes`` has any. A queryset ``update()`` asks, to
        tell ``supersede`` which of its rows had some.
        """
        return []

    def supersede(self, model: type[models.Model], items, using: str) -> None:
        """Note fields written to the database directly, per ``(pk, attnames)``.

        Called for saves, ``update()`` and ``bulk_update()``; write-behind forgets the
        unflushed writes of those fields once the transaction commits.
        """

    def after_delete(self, instance: models.Model, using: str) -> None:
        """Act after the row is deleted (``post_delete``): drop it after commit."""
        invalidation.rows(type(instance), [instance.pk], using)

    def abort(self, instance: models.Model) -> None:
        """Undo what ``before_save`` announced, after ``save()`` raised."""


def pointer_item(cfg, lookup: _Lookup, pk: bytes, life: int) -> tuple:
    """Return a pointer to store (``fill_many``'s item): to ``pk`` (or ``-``), for ``life`` s.

    Signed, with the time its TTL ends, unless ``SIGN`` is off.
    """
    value = pk
    if cfg.signer is not None:
        value = cfg.signer.seal_pointer(lookup.pointer, pk, int(time.time()) + life)
    return (lookup.fill_keys, lookup.pointer, value, life)


def _xfetch(now: float, entry, beta: float) -> bool:
    # Vattani et al., "Optimal Probabilistic Cache Stampede Prevention" (VLDB 2015):
    # recompute early with a probability that grows as expiry nears, scaled by how long
    # a recomputation takes. 1 - random() is in (0, 1], so the log is defined.
    return now - entry.delta * beta * math.log(1.0 - random.random()) >= entry.expires


class Entries(reads.Form):
    """The read engine's form for rows cached as entries (cache-aside, write-through).

    ``version`` is the model's version as the read saw it (None: not read yet);
    ``seen``, per pk, the unusable bytes the read found (an older version's, another
    schema's, unreadable).
    """

    def __init__(self, strategy, model, using, transport, version, seen=None):
        super().__init__(model, using, transport)
        self.strategy = strategy
        self.opts = options.get(model)
        self.version = version
        self.seen = seen or {}
        # A reader that finds a lease held is counted as a waiter by the lease script, and
        # the filler pushes it the entry: a waiter's whole read is three round trips.
        self.counts_waiters = bool(self.cfg.FILL_WAIT)
        prefix, label = self.cfg.KEY_PREFIX, self.opts.label
        self._entry = partial(keys.entry, prefix, label)
        self._lease = partial(keys.lease, prefix, label)
        self._fills = partial(keys.fill, prefix, label)

    def acquire(self, pks, token):
        """Take leases, unless another reader filled the entry since our read."""
        if self.version is None:
            self.version = self.transport.version(
                keys.version(self.cfg.KEY_PREFIX, self.opts.label)
            )
        return self.transport.acquire_or_get(
            [(self._entry(pk), self._fills(pk), self.seen.get(pk)) for pk in pks],
            token,
            self.cfg.LEASE_TIMEOUT,
            wait=self.counts_waiters,
        )

    def retake(self, pks, token):
        """Take the leases of rows whose entry was of an older version, or unreadable."""
        return self.transport.acquire_leases(map(self._lease, pks), token, self.cfg.LEASE_TIMEOUT)

    def decode(self, pk, raw):
        """Return the row an entry holds, ``reads.ABSENT``, or None (unusable)."""
        entry = codec.decode(self.opts, raw, self.version, self.using, self.model, self._entry(pk))
        if entry is None:
            return None
        return reads.ABSENT if entry.obj is None else entry.obj

    def slots(self, pks):
        """Return each row's entry key and fill keys."""
        return [(self._entry(pk), self._fills(pk)) for pk in pks]

    def wait(self, slots):
        """Check on fills others hold."""
        return self.transport.wait_many(slots)

    def load(self, pks, token):
        """Read ``pks`` from the database under our leases and store what was read."""
        opts, cfg = self.opts, self.cfg
        started = time.monotonic()
        try:
            rows = self.direct(pks)
        except BaseException:
            # Give the leases back so a waiting reader takes over now, not at expiry.
            with contextlib.suppress(CacheUnavailable):
                self.transport.release([self._fills(pk) for pk in pks], token)
            raise
        delta = int((time.monotonic() - started) * 1000)
        now = int(time.time() * 1000)
        items, unfilled = [], []
        for pk in pks:
            obj = rows.get(pk)
            key = self._entry(pk)
            if obj is not None:
                try:
                    value = _encode_fill(opts, cfg, self.version, obj, delta, now, key)
                except codec.Unstorable as exc:
                    _not_stored(opts, exc)
                    unfilled.append(self._fills(pk))
                    continue
                items.append((self._fills(pk), key, *value))
            elif cfg.NEGATIVE_TTL:
                expires = now + cfg.NEGATIVE_TTL * 1000
                absent = codec.encode_absent(opts, self.version, key, expires)
                items.append((self._fills(pk), key, absent, cfg.NEGATIVE_TTL))
            else:
                unfilled.append(self._fills(pk))
        try:
            if items:
                send(signals.cache_fill, self.model, sum(self.transport.fill_many(items, token)))
            if unfilled:
                self.transport.release(unfilled, token)
        except CacheUnavailable:
            pass
        return rows

    def direct(self, pks):
        """Read ``pks`` from the database."""
        return self.strategy._from_db(self.model, self.using, pks)

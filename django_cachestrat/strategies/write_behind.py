"""Write-behind: a save updates the cache and records a pending write; Celery flushes later.

A row's cached *view* is a Redis hash that every save merges into and every increment
adds to, on the server, in the same script that records the pending write. Reads return
the view, so they see every write at once. A view with unflushed writes is pinned (no
TTL) and survives ``invalidate_model``; if it is dropped anyway (an invalidation after a
synchronous write, an eviction), the next read rebuilds it from the database plus the
writes still pending, including those of a batch in flight that has not committed.

Pending writes carry no database alias: each model's are flushed to one database,
``flush_alias(model)``, the router's write database for it. So a write is deferred only
when it goes to that database; one to another database (an instance read with
``using()``, ``db_manager()``, a router that routes by instance) is written there at once,
and leaves the pending writes of the flush database's row alone.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from functools import partial

from django.core.exceptions import ValidationError
from django.db import connections, models, router, transaction
from django.db.models import F

from django_cachestrat import codec, conf, invalidation, keys, options, signals, transactions
from django_cachestrat.backends import CacheUnavailable, WriteUncertain
from django_cachestrat.backends.scripts import Recorded
from django_cachestrat.counters import recorder
from django_cachestrat.strategies import reads
from django_cachestrat.strategies.base import Strategy, pointer_item, ttl
from django_cachestrat.strategies.reads import send
from django_cachestrat.write_behind import applied
from django_cachestrat.write_behind.pending import NeedsView, NotACounter, PendingWrites, record_all
from django_cachestrat.write_behind.views import Views

logger = logging.getLogger("django_cachestrat")

_UNSTORABLE = (
    "django_cachestrat: a write-behind write of %s pk=%r is written to the database now: %s."
)
_UNCERTAIN = (
    "django_cachestrat: Redis did not answer write-behind write(s) of %s (%d), even sent "
    "again; kept, and sent again when it answers (each counts once)."
)


def flush_alias(model: type[models.Model]) -> str:
    """Return the database that ``model``'s pending writes are flushed to.

    The router's write database for the model, asked without hints: the flusher has only
    the model and the pk of a pending write, no instance to route by.
    """
    return router.db_for_write(model)


class WriteBehind(Strategy):
    """Saves of existing rows go to Redis at once and to the database in batches."""

    name = "write-behind"
    defers_writes = True

    # -- reads ---------------------------------------------------------------------------

    def _read(self, model, opts, using, pks: list) -> dict[object, models.Model]:
        # A transaction reads its own write-behind writes (kept for its commit), as it
        # would plain saves: laid over what Redis or the database has.
        kept = _kept_writes(model, pks)
        rows = self._read_committed(model, opts, using, pks, kept)
        return _lay_kept(rows, kept) if kept else rows

    def _read_committed(self, model, opts, using, pks: list, kept) -> dict[object, models.Model]:
        """Read rows as Redis and the database have them (with their pending writes).

        ``kept``: the transaction's own writes, from ``_kept_writes``.
        """
        cfg = conf.settings()
        if not cfg.ENABLED or not pks or transactions.written(using, opts.label):
            return self._with_pending(model, using, pks, _superseded(kept))
        views = Views(model)
        groups = views.by_node(pks)
        if len(groups) == 1:
            node = groups[0][0]
            if node is not views.transport:
                views = Views(model, node)
            return self._read_views(views, model, opts, using, pks)
        # A ring: each node's rows with that node's version, one round trip a node.
        found: dict[object, models.Model] = {}
        for node, part in groups:
            found.update(self._read_views(Views(model, node), model, opts, using, part))
        return {pk: found[pk] for pk in pks if pk in found}

    def _read_views(self, source, model, opts, using, pks: list) -> dict[object, models.Model]:
        """Read rows ``pks`` through ``source`` (``Views`` bound to the node holding them all)."""
        node = source.transport
        try:
            version, views = source.read(pks)
        except CacheUnavailable:
            recorder.count(opts.label, recorder.DEGRADED_READS, len(pks))
            return self._from_db(model, using, pks)
        found: dict[object, models.Model] = {}
        missing = []
        seen = {}
        for pk, view in zip(pks, views, strict=True):
            obj = self._decode(opts, pk, view, version, using, model)
            if obj is None:
                missing.append(pk)
                if view:
                    seen[pk] = view
            elif obj is not reads.ABSENT:
                found[pk] = obj
        hits = len(pks) - len(missing)
        send(signals.cache_hit, model, hits)
        if len(found) < hits:  # cached "no such row" answers
            recorder.count(opts.label, recorder.NEGATIVE_HITS, hits - len(found))
        if not missing:
            return found
        send(signals.cache_miss, model, len(missing))
        found.update(reads.fill(_ViewForm(self, model, using, node, seen), missing))
        return {pk: found[pk] for pk in pks if pk in found}

    def _decode(self, opts, pk, view, version, using, model):
        """Return the row a view holds, ``reads.ABSENT`` for "no such row", or None (unusable).

        Another schema's view (a rolling deploy) is a silent miss: the fill replaces it.
        """
        if not view or view.get("__f") != opts.fingerprint.encode():
            return None
        if view.get("__p") != b"1" and (version is None or view.get("__v") != version):
            if version is not None and view.get("__n") == version:
                return reads.ABSENT
            return None
        pk_name = opts.pk_field.attname
        tag = keys.behind_row_tag(conf.settings().KEY_PREFIX, opts.label, pk).encode()
        read, counters = codec.open_view_value, opts.counters
        try:
            # The pk is the key's; a view may not repeat it.
            values = tuple(
                pk if name == pk_name else read(tag, name, view[name], counters)
                for name in opts.attnames
            )
        except KeyError:
            return None  # a partial view: a miss
        except Exception as exc:  # unreadable, or a value whose MAC does not verify
            codec.unreadable(opts, exc, "view")
            return None
        return codec.build(model, opts, using, values)

    def _lookup_db(self, model, using, name, value):
        """Read the row by a lookup, with its pending writes laid over, as pk reads do."""
        obj = super()._lookup_db(model, using, name, value)
        try:
            pending = PendingWrites(model).layers([obj.pk])
        except CacheUnavailable:
            pending = None
        kept = _kept_writes(model, [obj.pk])
        if pending:
            skip = _superseded(kept)
            obj = self._with_pending(model, using, [obj.pk], skip).get(obj.pk, obj)
        return _lay_kept({obj.pk: obj}, kept)[obj.pk] if kept else obj

    def _load_lookup(self, lookup, transport, token, version):
        """Under the pointer's lease, read the row's pk by value; store it, read the row by pk.

        A write-behind row is its view (the database's row plus the writes pending), which
        the read by pk returns, or fills single-flight: the pointer is all this stores.
        One ``SELECT`` of the pk, and no write transaction when the row is cached.
        """
        pk = self._read_by_value(lookup, transport, token, _select_pk)
        cfg = conf.settings()
        stored = pointer_item(cfg, lookup, str(pk).encode(), ttl(lookup.opts, cfg))
        self._store_pointer(transport, token, lookup.fill_keys, stored)
        obj = self._read(lookup.model, lookup.opts, lookup.using, [pk]).get(pk)
        return obj if obj is not None else self._db_lookup(lookup)  # deleted since: ask again

    def _with_pending(self, model, using, pks, skip=None) -> dict[object, models.Model]:
        """Read rows from the database with the writes still pending in Redis laid over."""
        return self._overlay(model, using, pks, skip)[0]

    def _overlay(self, model, using, pks, skip=None) -> tuple[dict, dict | None]:
        """Return the rows from the database with their pending writes laid over.

        Also the pending writes read, or None if Redis could not be read (the rows are
        then the database's alone). ``skip``: per pk, fields whose pending writes the
        open transaction has replaced by writing them directly.
        """
        pending = PendingWrites(model)
        try:
            layers = pending.layers(pks)
        except CacheUnavailable:
            return self._from_db(model, using, pks), None
        if not layers:
            return model._base_manager.using(using).in_bulk(pks), layers
        # Rows with pending writes are read from the database the writes are flushed to,
        # where the lock below makes a flush of them wait (a read replica could neither
        # lock them nor hold what the pending writes are laid over).
        using = flush_alias(model)
        base = model._base_manager.using(using)
        with transaction.atomic(using=using):
            # The rows first, locked (on SQLite, the read lock of the transaction), then
            # the writes again: a flush of these rows now waits for us, so what Redis
            # holds and what the database has agree (a batch is in AppliedBatch or not).
            rows = base.select_for_update().in_bulk(pks)
            try:
                layers = pending.layers(pks)
            except CacheUnavailable:
                return rows, None
            markers = {m for stack in layers.values() for layer in stack for m in layer.markers}
            done = applied.applied(using, markers)
        known = set(options.get(model).attnames)
        for pk, stack in layers.items():
            obj = rows.get(pk)
            if obj is None:
                continue
            void = skip.get(pk, ()) if skip else ()
            for markers_, fields, deltas in stack:
                if any(marker in done for marker in markers_):
                    continue  # in the database already, or void
                # A field this schema does not have was written by a process of another
                # (a rolling deploy): its flush deals with it; this row has no place for it.
                for name, value in fields.items():
                    if name not in void and name in known:
                        setattr(obj, name, value)
                for name, amount in deltas.items():
                    if name not in void and name in known:
                        setattr(obj, name, getattr(obj, name) + amount)
        return rows, layers

    # -- writes --------------------------------------------------------------------------

    def save_behind(self, instance: models.Model, update_fields, using: str) -> bool:
        """Record a save of an existing row in Redis; False if it must go to the database.

        ``using``: the database the save writes to, which must be ``flush_alias(model)``.
        It must go to the database when the values are not what the database would store
        (expressions, naive datetimes, extra decimal places) or Redis cannot be reached.
        """
        model = type(instance)
        opts = options.get(model)
        if opts.generated:
            # A view cannot compute a generated column from the values saved into it.
            return False
        meta = model._meta
        deferred = instance.get_deferred_fields()
        if update_fields is None and deferred:
            # As Model.save does for an instance loaded with only()/defer(): save the
            # loaded fields only.
            update_fields = [f.attname for f in opts.fields if f.attname not in deferred]
        chosen = _saved_fields(opts, update_fields)
        if update_fields is not None:
            unknown = set(update_fields) - {f.name for f in chosen} - {f.attname for f in chosen}
            if unknown:
                raise ValueError(
                    f"The following fields do not exist in {meta.object_name} or are not "
                    f"concrete: {', '.join(sorted(unknown))}."
                )
        clean = codec.cleaners(model)
        try:
            fields = {}
            for field in chosen:
                # As Model.save does: auto_now fields take their value here.
                value = field.pre_save(instance, False)
                fields[field.attname] = clean[field.attname](value)
        except codec.Unstorable as exc:
            logger.debug("write-behind save of %s written at once: %s", opts.label, exc)
            return False
        full = update_fields is None
        if connections[using].in_atomic_block:
            # Inside a transaction the write is recorded when it commits, and forgotten
            # if it rolls back.
            self._defer(model, instance.pk, fields, {}, full=full, using=using)
            return True
        return self.record(model, instance.pk, fields, {}, full=full)

    def _defer(self, model, pk, fields, deltas, *, full: bool, using: str) -> None:
        """Keep a write for the commit, merged with the transaction's earlier ones of the row.

        ``using``: the flush database, whose open transaction the write waits for.
        """
        box = transactions.outbox(using, _record_committed)
        key = (model._meta.concrete_model, pk)  # a proxy's writes are its model's
        write = box.get(key)
        if write is None:
            box[key] = _Deferred(dict(fields), dict(deltas), full)
        else:
            write.merge(fields, deltas, full)

    def _record_or_write(self, model, pk, fields, deltas, *, full: bool) -> bool:
        """Record the write in Redis, else write it to the database now; True if recorded."""
        if self.record(model, pk, fields, deltas, full=full):
            return True
        self._write_now(model, pk, fields, deltas)
        return False

    def _write_now(self, model, pk, fields, deltas, using: str | None = None) -> None:
        """Write ``fields`` and ``deltas`` to the database at once.

        When Redis is unreachable (to the flush database), or for an increment of a row in
        another database (``using``).
        """
        using = using or flush_alias(model)
        values = dict(fields)
        for name, amount in deltas.items():
            values[name] = fields[name] + amount if name in fields else F(name) + amount
        updated = models.QuerySet(model, using=using).filter(pk=pk).update(**values)
        if not updated:
            raise model.DoesNotExist(f"{model._meta.object_name} pk={pk!r} does not exist.")
        invalidation.rows(model, [pk], using)

    def increment(self, model, pk, deltas: dict[str, int], using: str | None = None) -> bool:
        """Add ``deltas`` to the row's counters, in Redis now and in the database later.

        ``using``: the database of the row (default: ``flush_alias(model)``). In another
        database than the flush one, the row is updated there at once (an ``F()`` update).
        Returns True when the increment is deferred (recorded in Redis, or kept for the
        commit of the open transaction), False when it was written to the database now.
        """
        opts = options.get(model)
        pk = opts.to_pk(pk)
        if not deltas:
            raise TypeError("increment_behind() needs at least one field=amount.")
        by_attname = {}
        for name, amount in deltas.items():
            field = _counter_field(model, name)
            if type(amount) is not int:
                raise TypeError(f"increment_behind({name}=...) takes an int, not {amount!r}.")
            by_attname[field.attname] = amount
        deltas = by_attname
        target = flush_alias(model)
        if opts.generated or (using is not None and using != target):
            # A view cannot compute a generated column from the counter it increments,
            # and a pending write would be flushed to the flush database, not this one.
            self._write_now(model, pk, {}, deltas, using)
            return False
        if connections[target].in_atomic_block:
            self._defer(model, pk, {}, deltas, full=False, using=target)
            return True
        return self._record_or_write(model, pk, {}, deltas, full=False)

    def record(self, model, pk, fields, deltas, *, full: bool) -> bool:
        """Record a write of row ``pk`` in Redis; False if it must go to the database.

        ``fields`` are values saved, ``deltas`` increments; ``full`` says ``fields`` holds
        every field. A partial write to a row with no view reads the row once first.
        Raises ``DoesNotExist`` for a missing row.
        """
        pending = PendingWrites(model)
        try:
            try:
                status = pending.record(pk, fields, deltas, full=full)
            except NeedsView:
                # The view a write merges into is the row it will be flushed to: read from
                # the flush database, not from a replica that may lag behind it.
                using = flush_alias(model)
                if pk not in reads.fill(_ViewForm(self, model, using, pending.node(pk)), [pk]):
                    raise model.DoesNotExist(
                        f"{model._meta.object_name} pk={pk!r} does not exist."
                    ) from None
                status = pending.record(pk, fields, deltas, full=full)
        except NeedsView:
            logger.warning(
                "django_cachestrat: no view of %s pk=%r to merge into; written at once.",
                options.get(model).label,
                pk,
            )
            return False
        except NotACounter as exc:
            raise ValueError(f"increment_behind(): {exc} is NULL or not an integer.") from None
        except codec.Unstorable as exc:
            logger.warning(_UNSTORABLE, options.get(model).label, pk, exc)
            return False
        except WriteUncertain:
            # Redis may have it: never the database too. Sent again when Redis answers.
            logger.warning(_UNCERTAIN, options.get(model).label, 1)
            return True
        except CacheUnavailable:
            logger.warning(
                "django_cachestrat: Redis is unreachable; write-behind write of %s pk=%r "
                "goes to the database now.",
                options.get(model).label,
                pk,
            )
            return False
        recorder.count(options.get(model).label, recorder.BEHIND_WRITES, 1)
        if status is Recorded.FLUSH_NOW:
            signals.write_behind_batch_ready.send(sender=model)
        return True

    def after_save(self, instance, using, created, update_fields) -> None:
        """After a synchronous save: store a new row's view, drop an existing row's.

        A new row's view is stored once its insert commits, so the next read is a hit,
        when the instance holds what the database does (see ``_new_view``); else it is
        dropped. A save of an existing row (``write_behind=False``) replaces the row's
        unflushed writes of the fields it wrote (with plain values: a field saved as an
        expression, ``F("views") + 1``, keeps them), and drops the view: the next read
        rebuilds it from the database and the writes still pending.
        """
        model: type[models.Model] = type(instance)
        if created:
            values = _new_view(instance)
            if values is None or len(options.family(model)) > 1:
                # Parents and children (multi-table inheritance) hold columns of the row
                # too: dropped first, since commit callbacks run in the order added.
                invalidation.rows(model, [instance.pk], using, created=True)
            if values is not None:
                invalidation.mark_written(model, using)
                transaction.on_commit(partial(_store_new, model, instance.pk, values), using=using)
            return
        written = [
            f.attname
            for f in _saved_fields(options.get(model), update_fields)
            if not f.primary_key and not codec.computed(instance.__dict__.get(f.attname))
        ]
        self.supersede(model, [(instance.pk, written)], using)
        invalidation.rows(model, [instance.pk], using)

    def pending_rows(self, model, among=None) -> list:
        """Return the pks of rows with unflushed writes (none if Redis is unreachable)."""
        try:
            return PendingWrites(model).pending_pks(among)
        except CacheUnavailable:
            return []

    def supersede(self, model, items, using) -> None:
        """Set aside the unflushed writes of fields written directly, per ``(pk, attnames)``.

        Called after the direct write reached the database, before its transaction
        commits (the callers make sure there is one). Otherwise a flush would write the
        older writes over the newer value (and add pending increments a second time to a
        value that already holds them), even a batch claimed before this write. What is
        set aside is dropped once the transaction commits and put back if it rolls back
        (a marker written in it tells the flusher which). A field written as an
        expression (``F("views") + 1``) must not be listed: it keeps the pending writes.
        """
        items = [(pk, list(names)) for pk, names in items if names]
        if not items or using != flush_alias(model):
            # The pending writes are the flush database's: a write to another database
            # replaces none of them.
            return
        atomic = connections[using].in_atomic_block
        if atomic:
            # The transaction's own write-behind writes of these fields, kept for its
            # commit, are older than this write too.
            box = transactions.outbox(using, _record_committed)
            concrete = model._meta.concrete_model
            for pk, names in items:
                write = box.get((concrete, pk))
                if write is None:
                    write = box[(concrete, pk)] = _Deferred({}, {}, False)
                write.supersede(names)
        pending = PendingWrites(model)
        cut_id = secrets.token_hex(8)
        try:
            cuts = pending.cut(items, cut_id, conf.settings().WRITE_WINDOW)
        except CacheUnavailable:
            logger.warning(
                "django_cachestrat: Redis is unreachable; unflushed writes of %s fields "
                "written directly to %d row(s) will be flushed over them.",
                options.get(model).label,
                len(items),
            )
            return
        if not cuts:
            return
        if not atomic:  # already committed: nothing to wait for
            _drop_cuts(pending, cuts)
            return
        applied.mark(using, applied.cut_marker(cut_id))
        transaction.on_commit(partial(_drop_cuts, pending, cuts), using=using)

    def after_delete(self, instance, using) -> None:
        """Set the row's pending writes aside, then drop the row after commit.

        What is set aside is dropped once the delete commits, and put back if it rolls
        back (Django deletes in a transaction): a delete that did not happen loses no
        write. The pending writes are the flush database's row's: a delete in another
        database leaves them (and drops the view only).
        """
        model = type(instance)
        names = [f.attname for f in options.get(model).fields if not f.primary_key]
        self.supersede(model, [(instance.pk, names)], using)
        super().after_delete(instance, using)


class _Deferred:
    """A transaction's writes to one row, merged as they would apply in order.

    ``superseded``: fields the transaction wrote to the database directly (a save, an
    update) after the row's earlier pending writes, which the commit drops first.
    """

    __slots__ = ("deltas", "fields", "full", "superseded")

    def __init__(self, fields: dict, deltas: dict, full: bool):
        self.fields = fields
        self.deltas = deltas
        self.full = full
        self.superseded: set[str] = set()

    def merge(self, fields: dict, deltas: dict, full: bool) -> None:
        for name, value in fields.items():
            # A saved value is the instance's: it replaces the increments before it.
            self.fields[name] = value
            self.deltas.pop(name, None)
        for name, amount in deltas.items():
            self.deltas[name] = self.deltas.get(name, 0) + amount
        self.full = self.full or full

    def supersede(self, names) -> None:
        """Note a direct write of ``names``: it replaces every write of them so far."""
        for name in names:
            self.fields.pop(name, None)
            self.deltas.pop(name, None)
        self.superseded.update(names)
        self.full = False  # the fields no longer hold every field

    def apply(self, obj: models.Model, skip=()) -> None:
        """Lay these writes over an instance read before them (but fields in ``skip``)."""
        for name, value in self.fields.items():
            if name not in skip:
                setattr(obj, name, value)
        for name, amount in self.deltas.items():
            current = getattr(obj, name)
            if name not in skip and current is not None:  # NULL + 1: the commit says so
                setattr(obj, name, current + amount)


def _select_pk(model, using, name, value):
    """Return the pk of the row whose ``name`` is ``value``, from the database."""
    return model._base_manager.db_manager(using).values_list("pk", flat=True).get(**{name: value})


def _saved_fields(opts: options.CacheOptions, update_fields) -> list[models.Field]:
    """Return the fields a save writes: those ``update_fields`` names, else all but the pk.

    Generated fields are never written (as ``Model.save`` does).
    """
    if update_fields is None:
        return [f for f in opts.fields if not f.primary_key and not f.generated]
    names = set(update_fields)
    return [f for f in opts.fields if f.name in names or f.attname in names]


def _kept_writes(model, pks) -> dict[object, list[_Deferred]]:
    """Return, per pk of ``pks``, the writes the open transaction keeps for its commit.

    Oldest first (one per savepoint that wrote the row); empty outside a transaction.
    """
    if not transactions.keeping():
        return {}
    concrete = model._meta.concrete_model
    kept: dict[object, list[_Deferred]] = {}
    for items in transactions.kept(flush_alias(model), _record_committed):
        for pk in pks:
            write = items.get((concrete, pk))
            if write is not None:
                kept.setdefault(pk, []).append(write)
    return kept


def _superseded(kept: dict) -> dict[object, set[str]]:
    """Per pk, the fields the transaction wrote directly (their pending writes are void)."""
    return {pk: set().union(*(w.superseded for w in writes)) for pk, writes in kept.items()}


def _lay_kept(rows: dict, kept: dict) -> dict:
    """Lay the transaction's kept writes over ``rows``, in the order they were made.

    A field written directly by a later savepoint voids the earlier writes of it.
    """
    for pk, writes in kept.items():
        obj = rows.get(pk)
        if obj is None:
            continue
        later: set[str] = set()
        plan = []
        for write in reversed(writes):
            plan.append((write, frozenset(later)))
            later |= write.superseded
        for write, void in reversed(plan):
            write.apply(obj, void)
    return rows


def _record_committed(writes: dict) -> None:
    """Record the write-behind writes of a committed transaction, in one round trip.

    A row with no view to merge into takes the one-write path (which fills the view
    first); if Redis is unreachable, the writes go to the database now, as does an
    increment of a field that is NULL in the view (the database adds to NULL as it would
    for ``F()``). The transaction has committed, so nothing is raised: a row that cannot
    be written at all (deleted meanwhile) is logged as an error, and the others go on.
    """
    items = list(writes.items())
    outcomes = record_all(
        [(model, pk, w.fields, w.deltas, w.full, w.superseded) for (model, pk), w in items]
    )
    # On a ring, some nodes may have taken their rows' writes and others not.
    uncertain = sum(isinstance(outcome, WriteUncertain) for outcome in outcomes)
    unreachable = sum(isinstance(outcome, CacheUnavailable) for outcome in outcomes) - uncertain
    if uncertain:
        logger.warning(_UNCERTAIN, "a committed transaction", uncertain)
    if unreachable:
        logger.warning(
            "django_cachestrat: Redis is unreachable; %d write-behind write(s) of a committed "
            "transaction go to the database now.",
            unreachable,
        )
    to_flush = set()
    for ((model, pk), w), outcome in zip(items, outcomes, strict=True):
        strategy = model.cache_strategy
        if isinstance(outcome, WriteUncertain):
            continue  # Redis may have it: never the database too; sent again when it answers
        if isinstance(outcome, Recorded):
            recorder.count(options.get(model).label, recorder.BEHIND_WRITES, 1)
        try:
            if isinstance(outcome, NotACounter):
                logger.warning(
                    "django_cachestrat: increment_behind() of %s pk=%r: %s is NULL or not an "
                    "integer in the cache; written to the database now.",
                    options.get(model).label,
                    pk,
                    outcome,
                )
                strategy._write_now(model, pk, w.fields, w.deltas)
            elif isinstance(outcome, CacheUnavailable):
                if w.fields or w.deltas:
                    strategy._write_now(model, pk, w.fields, w.deltas)
            elif isinstance(outcome, codec.Unstorable):
                logger.warning(_UNSTORABLE, options.get(model).label, pk, outcome)
                strategy._write_now(model, pk, w.fields, w.deltas)
            elif isinstance(outcome, NeedsView):
                strategy._record_or_write(model, pk, w.fields, w.deltas, full=w.full)
            elif outcome is Recorded.FLUSH_NOW:
                to_flush.add(model)
        except Exception:
            logger.exception(
                "django_cachestrat: write-behind write of %s pk=%r (fields %s, increments %s) "
                "of a committed transaction could not be written.",
                options.get(model).label,
                pk,
                sorted(w.fields),
                w.deltas,
            )
    for model in to_flush:
        signals.write_behind_batch_ready.send(sender=model)


def _drop_cuts(pending: PendingWrites, cuts) -> None:
    """Forget what ``cuts`` set aside: the direct write that made them committed."""
    try:
        for cut in cuts:
            pending.settle(cut, committed=True, keep_batch=False, into_batch=False)
    except CacheUnavailable:
        pass  # the flusher settles them after WRITE_WINDOW, from the committed marker


def _new_view(instance: models.Model) -> dict[str, bytes] | None:
    """Return the view of a row just inserted (encoded values), or None if memory cannot tell it.

    The instance's values are the row's only when each is what the database stores
    (``codec.as_stored``: no expression, naive datetime or extra decimal places) and none
    is the database's to compute: a model with a ``db_default`` or a generated field is
    read back from the database instead.
    """
    opts = options.get(type(instance))
    state = instance.__dict__
    clean = codec.cleaners(type(instance))
    tag = Views(type(instance)).row_tag(instance.pk)
    values = {}
    try:
        for field in opts.fields:
            # Field.has_db_default() (Django 5) is not in the stubs.
            default = field.has_db_default()  # type: ignore[attr-defined]
            if field.generated or default or field.attname not in state:
                return None
            # Encoded now: a mutable value (a JSONField's dict) changed in memory before
            # the commit is not what was inserted.
            value = clean[field.attname](state[field.attname])
            values[field.attname] = codec.view_value(tag, field.attname, value, opts.counters)
    except (codec.Unstorable, ValidationError, TypeError, ValueError):
        return None  # a value to_python refuses is not known to be the database's either
    return values


def _store_new(model, pk, values: dict) -> None:
    """Store a new row's view after its insert committed (or drop it, Redis being down)."""
    views = Views(model)
    try:
        stored = views.store([(pk, values, ttl(options.get(model), conf.settings()))])
    except CacheUnavailable:
        row = views.row(pk)
        try:
            # Kept by the transport and replayed when Redis answers: a "no such row" of
            # this pk cached earlier must not outlive the insert.
            views.transport.delete(views.version_key(), [row["view"], row["lease"]])
        except CacheUnavailable:
            pass
        return
    send(signals.cache_fill, model, stored)


class _ViewForm(reads.Form):
    """The read engine's form for write-behind rows: views over their pending writes.

    A view is filled from the database plus the writes still pending (including those
    of a batch in flight that has not committed), under the model version the lease
    script read.
    """

    def __init__(self, strategy: WriteBehind, model, using, node, seen=None):
        self.views = Views(model, node)  # the node holding the rows the form reads
        super().__init__(model, using, node)
        self.strategy = strategy
        self.opts = options.get(model)
        self.version = b"0"
        #: Per pk, the view the read found and could not use: the same view again (a lease
        #: script finds it "usable", as far as Redis can tell) is not decoded (or reported)
        #: twice.
        self.seen = seen or {}

    def acquire(self, pks, token):
        """Take leases, unless a usable view arrived since our read."""
        taken = self.views.acquire(pks, token, self.cfg.LEASE_TIMEOUT)
        if taken:
            self.version = taken[0][1]  # the same for every row: the model's, read in Redis
        return [(status, (version, view)) for status, version, view in taken]

    def retake(self, pks, token):
        """Take the leases of rows whose view was there but could not be read."""
        leases = [self.views.row(pk)["lease"] for pk in pks]
        return self.transport.acquire_leases(leases, token, self.cfg.LEASE_TIMEOUT)

    def decode(self, pk, raw):
        """Return the row a view holds, ``reads.ABSENT``, or None (unusable)."""
        version, view = raw
        if view and view == self.seen.get(pk):
            return None
        return self.strategy._decode(self.opts, pk, view, version, self.using, self.model)

    def slots(self, pks):
        """Return each row's view key and fill keys."""
        return [(self.views.row(pk)["view"], self.views.fill_keys(pk)) for pk in pks]

    def wait(self, slots):
        """Check on fills others hold."""
        return self.views.wait(slots)

    def load(self, pks, token):
        """Read ``pks`` (with their pending writes) under our leases and fill their views."""
        opts, cfg, views = self.opts, self.cfg, self.views
        try:
            rows, pending = self.strategy._overlay(self.model, self.using, pks)
        except BaseException:
            # Give the leases back so a waiting reader takes over now, not at expiry.
            with contextlib.suppress(CacheUnavailable):
                views.release(pks, token)
            raise
        if pending is None:  # Redis failed meanwhile: the leases lapse by themselves
            return rows
        items, unfilled = [], []
        for pk in pks:
            obj = rows.get(pk)
            if obj is not None:
                values = {name: obj.__dict__[name] for name in opts.attnames}
                items.append((pk, values, ttl(opts, cfg), pk in pending))
            elif cfg.NEGATIVE_TTL:
                items.append((pk, None, cfg.NEGATIVE_TTL, False))
            else:
                unfilled.append(pk)
        try:
            try:
                send(signals.cache_fill, self.model, views.fill(token, items, self.version))
            except codec.Unstorable as exc:
                # A value the serializer cannot carry: the rows are served, not stored.
                logger.warning("django_cachestrat: rows of %s are not cached: %s", opts.label, exc)
                unfilled += [item[0] for item in items]
            if unfilled:
                views.release(unfilled, token)
        except CacheUnavailable:
            pass
        return rows

    def direct(self, pks):
        """Read ``pks`` from the database with their pending writes laid over."""
        return self.strategy._with_pending(self.model, self.using, pks)


def _counter_field(model, name: str) -> models.Field:
    try:
        field = model._meta.get_field(name)
    except Exception:
        raise ValueError(f"{model._meta.label} has no field {name!r}.") from None
    if not isinstance(field, models.IntegerField) or field.primary_key:
        raise ValueError(
            f"increment_behind() adds to integer fields; {model._meta.label}.{name} is "
            f"{type(field).__name__}."
        )
    if field.attname not in options.get(model).counters:
        raise ValueError(
            f"increment_behind() adds to the fields CacheMeta.counters lists; "
            f"{model._meta.label}.{name} is not one of them."
        )
    return field

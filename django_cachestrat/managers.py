"""``CachedManager`` (cached reads) and ``CachedQuerySet`` (bulk writes that invalidate).

``get_cached`` and ``get_many_cached`` live on the manager, and on the queryset that the
manager's ``using(alias)`` returns, before anything is chained to it: a filtered queryset's
rows are not what the cache holds by pk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from asgiref.sync import sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.db import connections, models, router, transaction
from django.db.models import sql

from django_cachestrat import codec, invalidation, options
from django_cachestrat.strategies import Strategy, WriteBehind

_Method = TypeVar("_Method", bound=Callable[..., Any])


def alters_data(method: _Method) -> _Method:
    """Mark ``method`` with Django's ``alters_data``: templates never call it."""
    method.__dict__["alters_data"] = True
    return method


def _require_cached(model: type[models.Model]) -> None:
    if not options.is_cached(model):
        raise ImproperlyConfigured(
            f"{model._meta.label} uses CachedManager but has no strategy mixin "
            "(CacheAsideMixin, WriteThroughMixin or WriteBehindMixin)."
        )


class CachedQuerySet(models.QuerySet):
    """A queryset whose bulk writes drop the rows they touch from the cache, after commit.

    ``delete()`` needs nothing of its own: Django sends ``post_delete`` for each row of a
    model that has receivers, and the cached models have them.
    """

    #: Above this many rows, an ``update()`` drops the whole model (a version bump)
    #: instead of listing the rows.
    bulk_row_limit = 1000

    #: The manager on the queryset's database, on a queryset straight from
    #: ``CachedManager.using()``; a clone (any chained call) has none.
    _reader: CachedManager | None = None

    # Django's, set by QuerySet.__init__: the database chosen with using(), and the hints.
    _db: str | None
    _hints: dict[str, Any]

    def _is_cached(self) -> bool:
        return options.is_cached(self.model)

    @alters_data
    def update(self, **kwargs) -> int:
        """Update the rows, then drop them from the cache once the transaction commits."""
        if not self._is_cached():
            return super().update(**kwargs)
        using = self._db or router.db_for_write(self.model, **self._hints)
        if self.query.is_sliced:
            return super().update(**kwargs)  # Django's own error
        # Private to QuerySet, and not in the stubs.
        self._not_support_combined_queries("update")  # type: ignore[attr-defined]
        with transaction.atomic(using=using, savepoint=False):
            pks = self._update_returning(using, kwargs)
            if pks is None:  # the database cannot say which rows it updated
                pks = self._lock_pks(using)
                superseded = self._superseded(using, kwargs, pks)
                count = super().update(**kwargs)
            else:
                count = len(pks)
                superseded = self._superseded(using, kwargs, pks, exact=True)
            if superseded:  # first: a view rebuilt after the drop must not include them
                self.model.cache_strategy.supersede(self.model, superseded, using)
            if len(pks) > self.bulk_row_limit:
                invalidation.model(self.model, using)
            else:
                invalidation.rows(self.model, pks, using)
        return count

    @alters_data
    async def aupdate(self, **kwargs) -> int:
        """Async ``update()``, with the same invalidation."""
        return await sync_to_async(self.update)(**kwargs)

    def _update_returning(self, using: str, values: dict) -> list | None:
        """Run the update as one ``UPDATE ... RETURNING`` pk, where the database can.

        Return the pks of the rows it updated, or None where it cannot (MySQL and MariaDB
        have no ``UPDATE ... RETURNING``; an update Django splits over several tables, or
        orders, goes through Django). No locking ``SELECT`` is needed: the rows returned
        are the rows updated.
        """
        connection = connections[using]
        if connection.vendor not in ("postgresql", "sqlite"):
            return None
        if not connection.features.can_return_columns_from_insert:  # SQLite before 3.35
            return None
        query = cast(sql.UpdateQuery, self.query.chain(sql.UpdateQuery))
        query.add_update_values(values)
        if query.related_updates or query.order_by or query.annotations:
            return None
        query.clear_select_clause()
        statement, params = query.get_compiler(using).as_sql()
        if not statement:
            return []
        pk = self.model._meta.pk
        returning = f"{statement} RETURNING {connection.ops.quote_name(pk.column)}"
        with transaction.mark_for_rollback_on_error(using=using), connection.cursor() as cursor:
            cursor.execute(returning, params)
            rows = cursor.fetchall()
        self._result_cache = None
        return [pk.to_python(value) for (value,) in rows]

    def _superseded(self, using: str, values: dict, pks: list, *, exact: bool = False) -> list:
        """Return ``(pk, attnames)`` for the rows with unflushed writes this update replaces.

        Write-behind only. ``pks``: the rows ``_lock_pks`` listed before the update (at
        most ``bulk_row_limit + 1``), or with ``exact``, every row the update returned. A
        value that is an expression (``F("views") + 1``) replaces nothing.
        """
        strategy = self.model.cache_strategy
        if not strategy.defers_writes:
            return []
        names = [
            self.model._meta.get_field(name).attname
            for name, value in values.items()
            if not codec.computed(value)
        ]
        if not names:
            return []
        if exact or len(pks) <= self.bulk_row_limit:  # every row is listed: ask Redis
            return [(pk, names) for pk in strategy.pending_rows(self.model, among=pks)]
        # Too many rows to list: ask the database which of the pending rows it updates.
        pending = strategy.pending_rows(self.model)
        matching = self.model._base_manager.using(using).filter(
            pk__in=self.using(using).order_by().values("pk")
        )
        touched = []
        for start in range(0, len(pending), 500):  # within every backend's parameter limit
            chunk = pending[start : start + 500]
            touched += matching.filter(pk__in=chunk).values_list("pk", flat=True)
        return [(pk, names) for pk in touched]

    def _lock_pks(self, using: str) -> list:
        """List the pks an update will touch (at most ``bulk_row_limit + 1``), locked.

        Locked so that the set updated is the set listed.
        """
        listing = self.using(using)
        query = self.query
        if query.distinct or query.group_by or query.annotations or query.combinator:
            # FOR UPDATE refuses DISTINCT and GROUP BY: lock the rows by pk instead.
            listing = self.model._base_manager.using(using).filter(
                pk__in=self.using(using).order_by().values("pk")
            )
        of = ("self",) if connections[using].features.has_select_for_update_of else ()
        listing = listing.select_for_update(of=of).order_by()
        return list(listing.values_list("pk", flat=True)[: self.bulk_row_limit + 1])

    @alters_data
    def bulk_update(self, objs: Iterable[models.Model], fields, batch_size=None) -> int:
        """``bulk_update``, then drop the rows from the cache once the transaction commits."""
        objs = list(objs)
        if not self._is_cached():
            return super().bulk_update(objs, fields, batch_size=batch_size)
        using = self._db or router.db_for_write(self.model, **self._hints)
        # One transaction for the update and what the strategy notes of it before commit.
        with transaction.atomic(using=using, savepoint=False):
            count = super().bulk_update(objs, fields, batch_size=batch_size)
            attnames = [self.model._meta.get_field(name).attname for name in fields]
            self._supersede(using, objs, attnames)
            invalidation.rows(self.model, [obj.pk for obj in objs], using)
        return count

    @alters_data
    def bulk_create(
        self,
        objs: Iterable[models.Model],
        batch_size=None,
        ignore_conflicts=False,
        update_conflicts=False,
        update_fields=None,
        unique_fields=None,
    ) -> list[models.Model]:
        """``bulk_create``, then drop the rows it created or updated, after commit.

        Where Django leaves the pks of the objects unset (``ignore_conflicts=True``, or
        ``update_conflicts=True`` on a database that does not return them), the rows
        cannot be named, so the whole model is dropped (a version bump): a row it
        inserted may have been cached as missing. On a write-behind model, the rows an
        upsert updated lose their pending writes of ``update_fields``.
        """
        options_ = {
            "batch_size": batch_size,
            "ignore_conflicts": ignore_conflicts,
            "update_conflicts": update_conflicts,
            "update_fields": update_fields,
            "unique_fields": unique_fields,
        }
        if not self._is_cached():
            return super().bulk_create(objs, **options_)
        using = self._db or router.db_for_write(self.model, **self._hints)
        with transaction.atomic(using=using, savepoint=False):
            objs = super().bulk_create(objs, **options_)
            pks = [obj.pk for obj in objs if obj.pk is not None]
            if update_conflicts:
                attnames = [self.model._meta.get_field(n).attname for n in update_fields or ()]
                self._supersede(using, [obj for obj in objs if obj.pk is not None], attnames)
            if len(pks) < len(objs):
                invalidation.model(self.model, using)
            else:
                invalidation.rows(self.model, pks, using, created=not update_conflicts)
            invalidation.pointers(self.model, objs, using)
        return objs

    def get_cached(self, **lookup) -> models.Model:
        """``Model.objects.using(alias).get_cached(...)``: ``get_cached`` on database ``alias``."""
        return self._by_key("get_cached").get_cached(**lookup)

    def get_many_cached(self, pks: Iterable[object]) -> dict[object, models.Model]:
        """``Model.objects.using(alias).get_many_cached(...)``, on database ``alias``."""
        return self._by_key("get_many_cached").get_many_cached(pks)

    async def aget_cached(self, **lookup) -> models.Model:
        """Async ``get_cached`` on the queryset's database."""
        return await self._by_key("aget_cached").aget_cached(**lookup)

    async def aget_many_cached(self, pks: Iterable[object]) -> dict[object, models.Model]:
        """Async ``get_many_cached`` on the queryset's database."""
        return await self._by_key("aget_many_cached").aget_many_cached(pks)

    def _by_key(self, name: str) -> CachedManager:
        if self._reader is None:
            raise TypeError(
                f"{name}() reads rows by key, not the rows of a queryset: call it on the "
                f"manager, or right after using(): {self.model.__name__}.objects.{name}(...), "
                f"{self.model.__name__}.objects.using(alias).{name}(...)."
            )
        return self._reader

    def _supersede(self, using: str, objs: list, attnames: list[str]) -> None:
        """Tell a write-behind strategy which fields of ``objs`` were written directly.

        Inside the writing transaction (``supersede`` needs it), before the rows are
        dropped. A field holding an expression keeps its pending writes.
        """
        strategy = self.model.cache_strategy
        if strategy.defers_writes and attnames:
            written = [
                (obj.pk, [n for n in attnames if not codec.computed(obj.__dict__.get(n))])
                for obj in objs
            ]
            strategy.supersede(self.model, written, using)


_CachedManagerBase = models.Manager.from_queryset(CachedQuerySet)


class CachedManager(_CachedManagerBase):
    """The manager of a cached model: ``get_cached``, ``get_many_cached`` and their async forms.

    Cached reads bypass any filtering a custom ``get_queryset`` does: they return the row
    by its key, as ``Model._base_manager`` would.
    """

    _hints: dict[str, Any]  # Django's, set by BaseManager.__init__

    def _strategy(self) -> Strategy:
        """Return the model's strategy (its mixin's); ``_require_cached`` first."""
        return self.model.cache_strategy  # type: ignore[attr-defined]  # from its mixin

    def _using(self) -> str:
        return self._db or router.db_for_read(self.model, **self._hints)

    def using(self, alias: str | None) -> CachedQuerySet:
        """Return a queryset on database ``alias``; its ``get_cached`` reads that database."""
        queryset = cast(CachedQuerySet, self.get_queryset().using(alias))
        queryset._reader = self.db_manager(alias)
        return queryset

    def get_cached(self, **lookup) -> models.Model:
        """Return one row by ``pk=`` or by a field named in ``CacheMeta.lookups``.

        Raises ``DoesNotExist`` as ``get()`` does, ``ValueError`` for any other lookup.
        """
        _require_cached(self.model)
        if len(lookup) != 1:
            raise TypeError(
                f"get_cached() takes exactly one lookup, e.g. get_cached(pk=1); got {len(lookup)}."
            )
        ((name, value),) = lookup.items()
        opts = options.get(self.model)
        pk = opts.pk_field
        if name in ("pk", pk.name, pk.attname):
            name = "pk"
        elif name not in opts.lookups:
            allowed = ", ".join(["pk", *opts.lookups])
            raise ValueError(
                f"get_cached() on {self.model._meta.label} accepts {allowed}; got {name!r}. "
                f"Add it to {self.model.__name__}.CacheMeta.lookups if it is unique."
            )
        return self._strategy().get(self.model, self._using(), name, value)

    def get_many_cached(self, pks: Iterable[object]) -> dict[object, models.Model]:
        """Return ``{pk: instance}`` for the rows of ``pks`` that exist.

        One Redis round trip when all are cached, and one query for the rest.
        """
        _require_cached(self.model)
        if isinstance(pks, str | bytes) or not isinstance(pks, Iterable):
            raise TypeError(f"get_many_cached() takes an iterable of pks, not {pks!r}.")
        return self._strategy().get_many(self.model, self._using(), list(pks))

    def increment_behind(self, pk: object, **deltas: int) -> bool:
        """Add to integer fields of row ``pk`` (``views=1``) of a write-behind model.

        The cache has the sum at once, the database at the next flush, where the
        increments of one row are summed into one ``F()`` update. Raises ``DoesNotExist``
        for a missing row.

        Returns True when the increment was deferred: recorded in Redis (the database has
        it after the next flush; a write whose reply timed out counts too: it is sent again
        when Redis answers, never written to the database as well), or, inside a
        transaction on the model's write database, kept to be recorded when it commits (if
        Redis cannot be reached then, it is written to the database at the commit).
        Returns False when it was written to the database at once: Redis could not be
        reached, the model has a ``GeneratedField``, or the row is in another database
        than the model's write database.
        """
        _require_cached(self.model)
        strategy = self._strategy()
        if not isinstance(strategy, WriteBehind):
            raise TypeError(
                f"increment_behind() is for write-behind models; {self.model._meta.label} "
                f"is {strategy.name}."
            )
        # The row's database, as an update() through this manager would write to.
        using = self._db or router.db_for_write(self.model, **self._hints)
        return strategy.increment(self.model, pk, deltas, using)

    async def aget_cached(self, **lookup) -> models.Model:
        """Async ``get_cached``."""
        return await sync_to_async(self.get_cached)(**lookup)

    async def aget_many_cached(self, pks: Iterable[object]) -> dict[object, models.Model]:
        """Async ``get_many_cached``."""
        return await sync_to_async(self.get_many_cached)(pks)

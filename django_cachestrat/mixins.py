"""The model mixins users add: one per strategy.

```python
class Author(WriteThroughMixin, models.Model):
    objects = CachedManager()
```
A mixin only names the model's strategy (and, for write-through, tidies up after a failed
save); the work is done by receivers that ``AppConfig.ready()`` connects for every model
that has a mixin, so saves from any code path, the admin included, are seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from django.db import models, router, transaction

from django_cachestrat.managers import alters_data
from django_cachestrat.strategies import CacheAside, Strategy, WriteBehind, WriteThrough
from django_cachestrat.strategies.write_behind import flush_alias

if TYPE_CHECKING:
    # A mixin goes before models.Model in a model's bases: type-check it as one.
    _ModelBase = models.Model
else:
    _ModelBase = object


class CachedModelMixin(_ModelBase):
    """Base of the strategy mixins; marks a model as cached. Use a subclass."""

    cache_strategy: ClassVar[Strategy]


class CacheAsideMixin(CachedModelMixin):
    """Cache-aside: reads fill the cache on a miss; saves and deletes drop the row after commit."""

    cache_strategy: ClassVar[Strategy] = CacheAside()


class WriteThroughMixin(CachedModelMixin):
    """Write-through: after a save commits, the cache holds the saved row."""

    cache_strategy: ClassVar[Strategy] = WriteThrough()

    @alters_data
    def save(self, *args, **kwargs):
        """Save, and take back the write announced to Redis if the save raises."""
        try:
            super().save(*args, **kwargs)
        except BaseException:
            self.cache_strategy.abort(self)
            raise


class WriteBehindMixin(CachedModelMixin):
    """Write-behind: saving an existing row updates the cache now and the database later.

    ``save()`` of a row that exists records the write in Redis (one round trip, no
    query); a Celery task flushes it in a batch. A new row is inserted at once (its pk is
    needed). ``save(write_behind=False)`` saves at once. ``delete()`` is immediate and
    discards the row's pending writes. No ``pre_save``/``post_save`` is sent for a
    write-behind save: the row is not in the database yet (see ``write_behind_flushed``).
    """

    cache_strategy: ClassVar[WriteBehind] = WriteBehind()

    @alters_data
    def save(self, *args, write_behind: bool = True, **kwargs):
        """Record the save in Redis when the row exists, else save to the database.

        Only a save to the database the model's pending writes are flushed to is recorded
        (``flush_alias``); a save to another one (``using=``, an instance read from
        another database) is written at once.
        """
        update_fields = kwargs.get("update_fields")
        # The database Model.save would write to.
        using = kwargs.get("using") or router.db_for_write(type(self), instance=self)
        if (
            write_behind
            and not args
            and self.pk is not None
            and not self._state.adding
            and not kwargs.get("force_insert")
            and using == flush_alias(type(self))
        ):
            if update_fields is not None and not update_fields:
                return  # as Django does: nothing to save
            if self.cache_strategy.save_behind(self, update_fields, using):
                return
        if self.pk is None or self._state.adding:
            super().save(*args, **kwargs)
            return
        # A direct write of an existing row sets its older pending writes aside before it
        # commits, with a marker written in its transaction: one transaction for both.
        with transaction.atomic(using=using, savepoint=False):
            super().save(*args, **kwargs)

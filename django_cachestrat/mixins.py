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

from typing import ClassVar

from django_cachestrat.strategies import CacheAside, Strategy, WriteThrough


class CachedModelMixin:
    """Base of the strategy mixins; marks a model as cached. Use a subclass."""

    cache_strategy: ClassVar[Strategy]


class CacheAsideMixin(CachedModelMixin):
    """Cache-aside: reads fill the cache on a miss; saves and deletes drop the row after commit."""

    cache_strategy: ClassVar[Strategy] = CacheAside()


class WriteThroughMixin(CachedModelMixin):
    """Write-through: after a save commits, the cache holds the saved row."""

    cache_strategy: ClassVar[Strategy] = WriteThrough()

    def save(self, *args, **kwargs):
        """Save, and take back the write announced to Redis if the save raises."""
        try:
            super().save(*args, **kwargs)
        except BaseException:
            self.cache_strategy.abort(self)
            raise

    save.alters_data = True

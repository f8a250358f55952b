"""Models with the same six fields: write-through, cache-aside, plain (not cached), and
write-behind (plus an integer counter for ``increment_behind``)."""

from django.db import models

from django_cachestrat import CacheAsideMixin, CachedManager, WriteBehindMixin, WriteThroughMixin


class Fields(models.Model):
    """The fields the models share: char, int, decimal, datetime, bool, text."""

    name = models.CharField(max_length=100)
    count = models.IntegerField(default=0)
    price = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    updated = models.DateTimeField()
    active = models.BooleanField(default=True)
    body = models.TextField(blank=True, default="")

    class Meta:
        abstract = True

    def __str__(self):
        return self.name


class WriteThroughItem(WriteThroughMixin, Fields):
    objects = CachedManager()


class CacheAsideItem(CacheAsideMixin, Fields):
    objects = CachedManager()


class PlainItem(Fields):
    pass


class WriteBehindItem(WriteBehindMixin, Fields):
    hits = models.IntegerField(default=0)

    objects = CachedManager()

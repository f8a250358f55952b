import os
import uuid

from django.db import models

from django_cachestrat import CacheAsideMixin, CachedManager, WriteBehindMixin, WriteThroughMixin


class Author(WriteThroughMixin, models.Model):
    name = models.CharField(max_length=100)
    email = models.EmailField(unique=True)
    age = models.IntegerField(default=0)
    bio = models.TextField(null=True, blank=True)
    joined = models.DateTimeField(null=True, blank=True)
    balance = models.DecimalField(max_digits=8, decimal_places=2, default=0)

    objects = CachedManager()

    class CacheMeta:
        ttl = 600
        lookups = ["email"]

    class Meta:
        base_manager_name = "objects"

    def __str__(self):
        return self.name


class AuthorProxy(Author):
    class Meta:
        proxy = True


class Book(CacheAsideMixin, models.Model):
    title = models.CharField(max_length=200)
    isbn = models.CharField(max_length=20, unique=True)
    author = models.ForeignKey(
        Author, on_delete=models.CASCADE, null=True, blank=True, related_name="books"
    )
    pages = models.IntegerField(default=100)
    price = models.DecimalField(max_digits=8, decimal_places=2, default=0)
    uid = models.UUIDField(default=uuid.uuid4)
    editor = models.ForeignKey(
        Author, on_delete=models.SET_NULL, null=True, blank=True, related_name="edited"
    )

    objects = CachedManager()

    class CacheMeta:
        lookups = ["isbn"]

    class Meta:
        base_manager_name = "objects"


class Novel(Book):
    """Multi-table inheritance: a Novel row is also a Book row."""

    genre = models.CharField(max_length=50, default="")


class Tag(CacheAsideMixin, models.Model):
    """A text primary key, for keys built from unsafe values."""

    name = models.CharField(max_length=20000, primary_key=True)
    weight = models.IntegerField(default=0)

    objects = CachedManager()

    class Meta:
        base_manager_name = "objects"


class Plain(models.Model):
    """Not cached."""

    name = models.CharField(max_length=10)


class PageStats(WriteBehindMixin, models.Model):
    path = models.CharField(max_length=200, unique=True)
    views = models.PositiveIntegerField(default=0)
    likes = models.IntegerField(default=0)
    last_seen = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=5, default="")

    objects = CachedManager()

    class CacheMeta:
        lookups = ["path"]

    class Meta:
        base_manager_name = "objects"


class Visit(WriteBehindMixin, models.Model):
    """Write-behind with a UUID primary key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    hits = models.IntegerField(default=0)
    label = models.CharField(max_length=20, default="")
    bonus = models.IntegerField(null=True)  # a counter that can be NULL
    rate = models.DecimalField(max_digits=6, decimal_places=2, null=True)

    objects = CachedManager()

    class Meta:
        base_manager_name = "objects"


class Member(WriteBehindMixin, models.Model):
    """Write-behind with a flag worth forging (tests/test_signing.py) and a declared counter."""

    name = models.CharField(max_length=50, default="")
    is_staff = models.BooleanField(default=False)
    logins = models.IntegerField(default=0)
    level = models.IntegerField(default=1)  # an integer field that is not a counter

    objects = CachedManager()

    class CacheMeta:
        counters = ["logins"]

    class Meta:
        base_manager_name = "objects"


class Gauge(WriteBehindMixin, models.Model):
    """Write-behind with a value the database fills in on insert (``db_default``)."""

    level = models.IntegerField(db_default=7)
    reading = models.IntegerField(default=0)

    objects = CachedManager()

    class Meta:
        base_manager_name = "objects"


class Doubled(WriteBehindMixin, models.Model):
    """Write-behind with a column the database computes (a generated field)."""

    base = models.IntegerField(default=1)
    twice = models.GeneratedField(
        expression=models.F("base") * 2, output_field=models.IntegerField(), db_persist=True
    )

    objects = CachedManager()

    class Meta:
        base_manager_name = "objects"


class Headline(CacheAsideMixin, models.Model):
    """Served stale for a minute while one reader refreshes it."""

    text = models.CharField(max_length=100)

    objects = CachedManager()

    class CacheMeta:
        ttl = 1
        stale_ttl = 60

    class Meta:
        base_manager_name = "objects"


class Quote(CacheAsideMixin, models.Model):
    """Refreshed early (XFetch), with a large beta so a test sees it within a second."""

    text = models.CharField(max_length=100)

    objects = CachedManager()

    class CacheMeta:
        ttl = 1
        early_refresh = 50.0

    class Meta:
        base_manager_name = "objects"


class Invoice(WriteThroughMixin, models.Model):
    """Write-through with a column the database computes and one it fills in on insert."""

    qty = models.IntegerField(default=1)
    unit = models.IntegerField(default=3)
    total = models.GeneratedField(
        expression=models.F("qty") * models.F("unit"),
        output_field=models.IntegerField(),
        db_persist=True,
    )
    level = models.IntegerField(db_default=7)
    amount = models.DecimalField(max_digits=8, decimal_places=2, default=0)

    objects = CachedManager()

    class Meta:
        base_manager_name = "objects"


class Shelf(models.Model):
    """Not cached: the target of foreign keys Django sets to NULL on delete."""

    label = models.CharField(max_length=20, default="")


class ShelfProxy(Shelf):
    class Meta:
        proxy = True


class Bin(CacheAsideMixin, models.Model):
    """Foreign keys to a model and to its proxy that a delete of the target changes.

    It keeps Django's default base manager (W001): the delete's UPDATE does not go
    through a manager at all.
    """

    shelf = models.ForeignKey(Shelf, models.SET_NULL, null=True, related_name="bins")
    proxied = models.ForeignKey(ShelfProxy, models.SET_NULL, null=True, related_name="pbins")
    spare = models.ForeignKey(
        Shelf, models.SET_DEFAULT, null=True, default=None, related_name="spare_bins"
    )

    objects = CachedManager()


# A rolling deploy: processes of two schemas side by side. The test run has the new schema
# (so the tables have every column); a process started with CACHESTRAT_TEST_SCHEMA=old
# (tests/old_schema.py) has these models without ``added``, as before a migration.
NEW_SCHEMA = os.environ.get("CACHESTRAT_TEST_SCHEMA") != "old"


class Release(WriteThroughMixin, models.Model):
    """Write-through, with a lookup; one field more in the new schema."""

    name = models.CharField(max_length=50)
    code = models.CharField(max_length=20, unique=True)
    if NEW_SCHEMA:
        added = models.IntegerField(null=True, default=None)

    objects = CachedManager()

    class CacheMeta:
        lookups = ["code"]

    class Meta:
        base_manager_name = "objects"


class Meter(WriteBehindMixin, models.Model):
    """Write-behind; one field more in the new schema."""

    count = models.IntegerField(default=0)
    label = models.CharField(max_length=20, default="")
    if NEW_SCHEMA:
        added = models.IntegerField(null=True, default=None)

    objects = CachedManager()

    class Meta:
        base_manager_name = "objects"


class Sample(CacheAsideMixin, models.Model):
    """A field of every type the default serializer carries (tests/test_serializer.py)."""

    flag = models.BooleanField(default=False)
    maybe = models.BooleanField(null=True)
    small = models.SmallIntegerField(default=0)
    big = models.BigIntegerField(default=0)
    huge = models.PositiveBigIntegerField(default=0)
    ratio = models.FloatField(null=True)
    name = models.CharField(max_length=50, default="")
    text = models.TextField(default="")
    raw = models.BinaryField(null=True)
    price = models.DecimalField(max_digits=30, decimal_places=10, null=True)
    day = models.DateField(null=True)
    at = models.TimeField(null=True)
    when = models.DateTimeField(null=True)
    took = models.DurationField(null=True)
    uid = models.UUIDField(null=True)
    data = models.JSONField(null=True)
    ip = models.GenericIPAddressField(null=True)
    slug = models.SlugField(default="")

    objects = CachedManager()

    class Meta:
        base_manager_name = "objects"

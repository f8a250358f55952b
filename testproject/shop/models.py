"""Demo models, one per way of caching.

- ``Customer``: write-through; after a save commits the cache holds the saved row.
  Looked up by pk or by its unique ``email``.
- ``Product``: cache-aside; a save drops the row and the next read fills it.
  Looked up by pk or by its unique ``sku``.
- ``Order``: cache-aside with foreign keys to both, looked up by pk only.
- ``ProductStats``: write-behind; a product's view counter and last view. Saves and
  ``increment_behind`` go to Redis at once and to the database when the Celery task
  ``django_cachestrat.tasks.flush_write_behind`` (or ``flusher.drain()``) flushes them.
  Looked up by pk or by its product.
"""

from decimal import Decimal

from django.db import models

from django_cachestrat import CacheAsideMixin, CachedManager, WriteBehindMixin, WriteThroughMixin


class Customer(WriteThroughMixin, models.Model):
    """A shop customer; write-through cached, also by email."""

    name = models.CharField(max_length=100)
    email = models.EmailField(unique=True)
    city = models.CharField(max_length=60, blank=True, default="")
    loyalty_points = models.IntegerField(default=0)
    balance = models.DecimalField(max_digits=10, decimal_places=2, default=Decimal("0.00"))
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = CachedManager()

    class Meta:
        ordering = ["pk"]
        base_manager_name = "objects"  # so reverse add() updates drop cached rows too

    class CacheMeta:
        ttl = 600
        lookups = ["email"]

    def __str__(self):
        return f"{self.name} <{self.email}>"


class Product(CacheAsideMixin, models.Model):
    """A product for sale; cache-aside cached, also by SKU."""

    sku = models.CharField("SKU", max_length=32, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=8, decimal_places=2)
    stock = models.IntegerField(default=0)
    active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = CachedManager()

    class Meta:
        ordering = ["sku"]
        base_manager_name = "objects"  # so reverse add() updates drop cached rows too

    class CacheMeta:
        lookups = ["sku"]

    def __str__(self):
        return f"{self.sku} {self.name}"


class Order(CacheAsideMixin, models.Model):
    """One product bought by one customer; cache-aside cached by pk."""

    class Status(models.TextChoices):
        """Where an order is in its life."""

        NEW = "new", "New"
        PAID = "paid", "Paid"
        SHIPPED = "shipped", "Shipped"
        CANCELLED = "cancelled", "Cancelled"

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE, related_name="orders")
    product = models.ForeignKey(Product, on_delete=models.CASCADE, related_name="orders")
    quantity = models.PositiveIntegerField(default=1)
    total = models.DecimalField(max_digits=10, decimal_places=2)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.NEW)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = CachedManager()

    class Meta:
        ordering = ["-pk"]
        base_manager_name = "objects"  # so reverse add() updates drop cached rows too

    class CacheMeta:
        ttl = 300

    def __str__(self):
        return f"Order #{self.pk}"


class ProductStats(WriteBehindMixin, models.Model):
    """How often a product was viewed, and when last; write-behind cached, also by product.

    ``ProductStats.objects.increment_behind(pk, views=1)`` and ``save()`` of an existing row
    are recorded in Redis (reads see them at once) and written to the database in batches.
    """

    product = models.OneToOneField(Product, on_delete=models.CASCADE, related_name="stats")
    views = models.PositiveIntegerField(default=0)
    last_viewed = models.DateTimeField(null=True, blank=True)

    objects = CachedManager()

    class Meta:
        ordering = ["product"]
        verbose_name = "product stats"
        verbose_name_plural = "product stats"
        base_manager_name = "objects"  # so reverse add() updates drop cached rows too

    class CacheMeta:
        lookups = ["product"]

    def __str__(self):
        return f"stats of product #{self.product_id}"

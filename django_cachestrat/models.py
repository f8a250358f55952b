"""The app's tables: write-behind's applied batches and dead letters; the dashboard's entry."""

import pickle

from django.db import models


class AppliedBatch(models.Model):
    """A write-behind batch (or one row of it) whose writes are committed.

    It is written in the same transaction as the rows, so a batch reclaimed after its
    worker died between commit and acknowledgement is recognised and not applied twice:
    counter deltas stay exact.
    """

    id = models.CharField(max_length=100, primary_key=True)
    applied_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        verbose_name = "applied write-behind batch"
        verbose_name_plural = "applied write-behind batches"

    def __str__(self):
        return self.id


class DeadLetter(models.Model):
    """Pending writes of one row that kept failing; kept to be listed, retried or discarded."""

    model = models.CharField(max_length=200, help_text="app_label.model_name")
    object_pk = models.TextField()
    fields = models.BinaryField(help_text="the field values, as the write-behind buffer holds them")
    deltas = models.JSONField(default=dict, help_text="counter increments, by field")
    error = models.TextField()
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        verbose_name = "write-behind dead letter"
        # The app's own permissions live here, on a model it always has: reading the
        # statistics (the JSON and Prometheus views, the dashboard) and acting on the cache.
        permissions = [
            ("view_cache_stats", "Can view cache statistics"),
            ("manage_cache", "Can invalidate caches, flush write-behind, reset statistics"),
        ]

    def __str__(self):
        return f"{self.model} pk={self.object_pk}"

    def saved_fields(self) -> dict:
        """Return the field values the letter holds, by attname."""
        # Our own table's bytes, written by the flusher (never read from Redis).
        return pickle.loads(bytes(self.fields))


class CacheDashboard(models.Model):
    """No table: the admin's entry for the cache dashboard.

    Seeing it needs ``view_cache_stats``, acting on it ``manage_cache`` (see
    ``DeadLetter.Meta.permissions``); it has no permissions of its own.
    """

    class Meta:
        managed = False
        default_permissions = ()
        verbose_name = "cache dashboard"
        verbose_name_plural = "cache dashboard"

    def __str__(self):
        return "cache dashboard"

"""Admin pages of the demo models; saves made here go through the cache strategies too."""

from django.contrib import admin, messages

from django_cachestrat import invalidate

from .models import Customer, Order, Product, ProductStats


@admin.action(description="Drop the selected rows from the cache")
def drop_from_cache(modeladmin, request, queryset):
    """Invalidate each selected row; the next cached read fills it from the database."""
    pks = list(queryset.values_list("pk", flat=True))
    for pk in pks:
        invalidate(queryset.model, pk=pk)
    modeladmin.message_user(request, f"Dropped {len(pks)} row(s) from the cache.", messages.SUCCESS)


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    """Customers: write-through cached."""

    list_display = ["email", "name", "city", "loyalty_points", "balance", "updated_at"]
    list_filter = ["city"]
    search_fields = ["email", "name"]
    readonly_fields = ["created_at", "updated_at"]
    actions = [drop_from_cache]


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    """Products: cache-aside cached."""

    list_display = ["sku", "name", "price", "stock", "active", "updated_at"]
    list_filter = ["active"]
    list_editable = ["price", "stock", "active"]
    search_fields = ["sku", "name"]
    readonly_fields = ["updated_at"]
    actions = [drop_from_cache]


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    """Orders: cache-aside cached, with foreign keys to customers and products."""

    list_display = ["id", "customer", "product", "quantity", "total", "status", "created_at"]
    list_filter = ["status"]
    list_select_related = ["customer", "product"]
    autocomplete_fields = ["customer", "product"]
    readonly_fields = ["created_at"]
    actions = [drop_from_cache]


@admin.action(description="Count one more view of each (write-behind)")
def count_a_view(modeladmin, request, queryset):
    """``increment_behind(views=1)`` each selected row; say where each view went.

    Each view is recorded in Redis (the Celery worker writes it to the database later), or,
    when Redis cannot be reached, written to the database at once.
    """
    pks = list(queryset.values_list("pk", flat=True))
    deferred = sum(ProductStats.objects.increment_behind(pk, views=1) for pk in pks)
    written = len(pks) - deferred
    if deferred:
        modeladmin.message_user(
            request,
            f"Counted a view of {deferred} row(s) in Redis; the Celery worker writes them to "
            "the database within a few seconds.",
            messages.SUCCESS,
        )
    if written:
        modeladmin.message_user(
            request,
            f"Counted a view of {written} row(s) straight in the database: Redis could not "
            "be reached (see the server's log).",
            messages.WARNING,
        )


@admin.register(ProductStats)
class ProductStatsAdmin(admin.ModelAdmin):
    """Product stats: write-behind cached.

    The list shows the database's values next to the cache's: they differ until the Celery
    worker flushes the pending writes (every ``FLUSH_INTERVAL`` seconds). The change form
    shows what reads see (the cache, pending writes included) and saves only the fields
    that were changed, so it never writes back a stale counter.
    """

    list_display = ["product", "views", "cached_views", "last_viewed"]
    list_select_related = ["product"]
    search_fields = ["product__sku", "product__name"]
    autocomplete_fields = ["product"]
    actions = [count_a_view, drop_from_cache]

    @admin.display(description="views (cache)")
    def cached_views(self, obj):
        """The count reads see: the database's plus the writes not flushed yet."""
        try:
            return ProductStats.objects.get_cached(pk=obj.pk).views
        except ProductStats.DoesNotExist:
            return "-"

    def get_readonly_fields(self, request, obj=None):
        """The counter is counted, not typed in; a row's product does not change."""
        return ["product", "views"] if obj is not None else ["views"]

    def get_object(self, request, object_id, from_field=None):
        """Edit the row as reads see it, with the pending writes included."""
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            return None
        try:
            return ProductStats.objects.get_cached(pk=obj.pk)
        except ProductStats.DoesNotExist:
            return None

    def save_model(self, request, obj, form, change):
        """Save only the changed fields (write-behind); a new row is inserted at once."""
        if change:
            if form.changed_data:
                obj.save(update_fields=form.changed_data)
        else:
            obj.save()

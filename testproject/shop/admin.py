"""Admin pages of the demo models; saves made here go through the cache strategies too."""

from django.contrib import admin, messages

from django_cachestrat import invalidate

from .models import Customer, Order, Product


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

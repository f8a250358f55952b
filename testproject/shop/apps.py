"""App config of the demo app ``shop``."""

from django.apps import AppConfig


class ShopConfig(AppConfig):
    """The ``shop`` app: its models are cached with django_cachestrat."""

    name = "testproject.shop"
    label = "shop"
    verbose_name = "Shop (cachestrat demo)"
    default_auto_field = "django.db.models.BigAutoField"

"""The app config: ``ready()`` wires receivers and registers checks, nothing else."""

from django.apps import AppConfig


class CachestratConfig(AppConfig):
    """django_cachestrat's app config."""

    name = "django_cachestrat"
    verbose_name = "Cache strategies"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        """Connect the save/delete receivers of every cached model; register the checks."""
        from django_cachestrat import checks, handlers

        handlers.connect()
        del checks  # imported for its @register side effect

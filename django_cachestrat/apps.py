"""The app config: ``ready()`` wires receivers and registers checks, nothing else."""

from django.apps import AppConfig, apps


class CachestratConfig(AppConfig):
    """django_cachestrat's app config."""

    name = "django_cachestrat"
    verbose_name = "Cache strategies"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        """Register the cached models, connect their receivers, register the checks."""
        # Imported here, as Django advises: these modules use the models.
        from django_cachestrat import checks, codec, handlers, options
        from django_cachestrat.write_behind import tasks

        for model in apps.get_models():
            if options.is_cached(model):
                options.register(model, codec.fingerprint(model._meta.concrete_model))
        handlers.connect()
        tasks.connect()
        del checks  # imported for its @register side effect

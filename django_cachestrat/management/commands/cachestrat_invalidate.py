"""``manage.py cachestrat_invalidate app_label.Model [pk ...]``."""

from django.core.management.base import BaseCommand, CommandError

from django_cachestrat import backends, conf, invalidate, invalidate_model
from django_cachestrat import options as cache_options
from django_cachestrat.management.labels import model_named


class Command(BaseCommand):
    """Drop cached rows after writes the app could not see (raw SQL, other programs)."""

    help = (
        "Drop cached rows of a model: the given pks, or every row (a version bump, O(1)) "
        "when no pk is given."
    )

    def add_arguments(self, parser):
        """Take the model label and the pks."""
        parser.add_argument(
            "model", help="app_label.ModelName, or the model's name if no other cached model has it"
        )
        parser.add_argument("pks", nargs="*", help="primary keys; none: the whole model")

    def handle(self, *args, model, pks, **options):
        """Drop the rows and say what was dropped."""
        model_class = model_named(model, cache_options.cached_models(), "cached")
        try:
            if pks:
                for pk in pks:
                    invalidate(model_class, pk=pk)
            else:
                invalidate_model(model_class)
        except (TypeError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        if backends.get(conf.settings().CACHE_ALIAS).pending_invalidations:
            # Kept for replay only in this process, which ends now: say so, loudly.
            raise CommandError("Redis could not be reached; nothing was dropped. Run it again.")
        what = f"{len(pks)} row(s)" if pks else "every row"
        self.stdout.write(self.style.SUCCESS(f"Dropped {what} of {model_class._meta.label}."))

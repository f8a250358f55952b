"""``manage.py cachestrat_write_behind [list | retry ID... | discard ID...]``."""

from django.core.management.base import BaseCommand, CommandError

from django_cachestrat.backends import CacheUnavailable
from django_cachestrat.models import DeadLetter
from django_cachestrat.write_behind import flusher


class Command(BaseCommand):
    """List pending write-behind rows and dead letters; retry or discard dead letters."""

    help = "List pending write-behind writes and dead letters; retry or discard dead letters."

    def add_arguments(self, parser):
        """Take the action and the dead letter ids."""
        parser.add_argument(
            "action", nargs="?", default="list", choices=["list", "retry", "discard"]
        )
        parser.add_argument("ids", nargs="*", type=int, help="dead letter ids")
        parser.add_argument("--all", action="store_true", help="every dead letter")

    def handle(self, *args, action, ids, all=False, **options):
        """Do the action."""
        if action == "list":
            return self._list()
        if not ids and not all:
            raise CommandError(f"{action} needs dead letter ids, or --all.")
        letters = DeadLetter.objects.all() if all else DeadLetter.objects.filter(pk__in=ids)
        found = list(letters)
        missing = set(ids) - {letter.pk for letter in found}
        if missing:
            raise CommandError(f"No dead letter with id {', '.join(map(str, sorted(missing)))}.")
        for letter in found:
            if action == "discard":
                letter.delete()
            else:
                try:
                    flusher.retry_dead_letter(letter)
                except (CacheUnavailable, RuntimeError) as exc:
                    raise CommandError(f"Dead letter {letter.pk} kept: {exc}") from exc
            self.stdout.write(f"{action}: dead letter {letter.pk} ({letter})")

    def _list(self):
        try:
            waiting = flusher.waiting()
        except CacheUnavailable as exc:
            raise CommandError(f"Redis cannot be reached ({exc}).") from exc
        if not waiting:
            self.stdout.write("No pending write-behind writes.")
        for label, (rows, batches) in sorted(waiting.items()):
            self.stdout.write(f"{label}: {rows} row(s) waiting, {batches} batch(es) in flight")
        letters = DeadLetter.objects.all()
        self.stdout.write(f"{len(letters)} dead letter(s)")
        for letter in letters:
            self.stdout.write(
                f"  #{letter.pk} {letter.model} pk={letter.object_pk} after {letter.attempts} "
                f"attempt(s): {letter.error}"
            )

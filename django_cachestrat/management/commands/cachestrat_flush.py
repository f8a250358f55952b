"""``manage.py cachestrat_flush [--reclaim]``."""

from django.core.management.base import BaseCommand, CommandError

from django_cachestrat.backends import CacheUnavailable
from django_cachestrat.write_behind import flusher


class Command(BaseCommand):
    """Write every pending write-behind write to the database now."""

    help = (
        "Drain every pending write-behind write synchronously (for deploys and shutdowns) "
        "and print what was written."
    )

    def add_arguments(self, parser):
        """Take --reclaim."""
        parser.add_argument(
            "--reclaim",
            action="store_true",
            help="also take over batches that workers claimed but did not finish "
            "(use once the workers are stopped)",
        )

    def handle(self, *args, reclaim=False, **options):
        """Drain and report."""
        try:
            report = flusher.drain(reclaim=reclaim)
        except CacheUnavailable as exc:
            raise CommandError(f"Redis cannot be reached; nothing was flushed ({exc}).") from exc
        for label, rows in sorted(report.rows.items()):
            self.stdout.write(f"{label}: wrote {rows} row(s)")
        self.stdout.write(
            f"{report.batches} batch(es), {sum(report.rows.values())} row(s) written, "
            f"{report.dead_letters} dead-lettered, {report.requeued} waiting to be retried."
        )
        waiting = flusher.waiting()
        if waiting:
            self.stdout.write(
                self.style.WARNING(
                    "Still pending: "
                    + ", ".join(
                        f"{label}: {rows} row(s), {batches} batch(es) in flight"
                        for label, (rows, batches) in waiting.items()
                    )
                    + ("" if reclaim else " (use --reclaim once the workers are stopped)")
                )
            )

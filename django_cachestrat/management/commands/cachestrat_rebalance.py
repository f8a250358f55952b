"""``manage.py cachestrat_rebalance [--force]``."""

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from django_cachestrat import rebalance


class Command(BaseCommand):
    """Settle the ring of Redis nodes after a change of ``CACHESTRAT["NODES"]``."""

    help = (
        "Settle the ring of Redis nodes that CACHESTRAT['NODES'] names: drain the nodes' "
        "write-behind queues, drop what a node may hold from an earlier ring, and write the "
        "ring's records. Run it at deploy, once no process of the previous ring runs."
    )

    def add_arguments(self, parser):
        """Take --force."""
        parser.add_argument(
            "--force",
            action="store_true",
            help="settle the nodes that answer even if some do not (their pending "
            "write-behind writes are then not drained; run it again when they answer)",
        )

    def handle(self, *args, force=False, **options):
        """Rebalance and say what was done to each node."""
        try:
            report = rebalance.run(force=force)
        except (rebalance.RebalanceError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from exc
        if not report.changed:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Ring {report.ring} is settled already (epoch {report.epoch}): nothing to do."
                )
            )
            return
        drained = sum(report.drained.rows.values())
        self.stdout.write(
            f"Drained {drained} write-behind row(s) to the database "
            f"({report.drained.batches} batch(es), {report.drained.dead_letters} dead-lettered)."
        )
        for state in report.nodes:
            if not state.reachable:
                self.stdout.write(self.style.WARNING(f"{state.alias}: unreachable, left unsettled"))
            elif state.served_previous:
                self.stdout.write(
                    f"{state.alias}: kept its entries; dropped {state.dropped} key(s) of rows "
                    "it gains"
                )
            else:
                self.stdout.write(
                    f"{state.alias}: new to the ring (or back): dropped its {state.dropped} key(s)"
                )
        for state in report.retired:
            self.stdout.write(f"{state.alias}: left the ring, marked retired")
        self.stdout.write(
            self.style.SUCCESS(f"Ring {report.ring} settled at epoch {report.epoch}.")
        )

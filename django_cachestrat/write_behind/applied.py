"""The ``AppliedBatch`` markers: a batch (or one row of it) is applied exactly once.

A flush writes its batch's id in the same transaction as the rows, so a batch reclaimed
after its worker died between commit and acknowledgement is recognised and skipped:
counter deltas stay exact. This module is the only one that reads or writes the table.

**Pruning.** A marker is needed while its batch can still be written by someone: while
the batch is in flight in Redis (a reclaim may come), and while a worker that claimed it
may still commit it. A worker gives up a batch whose visibility deadline passed before
its commit (``flusher``), so that second window ends ``VISIBILITY_TIMEOUT`` after the
claim. ``prune`` deletes markers older than twice that whose batch is no longer in
flight; markers are listed *before* the batches in flight are read, so a batch claimed in
between has no marker yet and one acknowledged in between is simply kept until next time.

"No longer in flight" means no worker will write the batch again only because a batch
leaves flight by its current owner's acknowledgement (or requeue) alone: a worker that
stalled past its deadline while another reclaimed the batch is refused (``queue``).
Otherwise its late acknowledgement would take the batch out of flight under the new
owner, the marker (old: written before the first worker stalled) would be pruned, and the
new owner, not finding it, would apply the batch a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta

from django.apps import apps
from django.utils import timezone

#: Markers looked at per ``prune`` call: the table shrinks by at most this much a call.
PRUNE_CHUNK = 1000


def _table():
    # Looked up in the app registry, not imported: the strategies import this module,
    # and the app's package imports the strategies before its models may be loaded.
    return apps.get_model("django_cachestrat", "AppliedBatch")


def row_marker(batch_id: str, pk: object) -> str:
    """Return the marker id of one row of a batch (written when rows go one by one)."""
    return f"{batch_id}:{pk}"


def cut_marker(cut_id: str) -> str:
    """Return the marker id a direct write commits with when it set pending writes aside."""
    return f"cut-{cut_id}"


def batch_of(marker: str) -> str:
    """Return the batch id a marker (of a batch or of one of its rows) belongs to."""
    return marker.split(":", 1)[0]


def applied(using: str, ids: Iterable[str]) -> set[str]:
    """Return which of the marker ``ids`` are committed on database ``using``."""
    ids = list(ids)
    if not ids:
        return set()
    return set(_table().objects.using(using).filter(pk__in=ids).values_list("pk", flat=True))


def mark(using: str, marker: str) -> None:
    """Write a marker, in the transaction that writes what it stands for."""
    _table().objects.using(using).create(id=marker)


def prune(using: str, visibility: float, in_flight: Callable[[], set[str]]) -> int:
    """Delete markers no flush can need any more; return how many.

    ``in_flight()`` returns the ids of the batches in flight in Redis; it is called after
    the markers are listed (see the module docstring for why that order is safe).
    """
    cutoff = timezone.now() - timedelta(seconds=2 * visibility)
    old = list(
        _table()
        .objects.using(using)
        .filter(applied_at__lt=cutoff)
        .order_by("applied_at")
        .values_list("pk", flat=True)[:PRUNE_CHUNK]
    )
    if not old:
        return 0
    flying = in_flight()
    doomed = [marker for marker in old if batch_of(marker) not in flying]
    if doomed:
        _table().objects.using(using).filter(pk__in=doomed).delete()
    return len(doomed)

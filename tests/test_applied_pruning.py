"""``AppliedBatch`` pruning: the table stays small, and no marker a flush may need is lost."""

import time
from datetime import timedelta

import pytest
from django.db import router, transaction
from django.db.models import F
from django.test import override_settings
from django.utils import timezone

from django_cachestrat.models import AppliedBatch
from django_cachestrat.write_behind import applied, flusher
from django_cachestrat.write_behind.queue import Queue
from tests.models import PageStats

pytestmark = pytest.mark.django_db(transaction=True)

USING = router.db_for_write(PageStats)


def age_markers(seconds, **filters):
    """Move markers back in time (as if ``seconds`` had passed since they were written)."""
    AppliedBatch.objects.filter(**filters).update(
        applied_at=F("applied_at") - timedelta(seconds=seconds)
    )


def commit_without_ack(batch):
    """What a worker does before it dies between its commit and its acknowledgement."""
    with transaction.atomic(using=USING):
        flusher._write(PageStats, USING, Queue(PageStats).contents(batch.id, batch.pks).rows)
        applied.mark(USING, batch.id)


def views(*rows):
    return [PageStats.objects.get(pk=row.pk).views for row in rows]


def test_the_table_stays_bounded_over_a_long_run_of_flushes(settings):
    rows = [PageStats.objects.create(path=f"/p{i}") for i in range(3)]
    rounds, batches, sizes = 300, 0, []
    with override_settings(CACHESTRAT={**settings.CACHESTRAT, "VISIBILITY_TIMEOUT": 1.0}):
        for _ in range(rounds):
            for row in rows:
                PageStats.objects.increment_behind(row.pk, views=1)
            batches += flusher.flush([PageStats]).batches
            sizes.append(AppliedBatch.objects.count())
            age_markers(1)  # a second passes between flushes, without the wait
    assert batches == rounds
    # A marker is kept two visibility timeouts: here the last three flushes' at most.
    assert max(sizes) <= 3 < batches
    assert views(*rows) == [rounds] * 3  # every batch applied once


def test_a_marker_whose_batch_is_in_flight_is_kept_and_the_batch_applied_once():
    page = PageStats.objects.create(path="/")
    PageStats.objects.increment_behind(page.pk, views=5)
    queue = Queue(PageStats)
    batch = queue.claim(10, visibility=3600)  # a worker that commits, then dies
    commit_without_ack(batch)
    AppliedBatch.objects.create(id="18f0000000-000000000000")  # a finished batch's
    age_markers(3600)
    assert flusher.prune() == 1
    assert list(AppliedBatch.objects.values_list("pk", flat=True)) == [batch.id]
    assert views(page) == [5]
    # The batch is reclaimed: its marker says it is applied, so it is not written again.
    queue.expire_inflight()
    report = flusher.flush([PageStats])
    assert report.batches == 1 and report.rows == {"tests.pagestats": 1}
    assert views(page) == [5]
    assert PageStats.objects.get_cached(pk=page.pk).views == 5
    assert not AppliedBatch.objects.exists()  # acknowledged at last: pruned at that flush
    assert flusher.flush([PageStats]).batches == 0


def test_row_markers_go_with_their_batch(settings):
    good, bad, held = (PageStats.objects.create(path=f"/{n}") for n in ("good", "bad", "held"))
    for row in (good, bad):
        PageStats.objects.increment_behind(row.pk, views=2)
    PageStats.objects.filter(pk=bad.pk)._raw_delete(using=USING)
    retry = {**settings.CACHESTRAT, "RETRY_BACKOFF": 3600}
    with override_settings(CACHESTRAT=retry):
        flusher.flush([PageStats])  # the batch fails: rows one by one, each with a marker
    (marker,) = AppliedBatch.objects.values_list("pk", flat=True)
    assert marker.split(":")[1] == str(good.pk)  # the good row's; the bad one is put back
    # Another batch, in flight, whose worker wrote one row's marker and died.
    PageStats.objects.increment_behind(held.pk, views=1)
    flying = Queue(PageStats).claim(10, visibility=3600)
    assert flying.pks == [held.pk]
    applied.mark(USING, applied.row_marker(flying.id, held.pk))
    age_markers(3600)
    assert flusher.prune() == 1
    assert list(AppliedBatch.objects.values_list("pk", flat=True)) == [
        applied.row_marker(flying.id, held.pk)
    ]
    assert views(good) == [2]


def test_a_worker_whose_batch_was_reclaimed_cannot_acknowledge_it():
    # A worker commits a batch and then stalls past its visibility timeout; another
    # reclaims the batch. The first one's late acknowledgement must not take the batch
    # out of flight under the second: pruning would then delete the marker the second
    # is about to look for, and it would apply the batch a second time.
    page = PageStats.objects.create(path="/")
    PageStats.objects.increment_behind(page.pk, views=5)
    queue = Queue(PageStats)
    first = queue.claim(10, visibility=3600)
    commit_without_ack(first)
    age_markers(3600)  # the batch sat in flight long after its commit
    queue.expire_inflight()
    time.sleep(0.002)
    second = queue.claim(10, visibility=3600)
    assert second.id == first.id and second.pks == first.pks == [page.pk]
    contents = queue.contents(second.id, second.pks).rows
    assert contents == {page.pk: ({}, {"views": 5})}  # the same writes, reclaimed
    assert queue.ack(first, list(first.pks), 60) is False  # late: the batch is not its
    flusher.prune()
    report = flusher.FlushReport()
    flusher.apply(PageStats, queue, second, report, deadline=time.monotonic() + 60)
    assert views(page) == [5]
    assert report.rows == {"tests.pagestats": 1}
    assert queue.counts() == (0, 0)
    # A late requeue is refused alike: the rows stay with the batch's owner.
    PageStats.objects.increment_behind(page.pk, views=1)
    mine = queue.claim(10, visibility=3600)
    queue.expire_inflight()
    time.sleep(0.002)  # a claim is named by its deadline, in ms: a reclaim is always later
    theirs = queue.claim(10, visibility=3600)
    assert theirs.id == mine.id
    assert queue.requeue(mine, list(mine.pks), 0) is False
    flusher.apply(PageStats, queue, theirs, report, deadline=time.monotonic() + 60)
    assert flusher.flush([PageStats]).batches == 0
    assert views(page) == [6]


def test_pruning_needs_redis_to_know_what_is_in_flight():
    from tests.redis_server import unreachable_caches

    AppliedBatch.objects.create(id="18f0000000-000000000001")
    age_markers(3600)
    with override_settings(CACHES=unreachable_caches()):
        assert flusher.prune() == 0
    assert AppliedBatch.objects.count() == 1
    assert AppliedBatch.objects.filter(applied_at__lt=timezone.now()).exists()

"""Pause a worker process at a point of its flush, from the test: no hook in the app.

A worker started with ``CACHESTRAT_TEST_PAUSE_AT=<point>`` and ``CACHESTRAT_TEST_PAUSE_FILE``
wraps the flusher's steps (in its own process only) and, at the point, writes the file and
waits: until the test kills it, or until the test creates ``<file>.resume``.

Points: ``after_claim`` (a batch claimed, nothing written), ``during_write`` (the rows
written, the transaction not committed), ``after_commit`` (committed, not acknowledged).
With ``CACHESTRAT_TEST_PAUSE_SKIP=N`` the worker goes past the point N times (flushing N
batches) and pauses the next time.
"""

import itertools
import os
import time
from pathlib import Path

from django_cachestrat.write_behind import flusher
from django_cachestrat.write_behind.queue import Queue

POINTS = ("after_claim", "during_write", "after_commit")


def _pause(point: str, reached) -> None:
    if os.environ.get("CACHESTRAT_TEST_PAUSE_AT") != point:
        return
    if next(reached) < int(os.environ.get("CACHESTRAT_TEST_PAUSE_SKIP", "0")):
        return
    marker = Path(os.environ["CACHESTRAT_TEST_PAUSE_FILE"])
    marker.write_text(point)
    resume = marker.with_name(marker.name + ".resume")
    deadline = time.monotonic() + 600
    while not resume.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def install() -> None:
    """Wrap the flusher's steps in this process (a worker the test started)."""
    claim, write, ack = Queue.claim, flusher._write, Queue.ack
    reached = itertools.count()  # times the point was reached in this process

    def paused_claim(self, *args, **kwargs):
        batch = claim(self, *args, **kwargs)
        if batch is not None:
            _pause("after_claim", reached)
        return batch

    def paused_write(*args, **kwargs):
        write(*args, **kwargs)
        _pause("during_write", reached)

    def paused_ack(self, *args, **kwargs):
        _pause("after_commit", reached)
        return ack(self, *args, **kwargs)

    Queue.claim, flusher._write, Queue.ack = paused_claim, paused_write, paused_ack

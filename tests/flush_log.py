"""Which worker process claimed and flushed which batch: a log the test reads afterwards.

A worker started with ``CACHESTRAT_TEST_FLUSH_LOG=<file>`` appends one JSON line per event
to the file (each line one ``write`` in append mode, so the lines of several workers never
mix, and a line written before a SIGKILL is kept):

- ``{"event": "claim", "pid", "batch", "rows", "in_flight"}`` when ``Queue.claim`` returns a
  batch (wrapped in the worker's process only, as tests/pause.py does); ``in_flight`` is how
  many batches were in flight just after the claim, this one included: 2 or more means
  another batch was claimed and not acknowledged at that moment.
- ``{"event": "flushed", "pid", "batch", "rows"}`` from the ``write_behind_flushed`` signal,
  sent once the batch is acknowledged.
"""

import json
import os
from pathlib import Path

from django_cachestrat import signals
from django_cachestrat.write_behind.queue import Queue
from tests.celery_app import FLUSH_LOG


def _write(**record) -> None:
    line = json.dumps({"pid": os.getpid(), **record}) + "\n"
    with open(os.environ[FLUSH_LOG], "a") as out:
        out.write(line)


def _flushed(sender, batch, pks, **kwargs) -> None:
    _write(event="flushed", batch=batch, rows=len(pks))


def install() -> None:
    """Log this process's claims and flushed batches (a worker the test started)."""
    claim = Queue.claim

    def logged_claim(self, *args, **kwargs):
        batch = claim(self, *args, **kwargs)
        if batch is not None:
            _, flying = self.counts()
            _write(event="claim", batch=batch.id, rows=len(batch.pks), in_flight=flying)
        return batch

    Queue.claim = logged_claim
    signals.write_behind_flushed.connect(_flushed, weak=False, dispatch_uid="tests.flush_log")


def read(path: Path) -> list[dict]:
    """The records of every worker, in the order they were written."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]

"""In-process counters of the core's events, sent to Redis in the background.

The core calls ``count(label, name, n)`` where it sends its events (and at a few
points no event marks): on a hit that is a few dict operations and no Redis call.
Signals are not used for this: dispatching one costs more than the whole count.

Thread safety without a lock on the hot path: each thread adds to a dict of its own,
which only that thread writes; the sender copies each dict (one atomic ``dict.copy``)
and sends what grew since its last copy. So ``tally[k] += n`` never races with another
writer, and nothing is counted twice or lost while threads run.

Sending: a daemon thread, started by the first count of the process, sends every
``STATS_INTERVAL`` seconds, in one round trip (``store.add``); ``flush()`` sends now, and
runs at exit too. A process killed with SIGKILL loses what it counted since its last
send. Counts Redis did not take (it is down) are kept, by minute, for an hour. A child
made by ``fork`` (gunicorn, Celery prefork) starts with no counts and its own sender:
what its parent counted is the parent's to send.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref

from django_cachestrat import backends, conf
from django_cachestrat.backends import CacheUnavailable
from django_cachestrat.counters import store

logger = logging.getLogger("django_cachestrat")

# The counters, as they are named in Redis and in ``stats.snapshot()``.
HITS = "hits"
MISSES = "misses"
NEGATIVE_HITS = "negative_hits"
FILLS = "fills"
INVALIDATIONS = "invalidations"
MODEL_INVALIDATIONS = "model_invalidations"
WRITE_THROUGH_STORES = "write_through_stores"
LEASE_WAITS = "lease_waits"
WAIT_TIMEOUTS = "wait_timeouts"
STALE_SERVES = "stale_serves"
EARLY_REFRESHES = "early_refreshes"
ERRORS = "errors"
DEGRADED_READS = "degraded_reads"
BEHIND_WRITES = "behind_writes"
FLUSHED_ROWS = "flushed_rows"
RETRIES = "retries"
DEAD_LETTERED = "dead_lettered"

#: Every counter, in the order tables show them.
COUNTERS = (
    HITS,
    MISSES,
    NEGATIVE_HITS,
    FILLS,
    INVALIDATIONS,
    MODEL_INVALIDATIONS,
    WRITE_THROUGH_STORES,
    LEASE_WAITS,
    WAIT_TIMEOUTS,
    STALE_SERVES,
    EARLY_REFRESHES,
    ERRORS,
    DEGRADED_READS,
    BEHIND_WRITES,
    FLUSHED_ROWS,
    RETRIES,
    DEAD_LETTERED,
)

#: Minutes of counts kept in memory while Redis does not take them.
_KEEP_MINUTES = 60


class _Tally:
    """One thread's counters: ``counts`` is written by that thread only."""

    __slots__ = ("counts", "sent", "thread")

    def __init__(self, thread: threading.Thread):
        self.thread = weakref.ref(thread)
        self.counts: dict[tuple[str, str], int] = {}
        self.sent: dict[tuple[str, str], int] = {}

    def alive(self) -> bool:
        thread = self.thread()
        return thread is not None and thread.is_alive()


class Recorder:
    """The counters of one process, and the thread that sends them."""

    def __init__(self):
        self._start()

    def _start(self) -> None:
        # Also what a forked child runs: nothing of its parent's is kept.
        self._local = threading.local()
        self._lock = threading.Lock()  # guards the list of tallies and the unsent counts
        self._send_lock = threading.Lock()  # one send at a time (the thread, flush, exit)
        self._tallies: list[_Tally] = []
        self._unsent: dict[int, dict[tuple[str, str], int]] = {}
        self._since = time.time()
        self._sender: threading.Thread | None = None
        self._wake = threading.Event()

    def count(self, label: str, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` of model ``label`` (``app_label.model_name``)."""
        if not n or not conf.settings().STATS:
            return
        try:
            counts = self._local.counts
        except AttributeError:
            counts = self._adopt()
        key = (label, name)
        counts[key] = counts.get(key, 0) + n

    def _adopt(self) -> dict[tuple[str, str], int]:
        """Give the calling thread its tally; start the sender on the process's first."""
        tally = _Tally(threading.current_thread())
        with self._lock:
            self._tallies.append(tally)
            if self._sender is None:
                self._sender = threading.Thread(
                    target=self._run, name="cachestrat-stats", daemon=True
                )
                self._sender.start()
        self._local.counts = tally.counts
        return tally.counts

    def _run(self) -> None:
        while True:
            try:
                interval = conf.settings().STATS_INTERVAL
            except Exception:
                interval = 1.0
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # a bad setting, a bug: never kill the thread, say it once
                logger.exception("django_cachestrat: statistics could not be sent.")

    def _collect(self) -> dict[tuple[str, str], int]:
        """Take what every thread counted since the last collection; forget dead threads."""
        grown: dict[tuple[str, str], int] = {}
        with self._lock:
            kept = []
            for tally in self._tallies:
                alive = tally.alive()  # first: a thread that ends after this is copied again
                now = tally.counts.copy()
                for key, value in now.items():
                    delta = value - tally.sent.get(key, 0)
                    if delta:
                        grown[key] = grown.get(key, 0) + delta
                tally.sent = now
                if alive:
                    kept.append(tally)
            self._tallies = kept
        return grown

    def flush(self) -> bool:
        """Send what this process counted and has not sent yet, now; True if Redis took it.

        Raises nothing: counts Redis does not take are kept for the next send.
        """
        with self._send_lock:
            grown = self._collect()
            cfg = conf.settings()
            if not cfg.STATS:
                self._unsent.clear()
                return True
            if grown:
                bucket = self._unsent.setdefault(int(time.time() // 60), {})
                for key, n in grown.items():
                    bucket[key] = bucket.get(key, 0) + n
            if not self._unsent:
                return True
            try:
                transport = backends.get(cfg.CACHE_ALIAS)
                store.add(transport, cfg.KEY_PREFIX, cfg.STATS_RETENTION, self._unsent, self._since)
            except CacheUnavailable:
                for minute in sorted(self._unsent)[:-_KEEP_MINUTES]:
                    del self._unsent[minute]
                return False
            self._unsent = {}
            return True

    def discard(self) -> None:
        """Forget what this process counted and has not sent (``stats.reset()``)."""
        with self._send_lock:
            self._collect()
            self._unsent = {}
            self._since = time.time()

    def at_exit(self) -> None:
        """Send what is left as the interpreter exits (when anything was counted)."""
        if self._tallies or self._unsent:
            try:
                self.flush()
            except Exception:
                pass  # settings gone or broken at exit: nothing to tell anyone any more

    def after_fork(self) -> None:
        """In a forked child: forget the parent's counts and sender; start afresh."""
        self._start()


_recorder = Recorder()
os.register_at_fork(after_in_child=_recorder.after_fork)
atexit.register(_recorder.at_exit)

#: The hot path's entry point: ``count(label, name, n)``.
count = _recorder.count
flush = _recorder.flush
discard = _recorder.discard

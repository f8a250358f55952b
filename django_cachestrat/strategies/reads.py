"""The read engine every strategy shares: single-flight fills of missed rows.

A strategy says how a row's cached form is read, leased, waited for and filled (a
``Form``: an entry for cache-aside and write-through, a view over pending writes for
write-behind); ``fill`` does the rest, once for all of them. The reader that takes a
row's lease reads the database and fills; the others wait for its value (woken by it,
not polling), take over if its lease lapses, and read the database themselves after
``FILL_WAIT`` at the most. The leases are taken before the database is read: that is
what lets an invalidation after the read cancel the fill.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

from django.db import models

from django_cachestrat import conf, signals, transactions
from django_cachestrat.backends import CacheUnavailable
from django_cachestrat.backends.scripts import Acquired, Waited
from django_cachestrat.counters import recorder

#: What ``Form.decode`` returns for a cached "no such row" (``NEGATIVE_TTL``).
ABSENT = object()
#: What ``await_fills`` gives for a slot whose filler is gone, and for one not filled in time.
TAKE_OVER = object()
TIMEOUT = object()


#: The statistics counter each row event adds to (``counters.recorder``).
_COUNTERS = {
    signals.cache_hit: recorder.HITS,
    signals.cache_miss: recorder.MISSES,
    signals.cache_fill: recorder.FILLS,
    signals.cache_wait: recorder.LEASE_WAITS,
    signals.cache_wait_timeout: recorder.WAIT_TIMEOUTS,
    signals.cache_stale: recorder.STALE_SERVES,
}


def send(signal, model: type[models.Model], count: int) -> None:
    """Count ``count`` rows in the statistics; send ``signal`` for them when someone listens.

    Counted under the concrete model, whose entries a proxy shares.
    """
    if count:
        concrete = model._meta.concrete_model or model  # None only on an abstract model
        recorder.count(concrete._meta.label_lower, _COUNTERS[signal], count)
        if signal.receivers:
            signal.send(sender=model, keys=count)


class Form:
    """How one strategy caches the rows of one model, for one read: the engine's plug.

    ``raw`` values are what Redis answered for a row (an entry's bytes; a view and its
    version); the form alone knows what they mean.
    """

    #: True when ``acquire`` counts a reader that finds the lease held among the waiters.
    counts_waiters = False

    def __init__(self, model: type[models.Model], using: str, transport: Any):
        self.model = model
        self.using = using
        self.transport = transport
        self.cfg = conf.settings()

    def acquire(self, pks: Sequence[Any], token: str) -> list[tuple[Acquired, Any]]:
        """Take the rows' leases unless a value arrived; per pk ``(status, raw)``."""
        raise NotImplementedError

    def retake(self, pks: Sequence[Any], token: str) -> list[bool]:
        """Take the leases of rows whose value was there but could not be used."""
        raise NotImplementedError

    def decode(self, pk: Any, raw: Any) -> models.Model | object | None:
        """Return the row ``raw`` holds, ``ABSENT`` for "no such row", or None: unusable."""
        raise NotImplementedError

    def slots(self, pks: Sequence[Any]) -> list[tuple[str, tuple[str, str, str]]]:
        """Return, per pk, its value key and its fill keys (lease, waiters, ready list)."""
        raise NotImplementedError

    def wait(self, slots: Sequence[tuple]) -> list[tuple[Waited, Any]]:
        """Check on fills others hold (``RedisTransport.wait_many``'s shape)."""
        raise NotImplementedError

    def load(self, pks: Sequence[Any], token: str) -> dict[Any, models.Model]:
        """Read ``pks`` from the database under our leases and fill what was read.

        Gives the leases back if the read raises, so a waiting reader takes over now.
        """
        raise NotImplementedError

    def direct(self, pks: Sequence[Any]) -> dict[Any, models.Model]:
        """Read ``pks`` from the database, filling nothing."""
        raise NotImplementedError


def fill(form: Form, pks: Sequence[Any]) -> dict[Any, models.Model]:
    """Return ``{pk: row}`` for the missed ``pks`` that exist, read once whoever asks."""
    if not transactions.may_fill(form.using):
        return form.direct(pks)
    token = secrets.token_hex(8)
    try:
        taken = form.acquire(pks, token)
    except CacheUnavailable:
        return form.direct(pks)
    rows: dict[Any, models.Model] = {}
    mine, theirs, unusable = [], [], []
    counted = set()
    for pk, (status, raw) in zip(pks, taken, strict=True):
        if status is Acquired.TAKEN:
            mine.append(pk)
        elif status is Acquired.HELD:
            theirs.append(pk)
            if form.counts_waiters:
                counted.add(pk)
        elif _take(form, rows, pk, raw) is None:  # filled since our read, but unusable
            unusable.append(pk)
    if unusable:
        try:
            held = form.retake(unusable, token)
        except CacheUnavailable:
            held = [False] * len(unusable)
        for pk, got in zip(unusable, held, strict=True):
            (mine if got else theirs).append(pk)
    if mine:
        rows.update(form.load(mine, token))
    if not theirs:
        return rows
    if not form.cfg.FILL_WAIT:
        rows.update(form.direct(theirs))
        return rows
    late, take_over = [], []
    answers = await_fills(
        form.model,
        form.transport,
        form.slots(theirs),
        form.wait,
        counted=[pk in counted for pk in theirs],
    )
    for pk, answer in zip(theirs, answers, strict=True):
        if answer is TAKE_OVER:
            take_over.append(pk)
        elif answer is TIMEOUT or _take(form, rows, pk, answer) is None:
            late.append(pk)
    if take_over:
        rows.update(fill(form, take_over))
    if late:
        rows.update(form.direct(late))
    return rows


def _take(form: Form, rows: dict, pk: Any, raw: Any) -> object | None:
    """Decode ``raw`` into ``rows``; return what decode said (None: unusable)."""
    obj = form.decode(pk, raw)
    if obj is not None and obj is not ABSENT:
        rows[pk] = obj
    return obj


def await_fills(
    model, transport, slots: Sequence[tuple], check: Callable, counted: Sequence[bool] = ()
) -> list:
    """Wait for fills others hold.

    Per ``(value_key, fill_keys)`` slot: the raw value, ``TAKE_OVER`` (its filler is gone)
    or ``TIMEOUT`` (``FILL_WAIT`` passed). ``check(slots)`` looks at the slots, as
    ``RedisTransport.wait_many`` does, and counts the reader as waiting; between looks the
    reader blocks on the slots' ready lists, which fillers push to: a ``'1'`` (look
    again), or the value itself. Slots ``counted`` already (by the lease script) are not
    looked at first: the reader blocks at once.
    """
    deadline = time.monotonic() + conf.settings().FILL_WAIT
    answers: list = [TIMEOUT] * len(slots)
    waiting = list(range(len(slots)))
    look = [i for i in waiting if not (counted and counted[i])]
    by_ready = {slot[1][2]: i for i, slot in enumerate(slots)}
    send(signals.cache_wait, model, len(waiting))
    try:
        while waiting:
            if look:
                replies = check([slots[i] for i in look])
                for i, (status, value) in zip(look, replies, strict=True):
                    if status is Waited.READY:
                        answers[i] = value
                    elif status is Waited.TAKE_OVER:
                        answers[i] = TAKE_OVER
                done = {i for i in look if answers[i] is not TIMEOUT}
                waiting = [i for i in waiting if i not in done]
            remaining = deadline - time.monotonic()
            if waiting and remaining <= 0:
                send(signals.cache_wait_timeout, model, len(waiting))
                break
            if not waiting:
                break
            popped = transport.block([slots[i][1][2] for i in waiting], remaining)
            if popped is None:
                look = list(waiting)  # a slice passed: is a filler gone?
                continue
            i = by_ready[popped[0]]
            if popped[1] != b"1" and i in waiting:
                answers[i] = popped[1]  # the value itself
                waiting.remove(i)
                look = []
            else:
                look = [i] if i in waiting else []
    except CacheUnavailable:
        pass  # what is still waiting reads the database
    return answers

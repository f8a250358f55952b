"""Invalidations that could not be sent, kept to be replayed when Redis answers again.

An outage must not leave stale rows behind: a row dropped while Redis was down is dropped
when it comes back, before anything else is read. The list is bounded: beyond ``limit``
keys, a model's keys are forgotten and its version is bumped instead (every row of it
becomes a miss, which is always safe).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

#: What is kept per model version key: the keys to delete, or ``BUMP``.
BUMP = None


class InvalidationReplay:
    """Failed invalidations of one transport, by model version key."""

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._kept: dict[str, set[str] | None] = {}
        self._count = 0

    def __bool__(self) -> bool:
        return bool(self._kept)

    def __len__(self) -> int:
        """How many invalidations wait (a whole model counts as one)."""
        with self._lock:
            return sum(1 if k is BUMP else len(k) for k in self._kept.values())

    def keep(self, version_key: str, keys: Iterable[str] | None) -> None:
        """Keep the deletion of ``keys`` of one model, or (``None``) a bump of its version."""
        with self._lock:
            self._keep(version_key, None if keys is None else set(keys))

    def _keep(self, version_key: str, keys: set[str] | None) -> None:
        known = self._kept.get(version_key, set())
        if known is BUMP:
            return
        if keys is None or self._count + len(keys) > self.limit:
            # Too many to remember one by one: the whole model is bumped on replay.
            self._count -= len(known)
            self._kept[version_key] = BUMP
            return
        fresh = keys - known
        known |= fresh
        self._kept[version_key] = known
        self._count += len(fresh)

    def take(self) -> dict[str, set[str] | None]:
        """Return everything kept and forget it (``put_back`` if the replay fails)."""
        with self._lock:
            kept, self._kept, self._count = self._kept, {}, 0
        return kept

    def put_back(self, kept: dict[str, set[str] | None]) -> None:
        """Keep again what ``take`` returned, merged with what was kept since."""
        with self._lock:
            for version_key, keys in kept.items():
                self._keep(version_key, keys)


class KeptWrites:
    """Batches of writes whose replies timed out even when sent again: sent later.

    Each write in them carries its writer's id and number, so sending it once more when
    Redis answers records it once, whether or not the server ran an earlier copy. At most
    ``limit`` batches; beyond, a batch cannot be kept and the caller is told.
    """

    def __init__(self, limit: int):
        self.limit = limit
        self._lock = threading.Lock()
        self._kept: list[list] = []

    def __bool__(self) -> bool:
        return bool(self._kept)

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, ops: Sequence) -> bool:
        """Keep a batch; False when full."""
        with self._lock:
            if len(self._kept) >= self.limit:
                return False
            self._kept.append(list(ops))
            return True

    def take(self) -> list[list]:
        """Return every batch kept, oldest first, and forget them (``put_back`` on failure)."""
        with self._lock:
            kept, self._kept = self._kept, []
        return kept

    def put_back(self, kept: list[list]) -> None:
        """Keep again, first, what ``take`` returned."""
        with self._lock:
            self._kept[:0] = kept

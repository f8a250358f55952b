"""The circuit breaker: after a Redis failure, leave Redis alone for a cooldown.

While it is open every call fails at once, without touching the network, so a dead Redis
costs callers nothing but a database read. After the cooldown the next call is the probe
(half-open): its success closes the breaker, its failure opens it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    """Open for ``cooldown`` seconds after each failure; ``clock`` is a monotonic clock."""

    def __init__(self, cooldown: float, *, clock: Callable[[], float] = time.monotonic):
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until = 0.0

    @property
    def allows(self) -> bool:
        """True when a call may go to Redis: closed, or open with its cooldown over."""
        return not self._open_until or self._clock() >= self._open_until

    def failed(self) -> bool:
        """Open (again) for a cooldown; True when it was closed: a new episode began."""
        with self._lock:
            first = not self._open_until
            self._open_until = self._clock() + self.cooldown
        return first

    def succeeded(self) -> bool:
        """Close; True when it was open: the episode is over."""
        if not self._open_until:
            return False  # the hot path: no lock
        with self._lock:
            was_open = bool(self._open_until)
            self._open_until = 0.0
        return was_open

"""How many calls or requests a replica has in flight, now and on average: its load as Serve's
autoscaler would see it, for the work that bypasses Serve's own count."""
from __future__ import annotations

import time
from collections.abc import Callable


class InFlight:
    """A count of things in flight, integrated over time so that `mean` is the average since
    it was last read (a snapshot would see a busy replica idle between two calls)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.now = 0
        self._since = self._changed = clock()
        self._area = 0.0  # in flight integrated over time since `_since`

    def count(self, delta: int) -> None:
        now = self._clock()
        self._area += self.now * (now - self._changed)
        self._changed, self.now = now, self.now + delta

    def mean(self) -> float:
        """In flight on average since the last reading, or since the meter was made."""
        self.count(0)
        now = self._clock()
        mean = self._area / (now - self._since) if now > self._since else float(self.now)
        self._since, self._area = now, 0.0
        return mean

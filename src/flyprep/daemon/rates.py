"""Rates of a scan's counters over the last seconds, for ``status``: the daemon samples
each running scan's counters a few times a second; a rate is the change over the samples
of the last ``window_s`` seconds. Bounded: ``max_samples`` per scan."""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable, Mapping


class RateWindow:
    """Per-second rates of named counters, per key (a scan), over ``window_s`` seconds."""

    def __init__(self, window_s: float = 5.0, max_samples: int = 64) -> None:
        self.window_s = window_s
        self._max = max_samples
        self._lock = threading.Lock()
        self._samples: dict[Hashable, collections.deque[tuple[float, Mapping[str, int]]]] = {}

    def sample(self, key: Hashable, now: float, counts: Mapping[str, int]) -> None:
        """Record ``counts`` of ``key`` at time ``now`` (monotonic seconds)."""
        with self._lock:
            samples = self._samples.setdefault(key, collections.deque(maxlen=self._max))
            samples.append((now, dict(counts)))
            while len(samples) > 2 and now - samples[1][0] >= self.window_s:
                samples.popleft()  # keep one sample at or beyond the window's start

    def rates(self, key: Hashable) -> dict[str, float] | None:
        """Counter name -> change per second over the window; None until two samples."""
        with self._lock:
            samples = self._samples.get(key)
            if not samples or len(samples) < 2:
                return None
            (t0, first), (t1, last) = samples[0], samples[-1]
        if t1 <= t0:
            return None
        return {name: round((last[name] - first.get(name, 0)) / (t1 - t0), 1)
                for name in last}

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s samples (its scan ended)."""
        with self._lock:
            self._samples.pop(key, None)

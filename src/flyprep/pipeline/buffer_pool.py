"""Prepared-chunk buffers kept from one scan for the next.

A chunk buffer pair (data and weights, tens of MB) costs its first use a page fault per
page: measured 0.2 s for a scan's four 256x256 int32 pairs on a 2-core VM, at the start of
every scan, while its first frames wait. The daemon keeps the pairs of a finished scan in
a :class:`BufferPool`, and the next scan of the same stored shape and type takes them.

The pool never adds to what the running scans may hold (``flyprep check-config``'s
estimate, ``limits.max_scans`` times one scan's buffers): it keeps at most one scan's
pairs, only a scan that ended gives any (so fewer scans run then), and a scan that finds
none of its shape drops them all before it allocates its own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterable, Tuple

import numpy as np

#: A pair of chunk buffers: data, weights.
Pair = Tuple[np.ndarray, np.ndarray]


def pair_key(pair: Pair) -> tuple[tuple[int, ...], str, tuple[int, ...]]:
    """What a pair must match to be reused: shapes and the data type."""
    data, weights = pair
    return data.shape, data.dtype.str, weights.shape


class BufferPool:
    """At most ``max_pairs`` idle pairs (the oldest are dropped); any thread."""

    def __init__(self, max_pairs: int) -> None:
        self.max_pairs = max_pairs
        self._lock = threading.Lock()
        self._idle: OrderedDict[int, Pair] = OrderedDict()

    def take(self, data_shape: tuple[int, ...], dtype: np.dtype,
             weights_shape: tuple[int, ...]) -> Pair | None:
        """An idle pair of these shapes and data type; else None, and every idle pair
        is dropped (the caller allocates instead)."""
        key = (tuple(data_shape), np.dtype(dtype).str, tuple(weights_shape))
        with self._lock:
            for ident, pair in self._idle.items():
                if pair_key(pair) == key:
                    del self._idle[ident]
                    return pair
            self._idle.clear()
        return None

    def give(self, pairs: Iterable[Pair]) -> None:
        """Keep ``pairs`` (nobody else may use them any more)."""
        with self._lock:
            for pair in pairs:
                self._idle[id(pair[0])] = pair
            while len(self._idle) > self.max_pairs:
                self._idle.popitem(last=False)

    @property
    def idle(self) -> int:
        """Pairs kept now."""
        return len(self._idle)

"""The unit of work downstream of preparation: one chunk of prepared frames."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class PreparedChunk:
    """Frames ``[frame_start, frame_start + n)`` of a scan, prepared and ready to store.

    ``missing[i]`` marks a frame that never arrived: its data are zero and its weights
    all False, so that later frames keep their positions.
    """

    key: int
    frame_start: int
    data: np.ndarray  # (n, S, S)
    weights: np.ndarray  # (n, S, S) bool
    positions: np.ndarray  # (n, 2) float64, metres (y, x)
    missing: np.ndarray  # (n,) bool
    sources: tuple[str, ...] = ()
    #: Leading frames already passed on as :class:`PreparedPart` (their data, already
    #: stored, are in ``data`` too).
    written_ahead: int = 0
    #: When the last of its frames' files was finished (monotonic s), if known: the
    #: chunk's latency is measured from it.
    last_arrival: float | None = None
    #: Returns ``data`` and ``weights`` to their pool once stored; None if not pooled.
    release: Callable[[], None] | None = field(default=None, compare=False, repr=False)

    @property
    def n_frames(self) -> int:
        """Number of frames in the chunk."""
        return int(self.data.shape[0])

    @property
    def indices(self) -> np.ndarray:
        """Global frame indices of the chunk's frames."""
        return np.arange(self.frame_start, self.frame_start + self.n_frames, dtype=np.int64)


@dataclass(frozen=True)
class PreparedPart:
    """Frames ``[offset, offset + m)`` of chunk ``key`` (``chunk_frames`` frames from
    ``frame_start``), prepared before the chunk is whole so that they can be stored while
    the rest of it arrives. ``data`` is a view of the chunk's own output buffer."""

    key: int
    frame_start: int
    chunk_frames: int
    offset: int
    data: np.ndarray  # (m, S, S)
    missing: np.ndarray  # (m,) bool

    @property
    def n_frames(self) -> int:
        """Number of frames in the part."""
        return int(self.data.shape[0])

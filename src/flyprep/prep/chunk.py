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

"""A frame of which only a band of rows was read: what a reader hands on when the
preparation is fixed and uses no other rows (the ROI's), so that the rest of a C-order
frame is never read from disk.

:class:`FrameRows` stands where a frame stands (``shape``, ``dtype``, ``ndim`` are the
whole frame's) and is indexed in the whole frame's coordinates; indexing rows it does not
hold, or turning it into an array, raises instead of returning made-up values.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class FrameRows:
    """Rows ``top .. top + len(rows)`` of a 2-D frame of ``shape``."""

    __slots__ = ("rows", "top", "shape")
    ndim = 2

    def __init__(self, rows: np.ndarray, top: int, shape: tuple[int, int]) -> None:
        if rows.ndim != 2 or rows.shape[1] != shape[1] or top < 0 \
                or top + rows.shape[0] > shape[0]:
            raise ValueError(f"rows {top}..{top + rows.shape[0]} of shape {rows.shape} do "
                             f"not fit a frame of shape {shape}")
        self.rows, self.top, self.shape = rows, top, (int(shape[0]), int(shape[1]))

    @property
    def dtype(self) -> np.dtype:
        """The frame's dtype."""
        return self.rows.dtype

    @property
    def stop(self) -> int:
        """The first frame row after those held."""
        return self.top + self.rows.shape[0]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        """``frame[rows, cols]`` for a row slice within the rows held (a view)."""
        if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], slice)):
            raise TypeError(f"a FrameRows is indexed by (row slice, column index), not {key!r}")
        start, stop, step = key[0].indices(self.shape[0])
        if step != 1 or start < self.top or max(start, stop) > self.stop:
            raise IndexError(f"rows {start}..{stop} asked of a frame read only for rows "
                             f"{self.top}..{self.stop}")
        return self.rows[start - self.top:max(start, stop) - self.top, key[1]]

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError(f"only rows {self.top}..{self.stop} of this {self.shape} frame were "
                        "read; it has no whole array")

    def __repr__(self) -> str:
        return f"FrameRows(rows {self.top}..{self.stop} of {self.shape} {self.dtype})"

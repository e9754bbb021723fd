"""What an HDF5 frame file holds, from its header: how many frames, a stack or one frame,
their shape and dtype, and their positions when the file carries them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError

#: (frame shape, dtype) as a file declares it.
FrameType = tuple[tuple[int, ...], np.dtype]


class NotAFrameFile(InputError):
    """A readable HDF5 file without the frame dataset (a dark, a mask, a master file):
    not one of the scan's frame files. A frame file that is never written instead is
    noticed by the gap in the names."""


@dataclass(frozen=True)
class StackInfo:
    """What an HDF5 frame file holds: frames, stack or not, positions, frame type."""

    n: int
    stack: bool
    positions: np.ndarray | None
    kind: FrameType


@dataclass(frozen=True)
class StackProbe:
    """Reads :class:`StackInfo` from frame files: ``dataset`` holds the frames;
    ``positions_dataset`` (None: the scan has a positions file) their positions, times
    ``units``; a failed read is tried again ``read_retries`` times."""

    dataset: str
    positions_dataset: str | None = None
    units: float = 1.0
    read_retries: int = 3
    retry_delay_s: float = 0.5
    sleep: Callable[[float], Any] = lambda s: None

    def __call__(self, path: Path) -> StackInfo:
        """What ``path`` holds (retried); InputError naming the file, NotAFrameFile at
        once for a readable file without the frame dataset."""
        last: InputError | None = None
        for attempt in range(self.read_retries + 1):
            if attempt:
                self.sleep(self.retry_delay_s)
            try:
                return self.once(path)
            except NotAFrameFile:
                raise
            except InputError as exc:
                last = exc
        assert last is not None
        raise last

    def once(self, path: Path) -> StackInfo:
        """What ``path`` holds, read once."""
        try:
            with h5py.File(path, "r") as f:
                data = f.get(self.dataset)
                if data is None:
                    raise NotAFrameFile(path, f"no dataset {self.dataset!r}: not a frame file")
                if not isinstance(data, h5py.Dataset):
                    raise InputError(path, f"{self.dataset!r} is not a dataset")
                shape, dtype = data.shape, data.dtype
                pos = None
                if self.positions_dataset is not None:
                    found = f.get(self.positions_dataset)
                    if not isinstance(found, h5py.Dataset):
                        raise InputError(path, f"no positions dataset {self.positions_dataset!r}")
                    pos = np.asarray(found[()], np.float64).reshape(-1, 2)
        except InputError:
            raise
        except (OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(path, f"not a readable HDF5 frame file: {exc}") from None
        if len(shape) == 2:
            n, stack = 1, False
        elif len(shape) == 3:
            n, stack = shape[0], True
        else:
            raise InputError(path, f"dataset {self.dataset!r} has shape {shape}; "
                                   "expected (H, W) or (n, H, W)")
        if pos is not None:
            if pos.shape[0] != n or not np.isfinite(pos).all():
                raise InputError(path, f"positions dataset {self.positions_dataset!r} has "
                                       f"{pos.shape[0]} finite rows for {n} frames")
            pos = pos * self.units
        return StackInfo(n, stack, pos, (tuple(shape[-2:]), np.dtype(dtype)))

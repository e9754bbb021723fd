"""Frame bookkeeping of one scan and PtyPy's ``auto()`` on top of it.

Frames arrive by global index, in any order, with their positions. :class:`FrameBook`
keeps references to them in a fixed ring of slots (nothing is copied: preparation reads
only the ROI of each frame) and releases chunk k, holding exactly
frames ``[k*n, (k+1)*n)``, once every one of those frames has arrived or been declared
missing. Missing frames (timed out, or the scan ended without them) become zero data with
all-zero weights so that every later frame keeps its position and readers still reach
``num_frames``.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..prep.chunk import PreparedChunk
from ..ptyd.format import ChunkGrid


class Signal(enum.Enum):
    """What :meth:`Scan.auto` returns when it has no chunk: PtyPy's WAIT and EOS."""

    WAIT = "WAIT"
    EOS = "EOS"


WAIT = Signal.WAIT
EOS = Signal.EOS


@dataclass(frozen=True)
class RawChunk:
    """Raw frames ``[frame_start, frame_start + n)`` with what is known about each."""

    key: int
    frame_start: int
    frames: tuple[np.ndarray | None, ...]  # n frames of ``frame_shape``; None where missing
    present: np.ndarray  # (n,) bool
    positions: np.ndarray  # (n, 2) float64
    sources: tuple[str, ...]
    frame_shape: tuple[int, int]
    dtype: np.dtype
    #: Leading frames already released by :meth:`FrameBook.release_part` (None in
    #: ``frames``; ``present`` still tells which of them arrived).
    done: int = 0

    def stack(self) -> np.ndarray:
        """The present frames as one (m, H, W) array (a copy)."""
        return np.stack([f for f in self.frames if f is not None])


@dataclass(frozen=True)
class RawPart:
    """Raw frames ``[offset, offset + m)`` of chunk ``key`` (``chunk_frames`` frames from
    ``frame_start``), released before the chunk is whole."""

    key: int
    frame_start: int
    chunk_frames: int
    offset: int
    frames: tuple[np.ndarray | None, ...]
    present: np.ndarray  # (m,) bool


class FrameBook:
    """Collects frames by index into a bounded ring of ``buffer_chunks`` chunks of slots."""

    def __init__(
        self,
        *,
        num_frames: int,
        chunk_frames: int,
        buffer_chunks: int = 2,
        frame_timeout_s: float | None = None,
        positions: np.ndarray | None = None,
        frame_shape: tuple[int, int] | None = None,
        dtype: np.dtype | str | None = None,
        clock: Callable[[], float] = time.monotonic,
        start_key: int = 0,
    ) -> None:
        """``frame_shape`` and ``dtype`` may be given up front (so that a chunk whose frames
        all went missing can still be released); otherwise the first frame sets them.
        ``start_key``: the first chunk still to release (a resumed scan's next chunk)."""
        if num_frames < 1 or chunk_frames < 1 or buffer_chunks < 1:
            raise ValueError("num_frames, chunk_frames and buffer_chunks must be positive")
        self.grid = ChunkGrid(num_frames, chunk_frames)
        if start_key < 0 or start_key > self.grid.n_chunks:
            raise ValueError(f"start_key {start_key} outside the scan's chunks")
        self.num_frames = num_frames
        self.chunk_frames = chunk_frames
        self.buffer_chunks = buffer_chunks
        self.frame_timeout_s = frame_timeout_s
        self.clock = clock
        self.next_key = start_key
        self.ended = False
        self.missing_total = 0
        self._table = None if positions is None else np.asarray(positions, np.float64)
        if self._table is not None and self._table.shape[0] < num_frames:
            raise ValueError(f"{self._table.shape[0]} positions for {num_frames} frames")
        slots = buffer_chunks * chunk_frames
        self._frames: list[np.ndarray | None] = [None] * slots
        self._shape: tuple[int, ...] | None = None if frame_shape is None else tuple(frame_shape)
        self._dtype: np.dtype | None = None if dtype is None else np.dtype(dtype)
        self._present = np.zeros(slots, bool)
        self._missing = np.zeros(slots, bool)
        self._arrived_at = np.full(slots, np.inf)
        self._positions = np.full((slots, 2), np.nan)
        self._sources: list[str] = [""] * slots
        self._last_position = np.zeros(2)
        self._handed = 0  # leading frames of chunk next_key released as parts

    def set_frame_type(self, shape: tuple[int, int], dtype: np.dtype | str) -> None:
        """Fix the frames' shape and dtype before any frame arrives."""
        if self._shape is None:
            self._shape, self._dtype = tuple(shape), np.dtype(dtype)

    @property
    def n_chunks(self) -> int:
        """Number of chunks the scan will have."""
        return self.grid.n_chunks

    @property
    def window(self) -> range:
        """Global frame indices that can be accepted now."""
        start = self.grid.start(self.next_key)
        return range(start, self.grid.stop(self.next_key + self.buffer_chunks - 1))

    def accepts(self, index: int) -> bool:
        """True when frame ``index`` fits in the buffers now (False: hold it and retry)."""
        return index in self.window

    def add(self, index: int, frame: np.ndarray, position: Sequence[float] | None = None,
            source: str = "") -> bool:
        """Store frame ``index``; False when it lies beyond the buffered window.

        Raises ValueError for an index outside the scan, a frame of another shape or dtype
        than the first, or a frame already stored.
        """
        if not 0 <= index < self.num_frames:
            raise ValueError(f"frame index {index} outside the scan (0..{self.num_frames - 1})")
        if index < self.grid.start(self.next_key):
            raise ValueError(f"frame {index} arrived after its chunk was released")
        if not self.accepts(index):
            return False
        if self._shape is None:
            if frame.ndim != 2:
                raise ValueError(f"frame has shape {frame.shape}; expected 2-D")
            self._shape, self._dtype = frame.shape, frame.dtype
        if frame.shape != self._shape:
            raise ValueError(f"frame shape {frame.shape} differs from the scan's {self._shape}")
        if frame.dtype != self._dtype:
            raise ValueError(f"frame dtype {frame.dtype} differs from the scan's {self._dtype}")
        slot = index % self._present.size
        if self._present[slot] or self._missing[slot]:
            raise ValueError(f"frame {index} was already "
                             f"{'stored' if self._present[slot] else 'filled as missing'}")
        self._frames[slot] = frame
        self._present[slot] = True
        self._arrived_at[slot] = self.clock()
        self._sources[slot] = source
        if position is not None:
            self._positions[slot] = position
        return True

    def mark_missing(self, indices: Sequence[int],
                     positions: Sequence[Sequence[float] | None] | None = None) -> None:
        """Declare frames that will never arrive (within the window), with their
        positions where known (else the table's, or the previous frame's)."""
        for k, index in enumerate(indices):
            if index in self.window:
                slot = index % self._present.size
                if not self._present[slot]:
                    self._missing[slot] = True
                    if positions is not None and positions[k] is not None:
                        self._positions[slot] = positions[k]

    def end(self) -> None:
        """The scan is over: every frame not yet arrived is missing."""
        self.ended = True

    def _chunk_slots(self, key: int) -> tuple[int, int, slice]:
        start, stop = self.grid.start(key), self.grid.stop(key)
        base = start % self._present.size
        return start, stop, slice(base, base + stop - start)

    def _expire(self, slots: slice, start: int) -> None:
        """Frames older than the timeout that later frames overtook become missing."""
        if self.frame_timeout_s is None:
            return
        now = self.clock()
        unresolved = ~(self._present[slots] | self._missing[slots])
        if not unresolved.any():
            return
        # Oldest arrival among frames after each position, across the buffered window.
        order = np.concatenate([np.arange(slots.start, self._present.size),
                                np.arange(0, slots.start)])
        times = self._arrived_at[order]
        later_oldest = np.minimum.accumulate(times[::-1])[::-1]
        overtaken = np.empty(order.size, bool)
        overtaken[:-1] = now - later_oldest[1:] >= self.frame_timeout_s
        overtaken[-1] = False
        n = slots.stop - slots.start
        self._missing[slots] |= unresolved & overtaken[:n]

    def release(self) -> RawChunk | Signal:
        """The next chunk if all its frames are resolved, else WAIT; EOS after the last."""
        key = self.next_key
        if key >= self.n_chunks:
            return EOS
        start, stop, slots = self._chunk_slots(key)
        if self.ended:
            self._missing[slots] |= ~self._present[slots]
        else:
            self._expire(slots, start)
        resolved = self._present[slots] | self._missing[slots]
        if not resolved.all():
            return WAIT
        present = self._present[slots].copy()
        positions = self._fill_positions(start, stop, slots, present)
        if self._shape is None:  # no frame ever arrived: nothing to take a shape from
            raise ValueError("no frame of the scan arrived; the frame shape is unknown")
        frames = tuple(self._frames[slots])
        self._frames[slots] = [None] * (stop - start)
        sources = tuple(self._sources[slots])
        self.missing_total += int(np.count_nonzero(~present))
        self._present[slots] = False
        self._missing[slots] = False
        self._arrived_at[slots] = np.inf
        self._positions[slots] = np.nan
        self._sources[slots] = [""] * (stop - start)
        self.next_key += 1
        done, self._handed = self._handed, 0
        return RawChunk(key, start, frames, present, positions, sources, self._shape,
                        self._dtype, done)

    def release_part(self) -> RawPart | None:
        """The frames of the chunk being filled that are resolved (arrived or missing)
        without a gap after those released before, if there are any;
        never the chunk's last frame, which :meth:`release` hands on with the chunk.
        Positions and sources stay for :meth:`release`."""
        key = self.next_key
        if key >= self.n_chunks:
            return None
        start, stop, slots = self._chunk_slots(key)
        lo, hi = slots.start + self._handed, slots.stop - 1
        resolved = self._present[lo:hi] | self._missing[lo:hi]
        count = resolved.size if resolved.all() else int(np.argmin(resolved))
        if count == 0:
            return None
        taken = slice(lo, lo + count)
        frames = tuple(self._frames[taken])
        self._frames[taken] = [None] * count
        part = RawPart(key, start, stop - start, self._handed, frames,
                       self._present[taken].copy())
        self._handed += count
        return part

    def unrelease_part(self, part: RawPart) -> None:
        """Take back the last part :meth:`release_part` gave (its preparation failed): its
        frames go with the chunk instead."""
        start, _, slots = self._chunk_slots(part.key)
        if part.key != self.next_key or part.offset + len(part.frames) != self._handed:
            raise ValueError(f"part at frame {start + part.offset} is not the last released")
        lo = slots.start + part.offset
        self._frames[lo:lo + len(part.frames)] = list(part.frames)
        self._handed = part.offset

    def _fill_positions(self, start: int, stop: int, slots: slice,
                        present: np.ndarray) -> np.ndarray:
        pos = self._positions[slots].copy()
        if self._table is not None:
            unknown = np.isnan(pos).any(axis=1)
            pos[unknown] = self._table[start:stop][unknown]
        unknown = np.isnan(pos).any(axis=1)
        if (unknown & present).any():
            first = start + int(np.flatnonzero(unknown & present)[0])
            raise ValueError(f"frame {first} arrived without a position")
        if unknown.any():
            # A missing frame without position repeats the previous one: its weights are
            # zero, so a reconstruction ignores it.
            for i in np.flatnonzero(unknown):
                pos[i] = self._last_position if i == 0 else pos[i - 1]
        self._last_position = pos[-1].copy()
        return pos


class Scan:
    """PtyPy's ``PtyScan.auto()`` over a :class:`FrameBook` and a chunk preparer."""

    def __init__(self, book: FrameBook, prepare: Callable[[RawChunk], PreparedChunk]) -> None:
        self.book = book
        self.prepare = prepare

    def auto(self, frames: int | None = None) -> PreparedChunk | Signal:
        """The next prepared chunk, WAIT (not all of its frames resolved yet) or EOS.

        ``frames`` must be the scan's chunk size when given: chunk k always holds
        frames ``[k*n, (k+1)*n)``.
        """
        if frames is not None and frames != self.book.chunk_frames:
            raise ValueError(f"this scan is cut into chunks of {self.book.chunk_frames} frames, "
                             f"not {frames}")
        raw = self.book.release()
        if isinstance(raw, Signal):
            return raw
        return self.prepare(raw)

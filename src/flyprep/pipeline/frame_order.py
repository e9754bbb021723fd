"""Which frame of a running scan is handed on next, and as what.

:class:`FrameOrder` is the scan session's logic without its thread: given the scan's
placed frame files (:class:`~flyprep.sources.live.LiveFrames`), a clock and whether the
scan has ended, it decides frame after frame, in index order, whether frame i is ready
(read, of the scan's type), failed (unreadable, of another type, no position, not placeable:
its file quarantined), missing (a later frame waited ``frame_timeout_s``, or the scan
ended first), or not decidable yet (wait). It also decides the scan's frame type from
the first files' headers. Missing and failed frames are reported in runs: one event and
one log line per file and reason. Tested with an injected clock, no thread, no daemon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..events import EventSink, FrameFailed, FrameMissing
from .items import FailedFrame, FrameItem, MissingFrame, ReadyFrame
from ..ptyd.format import ChunkGrid
from ..sources.live import FrameType, LiveFrames, agreed_type

log = logging.getLogger(__name__)

#: Files looked at (headers only) to agree on the scan's frame shape and type.
TYPE_VOTES = 3
TYPE_SCAN = 4096  # frame indices looked through for them at most

#: One frame for the preparation, as a :class:`~flyprep.pipeline.ScanRun` takes it.


@dataclass
class _Run:
    """Consecutive frames reported together: missing or failed, one file, one reason."""

    kind: str  # "missing" or "failed"
    first: int
    count: int
    path: str
    reason: str


class FrameOrder:
    """Frames of one scan in index order. Not thread-safe: the scan's session thread
    calls it. ``declared``: the frame (shape, dtype) the scan's settings fix, either may
    be None."""

    def __init__(self, live: LiveFrames, *, scan: str, scan_dir: Path, num_frames: int,
                 chunk_frames: int, frame_timeout_s: float, events: EventSink,
                 clock: Callable[[], float], declared: tuple[Any, Any] = (None, None)) -> None:
        self.live = live
        self.scan = scan
        self.scan_dir = scan_dir
        self.num_frames = num_frames
        self.grid = ChunkGrid(num_frames, chunk_frames)
        self.frame_timeout_s = frame_timeout_s
        self.events = events
        self.clock = clock
        self.declared = declared
        self.frame_type: FrameType | None = None
        self.type_source = "agreed by the scan's first frames"
        shape, dtype = declared
        if shape is not None and dtype is not None:
            self.fix_type((tuple(shape), np.dtype(dtype)), "as the scan's settings declare")
        self.failed = 0  # frames handed on as failed
        self.missing = 0  # frames handed on as missing
        #: the latest run of missing or failed frames reported, as its log line says it
        self.last_problem: str | None = None
        self._run: _Run | None = None

    def fix_type(self, kind: FrameType, source: str) -> None:
        """The scan's frame type is ``kind`` (from ``source``, said in reasons)."""
        self.frame_type = (tuple(kind[0]), np.dtype(kind[1]))
        self.type_source = source

    # ---- the frame type

    def agreed_type(self, start: int, *, ending: bool) -> FrameType | None:
        """The frame type the first readable files from ``start`` agree on (two of the
        first three, one vote per file); once the scan ends, they waited
        ``frame_timeout_s`` or no other vote can come, the most common. None: wait."""
        live, shape, dtype = self.live, *self.declared

        def fits(kind: FrameType) -> bool:
            return (shape is None or tuple(kind[0]) == tuple(shape)) and \
                (dtype is None or kind[1] == np.dtype(dtype))

        votes: list[FrameType] = []
        oldest: float | None = None
        unresolved = False
        i, looked = start, 0
        while i < self.num_frames and len(votes) < TYPE_VOTES:
            if looked == TYPE_SCAN:
                unresolved = True
                break
            looked += 1
            frame = live.get(i)
            if frame is None:
                unresolved = unresolved or live.failure(i) is None
                i += 1
                continue
            kind = live.frame_type(i)
            i += 1 if frame.slot is None else frame.file_frames - frame.slot  # next file
            if kind is None or not fits(kind):
                continue
            votes.append(kind)
            oldest = frame.arrived if oldest is None else min(oldest, frame.arrived)
        if not votes and not unresolved and i >= self.num_frames:
            ending = True  # every frame is in or failed, none readable: no vote will come
        if not votes:
            # no placed frame can tell: files that could not be placed still can
            votes = [k for k in live.kinds_seen if fits(k)] if ending else []
            if not votes:
                return None
            oldest = -float("inf")
        assert oldest is not None
        return agreed_type(votes, final=ending or not unresolved
                           or self.clock() - oldest >= self.frame_timeout_s)

    # ---- frames

    def next(self, index: int, *, ended: bool, ending: bool) -> FrameItem | None:
        """Frame ``index`` as a preparation item (data, or None when missing or failed),
        or None: not decidable yet (wait; once ``ending``, call :meth:`gap`). ``ended``:
        the scan was ended (no frame is missing by timeout any more); ``ending``: and its
        grace is over."""
        live = self.live
        failure = live.failure(index)
        if failure is not None:
            return self._failed(index, failure.path, failure.reason)
        frame = live.get(index)
        if frame is None:
            if not ended and live.overdue(index, self.frame_timeout_s):
                return self._missing(index, f"not finished within {self.frame_timeout_s:g} s "
                                            "of a later frame")
            return None
        position = live.position(index)
        if position is None:
            live.refresh()
            position = live.position(index)
        if position is None:
            if ending or (not ended and live.overdue(index, self.frame_timeout_s)):
                live.fail(index, "no position for it in the positions file")
                return self._failed(index, str(frame.path), live.failed[index].reason)
            return None
        expected = self.frame_type
        assert expected is not None, "the frame type is decided before frames are handed on"
        if frame.kind is not None and frame.kind != expected:
            return self._wrong_type(index, frame.path, frame.kind)
        chunk_stop = self.grid.stop(self.grid.key_of(index))
        try:
            data = live.read(index, stop=chunk_stop)
        except InputError as exc:
            return self._quarantined(index, frame.path, exc.reason)
        if (data.shape, data.dtype) != expected:
            return self._wrong_type(index, frame.path, (data.shape, data.dtype))
        self.flush()  # a good frame ends a run of bad ones
        return ReadyFrame(index, data, frame.describe(), position, frame.arrived)

    def gap(self, index: int, end_reason: str) -> FrameItem:
        """Frame ``index`` never came before the scan ended: missing."""
        path = str(self.live.expected_path(index) or self.scan_dir)
        return self._counted_missing(index, path,
                                     f"scan ended ({end_reason}) before this frame arrived")

    def flush(self) -> None:
        """Report the run of missing or failed frames not reported yet."""
        run, self._run = self._run, None
        if run is None:
            return
        last = run.first + run.count - 1
        frames = f"frame {run.first}" if run.count == 1 else f"frames {run.first}-{last}"
        log.warning("%s: %s %s: %s: %s", self.scan, frames, run.kind, run.path, run.reason)
        self.last_problem = f"{frames} {run.kind}: {run.path}: {run.reason}"
        cls = FrameFailed if run.kind == "failed" else FrameMissing
        self.events.emit(cls(scan=self.scan, index=run.first, count=run.count, path=run.path,
                             reason=run.reason))

    # ---- internals

    def _wrong_type(self, index: int, path: Path, kind: FrameType) -> FrameItem:
        """Frame ``index``'s file holds frames of another shape or type: quarantined."""
        assert self.frame_type is not None
        reason = (f"frame is {tuple(kind[0])} {np.dtype(kind[1])}, the scan's frames are "
                  f"{self.frame_type[0]} {self.frame_type[1]} ({self.type_source})")
        return self._quarantined(index, path, reason)

    def _quarantined(self, index: int, path: Path, reason: str) -> FrameItem:
        """Frame ``index``'s file cannot be used: quarantined, with every frame it holds."""
        self.live.quarantine_file(path, reason)
        failure = self.live.failure(index)
        return self._failed(index, str(path), reason if failure is None else failure.reason)

    def _failed(self, index: int, path: str, reason: str) -> FrameItem:
        self.failed += 1
        self._report("failed", index, path, reason)
        return FailedFrame(index, path, self.live.position(index))

    def _missing(self, index: int, reason: str) -> FrameItem:
        expected = self.live.expected_path(index)
        path = str(expected) if expected is not None else str(self.scan_dir)
        if expected is not None and expected.exists():
            # Unfinished: listed in the quarantine, left where it is (a writer may hold it).
            self.live.quarantine_file(expected, f"frame {index}: {reason}", move=False)
        return self._counted_missing(index, path, reason)

    def _counted_missing(self, index: int, path: str, reason: str) -> FrameItem:
        self.missing += 1
        self._report("missing", index, path, reason)
        return MissingFrame(index, path, self.live.position(index))

    def _report(self, kind: str, index: int, path: str, reason: str) -> None:
        """Frames missing or failed are reported in runs: one event and one log line per
        file and reason (a bad stack, a scan ended early), not one per frame."""
        run = self._run
        if run is not None and run.kind == kind and run.first + run.count == index and \
                run.reason == reason and (run.path == path or kind == "missing"
                                          and run.reason.startswith("scan ended")):
            run.count += 1
            return
        self.flush()
        self._run = _Run(kind, index, 1, path, reason)

"""The frames of a scan that is still being acquired: which file holds frame i, where it
was taken, and reading it.

Files are reported finished one by one (see :mod:`flyprep.sources.watch`); this module
places each at its global frame index:

* PtyPy's tutorial layout: the positions file names each frame's file (``ccd/x.npy y x``),
  so frame i is the file named on line i. A file finished before its line was written
  waits until the positions file grows.
* HDF5 frame files: files hold one frame or a stack and follow each other in natural name
  order; a file's frames come after those of the file before it. Positions come from the
  positions file (row i for frame i) or, with no positions file, from a dataset in each
  frame file (``input.positions_dataset``: shape (2,) or (n, 2)).

A frame is placed only where it certainly belongs. An HDF5 file whose frame count cannot
be read (unreadable, or never finished while later files were) holds back every later
file until its count is known: from the scan's declared ``frames_per_file``, or from the
file names when they number frames (each readable file's name number steps by its frame
count). Known, its range is failed and later files are placed after it; still unknown when
a later file has waited ``hold_timeout_s`` (or the scan ends), every frame from its first
on is failed, and nothing is guessed.

A file that cannot be read is quarantined: moved into the scan's quarantine directory
(listed in ``quarantine.jsonl`` there), never deleted; its frames are failed. A restart
reads that list, so the same frames are failed again without waiting for them. A file
that was only listed (left in place, unfinished when its frame timed out) is read after
a restart if it is finished by then, unless it was given an index range.

Beside it: :mod:`~flyprep.sources.stack_probe` reads an HDF5 file's header,
:mod:`~flyprep.sources.file_names` what the numbers in file names count, and
:mod:`~flyprep.sources.quarantine` keeps the quarantine directory and its list.
"""

from __future__ import annotations

import collections
import fnmatch
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ..errors import InputError
from .file_names import NameRule
from .npy import read_npy_header
from .positions import GrowingPositions
from .quarantine import QUARANTINE_LIST, Quarantine
from .rows import FrameRows
from .scan_dir import (DEFAULT_EXCLUDE, FrameRef, Rows, natural_key, read_frame,
                       read_stack_rows)
from .stack_probe import FrameType, NotAFrameFile, StackInfo, StackProbe

log = logging.getLogger(__name__)

__all__ = ["QUARANTINE_LIST", "Failure", "FrameType", "LiveFrame", "LiveFrames",
           "NotAFrameFile", "agreed_type"]


class Failure(NamedTuple):
    """Why a frame will not be read, and the file it was in (or was expected in)."""

    path: str
    reason: str


@dataclass
class LiveFrame:
    """Where a frame is and when its file was finished (monotonic seconds)."""

    path: Path
    slot: int | None
    arrived: float
    position: tuple[float, float] | None = None
    kind: FrameType | None = None  # declared shape and dtype, once looked at
    file_frames: int = 1  # frames in its file (a stack's length)

    def describe(self) -> str:
        """The file, and the frame inside it for stacks."""
        return str(self.path) if self.slot is None else f"{self.path}[{self.slot}]"


@dataclass(frozen=True)
class _Held:
    """A finished HDF5 file waiting for the files before it."""

    key: list[Any]
    arrived: float
    probe: StackInfo | InputError


@dataclass(frozen=True)
class _Blocker:
    """An HDF5 file at ``start`` whose frame count is unknown: later files wait on it."""

    path: Path
    key: list[Any]
    start: int
    reason: str
    missing: bool = False  # never written (a gap in the names): its frames are missing


def agreed_type(votes: list[FrameType], *, final: bool) -> FrameType | None:
    """The frame type the first files declare (``votes``, one per file, in order): the one
    two of them agree on; with ``final`` (no more votes will come) the most common, the
    earliest of equals; else None (wait for more)."""
    if not votes:
        return None
    counts = collections.Counter((tuple(k[0]), np.dtype(k[1])) for k in votes)
    order = [(tuple(k[0]), np.dtype(k[1])) for k in votes]
    best, n = max(counts.items(), key=lambda kv: (kv[1], -order.index(kv[0])))
    return best if n >= 2 or final else None


class LiveFrames:
    """Frame files of one running scan, placed at their index as they are finished.

    Not thread-safe: one thread (the scan's session) calls every method.
    """

    def __init__(self, scan_dir: Path, *, layout: str = "auto", positions_file: str | None,
                 dataset: str = "/entry/data/data", positions_dataset: str | None = None,
                 units: float = 1.0, frame_patterns: tuple[str, ...] = ("*.h5",),
                 ignore_patterns: tuple[str, ...] = (".*", "*.tmp", "*.part"),
                 exclude: tuple[str, ...] = DEFAULT_EXCLUDE, quarantine_dir: str,
                 read_retries: int = 3, retry_delay_s: float = 0.5,
                 hold_timeout_s: float = 60.0, frames_per_file: int | None = None,
                 num_frames: int | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        self.scan_dir = Path(scan_dir)
        self._dir_prefix = os.fspath(self.scan_dir) + os.sep
        self.dataset = dataset
        self.positions_dataset = positions_dataset
        self.units = units
        self.frame_patterns = frame_patterns
        self.ignore_patterns = ignore_patterns
        self.exclude = exclude
        self.quarantine = Quarantine(self.scan_dir, quarantine_dir)
        self.read_retries = read_retries
        self.hold_timeout_s = hold_timeout_s
        self.frames_per_file = frames_per_file
        self.num_frames = num_frames
        self.retry_delay_s = retry_delay_s
        self.clock = clock
        self.sleep = sleep
        self.positions_path = None if positions_file is None else self.scan_dir / positions_file
        self.positions = (None if self.positions_path is None else
                          GrowingPositions(self.positions_path, units=units,
                                           dataset=positions_dataset))
        self._probe = StackProbe(dataset,
                                 positions_dataset if self.positions is None else None,
                                 units, read_retries, retry_delay_s, sleep)
        if self.positions is None:
            if layout == "ptypy":
                raise InputError(scan_dir, "the PtyPy layout needs a positions file "
                                           "(watch.positions_file)")
            if positions_dataset is None:
                raise InputError(scan_dir, "no positions file (watch.positions_file) and no "
                                           "per-frame positions (input.positions_dataset)")
            layout = "hdf5"
        self.layout: str | None = None if layout == "auto" else layout
        self.floor = 0  # frames below it are handed on already
        self.failed: dict[int, Failure] = {}  # index -> why it will not be read
        self._lost: tuple[int, Failure] | None = None  # every frame from here on failed
        self._lost_after: list[Any] | None = None  # hdf5: files named after it are not placed
        self.files_seen = 0
        self.ignored: list[tuple[str, str]] = []  # (file, why), the latest few
        self._frames: dict[int, LiveFrame] = {}
        self._waiting: dict[str, tuple[Path, float]] = {}  # ptypy: name not yet listed
        self._early: list[tuple[Path, float]] = []  # before the layout is known
        self._placed_names = 0  # ptypy: positions names already indexed
        self._index_of: dict[str, int] = {}  # ptypy: frame file name -> index
        self._index_peak = 0
        # hdf5, from a restart's quarantine list: (file key, first index, count or None
        # when unknown, file, reason)
        self._quarantined: list[tuple[Any, ...]] = []  # + whether it was never written
        self._reserved_names: set[str] = set()  # hdf5: files given an index range earlier
        self._next_index = 0  # hdf5: index of the next file's first frame
        self._last_key: list[Any] | None = None
        self._last_path: Path | None = None
        self._held: dict[Path, _Held] = {}  # hdf5: finished, not placed yet
        self._blocker: _Blocker | None = None  # hdf5: frame count unknown, later files wait
        self._names = NameRule()  # hdf5: what the numbers in file names count
        self._last_count: int | None = None  # frames of the last file placed (None: unknown)
        self._warned_count = False
        self._ending = False
        self._not_frames: set[str] = set()  # hdf5: files without the frame dataset
        # hdf5: (first index, frames) of the last files placed, for the quarantine list
        self._file_ranges: collections.OrderedDict[Path, tuple[int, int]] = \
            collections.OrderedDict()
        self.kinds_seen: list[FrameType] = []  # hdf5: the first few files' frame types
        # (file, first slot, frames, first row read (None: whole frames), frame shape)
        self._stack: tuple[Path, int, np.ndarray, int | None, tuple[int, int]] | None = None
        #: Rows ``(top, stop)`` of each frame the preparation uses, once it is fixed (the
        #: session sets them): only those are read from then on; None: whole frames.
        self.rows: Rows = None
        self._load_quarantine()

    # ---- what is known

    def get(self, index: int) -> LiveFrame | None:
        """The frame's file, if it is finished and placed."""
        return self._frames.get(index)

    def position(self, index: int) -> np.ndarray | None:
        """The frame's (y, x) in metres, if known yet."""
        frame = self._frames.get(index)
        if frame is not None and frame.position is not None:
            return np.asarray(frame.position)
        table = None if self.positions is None else self.positions.positions
        if table is not None and index < table.shape[0]:
            return table[index]
        return None

    def expected_path(self, index: int) -> Path | None:
        """Where frame ``index`` will come from, when that is known before it arrives."""
        if self.layout == "ptypy" and self.positions is not None:
            names = self.positions.names
            if names is not None and index < len(names) and names[index] is not None:
                return self.scan_dir / names[index]
        return None

    @property
    def placed(self) -> int:
        """Frames of finished files placed and not yet consumed."""
        return len(self._frames)

    @property
    def pending(self) -> int:
        """Frames placed but not consumed, plus files waiting to be placed."""
        return len(self._frames) + len(self._waiting) + len(self._early) + len(self._held)

    def failure(self, index: int) -> Failure | None:
        """Why frame ``index`` will not be read, if it will not."""
        found = self.failed.get(index)
        if found is None and self._lost is not None and index >= self._lost[0]:
            return self._lost[1]
        return found

    def frame_type(self, index: int) -> FrameType | None:
        """Shape and dtype frame ``index``'s file declares (its header only is read), or
        None if it is not placed or its header cannot be read."""
        frame = self._frames.get(index)
        if frame is None:
            return None
        if frame.kind is None:
            try:
                if frame.path.suffix == ".npy":
                    header = read_npy_header(frame.path)
                    frame.kind = (header.shape, header.dtype)
                else:
                    frame.kind = self._probe.once(frame.path).kind
            except (OSError, ValueError, InputError):
                return None
        return frame.kind

    def overdue(self, index: int, timeout_s: float) -> bool:
        """True when a later frame has been waiting for ``timeout_s`` while frame
        ``index`` has not arrived: it is then declared missing."""
        limit = self.clock() - timeout_s
        return any(f.arrived <= limit for i, f in self._frames.items() if i > index)

    # ---- news

    def add_file(self, path: Path, arrived: float | None = None) -> None:
        """A file of the scan is finished (frame files only; others are ignored)."""
        path = Path(path)
        arrived = self.clock() if arrived is None else arrived
        if self.positions_path is not None and path == self.positions_path:
            self.refresh()
            return
        if self.layout is None:
            self._early.append((path, arrived))
            self.refresh()
            return
        self.files_seen += 1
        if self.layout == "ptypy":
            name = self._rel(path)
            index = self._index_of.get(name)
            if index is None:
                self._waiting[name] = (path, arrived)
            else:
                self._place(index, path, arrived)
        else:
            self._add_hdf5(path, arrived)

    def refresh(self) -> int:
        """Read what the positions file gained; place the files it now names (and HDF5
        files that waited long enough for an earlier one). Returns the number of new
        positions."""
        if self._held:
            self._place_held()
        if self.positions is None:
            return 0
        new = self.positions.refresh()
        if self.layout is None and len(self.positions):
            self.layout = "ptypy" if self.positions.names is not None else "hdf5"
            if self.layout == "ptypy":
                self._place_listed()
            early, self._early = self._early, []
            for path, arrived in sorted(early, key=lambda e: natural_key(self._rel_path(e[0]))):
                self.add_file(path, arrived)
        elif self.layout == "ptypy" and new:
            self._place_listed()
        return new

    def consume(self, index: int) -> None:
        """Frame ``index`` was handed on: forget it (and never place it again). Its name is
        dropped from the lookup table too, so that what is kept per frame handed on is a
        few bytes however long the scan runs."""
        self._frames.pop(index, None)
        self.floor = max(self.floor, index + 1)
        self.failed.pop(index, None)
        names = self.positions.names if self.positions is not None else None
        if names is not None and index < len(names) and names[index] is not None:
            if self._index_of.get(names[index]) == index:
                del self._index_of[names[index]]
                if len(self._index_of) * 4 < self._index_peak and self._index_peak > 4096:
                    self._index_of = dict(self._index_of)  # a dict never shrinks itself
                    self._index_peak = len(self._index_of)
            names[index] = None  # type: ignore[call-overload]

    def start_at(self, index: int) -> None:
        """Frames before ``index`` are not wanted (a resumed scan has them already)."""
        self.floor = max(self.floor, index)
        for i in [i for i in self._frames if i < index]:
            del self._frames[i]

    # ---- reading

    def read(self, index: int, *, stop: int) -> np.ndarray | FrameRows:
        """Frame ``index`` as a 2-D array (only :attr:`rows` of it, where the file
        allows), retried ``read_retries`` times. Consecutive frames of one stack, up to
        frame ``stop``, are read in one slice."""
        frame = self._frames[index]
        last: InputError | None = None
        for attempt in range(self.read_retries + 1):
            if attempt:
                self.sleep(self.retry_delay_s)
            try:
                return self._read_once(index, frame, stop)
            except InputError as exc:
                last = exc
                self._stack = None
            except (OSError, KeyError, TypeError, ValueError, AttributeError, EOFError) as exc:
                last = InputError(frame.describe(), f"unreadable frame: {exc}")
                self._stack = None
        assert last is not None
        raise last

    def _read_once(self, index: int, frame: LiveFrame, stop: int) -> np.ndarray | FrameRows:
        if frame.slot is None:
            return read_frame(FrameRef(index, frame.path), dataset=self.dataset,
                              rows=self.rows)
        cached = self._stack
        if cached is None or cached[0] != frame.path or \
                not 0 <= frame.slot - cached[1] < cached[2].shape[0]:
            n = 1
            while index + n < stop:
                nxt = self._frames.get(index + n)
                if nxt is None or nxt.path != frame.path:
                    break
                n += 1
            block, top, shape = read_stack_rows(frame.path, self.dataset, frame.slot,
                                                frame.slot + n, self.rows)
            if block.shape[0] < 1:
                raise InputError(frame.describe(), "frame not in the file")
            cached = self._stack = (frame.path, frame.slot, block, top, shape)
        _, first, block, top, shape = cached
        data = block[frame.slot - first]
        return data if top is None else FrameRows(data, top, shape)

    def quarantine_file(self, path: Path, reason: str, *, move: bool = True,
                        reserve: bool = False) -> Path | None:
        """Move ``path`` into the quarantine directory (or only list it) and fail every frame
        it holds (the reason then says where it went); returns where it went (None if only
        listed). Never deletes anything. ``reserve``: the frames were given an index range
        that a restart must keep (a listed HDF5 file that finishes later is not placed
        again)."""
        indices = sorted(i for i, f in self._frames.items() if f.path == path)
        for i in indices:
            self._frames.pop(i, None)
        if self._stack is not None and self._stack[0] == path:
            self._stack = None
        extra: dict[str, Any] = {}
        whole = self._file_ranges.get(path)
        if whole is not None:  # a restart places later files after all of it
            extra = {"first": whole[0], "count": whole[1]}
        target = self.quarantine.put(path, reason, indices, move=move, reserved=reserve,
                                     **extra)
        told = reason if target is None else f"{reason}; moved to {target}"
        for i in indices:
            self.failed[i] = Failure(str(path), told)
        return target

    def fail(self, index: int, reason: str) -> None:
        """Frame ``index`` will not be read (reason kept for the report)."""
        frame = self._frames.pop(index, None)
        where = self.expected_path(index) if frame is None else frame.path
        self.failed[index] = Failure(str(where or self.scan_dir), reason)

    # ---- internals

    def _rel(self, path: Path) -> str:
        text = os.fspath(path)
        if text.startswith(self._dir_prefix):  # every file of a directory listed: no Path
            return text[len(self._dir_prefix):].replace(os.sep, "/")
        return self._rel_path(path).as_posix()

    def _rel_path(self, path: Path) -> Path:
        try:
            return Path(path).relative_to(self.scan_dir)
        except ValueError:
            return Path(Path(path).name)

    def _note_ignored(self, path: Path, why: str) -> None:
        log.warning("%s: ignored: %s", path, why)
        self.ignored.append((str(path), why))
        del self.ignored[:-20]

    def _place_listed(self) -> None:
        """Index the names the positions file gained; place the files waiting for them."""
        names = self.positions.names if self.positions is not None else None
        if not names:
            return
        for index in range(self._placed_names, len(names)):
            name = names[index]
            if name in self._index_of:
                log.warning("%s: line for frame %d names %s again; the first line counts",
                            self.positions_path, index, name)
                continue
            self._index_of[name] = index
            self._index_peak = max(self._index_peak, len(self._index_of))
            entry = self._waiting.pop(name, None)
            if entry is not None:
                self._place(index, *entry)
        self._placed_names = len(names)

    def _place(self, index: int, path: Path, arrived: float) -> None:
        if index < self.floor:
            return  # handed on before (a resumed scan's earlier frames)
        if index in self._frames or index in self.failed:
            self._note_ignored(path, f"frame {index} is placed already")
            return
        self._frames[index] = LiveFrame(path, None, arrived)

    def _add_hdf5(self, path: Path, arrived: float) -> None:
        if not self._is_frame_file(path.name) or any(path.match(x) for x in self.exclude):
            return
        if path.suffix == ".npy":
            self._note_ignored(path, "a .npy file among HDF5 frame files (only PtyPy's "
                                     "layout, whose positions file names them, reads .npy)")
            return
        if self._rel(path) in self._reserved_names:
            self._note_ignored(path, "quarantined before; its frames were failed then")
            return
        key = natural_key(self._rel_path(path))
        if self._last_key is not None and key <= self._last_key:
            self._note_ignored(path, "finished after a later file was placed; frame files "
                                     "must be finished in name order")
            return
        try:
            probe: StackInfo | InputError = self._probe(path)
        except NotAFrameFile as exc:
            self._note_ignored(path, exc.reason)
            self._not_frames.add(self._rel(path))  # holds no later file back either
            self._place_held()
            return
        except InputError as exc:
            probe = exc
        if isinstance(probe, StackInfo) and len(self.kinds_seen) < 3:
            self.kinds_seen.append(probe.kind)
        self._held[path] = _Held(key, arrived, probe)
        self._place_held()

    def finish(self) -> None:
        """The scan has ended: files waiting for earlier ones wait no longer, and a file
        whose frame count is still unknown fails every frame from its first on."""
        self._ending = True
        self._place_held()
        if self._blocker is not None:
            self._lose(self._blocker)

    def _place_held(self) -> None:
        """Place finished files in name order, each only where it certainly belongs: a
        file waits while an earlier-named frame file is unfinished or missing, or while
        the frame count of an earlier one is unknown (at most ``hold_timeout_s``). A file
        quarantined before a restart takes its place in that order too."""
        while self._held:
            path = min(self._held, key=lambda p: self._held[p].key)
            held = self._held[path]
            if self._lost is not None and (self._lost_after is None or
                                           held.key > self._lost_after):
                del self._held[path]
                self._note_ignored(path, f"its frames cannot be placed for certain: "
                                         f"{self._lost[1].reason}")
                continue
            if self._blocker is not None:
                if not self._resolve_blocker(path):
                    return
                continue
            listed = self._listed_before(held.key)
            target, target_key = (path, held.key) if listed is None else \
                (self.scan_dir / listed[3], listed[0])
            if not self._names.is_successor(self._last_path, target, self._next_index):
                unfinished = self._unfinished_before(target, target_key)
                if unfinished:
                    if not self._waited_enough():
                        return
                    first = min(unfinished, key=lambda p: natural_key(self._rel_path(p)))
                    self._block(first, f"not finished within {self.hold_timeout_s:g} s while "
                                       "a later file was", move=False)
                    continue
                gap = self._names.missing_before(self._last_path, self._last_count, target,
                                                 self._next_index)
                if gap is not None:
                    if not self._waited_enough():
                        return
                    self._block(gap, "never written (a gap in the file names' numbers)",
                                move=False, missing=True)
                    continue
            if listed is not None:
                self._take_listed(listed)
                continue
            del self._held[path]
            self._place_file(path, held)

    def _waited_enough(self) -> bool:
        """True once a held file has waited ``hold_timeout_s`` (or the scan has ended)."""
        oldest = min(h.arrived for h in self._held.values())
        return self._ending or self.clock() - oldest >= self.hold_timeout_s

    def _block(self, path: Path, reason: str, *, move: bool, missing: bool = False) -> None:
        """``path`` holds the next frames but their number is unknown: quarantine it (move
        it, or only list it), and let later files wait until its count is known."""
        self.quarantine.put(path, reason, [], move=move, reserved=True, first=self._next_index,
                            missing=missing)
        key = natural_key(self._rel_path(path))
        self._reserved_names.add(self._rel(path))
        self._last_key, self._last_path, self._last_count = key, path, None
        self._blocker = _Blocker(path, key, self._next_index, reason, missing)
        log.warning("%s: %s; frames from %d on wait until its frame count is known",
                    path, reason, self._next_index)
        self._resolve_blocker(None)

    def _resolve_blocker(self, successor: Path | None) -> bool:
        """Fail the blocker's frames once their count is known, or every frame from its
        first once later files have waited long enough; True if it is gone."""
        blocker = self._blocker
        assert blocker is not None
        count = self._count_of(blocker, successor)
        if count is not None:
            self._blocker = None
            self._fail_range(blocker, count)
            return True
        if successor is not None and self._waited_enough():
            self._blocker = None
            self._lose(blocker)
            return True
        return False

    def _count_of(self, blocker: _Blocker, successor: Path | None) -> int | None:
        """The blocker's frame count, where it is certain: declared per file, or told by
        the name of the file after it when names number frames."""
        if self.frames_per_file is not None:
            count = self.frames_per_file
            if self.num_frames is not None:
                count = min(count, max(0, self.num_frames - blocker.start))
            return count
        held = sorted(self._held.items(), key=lambda kv: kv[1].key)
        readable = [(p, h.probe.n if isinstance(h.probe, StackInfo) else None) for p, h in held]
        if successor is None or not self._names.would_count(blocker.path, blocker.start,
                                                            readable):
            return None
        # The name that follows the blocker's: a file still being written counts too (its
        # name is all the rule needs), so that none is skipped.
        between = self._unfinished_before(successor, natural_key(self._rel_path(successor)))
        if between:
            successor = min(between, key=lambda p: natural_key(self._rel_path(p)))
        # Names number frames: the gap checks of the files after it learn it too.
        return self._names.count_between(blocker.path, blocker.start, successor)

    def _fail_range(self, blocker: _Blocker, count: int) -> None:
        """The blocker's ``count`` frames fail at their certain place; later files follow."""
        indices = list(range(blocker.start, blocker.start + count))
        if not blocker.missing:  # a file never written: its frames go missing by timeout
            for i in indices:
                if i >= self.floor:
                    self.failed[i] = Failure(str(blocker.path), blocker.reason)
        self._next_index = blocker.start + count
        self._last_count = count
        try:
            self.quarantine.record(blocker.path, None, indices, blocker.reason, reserved=True,
                                   missing=blocker.missing, first=blocker.start, count=count)
        except OSError as exc:
            log.error("%s: could not list in the quarantine (%s)", blocker.path, exc)

    def _lose(self, blocker: _Blocker) -> None:
        """The blocker's count stays unknown: every frame from its first on fails."""
        self._blocker = None
        failure = Failure(str(blocker.path),
                          f"{blocker.reason}; its frame count is unknown, so no later frame "
                          "can be placed for certain")
        self._lost, self._lost_after = (blocker.start, failure), blocker.key
        log.error("%s: frames from %d on fail: %s", blocker.path, blocker.start, failure.reason)
        try:
            self.quarantine.record(blocker.path, None, [], failure.reason, reserved=True,
                                   lost_from=blocker.start)
        except OSError as exc:
            log.error("%s: could not list in the quarantine (%s)", blocker.path, exc)
        self._place_held()

    def _listed_before(self, key: list[Any]) -> tuple[Any, ...] | None:
        """A file quarantined before a restart named before ``key`` and after the last
        file placed: its frames keep their indices."""
        found = None
        for entry in self._quarantined:
            qkey = entry[0]
            if qkey < key and (self._last_key is None or qkey > self._last_key) and \
                    (found is None or qkey < found[0]):
                found = entry
        return found

    def _take_listed(self, entry: tuple[Any, ...]) -> None:
        self._quarantined.remove(entry)
        key, first, count, name, reason, missing = entry
        self._next_index = max(self._next_index, first)
        path = self.scan_dir / name
        if count is None:
            self._last_key, self._last_path, self._last_count = key, path, None
            self._blocker = _Blocker(path, key, self._next_index, reason, missing)
            self._resolve_blocker(None)
            return
        self._next_index = max(self._next_index, first + count)
        self._last_key, self._last_path, self._last_count = key, path, count

    def _is_frame_file(self, name: str) -> bool:
        return (any(fnmatch.fnmatchcase(name, p) for p in self.frame_patterns)
                and not any(fnmatch.fnmatchcase(name, p) for p in self.ignore_patterns))

    def _unfinished_before(self, path: Path, key: list[Any]) -> list[Path]:
        """Frame files named between the last placed file and ``path`` that exist but are
        not finished."""
        try:
            names = os.listdir(path.parent)
        except OSError:
            return []
        found = []
        for name in names:
            other = path.parent / name
            if other == path or other in self._held or other == self.positions_path \
                    or other.suffix == ".npy" or self._rel(other) in self._reserved_names \
                    or self._rel(other) in self._not_frames \
                    or not self._is_frame_file(name) or any(other.match(x) for x in self.exclude):
                continue
            other_key = natural_key(self._rel_path(other))
            if other_key < key and (self._last_key is None or other_key > self._last_key):
                found.append(other)
        return found

    def _place_file(self, path: Path, held: _Held) -> None:
        probe = held.probe
        if isinstance(probe, InputError):
            self._block(path, f"unreadable: {probe.reason}", move=True)
            return
        self._last_key, self._last_path = held.key, path
        start = self._next_index
        for j in range(probe.n):
            if start + j < self.floor:
                continue
            pos = None if probe.positions is None else (float(probe.positions[j][0]),
                                                        float(probe.positions[j][1]))
            self._frames[start + j] = LiveFrame(path, j if probe.stack else None, held.arrived,
                                                pos, probe.kind, probe.n)
        self._next_index += probe.n
        self._file_ranges[path] = (start, probe.n)
        while len(self._file_ranges) > 64:
            self._file_ranges.popitem(last=False)
        self._names.note(path, start)
        self._last_count = probe.n
        fpf = self.frames_per_file
        if fpf is not None and probe.n != fpf and not self._warned_count and \
                (self.num_frames is None or start + probe.n < self.num_frames):
            self._warned_count = True
            log.warning("%s: holds %d frames, but frames_per_file is %d: an unreadable file "
                        "would be given %d", path, probe.n, fpf, fpf)

    def _load_quarantine(self) -> None:
        """A restart: fail again what the quarantine list says was failed, and keep the
        index ranges it gave files."""
        ranges: dict[str, tuple[Any, ...]] = {}
        for entry in self.quarantine.entries():
            try:
                indices = [int(i) for i in entry.get("indices", [])]
                name, reason = str(entry["file"]), str(entry.get("reason", ""))
                if "lost_from" in entry:
                    self._lost = (int(entry["lost_from"]),
                                  Failure(str(self.scan_dir / name), f"earlier: {reason}"))
                    self._lost_after = natural_key(Path(name))
                    self._reserved_names.add(name)
                    continue
                if not (entry.get("moved_to") or entry.get("reserved")):
                    # Only listed, left in place (it was unfinished): if it is finished
                    # now, its frames are read like any other (those not in a chunk yet).
                    continue
                missing = bool(entry.get("missing"))
                for i in [] if missing else indices:
                    self.failed[i] = Failure(str(self.scan_dir / name),
                                             f"quarantined earlier: {reason}")
                self._reserved_names.add(name)
                key = natural_key(Path(name))
                if entry.get("count") is not None:  # the file's whole range
                    first, count = int(entry["first"]), int(entry["count"])
                    for i in [] if missing else range(first, first + count):
                        self.failed.setdefault(i, Failure(str(self.scan_dir / name),
                                                          f"quarantined earlier: {reason}"))
                    ranges[name] = (key, first, count, name, reason, missing)
                elif indices and name not in ranges:
                    ranges[name] = (key, min(indices), max(indices) + 1 - min(indices), name,
                                    reason, missing)
                elif "first" in entry and name not in ranges:
                    ranges[name] = (key, int(entry["first"]), None, name, reason, missing)
            except (ValueError, TypeError, AttributeError, KeyError):
                log.warning("%s: an entry for %r is not usable", self.quarantine.listing,
                            entry.get("file"))
        self._quarantined = list(ranges.values())

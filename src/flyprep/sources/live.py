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

A file that cannot be read is quarantined: moved into the scan's quarantine directory
(listed in ``quarantine.jsonl`` there), never deleted; its frames are failed. A restart
reads that list, so the same frames are failed again without waiting for them. A file
that was only listed (left in place, unfinished when its frame timed out) is read after
a restart if it is finished by then, unless it was given an assumed index range.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import InputError
from .layouts import DEFAULT_EXCLUDE, FrameRef, natural_key, read_frame, read_stack
from .positions import GrowingPositions

log = logging.getLogger(__name__)

QUARANTINE_LIST = "quarantine.jsonl"
_LAST_NUMBER = re.compile(r"^(.*?)(\d+)(\D*)$")


@dataclass
class LiveFrame:
    """Where a frame is and when its file was finished (monotonic seconds)."""

    path: Path
    slot: int | None
    arrived: float
    position: tuple[float, float] | None = None

    def describe(self) -> str:
        """The file, and the frame inside it for stacks."""
        return str(self.path) if self.slot is None else f"{self.path}[{self.slot}]"


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
                 hold_timeout_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
        self.scan_dir = Path(scan_dir)
        self.dataset = dataset
        self.positions_dataset = positions_dataset
        self.units = units
        self.frame_patterns = frame_patterns
        self.ignore_patterns = ignore_patterns
        self.exclude = exclude
        self.quarantine = self.scan_dir / quarantine_dir
        self.read_retries = read_retries
        self.hold_timeout_s = hold_timeout_s
        self.retry_delay_s = retry_delay_s
        self.clock = clock
        self.sleep = sleep
        self.positions_path = None if positions_file is None else self.scan_dir / positions_file
        self.positions = (None if self.positions_path is None else
                          GrowingPositions(self.positions_path, units=units,
                                           dataset=positions_dataset))
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
        self.failed: dict[int, str] = {}  # index -> reason (unreadable, quarantined)
        self.files_seen = 0
        self.ignored: list[tuple[str, str]] = []  # (file, why), the latest few
        self._frames: dict[int, LiveFrame] = {}
        self._waiting: dict[str, tuple[Path, float]] = {}  # ptypy: name not yet listed
        self._early: list[tuple[Path, float]] = []  # before the layout is known
        self._placed_names = 0  # ptypy: positions names already indexed
        self._index_of: dict[str, int] = {}  # ptypy: frame file name -> index
        self._index_peak = 0
        self._quarantined: list[tuple[list[Any], int]] = []  # hdf5: (file key, next index)
        self._reserved_names: set[str] = set()  # hdf5: files given an index range earlier
        self._next_index = 0  # hdf5: index of the next file's first frame
        self._last_key: list[Any] | None = None
        self._last_path: Path | None = None
        self._held: dict[Path, tuple[list[Any], float]] = {}  # hdf5: finished, not placed
        self._last_length = 1
        self._stack: tuple[Path, int, np.ndarray] | None = None  # (file, first slot, frames)
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
    def pending(self) -> int:
        """Frames placed but not consumed, plus files waiting to be placed."""
        return len(self._frames) + len(self._waiting) + len(self._early) + len(self._held)

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

    def read(self, index: int, *, stop: int) -> np.ndarray:
        """Frame ``index`` as a 2-D array, retried ``read_retries`` times. Consecutive
        frames of one stack, up to frame ``stop``, are read in one slice."""
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

    def _read_once(self, index: int, frame: LiveFrame, stop: int) -> np.ndarray:
        if frame.slot is None:
            return read_frame(FrameRef(index, frame.path), dataset=self.dataset)
        cached = self._stack
        if cached is not None and cached[0] == frame.path and \
                0 <= frame.slot - cached[1] < cached[2].shape[0]:
            return cached[2][frame.slot - cached[1]]
        n = 1
        while index + n < stop:
            nxt = self._frames.get(index + n)
            if nxt is None or nxt.path != frame.path:
                break
            n += 1
        block = read_stack(frame.path, self.dataset, frame.slot, frame.slot + n)
        if block.shape[0] < 1:
            raise InputError(frame.describe(), "frame not in the file")
        self._stack = (frame.path, frame.slot, block)
        return block[0]

    def quarantine_file(self, path: Path, reason: str, *, move: bool = True,
                        reserve: bool = False) -> Path | None:
        """Move ``path`` into the quarantine directory (or only list it) and fail every frame
        it holds; returns where it went (None if only listed). Never deletes anything.
        ``reserve``: the frames were given an assumed index range that a restart must keep
        (a listed HDF5 file that finishes later is not placed again)."""
        indices = sorted(i for i, f in self._frames.items() if f.path == path)
        for i in indices:
            self.failed[i] = reason
            self._frames.pop(i, None)
        if self._stack is not None and self._stack[0] == path:
            self._stack = None
        target: Path | None = None
        try:
            self.quarantine.mkdir(parents=True, exist_ok=True)
            if move and path.exists():
                base = self.quarantine / self._rel(path).replace("/", "__")
                target, k = base, 1
                while target.exists():
                    target = base.with_name(f"{base.name}.{k}")
                    k += 1
                os.replace(path, target)
            entry = {"file": self._rel(path), "moved_to": None if target is None else target.name,
                     "indices": indices, "reason": reason, "time": time.time(),
                     "reserved": bool(reserve or target is not None)}
            with open(self.quarantine / QUARANTINE_LIST, "a") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError as exc:
            log.error("%s: could not quarantine (%s); it stays where it is", path, exc)
            target = None
        return target

    def fail(self, index: int, reason: str) -> None:
        """Frame ``index`` will not be read (reason kept for the report)."""
        self.failed[index] = reason
        self._frames.pop(index, None)

    # ---- internals

    def _rel(self, path: Path) -> str:
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
        if self._rel(path) in self._reserved_names:
            self._note_ignored(path, "quarantined before; its frames were failed then")
            return
        key = natural_key(self._rel_path(path))
        if self._last_key is not None and key <= self._last_key:
            self._note_ignored(path, "finished after a later file was placed; frame files "
                                     "must be finished in name order")
            return
        self._held[path] = (key, arrived)
        self._place_held()

    def _is_frame_file(self, name: str) -> bool:
        return (any(fnmatch.fnmatchcase(name, p) for p in self.frame_patterns)
                and not any(fnmatch.fnmatchcase(name, p) for p in self.ignore_patterns))

    def _place_held(self) -> None:
        """Place finished files in name order: a file waits while an earlier-named frame
        file exists that is not finished yet (its frames come first)."""
        while self._held:
            path = min(self._held, key=lambda p: self._held[p][0])
            key, arrived = self._held[path]
            if not self._is_successor(path):
                earlier = self._unfinished_before(path, key)
                if earlier:
                    if self.clock() - arrived < self.hold_timeout_s:
                        return
                    for other in sorted(earlier, key=lambda p: natural_key(self._rel_path(p))):
                        self._give_up_on(other)
            del self._held[path]
            self._place_file(path, key, arrived)

    def _give_up_on(self, path: Path) -> None:
        """An earlier file never finished while a later one waited ``hold_timeout_s``: its
        frames (as many as the previous file's) fail, and it is listed in the quarantine
        (left in place: a writer may still hold it)."""
        n = self._last_length
        start = self._next_index
        arrived = self.clock()
        for i in range(start, start + n):
            self._frames[i] = LiveFrame(path, None, arrived)
        self._next_index += n
        self._last_key, self._last_path = natural_key(self._rel_path(path)), path
        self.quarantine_file(path, f"not finished within {self.hold_timeout_s:g} s while a "
                                   "later file was", move=False, reserve=True)

    def _is_successor(self, path: Path) -> bool:
        """True when ``path`` is the file right after the last one placed (same name with
        the number one higher): the usual case, decided without listing the directory."""
        last = self._last_path
        if last is None or last.parent != path.parent:
            return False
        # the last number before the extension (the 5 of '.h5' is no frame number)
        stem, suffix = last.stem, last.suffix
        match = _LAST_NUMBER.match(stem)
        if match is None:
            stem, suffix = last.name, ""
            match = _LAST_NUMBER.match(stem)
            if match is None:
                return False
        head, digits, tail = match.groups()
        return path.name == f"{head}{int(digits) + 1:0{len(digits)}d}{tail}{suffix}"

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
                    or self._rel(other) in self._reserved_names \
                    or not self._is_frame_file(name) or any(other.match(x) for x in self.exclude):
                continue
            other_key = natural_key(self._rel_path(other))
            if other_key < key and (self._last_key is None or other_key > self._last_key):
                found.append(other)
        return found

    def _place_file(self, path: Path, key: list[Any], arrived: float) -> None:
        for qkey, after in self._quarantined:
            if qkey < key and (self._last_key is None or qkey > self._last_key):
                # a file quarantined before a restart: its frames keep their indices
                self._next_index = max(self._next_index, after)
        self._last_key, self._last_path = key, path
        try:
            n, stack, positions = self._probe(path)
        except InputError as exc:
            # Its frame count is unknown: assume the previous file's (stack writers use
            # a fixed number of frames per file). Placed even below the floor, only so
            # that the quarantine list records its whole range for a restart; the
            # quarantine takes them out again at once.
            n = self._last_length
            start = self._next_index
            for i in range(start, start + n):
                self._frames[i] = LiveFrame(path, None, arrived)
            self._next_index += n
            self.quarantine_file(path, f"unreadable: {exc.reason}")
            return
        start = self._next_index
        for j in range(n):
            if start + j < self.floor:
                continue
            pos = None if positions is None else (float(positions[j][0]), float(positions[j][1]))
            self._frames[start + j] = LiveFrame(path, j if stack else None, arrived, pos)
        self._next_index += n
        self._last_length = n

    def _probe(self, path: Path) -> tuple[int, bool, np.ndarray | None]:
        """Frames in an HDF5 file, whether it is a stack, and (without a positions file)
        their positions."""
        last: InputError | None = None
        for attempt in range(self.read_retries + 1):
            if attempt:
                self.sleep(self.retry_delay_s)
            try:
                return self._probe_once(path)
            except InputError as exc:
                last = exc
        assert last is not None
        raise last

    def _probe_once(self, path: Path) -> tuple[int, bool, np.ndarray | None]:
        try:
            with h5py.File(path, "r") as f:
                data = f.get(self.dataset)
                if not isinstance(data, h5py.Dataset):
                    raise InputError(path, f"no dataset {self.dataset!r}")
                shape = data.shape
                pos = None
                if self.positions is None:
                    assert self.positions_dataset is not None
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
        return n, stack, pos

    def _load_quarantine(self) -> None:
        listing = self.quarantine / QUARANTINE_LIST
        try:
            lines = listing.read_text().splitlines()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("%s: unreadable (%s)", listing, exc)
            return
        for lineno, line in enumerate(lines, 1):
            try:
                entry = json.loads(line)
                indices = [int(i) for i in entry.get("indices", [])]
                if not (entry.get("moved_to") or entry.get("reserved")):
                    # Only listed, left in place (it was unfinished): if it is finished
                    # now, its frames are read like any other (those not in a chunk yet).
                    continue
                for i in indices:
                    self.failed[i] = f"quarantined earlier: {entry.get('reason', '')}"
                if indices:
                    self._quarantined.append((natural_key(Path(entry["file"])), max(indices) + 1))
                    self._reserved_names.add(str(entry["file"]))
            except (ValueError, TypeError, AttributeError):
                log.warning("%s: line %d is not a quarantine entry", listing, lineno)

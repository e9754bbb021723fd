"""What a subscriber needs to catch up: every scan of this daemon run, the chunks its
master lists, and the ``seq`` of the last event that state reflects (the ``snapshot``
control command; docs/protocol.md, "Catching up").

The event publisher tells the catalog of every event with its ``seq``, in ``seq`` order,
so a snapshot and the events after it fit together exactly.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from ..events import (ChunkWritten, ErrorReported, Event, FrameFailed, FrameMissing, ScanEnded,
                      ScanStarted)
from ..errors import FlyprepError
from ..ptyd.format import ChunkGrid
from ..ptyd.reader import open_ptyd

#: Runs of missing or failed frames kept per scan for the ``scan`` command.
FRAME_RUNS_KEPT = 100
#: Ended scans kept in the snapshot (the oldest are forgotten first).
ENDED_KEPT = 200


class Catalog:
    """The scans of daemon run ``run``, kept from its events; thread-safe."""

    def __init__(self, run: str, *, protocol: int, ended_kept: int = ENDED_KEPT) -> None:
        self.run = run
        self.protocol = protocol
        self.ended_kept = ended_kept
        self._lock = threading.Lock()
        self._seq = -1
        self._scans: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._errors: dict[str, str] = {}  # scan -> last error, until it ends
        # scan -> its latest runs of missing or failed frames, and why (the scan command)
        self._frame_runs: dict[str, deque[dict[str, Any]]] = {}

    def apply(self, event: Event, seq: int) -> None:
        """Take ``event``, the one numbered ``seq``."""
        with self._lock:
            self._seq = seq
            if isinstance(event, ScanStarted):
                self._started(event)
            elif isinstance(event, ChunkWritten):
                scan = self._scans.get(event.scan)
                if scan is not None:
                    chunks = scan["chunks"]
                    if not chunks or chunks[-1][0] < event.key:
                        chunks.append([event.key, event.frame_start, event.n_frames])
                    scan["frames_available"] = max(scan["frames_available"],
                                                   event.frames_available)
            elif isinstance(event, ScanEnded):
                scan = self._scans.get(event.scan)
                if scan is not None:
                    scan["state"] = event.state
                    scan["error"] = event.error
                    self._forget_ended()
            elif isinstance(event, (FrameMissing, FrameFailed)):
                runs = self._frame_runs.setdefault(event.scan, deque(maxlen=FRAME_RUNS_KEPT))
                runs.append({"kind": "missing" if isinstance(event, FrameMissing) else "failed",
                             "first": event.index, "count": event.count, "path": event.path,
                             "reason": event.reason})
            elif isinstance(event, ErrorReported) and event.scan is not None:
                scan = self._scans.get(event.scan)
                if scan is not None:
                    scan["error"] = event.message

    def known(self, scan: str, master: Path) -> None:
        """A scan an earlier run finished: listed as its master says (not an event, so
        no ``seq``), so that a subscriber asking for it learns where it is."""
        try:
            ptyd = open_ptyd(master)
            entries, state, num_frames = ptyd.chunks, ptyd.state, ptyd.meta.num_frames
        except FlyprepError:
            return
        chunks, start = [], 0
        for entry in entries:
            chunks.append([entry.key, start, entry.n_frames])
            start += entry.n_frames
        chunk_frames = chunks[0][2] if chunks else 0
        with self._lock:
            if scan in self._scans:
                return
            self._scans[scan] = {
                "scan": scan, "master": str(master), "state": state or "complete",
                "num_frames": num_frames, "chunk_frames": chunk_frames,
                "frames_available": start, "error": None, "chunks": chunks}
            self._forget_ended()

    def scan(self, name: str) -> dict[str, Any] | None:
        """One scan's entry with its latest runs of missing or failed frames and why."""
        with self._lock:
            entry = self._scans.get(name)
            runs = list(self._frame_runs.get(name, ()))
            if entry is None and not runs:
                return None
            return {**(entry or {"scan": name}), "frame_runs": runs}

    def frames_available(self, name: str) -> int | None:
        """Frames of scan ``name`` that published ``chunk.written`` events name; None for
        a scan not in the catalog. Read without the lock (one dict look-up, one int):
        ``status`` must not wait for the threads that publish."""
        entry = self._scans.get(name)
        return None if entry is None else int(entry["frames_available"])

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON data: ``v``, ``run``, ``seq`` and ``scans`` (see docs/protocol.md)."""
        with self._lock:
            return {"v": self.protocol, "run": self.run, "seq": self._seq,
                    "scans": [{**s, "chunks": [list(c) for c in s["chunks"]]}
                              for s in self._scans.values()]}

    def _started(self, event: ScanStarted) -> None:
        chunks: list[list[int]] = []
        if event.resumed_at and event.num_frames:
            grid = ChunkGrid(event.num_frames, event.chunk_frames)
            for key in range(grid.key_of(event.resumed_at - 1) + 1):
                chunks.append([key, grid.start(key), grid.stop(key) - grid.start(key)])
        self._scans.pop(event.scan, None)  # a scan started again is the newest
        self._scans[event.scan] = {
            "scan": event.scan, "master": event.master, "state": "acquiring",
            "num_frames": event.num_frames, "chunk_frames": event.chunk_frames,
            "frames_available": event.resumed_at, "error": None, "chunks": chunks}

    def _forget_ended(self) -> None:
        ended = [name for name, s in self._scans.items() if s["state"] != "acquiring"]
        for name in ended[:max(0, len(ended) - self.ended_kept)]:
            del self._scans[name]
            self._frame_runs.pop(name, None)

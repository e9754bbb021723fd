"""One running scan inside the daemon: its settings, its frames, its ``.ptyd``.

A :class:`ScanSession` owns one thread. The daemon hands it news (a finished file, the
positions file grew, the end marker, a control command) through a queue; the thread
drives a :class:`~flyprep.frame_order.FrameOrder` (which frame is next, and as what) and
pushes its frames into a :class:`~flyprep.pipeline.ScanRun`, the same code path as
``flyprep prepare``, which tells the events sink of each chunk on disk.

Life of a session: ``waiting`` (for its settings: the scan file, or the config's defaults
once frames come) -> ``acquiring`` -> ``complete`` | ``aborted`` (the master says so) |
``failed`` (nothing could be written: bad settings, no frame) | ``stopped`` (the daemon
shut down; the output stays ``acquiring`` and the next start resumes it).

A scan ends when ``num_frames`` frames are handed on, when its end marker appears
(``complete``), after ``inactivity_timeout_s`` without news (``aborted``), or by the
``end_scan`` control command. A frame that has not come while a later one has waited
``frame_timeout_s`` is missing; one that cannot be read after ``read_retries``, or whose
shape or type is not the scan's, is quarantined and failed. Either way it is written with
weight 0 and the scan goes on. The scan's frame shape and type come from its scan file or
the config, else from the first frames that agree (two of the first three readable).

Below ``limits.min_free_bytes`` of free space on the output's disk the session pauses
(frame files wait on disk) and goes on when there is space. A write that meets a full disk
anyway publishes nothing more: the session waits for space, then asks the daemon to start
the scan again from its files (a :class:`RestartRequested`), which resumes the output as
after a restart.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DaemonConfig, ScanDescription, load_scan_description, scan_settings
from ..errors import (ConfigError, DiskFull, FlyprepError, InputError, OutputError,
                     ScanInterrupted, is_disk_full)
from ..events import ErrorReported, EventSink, ScanContinued, ScanEnded, ScanPaused
from ..pipeline import ScanEnd, ScanRun, effective_config, load_calibration, require_geometry
from ..pipeline.buffer_pool import BufferPool
from ..pipeline.frame_order import FrameItem, FrameOrder
from ..pipeline.resume import apply_resume, plan_resume
from ..ptyd.reader import open_ptyd
from ..ptyd.resume import finished_state
from ..ptyd.usid import plan_usid, write_usid
from ..ptyd.writer import OutputMode
from ..sources.live import LiveFrames
from ..sources.scan_dir import ScanSource, parse_geometry
from ..states import END_STATES, ScanState
from ..workers import STOP, Worker

log = logging.getLogger(__name__)

#: How often a waiting session looks at its clock (timeouts) and its positions file.
TICK_S = 0.05
#: The end reason of a scan whose output was finished by an earlier run.
FINISHED_BEFORE = "finished before this start"
#: Files matching no pattern named in status and errors (the rest are counted).
UNMATCHED_KEPT = 5


class SessionState(str, enum.Enum):
    """Where a session is in its life (see the module docstring)."""

    WAITING = "waiting"
    ACQUIRING = ScanState.ACQUIRING.value
    COMPLETE = ScanState.COMPLETE.value
    ABORTED = ScanState.ABORTED.value
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def finished(self) -> bool:
        """True once the session's thread has nothing more to do."""
        return self not in (SessionState.WAITING, SessionState.ACQUIRING)


@dataclass(frozen=True)
class _File:
    path: Path
    arrived: float


@dataclass(frozen=True)
class _End:
    reason: str
    state: str  # "complete" or "aborted"
    grace_s: float = 0.0  # frames still absent this long after the end are missing


@dataclass(frozen=True)
class _Unmatched:
    path: Path


@dataclass(frozen=True)
class RestartRequested:
    """A session gave up its run after a full disk and space is back: the daemon starts
    the scan again from its files (resumed from its output, as after a restart)."""

    scan_dir: Path
    end_reason: str | None = None  # an end already asked for carries over
    end_state: str = "complete"




def marker_grace_s(config: DaemonConfig) -> float:
    """How long after an end frames still absent may come: the end marker can come just
    before the close of the last files it follows (twice the quiet window, plus the poll
    interval when polling, plus half a second; at most ``frame_timeout_s``)."""
    watch = config.watch
    return min(watch.frame_timeout_s, 2 * watch.quiet_window_s + (
        watch.poll_interval_s if watch.observer == "polling" else 0.0) + 0.5)


def output_path(config: DaemonConfig, scan_dir: Path) -> Path:
    """Where a scan's ``.ptyd`` goes: ``output.directory`` (or next to the scan directory)
    and ``output.name`` with ``{scan}`` the scan directory's name and ``{root}`` the name
    of the watched root holding it."""
    directory = config.output.directory or scan_dir.parent
    return Path(directory) / config.output.name.format(scan=scan_dir.name,
                                                       root=scan_dir.parent.name)


class ScanSession(Worker):
    """A scan being prepared; its methods may be called from any thread. :meth:`loop` is the
    whole logic: the daemon runs it in the session's thread (:meth:`start`), a test may call
    it in its own."""

    def __init__(self, scan_dir: Path, config: DaemonConfig, *, events: EventSink,
                 clock: Callable[[], float] = time.monotonic,
                 on_restart: Callable[[RestartRequested], Any] | None = None,
                 carried_end: tuple[str, str] | None = None,
                 announce: bool = True, threaded_writer: bool = True,
                 buffer_pool: BufferPool | None = None) -> None:
        super().__init__(f"scan:{Path(scan_dir).name}")
        self._buffer_pool = buffer_pool
        self.scan_dir = Path(scan_dir)
        self.name = self.scan_dir.name
        self.config = config
        self.events = events
        self.clock = clock
        self.output = output_path(config, self.scan_dir)
        self.state = SessionState.WAITING
        self.error: str | None = None
        self.num_frames: int | None = None
        self.frames_done = 0  # handed on to preparation (including missing ones)
        self.frames_written = 0  # in chunks on disk
        self.frames_missing = 0
        self.frames_failed = 0
        self.chunks_written = 0
        self.resumed_at: int | None = None
        self.end_reason: str | None = None
        self.started_at = time.time()
        self.ended_at = float("inf")  # monotonic, set when the daemon files it as ended
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._end: _End | None = None
        self._end_at = 0.0
        self._on_restart = on_restart
        self._restart: RestartRequested | None = None
        self._announce = announce
        self._threaded_writer = threaded_writer  # False: one thread in all (tests)
        self._carried_end = carried_end
        self.paused: str | None = None  # why the scan takes no frames now
        self._next_disk_check = 0.0
        self._unmatched: list[str] = []
        self.files_unmatched = 0
        self._final: dict[str, Any] = {"pending_frames": 0, "ignored_files": [],
                                       "placed": 0, "quarantined": 0, "last_problem": None}
        self._output_lock: Any = None
        self._described = False
        self._files_seen = 0
        self._last_news = clock()
        self._scan_run: ScanRun | None = None  # under _lock (status reads its progress)
        self._live: LiveFrames | None = None
        self._order: FrameOrder | None = None
        self._failed_before = self._missing_before = 0  # in chunks kept from an earlier run
        self._early_files: list[_File] = []  # before the settings are known
        # Files handed in (by the daemon's thread) and taken (by this one): each counter
        # has one writer, so status reads the files waiting without a lock.
        self._files_put = self._files_taken = 0
        self._scan_settings: Any = None

    # ---- from the daemon (any thread)

    def file_completed(self, path: Path) -> None:
        """A file of the scan is finished (frame, positions or scan file)."""
        self.files_completed([path])

    def files_completed(self, paths: list[Path]) -> None:
        """Files of the scan are finished, in this order (a directory listed at once):
        one message for all of them. (One thread, the daemon's main loop, calls this.)"""
        arrived = self.clock()
        self._files_put += len(paths)
        self._inbox.put([_File(Path(p), arrived) for p in paths])

    def file_unmatched(self, path: Path) -> None:
        """A file of the scan matches no pattern: it is never read (said once per scan)."""
        self._inbox.put(_Unmatched(Path(path)))

    def end(self, reason: str, *, state: str = "complete", grace_s: float = 0.0) -> None:
        """End the scan: every frame already finished is still prepared; frames absent
        ``grace_s`` after the end are missing; the master says ``state``."""
        if state not in END_STATES:
            raise ValueError(f"state must be 'complete' or 'aborted', got {state!r}")
        self._inbox.put(_End(reason, state, grace_s))

    def wake(self) -> None:
        """Stop without ending the scan (daemon shutdown): the output stays resumable."""
        self._inbox.put(STOP)

    def stalled(self, bound_s: float, now: float | None = None) -> str | None:
        """Why this scan looks stuck, if it does: its writer thread busy with one chunk,
        or its own thread silent (no frame handed on, no news waited for), for more than
        ``bound_s``. Waiting for its writer is not being stuck."""
        if not self.alive:
            return None
        now = time.monotonic() if now is None else now
        run = self._scan_run
        since = None if run is None else run.writing_since
        if since is not None:
            if now - since > bound_s:
                return f"{self.name}: its writer has been writing one chunk for " \
                       f"{now - since:.0f} s"
            return None
        if now - self.last_beat > bound_s:
            return f"{self.name}: no progress for {now - self.last_beat:.0f} s"
        return None

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot for ``flyprep status``."""
        self._sync_progress()
        with self._lock:
            live, run, order = self._live, self._scan_run, self._order
            placed = self._final["placed"] if live is None else live.placed
            return {
                # the pipeline, stage by stage (docs/daemon.md, status): frames whose
                # files arrived, through preparation, in chunks on disk; missing ones count
                # from preparation on (as zero-weight frames)
                "frames_received": self.frames_done - self.frames_missing + placed,
                "frames_prepared": self.frames_done,
                "files_quarantined": (self._final["quarantined"] if live is None
                                      else live.quarantine.listed),
                "last_problem": (self._final["last_problem"] if order is None
                                 else order.last_problem),
                "queues": {"files": max(0, self._files_put - self._files_taken),
                           "frames": self._final["pending_frames"] if live is None
                           else live.pending,
                           "chunks": 0 if run is None else run.chunks_queued},
                "scan": self.name, "directory": str(self.scan_dir), "output": str(self.output),
                "state": self.state.value, "num_frames": self.num_frames,
                "frames_done": self.frames_done, "frames_written": self.frames_written,
                "frames_missing": self.frames_missing, "frames_failed": self.frames_failed,
                "chunks_written": self.chunks_written, "resumed_at_frame": self.resumed_at,
                "end_reason": self.end_reason, "error": self.error,
                "paused": self.paused, "files_seen": self._files_seen,
                "files_unmatched": self.files_unmatched,
                "unmatched_files": list(self._unmatched),
                "pending_frames": self._final["pending_frames"] if live is None else live.pending,
                "ignored_files": (self._final["ignored_files"] if live is None else
                                  [f"{p}: {why}" for p, why in live.ignored]),
            }

    def _take_totals_of_output(self) -> None:
        """A scan finished by an earlier run: its real totals, as its master says them."""
        try:
            ptyd = open_ptyd(self.output)
            missing = len(ptyd.provenance.get("missing_indices", []))
            frames, chunks, num = ptyd.n_frames, len(ptyd.chunks), ptyd.meta.num_frames
        except FlyprepError as exc:
            log.warning("%s: finished output unreadable for its totals: %s", self.name, exc)
            return
        with self._lock:
            self.num_frames, self.frames_done, self.frames_written = num, frames, frames
            self.chunks_written, self.frames_missing = chunks, missing

    def counts(self) -> dict[str, int]:
        """Frames received, prepared and written so far (cheap: for rates)."""
        self._sync_progress()
        with self._lock:
            live = self._live
            placed = self._final["placed"] if live is None else live.placed
            return {"received": self.frames_done - self.frames_missing + placed,
                    "prepared": self.frames_done, "written": self.frames_written}

    def brief(self) -> dict[str, Any]:
        """The heartbeat's line for this scan: state, frames readable, num_frames."""
        self._sync_progress()
        with self._lock:
            state = "paused" if self.paused else self.state.value
            return {"scan": self.name, "state": state, "frames_available": self.frames_written,
                    "num_frames": self.num_frames}

    # ---- the thread

    def loop(self) -> None:
        try:
            self._serve()
        except DiskFull as exc:
            self._after_disk_full(exc)
        except ScanInterrupted:
            if self._order is not None:
                self._order.flush()  # the frames handed on are reported, as at any end
            self._set_state(SessionState.STOPPED)
            self._sync_progress()
            log.info("%s: stopped after %d frames were handed on; %d are in whole chunks on "
                     "disk, and the next start resumes at frame %d", self.name,
                     self.frames_done, self.frames_written, self.frames_written)
        except FlyprepError as exc:
            if is_disk_full(exc):  # before run_scan: the lock file, the reconciliation
                self._after_disk_full(DiskFull(str(exc)))
            else:
                self._fail(str(exc))
        except Exception as exc:  # a bug must not take the daemon down
            log.exception("%s: unexpected error", self.name)
            self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            self._release()
            if self._restart is not None and self._on_restart is not None:
                self._on_restart(self._restart)

    def _after_disk_full(self, exc: DiskFull) -> None:
        """A write met a full disk: nothing more is published; wait for space, then have
        the daemon start the scan again from its files."""
        if self._order is not None:
            self._order.flush()
        self._sync_progress()
        with self._lock:
            self._scan_run = None  # no chunk buffers held while waiting for space
        log.error("%s: %s; the scan waits for space, then goes on from its files",
                  self.name, exc)
        try:
            self._wait_for_space(f"disk full: {exc}", force=True)
        except ScanInterrupted:
            self._set_state(SessionState.STOPPED)
            return
        end = self._end
        self._restart = RestartRequested(self.scan_dir,
                                         None if end is None else end.reason,
                                         "complete" if end is None else end.state)
        self._set_state(SessionState.STOPPED)

    def _lock_output(self) -> None:
        """Hold an exclusive lock on the output for the session's life: another scan (of
        the same name in another root) or another daemon must not write it too. The
        kernel drops the lock when the process dies, however it dies."""
        out = self.output
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            handle = open(out.parent / f".{out.name}.lock", "a")  # noqa: SIM115 - held
        except OSError as exc:
            raise OutputError(f"{out}: cannot create the output's lock file: {exc}") from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OutputError(f"{out}: already being written by another scan or flyprep "
                              "process (give each watched root its own output.directory, or "
                              "put {root} in output.name)") from None
        self._output_lock = handle

    def _release(self) -> None:
        """The thread is done: keep a summary for status, drop the scan's tables."""
        if self._output_lock is not None:
            self._output_lock.close()  # releases the lock
            self._output_lock = None
        self._sync_progress()
        with self._lock:
            live, self._live = self._live, None
            if live is not None:
                self._final = {"pending_frames": live.pending,
                               "ignored_files": [f"{p}: {why}" for p, why in live.ignored],
                               "placed": live.placed, "quarantined": live.quarantine.listed,
                               "last_problem": (self._order.last_problem
                                                if self._order is not None else None)}
            self._scan_run = None  # its buffers go with it
            self._order = None  # and the scan's file tables (LiveFrames) with this
            self.paused = None
        self._early_files.clear()

    def _fail(self, message: str) -> None:
        if self._order is not None:
            self._order.flush()
        self._sync_progress()
        with self._lock:
            self.error = message
            started = self.frames_written > 0 or self.chunks_written > 0
            run = self._scan_run
        # Started, the run published what it had as 'aborted' with every frame filled in.
        self._set_state(SessionState.ABORTED if started else SessionState.FAILED)
        if run is not None and run.announced:  # scan.started went out: scan.ended follows
            self._emit_end("failed", error=message)
        self.events.emit(ErrorReported(where="scan", scan=self.name, message=message))
        log.error("%s: %s", self.name, message)

    def _serve(self) -> None:
        if self._carried_end is not None:
            reason, state = self._carried_end
            self._take(_End(reason, state, marker_grace_s(self.config)))
        finished = finished_state(self.output)
        if finished is not None:
            # Made by an earlier run, maybe with other settings: never redone on its own.
            self._take_totals_of_output()
            with self._lock:
                self.end_reason = FINISHED_BEFORE
            self._set_state(SessionState(finished))
            log.info("%s: %s is finished already (%s)", self.name, self.output, finished)
            return
        settings = self._settings()
        self._scan_settings = settings
        self._lock_output()
        num_frames = settings.scan.num_frames
        assert num_frames is not None
        live = self._live
        assert live is not None
        calibration = load_calibration(settings.prep)
        mode, resolved = self._plan_output(settings, calibration, num_frames)
        resume = mode.state
        start = 0 if resume is None else resume.next_frame
        order = FrameOrder(live, scan=self.name, scan_dir=self.scan_dir, num_frames=num_frames,
                           chunk_frames=settings.output.chunk_frames,
                           frame_timeout_s=self.config.watch.frame_timeout_s,
                           events=self.events, clock=self.clock,
                           declared=(settings.scan.frame_shape, settings.scan.frame_dtype))
        if resolved is not None:  # frames must match those of the kept chunks
            order.fix_type((tuple(resolved["raw_shape"]), np.dtype(resolved["raw_dtype"])),
                           "those of the chunks written before")
        live.start_at(start)
        kept_weightless = [] if resume is None else resume.missing_indices
        self._failed_before = sum(1 for i in kept_weightless if live.failure(int(i)) is not None)
        self._missing_before = len(kept_weightless) - self._failed_before
        with self._lock:
            self.frames_done = self.frames_written = start
            self.chunks_written = 0 if resume is None else resume.next_key
            self.frames_failed = self._failed_before
            self.frames_missing = self._missing_before
            self.resumed_at = start if start else None
        self._set_state(SessionState.ACQUIRING)
        if order.frame_type is None:
            self._wait_for_frame_type(order, start)
        assert order.frame_type is not None
        self._order = order
        run = ScanRun(num_frames=num_frames, positions=None, config=settings,
                      output=self.output, calibration=calibration,
                      frame_shape=order.frame_type[0], dtype=order.frame_type[1],
                      allow_missing=True, mode=mode, resolved=resolved,
                      chunk_buffers=self.config.limits.chunk_buffers,
                      part_bytes=self.config.limits.part_bytes, events=self.events,
                      scan=self.name, clock=self.clock, threaded=self._threaded_writer,
                      announce=self._announce, buffer_pool=self._buffer_pool)
        with self._lock:
            self._scan_run = run
        state = self._push_frames(run, order, start)
        self._set_state(SessionState(state))
        if self.config.output.usid_view:
            self._write_usid_view()
        self._emit_end(state)
        log.info("%s: %s (%s), %d frames, %d missing", self.name, state,
                 self.end_reason or "all frames", num_frames, self.frames_missing)

    def _write_usid_view(self) -> None:
        """The h5USID view of the finished output (``output.usid_view``); a failure is
        reported, the scan itself stays as it ended."""
        target = self.output.with_name(f"{self.output.stem}_usid.h5")
        try:
            write_usid(plan_usid(self.output), target)
        except FlyprepError as exc:
            log.error("%s: no h5USID view: %s", self.name, exc)
            self.events.emit(ErrorReported(where=self.name, message=f"h5USID view: {exc}"))
            return
        log.info("%s: h5USID view %s", self.name, target)

    def _push_frames(self, run: ScanRun, order: FrameOrder, start: int) -> str:
        """Push the scan's frames, then its end, into ``run``; returns the master's final
        state. A stop suspends the run (resumable); any error fails it."""
        live, reading_rows = order.live, False
        try:
            for item in self._frames(order, start):
                run.push(item)
                if not reading_rows and run.preparer.preparation is not None:
                    # Fixed now: the frames after are read only for the rows it uses.
                    live.rows, reading_rows = run.preparer.preparation.raw_rows, True
            state = ScanState.COMPLETE if self._end is None else ScanState(self._end.state)
            run.push(ScanEnd(state))
        except ScanInterrupted:
            run.suspend()
            raise
        except BaseException as exc:
            raise run.fail(exc)  # noqa: B904 - the error to report, chained to ``exc``
        return state

    def _sync_progress(self) -> None:
        """Take the run's figures (frames and chunks on disk) into the session's."""
        with self._lock:  # several threads sync (the scan's own no longer per frame)
            run = self._scan_run
            if run is not None:
                self.frames_written, self.chunks_written = run.progress()

    def _emit_end(self, state: str, *, error: str | None = None) -> None:
        self.events.emit(ScanEnded(scan=self.name, state=state,
                                   frames=self.num_frames or 0,
                                   frames_missing=self.frames_missing,
                                   frames_failed=self.frames_failed, error=error))

    def _set_state(self, state: SessionState) -> None:
        with self._lock:
            self.state = state

    # ---- settings

    def _settings(self) -> Any:
        """Wait until the scan's first frame file is finished (and its scan file, if it has
        one), then build the scan's PrepareConfig and its LiveFrames. Files written before
        the frames (the scan file, ``geometry.txt``) are complete by then."""
        cfg = self.config
        scan_file = self.scan_dir / cfg.watch.scan_file
        while True:
            if self.stopping:
                raise ScanInterrupted(f"{self.name}: stopped while waiting for its settings")
            ended = self._end is not None and self.clock() - self._end_at >= self._end.grace_s
            described = self._described or (ended and scan_file.is_file())
            ready = self._files_seen > 0 and (described or not scan_file.exists())
            if ready or ended:
                description = self._read_description(scan_file) if described else None
                settings = scan_settings(cfg, description, source=str(scan_file))
                settings = self._with_geometry_file(settings)
                if self._files_seen == 0:
                    raise InputError(self.scan_dir, "the scan ended before any frame file "
                                                    f"was finished ({self._arrived_text()})")
                if settings.scan.num_frames is not None:
                    break
                if ended:
                    raise ConfigError(
                        f"{self.scan_dir}: the scan ended before its number of frames was "
                        f"known (set num_frames in {cfg.watch.scan_file} or [scan] of the "
                        "config)")
            self._wait_news(TICK_S * 4)
        require_geometry(settings.geometry)
        with self._lock:
            self.num_frames = settings.scan.num_frames
        self._make_live(settings)
        return settings

    def _arrived_text(self) -> str:
        """What did arrive, for an error saying that no frame did."""
        cfg = self.config.watch
        parts = [f"{self._files_seen} file(s) matching watch.frame_patterns "
                 f"{list(cfg.frame_patterns)} finished"]
        if self.files_unmatched:
            names = ", ".join(self._unmatched)
            more = self.files_unmatched - len(self._unmatched)
            parts.append(f"{self.files_unmatched} file(s) matching no pattern, never read: "
                         f"{names}{f' and {more} more' if more > 0 else ''}")
        live = self._live
        if live is not None and live.ignored:
            parts.append("ignored: " + "; ".join(f"{p}: {why}" for p, why in live.ignored[:3]))
        return "; ".join(parts)

    def _read_description(self, path: Path) -> ScanDescription:
        """The scan file; read again a few times if it does not parse (it may be being
        rewritten in place), then its error stands."""
        for attempt in range(3):
            try:
                return load_scan_description(path)
            except ConfigError:
                if attempt == 2:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def _with_geometry_file(self, settings: Any) -> Any:
        """PtyPy's tutorial layout may state geometry in ``geometry.txt``: it fills what the
        config and scan file leave open."""
        path = self.scan_dir / "geometry.txt"
        if not path.is_file():
            return settings
        source = ScanSource(self.scan_dir, "ptypy", (), np.zeros((0, 2)), parse_geometry(path))
        return effective_config(settings, source)

    def _make_live(self, settings: Any) -> None:
        cfg = self.config
        live = LiveFrames(
            self.scan_dir, layout=cfg.input.layout, positions_file=cfg.watch.positions_file,
            dataset=cfg.input.dataset, positions_dataset=cfg.input.positions_dataset,
            units=cfg.input.positions_units, frame_patterns=tuple(cfg.watch.frame_patterns),
            ignore_patterns=tuple(cfg.watch.ignore_patterns),
            quarantine_dir=cfg.watch.quarantine_dir, read_retries=cfg.watch.read_retries,
            retry_delay_s=cfg.watch.retry_delay_s, hold_timeout_s=cfg.watch.frame_timeout_s,
            frames_per_file=settings.scan.frames_per_file,
            num_frames=settings.scan.num_frames, clock=self.clock)
        with self._lock:
            self._live = live
        for item in self._early_files:
            live.add_file(item.path, item.arrived)
        self._early_files.clear()

    # ---- resume

    def _plan_output(self, settings: Any, calibration: Any, num_frames: int
                     ) -> tuple[OutputMode, dict[str, Any] | None]:
        """Bring an output left by an earlier run to a state to continue from; how the
        run opens it, and the preparation its kept chunks had."""
        plan = plan_resume(self.output, settings, num_frames=num_frames,
                           calibration=calibration)
        if plan is None:
            return OutputMode.NEW, None
        if plan.unfit:
            log.warning("%s: earlier chunks do not fit this configuration (%s)", self.name,
                        plan.unfit)
        mode = apply_resume(plan)
        if mode.state is not None:
            log.info("%s: resuming %s at chunk %d (frame %d)", self.name, self.output,
                     mode.state.next_key, mode.state.next_frame)
        return mode, plan.resolved

    # ---- frames in index order (the logic is FrameOrder's; this drives it)

    def _frames(self, order: FrameOrder, start: int) -> Iterator[FrameItem]:
        live = order.live
        index = start
        finished = False
        while index < order.num_frames:
            self._drain()
            if self.stopping:
                raise ScanInterrupted(f"{self.name}: stopped at frame {index}")
            self._guard_space()
            ending = self._ending()
            if ending and not finished:
                live.finish()  # nothing more will come: no file waits for an earlier one
                finished = True
            item = order.next(index, ended=self._end is not None, ending=ending)
            if item is None:
                if not ending:
                    order.flush()
                    self._wait_news(TICK_S)
                    live.refresh()  # growth reports are debounced: do not wait for them
                    continue
                assert self._end is not None
                item = order.gap(index, self._end.reason)
            # Plain stores, no lock: status reads them at any time and must never wait
            # for this thread (a figure may be a frame behind another for a moment).
            self.frames_done = index + 1
            self.frames_failed = self._failed_before + order.failed
            self.frames_missing = self._missing_before + order.missing
            self._last_news = self.clock()  # handing frames on is activity too
            live.consume(index)
            yield item
            index += 1
        order.flush()

    def _wait_for_frame_type(self, order: FrameOrder, start: int) -> None:
        """Decide the scan's frame shape and type before any frame is handed on (PtyPy's
        meta needs it even if the first chunk has no good frame); see
        :meth:`FrameOrder.agreed_type`. Raises InputError if the scan ends without a
        readable frame."""
        finished = False
        while order.frame_type is None:
            self._drain()
            if self.stopping:
                raise ScanInterrupted(f"{self.name}: stopped before its first frame")
            ending = self._ending()
            if ending and not finished:
                order.live.finish()
                finished = True
            decided = order.agreed_type(start, ending=ending)
            if decided is not None:
                order.fix_type(decided, order.type_source)
                log.info("%s: frames are %s %s (%s)", self.name, decided[0], decided[1],
                         order.type_source)
                return
            if finished:
                raise InputError(self.scan_dir, "no frame of the scan could be read "
                                                f"({self._arrived_text()})")
            self._wait_news(TICK_S)
            order.live.refresh()

    def _ending(self) -> bool:
        """The scan was ended and its grace for late files is over."""
        return self._end is not None and self.clock() - self._end_at >= self._end.grace_s

    # ---- free space

    def _guard_space(self) -> None:
        """Every ``limits.disk_check_s``: below ``limits.min_free_bytes`` free on the
        output's disk, take no frame until there is space again."""
        now = self.clock()
        if now < self._next_disk_check:
            return
        self._next_disk_check = now + self.config.limits.disk_check_s
        free = self._free_bytes()
        if free is not None and free < self.config.limits.min_free_bytes:
            self._wait_for_space("low disk space")

    def _chunk_bytes_bound(self) -> int:
        """More than two prepared chunks (data and weights) take on disk."""
        settings, order = self._scan_settings, self._order
        if settings is None or order is None or order.frame_type is None:
            return 64 << 20
        side = settings.prep.shape or min(order.frame_type[0])
        return 2 * settings.output.chunk_frames * side * side * 9 + (1 << 20)

    def _free_bytes(self) -> int | None:
        try:
            st = os.statvfs(self.output.parent)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _wait_for_space(self, why: str, *, force: bool = False) -> None:
        """Pause until the output's disk has ``limits.min_free_bytes`` free (after a
        failed write, ``force``: also room for two chunks); files keep arriving meanwhile
        and wait on disk. Raises ScanInterrupted on stop."""
        floor = self.config.limits.min_free_bytes
        needs = f"limits.min_free_bytes ({_size(floor)})"
        if force and self._chunk_bytes_bound() > floor:
            floor = self._chunk_bytes_bound()
            needs = f"the {_size(floor)} two chunks need"
        free = self._free_bytes() or 0
        reason = (f"{why}: {_size(free)} free on {self.output.parent}, below {needs}; "
                  "frames wait on disk")
        with self._lock:
            self.paused = reason
        log.warning("%s: paused: %s", self.name, reason)
        self.events.emit(ScanPaused(scan=self.name, reason=reason, path=str(self.output.parent),
                                    free_bytes=free, min_free_bytes=floor))
        step = self.config.limits.disk_check_s
        while True:
            due = self.clock() + step
            while self.clock() < due:  # news (files) may come meanwhile: taken, not read
                self._wait_news(max(0.0, due - self.clock()))
                if self.stopping:
                    raise ScanInterrupted(f"{self.name}: stopped while paused")
            self._last_news = self.clock()  # a pause is no inactivity
            free = self._free_bytes()
            if free is not None and free >= floor:
                break
        with self._lock:
            self.paused = None
        log.info("%s: goes on: %s free on %s", self.name, _size(free), self.output.parent)
        self.events.emit(ScanContinued(scan=self.name, free_bytes=free))

    # ---- news

    def _wait_news(self, timeout_s: float) -> None:
        self.beat()
        try:
            item = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            self._check_inactivity()
            return
        self._take(item)
        self._drain()

    def _drain(self) -> None:
        self.beat()
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            self._take(item)
        self._check_inactivity()

    def _take(self, item: Any) -> None:
        if item is STOP:
            return  # stopping is set already
        if isinstance(item, _End):
            if self._end is None:
                self._end = item
                self._end_at = self.clock()
                with self._lock:
                    self.end_reason = item.reason
                if self._live is not None:
                    self._live.refresh()
            return
        if isinstance(item, _Unmatched):
            self.files_unmatched += 1
            if len(self._unmatched) < UNMATCHED_KEPT:
                self._unmatched.append(self._rel_name(item.path))
            if self.files_unmatched == 1:
                log.warning("%s: %s matches none of watch.frame_patterns %s and is not read "
                            "(reported once per scan; status counts the others)", self.name,
                            item.path, list(self.config.watch.frame_patterns))
            return
        self._last_news = self.clock()
        for file in item:  # the files of files_completed
            self._take_file(file)

    def _take_file(self, item: _File) -> None:
        self._files_taken += 1
        if item.path.name == self.config.watch.scan_file and \
                item.path.parent == self.scan_dir:
            self._described = True
            return
        self._files_seen += 1
        if self._live is None:
            self._early_files.append(item)
        else:
            try:
                self._live.add_file(item.path, item.arrived)
            except InputError as exc:
                log.error("%s: %s", self.name, exc)

    def _rel_name(self, path: Path) -> str:
        try:
            return path.relative_to(self.scan_dir).as_posix()
        except ValueError:
            return path.name

    def _check_inactivity(self) -> None:
        limit = self.config.watch.inactivity_timeout_s
        if self._end is None and self.clock() - self._last_news >= limit:
            self._take(_End(f"no new file for {limit:g} s", "aborted"))


def _size(n: float) -> str:
    """Bytes for people: 1.5 GiB, 12 MiB, 512 B."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"

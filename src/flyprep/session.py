"""One running scan inside the daemon: its settings, its frames, its ``.ptyd``.

A :class:`ScanSession` owns one thread. The daemon hands it news (a finished file, the
positions file grew, the end marker, a control command) through a queue; the thread turns
the scan's files into frames in index order and runs them through
:func:`flyprep.pipeline.run_scan`, the same code path as ``flyprep prepare``.

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
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .config import DaemonConfig, ScanDescription, load_scan_description, scan_settings
from .errors import (ConfigError, DiskFull, FlyprepError, InputError, OutputError,
                     ScanInterrupted, is_disk_full)
from .events import (ChunkWritten, EventSink, FrameFailed, FrameMissing, ScanContinued,
                     ScanEnded, ScanPaused, ScanStarted)
from .pipeline import (
    ChunkPreparer,
    effective_config,
    load_calibration,
    require_geometry,
    run_scan,
    scan_meta,
    writer_params,
)
from .prep import PreparedChunk
from .ptyd.layout import chunk_file_name, params_hash
from .ptyd.resume import ResumeState, finished_state, reconcile
from .sources.layouts import ScanSource, parse_geometry
from .sources.live import FrameType, LiveFrames, agreed_type

log = logging.getLogger(__name__)

#: How often a waiting session looks at its clock (timeouts) and its positions file.
TICK_S = 0.05
#: Frames looked at (headers only) to agree on the scan's frame shape and type.
TYPE_VOTES = 3
TYPE_SCAN = 4096  # frames looked through for them at most
#: Files matching no pattern named in status and errors (the rest are counted).
UNMATCHED_KEPT = 5


class SessionState(str, enum.Enum):
    """Where a session is in its life (see the module docstring)."""

    WAITING = "waiting"
    ACQUIRING = "acquiring"
    COMPLETE = "complete"
    ABORTED = "aborted"
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


@dataclass
class _Run:
    """Consecutive frames reported together: missing or failed, one file, one reason."""

    kind: str  # "missing" or "failed"
    first: int
    count: int
    path: str
    reason: str


_STOP = object()


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


class ScanSession:
    """A scan being prepared; its methods may be called from any thread."""

    def __init__(self, scan_dir: Path, config: DaemonConfig, *, events: EventSink,
                 clock: Callable[[], float] = time.monotonic,
                 on_restart: Callable[[RestartRequested], Any] | None = None,
                 carried_end: tuple[str, str] | None = None,
                 announce: bool = True) -> None:
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
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._end: _End | None = None
        self._end_at = 0.0
        self._reported: _Run | None = None  # frames missing or failed, not reported yet
        self._on_restart = on_restart
        self._restart: RestartRequested | None = None
        self._announce = announce
        self._carried_end = carried_end
        self.paused: str | None = None  # why the scan takes no frames now
        self._next_disk_check = 0.0
        self._unmatched: list[str] = []
        self.files_unmatched = 0
        self._final: dict[str, Any] = {"pending_frames": 0, "ignored_files": []}
        self._stop = False
        self._output_lock: Any = None
        self._described = False
        self._files_seen = 0
        self._last_news = clock()
        self._arrivals: dict[int, float] = {}
        self._live: LiveFrames | None = None
        self._frame_type: FrameType | None = None
        self._type_source = "agreed by the scan's first frames"
        self._early_files: list[_File] = []  # before the settings are known
        self._scan_settings: Any = None

    # ---- from the daemon (any thread)

    def start(self) -> ScanSession:
        """Start the session's thread."""
        self._thread = threading.Thread(target=self._run, name=f"scan:{self.name}", daemon=True)
        self._thread.start()
        return self

    @property
    def started(self) -> bool:
        """True once :meth:`start` was called."""
        return self._thread is not None

    def file_completed(self, path: Path, arrived: float | None = None) -> None:
        """A file of the scan is finished (frame, positions or scan file)."""
        self._inbox.put(_File(Path(path), self.clock() if arrived is None else arrived))

    def file_unmatched(self, path: Path) -> None:
        """A file of the scan matches no pattern: it is never read (said once per scan)."""
        self._inbox.put(_Unmatched(Path(path)))

    def end(self, reason: str, *, state: str = "complete", grace_s: float = 0.0) -> None:
        """End the scan: every frame already finished is still prepared; frames absent
        ``grace_s`` after the end are missing; the master says ``state``."""
        if state not in ("complete", "aborted"):
            raise ValueError(f"state must be 'complete' or 'aborted', got {state!r}")
        self._inbox.put(_End(reason, state, grace_s))

    def stop(self) -> None:
        """Stop without ending the scan (daemon shutdown): the output stays resumable."""
        self._stop = True
        self._inbox.put(_STOP)

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the thread; True if it has finished."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        """True while the session's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot for ``flyprep status``."""
        with self._lock:
            live = self._live
            return {
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

    # ---- the thread

    def _run(self) -> None:
        try:
            self._serve()
        except DiskFull as exc:
            self._after_disk_full(exc)
        except ScanInterrupted:
            self._set_state(SessionState.STOPPED)
            log.info("%s: stopped at frame %d; the next start resumes it", self.name,
                     self.frames_done)
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
        self._flush_run()
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
        with self._lock:
            live, self._live = self._live, None
            if live is not None:
                self._final = {"pending_frames": live.pending,
                               "ignored_files": [f"{p}: {why}" for p, why in live.ignored]}
        self._arrivals.clear()
        self._early_files.clear()
        with self._lock:
            self.paused = None

    def _fail(self, message: str) -> None:
        self._flush_run()
        with self._lock:
            self.error = message
            started = self.frames_written > 0 or self.chunks_written > 0
        if started:
            # run_scan published what it had as 'aborted' with every frame filled in.
            self._set_state(SessionState.ABORTED)
            self._emit_end("aborted")
        else:
            self._set_state(SessionState.FAILED)
        log.error("%s: %s", self.name, message)

    @property
    def _settings_type(self) -> tuple[Any, Any]:
        """The frame shape and dtype the scan's settings fix (either may be None)."""
        scan = self._scan_settings.scan if self._scan_settings is not None else None
        return (None, None) if scan is None else (scan.frame_shape, scan.frame_dtype)

    def _serve(self) -> None:
        if self._carried_end is not None:
            reason, state = self._carried_end
            self._take(_End(reason, state, marker_grace_s(self.config)))
        finished = finished_state(self.output)
        if finished is not None:
            # Made by an earlier run, maybe with other settings: never redone on its own.
            with self._lock:
                self.end_reason = "finished before this start"
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
        resume, resolved = self._reconcile(settings, calibration, num_frames)
        start = 0 if resume is None else resume.next_frame
        shape, dtype = settings.scan.frame_shape, settings.scan.frame_dtype
        if resolved is not None:  # frames must match those of the kept chunks
            self._frame_type = (tuple(resolved["raw_shape"]), np.dtype(resolved["raw_dtype"]))
            self._type_source = "those of the chunks written before"
        elif shape is not None and dtype is not None:
            self._frame_type = (tuple(shape), np.dtype(dtype))
            self._type_source = "as the scan's settings declare"
        live.start_at(start)
        kept_weightless = [] if resume is None else resume.missing_indices
        failed_before = sum(1 for i in kept_weightless if live.failure(int(i)) is not None)
        with self._lock:
            self.frames_done = self.frames_written = start
            self.chunks_written = 0 if resume is None else resume.next_key
            self.frames_failed = failed_before
            self.frames_missing = len(kept_weightless) - failed_before
            self.resumed_at = start if start else None
        self._set_state(SessionState.ACQUIRING)
        if self._announce:
            self.events.emit(ScanStarted(scan=self.name, master=str(self.output),
                                         num_frames=num_frames,
                                         chunk_frames=settings.output.chunk_frames))
        if self._frame_type is None:
            self._wait_for_frame_type(live, start, num_frames)
        assert self._frame_type is not None
        run_scan(self._frames(start, num_frames, settings.output.chunk_frames),
                 frame_shape=self._frame_type[0], dtype=self._frame_type[1],
                 num_frames=num_frames, positions=None, config=settings, output=self.output,
                 calibration=calibration, allow_missing=True, on_chunk=self._chunk_written,
                 resume=resume, resolved=resolved, final_state=self._final_state,
                 chunk_buffers=self.config.limits.chunk_buffers,
                 part_bytes=self.config.limits.part_bytes)
        state = self._final_state()
        self._set_state(SessionState(state))
        self._emit_end(state)
        log.info("%s: %s (%s), %d frames, %d missing", self.name, state,
                 self.end_reason or "all frames", num_frames, self.frames_missing)

    def _final_state(self) -> Any:
        return "complete" if self._end is None else self._end.state

    def _emit_end(self, state: str) -> None:
        self.events.emit(ScanEnded(scan=self.name, state=state,
                                   frames=self.num_frames or 0,
                                   frames_missing=self.frames_missing,
                                   frames_failed=self.frames_failed))

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
            if self._stop:
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

    def _reconcile(self, settings: Any, calibration: Any, num_frames: int
                   ) -> tuple[ResumeState | None, dict[str, Any] | None]:
        """Bring an output left by an earlier run to a state to continue from."""
        out = self.output
        if not out.exists() and not any(out.parent.glob(out.name + "*")):
            return None, None

        resolved = _resolved_of_first_chunk(out, settings.output.chunk_format)
        meta, expected_hash = None, None
        if resolved is not None:
            preparer = ChunkPreparer(settings.prep, calibration=calibration,
                                     chunk_frames=settings.output.chunk_frames)
            try:
                preparation = preparer.preset(resolved)
                meta = scan_meta(preparation, num_frames=num_frames, geometry=settings.geometry,
                                 label=settings.scan.label)
                expected_hash = params_hash(writer_params(settings, resolved, calibration))
            except (ConfigError, InputError, ValueError) as exc:
                log.warning("%s: earlier chunks do not fit this configuration (%s)",
                            self.name, exc)
                meta, resolved = None, None
        state = reconcile(out, chunk_format=settings.output.chunk_format, meta=meta,
                          chunk_frames=settings.output.chunk_frames, params_hash=expected_hash)
        for old, new, reason in state.orphaned:
            log.warning("%s: %s moved aside to %s: %s", self.name, old, new, reason)
        if state.next_key == 0:
            return None, None
        log.info("%s: resuming %s at chunk %d (frame %d)", self.name, out, state.next_key,
                 state.next_frame)
        return state, resolved

    # ---- frames in index order

    def _frames(self, start: int, num_frames: int, chunk_frames: int) -> Iterator[tuple]:
        live = self._live
        assert live is not None
        timeout_s = self.config.watch.frame_timeout_s
        index = start
        finished = False
        while index < num_frames:
            self._drain()
            if self._stop:
                raise ScanInterrupted(f"{self.name}: stopped at frame {index}")
            self._guard_space()
            ending = self._end is not None and self.clock() - self._end_at >= self._end.grace_s
            if ending and not finished:
                live.finish()  # nothing more will come: no file waits for an earlier one
                finished = True
            item = self._next_frame(live, index, num_frames, chunk_frames, timeout_s, ending)
            if item is None:
                if not ending:
                    self._flush_run()
                    self._wait_news(TICK_S)
                    live.refresh()  # growth reports are debounced: do not wait for them
                    continue
                item = self._gap(live, index)
            with self._lock:
                self.frames_done = index + 1
            self._last_news = self.clock()  # handing frames on is activity too
            live.consume(index)
            yield item
            index += 1
        self._flush_run()

    def _next_frame(self, live: LiveFrames, index: int, num_frames: int, chunk_frames: int,
                    timeout_s: float, ending: bool) -> tuple | None:
        """Frame ``index`` as a run_scan item, a missing/failed item, or None (not there:
        wait, or once the scan has ended, a gap)."""
        failure = live.failure(index)
        if failure is not None:
            return self._failed(index, failure.path, failure.reason)
        frame = live.get(index)
        if frame is None:
            if self._end is None and live.overdue(index, timeout_s):
                return self._missing(live, index, f"not finished within {timeout_s:g} s of a "
                                                  "later frame")
            return None
        position = live.position(index)
        if position is None:
            live.refresh()
            position = live.position(index)
        if position is None:
            if ending or (self._end is None and live.overdue(index, timeout_s)):
                live.fail(index, "no position for it in the positions file")
                return self._failed(index, str(frame.path), live.failed[index].reason)
            return None
        expected = self._frame_type
        declared = frame.kind
        if expected is not None and declared is not None and declared != expected:
            return self._wrong_type(live, index, frame.path, declared)
        chunk_stop = min(num_frames, (index // chunk_frames + 1) * chunk_frames)
        try:
            data = live.read(index, stop=chunk_stop)
        except InputError as exc:
            return self._quarantined(live, index, frame.path, exc.reason)
        assert expected is not None, "the frame type is decided before frames are handed on"
        if (data.shape, data.dtype) != expected:
            return self._wrong_type(live, index, frame.path, (data.shape, data.dtype))
        self._arrivals[index] = frame.arrived
        return index, data, frame.describe(), position

    def _wait_for_frame_type(self, live: LiveFrames, start: int, num_frames: int) -> None:
        """Decide the scan's frame shape and type before any frame is handed on (PtyPy's
        meta needs it even if the first chunk has no good frame): what the first readable
        files' headers declare, two of the first three agreeing; failing that once the
        scan ends or they waited ``frame_timeout_s``, the most common (the earliest of
        equals). Raises InputError if the scan ends without a readable frame."""
        timeout_s = self.config.watch.frame_timeout_s
        finished = False
        while self._frame_type is None:
            self._drain()
            if self._stop:
                raise ScanInterrupted(f"{self.name}: stopped before its first frame")
            ending = self._end is not None and self.clock() - self._end_at >= self._end.grace_s
            if ending and not finished:
                live.finish()
                finished = True
            decided = self._agreed_type(live, start, num_frames, timeout_s, ending)
            if decided is not None:
                self._frame_type = decided
                log.info("%s: frames are %s %s (%s)", self.name, decided[0], decided[1],
                         self._type_source)
                return
            if finished:
                raise InputError(self.scan_dir, "no frame of the scan could be read "
                                                f"({self._arrived_text()})")
            self._wait_news(TICK_S)
            live.refresh()

    def _agreed_type(self, live: LiveFrames, start: int, num_frames: int, timeout_s: float,
                     ending: bool) -> FrameType | None:
        shape, dtype = self._settings_type

        def fits(kind: FrameType) -> bool:
            return (shape is None or tuple(kind[0]) == tuple(shape)) and \
                (dtype is None or kind[1] == np.dtype(dtype))

        votes: list[FrameType] = []  # one per file: a stack's frames share one header
        oldest: float | None = None
        unresolved = False
        i, looked = start, 0
        while i < num_frames and len(votes) < TYPE_VOTES:
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
        if not votes and not unresolved and i >= num_frames:
            ending = True  # every frame is in or failed, none readable: no vote will come
        if not votes:
            # no placed frame can tell: files that could not be placed still can
            votes = [k for k in live.kinds_seen if fits(k)] if ending else []
            if not votes:
                return None
            oldest = -float("inf")
        assert oldest is not None
        return agreed_type(votes, final=ending or not unresolved
                           or self.clock() - oldest >= timeout_s)

    def _wrong_type(self, live: LiveFrames, index: int, path: Path, kind: FrameType) -> tuple:
        """Frame ``index``'s file holds frames of another shape or type: quarantined."""
        assert self._frame_type is not None
        reason = (f"frame is {tuple(kind[0])} {np.dtype(kind[1])}, the scan's frames are "
                  f"{self._frame_type[0]} {self._frame_type[1]} ({self._type_source})")
        return self._quarantined(live, index, path, reason)

    def _quarantined(self, live: LiveFrames, index: int, path: Path, reason: str) -> tuple:
        """Frame ``index``'s file cannot be used: quarantined, with every frame it holds."""
        live.quarantine_file(path, reason)
        failure = live.failure(index)
        return self._failed(index, str(path), reason if failure is None else failure.reason)

    def _failed(self, index: int, path: str, reason: str) -> tuple:
        with self._lock:
            self.frames_failed += 1
        self._report("failed", index, path, reason)
        return self._blank(index, path)

    def _blank(self, index: int, path: str) -> tuple:
        """A run_scan item for a frame that will not come, at its position if known."""
        live = self._live
        position = None if live is None else live.position(index)
        return (index, None, path) if position is None else (index, None, path, position)

    def _missing(self, live: LiveFrames, index: int, reason: str) -> tuple:
        expected = live.expected_path(index)
        path = str(expected) if expected is not None else str(self.scan_dir)
        if expected is not None and expected.exists():
            # Unfinished: listed in the quarantine, left where it is (a writer may hold it).
            live.quarantine_file(expected, f"frame {index}: {reason}", move=False)
        with self._lock:
            self.frames_missing += 1
        self._report("missing", index, path, reason)
        return self._blank(index, path)

    def _gap(self, live: LiveFrames, index: int) -> tuple:
        """Frame ``index`` never came before the scan ended: missing."""
        assert self._end is not None
        path = str(live.expected_path(index) or self.scan_dir)
        with self._lock:
            self.frames_missing += 1
        self._report("missing", index, path,
                     f"scan ended ({self._end.reason}) before this frame arrived")
        return self._blank(index, path)

    def _report(self, kind: str, index: int, path: str, reason: str) -> None:
        """Frames missing or failed are reported in runs: one event and one log line per
        file and reason (a bad stack, a scan ended early), not one per frame."""
        run = self._reported
        if run is not None and run.kind == kind and run.first + run.count == index and \
                run.reason == reason and (run.path == path or kind == "missing"
                                          and run.reason.startswith("scan ended")):
            run.count += 1
            return
        self._flush_run()
        self._reported = _Run(kind, index, 1, path, reason)

    def _flush_run(self) -> None:
        run, self._reported = self._reported, None
        if run is None:
            return
        last = run.first + run.count - 1
        frames = f"frame {run.first}" if run.count == 1 else f"frames {run.first}-{last}"
        log.warning("%s: %s %s: %s: %s", self.name, frames, run.kind, run.path, run.reason)
        cls = FrameFailed if run.kind == "failed" else FrameMissing
        self.events.emit(cls(scan=self.name, index=run.first, count=run.count, path=run.path,
                             reason=run.reason))

    def _chunk_written(self, chunk: PreparedChunk) -> None:
        """Called by the writer thread once a chunk is on disk."""
        now = self.clock()
        arrivals = [self._arrivals.pop(i, None) for i in range(chunk.frame_start,
                                                              chunk.frame_start + chunk.n_frames)]
        known = [t for t in arrivals if t is not None]
        weightless = int(np.count_nonzero(chunk.missing))
        with self._lock:
            self.frames_written = chunk.frame_start + chunk.n_frames
            self.chunks_written += 1
        self.events.emit(ChunkWritten(scan=self.name, key=chunk.key, frame_start=chunk.frame_start,
                                      n_frames=chunk.n_frames, path=str(self.output),
                                      frames_missing=weightless,
                                      latency_s=(now - max(known)) if known else None))

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
        settings = self._scan_settings
        if settings is None or self._frame_type is None:
            return 64 << 20
        side = settings.prep.shape or min(self._frame_type[0])
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
        if force:
            floor = max(floor, self._chunk_bytes_bound())
        free = self._free_bytes() or 0
        reason = (f"{why}: {_size(free)} free on {self.output.parent}, below "
                  f"limits.min_free_bytes ({_size(floor)}); frames wait on disk")
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
                if self._stop:
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
        try:
            item = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            self._check_inactivity()
            return
        self._take(item)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            self._take(item)
        self._check_inactivity()

    def _take(self, item: Any) -> None:
        if item is _STOP:
            self._stop = True
            return
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
        if isinstance(item, _File):
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


def _resolved_of_first_chunk(master: Path, chunk_format: str) -> dict[str, Any] | None:
    """What the first chunk of an earlier run resolved (its provenance), or None."""
    path = master.with_name(chunk_file_name(master.name, chunk_format, 0))
    try:
        with h5py.File(path, "r") as f:
            prov = json.loads(f.attrs["flyprep"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
    resolved = prov.get("params", {}).get("resolved") if isinstance(prov, dict) else None
    return resolved if isinstance(resolved, dict) else None


def _size(n: float) -> str:
    """Bytes for people: 1.5 GiB, 12 MiB, 512 B."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"

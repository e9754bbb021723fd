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
``frame_timeout_s`` is missing; one that cannot be read after ``read_retries`` is
quarantined and failed. Either way it is written with weight 0 and the scan goes on.
"""

from __future__ import annotations

import enum
import fcntl
import json
import logging
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
from .errors import ConfigError, FlyprepError, InputError, OutputError, ScanInterrupted
from .events import ChunkWritten, EventSink, FrameFailed, FrameMissing, ScanEnded, ScanStarted
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
from .sources.live import LiveFrames

log = logging.getLogger(__name__)

#: How often a waiting session looks at its clock (timeouts) and its positions file.
TICK_S = 0.05


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


_STOP = object()


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
                 clock: Callable[[], float] = time.monotonic) -> None:
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
        self._gap_run: list[Any] | None = None  # [first index, count, path, reason]
        self._final: dict[str, Any] = {"pending_frames": 0, "ignored_files": []}
        self._stop = False
        self._output_lock: Any = None
        self._described = False
        self._files_seen = 0
        self._last_news = clock()
        self._arrivals: dict[int, float] = {}
        self._live: LiveFrames | None = None
        self._frame_shape: tuple[tuple[int, ...], np.dtype] | None = None
        self._early_files: list[_File] = []  # before the settings are known

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
                "files_seen": self._files_seen,
                "pending_frames": self._final["pending_frames"] if live is None else live.pending,
                "ignored_files": (self._final["ignored_files"] if live is None else
                                  [f"{p}: {why}" for p, why in live.ignored]),
            }

    # ---- the thread

    def _run(self) -> None:
        try:
            self._serve()
        except ScanInterrupted:
            self._set_state(SessionState.STOPPED)
            log.info("%s: stopped at frame %d; the next start resumes it", self.name,
                     self.frames_done)
        except FlyprepError as exc:
            self._fail(str(exc))
        except Exception as exc:  # a bug must not take the daemon down
            log.exception("%s: unexpected error", self.name)
            self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            self._release()

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

    def _fail(self, message: str) -> None:
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

    def _serve(self) -> None:
        finished = finished_state(self.output)
        if finished is not None:
            # Made by an earlier run, maybe with other settings: never redone on its own.
            with self._lock:
                self.end_reason = "finished before this start"
            self._set_state(SessionState(finished))
            log.info("%s: %s is finished already (%s)", self.name, self.output, finished)
            return
        settings = self._settings()
        self._lock_output()
        num_frames = settings.scan.num_frames
        assert num_frames is not None
        live = self._live
        assert live is not None
        calibration = load_calibration(settings.prep)
        resume, resolved = self._reconcile(settings, calibration, num_frames)
        start = 0 if resume is None else resume.next_frame
        if resolved is not None:  # frames must match those of the kept chunks
            self._frame_shape = (tuple(resolved["raw_shape"]), np.dtype(resolved["raw_dtype"]))
        live.start_at(start)
        with self._lock:
            self.frames_done = self.frames_written = start
            self.chunks_written = 0 if resume is None else resume.next_key
            self.frames_missing = 0 if resume is None else len(resume.missing_indices)
            self.resumed_at = start if start else None
        self._set_state(SessionState.ACQUIRING)
        self.events.emit(ScanStarted(scan=self.name, master=str(self.output),
                                     num_frames=num_frames,
                                     chunk_frames=settings.output.chunk_frames))
        run_scan(self._frames(start, num_frames, settings.output.chunk_frames),
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
                                   frames_missing=self.frames_missing))

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
            described = self._described or (self._end is not None and scan_file.is_file())
            ready = self._files_seen > 0 and (described or not scan_file.exists())
            if ready or self._end is not None:
                description = self._read_description(scan_file) if described else None
                settings = scan_settings(cfg, description, source=str(scan_file))
                settings = self._with_geometry_file(settings)
                if self._files_seen == 0:
                    raise ConfigError(f"{self.scan_dir}: the scan ended before any frame file "
                                      "was finished")
                if settings.scan.num_frames is not None:
                    break
                if self._end is not None:
                    raise ConfigError(
                        f"{self.scan_dir}: the scan ended before its number of frames was "
                        f"known (set num_frames in {cfg.watch.scan_file} or [scan] of the "
                        "config)")
            self._wait_news(TICK_S * 4)
        require_geometry(settings.geometry)
        with self._lock:
            self.num_frames = settings.scan.num_frames
        self._make_live()
        return settings

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

    def _make_live(self) -> None:
        cfg = self.config
        live = LiveFrames(
            self.scan_dir, layout=cfg.input.layout, positions_file=cfg.watch.positions_file,
            dataset=cfg.input.dataset, positions_dataset=cfg.input.positions_dataset,
            units=cfg.input.positions_units, frame_patterns=tuple(cfg.watch.frame_patterns),
            ignore_patterns=tuple(cfg.watch.ignore_patterns),
            quarantine_dir=cfg.watch.quarantine_dir, read_retries=cfg.watch.read_retries,
            retry_delay_s=cfg.watch.retry_delay_s, hold_timeout_s=cfg.watch.frame_timeout_s,
            clock=self.clock)
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
                expected_hash = params_hash(writer_params(settings, resolved))
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
        while index < num_frames:
            self._drain()
            if self._stop:
                raise ScanInterrupted(f"{self.name}: stopped at frame {index}")
            ending = self._end is not None and self.clock() - self._end_at >= self._end.grace_s
            item = self._next_frame(live, index, num_frames, chunk_frames, timeout_s, ending)
            if item is None:
                if not ending:
                    self._flush_gaps()
                    self._wait_news(TICK_S)
                    live.refresh()  # growth reports are debounced: do not wait for them
                    continue
                item = self._gap(live, index)
            else:
                self._flush_gaps()
            with self._lock:
                self.frames_done = index + 1
            self._last_news = self.clock()  # handing frames on is activity too
            live.consume(index)
            yield item
            index += 1
        self._flush_gaps()

    def _next_frame(self, live: LiveFrames, index: int, num_frames: int, chunk_frames: int,
                    timeout_s: float, ending: bool) -> tuple | None:
        """Frame ``index`` as a run_scan item, a missing/failed item, or None (not there:
        wait, or once the scan has ended, a gap)."""
        if index in live.failed:
            return self._failed(index, str(live.expected_path(index) or self.scan_dir),
                                live.failed[index])
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
                return self._failed(index, frame.describe(), live.failed[index])
            return None
        chunk_stop = min(num_frames, (index // chunk_frames + 1) * chunk_frames)
        try:
            data = live.read(index, stop=chunk_stop)
        except InputError as exc:
            where = live.quarantine_file(frame.path, exc.reason)
            note = f"; moved to {where}" if where is not None else ""
            return self._failed(index, frame.describe(), f"{exc.reason}{note}")
        expected = self._frame_shape
        if expected is None:
            self._frame_shape = (data.shape, data.dtype)
        elif (data.shape, data.dtype) != expected:
            live.fail(index, "wrong frame")
            return self._failed(index, frame.describe(),
                                f"frame is {data.shape} {data.dtype}, the scan's frames are "
                                f"{expected[0]} {expected[1]}")
        self._arrivals[index] = frame.arrived
        return index, data, frame.describe(), position

    def _failed(self, index: int, path: str, reason: str) -> tuple:
        with self._lock:
            self.frames_failed += 1
        log.warning("%s: frame %d failed: %s: %s", self.name, index, path, reason)
        self.events.emit(FrameFailed(scan=self.name, index=index, path=path, reason=reason))
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
        self.events.emit(FrameMissing(scan=self.name, index=index, path=path, reason=reason))
        return self._blank(index, path)

    def _gap(self, live: LiveFrames, index: int) -> tuple:
        """Frame ``index`` never came before the scan ended: missing. Consecutive gaps are
        reported as one event (a scan ended early can leave thousands)."""
        assert self._end is not None
        path = str(live.expected_path(index) or self.scan_dir)
        run = self._gap_run
        if run is not None and run[0] + run[1] == index:
            run[1] += 1
        else:
            self._flush_gaps()
            self._gap_run = [index, 1, path,
                             f"scan ended ({self._end.reason}) before this frame arrived"]
        return self._blank(index, path)

    def _flush_gaps(self) -> None:
        run, self._gap_run = self._gap_run, None
        if run is not None:
            self.events.emit(FrameMissing(scan=self.name, index=run[0], count=run[1],
                                          path=run[2], reason=run[3]))

    def _chunk_written(self, chunk: PreparedChunk) -> None:
        """Called by the writer thread once a chunk is on disk."""
        now = self.clock()
        arrivals = [self._arrivals.pop(i, None) for i in range(chunk.frame_start,
                                                              chunk.frame_start + chunk.n_frames)]
        known = [t for t in arrivals if t is not None]
        missing = int(np.count_nonzero(chunk.missing))
        with self._lock:
            self.frames_written = chunk.frame_start + chunk.n_frames
            self.frames_missing += missing
            self.chunks_written += 1
        self.events.emit(ChunkWritten(scan=self.name, key=chunk.key, frame_start=chunk.frame_start,
                                      n_frames=chunk.n_frames, path=str(self.output),
                                      frames_missing=missing,
                                      latency_s=(now - max(known)) if known else None))

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

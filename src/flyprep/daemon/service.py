"""The composition root of ``flyprep run``: the one place that knows every part.

Flow: watchdog observers (:class:`~flyprep.sources.watch.ScanWatcher`) -> the daemon's
queue -> the main loop, which routes each event to its scan's
:class:`~flyprep.session.ScanSession` (one thread per scan: read, prepare, write) and
``.apx`` files to the :class:`~flyprep.apx.stream.ApxStreamer`. Events go out on the
ZeroMQ PUB socket; the control ROUTER socket answers the commands of ``docs/protocol.md``.

Lifecycle (as uvicorn's server): :meth:`Daemon.startup` binds the sockets and starts the
watcher (errors here are fatal: the service does not half start), :meth:`Daemon.main_loop`
runs until ``should_exit`` is set (signal handlers only set it), :meth:`Daemon.shutdown`
stops the watcher, stops every scan (whole chunks written, masters left ``acquiring`` so
that the next start resumes them) and closes the sockets.
"""

from __future__ import annotations

import fnmatch
import logging
import base64
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..apx.stream import ApxStreamer
from .bus import PROTOCOL_VERSION, EventPublisher, IpcAccess
from .front import LOCAL, ControlProcess, settings
from .curve import Guard
from .catalog import Catalog
from .metrics import MetricsServer
from .rates import RateWindow
from .reload import plan_reload
from .systemd import Notifier
from .requests import (ApxHeaderRequest, EndScanRequest, NoParams, ScanRequest,
                       parse)
from ..config import DaemonConfig
from ..errors import FlyprepError, InputError
from ..events import ApxReadouts, DaemonHeartbeat, ErrorReported, EventSink, FanoutSink
from ..ptyd.resume import finished_state
from ..workers import Ticker
from .session import (FINISHED_BEFORE, RestartRequested, ScanSession, SessionState,
                      marker_grace_s, output_path)
from ..pipeline.buffer_pool import BufferPool
from ..sources.watch import (
    EndMarkerSeen,
    FileCompleted,
    FileGrew,
    FileUnmatched,
    ScanDirectoryAppeared,
    ScanWatcher,
    WatchEvent,
)

log = logging.getLogger(__name__)

#: Control commands that change a scan: only from peers the config authorises.
MUTATING = ("end_scan", "abort_scan", "reset_stats")
#: Finished scans kept for ``status`` (the oldest are forgotten beyond it).
FINISHED_KEPT = 200
#: Main loop tick: starting queued scans, forgetting finished ones.
TICK_S = 0.1
#: Watcher events routed at a time, taken from the inbox without waiting.
ROUTE_BATCH = 256
#: Status rates: over this many seconds, sampled this often.
RATE_WINDOW_S = 5.0
RATE_SAMPLE_S = 0.5


class Daemon:
    """flyprep's service: watches, prepares, writes and publishes scans.

    ``sinks``: extra event sinks besides the ZeroMQ publisher (the demo's progress
    display, tests). ``publish=False`` runs without binding any socket (the demo).
    """

    def __init__(self, config: DaemonConfig, *, sinks: Sequence[EventSink] = (),
                 publish: bool = True, notifier: Notifier | None = None,
                 loader: Callable[[], DaemonConfig] | None = None) -> None:
        self.config = config
        self.should_exit = threading.Event()
        #: systemd's notify socket (READY, STATUS, WATCHDOG); does nothing outside systemd
        self.notifier = notifier or Notifier(environ={})
        self._loader = loader  # reads the configuration again (SIGHUP), None: no reload
        self._reload_requested = threading.Event()
        self._unhealthy: list[str] = []
        self._status_line_at = 0.0
        self._metrics: MetricsServer | None = None
        self._publish = publish
        self._sink = FanoutSink(sinks)
        self._events: EventPublisher | None = None
        self._control: ControlProcess | None = None
        self._guard: Guard | None = None
        self._apx_stream: EventPublisher | None = None
        self._apx: ApxStreamer | None = None
        self._watcher: ScanWatcher | None = None
        # events one by one, or a list of them (a directory listed)
        self._inbox: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._sessions: dict[Path, ScanSession] = {}  # running or queued
        # A finished scan's chunk buffers, for the next scan (memory already mapped).
        self._buffer_pool = BufferPool(max_pairs=max(2, config.limits.chunk_buffers))
        self._queued: list[Path] = []  # waiting for a free slot (limits.max_scans)
        self._finished: OrderedDict[Path, ScanSession] = OrderedDict()
        self._started = time.time()
        #: This run's id: in every event body and snapshot; new at each start.
        self.run_id = uuid.uuid4().hex[:16]
        self._catalog = Catalog(self.run_id, protocol=PROTOCOL_VERSION)
        self._heartbeat: Ticker | None = None
        self._rates = RateWindow(window_s=RATE_WINDOW_S)
        self._sampled_at = 0.0
        #: Why the service stopped on its own (a part of it died), for a non-zero exit.
        self.failure: str | None = None
        self._apx_files: dict[Path, Path] = {}  # .apx file -> its scan directory
        self._marker_grace_s = marker_grace_s(config)

    # ---- lifecycle

    def startup(self) -> None:
        """Bind the sockets, start the watcher. Raises (and cleans up) if anything fails."""
        cfg = self.config
        for root in cfg.watch.roots:
            if not Path(root).is_dir():  # e.g. a network mount not there yet
                raise InputError(root, "watched root does not exist or is not a directory")
        access = IpcAccess(int(cfg.bus.ipc_mode, 8), cfg.bus.ipc_group)
        try:
            if self._publish:
                # Started first: the control process loads while the rest starts here.
                self._control = ControlProcess(settings(
                    endpoint=cfg.bus.control, allow_remote=cfg.bus.allow_remote,
                    max_request_bytes=cfg.bus.max_request_bytes, ipc_access=access,
                    curve_server_key=_text(cfg.bus.curve_server_key),
                    curve_clients=_text(cfg.bus.curve_clients),
                    curve_readers=cfg.bus.curve_readers, mutating=MUTATING,
                    relayed=[c for c in self._handlers() if c not in LOCAL],
                    version=self._version({}), log_format=cfg.log.format),
                    self._handlers(), self.status)
                self._control.launch()
                self._guard = guard = Guard.from_config(cfg.bus).start()
                self._events = EventPublisher(cfg.bus.events, allow_remote=cfg.bus.allow_remote,
                                              sndhwm=cfg.bus.send_hwm, run=self.run_id,
                                              on_sequenced=self._catalog.apply,
                                              ipc_access=access, guard=guard).start()
                self._sink.add(self._events)
            if cfg.apx.follow:
                publish = self._publish_apx
                if self._publish:
                    self._apx_stream = EventPublisher(cfg.apx.stream,
                                                      allow_remote=cfg.bus.allow_remote,
                                                      sndhwm=cfg.bus.send_hwm,
                                                      run=self.run_id,
                                                      ipc_access=access,
                                                      guard=self._guard).start()
                self._apx = ApxStreamer(publish, events=self._sink, records=True,
                                        hits=cfg.apx.hits, durable=True,
                                        finish_quiet_s=cfg.apx.finish_quiet_s)
                self._apx.start()
            # Sessions re-read their positions file and the streamer its .apx files on a
            # short period: growth reports would only cost a kernel event per write().
            self._watcher = ScanWatcher(cfg.watch, self._inbox.put,
                                        max_tracked=cfg.limits.max_pending_files,
                                        apx_pattern=cfg.apx.pattern, report_growth=False,
                                        on_events=self._inbox.put)
            self._watcher.start()
            if self._publish:
                self._heartbeat = Ticker("heartbeat", cfg.bus.heartbeat_s,
                                         self._beat).start()
            if cfg.metrics.enabled:
                self._metrics = MetricsServer(cfg.metrics.address, cfg.metrics.port,
                                              status=self._published_status,
                                              health=self.health,
                                              disks=self._output_dirs).start()
                self._sink.add(self._metrics)
            if self._control is not None:
                self._control.wait_ready()
                self._control.open()
        except BaseException:
            self.shutdown()
            raise
        log.info("flyprep %s: watching %s; events on %s, control on %s", __version__,
                 ", ".join(str(r) for r in cfg.watch.roots),
                 self._events.endpoint if self._events else "-",
                 self._control.endpoint if self._control else "-")

    def request_reload(self) -> None:
        """Read the configuration again at the main loop's next turn (safe in a signal
        handler: it only sets a flag)."""
        self._reload_requested.set()

    def main_loop(self) -> None:
        """Route watcher events to scans until :attr:`should_exit` is set."""
        next_tick = 0.0
        while not self.should_exit.is_set():
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            try:
                event = self._inbox.get(timeout=TICK_S)
            except queue.Empty:
                event = None
            if event is not None:
                self._route_all(self._with_waiting(event))
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + TICK_S
                self._housekeeping()

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Stop watching, stop every scan (resumable), close the sockets. Idempotent."""
        if self._heartbeat is not None:
            self._heartbeat.stop_and_join(5.0)
            self._heartbeat = None
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        with self._lock:
            sessions = list(self._sessions.values())
        for session in sessions:
            session.stop()
        deadline = time.monotonic() + timeout_s
        for session in sessions:
            if not session.join(max(0.0, deadline - time.monotonic())):
                log.error("%s: did not stop within %g s", session.name, timeout_s)
        if self._apx is not None:
            self._apx.close()
            if self._apx_stream is None or self._apx_stream.flush(2.0):
                self._apx.keep_offsets()  # all handed to ZeroMQ: nothing is sent twice
            self._apx = None
        closed = True  # every socket closed: the context may end
        if self._apx_stream is not None:
            closed &= self._apx_stream.close(linger_s=0.5)
            self._apx_stream = None
        if self._control is not None:
            closed &= self._control.close(timeout_s=5.0)  # the process is killed after 2 s
            self._control = None
        if self._events is not None:
            self._events.flush(2.0)
            closed &= self._events.close(linger_s=0.5)
            self._events = None
        if self._guard is not None:
            if closed:
                self._guard.close()
            else:  # ending the context would wait for the socket still open, for ever
                log.warning("a socket thread did not stop: its ZeroMQ context is left open")
            self._guard = None

    def run(self) -> None:
        """startup, main_loop, shutdown."""
        self.startup()
        try:
            self.main_loop()
        finally:
            self.shutdown()

    @property
    def endpoints(self) -> dict[str, str | None]:
        """The bound endpoints (random ports resolved)."""
        return {"events": self._events.endpoint if self._events else None,
                "control": self._control.endpoint if self._control else None,
                "apx_stream": self._apx_stream.endpoint if self._apx_stream else None,
                "metrics": self._metrics.url if self._metrics else None}

    # ---- routing (main loop thread)

    def _with_waiting(self, event: WatchEvent | RestartRequested
                      ) -> list[WatchEvent | RestartRequested]:
        """``event`` (or the events of a watcher's batch) and those waiting behind it
        (about :data:`ROUTE_BATCH`)."""
        events: list[WatchEvent | RestartRequested] = []
        while True:
            if isinstance(event, list):  # a watcher's batch (a directory listed)
                events.extend(event)
            else:
                events.append(event)
            if len(events) >= ROUTE_BATCH:
                return events
            try:
                event = self._inbox.get_nowait()
            except queue.Empty:
                return events

    def _route_all(self, events: list[WatchEvent | RestartRequested]) -> None:
        """Route ``events`` in order; the frame files of one scan that come one after the
        other (a directory listed) go to its session as one message."""
        files: list[Path] = []
        session: ScanSession | None = None
        for event in events:
            try:
                if isinstance(event, FileCompleted) and not self._is_apx(event.path):
                    target = self._session_for(event.scan_dir)
                    if target is not session:
                        self._hand_files(session, files)
                        session, files = target, []
                    if target is not None:
                        files.append(event.path)
                    continue
                self._hand_files(session, files)
                session, files = None, []
                self._route(event)
            except Exception:  # one bad event must not stop the service
                log.exception("could not handle %r", event)
        try:
            self._hand_files(session, files)
        except Exception:
            log.exception("could not hand %d files to %s", len(files), session)

    def _hand_files(self, session: ScanSession | None, files: list[Path]) -> None:
        if session is not None and files:
            session.files_completed(files)
            self._admit(session)

    def _route(self, event: WatchEvent | RestartRequested) -> None:
        if isinstance(event, ScanDirectoryAppeared):
            self._session_for(event.path)
        elif isinstance(event, FileUnmatched):
            session = self._session_for(event.scan_dir)
            if session is not None:
                session.file_unmatched(event.path)
        elif isinstance(event, RestartRequested):
            self._restart(event)
        elif isinstance(event, FileCompleted):  # an .apx (frame files: _route_all)
            self._follow_apx(event.path, event.scan_dir)
        elif isinstance(event, FileGrew):
            # Only growing files' appearance is reported (report_growth=False): an .apx is
            # followed from then on; a positions file is re-read by its session anyway.
            if self._is_apx(event.path):
                scan_dir = self._watcher.scan_dir_of(event.path) if self._watcher else None
                self._follow_apx(event.path, scan_dir)
        elif isinstance(event, EndMarkerSeen):
            session = self._sessions.get(event.scan_dir)
            if session is not None:
                session.end("end marker", grace_s=self._marker_grace_s)
                self._admit(session)
            self._finish_apx(event.scan_dir)

    def _session_for(self, scan_dir: Path) -> ScanSession | None:
        """The scan's session, created (and started or queued) on first sight; None for
        files directly in a root and for scans finished in this run."""
        session = self._sessions.get(scan_dir)  # every file of a scan but its first
        if session is not None:
            return session
        if scan_dir in self.config.watch.roots:
            return None
        out = self.config.output.directory
        if out is not None and (Path(out) == scan_dir or scan_dir in Path(out).parents):
            return None  # the output directory inside a watched root is no scan
        with self._lock:
            session = self._sessions.get(scan_dir)
            if session is not None:
                return session
            if scan_dir in self._finished:
                return None
            session = self._new_session(scan_dir)
            self._sessions[scan_dir] = session
        return session

    def _new_session(self, scan_dir: Path, **kwargs: Any) -> ScanSession:
        return ScanSession(scan_dir, self.config, events=self._sink,
                           on_restart=self._inbox.put, buffer_pool=self._buffer_pool, **kwargs)

    def _restart(self, event: RestartRequested) -> None:
        """A scan stopped by a full disk goes on from its files now that there is space:
        a new session resumes its output, the watcher reports its files again."""
        scan_dir = event.scan_dir
        carried = None if event.end_reason is None else (event.end_reason, event.end_state)
        with self._lock:
            old = self._sessions.get(scan_dir)
            if old is not None and old.alive:
                old.join(10.0)  # it sent this as its last act
            session = self._new_session(scan_dir, carried_end=carried, announce=False)
            self._sessions[scan_dir] = session
            self._finished.pop(scan_dir, None)  # housekeeping may have moved the old one
            if scan_dir in self._queued:
                self._queued.remove(scan_dir)
        log.info("%s: prepared again from its files (space is back)", scan_dir.name)
        if self._watcher is not None:
            self._watcher.relist(scan_dir)  # into the inbox before the session starts
        self._admit(session)

    def _admit(self, session: ScanSession) -> None:
        """Start the session's thread on its first file (a directory without scan files
        takes no thread and no slot), or queue it while ``limits.max_scans`` run. A scan
        whose output an earlier run finished never waits: its thread only reads its
        totals, and after a restart old scans must not hold up the ones to resume."""
        with self._lock:
            if session.started or session.scan_dir in self._queued:
                return
            full = sum(1 for s in self._sessions.values() if s.alive) >= \
                self.config.limits.max_scans
        finished_before = full and finished_state(session.output) is not None
        with self._lock:
            if session.started or session.scan_dir in self._queued:
                return
            running = sum(1 for s in self._sessions.values() if s.alive)
            if running < self.config.limits.max_scans or finished_before:
                session.start()
            else:
                self._queued.append(session.scan_dir)
                log.info("%s: queued (%d scans running, limits.max_scans)", session.name,
                         running)

    def _housekeeping(self) -> None:
        known: list[ScanSession] = []  # finished by an earlier run: read outside the lock
        control = self._control
        if control is not None and not control.alive and not self.should_exit.is_set():
            # It cannot die from a request; if it stops anyway, say so and exit non-zero
            # so that systemd starts the service again.
            self.failure = f"the control server stopped: {control.thread_error!r}"
            log.critical("%s; the daemon stops", self.failure)
            self._sink.emit(ErrorReported(where="daemon", message=self.failure))
            self.should_exit.set()
        with self._lock:
            for scan_dir, session in list(self._sessions.items()):
                if session.started and session.state.finished and not session.alive:
                    del self._sessions[scan_dir]
                    self._finished[scan_dir] = session
                    self._rates.forget(scan_dir)
                    if session.end_reason == FINISHED_BEFORE:
                        known.append(session)
                    while len(self._finished) > FINISHED_KEPT:
                        self._finished.popitem(last=False)
                    session.ended_at = time.monotonic()
                    if self._apx is not None and session.state != SessionState.STOPPED:
                        self._finish_apx(scan_dir)
            old = time.monotonic() - self.config.limits.ended_kept_s
            while self._finished and next(iter(self._finished.values())).ended_at < old:
                self._finished.popitem(last=False)  # aged out of status
            running = sum(1 for s in self._sessions.values() if s.alive)
            while self._queued and running < self.config.limits.max_scans:
                self._sessions[self._queued.pop(0)].start()
                running += 1
        for session in known:
            self._catalog.known(session.name, session.output)
        self._sample_rates()
        self._tell_systemd()

    # ---- health, systemd, reload (main loop thread)

    def health(self) -> list[str]:
        """What is stuck now (empty: healthy): scans whose thread or writer made no
        progress for ``limits.stall_s``."""
        bound = self.config.limits.stall_s
        now = time.monotonic()
        with self._lock:
            sessions = list(self._sessions.values())
        return [why for s in sessions if (why := s.stalled(bound, now)) is not None]

    def _tell_systemd(self) -> None:
        problems = self.health()
        if problems != self._unhealthy:
            if problems:
                for why in problems:
                    log.error("unhealthy: %s; the systemd watchdog is no longer pinged", why)
                    self._sink.emit(ErrorReported(where="daemon", message=f"stuck: {why}"))
            else:
                log.info("healthy again: the systemd watchdog is pinged again")
            self._unhealthy = problems
        self.notifier.watchdog(not problems)
        now = time.monotonic()
        if self.notifier.active and now - self._status_line_at >= 1.0:
            self._status_line_at = now
            self.notifier.status(self.status_line())

    def _published_status(self) -> dict[str, Any]:
        """The status the control socket answers now (the one pushed last), so that
        metrics and status agree; a new one without a control process."""
        pushed = None if self._control is None else self._control.last_status
        return pushed if pushed is not None else self.status()

    def _output_dirs(self) -> list[str]:
        if self.config.output.directory is not None:
            return [str(self.config.output.directory)]
        return [str(r) for r in self.config.watch.roots]

    def status_line(self) -> str:
        """One line for systemd's ``STATUS=``: scans, frames/s, failures, what is stuck."""
        with self._lock:
            running = [d for d, s in self._sessions.items() if s.alive]
            queued = len(self._queued)
            finished = list(self._finished.values())
        rate = sum((self._rates.rates(d) or {}).get("prepared", 0.0) for d in running)
        failed = sum(1 for s in finished if s.state == SessionState.FAILED)
        line = (f"{len(running)} scans running, {queued} queued; {rate:,.0f} frames/s; "
                f"{failed} scans failed")
        if self._unhealthy:
            line += f"; STUCK: {self._unhealthy[0]}"
        return line

    def reload(self) -> bool:
        """Read the configuration again (SIGHUP): a bad one is refused and the running one
        kept; otherwise new settings apply to scans that start afterwards (see
        :mod:`.reload`). True if the new configuration was taken."""
        if self._loader is None:
            log.warning("reload asked, but this daemon has no configuration file to read")
            return False
        self.notifier.reloading()
        try:
            try:
                new = self._loader()
            except (FlyprepError, OSError) as exc:
                log.error("reload refused, the running configuration is kept: %s", exc)
                self._sink.emit(ErrorReported(where="reload", message=str(exc)))
                return False
            plan = plan_reload(self.config, new)
            if plan.need_restart:
                log.warning("reload: these settings change only with a restart and are kept "
                            "as they were: %s", ", ".join(plan.need_restart))
            self.config = plan.config
            log.info("configuration reloaded: %s (for scans that start from now on)",
                     ", ".join(plan.changed) if plan.changed else "nothing changed")
            return True
        finally:
            self.notifier.send("READY=1")

    # ---- .apx files

    def _is_apx(self, path: Path) -> bool:
        return fnmatch.fnmatchcase(path.name, self.config.apx.pattern)

    def _follow_apx(self, path: Path, scan_dir: Path | None) -> None:
        if self._apx is None:
            return
        if path not in self._apx_files:
            owner = scan_dir or path.parent
            if owner not in self._finished and \
                    finished_state(output_path(self.config, owner)) is not None:
                return  # a scan finished before this start: its file was streamed then
            if not self._apx.follow(path, scan=None if scan_dir is None else scan_dir.name):
                return  # refused (too many files followed): logged and counted there
            self._apx_files[path] = owner
            if owner in self._finished:
                self._finish_apx(owner)  # its scan ended already: read it to the end

    def _finish_apx(self, scan_dir: Path) -> None:
        if self._apx is None:
            return
        for path, owner in list(self._apx_files.items()):
            if owner == scan_dir:
                self._apx.finish(path)
                del self._apx_files[path]

    def _publish_apx(self, event: ApxReadouts, arrays: Sequence[np.ndarray]) -> None:
        if self._apx_stream is not None:
            self._apx_stream.emit(event, arrays=arrays)

    # ---- control (the control process's link thread)

    def _handlers(self) -> dict[str, Any]:
        return {"status": self._status, "end_scan": self._end_scan,
                "abort_scan": self._abort_scan, "version": self._version,
                "scan": self._scan, "reset_stats": self._reset_stats,
                "snapshot": self._snapshot, "apx_header": self._apx_header}

    def _scan(self, params: dict[str, Any]) -> dict[str, Any]:
        """One scan in detail: its status, where its output is, its latest runs of
        missing or failed frames and why."""
        name = parse(ScanRequest, params).scan
        with self._lock:
            found = [s for s in (*self._finished.values(), *self._sessions.values())
                     if s.name == name]
        status = found[-1].status() if found else None
        published = self._catalog.scan(name)
        if status is None and published is None:
            raise ValueError(f"no scan named {name!r} in this run")
        return {"scan": name, "status": status, "published": published}

    def _reset_stats(self, params: dict[str, Any]) -> dict[str, Any]:
        """Counters of the publishers and of the control server back to 0."""
        parse(NoParams, params)
        for part in (self._events, self._apx_stream, self._control):
            if part is not None:
                part.reset_stats()
        return {"reset": True}

    def _version(self, params: dict[str, Any]) -> dict[str, Any]:
        parse(NoParams, params)
        return {"version": __version__, "protocol": PROTOCOL_VERSION, "run": self.run_id}

    def _snapshot(self, params: dict[str, Any]) -> dict[str, Any]:
        parse(NoParams, params)
        return self._catalog.snapshot()

    def _apx_header(self, params: dict[str, Any]) -> dict[str, Any]:
        """The header of a followed ``.apx`` file (``file``): its exact bytes, base64."""
        file = parse(ApxHeaderRequest, params).file
        found = None if self._apx is None else self._apx.header_of(file)
        if found is None:
            raise ValueError(f"{file}: not followed, or its header not read yet")
        return {"file": found["file"], "stream": found["stream"],
                "readout_uid": found["readout_uid"],
                "header": base64.b64encode(found["header"]).decode("ascii")}

    def _beat(self) -> None:
        """``daemon.heartbeat``: alive, and the compact state of every scan not ended."""
        with self._lock:
            scans = [s.brief() for s in self._sessions.values()
                     if s.started and not s.state.finished]
            for scan_dir in self._queued:
                scans.append({**self._sessions[scan_dir].brief(), "state": "queued"})
        self._sink.emit(DaemonHeartbeat(uptime_s=round(time.time() - self._started, 3),
                                        interval_s=self.config.bus.heartbeat_s, scans=scans))

    def status(self) -> dict[str, Any]:
        """Every scan (running, queued, finished in this run) and the daemon's own state."""
        return self._status({})

    def _status(self, params: dict[str, Any]) -> dict[str, Any]:
        """The status document (``control`` is added by the control process)."""
        parse(NoParams, params)
        with self._lock:
            sessions = [*self._finished.items(), *self._sessions.items()]
            queued = set(self._queued)
        scans = []
        for scan_dir, session in sessions:
            info = session.status()
            if scan_dir in queued:
                info["state"] = "queued"
            published = self._catalog.frames_available(session.name)
            info["frames_published"] = info["frames_written"] if published is None \
                else published
            info["rates"] = None if session.state.finished else self._rates.rates(scan_dir)
            scans.append(info)
        out: dict[str, Any] = {
            "state": "stopping" if self.should_exit.is_set() else "running",
            "version": __version__, "run": self.run_id,
            "uptime_s": round(time.time() - self._started, 3), "as_of": time.time(),
            "roots": [str(r) for r in self.config.watch.roots], "scans": scans,
            "watcher": {"pending_files": self._watcher.pending_count if self._watcher else 0},
        }
        if self._events is not None:
            out["events"] = self._events.stats()
        if self._apx is not None:
            out["apx"] = self._apx.status()
        if self._apx_stream is not None:
            out["apx_stream"] = self._apx_stream.stats()
        return out

    def _sample_rates(self) -> None:
        now = time.monotonic()
        if now - self._sampled_at < RATE_SAMPLE_S:
            return
        self._sampled_at = now
        with self._lock:
            running = [(d, s) for d, s in self._sessions.items() if s.alive]
        for scan_dir, session in running:
            counts = session.counts()
            counts["published"] = self._catalog.frames_available(session.name) or 0
            self._rates.sample(scan_dir, now, counts)

    def _abort_scan(self, params: dict[str, Any]) -> dict[str, Any]:
        return self._end(parse(ScanRequest, params).scan, abort=True)

    def _end_scan(self, params: dict[str, Any]) -> dict[str, Any]:
        request = parse(EndScanRequest, params)
        return self._end(request.scan, abort=request.abort)

    def _end(self, name: str, *, abort: bool) -> dict[str, Any]:
        with self._lock:
            matches = [s for s in self._sessions.values()
                       if s.name == name and not s.state.finished]
        if not matches:
            raise ValueError(f"no running scan named {name!r}")
        for session in matches:
            session.end("end_scan command", state="aborted" if abort else "complete")
        return {"scan": name, "ending": True, "state": "aborted" if abort else "complete"}


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path)

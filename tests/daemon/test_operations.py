"""Operating the daemon: systemd's notify socket (READY, STATUS, WATCHDOG only while
healthy, RELOADING around a SIGHUP reload), reloads good and bad, Prometheus metrics that
agree with status, JSON logs and journald priorities."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import InProcessDaemon, daemon_settings, wait_for, write_toml

from flyprep.config import parse_daemon_config
from flyprep.daemon.reload import plan_reload
from flyprep.daemon.systemd import Notifier
from flyprep.events import Event, ScanStarted
from flyprep.sim.simulate import simulate_scan


class NotifySocket:
    """systemd's side: a unix datagram socket; a thread notes what the daemon says, and
    when."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.got: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, BlockingIOError):
                continue
            now = time.monotonic()
            with self._lock:
                self.got.extend((now, line) for line in data.decode().split("\n"))

    def drain(self) -> list[str]:
        """Everything said so far."""
        time.sleep(0.06)  # what is in flight arrives
        with self._lock:
            return [m for _, m in self.got]

    def wait(self, what: str, timeout_s: float = 30) -> None:
        wait_for(lambda: what in self.drain(), timeout_s, f"{what!r} on the notify socket")

    def forget(self) -> None:
        with self._lock:
            self.got.clear()

    def pings_between(self, t0: float, t1: float) -> int:
        self.drain()
        with self._lock:
            return sum(1 for t, m in self.got if m == "WATCHDOG=1" and t0 <= t < t1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_the_notifier_speaks_sd_notify_and_pings_at_half_the_watchdog_interval(
        tmp_path: Path) -> None:
    systemd = NotifySocket(tmp_path / "notify")
    try:
        notifier = Notifier({"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "2000000"})
        assert notifier.active and notifier.watchdog_interval_s == 1.0
        assert notifier.send("READY=1", "STATUS=x")
        notifier.status("x")
        notifier.status("x")  # unchanged: not sent again
        notifier.status("y")
        assert notifier.watchdog(True, now=100.0)
        assert not notifier.watchdog(True, now=100.5)  # within half the interval
        assert not notifier.watchdog(False, now=102.0)  # unhealthy: no ping
        assert notifier.watchdog(True, now=102.0)
        notifier.reloading()
        got = systemd.drain()
        assert got[:5] == ["READY=1", "STATUS=x", "STATUS=x", "STATUS=y", "WATCHDOG=1"]
        assert got[5] == "WATCHDOG=1" and got[6] == "RELOADING=1"
        assert got[7].startswith("MONOTONIC_USEC=")
    finally:
        systemd.close()
    assert not Notifier({}).active and Notifier({}).watchdog_interval_s is None
    other = Notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval_s is None  # meant for another process
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")}).send("READY=1")


class BlockingSink:
    """Holds the scan's thread inside emit(ScanStarted) until released: a stuck scan."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.held = threading.Event()

    def emit(self, event: Event, **_: Any) -> None:
        if isinstance(event, ScanStarted):
            self.held.set()
            self.release.wait(60)


def test_watchdog_pings_stop_while_a_scan_is_stuck_and_come_back_after(
        tmp_path: Path, daemon_dirs: tuple[Path, Path, Path]) -> None:
    root, out, sockets = daemon_dirs
    systemd = NotifySocket(tmp_path / "notify")
    stuck = BlockingSink()
    data = daemon_settings(root, out, sockets, limits={"stall_s": 1.0})
    daemon = InProcessDaemon(data)
    daemon.daemon.notifier = Notifier({"NOTIFY_SOCKET": str(systemd.path),
                                       "WATCHDOG_USEC": "200000"})
    daemon.daemon._sink.add(stuck)
    try:
        with daemon:
            time.sleep(0.6)
            t0 = time.monotonic()
            time.sleep(0.6)
            assert systemd.pings_between(t0, time.monotonic()) >= 4  # every 0.1 s
            simulate_scan(root / "scan_s", num_frames=20, frame_side=32, rate_hz=0,
                          partial_fraction=0)
            assert stuck.held.wait(30)
            wait_for(lambda: daemon.daemon.health(), 10, "the stuck scan seen")
            assert "scan_s: no progress for" in daemon.daemon.health()[0]
            time.sleep(0.3)
            t1 = time.monotonic()
            time.sleep(1.0)
            assert systemd.pings_between(t1, time.monotonic()) == 0
            assert any(m.startswith("STATUS=") and "STUCK: scan_s" in m
                       for m in systemd.drain())
            stuck.release.set()
            daemon.wait_state("scan_s", ("complete",))
            wait_for(lambda: not daemon.daemon.health(), 10, "healthy again")
            t2 = time.monotonic()
            time.sleep(0.6)
            assert systemd.pings_between(t2, time.monotonic()) >= 3
    finally:
        stuck.release.set()
        systemd.close()


def test_a_reload_applies_to_new_scans_and_keeps_what_needs_a_restart() -> None:
    base = daemon_settings(Path("/tmp"), Path("/tmp"), Path("/tmp"))
    old = parse_daemon_config(base)
    changed = json.loads(json.dumps(base))
    changed["output"]["chunk_frames"] = 7
    changed["bus"]["events"] = "ipc:///tmp/other-events"
    changed["limits"]["max_pending_files"] = 5
    changed["limits"]["max_scans"] = 2
    plan = plan_reload(old, parse_daemon_config(changed))
    assert plan.changed == ["limits.max_scans", "output.chunk_frames"]
    assert plan.need_restart == ["bus.events", "limits.max_pending_files"]
    assert plan.config.output.chunk_frames == 7 and plan.config.limits.max_scans == 2
    assert plan.config.bus == old.bus and plan.config.limits.max_pending_files == \
        old.limits.max_pending_files
    assert plan_reload(old, old).changed == [] and plan_reload(old, old).need_restart == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_service_under_systemd_reloads_serves_metrics_and_logs_json(
        tmp_path: Path, daemon_dirs: tuple[Path, Path, Path], daemon_process: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One daemon process: READY, STATUS and pings on a real notify socket; metrics over
    HTTP that agree with status during and after a scan; SIGHUP with a good config (new
    chunk size for the next scan, endpoints kept) and a bad one (refused, still serving);
    every log line a JSON object; STOPPING on SIGTERM."""
    root, out, sockets = daemon_dirs
    systemd = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(systemd.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    port = _free_port()
    daemon = daemon_process(output={"chunk_frames": 20}, log={"format": "json"},
                            metrics={"enabled": True, "port": port})
    config = daemon.config
    try:
        daemon.start()
        systemd.wait("READY=1")
        systemd.wait("WATCHDOG=1")
        assert any(m.startswith("STATUS=0 scans running") for m in systemd.drain())
        url = f"http://127.0.0.1:{port}/metrics"

        staging = tmp_path / "staging" / "scan_m"
        simulate_scan(staging, num_frames=60, frame_side=32, rate_hz=0, partial_fraction=0)
        shutil.move(str(staging), root / "scan_m")
        key = ("flyprep_frames_total", frozenset({("scan", "scan_m"), ("stage", "written")}))
        agreed = 0
        while (daemon.scan("scan_m") or {}).get("state") != "complete":
            status = daemon.status()
            scraped = _metrics(url)
            if scraped[("flyprep_status_time_seconds", frozenset())] == status["as_of"]:
                scans = {s["scan"]: s for s in status["scans"]}
                assert scraped.get(key) == (scans["scan_m"]["frames_written"] if "scan_m" in
                                            scans else None)
                agreed += 1
        assert agreed > 0
        wait_for(lambda: daemon.status()["as_of"] == _metrics(url)[
            ("flyprep_status_time_seconds", frozenset())], 10, "a scrape of the same status")
        scan = daemon.scan("scan_m")
        scraped = _metrics(url)
        assert scan is not None
        for stage in ("received", "prepared", "written", "published", "missing", "failed"):
            assert scraped[("flyprep_frames_total", frozenset(
                {("scan", "scan_m"), ("stage", stage)}))] == scan[f"frames_{stage}"], stage
        assert scraped[("flyprep_scans", frozenset({("state", "complete")}))] == 1
        assert scraped[("flyprep_chunk_latency_seconds_count", frozenset())] == 3
        assert scraped[("flyprep_healthy", frozenset())] == 1
        assert scraped[("flyprep_free_disk_bytes", frozenset({("path", str(out))}))] > 0
        sent = daemon.status()["events"]["sent"]
        assert scraped[("flyprep_publisher_messages_total", frozenset(
            {("publisher", "events"), ("outcome", "sent")}))] <= sent

        # SIGHUP, good: a new chunk size for the next scan; a new endpoint is kept as it was.
        data = json.loads(json.dumps(daemon_settings(root, out, sockets, output={
            "chunk_frames": 30}, log={"format": "json"}, metrics={"enabled": True,
                                                                  "port": port})))
        data["bus"]["events"] = f"ipc://{sockets}/elsewhere"
        write_toml(config, data)
        systemd.forget()
        daemon.proc.send_signal(signal.SIGHUP)
        systemd.wait("RELOADING=1")
        systemd.wait("READY=1")
        wait_for(lambda: "configuration reloaded" in daemon.log_text(), 10, "the reload logged")
        assert "output.chunk_frames" in daemon.log_text()
        assert "change only with a restart" in daemon.log_text() and "bus.events" in \
            daemon.log_text()
        simulate_scan(staging.with_name("scan_n"), num_frames=60, frame_side=32, rate_hz=0,
                      partial_fraction=0)
        shutil.move(str(staging.with_name("scan_n")), root / "scan_n")
        wait_for(lambda: (daemon.scan("scan_n") or {}).get("state") == "complete", 60,
                 "scan_n complete")
        assert daemon.scan("scan_n")["chunks_written"] == 2  # 60 frames in chunks of 30
        assert daemon.status()["events"]["endpoint"] == f"ipc://{sockets}/ev"

        # SIGHUP, bad: refused, the daemon goes on with what it had.
        config.write_text("[watch\nroots = ")
        systemd.forget()
        daemon.proc.send_signal(signal.SIGHUP)
        systemd.wait("READY=1")
        wait_for(lambda: "reload refused" in daemon.log_text(), 10, "the refusal logged")
        assert daemon.proc.poll() is None and daemon.status()["state"] == "running"
        pings_from = time.monotonic()
        time.sleep(0.6)
        assert systemd.pings_between(pings_from, time.monotonic()) >= 2
    finally:
        code = daemon.stop()
        systemd.drain()
        systemd.close()
    assert code == 0, daemon.log_text()
    assert any(m == "STOPPING=1" for _, m in systemd.got)
    lines = [line for line in daemon.log_text().splitlines()
             if line and not line.startswith(("----", "flyprep: "))]
    assert lines
    for line in lines:
        record = json.loads(line)
        assert {"time", "level", "logger", "message"} <= record.keys(), line


def test_under_journald_each_line_starts_with_its_priority(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = ("import logging; from flyprep.logs import configure_logging; "
              "configure_logging('INFO', '{fmt}'); log = logging.getLogger('t'); "
              "log.info('one'); log.error('two')\n"
              "try:\n    1/0\nexcept ZeroDivisionError:\n    log.exception('three')\n")
    for fmt in ("text", "json"):
        err = tmp_path / f"err-{fmt}"
        with open(err, "wb") as stream:
            st = os.fstat(stream.fileno())
            env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
            subprocess.run([sys.executable, "-c", script.replace("{fmt}", fmt)], env=env,
                           stderr=stream, check=True)
        lines = err.read_text().splitlines()
        assert [line[:3] for line in lines] == ["<6>", "<3>", "<3>"], lines
        assert "ZeroDivisionError" in lines[2]  # the traceback on the record's one line
        if fmt == "json":
            assert json.loads(lines[2][3:])["exception"].startswith("Traceback")
        else:
            assert lines[1] == "<3>ERROR t: two"

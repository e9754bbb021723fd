"""Helpers for the daemon tests: configs, waiting, the daemon as a process or a thread."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from flyprep.daemon.bus import BusError, request
from flyprep.config import parse_daemon_config, to_toml
from flyprep.daemon.service import Daemon
from flyprep.events import MemorySink
from flyprep.ptyd.reader import open_ptyd

GEOMETRY = {"energy": 6.2, "distance": 7.0, "psize": 172e-6}


def write_scan(scan: Path, n: int, *, side: int = 64, marker: bool = True) -> None:
    """A PtyPy-layout scan of ``n`` distinct frames."""
    rng = np.random.default_rng(7)
    (scan / "ccd").mkdir(parents=True)
    (scan / "flyprep-scan.toml").write_text(f"num_frames = {n}\n")
    with open(scan / "positions.txt", "w") as pos:
        for i in range(n):
            np.save(scan / f"ccd/f_{i:04d}.npy", rng.poisson(4, (side, side)).astype(np.int32))
            pos.write(f"ccd/f_{i:04d}.npy {i * 1e-7:.6e} {i * 3e-7:.6e}\n")
    if marker:
        (scan / "flyprep-scan.done").touch()


def staged_scan(staging: Path, scan: Path, n: int) -> Callable[[int, int], None]:
    """A scan of ``n`` frames (:func:`write_scan`, no end marker) whose frame files arrive
    when the test says: its scan file and positions are in ``scan`` at once, and
    ``arrive(lo, hi)`` moves frames ``lo .. hi`` in from ``staging``."""
    write_scan(staging, n, marker=False)
    (scan / "ccd").mkdir(parents=True)
    for name in ("flyprep-scan.toml", "positions.txt"):
        os.rename(staging / name, scan / name)

    def arrive(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            os.rename(staging / f"ccd/f_{i:04d}.npy", scan / f"ccd/f_{i:04d}.npy")

    return arrive


def daemon_settings(root: Path, out: Path, sockets: Path, **sections: dict[str, Any]
                    ) -> dict[str, Any]:
    """A test config: small chunks, short windows, ipc sockets under ``sockets``."""
    data: dict[str, Any] = {
        "watch": {"roots": [str(root)], "frame_patterns": ["*.npy", "*.h5"],
                  "quiet_window_s": 0.5, "inactivity_timeout_s": 120.0,
                  "frame_timeout_s": 60.0, "read_retries": 2, "retry_delay_s": 0.05},
        "geometry": dict(GEOMETRY),
        "prep": {"shape": 48},
        "output": {"directory": str(out), "chunk_frames": 40},
        "bus": {"events": f"ipc://{sockets}/ev", "control": f"ipc://{sockets}/ctl"},
        # Chunks written in parts of a few frames (as large real frames are), so that
        # every daemon test, the kill -9 ones included, goes through that path.
        "limits": {"part_bytes": 65536},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(to_toml(data))
    return path


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(step_s)


def master_state(path: Path) -> str | None:
    """The published master's state, or None while there is none."""
    try:
        return open_ptyd(path).state
    except Exception:
        return None


class DaemonProcess:
    """``flyprep run --config`` as a child process."""

    def __init__(self, config: Path, control: str, log: Path, keys: Any = None) -> None:
        self.config, self.control, self.log = config, control, log
        self.keys = keys  # ClientKeys for a daemon that wants CURVE on its tcp control
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout_s: float = 30.0) -> DaemonProcess:
        self.starts += 1
        with open(self.log, "ab") as log:
            log.write(f"---- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flyprep.cli", "run", "--config", str(self.config)],
                stdout=log, stderr=log, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        wait_for(self._answers, timeout_s, "the daemon to answer ping", step_s=0.05)
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()}")
        try:
            return bool(request(self.control, "ping", timeout_s=0.5, keys=self.keys)["ok"])
        except BusError:
            return False

    def status(self) -> dict[str, Any]:
        reply = request(self.control, "status", timeout_s=5, keys=self.keys)
        assert reply["ok"], reply
        return reply["result"]

    def scan(self, name: str) -> dict[str, Any] | None:
        for scan in self.status()["scans"]:
            if scan["scan"] == name:
                return scan
        return None

    def wait_scan(self, name: str, states: tuple[str, ...], timeout_s: float = 10.0
                  ) -> dict[str, Any]:
        """The scan's status entry once its ``state`` is one of ``states``.

        ``status`` is answered from the document the daemon last pushed to its control
        process (docs/daemon.md): up to 0.25 s behind the daemon (more under load), while
        the files it writes (master, chunks) change at once. After waiting on a file, an
        event or a log line, wait here before asserting on status fields."""
        seen: list[dict[str, Any] | None] = [None]

        def reached() -> dict[str, Any] | None:
            scan = seen[0] = self.scan(name)
            return scan if scan is not None and scan["state"] in states else None

        try:
            return wait_for(reached, timeout_s, f"the status to say {name} is in {states}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; it said last: {seen[0]}") from None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"daemon did not stop on SIGTERM:\n{self.log_text()}")
        return self.proc.returncode

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


class InProcessDaemon:
    """The daemon in a thread of the test process, events into a MemorySink."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.sink = MemorySink()
        self.daemon = Daemon(parse_daemon_config(data), sinks=[self.sink], publish=False)
        self._thread: threading.Thread | None = None

    def __enter__(self) -> InProcessDaemon:
        self.daemon.startup()
        self._thread = threading.Thread(target=self.daemon.main_loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.should_exit.set()
        if self._thread is not None:
            self._thread.join(10)
        self.daemon.shutdown()

    def scan(self, name: str) -> dict[str, Any] | None:
        for scan in self.daemon.status()["scans"]:
            if scan["scan"] == name:
                return scan
        return None

    def wait_state(self, name: str, states: tuple[str, ...], timeout_s: float = 30) -> dict:
        return wait_for(lambda: (s := self.scan(name)) is not None and s["state"] in states and s,
                        timeout_s, f"scan {name} to reach {states} (now {self.scan(name)})")



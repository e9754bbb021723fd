"""Soak test: an hour of beamline life compressed into about ten minutes, run by hand.

The real daemon (``python -m flyprep.cli run --config CFG``) runs as a child process on a
scratch directory (ipc sockets there, ``prep.shape`` 64, chunks of 50 frames, a 0.2 s quiet
window, ``.apx`` files followed) while this script:

* drives scans one after another and two side by side, in both layouts (PtyPy's ``.npy``
  frames and HDF5 stacks, :func:`flyprep.sim.simulate.simulate_scan`), each with an
  ``.apx`` file: most written live by simulator threads at a modest rate (40-100 frames/s),
  some written beforehand and moved into the watched root finished;
* keeps one events subscriber connected all along: it counts the frames every
  ``chunk.written`` names per scan (``frame_start``, ``n_frames``) to find frames never
  announced (lost) or announced twice (duplicated), honouring ``resumed_at`` of resumed
  scans and healing ``seq`` gaps with a ``snapshot`` (docs/protocol.md's recipe);
* connects and disconnects short-lived subscribers (events and the ``.apx`` stream) again
  and again;
* sends SIGHUP at 30 % of the time after changing ``output.chunk_frames`` in the config
  (and checks the log says "configuration reloaded"), SIGTERM at 50 % and ``kill -9`` at
  75 %, each while scans are running, restarting the daemon at once (it resumes them);
* samples the resident memory (VmRSS) and open file descriptors of the daemon and of its
  control child process every few seconds.

At the end every output is verified (:func:`flyprep.ptyd.reader.open_ptyd`: state
``complete``, ``n_frames`` = the scan's frames, every chunk's ``indices`` read: no frame
missing or duplicated; plus :func:`flyprep.ptyd.verify.verify`), and the figures are
printed: RSS and fds per minute, first third vs last third of each daemon life (restarts
reset them), scans, frames, frames lost and duplicated. Exit status 1 when a frame was lost
or duplicated or a scan did not end complete, 2 when the soak could not run.

    .venv/bin/python benchmarks/soak.py                 # ~10 minutes (--minutes 10)
    .venv/bin/python benchmarks/soak.py --quick         # ~2 minutes: checks the script
    .venv/bin/python benchmarks/soak.py --minutes 30 --seed 7 --keep

Not part of the test suite. Uses about one core of a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from flyprep.config import to_toml
from flyprep.daemon.bus import BusError, Subscriber, request
from flyprep.ptyd.reader import open_ptyd
from flyprep.ptyd.verify import verify
from flyprep.sim.simulate import simulate_scan

#: The simulator's default geometry (ExampleGeometry), also given in the daemon config.
GEOMETRY = {"energy": 6.2, "distance": 7.0, "psize": 172e-6}
FRAME_SIDE = 128  # what the simulated detector writes
PREP_SHAPE = 64  # the ROI the daemon prepares: cheap on 2 cores
CHUNK_FRAMES = 50  # before the SIGHUP
CHUNK_FRAMES_AFTER_HUP = 40  # after it: applies to scans that start from then on
FRAMES_PER_FILE = 50  # HDF5 stacks
LAYOUTS = ("ptypy", "hdf5")
#: Flat: the last third's median within this fraction of the first third's (same life).
FLAT_FRACTION = 0.10
#: ... or, for open fds, within this many descriptors (a running scan holds a few files).
FLAT_FDS = 6
#: The first seconds of each daemon life are warm-up (imports, the first scans' buffers:
#: RSS climbs ~25 MB), left out of the first-third/last-third comparison.
WARMUP_S = 20.0
#: Fewest samples after the warm-up for a life to be judged flat or not.
MIN_JUDGED = 6


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Plan:
    """When things happen (seconds from the start) and what the scans look like."""

    duration_s: float
    seed: int
    sample_s: float  # RSS/fd sampling period
    bucket_s: float  # rows of the RSS/fd table
    frames: tuple[int, int]  # frames per scan, min and max
    rate_hz: tuple[float, float]  # live scans' frame rate, min and max
    idle_s: tuple[float, float]  # beamline idle between scans
    hup_at: float
    term_at: float
    kill_at: float
    last_start_at: float  # no scan starts after this
    drain_s: float  # then every scan must have ended within this

    @staticmethod
    def make(minutes: float, seed: int, quick: bool) -> Plan:
        total = 120.0 if quick else minutes * 60.0
        return Plan(duration_s=total, seed=seed, sample_s=2.0 if quick else 5.0,
                    bucket_s=20.0 if quick else 60.0,
                    frames=(150, 400) if quick else (300, 1500),
                    rate_hz=(40.0, 80.0) if quick else (40.0, 100.0),
                    idle_s=(0.3, 1.5) if quick else (0.5, 4.0),
                    hup_at=0.30 * total, term_at=0.50 * total, kill_at=0.75 * total,
                    last_start_at=0.85 * total, drain_s=120.0)


class Clock:
    """Seconds since the soak started; waits that an abort interrupts."""

    def __init__(self, abort: threading.Event) -> None:
        self.t0 = time.monotonic()
        self.abort = abort

    def now(self) -> float:
        return time.monotonic() - self.t0

    def wait_until(self, t: float) -> None:
        """Until ``t`` seconds after the start (a point of the schedule), or an abort."""
        self.abort.wait(max(0.0, t - self.now()))
        if self.abort.is_set():
            raise SystemExit("aborted")


def say(clock: Clock, text: str) -> None:
    print(f"[{clock.now():6.1f} s] {text}", flush=True)


# --------------------------------------------------------------------------- daemon


@dataclass
class Paths:
    """The scratch directory's layout."""

    work: Path

    @property
    def root(self) -> Path:
        return self.work / "root"

    @property
    def staging(self) -> Path:
        return self.work / "staging"

    @property
    def out(self) -> Path:
        return self.work / "out"

    @property
    def config(self) -> Path:
        return self.work / "daemon.toml"

    @property
    def log(self) -> Path:
        return self.work / "daemon.log"

    @property
    def events(self) -> str:
        return f"ipc://{self.work}/s/ev"

    @property
    def control(self) -> str:
        return f"ipc://{self.work}/s/ctl"

    @property
    def apx(self) -> str:
        return f"ipc://{self.work}/s/apx"

    def make(self) -> None:
        for d in (self.root, self.staging, self.out, self.work / "s"):
            d.mkdir(parents=True, exist_ok=True)


def write_config(paths: Paths, chunk_frames: int) -> None:
    """The daemon's config (written to a temporary name, then renamed into place)."""
    text = to_toml({
        "watch": {"roots": [str(paths.root)], "quiet_window_s": 0.2,
                  "frame_timeout_s": 60.0, "inactivity_timeout_s": 600.0},
        "geometry": dict(GEOMETRY),
        "prep": {"shape": PREP_SHAPE},
        "output": {"directory": str(paths.out), "chunk_frames": chunk_frames},
        "bus": {"events": paths.events, "control": paths.control},
        "apx": {"follow": True, "stream": paths.apx, "finish_quiet_s": 1.0},
    })
    tmp = paths.config.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, paths.config)


@dataclass
class Life:
    """One run of the daemon process, from its start to its end."""

    index: int
    pid: int
    control_pid: int | None
    run: str
    started_at: float  # soak clock
    ready_s: float
    ended_at: float | None = None
    how: str = ""
    exit_code: int | None = None
    stop_s: float | None = None
    control_gone_s: float | None = None  # its control child's exit after the daemon's end


def pid_alive(pid: int) -> bool:
    try:
        return "flyprep" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def wait_pid_gone(pid: int, timeout_s: float) -> bool:
    """Await the exit of any process (not only a child) with a pidfd; True if it ended."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout_s)
        return bool(ready)
    finally:
        os.close(fd)


class Daemon:
    """``flyprep run`` as a child process, started again after each stop."""

    def __init__(self, paths: Paths, clock: Clock) -> None:
        self.paths, self.clock = paths, clock
        self.proc: subprocess.Popen[bytes] | None = None
        self.lives: list[Life] = []
        self.lock = threading.Lock()

    @property
    def life(self) -> Life | None:
        with self.lock:
            return self.lives[-1] if self.lives and self.lives[-1].ended_at is None else None

    def start(self, timeout_s: float = 60.0) -> Life:
        t0 = time.monotonic()
        with open(self.paths.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flyprep.cli", "run", "--config", str(self.paths.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        status = self._await_status(time.monotonic() + timeout_s)
        life = Life(index=len(self.lives) + 1, pid=self.proc.pid,
                    control_pid=status.get("control", {}).get("pid"), run=status.get("run", "?"),
                    started_at=self.clock.now(), ready_s=time.monotonic() - t0)
        with self.lock:
            self.lives.append(life)
        return life

    def _await_status(self, deadline: float) -> dict[str, Any]:
        """The first status the new daemon answers (polled until ``deadline``)."""
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited with {self.proc.returncode} at start:\n"
                                   f"{self.log_tail()}")
            try:
                reply = request(self.paths.control, "status", timeout_s=0.5)
                if reply.get("ok"):
                    return reply["result"]
            except BusError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not answer within 60 s:\n{self.log_tail()}")

    def status(self, timeout_s: float = 2.0) -> dict[str, Any] | None:
        try:
            reply = request(self.paths.control, "status", timeout_s=timeout_s)
        except BusError:
            return None
        return reply.get("result") if reply.get("ok") else None

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, how: str, timeout_s: float = 60.0) -> Life:
        """End this life with SIGTERM (``how`` "SIGTERM", waited for) or SIGKILL ("kill -9")."""
        assert self.proc is not None
        life = self.lives[-1]
        t0 = time.monotonic()
        if how == "kill -9":
            self.proc.kill()
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
            how += " (did not stop in time: killed)"
        stop_s = time.monotonic() - t0
        if life.control_pid is not None:
            gone = wait_pid_gone(life.control_pid, 15.0)
            life.control_gone_s = time.monotonic() - t0 - stop_s if gone else None
        with self.lock:
            life.ended_at, life.how, life.exit_code, life.stop_s = \
                self.clock.now(), how, code, stop_s
        return life

    def kill_leftovers(self) -> None:
        """The daemon, and a control child outliving it (by pid, after checking it is ours)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for life in self.lives:
            if life.control_pid is not None and pid_alive(life.control_pid):
                os.kill(life.control_pid, signal.SIGKILL)

    def log_size(self) -> int:
        try:
            return self.paths.log.stat().st_size
        except OSError:
            return 0

    def log_text(self, offset: int = 0) -> str:
        try:
            with open(self.paths.log, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 4000) -> str:
        return self.log_text()[-n:]

    def await_log(self, pattern: str, offset: int, timeout_s: float) -> str | None:
        """The first log line after ``offset`` containing ``pattern`` (polled until the
        deadline: the log is a file, nothing announces a new line)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.log_text(offset).splitlines():
                if pattern in line:
                    return line
            if time.monotonic() > deadline:
                return None
            self.clock.abort.wait(0.1)


# --------------------------------------------------------------------------- RSS and fds


@dataclass(frozen=True)
class Sample:
    t: float
    life: int
    role: str  # "daemon" or "control"
    pid: int
    rss_mb: float
    fds: int
    running: int | None  # scans acquiring at that moment (status), None if not answered


def read_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def count_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Sampler(threading.Thread):
    """Samples the daemon's and its control child's RSS and fds every ``period_s``."""

    def __init__(self, daemon: Daemon, clock: Clock, period_s: float,
                 stop: threading.Event) -> None:
        super().__init__(name="sampler", daemon=True)
        self.d, self.clock, self.period_s, self.stop = daemon, clock, period_s, stop
        self.samples: list[Sample] = []

    def run(self) -> None:
        while not self.stop.wait(self.period_s):
            self.sample_once()

    def sample_once(self) -> None:
        life = self.d.life
        if life is None:
            return
        status = self.d.status(timeout_s=1.0)
        running = None if status is None else sum(
            1 for s in status.get("scans", []) if s.get("state") == "acquiring")
        for role, pid in (("daemon", life.pid), ("control", life.control_pid)):
            if pid is None:
                continue
            rss, fds = read_rss_mb(pid), count_fds(pid)
            if rss is not None and fds is not None and self.d.life is life:
                self.samples.append(Sample(self.clock.now(), life.index, role, pid, rss, fds,
                                           running))


# --------------------------------------------------------------------------- event ledger


@dataclass
class ScanTrack:
    """What the events said about one scan, across daemon runs."""

    name: str
    num_frames: int | None = None
    announced: Counter[int] = field(default_factory=Counter)  # frame -> chunk.written naming it
    covered: set[int] = field(default_factory=set)  # kept by a resume, or told by a snapshot
    resumed_at: dict[str, int] = field(default_factory=dict)  # run -> frames kept
    #: (run, soak time, resumed_at, chunk_frames) of each scan.started
    starts: list[tuple[str, float, int, int]] = field(default_factory=list)
    ends: list[dict[str, Any]] = field(default_factory=list)
    announced_kept: set[int] = field(default_factory=set)  # ... in a run that said it kept them
    chunk_sizes: Counter[int] = field(default_factory=Counter)

    @property
    def ended_complete(self) -> bool:
        return any(e.get("state") == "complete" for e in self.ends)

    def published(self, run: str) -> int:
        """Frames from 0 readable so far: the highest frame announced or kept, plus one."""
        kept = self.resumed_at.get(run, 0)
        return max([kept, *(i + 1 for i in self.announced)]) if self.announced else kept

    def duplicated(self) -> int:
        """Extra announcements, plus frames announced once but in a run that had kept them."""
        return sum(c - 1 for c in self.announced.values() if c > 1) + \
            sum(1 for i in self.announced_kept if self.announced[i] == 1)

    def lost(self, expected: int) -> int:
        return sum(1 for i in range(expected) if i not in self.announced and i not in self.covered)

    def out_of_range(self, expected: int) -> int:
        return sum(1 for i in self.announced if not 0 <= i < expected)


class Ledger(threading.Thread):
    """The events subscriber that stays connected all along (also across restarts)."""

    def __init__(self, paths: Paths, clock: Clock, stop: threading.Event) -> None:
        super().__init__(name="ledger", daemon=True)
        self.paths, self.clock, self.stop = paths, clock, stop
        self.connected = threading.Event()
        self.cond = threading.Condition()
        self.scans: dict[str, ScanTrack] = {}
        self.last_seq: dict[str, int] = {}
        self.runs: list[str] = []
        self.gaps: list[tuple[str, int, int]] = []  # run, expected seq, got
        self.snapshots = 0
        self.unhealed = 0
        self.messages = 0
        self.kinds: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []

    def run(self) -> None:
        sub = Subscriber(self.paths.events)  # made and used in this thread only
        self.connected.set()
        try:
            while not self.stop.is_set():
                frames = sub.receive_frames(0.2)
                if frames is not None:
                    self.on_body(json.loads(bytes(frames[1].buffer)))
        finally:
            sub.close()

    def track(self, name: str) -> ScanTrack:
        return self.scans.setdefault(name, ScanTrack(name))

    def on_body(self, body: dict[str, Any]) -> None:
        run, seq, kind = str(body.get("run")), int(body.get("seq", -1)), str(body.get("kind"))
        gap = self._check_seq(run, seq)
        with self.cond:
            self.messages += 1
            self.kinds[kind] += 1
            handler = {"scan.started": self._on_started, "chunk.written": self._on_chunk,
                       "scan.ended": self._on_ended, "error": self._on_error}.get(kind)
            if handler is not None:
                handler(run, body)
            self.cond.notify_all()
        if gap:
            self._heal(run)

    def _check_seq(self, run: str, seq: int) -> bool:
        """True when messages of ``run`` were lost before this one (a new run counts from 0)."""
        if run not in self.last_seq:
            self.runs.append(run)
        expected = self.last_seq.get(run, -1) + 1
        self.last_seq[run] = seq
        if seq != expected:
            self.gaps.append((run, expected, seq))
            return True
        return False

    def _on_started(self, run: str, body: dict[str, Any]) -> None:
        track = self.track(body["scan"])
        track.num_frames = body.get("num_frames")
        kept = int(body.get("resumed_at") or 0)
        track.resumed_at[run] = kept
        track.covered.update(range(kept))
        track.starts.append((run, self.clock.now(), kept, int(body.get("chunk_frames") or 0)))

    def _on_chunk(self, run: str, body: dict[str, Any]) -> None:
        track = self.track(body["scan"])
        start, n = int(body["frame_start"]), int(body["n_frames"])
        kept = track.resumed_at.get(run, 0)
        track.chunk_sizes[n] += 1
        for i in range(start, start + n):
            track.announced[i] += 1
            if i < kept:
                track.announced_kept.add(i)

    def _on_ended(self, run: str, body: dict[str, Any]) -> None:
        self.track(body["scan"]).ends.append({**body, "run": run})

    def _on_error(self, run: str, body: dict[str, Any]) -> None:
        self.errors.append(body)

    def _heal(self, run: str) -> None:
        """After lost messages: a snapshot of that run covers the chunks its master lists."""
        try:
            reply = request(self.paths.control, "snapshot", timeout_s=10.0)
        except BusError:
            self.unhealed += 1
            return
        result = reply.get("result") or {}
        if not reply.get("ok") or result.get("run") != run:
            self.unhealed += 1
            return
        with self.cond:
            self.snapshots += 1
            for scan in result.get("scans", []):
                track = self.track(scan["scan"])
                for _key, start, n in scan.get("chunks", []):
                    track.covered.update(range(start, start + n))
                if scan.get("state") in ("complete", "aborted", "failed"):
                    track.ends.append({"state": scan["state"], "run": run, "from": "snapshot"})
            self.cond.notify_all()

    def mid_scan(self, run: str, chunk: int) -> list[str]:
        """Scans of ``run`` with at least a chunk published and two or more to go."""
        with self.cond:
            return [t.name for t in self.scans.values()
                    if t.num_frames and not t.ends and run in t.resumed_at
                    and chunk <= t.published(run) <= t.num_frames - 2 * chunk]

    def await_mid_scan(self, run: str, chunk: int, want: int, timeout_s: float) -> list[str]:
        """Until ``want`` scans are in the middle of their frames (see :meth:`mid_scan`);
        those there are at the deadline."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                names = self.mid_scan(run, chunk)
                left = deadline - time.monotonic()
                if len(names) >= want or left <= 0:
                    return names
                self.cond.wait(left)

    def await_ended(self, names: Iterable[str], timeout_s: float) -> set[str]:
        """Wait until every scan in ``names`` has a ``scan.ended``; returns those without."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                left_over = {n for n in names if not self.track(n).ends}
                left = deadline - time.monotonic()
                if not left_over or left <= 0:
                    return left_over
                self.cond.wait(min(left, 2.0))


# --------------------------------------------------------------------- short-lived subscribers


class Churn(threading.Thread):
    """A subscriber that connects, listens 0.2-2.5 s, disconnects, and again."""

    def __init__(self, label: str, endpoint: str, topics: tuple[bytes, ...], seed: int,
                 stop: threading.Event) -> None:
        super().__init__(name=f"churn-{label}", daemon=True)
        self.label, self.endpoint, self.topics, self.stop = label, endpoint, topics, stop
        self.rng = random.Random(seed)
        self.sessions = self.messages = self.bytes = 0

    def run(self) -> None:
        while not self.stop.is_set():
            sub = Subscriber(self.endpoint, topics=self.topics)
            self.sessions += 1
            try:
                self._listen(sub, time.monotonic() + self.rng.uniform(0.2, 2.5))
            finally:
                sub.close()
            self.stop.wait(self.rng.uniform(0.1, 1.0))

    def _listen(self, sub: Subscriber, until: float) -> None:
        while (left := until - time.monotonic()) > 0 and not self.stop.is_set():
            frames = sub.receive_frames(left)
            if frames is not None:
                self.messages += 1
                self.bytes += sum(len(f.buffer) for f in frames)


# --------------------------------------------------------------------------- scans


@dataclass
class Job:
    """One scan the soak writes."""

    name: str
    layout: str
    mode: str  # "live" (written into the root) or "moved" (written aside, moved in finished)
    frames: int
    rate_hz: float
    seed: int
    started_at: float = 0.0
    written: int | None = None
    error: str | None = None


class Driver(threading.Thread):
    """Writes scans one after another, sometimes two at once, until the last start time."""

    PATTERNS = ("single", "pair", "moved", "live+moved")

    def __init__(self, paths: Paths, plan: Plan, clock: Clock, stop_sims: threading.Event) -> None:
        super().__init__(name="driver", daemon=True)
        self.paths, self.plan, self.clock, self.stop_sims = paths, plan, clock, stop_sims
        self.rng = random.Random(plan.seed)
        self.jobs: list[Job] = []
        self.error: str | None = None

    def run(self) -> None:
        try:
            while self.clock.now() < self.plan.last_start_at and not self.stop_sims.is_set():
                self.run_pattern(self.rng.choice(self.PATTERNS))
                self.stop_sims.wait(self.rng.uniform(*self.plan.idle_s))
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            self.error = f"{type(exc).__name__}: {exc}"

    def run_pattern(self, pattern: str) -> None:
        first = self.rng.choice(LAYOUTS)
        other = LAYOUTS[1 - LAYOUTS.index(first)]
        modes = {"single": [("live", first)], "pair": [("live", first), ("live", other)],
                 "moved": [("moved", first)],
                 "live+moved": [("live", first), ("moved", other)]}[pattern]
        threads = [threading.Thread(target=self.write, args=(self.new_job(mode, layout),),
                                    daemon=True) for mode, layout in modes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def new_job(self, mode: str, layout: str) -> Job:
        rate = round(self.rng.uniform(*self.plan.rate_hz))
        room = max(3.0, self.plan.last_start_at - self.clock.now() + 5.0)
        frames = min(self.rng.randint(*self.plan.frames), int(rate * room))
        frames = max(frames, 3 * CHUNK_FRAMES)
        job = Job(name=f"scan_{len(self.jobs):03d}_{layout}_{mode}", layout=layout, mode=mode,
                  frames=frames, rate_hz=rate if mode == "live" else 0.0,
                  seed=self.plan.seed * 1000 + len(self.jobs), started_at=self.clock.now())
        self.jobs.append(job)
        return job

    def write(self, job: Job) -> None:
        target = self.paths.root / job.name
        where = target if job.mode == "live" else self.paths.staging / job.name
        try:
            result = simulate_scan(where, layout=job.layout, num_frames=job.frames,
                                   frame_side=FRAME_SIDE, rate_hz=job.rate_hz, seed=job.seed,
                                   stop_event=self.stop_sims, apx=True, readouts_per_frame=20,
                                   frames_per_file=FRAMES_PER_FILE)
            job.written = result.frames_written
            if job.mode == "moved" and not result.stopped:
                os.rename(where, target)
        except Exception as exc:  # noqa: BLE001 - counted as a failed scan
            job.error = f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- outputs


@dataclass
class OutputCheck:
    name: str
    expected: int
    state: str | None = None
    n_frames: int = 0
    missing: int = 0  # indices 0..expected-1 no chunk holds
    duplicated: int = 0  # indices more than one chunk holds
    filled: int = 0  # frames written as missing (zero weight: flyprep/missing_indices)
    chunk_sizes: str = ""
    verify_errors: list[str] = field(default_factory=list)
    verify_warnings: list[str] = field(default_factory=list)
    error: str | None = None
    orphans: int = 0

    @property
    def ok(self) -> bool:
        return (self.error is None and self.state == "complete" and self.n_frames == self.expected
                and not (self.missing or self.duplicated or self.filled or self.verify_errors))


def chunk_indices(master: Path) -> Iterator[tuple[int, list[int]]]:
    """``(key, indices)`` of every chunk the master lists (each chunk's ``indices``)."""
    with h5py.File(master, "r") as f:
        for name in sorted(f["chunks"], key=int):
            yield int(name), f[f"chunks/{name}/indices"][()].tolist()


def check_output(master: Path, expected: int) -> OutputCheck:
    check = OutputCheck(master.stem, expected)
    try:
        ptyd = open_ptyd(master)
        check.state, check.n_frames = ptyd.state, ptyd.n_frames
        check.filled = len(ptyd.provenance.get("missing_indices", []))
        seen: Counter[int] = Counter()
        sizes: Counter[int] = Counter()
        for _key, indices in chunk_indices(master):
            seen.update(indices)
            sizes[len(indices)] += 1
        check.missing = sum(1 for i in range(expected) if i not in seen)
        check.duplicated = sum(c - 1 for c in seen.values() if c > 1) + \
            sum(1 for i in seen if not 0 <= i < expected)
        check.chunk_sizes = " ".join(f"{n}x{s}" for s, n in sorted(sizes.items(), reverse=True))
        for finding in verify(master):
            (check.verify_errors if finding.level == "error" else
             check.verify_warnings).append(str(finding))
    except Exception as exc:  # noqa: BLE001 - a file that cannot be read is a failed check
        check.error = f"{type(exc).__name__}: {exc}"
    check.orphans = len(list(master.parent.glob(f"{master.name}*.orphaned-*")))
    return check


# --------------------------------------------------------------------------- figures


def med(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def thirds(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    n = len(samples) // 3
    return samples[:n], samples[-n:] if n else []


@dataclass(frozen=True)
class Slope:
    life: int
    role: str
    pid: int
    span_s: float
    n: int
    rss_first: float
    rss_last: float
    fds_first: float
    fds_last: float

    @property
    def judged(self) -> bool:
        return self.n >= MIN_JUDGED

    @property
    def rss_flat(self) -> bool:
        return abs(self.rss_last - self.rss_first) <= FLAT_FRACTION * self.rss_first

    @property
    def fds_flat(self) -> bool:
        return abs(self.fds_last - self.fds_first) <= max(FLAT_FRACTION * self.fds_first, FLAT_FDS)


def slopes(samples: list[Sample], lives: list[Life]) -> list[Slope]:
    """First vs last third of each process life, after its warm-up."""
    started = {life.index: life.started_at for life in lives}
    groups: dict[tuple[int, str], list[Sample]] = {}
    for s in samples:
        group = groups.setdefault((s.life, s.role), [])  # every process, judged or not
        if s.t >= started[s.life] + WARMUP_S:
            group.append(s)
    pids = {(s.life, s.role): s.pid for s in samples}
    out = []
    for (life, role), group in sorted(groups.items()):
        first, last = thirds(group)
        span = group[-1].t - group[0].t if group else 0.0
        out.append(Slope(life, role, pids[(life, role)], span, len(group),
                         med([s.rss_mb for s in first]), med([s.rss_mb for s in last]),
                         med([s.fds for s in first]), med([s.fds for s in last])))
    return out


def print_table(samples: list[Sample], bucket_s: float) -> None:
    unit = "minute" if bucket_s == 60 else f"{bucket_s:g} s"
    print(f"\nRSS (MB) and open fds per {unit}: min-max of the samples (daemon = flyprep run; "
          f"control = its control child; scans = most acquiring at once)")
    head = (f"{'from s':>7} {'lives':>6} {'daemon RSS':>13} {'fds':>9} {'control RSS':>13} "
            f"{'fds':>9} {'scans':>6}")
    print(head + "\n" + "-" * len(head))
    rows: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        rows[int(s.t // bucket_s)].append(s)
    for b, group in sorted(rows.items()):
        cells = []
        for role in ("daemon", "control"):
            mine = [s for s in group if s.role == role]
            cells.append(_range([s.rss_mb for s in mine], "{:.1f}", 13))
            cells.append(_range([s.fds for s in mine], "{:d}", 9))
        lives = ",".join(str(x) for x in sorted({s.life for s in group}))
        running = [s.running for s in group if s.running is not None]
        print(f"{b * bucket_s:7.0f} {lives:>6} {' '.join(cells)} "
              f"{max(running) if running else '-':>6}")


def _range(values: list[Any], fmt: str, width: int) -> str:
    if not values:
        return f"{'-':>{width}}"
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}".rjust(width)


def print_slopes(rows: list[Slope]) -> None:
    print(f"\nFirst third vs last third of each daemon life after its first {WARMUP_S:.0f} s "
          f"(medians; flat: the last third's median RSS within {FLAT_FRACTION:.0%} of the first "
          f"third's, fds within {FLAT_FRACTION:.0%} or {FLAT_FDS}; fewer than {MIN_JUDGED} "
          f"samples: not judged)")
    head = (f"{'life':>4} {'process':<8} {'pid':>7} {'span s':>7} {'n':>4} {'RSS first':>10} "
            f"{'RSS last':>9} {'change':>7} {'fds first':>10} {'fds last':>9}  verdict")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        if not r.judged:
            print(f"{r.life:>4} {r.role:<8} {r.pid:>7} {r.span_s:7.0f} {r.n:>4} {'-':>10} {'-':>9} "
                  f"{'-':>7} {'-':>10} {'-':>9}  not judged (life too short)")
            continue
        change = (r.rss_last - r.rss_first) / r.rss_first
        verdict = f"RSS {'flat' if r.rss_flat else 'NOT flat'}, " \
                  f"fds {'flat' if r.fds_flat else 'NOT flat'}"
        print(f"{r.life:>4} {r.role:<8} {r.pid:>7} {r.span_s:7.0f} {r.n:>4} {r.rss_first:10.1f} "
              f"{r.rss_last:9.1f} {change:+7.1%} {r.fds_first:10.0f} {r.fds_last:9.0f}  {verdict}")


def print_lives(lives: list[Life]) -> None:
    print("\nDaemon lives")
    for life in lives:
        if life.control_gone_s is not None:
            control = f"{life.control_gone_s:.2f} s after"
        else:
            control = "STILL ALIVE 15 s after" if life.ended_at is not None else "-"
        print(f"  {life.index}: pid {life.pid} (control {life.control_pid}), run {life.run}, "
              f"ready in {life.ready_s:.1f} s at {life.started_at:.0f} s, ended at "
              f"{(life.ended_at or 0):.0f} s by {life.how or '?'}: exit {life.exit_code}, "
              f"stopped in {(life.stop_s or 0):.2f} s; control child gone {control}")


def log_problems(text: str, limit: int = 10) -> list[str]:
    """WARNING/ERROR/Traceback lines of the daemon log, grouped (numbers blanked)."""
    groups: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|second signal", line):
            continue
        body = re.sub(r"^\S+ \S+ ", "", line)  # the time stamp
        key = re.sub(r"\d+", "N", body)[:160]
        groups.setdefault(key, []).append(line)
    out = [f"{len(lines)}x {lines[0][:300]}" for lines in groups.values()]
    return out[:limit] + ([f"... and {len(out) - limit} more kinds"] if len(out) > limit else [])


# --------------------------------------------------------------------------- phases


@dataclass
class Findings:
    """What the soak saw beyond the figures (reload, restarts, subscriber counts)."""

    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def note(self, clock: Clock, text: str) -> None:
        self.notes.append(text)
        say(clock, text)

    def problem(self, clock: Clock, text: str) -> None:
        self.problems.append(text)
        say(clock, "PROBLEM: " + text)


def do_reload(daemon: Daemon, paths: Paths, clock: Clock, found: Findings) -> float:
    """Change chunk_frames, SIGHUP, and await the daemon's "configuration reloaded" line."""
    offset = daemon.log_size()
    write_config(paths, CHUNK_FRAMES_AFTER_HUP)
    daemon.hup()
    line = daemon.await_log("configuration reloaded", offset, 15.0)
    t = clock.now()  # scans that start from now on have the new chunk_frames
    if line is None:
        found.problem(clock, "SIGHUP: no 'configuration reloaded' in the log within 15 s")
    else:
        found.note(clock, f"SIGHUP: chunk_frames {CHUNK_FRAMES} -> {CHUNK_FRAMES_AFTER_HUP}; "
                          f"log: {line.strip()[:200]}")
    return t


def do_restart(daemon: Daemon, ledger: Ledger, clock: Clock, how: str, found: Findings,
               chunk: int) -> None:
    """Wait for a scan in the middle of its frames, stop the daemon ``how``, start it again."""
    life = daemon.lives[-1]
    # Two scans at once in the middle of their frames if that comes soon, else one.
    if not ledger.await_mid_scan(life.run, chunk, 2, 20.0) and \
            not ledger.await_mid_scan(life.run, chunk, 1, 40.0):
        found.problem(clock, f"{how}: no scan in mid-acquisition within 60 s; sent anyway")
    with ledger.cond:
        running = {n: t.published(life.run) for n, t in ledger.scans.items()
                   if life.run in t.resumed_at and not t.ends}
    ended = daemon.stop(how)
    found.note(clock, f"{how} to life {life.index} (pid {life.pid}) with scans running "
                      f"{running} (frames published): exit {ended.exit_code} after "
                      f"{ended.stop_s:.2f} s; control child gone: "
                      f"{'yes' if ended.control_gone_s is not None else 'NO'}")
    if how == "SIGTERM" and ended.exit_code != 0:
        found.problem(clock, f"SIGTERM: the daemon exited with {ended.exit_code}, not 0")
    if ended.control_gone_s is None and ended.control_pid is not None:
        found.problem(clock, f"{how}: control child {ended.control_pid} still alive 15 s later")
    new = daemon.start()
    found.note(clock, f"life {new.index}: pid {new.pid}, control {new.control_pid}, ready in "
                      f"{new.ready_s:.1f} s")


def await_all_ended(daemon: Daemon, ledger: Ledger, names: list[str], clock: Clock,
                    timeout_s: float, found: Findings) -> None:
    """Every scan's scan.ended (events), else its state in status, before the deadline."""
    left = ledger.await_ended(names, timeout_s)
    if not left:
        return
    status = daemon.status(timeout_s=5.0) or {}
    states = {s["scan"]: s.get("state") for s in status.get("scans", [])}
    still = sorted(n for n in left if states.get(n) not in ("complete", "aborted", "failed"))
    if left - set(still):
        found.note(clock, f"scan.ended never received for {sorted(left - set(still))} "
                          f"(status says they ended)")
    if still:
        found.problem(clock, f"not ended {timeout_s:.0f} s after the last scan was written: "
                             f"{[(n, states.get(n)) for n in still]}")


def check_subscriber_counts(daemon: Daemon, clock: Clock, found: Findings) -> None:
    """After the churn: the publishers should count only the ledger's subscriber."""
    deadline = time.monotonic() + 10.0
    ev = apx = None
    while time.monotonic() < deadline:
        status = daemon.status() or {}
        ev = status.get("events", {}).get("subscribers")
        apx = status.get("apx_stream", {}).get("subscribers")
        if ev == 1 and apx == 0:
            break
        clock.abort.wait(0.5)
    text = f"subscribers counted by the daemon after the churn: events {ev} (1 expected), " \
           f"apx stream {apx} (0 expected)"
    (found.note if (ev, apx) == (1, 0) else found.problem)(clock, text)


# --------------------------------------------------------------------------- report


@dataclass
class Totals:
    scans: int = 0
    frames: int = 0
    lost_events: int = 0
    dup_events: int = 0
    lost_outputs: int = 0
    dup_outputs: int = 0
    incomplete: list[str] = field(default_factory=list)


def tally(jobs: list[Job], ledger: Ledger, checks: dict[str, OutputCheck]) -> Totals:
    totals = Totals(scans=len(jobs), frames=sum(j.frames for j in jobs))
    for job in jobs:
        track = ledger.track(job.name)
        totals.lost_events += track.lost(job.frames)
        totals.dup_events += track.duplicated() + track.out_of_range(job.frames)
        check = checks[job.name]
        totals.lost_outputs += check.missing + check.filled + \
            max(0, job.frames - check.n_frames - check.missing)
        totals.dup_outputs += check.duplicated
        if not check.ok or job.error or job.written != job.frames:
            totals.incomplete.append(job.name)
    return totals


def print_scans(jobs: list[Job], ledger: Ledger, checks: dict[str, OutputCheck]) -> None:
    print("\nScans (events: frames announced by chunk.written / kept by resumes or snapshots, "
          "lost, dup; output: state, frames, chunk sizes)")
    for job in jobs:
        t, c = ledger.track(job.name), checks[job.name]
        starts = "; ".join(f"cf {cf} at {kept}" for _, _, kept, cf in t.starts)
        flag = "" if c.ok and job.written == job.frames else "  <-- NOT OK"
        print(f"  {job.name:<26} {job.frames:5d} fr {job.rate_hz:4.0f} Hz | events "
              f"{len(t.announced):5d}/{len(t.covered - set(t.announced)):4d} lost "
              f"{t.lost(job.frames)} dup {t.duplicated()} | starts [{starts}] | "
              f"{c.state} {c.n_frames} [{c.chunk_sizes}]"
              f"{f' orphans {c.orphans}' if c.orphans else ''}"
              f"{f' filled {c.filled}' if c.filled else ''}"
              f"{f' ERROR {c.error}' if c.error else ''}"
              f"{f' verify {c.verify_errors[:2]}' if c.verify_errors else ''}"
              f"{f' sim {job.error}' if job.error else ''}{flag}")


def print_summary(totals: Totals, rows: list[Slope], lives: int, ledger: Ledger,
                  churn: list[Churn], found: Findings, hup_t: float, took_s: float) -> None:
    judged = [r for r in rows if r.judged]
    after_hup = Counter(cf for t in ledger.scans.values() for _, ts, kept, cf in t.starts[:1]
                        if ts > hup_t and kept == 0)
    print("\n=== soak summary ===")
    print(f"took {took_s:.0f} s; daemon lives {lives} (SIGHUP, SIGTERM and kill -9 in between)")
    print(f"scans run: {totals.scans}; frames total: {totals.frames}")
    print(f"frames lost: {totals.lost_events + totals.lost_outputs} (events {totals.lost_events},"
          f" outputs {totals.lost_outputs}; 0 expected)")
    print(f"frames duplicated: {totals.dup_events + totals.dup_outputs} (events "
          f"{totals.dup_events}, outputs {totals.dup_outputs}; 0 expected)")
    print(f"scans not complete/verified: {len(totals.incomplete)} {totals.incomplete[:8]}")
    print(f"events: {ledger.messages} messages, {ledger.kinds['chunk.written']} chunk.written, "
          f"{len(ledger.gaps)} seq gaps ({sum(1 for g in ledger.gaps if g[1] == 0)} at a run's "
          f"start), {ledger.snapshots} healed by snapshot, {ledger.unhealed} unhealed; "
          f"{len(ledger.errors)} error events")
    print(f"new scans after SIGHUP by chunk_frames: {dict(after_hup)} "
          f"({CHUNK_FRAMES_AFTER_HUP} expected)")
    print("short-lived subscribers: " + ", ".join(
        f"{c.label} {c.sessions} sessions/{c.messages} msgs" for c in churn))
    for role in ("daemon", "control"):
        mine = [r for r in judged if r.role == role]
        rss = ", ".join(f"life {r.life} {r.rss_first:.0f}->{r.rss_last:.0f} MB "
                        f"({'flat' if r.rss_flat else 'NOT flat'})" for r in mine)
        fds = ", ".join(f"life {r.life} {r.fds_first:.0f}->{r.fds_last:.0f} "
                        f"({'flat' if r.fds_flat else 'NOT flat'})" for r in mine)
        print(f"{role} RSS (median first third -> last third): {rss or '-'}")
        print(f"{role} fds: {fds or '-'}")
    print(f"flat means: last third's median within {FLAT_FRACTION:.0%} of the first third's, "
          f"same process life, its first {WARMUP_S:.0f} s left out (fds: or within {FLAT_FDS})")
    for p in found.problems:
        print(f"PROBLEM: {p}")


# --------------------------------------------------------------------------- main


def soak(args: argparse.Namespace) -> int:
    plan = Plan.make(args.minutes, args.seed, args.quick)
    abort, stop_sims = threading.Event(), threading.Event()
    stop_watch, stop_ledger = threading.Event(), threading.Event()
    clock = Clock(abort)
    paths = Paths(Path(tempfile.mkdtemp(prefix="flyprep-soak-")))
    paths.make()
    write_config(paths, CHUNK_FRAMES)
    daemon = Daemon(paths, clock)
    found = Findings()
    print(f"soak: {plan.duration_s / 60:.1f} min, seed {plan.seed}, scratch {paths.work}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}", flush=True)
    threads: list[threading.Thread] = []
    ledger = Ledger(paths, clock, stop_ledger)
    driver = Driver(paths, plan, clock, stop_sims)
    try:
        threads.append(ledger)
        ledger.start()
        ledger.connected.wait(10)
        life = daemon.start()
        found.note(clock, f"life 1: pid {life.pid}, control {life.control_pid}, ready in "
                          f"{life.ready_s:.1f} s")
        sampler = Sampler(daemon, clock, plan.sample_s, stop_watch)
        churn = [Churn("events", paths.events, (b"",), plan.seed + 1, stop_watch),
                 Churn("chunk-events", paths.events, (b"chunk.",), plan.seed + 2, stop_watch),
                 Churn("apx", paths.apx, (b"",), plan.seed + 3, stop_watch),
                 Churn("apx-2", paths.apx, (b"",), plan.seed + 4, stop_watch)]
        threads += [sampler, *churn, driver]
        for t in (sampler, *churn, driver):
            t.start()
        clock.wait_until(plan.hup_at)
        hup_t = do_reload(daemon, paths, clock, found)
        clock.wait_until(plan.term_at)
        do_restart(daemon, ledger, clock, "SIGTERM", found, CHUNK_FRAMES_AFTER_HUP)
        clock.wait_until(plan.kill_at)
        do_restart(daemon, ledger, clock, "kill -9", found, CHUNK_FRAMES_AFTER_HUP)
        driver.join()
        if driver.error:
            found.problem(clock, f"scan driver: {driver.error}")
        say(clock, f"all {len(driver.jobs)} scans written; waiting for the daemon to end them")
        await_all_ended(daemon, ledger, [j.name for j in driver.jobs], clock, plan.drain_s, found)
        stop_watch.set()
        for t in (sampler, *churn):
            t.join(10)
        check_subscriber_counts(daemon, clock, found)
        last = daemon.stop("SIGTERM (end)")
        found.note(clock, f"final SIGTERM: exit {last.exit_code} after {last.stop_s:.2f} s")
        if last.exit_code != 0:
            found.problem(clock, f"final SIGTERM: exit {last.exit_code}")
        stop_ledger.set()
        ledger.join(5)
        say(clock, "verifying outputs")
        checks = {j.name: check_output(paths.out / f"{j.name}.ptyd", j.frames)
                  for j in driver.jobs}
        totals = tally(driver.jobs, ledger, checks)
        rows = slopes(sampler.samples, daemon.lives)
        print_scans(driver.jobs, ledger, checks)
        print_lives(daemon.lives)
        print_table(sampler.samples, plan.bucket_s)
        print_slopes(rows)
        problems = log_problems(daemon.log_text())
        print(f"\nDaemon log: {len(daemon.log_text().splitlines())} lines; warnings/errors "
              f"(grouped):" + ("".join(f"\n  {p}" for p in problems) if problems else " none"))
        print_summary(totals, rows, len(daemon.lives), ledger, churn, found, hup_t, clock.now())
        bad = totals.lost_events + totals.lost_outputs + totals.dup_events + totals.dup_outputs
        return 1 if bad or totals.incomplete else 0
    finally:
        for event in (abort, stop_sims, stop_watch, stop_ledger):
            event.set()
        for t in threads:
            if t.is_alive():
                t.join(15)
        daemon.kill_leftovers()
        if args.keep:
            print(f"kept {paths.work}")
        else:
            shutil.rmtree(paths.work, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="scan sizes, rates, patterns")
    parser.add_argument("--quick", action="store_true", help="~2 minutes: check the script")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    if args.minutes < 1:
        parser.error("--minutes must be at least 1")
    return args


def exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, exit_on_signal)  # so that the finally clauses clean up
    try:
        return soak(args)
    except RuntimeError as exc:
        print(f"soak: could not run: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

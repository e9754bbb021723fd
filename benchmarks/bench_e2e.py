"""End to end: simulator -> daemon (``flyprep run``) -> chunk readable by a PtyPy-style poller.

The real daemon runs as a child process (``python -m flyprep.cli run --config FILE``) on a
scratch directory under ``--dir`` (default /tmp): ipc sockets, chunks of ``--chunk-frames``
(100), ``prep.shape`` = the frame side (no crop), a short quiet window and long frame and
inactivity timeouts. Scans are written by :func:`flyprep.sim.simulate.simulate_scan` in a child
process (PtyPy layout: one ``.npy`` per frame, most by temp+rename, 20 % in place in
pieces; HDF5 layout: stack files of ``frames_per_file`` frames grown frame by frame). A
third process polls the master as PtyPy does: every ``--poll-ms`` it stats the master and,
when a new version was published (new inode by rename), opens it read-only, resolves every
new ``chunks/<k>`` external link and reads the chunk's last frame; chunk k is *readable* at
that moment. The benchmark also subscribes to the daemon's PUB socket (``chunk.written``).
All times are ``time.time()`` on this machine, so the processes compare them directly.

Frames: the simulator's own synthesis (FFT + Poisson of a 256x256 pattern) costs ~5 ms a
frame, far below the rates asked, so by default the simulator's ``ExampleScan`` is replaced,
in its process only, by one cycling a pool of ``--pool`` frames synthesised once beforehand
(a detector does not compute its frames either). Everything the simulator does on disk is
unchanged. ``--pool 0`` keeps the synthesis (its frames are int32 whatever the case says).

Runs (each on a new scan directory; files removed and ``sync`` between runs):

* ``producer``: the simulator alone into an unwatched directory, no daemon work: the
  producer's own rate on this machine.
* ``drain``: the scan written beforehand (untimed) outside the root, then moved into the
  watched root at once: the daemon alone at full speed (files found by listing and the
  quiet window, as after a directory move). frames/s from the rename to the master saying
  ``complete`` with every frame.
* ``live``: the simulator writing into the root while the daemon works, at ``rate_hz`` 0
  (as fast as possible) or the foundation's 3,000 frames/s. frames/s from frame 0's
  close (``on_frame(0)``) to the master saying ``complete``; also the producer's rate
  during the run and the daemon's lag after the last frame (``tail``). The producer is
  the limit when end to end is >= 85 % of the producer's rate in that run and at most
  two chunks were left to do after its last frame; else the machine (``CPU``) when its
  cores were >= 90 % busy; else the daemon.
* ``latency``: live at a fixed rate below capacity. Per frame: readable time of its chunk
  minus the close time of the frame's file (PtyPy: the frame's ``.npy``; HDF5: its stack
  file, closed after its last frame), p50/p99 over frames; goal p99 <= chunk fill time
  (chunk_frames / rate) + 50 ms. Per chunk: readable minus the close of the chunk's last
  frame file, p50/p99: the daemon's own overhead. Also from frame close to the
  ``chunk.written`` event's emit time, and the daemon's own ``latency_s`` (its arrival of
  the chunk's last frame to the chunk on disk, its monotonic clock).

Throughput figures are medians of ``--repeat`` runs (every run printed, with ``steady``:
the rate after the first chunk is readable, without the scan's start-up); CPU seconds of
the daemon (``/proc``, all its threads), the producer and the poller per 1,000 frames,
the daemon's CPU over wall time (its Python threads share one GIL) and how busy the whole
machine was. Goals: the foundation's prepare+write rates (256x256 int32 ~3,000 frames/s,
bitshuffle-LZ4 the same, 512x512 uint16 ~2,100 frames/s; the foundation cropped 512 -> 256
and 1024 -> 512 from memory, here the frames are the ROI and come from files) held end
to end; latency p99 as above.

Other work on the machine skews everything (2 cores are easily shared): before each run
the benchmark waits (``--wait-quiet``) for the machine to be < 15 % busy, and after each
it prints the CPU time other processes and kernel threads took (the biggest by name),
flagging runs where that exceeded 10 % of the machine.

    python3 benchmarks/bench_e2e.py [--quick] [--frames 3000] [--cases all] [--repeat 3]

A full run takes about 6 minutes on 2 cores, ``--quick`` about 40 seconds.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from flyprep.daemon.bus import BusError, Subscriber, request
from flyprep.config import to_toml

#: Extra latency allowed beyond the chunk fill time (the issue's goal).
LATENCY_SLACK_S = 0.050
#: End to end counts as producer-limited at this fraction of the producer's own rate.
PRODUCER_LIMITED = 0.85
#: The simulator's default geometry (ExampleGeometry), also put in the daemon config.
GEOMETRY = {"energy": 6.2, "distance": 7.0, "psize": 172e-6}

SPAWN = mp.get_context("spawn")  # the benchmark has threads and a zmq context: no fork


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Profile:
    """What one daemon is configured for: frame side (= prep.shape), dtype, compression."""

    side: int = 256
    dtype: str = "int32"
    compression: str = "none"

    @property
    def label(self) -> str:
        comp = {"none": "none", "bitshuffle-lz4": "lz4"}.get(self.compression, self.compression)
        return f"{self.side} {self.dtype} {comp}"

    @property
    def goal_fps(self) -> float:
        """The foundation's prepare+write rate for this output."""
        return 2100.0 if self.side == 512 else 3000.0


@dataclass(frozen=True)
class Case:
    """One line of a table: what kind of run, which layout, rate and daemon profile."""

    name: str
    kind: str  # "drain", "live" or "latency"
    layout: str
    rate_hz: float = 0.0
    profile: Profile = Profile()


P256_LZ4, P512 = Profile(compression="bitshuffle-lz4"), Profile(512, "uint16")
CASES: dict[str, Case] = {c.name: c for c in (
    Case("drain-ptypy", "drain", "ptypy"),
    Case("drain-hdf5", "drain", "hdf5"),
    Case("live-ptypy-max", "live", "ptypy", 0),
    Case("live-hdf5-max", "live", "hdf5", 0),
    Case("live-ptypy-3000", "live", "ptypy", 3000),
    Case("live-hdf5-3000", "live", "hdf5", 3000),
    Case("drain-ptypy-lz4", "drain", "ptypy", profile=P256_LZ4),
    Case("live-ptypy-lz4-max", "live", "ptypy", 0, profile=P256_LZ4),
    Case("drain-hdf5-512u16", "drain", "hdf5", profile=P512),
    Case("live-hdf5-512u16-max", "live", "hdf5", 0, profile=P512),
    Case("latency-ptypy-500", "latency", "ptypy", 500),
    Case("latency-hdf5-500", "latency", "hdf5", 500),
    Case("latency-ptypy-100", "latency", "ptypy", 100),
    Case("latency-hdf5-100", "latency", "hdf5", 100),
)}
QUICK = ["drain-ptypy", "drain-hdf5", "live-ptypy-max", "live-hdf5-max",
         "latency-ptypy-500", "latency-hdf5-500", "latency-ptypy-100"]


# --------------------------------------------------------------------------- child processes


def _pooled_example_scan(pool_size: int, dtype: str) -> type:
    """An ExampleScan whose frames cycle a pool synthesised once (same positions)."""
    from flyprep.sim.example import ExampleScan

    class PooledScan(ExampleScan):
        pools: ClassVar[dict[tuple[int, int], np.ndarray]] = {}

        def frames(self, start: int, stop: int) -> np.ndarray:
            key = (self.frame_side, pool_size)
            pool = PooledScan.pools.get(key)
            if pool is None:
                raw = ExampleScan(num_frames=pool_size, frame_side=self.frame_side,
                                  seed=1, dtype="int64").frames(0, pool_size)
                pool = np.minimum(raw, np.iinfo(dtype).max).astype(dtype)
                PooledScan.pools[key] = pool
            return pool[[i % pool_size for i in range(start, stop)]]

    return PooledScan


def producer_main(root: str, options: dict[str, Any], pool: int, dtype: str, times: Any,
                  ready: Any, go: Any, out: Any) -> None:
    """Child process: simulate one scan into ``root`` once ``go`` is set; ``times[i]`` is
    ``time.time()`` right after frame i was written and closed (``on_frame``)."""
    try:
        from flyprep.sim import simulate

        if pool:
            simulate.ExampleScan = _pooled_example_scan(pool, dtype)  # this process only
            simulate.ExampleScan(num_frames=1, frame_side=options["frame_side"]).frames(0, 1)
        ready.set()
        go.wait()

        def on_frame(i: int) -> None:
            times[i] = time.time()

        cpu0, t_start = time.process_time(), time.time()
        result = simulate.simulate_scan(root, on_frame=on_frame, **options)
        out.put({"t_start": t_start, "t_end": time.time(), "cpu_s": time.process_time() - cpu0,
                 "written": result.frames_written, "partial": len(result.partial_frames)})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        ready.set()
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def poller_main(master: str, interval_s: float, timeout_s: float, ready: Any, out: Any) -> None:
    """Child process: poll ``master`` as PtyPy does until it says it is finished; report
    when each chunk first resolved (and its last frame could be read) and when it ended."""
    import h5py as h5

    try:
        import hdf5plugin  # noqa: F401 - bitshuffle-LZ4 chunks need its filter to be read
    except ImportError:
        pass
    readable: dict[int, tuple[float, int]] = {}
    last_sig = None
    polls = opens = errors = 0
    last_error = ""
    status: dict[str, Any] = {}
    end_at = None
    cpu0 = time.process_time()
    ready.set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        polls += 1
        try:
            st = os.stat(master)
        except FileNotFoundError:
            time.sleep(interval_s)
            continue
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        if sig != last_sig:
            try:
                with h5.File(master, "r") as f:
                    opens += 1
                    chunks = f["chunks"]
                    for name in chunks:
                        key = int(name)
                        if key in readable:
                            continue
                        group = chunks.get(name)
                        if group is None:
                            continue  # dangling link: not written yet
                        data = group["data"]
                        data[data.shape[0] - 1]
                        readable[key] = (time.time(), int(data.shape[0]))
                    status = json.loads(f["flyprep"].attrs["status"])
                last_sig = sig
            except (OSError, KeyError, ValueError) as exc:
                errors += 1  # replaced while opening, say: the next poll sees it
                last_error = f"{type(exc).__name__}: {exc}"
                time.sleep(interval_s)
                continue
            if status.get("state") != "acquiring":
                end_at = time.time()
                break
        time.sleep(interval_s)
    out.put({"readable": readable, "end_at": end_at, "status": status, "polls": polls,
             "opens": opens, "errors": errors, "last_error": last_error, "cpu_s": time.process_time() - cpu0})


# --------------------------------------------------------------------------- daemon


def write_toml(path: Path, data: dict[str, dict[str, Any]]) -> Path:
    path.write_text(to_toml(data))
    return path


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat; 0
    elsewhere. Compared with this benchmark's own processes it shows what others took."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_wait_s: float, threshold: float = 0.15) -> None:
    """Wait (up to ``max_wait_s``) until under ``threshold`` of the machine is busy over
    half a second: other work would skew the run. Says so when it waited."""
    if max_wait_s <= 0:
        return
    t0 = time.monotonic()
    while True:
        b0 = busy_cpu_s()
        time.sleep(0.5)
        busy = (busy_cpu_s() - b0) / 0.5 / (os.cpu_count() or 1)
        waited = time.monotonic() - t0
        if busy < threshold or waited >= max_wait_s:
            if waited > 1.0:
                print(f"  (machine {busy:.0%} busy; waited {waited:.0f} s for it to quiet down)",
                      flush=True)
            return


def cpu_by_process() -> dict[int, tuple[str, float]]:
    """{pid: (name, CPU seconds)} of every process (kernel threads included), from /proc."""
    out: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return out
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        head, _, rest = text.rpartition(")")
        fields = rest.split()
        out[pid] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / tick)
    return out


def top_others(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
               own: set[int], n: int = 3) -> str:
    """The processes outside the benchmark that used the most CPU between two snapshots."""
    used = []
    for pid, (name, cpu) in after.items():
        if pid in own:
            continue
        delta = cpu - before.get(pid, (name, 0.0))[1]
        if delta >= 0.05:
            if name.startswith("python"):
                try:
                    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:4]
                    name = " ".join(a.decode(errors="replace") for a in args)[:40]
                except OSError:
                    pass
            used.append((delta, f"{name} [{pid}]"))
    used.sort(reverse=True)
    return ", ".join(f"{what} {cpu:.1f}" for cpu, what in used[:n]) or "-"


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc; 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Events:
    """A thread collecting the daemon's PUB events with their receive time."""

    def __init__(self, endpoint: str) -> None:
        self.sub = Subscriber(endpoint)
        self.items: list[tuple[float, dict[str, Any]]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            msg = self.sub.receive(timeout_s=0.1)
            if msg is not None:
                self.items.append((time.time(), msg.body))

    def of(self, scan: str, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, b) for t, b in list(self.items) if b.get("scan") == scan and b["kind"] == kind]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sub.close()


class DaemonProcess:
    """``flyprep run --config`` in a child process, configured for one profile."""

    def __init__(self, work: Path, profile: Profile, chunk_frames: int,
                 part_bytes: int | None = None, declare_type: bool = False) -> None:
        self.work = work
        self.root, self.out, sockets = work / "root", work / "out", work / "s"
        for d in (self.root, self.out, sockets):
            d.mkdir(parents=True, exist_ok=True)
        self.control, self.events_endpoint = f"ipc://{sockets}/ctl", f"ipc://{sockets}/ev"
        self.config = write_toml(work / "daemon.toml", {
            "watch": {"roots": [str(self.root)], "frame_patterns": ["*.npy", "*.h5"],
                      "quiet_window_s": 0.1, "inactivity_timeout_s": 600.0,
                      "frame_timeout_s": 300.0, "read_retries": 3, "retry_delay_s": 0.05},
            "geometry": dict(GEOMETRY),
            "prep": {"shape": profile.side},
            "output": {"directory": str(self.out), "chunk_frames": chunk_frames,
                       "compression": profile.compression},
            "bus": {"events": self.events_endpoint, "control": self.control},
            "limits": {} if part_bytes is None else {"part_bytes": part_bytes},
            # Declared, the frame type needs no second file to agree with the first.
            "scan": {"frame_shape": [profile.side, profile.side],
                     "frame_dtype": profile.dtype} if declare_type else {},
        })
        self.log = work / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 30.0) -> DaemonProcess:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flyprep.cli", "run", "--config", str(self.config),
                 "--log-level", "WARNING"],
                stdout=log, stderr=log, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if request(self.control, "ping", timeout_s=0.5)["ok"]:
                    return self
            except BusError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon did not answer ping in {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def cpu_s(self) -> float:
        assert self.proc is not None
        return proc_cpu_s(self.proc.pid)

    def scan_status(self, name: str) -> dict[str, Any] | None:
        reply = request(self.control, "status", timeout_s=10)
        for scan in reply.get("result", {}).get("scans", []):
            if scan["scan"] == name:
                return scan
        return None

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    """What one run measured (times are time.time())."""

    case: Case
    num_frames: int
    t0: float  # drain: the rename; live: frame 0 closed
    end_at: float  # master says complete
    closes: np.ndarray  # per frame: on_frame time (file closed for PtyPy, written for HDF5)
    file_closes: np.ndarray  # per frame: its file's close
    readable: dict[int, float]
    chunk_frames: int
    producer: dict[str, Any]
    poller: dict[str, Any]
    events: list[tuple[float, dict[str, Any]]]
    daemon_cpu_s: float
    others_cpu_s: float  # CPU time of other processes on the machine during the run
    others_top: str  # the biggest of them
    busy_cpu_s: float  # CPU time the whole machine was busy during the run
    status: dict[str, Any] = field(default_factory=dict)

    @property
    def wall_s(self) -> float:
        return self.end_at - self.t0

    @property
    def daemon_cores(self) -> float:
        """The daemon's CPU over the run's wall time: a Python process whose threads share
        one GIL stays near 1 when its threads are busy."""
        return self.daemon_cpu_s / self.wall_s

    @property
    def machine_busy(self) -> float:
        """Share of all cores busy during the run (every process and the kernel)."""
        return self.busy_cpu_s / self.wall_s / (os.cpu_count() or 1)

    @property
    def disturbed(self) -> bool:
        """Other processes took more than 10 % of the machine during the run."""
        return self.others_cpu_s > 0.1 * (os.cpu_count() or 1) * (self.end_at - self.t0)

    @property
    def fps(self) -> float:
        return self.num_frames / (self.end_at - self.t0)

    @property
    def steady_fps(self) -> float:
        """Frames after the first chunk over the time from its being readable to the end:
        the rate without the scan's start-up (quiet window, session, first chunk)."""
        return (self.num_frames - self.chunk_frames) / (self.end_at - self.readable[0])

    @property
    def producer_fps(self) -> float:
        """The producer's rate in this run: frames over its time to the last close."""
        return self.num_frames / (self.closes[-1] - self.producer["t_start"])

    @property
    def tail_s(self) -> float:
        return self.end_at - float(self.closes[-1])

    def chunk_of(self) -> np.ndarray:
        return np.arange(self.num_frames) // self.chunk_frames


class Bench:
    """Runs cases against one daemon; scratch files removed after each run."""

    def __init__(self, args: argparse.Namespace, work: Path, daemon: DaemonProcess | None,
                 events: Events | None, profile: Profile) -> None:
        self.args, self.work, self.daemon, self.events, self.profile = \
            args, work, daemon, events, profile
        self.counter = 0

    def _options(self, layout: str, rate_hz: float, n: int, *, pauses: bool) -> dict[str, Any]:
        a = self.args
        return {"layout": layout, "num_frames": n, "frame_side": self.profile.side,
                "rate_hz": rate_hz, "apx": False, "frames_per_file": a.frames_per_file,
                "partial_fraction": a.partial_fraction, "end_marker": True,
                # In-place writes in pieces keep their habit; their 2 ms pauses would
                # cap a producer meant to run as fast as it can.
                "partial_pause_s": 0.002 if pauses else 0.0}

    def _start_producer(self, root: Path, options: dict[str, Any]) -> tuple[Any, ...]:
        n = options["num_frames"]
        times = SPAWN.RawArray("d", n)
        ready, go, out = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
        proc = SPAWN.Process(target=producer_main, args=(
            str(root), options, self.args.pool, self.profile.dtype, times, ready, go, out),
            daemon=True)
        proc.start()
        if not ready.wait(120):
            raise RuntimeError("the producer did not start")
        return proc, times, go, out

    @staticmethod
    def _producer_result(proc: Any, out: Any, timeout_s: float) -> dict[str, Any]:
        result = out.get(timeout=timeout_s)
        proc.join(10)
        if "error" in result:
            raise RuntimeError(f"producer failed: {result['error']}")
        return result

    def _start_poller(self, master: Path, timeout_s: float) -> tuple[Any, Any]:
        ready, out = SPAWN.Event(), SPAWN.Queue()
        proc = SPAWN.Process(target=poller_main, args=(
            str(master), self.args.poll_ms / 1000, timeout_s, ready, out), daemon=True)
        proc.start()
        if not ready.wait(60):
            raise RuntimeError("the poller did not start")
        return proc, out

    def _new_name(self, case_name: str) -> str:
        self.counter += 1
        return f"{case_name}_{self.counter:03d}_{os.getpid()}"

    def _timeout(self, n: int, rate_hz: float) -> float:
        return 60.0 + n / 100.0 + (n / rate_hz if rate_hz else 0.0)

    def _cleanup(self, *paths: Path) -> None:
        for p in paths:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
        if self.daemon is not None:
            for p in self.daemon.out.iterdir():
                p.unlink(missing_ok=True)
        os.sync()
        time.sleep(0.3)

    def producer_alone(self, layout: str, n: int) -> dict[str, Any]:
        """The simulator at full speed into an unwatched directory."""
        root = self.work / "alone" / self._new_name(f"alone-{layout}")
        proc, times, go, out = self._start_producer(root, self._options(layout, 0, n, pauses=False))
        wait_for_quiet(self.args.wait_quiet)
        go.set()
        result = self._producer_result(proc, out, self._timeout(n, 0))
        closes = np.frombuffer(times, np.float64).copy()
        result["fps"] = n / (closes[-1] - result["t_start"])
        self._cleanup(root.parent)
        return result

    def run(self, case: Case, n: int) -> Run:
        assert self.daemon is not None and self.events is not None
        name = self._new_name(case.name)
        master = self.daemon.out / f"{name}.ptyd"
        drain = case.kind == "drain"
        target = self.daemon.root / name
        root = self.work / "staging" / name if drain else target
        options = self._options(case.layout, case.rate_hz, n, pauses=case.kind == "latency")
        timeout = self._timeout(n, case.rate_hz)
        proc, times, go, out = self._start_producer(root, options)
        if drain:  # written beforehand, untimed
            go.set()
            producer = self._producer_result(proc, out, timeout)
            os.sync()
            time.sleep(0.3)
        poller, poll_out = self._start_poller(master, timeout)
        wait_for_quiet(self.args.wait_quiet)
        procs0 = cpu_by_process()
        cpu0, busy0, main0 = self.daemon.cpu_s(), busy_cpu_s(), time.process_time()
        if drain:
            t0 = time.time()
            os.rename(root, target)
        else:
            go.set()
            producer = self._producer_result(proc, out, timeout)
        polled = poll_out.get(timeout=timeout + 30)
        poller.join(10)
        cpu = self.daemon.cpu_s() - cpu0
        own = cpu + polled["cpu_s"] + (time.process_time() - main0) + \
            (0.0 if drain else producer["cpu_s"])
        busy = busy_cpu_s() - busy0
        others = max(0.0, busy - own)
        assert self.daemon.proc is not None
        top = top_others(procs0, cpu_by_process(),
                         {os.getpid(), self.daemon.proc.pid, proc.pid or 0, poller.pid or 0})
        if polled["end_at"] is None:
            raise RuntimeError(f"{name}: the master never said complete (poller: "
                               f"{polled['status']}, {polled['errors']} errors, last "
                               f"{polled['last_error']!r}); daemon log:\n{self.daemon.log_tail()}")
        closes = np.frombuffer(times, np.float64).copy()
        if not drain:
            t0 = float(closes[0])
        time.sleep(0.2)  # the last events
        events = self.events.of(name, "chunk.written")
        status = self.daemon.scan_status(name) or {}
        run = Run(case=case, num_frames=n, t0=t0, end_at=polled["end_at"], closes=closes,
                  file_closes=file_close_times(closes, case.layout, self.args.frames_per_file,
                                               producer["t_end"]),
                  readable={k: v[0] for k, v in polled["readable"].items()},
                  chunk_frames=self.args.chunk_frames, producer=producer, poller=polled,
                  events=events, daemon_cpu_s=cpu, others_cpu_s=others, others_top=top,
                  busy_cpu_s=busy, status=status)
        check(run)
        self._cleanup(target, root)
        return run


def file_close_times(closes: np.ndarray, layout: str, per_file: int, t_end: float) -> np.ndarray:
    """When each frame's file was closed: PtyPy, at its on_frame; HDF5, at the on_frame of
    its stack's last frame (the last, short stack is closed after the loop: ``t_end``)."""
    if layout == "ptypy":
        return closes
    n = len(closes)
    last = np.minimum((np.arange(n) // per_file + 1) * per_file, n) - 1
    out = closes[last]
    if n % per_file:
        out[last == n - 1] = t_end
    return out


def check(run: Run) -> None:
    """Refuse figures from a run that lost frames or chunks."""
    n_chunks = -(-run.num_frames // run.chunk_frames)
    status = run.poller["status"]
    problems = []
    if status.get("state") != "complete" or status.get("frames_written") != run.num_frames:
        problems.append(f"master status {status}")
    if status.get("frames_missing"):
        problems.append(f"{status['frames_missing']} frames missing")
    if sorted(run.readable) != list(range(n_chunks)):
        problems.append(f"chunks readable {sorted(run.readable)}, expected 0..{n_chunks - 1}")
    if run.status.get("frames_failed"):
        problems.append(f"{run.status['frames_failed']} frames failed")
    if run.producer["written"] != run.num_frames:
        problems.append(f"producer wrote {run.producer['written']}")
    if problems:
        sys.exit(f"{run.case.name}: invalid run: {'; '.join(problems)}")


# --------------------------------------------------------------------------- figures


def pct(values: np.ndarray | list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q))


@dataclass
class LatencyRow:
    case: Case
    n: int
    fill_s: float
    frame: tuple[float, float]
    chunk: tuple[float, float]
    event: tuple[float, float] | None
    daemon: tuple[float, float] | None
    fps_producer: float
    slowest: str  # the slowest chunks (key: overhead in ms)
    fill_actual: tuple[float, float]  # p50 and max of the chunks' real fill times

    @property
    def goal_s(self) -> float:
        return self.fill_s + LATENCY_SLACK_S

    @property
    def met(self) -> str:
        return "yes" if self.frame[1] <= self.goal_s else "NO"


def latency_row(run: Run) -> LatencyRow:
    chunk_of = run.chunk_of()
    readable = np.array([run.readable[k] for k in range(chunk_of[-1] + 1)])
    frame_lat = readable[chunk_of] - run.file_closes
    last = np.minimum((np.arange(len(readable)) + 1) * run.chunk_frames, run.num_frames) - 1
    chunk_lat = readable - run.file_closes[last]
    emitted = {b["key"]: b["time"] for _, b in run.events}
    event = daemon = None
    if len(emitted) == len(readable):
        emit = np.array([emitted[k] for k in range(len(readable))])
        ev = emit[chunk_of] - run.file_closes
        event = (pct(ev, 50), pct(ev, 99))
        own = [b["latency_s"] for _, b in run.events if b.get("latency_s") is not None]
        daemon = (pct(own, 50), pct(own, 99)) if own else None
    slowest = ", ".join(f"{k}: {chunk_lat[k] * 1000:.0f}" for k in np.argsort(chunk_lat)[::-1][:4])
    # The producer's own pace: a chunk cannot be readable before its last frame exists.
    first = np.arange(len(readable)) * run.chunk_frames
    fill = run.closes[last] - run.closes[first]
    return LatencyRow(run.case, run.num_frames, run.chunk_frames / run.case.rate_hz,
                      (pct(frame_lat, 50), pct(frame_lat, 99)),
                      (pct(chunk_lat, 50), pct(chunk_lat, 99)), event, daemon, run.producer_fps,
                      slowest, (pct(fill, 50), float(fill.max())))


@dataclass
class ThroughputRow:
    case: Case
    n: int
    runs: list[Run]
    alone_fps: float | None
    disk_fps: float | None = None  # the same output written by plain write+fsync, frames/s

    @property
    def median(self) -> Run:
        return sorted(self.runs, key=lambda r: r.fps)[len(self.runs) // 2]

    @property
    def fps(self) -> float:
        return float(statistics.median(r.fps for r in self.runs))

    @property
    def steady_fps(self) -> float:
        return float(statistics.median(r.steady_fps for r in self.runs))

    @property
    def producer_fps(self) -> float | None:
        if self.case.kind == "drain":
            return None
        return float(statistics.median(r.producer_fps for r in self.runs))

    @property
    def limit(self) -> str:
        """producer: the daemon kept up with what the producer wrote in the run (end to end
        >= 85 % of it and at most two chunks left to do after the last frame); else CPU
        when the machine's cores were >= 90 % busy, else daemon (its own pace)."""
        r = self.median
        if self.case.kind != "drain":
            assert self.producer_fps is not None
            backlog = r.tail_s * r.fps  # frames still to do when the producer finished
            if self.fps >= PRODUCER_LIMITED * self.producer_fps and \
                    backlog <= 2 * r.chunk_frames:
                return "producer"
        return "CPU" if r.machine_busy >= 0.9 else "daemon"

    @property
    def met(self) -> str:
        return "yes" if self.fps >= self.case.profile.goal_fps else "NO"


def cpu_per_k(seconds: float, n: int) -> float:
    return seconds / n * 1000


def print_run(r: Run) -> None:
    extra = "" if r.case.kind == "drain" else (
        f"  producer {r.producer_fps:7.0f} f/s  tail {r.tail_s * 1000:6.0f} ms")
    print(f"  {r.case.name:<22} {r.num_frames:5d} frames  {r.wall_s:6.2f} s  "
          f"{r.fps:7.0f} frames/s (steady {r.steady_fps:5.0f}){extra}  CPU-s/1000 frames: daemon "
          f"{cpu_per_k(r.daemon_cpu_s, r.num_frames):.2f}, producer "
          f"{cpu_per_k(r.producer['cpu_s'], r.num_frames):.2f}, poller "
          f"{cpu_per_k(r.poller['cpu_s'], r.num_frames):.2f} ({r.poller['opens']} opens); "
          f"daemon {r.daemon_cores:.2f} cores, machine {r.machine_busy:.0%} busy; "
          f"others {r.others_cpu_s:.2f} CPU-s ({r.others_top})"
          f"{'  DISTURBED' if r.disturbed else ''}",
          flush=True)


def disk_alone(work: Path, frames: int, chunk_frames: int, frame_bytes: int) -> float:
    """Frames/s of writing ``frames`` frames' bytes as chunk files by plain
    write + fsync + rename (and a directory fsync), as the daemon's output lands."""
    from bench_prepare_write import write_durably  # the same baseline as the prepare bench

    work.mkdir(parents=True, exist_ok=True)
    block = np.random.default_rng(0).integers(0, 255, chunk_frames * frame_bytes,
                                              np.uint8).tobytes()
    t0 = time.perf_counter()
    for k in range(-(-frames // chunk_frames)):
        write_durably(work / f"c{k}", block)
        dfd = os.open(work, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    seconds = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    return frames / seconds


def print_throughput(rows: list[ThroughputRow]) -> None:
    head = (f"{'case':<22}{'frames':>7}{'rate':>6}{'output':>17}{'e2e f/s':>9}{'steady':>7}"
            f"{'prod f/s':>9}{'alone f/s':>10}{'disk f/s':>9}{'tail ms':>8}{'dCPU/kf':>8}"
            f"{'d cores':>8}{'busy':>6}  "
            f"{'goal':<14}{'met':>4}  limit")
    print("\nThroughput, frames/s (medians of runs; e2e: frames / (frame 0 closed, or the "
          "rename, -> master complete); steady: after the\n  first chunk is readable; prod: the "
          "producer in the run; alone: the producer alone; disk: the same output bytes in "
          "chunk files by plain write+fsync+rename;\n  dCPU/kf: daemon CPU-s per 1000 "
          "frames;\n  d cores: daemon CPU / wall; busy: all cores, every process; limit: producer "
          "if e2e >= 85 % of prod and <= 2 chunks left at its end,\n  else CPU if busy >= "
          "90 %, else daemon)\n" + head + "\n" + "-" * len(head))
    for row in rows:
        r = row.median
        rate = "max" if row.case.rate_hz == 0 else f"{row.case.rate_hz:.0f}"
        if row.case.kind == "drain":
            rate = "drain"
        prod = "-" if row.producer_fps is None else f"{row.producer_fps:.0f}"
        alone = "-" if row.alone_fps is None or row.case.kind == "drain" else f"{row.alone_fps:.0f}"
        tail = "-" if row.case.kind == "drain" else f"{r.tail_s * 1000:.0f}"
        disk = "-" if row.disk_fps is None else f"{row.disk_fps:.0f}"
        print(f"{row.case.name:<22}{row.n:7d}{rate:>6}{row.case.profile.label:>17}"
              f"{row.fps:9.0f}{row.steady_fps:7.0f}{prod:>9}{alone:>10}{disk:>9}{tail:>8}"
              f"{cpu_per_k(r.daemon_cpu_s, r.num_frames):8.2f}{r.daemon_cores:8.2f}"
              f"{r.machine_busy:6.0%}  "
              f">= {row.case.profile.goal_fps:,.0f} f/s{'':<3}{row.met:>4}  {row.limit}")


def print_latency(rows: list[LatencyRow]) -> None:
    def ms(pair: tuple[float, float] | None) -> str:
        return "      -      " if pair is None else f"{pair[0] * 1000:6.0f}/{pair[1] * 1000:<6.0f}"

    head = (f"{'case':<20}{'frames':>7}{'rate':>6}{'fill ms':>8}  {'frame p50/p99':<14}"
            f"{'chunk p50/p99':<14}{'event p50/p99':<14}{'daemon p50/p99':<15}"
            f"{'goal p99 <=':>11}{'met':>5}  {'real fill p50/max':<18}")
    print("\nLatency, ms (frame: its file's close -> its chunk readable by the poller; chunk: "
          "the chunk's last frame file close -> readable;\n  event: frame close -> chunk.written "
          "emitted; daemon: the event's latency_s, daemon's arrival of the last frame -> chunk on "
          "disk;\n  goal: p99 of frame <= fill ms (chunk frames / rate) + 50; real fill: from the "
          "first to the last frame of each chunk as\n  the producer wrote them, which the goal's "
          "fill ms assumes exact)"
          "\n" + head + "\n" + "-" * len(head))
    for row in rows:
        print(f"{row.case.name:<20}{row.n:7d}{row.case.rate_hz:6.0f}{row.fill_s * 1000:8.0f}  "
              f"{ms(row.frame):<14}{ms(row.chunk):<14}{ms(row.event):<14}{ms(row.daemon):<15}"
              f"{row.goal_s * 1000:11.0f}{row.met:>5}  {ms(row.fill_actual):<18}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"cases: {', '.join(CASES)}; --quick runs {', '.join(QUICK)}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short run: 600 frames, one run each, fewer cases (~40 s; full: ~6 min)")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames per throughput run (default 3000; quick 600)")
    parser.add_argument("--latency-seconds", type=float, default=None,
                        help="length of each latency scan, in seconds of acquisition at its "
                             "rate, rounded to whole chunks, at least 3 (default 10; quick 2)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per throughput case, median reported (default 3; quick 1)")
    parser.add_argument("--chunk-frames", type=int, default=100)
    parser.add_argument("--part-bytes", type=int, default=None,
                        help="the daemon's limits.part_bytes (default: its default; 0: chunks "
                             "written whole at their last frame)")
    parser.add_argument("--declare-frame-type", action="store_true",
                        help="the daemon's [scan] frame_shape and frame_dtype set: the first "
                             "chunk does not wait for a second file to agree on the frame "
                             "type (HDF5 stacks: one file is one vote)")
    parser.add_argument("--frames-per-file", type=int, default=100,
                        help="HDF5 layout: frames per stack file (default 100)")
    parser.add_argument("--partial-fraction", type=float, default=0.2,
                        help="PtyPy layout: share of frames written in place in pieces "
                             "(the simulator's default 0.2)")
    parser.add_argument("--pool", type=int, default=64,
                        help="frames synthesised once and cycled by the simulator "
                             "(0: synthesise every frame, ~5 ms each)")
    parser.add_argument("--poll-ms", type=float, default=5.0,
                        help="the poller's interval (a stat; the master is opened when it changed)")
    parser.add_argument("--cases", default=None,
                        help="comma-separated case names, or 'all' (default: all; quick: a subset)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="parent of the scratch directory (default: the temp directory)")
    parser.add_argument("--wait-quiet", type=float, default=None,
                        help="before each run, wait up to this many seconds for the machine to "
                             "be < 15 %% busy (default 30; quick 5; 0: never wait)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    args.frames = args.frames or (600 if args.quick else 3000)
    args.repeat = args.repeat or (1 if args.quick else 3)
    if args.wait_quiet is None:
        args.wait_quiet = 5.0 if args.quick else 30.0
    args.latency_seconds = args.latency_seconds or (2.0 if args.quick else 10.0)
    if args.cases is None:
        names = QUICK if args.quick else list(CASES)
    elif args.cases == "all":
        names = list(CASES)
    else:
        names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    if min(args.frames, args.repeat, args.chunk_frames, args.frames_per_file) < 1:
        parser.error("--frames, --repeat, --chunk-frames and --frames-per-file must be positive")
    if args.dir is not None and not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is not a directory")
    args.cases = [CASES[n] for n in names]
    return args


def latency_frames(args: argparse.Namespace, case: Case) -> int:
    """Whole chunks covering --latency-seconds at the case's rate (at least 3 chunks)."""
    n = round(args.latency_seconds * case.rate_hz / args.chunk_frames) * args.chunk_frames
    return max(3 * args.chunk_frames, n)


def source_state() -> str:
    """The flyprep checkout's commit, and whether its source has uncommitted changes."""
    import flyprep

    repo = Path(flyprep.__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                              check=False, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
                               check=False, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    if not head:
        return "not a git checkout"
    return f"{head}{' + uncommitted changes in src/' if dirty else ''}"


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip()
                     for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "?"
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 1e6:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return f"{os.cpu_count()} CPUs ({model}){mem}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="flyprep-e2e-", dir=args.dir)).absolute()
    import flyprep

    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.2f}; "
          f"Python {sys.version.split()[0]}, flyprep {flyprep.__version__}, h5py "
          f"{h5py.version.version}, HDF5 {h5py.version.hdf5_version}, numpy {np.__version__}; "
          f"source {source_state()}")
    print(f"scratch {work} ({shutil.disk_usage(work).free / 1e9:.0f} GB free); chunks of "
          f"{args.chunk_frames} frames, HDF5 stacks of {args.frames_per_file}, PtyPy in-place "
          f"share {args.partial_fraction:g}, frames "
          f"{'cycled from a pool of ' + str(args.pool) if args.pool else 'synthesised each'}, "
          f"poller every {args.poll_ms:g} ms; throughput: {args.frames} frames x {args.repeat} "
          f"runs; latency scans ~{args.latency_seconds:g} s")
    t_rows: list[ThroughputRow] = []
    l_rows: list[LatencyRow] = []
    all_runs: list[Run] = []
    profiles = list(dict.fromkeys(c.profile for c in args.cases))
    try:
        for profile in profiles:
            cases = [c for c in args.cases if c.profile == profile]
            pwork = work / f"{profile.side}-{profile.dtype}-{profile.compression}"
            print(f"\n== daemon for {profile.label} (prep.shape {profile.side}, "
                  f"compression {profile.compression})", flush=True)
            alone: dict[str, float] = {}
            bench0 = Bench(args, pwork, None, None, profile)
            for layout in dict.fromkeys(c.layout for c in cases if c.kind == "live"):
                fps = [bench0.producer_alone(layout, args.frames)["fps"] for _ in range(args.repeat)]
                alone[layout] = float(statistics.median(fps))
                print(f"  producer alone {layout:<6} {args.frames} frames {profile.side}x"
                      f"{profile.side} {profile.dtype}: {alone[layout]:.0f} frames/s "
                      f"[runs: {' '.join(f'{f:.0f}' for f in fps)}]", flush=True)
            disk_fps = None
            if profile.compression == "none" and any(c.kind != "latency" for c in cases):
                wait_for_quiet(args.wait_quiet)
                disk_fps = disk_alone(pwork / "disk", args.frames, args.chunk_frames,
                                      profile.side * profile.side * np.dtype(profile.dtype).itemsize)
                print(f"  disk alone: {args.frames} frames' output in chunk files written, "
                      f"fsynced and renamed: {disk_fps:.0f} frames/s", flush=True)
            daemon = DaemonProcess(pwork, profile, args.chunk_frames, args.part_bytes,
                                   args.declare_frame_type).start()
            events = Events(daemon.events_endpoint)
            time.sleep(0.3)  # the subscription reaches the publisher
            bench = Bench(args, pwork, daemon, events, profile)
            try:
                # An untimed warm-up scan: imports, plugins, first-scan set-up.
                bench.run(Case("warmup", "live", "ptypy", 0, profile), 2 * args.chunk_frames)
                for case in cases:
                    if case.kind == "latency":
                        run = bench.run(case, latency_frames(args, case))
                        all_runs.append(run)
                        print_run(run)
                        l_rows.append(latency_row(run))
                        row = l_rows[-1]
                        print(f"    latency frame p50/p99 {row.frame[0] * 1000:.0f}/"
                              f"{row.frame[1] * 1000:.0f} ms, chunk overhead p50/p99 "
                              f"{row.chunk[0] * 1000:.0f}/{row.chunk[1] * 1000:.0f} ms, slowest "
                              f"chunks {row.slowest} ms (goal p99 <= {row.goal_s * 1000:.0f} ms: "
                              f"{row.met}); the producer's real chunk fill p50/max "
                              f"{row.fill_actual[0] * 1000:.0f}/"
                              f"{row.fill_actual[1] * 1000:.0f} ms", flush=True)
                    else:
                        runs = []
                        for _ in range(args.repeat):
                            runs.append(bench.run(case, args.frames))
                            all_runs.append(runs[-1])
                            print_run(runs[-1])
                        t_rows.append(ThroughputRow(case, args.frames, runs,
                                                    alone.get(case.layout), disk_fps))
            finally:
                events.close()
                code = daemon.stop()
                if code not in (0, None):
                    print(f"  daemon exited with {code}:\n{daemon.log_tail()}")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if t_rows:
        print_throughput(t_rows)
    if l_rows:
        print_latency(l_rows)
    disturbed = [r.case.name for r in all_runs if r.disturbed]
    if disturbed:
        print(f"\nWARNING: other processes (or kernel threads) took more than 10 % of the machine "
              f"during {len(disturbed)} of {len(all_runs)} runs ({', '.join(disturbed)}): "
              f"those figures are skewed")
    print(f"\n{os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.2f}; "
          f"benchmark took {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

"""End to end: the real daemon process, the simulator writing at rate, a PtyPy-style reader.

Every output is compared with ``prepare_scan`` run on the finished scan directory with the
same settings: an uninterrupted run of the same preparation.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from compare import assert_same_ptyd, ptyd_contents
from daemon_helpers import GEOMETRY, master_state, wait_for

from flyprep.daemon.bus import Subscriber, request
from flyprep.config import parse_config
from flyprep.pipeline import prepare_scan
from flyprep.sim.simulate import simulate_scan
from flyprep.sources.scan_dir import discover

READER = Path(__file__).with_name("ptypy_reader.py")
SIDE = 64


def reference(scan_dir: Path, out: Path, *, allow_missing: bool = False) -> Path:
    """The scan prepared offline, in one go, with the test config's settings."""
    config = parse_config({"geometry": dict(GEOMETRY), "prep": {"shape": 48},
                           "output": {"chunk_frames": 40}})
    prepare_scan(discover(scan_dir), config, out, allow_missing=allow_missing)
    return out


class Simulation(threading.Thread):
    """``simulate_scan`` in a thread; ``stop_after`` frames stops it early."""

    def __init__(self, root: Path, *, stop_after: int | None = None, **options: Any) -> None:
        super().__init__(daemon=True)
        self.root, self.options = root, options
        self.stop = threading.Event()
        self.stop_after = stop_after
        self.result = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None

    def run(self) -> None:
        def on_frame(i: int) -> None:
            if self.stop_after is not None and i + 1 >= self.stop_after:
                self.stop.set()
        try:
            self.result = simulate_scan(self.root, stop_event=self.stop, on_frame=on_frame,
                                        frame_side=SIDE, **self.options)
        except BaseException as exc:  # reported by finish()
            self.error = exc
        self.ended_at = time.time()

    def finish(self, timeout_s: float = 60) -> Any:
        self.join(timeout_s)
        assert not self.is_alive(), "simulator did not finish"
        if self.error is not None:
            raise self.error
        return self.result


class Reader:
    """tests/daemon/ptypy_reader.py as a subprocess on ``master``."""

    def __init__(self, master: Path, out: Path, timeout_s: float = 90) -> None:
        self.out = out
        self.proc = subprocess.Popen([sys.executable, str(READER), str(master), str(out),
                                      str(timeout_s)], stdout=subprocess.PIPE, text=True)
        wait_for(lambda: Path(str(out) + ".ready").exists() or self.proc.poll() is not None,
                 30, "the reader to start")

    def result(self, timeout_s: float = 120) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        stdout, _ = self.proc.communicate(timeout=timeout_s)
        report = json.loads(stdout)
        arrays = dict(np.load(self.out)) if self.out.exists() else {}
        return report, arrays


class Events:
    """The daemon's events (or AstroPix stream), everything received so far."""

    def __init__(self, endpoint: str, topics: tuple[bytes, ...] = (b"",)) -> None:
        self.sub = Subscriber(endpoint, topics=topics)
        self.received: list[tuple[dict[str, Any], list[np.ndarray]]] = []
        time.sleep(0.3)  # let the subscription reach the publisher

    def messages(self) -> list[tuple[dict[str, Any], list[np.ndarray]]]:
        """(body, arrays) of every message received so far."""
        while (msg := self.sub.receive(timeout_s=0)) is not None:
            self.received.append((msg.body, msg.arrays))
        return self.received

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [body for body, _ in self.messages() if body["kind"] == kind]

    def close(self) -> None:
        self.sub.close()


def test_live_scan_is_read_by_a_ptypy_reader_while_it_runs(daemon_process, daemon_dirs, flyprep_process,
                                                           tmp_path):
    root, out, sockets = daemon_dirs
    daemon = daemon_process(apx={"follow": True, "stream": f"ipc://{sockets}/apx"}).start()
    events = Events(f"ipc://{sockets}/ev")
    hits = Events(f"ipc://{sockets}/apx", topics=(b"apx.readouts",))
    master = out / "scan_live.ptyd"
    reader = Reader(master, tmp_path / "read.npz")
    sim = Simulation(root / "scan_live", num_frames=240, rate_hz=150, apx=True,
                     readouts_per_frame=10)
    sim.start()
    result = sim.finish()
    report, got = reader.result()
    assert report["errors"] == [] and report["n_errors"] == 0
    assert report["num_frames"] == 240 and report["frames"] == 240  # EOS reached
    # A reconstruction could start long before the scan ended.
    assert report["first_read"] < sim.ended_at - 0.2
    wait_for(lambda: master_state(master) == "complete", 20, "the master to say complete")
    meta, data, weights, positions = ptyd_contents(reference(root / "scan_live",
                                                             tmp_path / "ref.ptyd"))
    np.testing.assert_array_equal(got["data"], data)
    np.testing.assert_array_equal(got["weights"], weights)
    np.testing.assert_array_equal(got["positions"], positions)
    assert_same_ptyd(master, tmp_path / "ref.ptyd")
    wait_for(lambda: events.of("scan.ended"), 10, "scan.ended")
    chunks = events.of("chunk.written")
    assert [c["key"] for c in chunks] == list(range(6))
    assert all(c["frames_missing"] == 0 and c["latency_s"] is not None for c in chunks)
    assert events.of("scan.started")[0]["num_frames"] == 240
    assert events.of("scan.ended")[0]["state"] == "complete"
    events.close()
    # The AstroPix stream: every readout once, in order, with its hits as an array.
    stream = wait_for(lambda: (m := hits.messages()) and
                      sum(b["n_readouts"] for b, _ in m) == result.apx_records and m, 20,
                      "every .apx readout on the stream")
    ranges = [(b["first_readout"], b["last_readout"]) for b, _ in stream]
    assert ranges[0][0] == 0 and all(a[1] + 1 == b[0] for a, b in zip(ranges, ranges[1:]))
    all_hits = np.concatenate([arrays[0] for _, arrays in stream])
    assert all_hits.size == sum(b["n_hits"] for b, _ in stream) > 0
    hits.close()
    status = flyprep_process("status", "--endpoint", f"ipc://{sockets}/ctl")
    assert status.code == 0
    assert "scan_live: complete, 240/240 frames (100%)" in status.out
    assert "apx: " in status.out and "files=1" in status.out
    assert daemon.stop() == 0


@pytest.mark.parametrize("layout", ["ptypy", "hdf5"])
def test_kill_9_at_random_moments_gives_the_uninterrupted_result(daemon_process, daemon_dirs,
                                                                 tmp_path, layout):
    root, out, _ = daemon_dirs
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    daemon = daemon_process().start()
    master = out / "scan_k.ptyd"
    sim = Simulation(root / "scan_k", layout=layout, num_frames=480, rate_hz=120,
                     frames_per_file=60, apx=False, seed=seed % 1000)
    sim.start()
    # Three interruptions at random moments of the 4 s scan: two kill -9, one SIGTERM.
    moments = sorted(rng.uniform(0.2, 3.8) for _ in range(3))
    kinds = ["kill", "term", "kill"]
    rng.shuffle(kinds)
    t0 = time.monotonic()
    for moment, kind in zip(moments, kinds):
        time.sleep(max(0.0, t0 + moment - time.monotonic()))
        if kind == "kill":
            daemon.kill9()
        else:
            assert daemon.stop() == 0, daemon.log_text()
        daemon.start()
    sim.finish()
    wait_for(lambda: master_state(master) == "complete", 60,
             f"the master to say complete (seed {seed}, log:\n{daemon.log_text()})")
    assert_same_ptyd(master, reference(root / "scan_k", tmp_path / "ref.ptyd"))
    names = sorted(p.name for p in out.iterdir() if ".chunk" in p.name)
    kept = [n for n in names if "orphaned" not in n and not n.endswith("tmp")]
    assert kept == [f"scan_k.ptyd.chunk{k:05d}" for k in range(12)], names
    scan = daemon.scan("scan_k")
    assert scan["frames_missing"] == 0 and scan["frames_failed"] == 0, scan
    assert daemon.stop() == 0


def _write_frames(scan_dir: Path, n: int, *, bad: set[int]) -> None:
    """A finished PtyPy-layout scan written by hand; frames in ``bad`` are garbage."""
    (scan_dir / "ccd").mkdir(parents=True)
    (scan_dir / "flyprep-scan.toml").write_text(f"num_frames = {n}\n")
    rng = np.random.default_rng(3)
    lines = []
    for i in range(n):
        name = f"ccd/f_{i:03d}.npy"
        if i in bad:
            (scan_dir / name).write_bytes(b"\x93NUMPY garbage, not a frame")
        else:
            np.save(scan_dir / name, rng.poisson(5, (SIDE, SIDE)).astype(np.int32))
        lines.append(f"{name} {i * 1e-7:.6e} {-i * 1e-7:.6e}\n")
    (scan_dir / "positions.txt").write_text("".join(lines))
    (scan_dir / "flyprep-scan.done").touch()


def test_a_corrupt_frame_file_is_quarantined_and_the_daemon_goes_on(daemon_process,
                                                                    daemon_dirs, tmp_path):
    root, out, sockets = daemon_dirs
    daemon = daemon_process().start()
    events = Events(f"ipc://{sockets}/ev")
    staging = tmp_path / "staging" / "scan_bad"
    _write_frames(staging, 90, bad={7})
    reference(staging, tmp_path / "ref.ptyd", allow_missing=True)
    staging.rename(root / "scan_bad")  # arrives whole, as a directory moved in
    master = out / "scan_bad.ptyd"
    wait_for(lambda: master_state(master) == "complete", 30, "the master to say complete")
    assert_same_ptyd(master, tmp_path / "ref.ptyd")
    _, data, weights, _ = ptyd_contents(master)
    assert not weights[7].any() and not data[7].any() and weights[8].all()
    quarantine = root / "scan_bad" / "flyprep-quarantine"
    entry = json.loads((quarantine / "quarantine.jsonl").read_text().splitlines()[0])
    assert entry["file"] == "ccd/f_007.npy" and entry["indices"] == [7]
    assert (quarantine / entry["moved_to"]).read_bytes().startswith(b"\x93NUMPY garbage")
    failed = wait_for(lambda: events.of("frame.failed"), 10, "frame.failed")
    assert failed[0]["index"] == 7 and "f_007.npy" in failed[0]["path"]
    assert "unreadable" in failed[0]["reason"]
    events.close()
    # ... and the daemon still serves the next scan.
    sim = Simulation(root / "scan_next", num_frames=80, rate_hz=0, apx=False)
    sim.start()
    sim.finish()
    wait_for(lambda: master_state(out / "scan_next.ptyd") == "complete", 30, "next scan")
    assert daemon.scan("scan_bad")["frames_failed"] == 1
    assert daemon.stop() == 0


def test_a_scan_ended_early_by_command_still_lets_readers_reach_the_end(daemon_process,
                                                                        daemon_dirs, tmp_path,
                                                                        flyprep_process):
    root, out, sockets = daemon_dirs
    daemon = daemon_process().start()
    master = out / "scan_short.ptyd"
    reader = Reader(master, tmp_path / "read.npz")
    sim = Simulation(root / "scan_short", num_frames=200, rate_hz=200, stop_after=70,
                     apx=False)
    sim.start()
    assert sim.finish().frames_written == 70
    wait_for(lambda: (s := daemon.scan("scan_short")) and s["frames_done"] >= 70, 20,
             "the daemon to take the 70 frames")
    ended = flyprep_process("end-scan", "scan_short", "--endpoint", f"ipc://{sockets}/ctl")
    assert ended.code == 0 and "master will say complete" in ended.out, ended.err
    report, got = reader.result()
    assert report["n_errors"] == 0 and report["frames"] == 200  # EOS: num_frames frames
    assert got["weights"][:70].reshape(70, -1).all(axis=1).all()
    assert not got["weights"][70:].any() and not got["data"][70:].any()
    assert master_state(master) == "complete"
    # The status lags the master (the last pushed document, docs/daemon.md): once it says
    # the scan ended, its figures are the final ones (and the daemon no longer runs it).
    scan = daemon.wait_scan("scan_short", ("complete", "aborted", "failed"))
    assert scan["state"] == "complete", scan
    assert scan["frames_missing"] == 130 and scan["end_reason"] == "end_scan command"
    bad = request(f"ipc://{sockets}/ctl", "end_scan", params={"scan": "no_such_scan"})
    assert not bad["ok"] and "no_such_scan" in bad["error"]
    refused = flyprep_process("end-scan", "scan_short", "--endpoint", f"ipc://{sockets}/ctl")
    assert refused.code == 1 and "no running scan named 'scan_short'" in refused.err
    assert daemon.stop() == 0


def test_two_scans_at_once(daemon_process, daemon_dirs, tmp_path):
    root, out, _ = daemon_dirs
    daemon = daemon_process().start()
    sims = [Simulation(root / "scan_a", layout="ptypy", num_frames=200, rate_hz=120,
                       apx=False, seed=1),
            Simulation(root / "scan_b", layout="hdf5", num_frames=200, rate_hz=120,
                       frames_per_file=40, apx=False, seed=2)]
    for sim in sims:
        sim.start()
    seen_together = wait_for(
        lambda: sum(1 for s in daemon.status()["scans"] if s["state"] == "acquiring") == 2,
        20, "both scans acquiring at the same time")
    assert seen_together
    for sim in sims:
        sim.finish()
    for name in ("scan_a", "scan_b"):
        wait_for(lambda n=name: master_state(out / f"{n}.ptyd") == "complete", 30, name)
        assert_same_ptyd(out / f"{name}.ptyd", reference(root / name, tmp_path / f"{name}.ptyd"))
    assert daemon.stop() == 0

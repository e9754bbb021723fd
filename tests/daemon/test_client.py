"""flyprep.client against the real daemon process: the chunk iterator gives exactly the
final .ptyd's frames, weights and positions, whether it starts before the scan, joins at
half, or lives through a kill -9 and restart of the daemon; a failed scan and a dead
daemon end it with a clear error."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_helpers import wait_for
from test_e2e import Simulation

from flyprep.client import Chunk, Client, DaemonGone, ScanFailed
from flyprep.ptyd.reader import open_ptyd

FRAMES, CHUNK = 200, 20


def client_for(sockets: Path, **options: Any) -> Client:
    return Client(events=f"ipc://{sockets}/ev", control=f"ipc://{sockets}/ctl", **options)


class Follower(threading.Thread):
    """``Client.chunks(scan)`` in a thread, from ``wait_for_scan`` on."""

    def __init__(self, sockets: Path, scan: str, **options: Any) -> None:
        super().__init__(daemon=True)
        self.client = client_for(sockets, **options)
        self.scan = scan
        self.chunks: list[Chunk] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.client:
                self.client.wait_for_scan(self.scan, timeout_s=60)
                for chunk in self.client.chunks(self.scan):
                    self.chunks.append(chunk)
        except BaseException as exc:  # reported by the test
            self.error = exc


def assert_same_as_file(chunks: list[Chunk], master: Path) -> None:
    assert [c.key for c in chunks] == list(range(len(chunks)))
    assert [c.frame_start for c in chunks] == [c.key * CHUNK for c in chunks]
    final = list(open_ptyd(master).iter_chunks())
    assert len(chunks) == len(final)
    for got, want in zip(chunks, final):
        np.testing.assert_array_equal(got.data, want.data)
        np.testing.assert_array_equal(got.weights, want.weights)
        np.testing.assert_array_equal(got.positions, want.positions)


def test_the_iterator_started_before_the_scan_gets_every_chunk_once(daemon_dirs,
                                                                    daemon_process):
    root, out, sockets = daemon_dirs
    daemon = daemon_process(output={"chunk_frames": CHUNK}).start()
    follower = Follower(sockets, "scan_a")
    follower.start()
    time.sleep(0.5)
    Simulation(root / "scan_a", num_frames=FRAMES, rate_hz=400).start()
    follower.join(90)
    assert follower.error is None, follower.error
    assert_same_as_file(follower.chunks, out / "scan_a.ptyd")
    daemon.stop()


def test_an_iterator_joining_at_half_gets_the_written_chunks_first(daemon_dirs,
                                                                  daemon_process):
    root, out, sockets = daemon_dirs
    daemon = daemon_process(output={"chunk_frames": CHUNK}).start()
    sim = Simulation(root / "scan_b", num_frames=FRAMES, rate_hz=300)
    sim.start()
    master = out / "scan_b.ptyd"
    wait_for(lambda: master.exists() and open_ptyd(master).n_frames >= FRAMES // 2, 60,
             "half the scan")
    follower = Follower(sockets, "scan_b")
    follower.start()
    follower.join(90)
    sim.finish()
    assert follower.error is None, follower.error
    assert_same_as_file(follower.chunks, master)
    daemon.stop()


def test_the_iterator_lives_through_a_kill_9_and_restart(daemon_dirs, daemon_process):
    root, out, sockets = daemon_dirs
    daemon = daemon_process(output={"chunk_frames": CHUNK}).start()
    follower = Follower(sockets, "scan_c", heartbeat_timeout_s=15)
    follower.start()
    sim = Simulation(root / "scan_c", num_frames=FRAMES, rate_hz=200)
    sim.start()
    wait_for(lambda: len(follower.chunks) >= 3, 60, "three chunks")
    daemon.kill9()
    time.sleep(0.5)
    daemon.start()
    follower.join(90)
    sim.finish()
    assert follower.error is None, follower.error
    assert_same_as_file(follower.chunks, out / "scan_c.ptyd")
    daemon.stop()


def test_a_failed_scan_ends_the_iterator_with_its_error(tmp_path, daemon_dirs,
                                                       daemon_process):
    root, out, sockets = daemon_dirs
    daemon = daemon_process(output={"chunk_frames": CHUNK}).start()
    follower = Follower(sockets, "scan_d")
    follower.start()
    sim = Simulation(root / "scan_d", num_frames=FRAMES, rate_hz=200)
    sim.start()
    wait_for(lambda: len(follower.chunks) >= 1, 60, "a chunk")
    out.rename(tmp_path / "out_gone")  # the output directory vanishes mid-scan
    follower.join(90)
    sim.finish()
    assert isinstance(follower.error, ScanFailed), follower.error
    assert "scan_d" in str(follower.error)
    daemon.stop()


def test_a_dead_daemon_is_reported_within_the_heartbeat_timeout(daemon_dirs,
                                                               daemon_process):
    root, out, sockets = daemon_dirs
    daemon = daemon_process(bus={"heartbeat_s": 0.2}).start()
    with client_for(sockets, heartbeat_timeout_s=1.5) as client:
        events = client.events()
        beat = next(e for e in events if e.kind == "daemon.heartbeat")
        assert beat.run == client.status()["run"]
        daemon.kill9()
        t0 = time.monotonic()
        with pytest.raises(DaemonGone, match="not even a heartbeat"):
            for _ in events:
                pass
        assert time.monotonic() - t0 < 3.0

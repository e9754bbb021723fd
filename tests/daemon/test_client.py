"""flyprep.client against the real daemon process: the chunk iterator gives exactly the
final .ptyd's frames, weights and positions, whether it starts before the scan, joins at
half, or lives through a kill -9 and restart of the daemon; a failed scan and a dead
daemon end it with a clear error."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_helpers import master_state, staged_scan, wait_for, write_scan
from test_e2e import Simulation

from flyprep.client import Chunk, Client, DaemonGone, ScanFailed
from flyprep.errors import PtydError
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
    # The frames arrive in two parts: the first makes one whole chunk, which the follower
    # reads; the output directory then vanishes, and the rest of the frames make the
    # daemon's next write fail. (Vanishing while a chunk was announced and not yet read,
    # the follower would get the reader's error for that chunk's file first.)
    arrive = staged_scan(tmp_path / "staging", root / "scan_d", FRAMES)
    arrive(0, CHUNK + 5)
    wait_for(lambda: len(follower.chunks) >= 1, 60, "a chunk")
    out.rename(tmp_path / "out_gone")  # the output directory vanishes mid-scan
    arrive(CHUNK + 5, FRAMES)
    follower.join(90)
    assert isinstance(follower.error, ScanFailed), follower.error
    assert "scan_d" in str(follower.error)
    daemon.stop()


def test_an_announced_chunk_whose_file_is_gone_raises_the_readers_error_naming_it(
        daemon_dirs, daemon_process):
    """docs/protocol.md: a chunk the daemon announced but whose file cannot be read
    raises the reader's PtydError naming the file; the chunks before it come first."""
    root, out, sockets = daemon_dirs
    daemon = daemon_process(output={"chunk_frames": CHUNK}).start()
    write_scan(root / "scan_g", 3 * CHUNK)
    wait_for(lambda: master_state(out / "scan_g.ptyd") == "complete", 60, "the scan")
    gone = sorted(out.glob("scan_g.ptyd.chunk*"))[1]
    gone.unlink()
    got = []
    with client_for(sockets) as client:
        with pytest.raises(PtydError, match=re.escape(gone.name)):
            for chunk in client.chunks("scan_g"):
                got.append(chunk.key)
    assert got == [0]
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


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_the_apx_records_rebuild_the_file_byte_for_byte_across_a_restart(daemon_dirs,
                                                                         daemon_process, how):
    """The DAQ writes an .apx file while the daemon streams it; the daemon is killed and
    started again in the middle. The header and the records received, each placed at
    its byte range, are the file; a range received twice (sent in the last half second
    before the kill, its offset not kept yet) holds the same bytes."""
    root, out, sockets = daemon_dirs
    daemon = daemon_process(apx={"follow": True, "stream": f"ipc://{sockets}/apx",
                                 "finish_quiet_s": 0.3}).start()
    client = Client(events=f"ipc://{sockets}/ev", control=f"ipc://{sockets}/ctl",
                    apx=f"ipc://{sockets}/apx")
    received: list[Any] = []

    def collect() -> None:
        for event in client.apx_records(timeout_s=8):
            received.append(event)

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    time.sleep(0.3)
    sim = Simulation(root / "scan_x", num_frames=120, rate_hz=60, apx=True,
                     readouts_per_frame=40)
    sim.start()
    wait_for(lambda: sum(1 for e in received if e.kind == "apx.records") >= 3, 60,
             "some records")
    if how == "kill9":
        daemon.kill9()
    else:
        assert daemon.stop() == 0
    daemon.start()
    result = sim.finish()
    collector.join(120)
    assert not collector.is_alive()
    raw = result.apx_path.read_bytes()
    image = bytearray(len(raw))
    covered = np.zeros(len(raw), bool)
    headers = [e for e in received if e.kind == "apx.header"]
    # One per stream start; the restarted daemon's may go out before the subscriber has
    # reconnected (ZeroMQ's slow joiner), which is why apx_header is on the control socket.
    assert 1 <= len(headers) <= 2
    for event in received:
        start = event.start if event.kind == "apx.records" else 0
        data = event.frames[0]
        assert raw[start:start + len(data)] == data  # exact file bytes, wherever they lie
        image[start:start + len(data)] = data
        covered[start:start + len(data)] = True
    assert covered.all() and bytes(image) == raw
    records = [e for e in received if e.kind == "apx.records"]
    assert records[-1].end == len(raw)
    assert client.apx_header(result.apx_path) == raw[:records[0].start]  # control socket
    sent_twice = sum(e.count for e in records) - result.apx_records
    if how == "kill9":
        assert 0 <= sent_twice <= 60 * 40  # the last moments before the kill (DURABLE_LAG_S)
    else:
        assert sent_twice == 0  # a clean restart sends nothing twice
    daemon.stop()


def test_a_scan_finished_by_an_earlier_run_is_read_whole(daemon_dirs, daemon_process):
    root, out, sockets = daemon_dirs
    daemon = daemon_process(output={"chunk_frames": CHUNK}).start()
    Simulation(root / "scan_e", num_frames=60, rate_hz=0).start()
    wait_for(lambda: (daemon.scan("scan_e") or {}).get("state") == "complete", 60,
             "the scan complete")
    daemon.stop()
    daemon.start()  # a new run: it never started scan_e
    with client_for(sockets) as client:
        assert client.wait_for_scan("scan_e", timeout_s=20) == "scan_e"
        chunks = list(client.chunks("scan_e"))
    assert_same_as_file(chunks, out / "scan_e.ptyd")
    daemon.stop()


def test_the_iterator_catches_up_after_lost_messages(daemon_dirs, daemon_process,
                                                     monkeypatch):
    """Every other message never reaches the client (a slow subscriber's losses): the
    gaps in seq make it take a new snapshot, and no chunk is missed or repeated."""
    root, out, sockets = daemon_dirs
    daemon = daemon_process(output={"chunk_frames": CHUNK}, bus={"heartbeat_s": 0.1}).start()
    follower = Follower(sockets, "scan_f")
    real = follower.client._receive
    count = {"n": 0, "dropped": 0, "snapshots": 0}

    def lossy(sub, **kwargs):
        while True:
            event = real(sub, **kwargs)
            count["n"] += 1
            if event is None or count["n"] % 2:
                return event
            count["dropped"] += 1

    real_snapshot = follower.client.snapshot

    def counted_snapshot():
        count["snapshots"] += 1
        return real_snapshot()

    monkeypatch.setattr(follower.client, "_receive", lossy)
    monkeypatch.setattr(follower.client, "snapshot", counted_snapshot)
    follower.start()
    Simulation(root / "scan_f", num_frames=FRAMES, rate_hz=300).start()
    follower.join(90)
    assert follower.error is None, follower.error
    assert count["dropped"] >= 5 and count["snapshots"] >= 3
    assert_same_as_file(follower.chunks, out / "scan_f.ptyd")
    daemon.stop()

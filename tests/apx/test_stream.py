"""Streaming decoded readouts of growing ``.apx`` files over ZeroMQ (ApxStreamer).

Real parts only: files written in pieces by the simulator (in a thread) or by the writer
helper process, a real :class:`~flyprep.daemon.bus.EventPublisher` on ``tcp://127.0.0.1:*`` and
a real SUB socket (linger 0). Every wait is a condition with a deadline.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from flyprep.apx.decode import HIT_DTYPE, DecodedBatch, decode_batch
from flyprep.apx.format import PREFIX_SIZE, ReadoutBatch, open_apx
from flyprep.apx.stream import ApxStreamer
from flyprep.daemon.bus import EventPublisher, decode_message
from flyprep.events import ApxReadouts, MemorySink
from flyprep.sim.simulate import APX_NAME, simulate_scan

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parents[0] / "data" / "apx" / "fixture.apx"
WRITER = HERE / "apx_writer_proc.py"
ANY_PORT = "tcp://127.0.0.1:*"
LOGGER = "flyprep.apx.stream"


# ---------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def raw() -> bytes:
    """The fixture file's bytes (2010 real AstroPix4 readouts)."""
    return FIXTURE.read_bytes()


@pytest.fixture(scope="module")
def starts(raw: bytes) -> list[int]:
    """Offset of every record of the fixture."""
    pos, out = 10 + struct.unpack_from("<I", raw, 6)[0], []
    while pos < len(raw):
        out.append(pos)
        pos += PREFIX_SIZE + struct.unpack_from("<I", raw, pos + 15)[0]
    return out


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def pub() -> Iterator[EventPublisher]:
    """The stream's publisher, as the daemon binds it on ``apx.stream``."""
    publisher = EventPublisher(ANY_PORT).start()
    yield publisher
    publisher.close()


def publisher_of(pub: EventPublisher) -> Callable[[ApxReadouts, Any], None]:
    """The ``publish`` callable exactly as the daemon passes it."""
    return lambda ev, arrays: pub.emit(ev, arrays=arrays)


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Wait until ``cond()`` holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


class Stream:
    """A subscriber to ``apx.readouts``: what arrived, per file, in order."""

    def __init__(self, ctx: zmq.Context, pub: EventPublisher) -> None:
        assert pub.endpoint is not None
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"apx.readouts")
        self.sub.connect(pub.endpoint)
        self.events: dict[str, list[ApxReadouts]] = defaultdict(list)
        self.hits: dict[str, list[np.ndarray]] = defaultdict(list)
        self.seqs: list[int] = []
        self._wait_joined(pub)

    def _wait_joined(self, pub: EventPublisher, timeout_s: float = 5.0) -> None:
        """The slow joiner: emit probes until one arrives, then drain the rest of them."""
        probe = ApxReadouts(path="probe", first_readout=0, last_readout=0, n_readouts=0,
                            n_hits=0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pub.emit(probe)
            if self.sub.poll(20):
                break
        else:
            raise AssertionError("subscriber never joined")
        assert pub.flush()
        while self.sub.poll(50):
            assert decode_message(self.sub.recv_multipart()).event == probe

    def pump(self, cond: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
        """Receive messages until ``cond()`` holds; fail naming ``what`` after the deadline."""
        deadline = time.monotonic() + timeout_s
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            if self.sub.poll(10):
                self._take(self.sub.recv_multipart(copy=False))

    def _take(self, frames: list[Any]) -> None:
        msg = decode_message(frames)
        assert isinstance(msg.event, ApxReadouts)
        # the hits travel as raw bytes of HIT_DTYPE records, one array per message
        assert len(msg.arrays) == 1 and msg.body["arrays"][0]["shape"] == [msg.event.n_hits]
        hits = msg.arrays[0].view(HIT_DTYPE).copy()
        self.seqs.append(msg.seq)
        self.events[msg.event.path].append(msg.event)
        self.hits[msg.event.path].append(hits)

    def readouts(self, path: Path) -> int:
        """Readouts of ``path`` received so far."""
        return sum(ev.n_readouts for ev in self.events[str(path)])

    def assert_no_gaps(self) -> None:
        """No message was lost on the way (else the comparisons would be meaningless)."""
        assert self.seqs == list(range(self.seqs[0], self.seqs[0] + len(self.seqs)))


@pytest.fixture
def stream(ctx: zmq.Context, pub: EventPublisher) -> Stream:
    return Stream(ctx, pub)


def decode_all(batch: ReadoutBatch, carry_extra: bool = False) -> DecodedBatch:
    """``batch`` decoded in one go: the reference to compare the stream with."""
    rec = batch.records
    return decode_batch(batch.payload, rec["offset"], rec["length"], rec["readout_id"],
                        rec["timestamp"], carry_extra=carry_extra)


def read_records(path: Path, n: int | None = None) -> ReadoutBatch:
    """All records of a complete file (the first ``n`` only, if given)."""
    with open_apx(path) as reader:
        batch = reader.read_all()
    if n is None:
        return batch
    return ReadoutBatch(batch.records[:n].copy(), batch.payload)


def check_streamed(stream: Stream, path: Path, batch: ReadoutBatch, dec: DecodedBatch,
                   sink: MemorySink | None = None) -> list[ApxReadouts]:
    """The stream of ``path`` holds ``batch``'s readouts exactly once, in order, with the
    hits of each readout range equal to decoding the whole file at once."""
    events = stream.events[str(path)]
    ids = batch.readout_id
    pos = 0
    for ev, hits in zip(events, stream.hits[str(path)]):
        assert ev.n_readouts >= 1
        assert ev.first_readout == ids[pos]
        assert ev.last_readout == ids[pos + ev.n_readouts - 1]
        lo, hi = np.searchsorted(dec.hit_index, [pos, pos + ev.n_readouts])
        assert ev.n_hits == len(hits) == hi - lo
        assert hits.tobytes() == dec.hits[lo:hi].tobytes()
        pos += ev.n_readouts
    assert pos == len(batch)
    got = np.concatenate(stream.hits[str(path)])
    assert got.tobytes() == dec.hits.tobytes()
    if sink is not None:  # the main bus got the same events, without arrays
        assert [e for e in sink.of_kind(ApxReadouts) if e.path == str(path)] == events
    return events


def start_writer(src: Path, dst: Path, seed: int, *args: object) -> subprocess.Popen:
    """The writer helper process: appends ``src`` to ``dst`` in random pieces."""
    cmd = [sys.executable, str(WRITER), str(src), str(dst), "--seed", str(seed), *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def file_status(streamer: ApxStreamer, path: Path) -> dict[str, Any]:
    status = streamer.status()
    json.dumps(status)  # always plain JSON data
    return status["files"][str(path)]


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("source, carry", [(None, False), (FIXTURE, True)],
                         ids=["synthetic", "fixture-payloads-carry"])
def test_simulated_scan_streams_every_record_once_in_order(
        tmp_path: Path, pub: EventPublisher, stream: Stream, source: Path | None,
        carry: bool) -> None:
    root = tmp_path / "scan_0001"
    path = root / APX_NAME
    sink = MemorySink()
    done: dict[str, Any] = {}

    def simulate() -> None:
        done["result"] = simulate_scan(root, apx=True, num_frames=40, rate_hz=100.0,
                                       frame_side=8, readouts_per_frame=50, seed=3,
                                       partial_fraction=0.0, apx_source=source)

    with ApxStreamer(publisher_of(pub), events=sink, poll_interval_s=0.01,
                     carry_extra=carry) as streamer:
        assert streamer.follow(path, scan="scan_0001")  # before the file exists
        writer = threading.Thread(target=simulate)
        writer.start()
        stream.pump(lambda: not writer.is_alive(), "the simulator")
        writer.join()
        n = done["result"].apx_records
        assert n == 2000 and done["result"].apx_pieces > 10
        assert streamer.finish(path)
        stream.pump(lambda: stream.readouts(path) == n, f"{n} readouts")
        wait_for(lambda: file_status(streamer, path)["state"] == "finished", "finished")
        st = file_status(streamer, path)

    batch = read_records(path)
    dec = decode_all(batch, carry_extra=carry)
    events = check_streamed(stream, path, batch, dec, sink)
    assert len(events) >= 2  # streamed while being written, not only at the end
    assert all(ev.scan == "scan_0001" for ev in events)
    assert st["readouts"] == n and st["hits"] == len(dec.hits) and st["batches"] == len(events)
    assert st["bytes_read"] == path.stat().st_size
    assert st["error"] is None and st["truncation"] is None
    stream.assert_no_gaps()


@pytest.mark.parametrize("into, what", [(5, "record prefix"), (PREFIX_SIZE + 3, "record")])
def test_truncated_end_is_reported_after_every_complete_record(
        tmp_path: Path, pub: EventPublisher, stream: Stream, raw: bytes, starts: list[int],
        into: int, what: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = tmp_path / "cut.apx"
    last = starts[-1]
    with ApxStreamer(publisher_of(pub), poll_interval_s=0.01) as streamer:
        assert streamer.follow(path)
        proc = start_writer(FIXTURE, path, 5, "--stop-at", last + into)
        stream.pump(lambda: proc.poll() is not None, "the writer")
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
        streamer.finish(path)
        wait_for(lambda: file_status(streamer, path)["state"] != "following", "the end")
        n = len(starts) - 1
        stream.pump(lambda: stream.readouts(path) == n, f"{n} readouts")
        status = streamer.status()

    st = status["files"][str(path)]
    assert st["state"] == "finished" and status["truncated"] == 1 and status["failed"] == 0
    assert st["truncation"]["offset"] == last and st["truncation"]["what"] == what
    assert st["truncation"]["present"] == into and st["truncation"]["missing"] > 0
    assert st["error_offset"] == last
    assert str(path) in st["error"] and f"offset {last}" in st["error"]
    assert st["readouts"] == n and st["bytes_read"] == last + into
    batch = read_records(FIXTURE, n)
    check_streamed(stream, path, batch, decode_all(batch))
    logged = [r for r in caplog.records if str(path) in r.getMessage()]
    assert len(logged) == 1 and f"offset {last}" in logged[0].getMessage()
    stream.assert_no_gaps()


def test_corrupt_file_fails_alone_while_another_streams(
        tmp_path: Path, pub: EventPublisher, stream: Stream, raw: bytes, starts: list[int],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    k = len(starts) // 2
    bad_at = starts[k]
    bad_src = tmp_path / "bad_source.apx"
    bad_src.write_bytes(raw[:bad_at] + b"\x00" * 40 + raw[bad_at:])  # garbage in the middle
    bad, good = tmp_path / "bad.apx", tmp_path / "good.apx"
    with ApxStreamer(publisher_of(pub), poll_interval_s=0.01) as streamer:
        assert streamer.follow(bad, scan="s") and streamer.follow(good, scan="s")
        procs = [start_writer(bad_src, bad, 1), start_writer(FIXTURE, good, 2)]  # at once
        stream.pump(lambda: all(p.poll() is not None for p in procs), "the writers")
        assert [p.returncode for p in procs] == [0, 0]
        wait_for(lambda: file_status(streamer, bad)["state"] == "failed", "the failure")
        assert file_status(streamer, good)["state"] == "following"
        assert streamer.finish(good) and streamer.finish(bad)  # finish() of a failed file: no-op
        wait_for(lambda: file_status(streamer, good)["state"] == "finished", "good finished")
        stream.pump(lambda: stream.readouts(good) == len(starts), "all of the good file")
        stream.pump(lambda: stream.readouts(bad) == k, "the bad file's good records")
        status = streamer.status()

    st = status["files"][str(bad)]
    assert st["state"] == "failed" and st["error_offset"] == bad_at
    assert str(bad) in st["error"] and f"offset {bad_at}" in st["error"]
    assert "record magic" in st["error"] and st["readouts"] == k
    assert status["running"] and status["failed"] == 1 and status["truncated"] == 0
    assert status["files"][str(good)]["error"] is None
    check_streamed(stream, bad, read_records(FIXTURE, k), decode_all(read_records(FIXTURE, k)))
    full = read_records(FIXTURE)
    check_streamed(stream, good, full, decode_all(full))
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(bad) in errors[0].getMessage()  # logged once
    stream.assert_no_gaps()


def test_follow_is_idempotent_poke_polls_and_close_finishes_nothing(
        tmp_path: Path, pub: EventPublisher, stream: Stream, raw: bytes, starts: list[int],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    path = tmp_path / "run.apx"
    half, cut = starts[1000], starts[-1] + PREFIX_SIZE + 3  # the file ends mid-record
    path.write_bytes(raw[:half])
    # the timer (60 s) never fires during the test: only the first poll and pokes read
    streamer = ApxStreamer(publisher_of(pub), poll_interval_s=60.0)
    assert not streamer.poke(path)  # not followed: nothing to do
    assert streamer.follow(path)  # before start(): polled once the thread runs
    streamer.start()
    assert streamer.start() is streamer
    stream.pump(lambda: stream.readouts(path) == 1000, "the first half")
    assert streamer.follow(path) and streamer.follow(str(path)) and streamer.follow(
        path.parent / "." / path.name)
    assert list(streamer.status()["files"]) == [str(path)]
    with open(path, "ab") as f:
        f.write(raw[half:cut])
    assert streamer.poke(path)
    stream.pump(lambda: stream.readouts(path) == len(starts) - 1, "the poked readouts")
    streamer.close()
    streamer.close()

    status = streamer.status()
    st = status["files"][str(path)]
    assert not status["running"]
    assert st["state"] == "following" and st["error"] is None and st["truncation"] is None
    assert status["truncated"] == status["failed"] == 0 and not caplog.records
    assert st["bytes_read"] == cut and st["readouts"] == len(starts) - 1
    assert not streamer.follow(tmp_path / "other.apx") and not streamer.finish(path)
    assert not streamer.poke(path)
    batch = read_records(FIXTURE, len(starts) - 1)
    check_streamed(stream, path, batch, decode_all(batch))  # each readout exactly once
    stream.assert_no_gaps()


def test_bounded_polls_and_extra_bytes_carried_across_polls(
        tmp_path: Path, pub: EventPublisher, stream: Stream, raw: bytes,
        starts: list[int]) -> None:
    # readout 2002 ends with extra bytes that the next readout completes (0x01): split
    # the file right after it, so that the two readouts come in different polls
    split = starts[2003]
    path = tmp_path / "carry.apx"
    path.write_bytes(raw[:split])
    max_poll = 4096
    with ApxStreamer(publisher_of(pub), poll_interval_s=60.0, max_poll_bytes=max_poll,
                     carry_extra=True) as streamer:
        assert streamer.follow(path)
        # ~100 KiB in polls of 4 KiB: read on at once while behind, not every 60 s
        stream.pump(lambda: stream.readouts(path) == 2003, "the first part")
        with open(path, "ab") as f:
            f.write(raw[split:])
        streamer.poke(path)
        streamer.finish(path)
        stream.pump(lambda: stream.readouts(path) == len(starts), "the rest")
        wait_for(lambda: file_status(streamer, path)["state"] == "finished", "finished")

    full = read_records(FIXTURE)
    dec = decode_all(full, carry_extra=True)
    assert len(dec.hits) == len(decode_all(full).hits) + 2  # carrying matters here
    events = check_streamed(stream, path, full, dec)
    assert events[-2].last_readout == 2002 and events[-1].first_readout == 2003
    ends = [*starts, len(raw)]
    pos, biggest = 0, int(np.diff(ends).max())
    for ev in events:  # one poll read at most max_poll bytes (plus a record begun before)
        assert ends[pos + ev.n_readouts] - ends[pos] <= max_poll + biggest
        pos += ev.n_readouts
    assert len(events) >= len(raw) // (max_poll + biggest)
    stream.assert_no_gaps()


def test_max_files_refuses_active_and_forgets_finished(
        tmp_path: Path, pub: EventPublisher, raw: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    a, b, c = (tmp_path / f"{n}.apx" for n in "abc")
    for p in (a, b, c):
        p.write_bytes(raw)
    with ApxStreamer(publisher_of(pub), poll_interval_s=0.01, max_files=2) as streamer:
        assert streamer.follow(a) and streamer.follow(b)
        assert not streamer.follow(c)  # both still followed: refused, never dropped
        status = streamer.status()
        assert status["refused"] == 1 and str(c) in status["last_refused"]
        assert set(status["files"]) == {str(a), str(b)}
        assert [r.levelno for r in caplog.records] == [logging.ERROR]
        assert str(c) in caplog.records[0].getMessage()
        streamer.finish(a)
        wait_for(lambda: file_status(streamer, a)["state"] == "finished", "a finished")
        assert streamer.follow(c)  # a, finished, is forgotten
        status = streamer.status()
        assert set(status["files"]) == {str(b), str(c)} and status["forgotten"] == 1
        assert status["following"] == 2

"""The messaging layer: events, sinks, the ZeroMQ publisher, control server and client.

Real sockets on 127.0.0.1 random ports (``tcp://127.0.0.1:*``), linger 0 everywhere.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from flyprep.cli import status as status_command
from flyprep.daemon.bus import (
    BusError,
    ControlServer,
    ControlTimeout,
    EventPublisher,
    check_endpoint,
    decode_message,
    request,
)
from flyprep.errors import ConfigError
from flyprep.events import (
    EVENT_TYPES,
    ApxHeaderRead,
    ApxReadouts,
    ApxRecords,
    ChunkWritten,
    DaemonHeartbeat,
    ErrorReported,
    EventSink,
    FanoutSink,
    FrameFailed,
    ScanContinued,
    ScanPaused,
    FrameMissing,
    MemorySink,
    ScanEnded,
    ScanStarted,
    event_from_dict,
)

ANY_PORT = "tcp://127.0.0.1:*"

SAMPLES = [
    ScanStarted(scan="s1", master=Path("/data/s1/master.h5"), num_frames=300, chunk_frames=100),
    ChunkWritten(scan="s1", key=0, frame_start=0, n_frames=100, master="/out/s1.ptyd",
                 file="/out/s1.ptyd.chunk00000", frames_available=100, generation=1,
                 frames_missing=2, latency_s=0.25),
    FrameMissing(scan="s1", index=7, path="/data/s1/f7.h5", reason="never arrived"),
    FrameFailed(scan="s1", index=8, path="/data/s1/f8.h5", reason="truncated file"),
    ScanEnded(scan="s1", state="complete", frames=300, frames_missing=2),
    ScanEnded(scan="s2", state="failed", frames=300, frames_missing=0, error="disk gone"),
    DaemonHeartbeat(uptime_s=1.5, interval_s=1.0,
                    scans=[{"scan": "s1", "state": "acquiring", "frames_available": 100,
                            "num_frames": 300}]),
    ErrorReported(where="scan", message="geometry: energy not given", scan="s3"),
    ScanPaused(scan="s1", reason="low disk space", path="/out", free_bytes=10,
               min_free_bytes=1 << 30),
    ScanContinued(scan="s1", free_bytes=2 << 30),
    ApxReadouts(path="/data/run.apx", first_readout=10, last_readout=19, n_readouts=10, n_hits=42),
    ApxHeaderRead(stream="0123456789abcdef", file="/data/run.apx", readout_uid=4000, length=61),
    ApxRecords(stream="0123456789abcdef", file="/data/run.apx", readout_uid=4000,
               first_readout=10, last_readout=19, count=10, start=61, end=900),
]


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def subscriber(ctx: zmq.Context, endpoint: str, topic: bytes = b"", rcvhwm: int = 0) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    if rcvhwm:
        sub.setsockopt(zmq.RCVHWM, rcvhwm)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(endpoint)
    return sub


def wait_joined(pub: EventPublisher, sub: zmq.Socket, timeout_s: float = 5.0) -> None:
    """The slow joiner: emit probes until one arrives, then drain the rest of them."""
    probe = ScanStarted(scan="probe", master="", num_frames=None, chunk_frames=1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pub.emit(probe)
        if sub.poll(20):
            break
    else:
        raise AssertionError("subscriber never joined")
    assert pub.flush()
    while sub.poll(50):
        assert decode_message(sub.recv_multipart()).event == probe


# ---------------------------------------------------------------------------- events


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.kind)
def test_event_round_trips_through_json(event: object) -> None:
    data = json.loads(json.dumps(event.to_dict()))  # type: ignore[attr-defined]
    assert data["kind"] == event.kind  # type: ignore[attr-defined]
    assert event_from_dict(data) == event
    assert type(event).from_dict({**data, "seq": 3, "future_field": 1}) == event


def test_events_are_immutable_and_validated() -> None:
    with pytest.raises(AttributeError):
        SAMPLES[0].scan = "other"  # type: ignore[misc]
    assert SAMPLES[0].master == "/data/s1/master.h5"  # a Path became a str
    with pytest.raises(ValueError, match="state"):
        ScanEnded(scan="s", state="done", frames=1, frames_missing=0)
    with pytest.raises(ValueError, match="unknown event kind"):
        event_from_dict({"kind": "scan.exploded"})
    with pytest.raises(ValueError, match="'n_frames' is missing"):
        ChunkWritten.from_dict({"scan": "s", "key": "k", "frame_start": 0, "path": "p"})
    with pytest.raises(ValueError, match="kind"):
        ScanEnded.from_dict(SAMPLES[0].to_dict())
    assert set(EVENT_TYPES) == {e.kind for e in SAMPLES}


def test_memory_and_fanout_sinks() -> None:
    class Broken:
        def emit(self, event: object) -> None:
            raise RuntimeError("disk on fire")

    a, b = MemorySink(), MemorySink()
    fan = FanoutSink([a, Broken(), b])
    for sink in (a, fan):
        assert isinstance(sink, EventSink)
    for event in SAMPLES:
        fan.emit(event)
    assert a.events == b.events == SAMPLES
    assert a.of_kind(FrameFailed) == [SAMPLES[3]]
    assert fan.errors == len(SAMPLES) and "disk on fire" in (fan.last_error or "")
    a.clear()
    assert len(a) == 0


# ---------------------------------------------------------------------------- endpoints


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5571", "tcp://localhost:*",
                                      "tcp://[::1]:5571", "tcp://127.0.0.2:1", "ipc:///tmp/x.sock",
                                      "inproc://events"])
def test_check_endpoint_accepts_local(endpoint: str) -> None:
    assert check_endpoint(endpoint) == endpoint


@pytest.mark.parametrize("endpoint", ["tcp://*:5571", "tcp://0.0.0.0:5571", "tcp://10.0.0.5:5571",
                                      "tcp://eth0:5571", "tcp://beamline-host:5571"])
def test_check_endpoint_refuses_remote_unless_allowed(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="not a loopback"):
        check_endpoint(endpoint)
    assert check_endpoint(endpoint, allow_remote=True) == endpoint


@pytest.mark.parametrize("endpoint", ["127.0.0.1:5571", "udp://127.0.0.1:5571", "tcp://127.0.0.1",
                                      "tcp://127.0.0.1:99999", "tcp://127.0.0.1:abc", "tcp://"])
def test_check_endpoint_refuses_malformed(endpoint: str) -> None:
    with pytest.raises(ConfigError):
        check_endpoint(endpoint, allow_remote=True)


def test_publisher_refuses_remote_bind_and_reports_busy_port(ctx: zmq.Context) -> None:
    with pytest.raises(ConfigError):
        EventPublisher("tcp://0.0.0.0:*")
    with EventPublisher(ANY_PORT) as first:
        assert first.endpoint is not None
        with pytest.raises(BusError, match="cannot bind"):
            EventPublisher(first.endpoint).start()


# ---------------------------------------------------------------------------- publisher


def test_subscriber_receives_every_event_in_order(ctx: zmq.Context) -> None:
    with EventPublisher(ANY_PORT) as pub:
        assert pub.endpoint and pub.endpoint.startswith("tcp://127.0.0.1:")
        sub = subscriber(ctx, pub.endpoint)
        wait_joined(pub, sub)
        events = [ChunkWritten(scan="s", key=i, frame_start=100 * i, n_frames=100,
                               master="/out/s.ptyd") for i in range(200)] + SAMPLES
        for event in events:
            pub.emit(event)
        received = []
        while len(received) < len(events) and sub.poll(2000):
            received.append(decode_message(sub.recv_multipart()))
        assert [r.event for r in received] == events
        seqs = [r.seq for r in received]
        assert seqs == list(range(seqs[0], seqs[0] + len(events)))  # no gaps
        assert pub.stats()["dropped"] == 0
        sub.close()


def test_topics_filter_by_kind_and_arrays_travel_raw(ctx: zmq.Context, tmp_path: Path) -> None:
    with EventPublisher(f"ipc://{tmp_path}/events.sock") as pub:
        sub = subscriber(ctx, pub.endpoint or "", topic=b"chunk.")
        # slow joiner, with a topic the probe does not match: probe with chunk events
        probe = SAMPLES[1]
        deadline = time.monotonic() + 5
        while not sub.poll(20):
            assert time.monotonic() < deadline
            pub.emit(probe)
        pub.flush()
        while sub.poll(50):
            sub.recv_multipart()
        image = np.arange(12, dtype=np.uint16).reshape(3, 4)
        pub.emit(SAMPLES[0])  # scan.started: filtered out
        pub.emit(SAMPLES[1], arrays=[image, image.T])  # non-contiguous is made contiguous
        assert sub.poll(2000)
        frames = sub.recv_multipart(copy=False)
        assert frames[0].bytes == b"chunk.written"
        got = decode_message(frames)
        assert got.event == SAMPLES[1]
        np.testing.assert_array_equal(got.arrays[0], image)
        np.testing.assert_array_equal(got.arrays[1], image.T)
        assert got.body["arrays"][0] == {"dtype": "<u2", "shape": [3, 4]}
        assert not sub.poll(100)
        sub.close()


def test_dead_subscriber_never_blocks_emit(ctx: zmq.Context) -> None:
    with EventPublisher(ANY_PORT, queue_size=1000, sndhwm=100) as pub:
        sub = subscriber(ctx, pub.endpoint or "", rcvhwm=10)  # never reads
        wait_joined(pub, sub)
        before = pub.stats()
        event = SAMPLES[1]
        t0 = time.monotonic()
        for _ in range(100_000):
            pub.emit(event)
        elapsed = time.monotonic() - t0
        assert pub.flush(timeout_s=10)
        stats = pub.stats()
        assert elapsed < 5, f"emit blocked: {elapsed:.1f} s for 100k events"
        assert stats["emitted"] - before["emitted"] == 100_000
        # every event is accounted for: sent to ZeroMQ (which drops for the full
        # subscriber) or dropped at the full queue and counted
        assert stats["sent"] + stats["dropped"] + stats["errors"] == stats["emitted"]
        assert stats["errors"] == 0
        assert stats["dropped"] > 0  # the queue (1000) overflowed and it was counted
        sub.close()
    assert pub.stats()["queued"] == 0


def test_emit_after_close_is_dropped_not_raised() -> None:
    pub = EventPublisher(ANY_PORT).start()
    pub.close()
    pub.close()  # idempotent
    pub.emit(SAMPLES[0])
    assert pub.stats()["dropped"] == 1


def test_unserialisable_event_counted_as_error() -> None:
    bad = ScanStarted(scan="s", master="m", num_frames=object(), chunk_frames=1)  # type: ignore[arg-type]
    with EventPublisher(ANY_PORT) as pub:
        pub.emit(bad)
        pub.emit(SAMPLES[0])
        assert pub.flush()
        stats = pub.stats()
        assert stats["errors"] == 1 and stats["sent"] == 1
        assert "scan.started" in stats["last_error"]


# ---------------------------------------------------------------------------- control


def make_server(**extra: object) -> ControlServer:
    def status(params: dict) -> dict:
        return {"scans": [{"scan": "s1", "state": "running", "frames_written": 150,
                           "num_frames": 300, "frames_missing": 2}],
                "publisher": {"sent": 10, "dropped": 0}}

    def explode(params: dict) -> dict:
        raise RuntimeError(f"cannot end {params.get('scan')}")

    return ControlServer(ANY_PORT, {"status": status, "end_scan": explode, **extra}).start()


def test_control_server_answers_and_survives_errors() -> None:
    with make_server(echo=lambda p: p, unserialisable=lambda p: {"x": object()}) as server:
        ep = server.endpoint or ""
        ping = request(ep, "ping")
        assert ping["ok"] is True and ping["result"]["pong"] is True
        status = request(ep, "status")
        assert status == {"ok": True, "command": "status", "result": status["result"]}
        assert status["result"]["scans"][0]["frames_written"] == 150
        assert request(ep, "echo", params={"a": [1, 2]})["result"] == {"a": [1, 2]}

        nack = request(ep, "end_scan", params={"scan": "s7"})
        assert nack["ok"] is False and "RuntimeError: cannot end s7" in nack["error"]
        nack = request(ep, "nonsense")
        assert nack["ok"] is False and "unknown command 'nonsense'" in nack["error"]
        assert request(ep, "unserialisable")["ok"] is False

        raw = zmq.Context.instance().socket(zmq.REQ)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(ep)
        for junk in (b"{not json", b"[1, 2]", b'{"command": 5}', b"\xff\xfe"):
            raw.send(junk)
            assert raw.poll(2000)
            reply = json.loads(raw.recv())
            assert reply["ok"] is False and reply["error"]
        raw.close()

        assert request(ep, "ping")["ok"] is True  # still serving
        st = server.status()
        assert st["requests"] == 11 and st["errors"] == 7
        assert any("cannot end s7" in e for e in st["recent_errors"])


def test_request_to_dead_endpoint_times_out_clearly() -> None:
    with ControlServer(ANY_PORT) as server:
        ep = server.endpoint or ""
    t0 = time.monotonic()
    with pytest.raises(ControlTimeout, match="no reply from .* within 0.3 s.*daemon running"):
        request(ep, "status", timeout_s=0.3)
    assert time.monotonic() - t0 < 2
    with pytest.raises(BusError, match="cannot connect"):
        request("bogus://x", "status", timeout_s=0.3)


def test_close_leaves_no_threads() -> None:
    baseline = threading.active_count()
    pub = EventPublisher(ANY_PORT).start()
    server = make_server()
    assert threading.active_count() == baseline + 2
    pub.emit(SAMPLES[0])
    server.close()
    pub.close()
    assert threading.active_count() == baseline


# ---------------------------------------------------------------------------- status command


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flyprep")
    sub = parser.add_subparsers(dest="command", required=True)
    status_command.add_parser(sub)
    return parser.parse_args(list(argv))


def test_status_command_prints_scans(capsys: pytest.CaptureFixture[str]) -> None:
    with make_server() as server:
        assert status_command.run(parse("status", "--endpoint", server.endpoint or "")) == 0
        out = capsys.readouterr().out
        assert "s1: running, 150/300 frames (50%), 2 missing" in out
        assert "publisher: sent=10, dropped=0" in out
        assert status_command.run(parse("status", "--endpoint", server.endpoint or "", "--json")) == 0
        assert json.loads(capsys.readouterr().out)["scans"][0]["scan"] == "s1"


def test_status_command_unreachable_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    with ControlServer(ANY_PORT) as server:
        ep = server.endpoint or ""
    args = parse("status", "--endpoint", ep, "--timeout", "0.2")
    assert args.control_endpoint == ep
    assert status_command.run(args) == 1
    assert "is the flyprep daemon running" in capsys.readouterr().err
    assert status_command.run(parse("status", "--endpoint", "localhost:5571")) == 2
    from flyprep.cli import daemon_address

    assert daemon_address.resolve(parse("status"), "control").endpoint == "tcp://127.0.0.1:5571"


def test_memory_sink_keeps_only_the_most_recent_events_when_bounded():
    sink = MemorySink(maxlen=3)
    for i in range(10):
        sink.emit(FrameMissing(scan="s", index=i, path="f", reason="r"))
    assert [e.index for e in sink.events] == [7, 8, 9]


def test_subscriber_class_receives_structured_arrays_with_their_fields(tmp_path: Path) -> None:
    from flyprep.daemon.bus import Subscriber

    hits = np.zeros(4, [("chip", "u1"), ("row", "<u2"), ("tot_us", "<f8")])
    hits["row"] = [1, 2, 3, 4]
    hits["tot_us"] = 0.5
    with EventPublisher(f"ipc://{tmp_path}/s.sock") as pub, \
            Subscriber(pub.endpoint or "", topics=[b"chunk."]) as sub:
        deadline = time.monotonic() + 5
        while (got := sub.receive(timeout_s=0.02)) is None:  # slow joiner
            assert time.monotonic() < deadline
            pub.emit(SAMPLES[1])
        pub.flush()
        while sub.receive(timeout_s=0.05) is not None:
            pass
        pub.emit(SAMPLES[0])  # scan.started: not subscribed
        pub.emit(SAMPLES[1], arrays=[hits])
        got = sub.receive(timeout_s=2)
        assert got is not None and got.event == SAMPLES[1]
        assert got.arrays[0].dtype == hits.dtype and got.arrays[0]["row"].tolist() == [1, 2, 3, 4]
        assert sub.receive(timeout_s=0.1) is None  # nothing else, and no wait beyond it


def test_subscriber_refuses_a_malformed_endpoint() -> None:
    from flyprep.daemon.bus import BusError, Subscriber

    with pytest.raises(BusError, match="cannot connect to nonsense"):
        Subscriber("nonsense")


def test_an_idle_publisher_keeps_no_memory_for_subscribers_gone(tmp_path):
    """libzmq frees a gone subscriber's pipe only when the socket processes its commands,
    which a PUB socket that never sends never does: 1,500 subscribers coming and going
    cost an idle socket ~15 MB before the publisher made it process them."""
    import subprocess
    import sys

    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS")).split()[1])

    endpoint = f"ipc://{tmp_path}/idle"
    with EventPublisher(endpoint):
        before = rss_kb()
        subprocess.run([sys.executable, "-c", f"""
import time, zmq
ctx = zmq.Context()
for i in range(1500):
    s = ctx.socket(zmq.SUB); s.setsockopt(zmq.LINGER, 0); s.connect("{endpoint}")
    time.sleep(0.002); s.close()
"""], check=True, timeout=120)
        time.sleep(0.5)
        grown_kb = rss_kb() - before
    assert grown_kb < 6000, f"{grown_kb} KB kept for 1,500 subscribers gone"

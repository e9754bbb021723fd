"""The control socket answers every request, whatever a peer sends, with the real daemon
process: generated junk, 10,000-deep nesting, a 100 MB request, empty and extra frames,
10,000 requests in a burst. The daemon keeps serving and stops on SIGTERM in time."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq
from daemon_helpers import DaemonProcess, daemon_settings, write_toml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flyprep.config import parse_daemon_config
from flyprep.daemon.bus import ControlTimeout, request
from flyprep.daemon.service import Daemon
from flyprep.events import ErrorReported, MemorySink

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """One daemon for the module (hypothesis runs many examples against it)."""
    base = tmp_path_factory.mktemp("control")
    root, out, sockets = base / "root", base / "out", base / "s"
    for d in (root, out, sockets):
        d.mkdir()
    config = write_toml(base / "daemon.toml", daemon_settings(root, out, sockets))
    proc = DaemonProcess(config, f"ipc://{sockets}/ctl", base / "daemon.log").start()
    yield proc
    t0 = time.monotonic()
    assert proc.stop(timeout_s=15) == 0, proc.log_text()
    assert time.monotonic() - t0 < 15


def raw_request(endpoint: str, body: bytes, timeout_s: float = 5.0) -> dict[str, Any]:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(body)
        assert sock.poll(int(timeout_s * 1000)), f"no answer to {body[:60]!r}"
        return json.loads(sock.recv())
    finally:
        sock.close(linger=0)


def alive(daemon: DaemonProcess) -> bool:
    return request(daemon.control, "ping", timeout_s=5)["ok"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=2000) | JSON.map(lambda v: json.dumps(v).encode()) |
       st.fixed_dictionaries({"command": st.sampled_from(
           ["status", "end_scan", "abort_scan", "snapshot", "version", "apx_header", "nope"])},
           optional={"scan": JSON, "abort": JSON, "file": JSON, "x": JSON}).map(
           lambda v: json.dumps(v).encode()))
def test_any_request_gets_an_answer_or_a_nack(daemon: DaemonProcess, body: bytes) -> None:
    reply = raw_request(daemon.control, body)
    assert set(reply) in ({"ok", "command", "result"}, {"ok", "command", "error"})
    if not reply["ok"]:
        assert reply["error"]


def test_hostile_requests_each_get_a_nack_and_the_daemon_goes_on(daemon: DaemonProcess
                                                                   ) -> None:
    deep = raw_request(daemon.control, b"[" * 10_000 + b"]" * 10_000)
    assert not deep["ok"] and "nested too deeply" in deep["error"]
    nested_obj = raw_request(daemon.control, b'{"a":' * 10_000 + b"1" + b"}" * 10_000)
    assert not nested_obj["ok"]
    for body, reason in (
            (b'{"command": "end_scan", "scan": "s", "abort": "no"}', "abort"),
            (b'{"command": "end_scan", "scan": 7}', "scan"),
            (b'{"command": "status", "extra": 1}', "extra"),
            (b'{"command": "abort_scan"}', "scan"),
            (b"", "not JSON"),
            (b"\xff\xfe", "not JSON")):
        reply = raw_request(daemon.control, body)
        assert not reply["ok"] and reason in reply["error"], (body, reply)
    version = request(daemon.control, "version")["result"]
    assert version["protocol"] == 1 and version["version"] and len(version["run"]) == 16
    assert alive(daemon)


def test_a_100_mb_request_is_refused_unread_and_the_daemon_goes_on(daemon: DaemonProcess
                                                                    ) -> None:
    with pytest.raises(ControlTimeout):  # the peer is disconnected before it is read
        request(daemon.control, "ping", params={"pad": "x" * (100 << 20)}, timeout_s=3)
    assert alive(daemon)


def test_empty_and_extra_frames_get_a_nack(daemon: DaemonProcess) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(daemon.control)
    try:
        for frames in ([b"", b"a", b"b"], [b""], [b"", b'{"command": "ping"}', b"x"]):
            sock.send_multipart(frames)
            assert sock.poll(5000)
            reply = json.loads(sock.recv_multipart()[-1])
            assert not reply["ok"] and "expected one request frame" in reply["error"]
        sock.send_multipart([b'{"command": "ping"}'])  # a DEALER without the delimiter
        assert sock.poll(5000)
        assert json.loads(sock.recv_multipart()[-1])["ok"]
    finally:
        sock.close(linger=0)
    assert alive(daemon)


def test_a_burst_of_10000_requests_is_answered_in_full(daemon: DaemonProcess) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(daemon.control)
    try:
        for i in range(10_000):
            body = b'{"command": "ping"}' if i % 2 else b"junk %d" % i
            sock.send_multipart([b"", body])
        answered = {"ok": 0, "nack": 0}
        deadline = time.monotonic() + 60
        while sum(answered.values()) < 10_000:
            assert sock.poll(max(1, int((deadline - time.monotonic()) * 1000))), answered
            reply = json.loads(sock.recv_multipart()[-1])
            answered["ok" if reply["ok"] else "nack"] += 1
        assert answered == {"ok": 5000, "nack": 5000}
    finally:
        sock.close(linger=0)
    assert alive(daemon)


def test_a_control_process_that_dies_stops_the_daemon_non_zero(tmp_path: Path) -> None:
    """The control socket is served by a child process: SIGTERM does not stop it (it
    answers while the daemon stops); if it dies anyway the daemon says so and stops."""
    root, out, sockets = tmp_path / "root", tmp_path / "out", tmp_path / "s"
    for d in (root, out, sockets):
        d.mkdir()
    sink = MemorySink()
    daemon = Daemon(parse_daemon_config(daemon_settings(root, out, sockets)), sinks=[sink])
    daemon.startup()
    loop = threading.Thread(target=daemon.main_loop, daemon=True)
    loop.start()
    try:
        control = daemon.endpoints["control"]
        assert control is not None
        status = request(control, "status", timeout_s=5)["result"]
        pid = status["control"]["pid"]
        assert pid != os.getpid() and pid == daemon._control.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.3)
        assert request(control, "ping", timeout_s=5)["ok"]
        os.kill(pid, signal.SIGKILL)
        loop.join(10)
        assert not loop.is_alive() and "control process ended" in (daemon.failure or "")
        errors = sink.of_kind(ErrorReported)
        assert [(e.where, e.message) for e in errors] == [("daemon", daemon.failure)]
        with pytest.raises(ControlTimeout):
            request(control, "ping", timeout_s=0.5)
    finally:
        daemon.should_exit.set()
        loop.join(10)
        daemon.shutdown()


def test_a_daemon_killed_leaves_no_control_process(daemon_process: Any) -> None:
    """kill -9 of the daemon: its control process sees its stdin end and exits."""
    proc = daemon_process().start()
    pid = proc.status()["control"]["pid"]
    proc.kill9()
    deadline = time.monotonic() + 10
    while _running(pid):
        assert time.monotonic() < deadline, f"control process {pid} still runs"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False

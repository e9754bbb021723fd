"""The control process (daemon/front.py) and the relay of the control server: what is
answered where, what waits for what, and how each side ends."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq

from flyprep.daemon.bus import BusError, ControlServer, request
from flyprep.daemon.control import IpcAccess, Relay
from flyprep.daemon.front import ControlProcess, settings


def _settings(endpoint: str, relayed: list[str]) -> dict[str, Any]:
    return settings(endpoint=endpoint, allow_remote=False, max_request_bytes=1 << 20,
                    ipc_access=IpcAccess(), curve_server_key=None, curve_clients=None,
                    curve_readers=None, mutating=["end_scan"], relayed=relayed,
                    version={"version": "test", "protocol": 1, "run": "r"})


def _daemon_side(tmp_path: Path) -> zmq.Socket:
    """The PAIR socket a relaying control server connects to (the daemon's side)."""
    link = zmq.Context.instance().socket(zmq.PAIR)
    link.setsockopt(zmq.LINGER, 0)
    link.bind(f"ipc://{tmp_path}/link")
    return link


def test_relayed_commands_wait_for_their_process_while_the_others_are_answered(
        tmp_path: Path) -> None:
    link = _daemon_side(tmp_path)
    pushed: list[tuple[bytes, bytes]] = []
    server = ControlServer(f"ipc://{tmp_path}/ctl", {"status": lambda p: {"pushed": len(pushed)}},
                           relay=Relay(f"ipc://{tmp_path}/link", frozenset({"slow"}),
                                       lambda kind, body: pushed.append((kind, body))))
    server.start()
    endpoint = f"ipc://{tmp_path}/ctl"
    slow: dict[str, Any] = {}
    try:
        # Nothing is read before the first push: the request waits in the socket.
        early = threading.Thread(target=lambda: slow.update(ping=request(endpoint, "ping",
                                                                         timeout_s=10)))
        early.start()
        time.sleep(0.3)
        assert "ping" not in slow
        link.send_multipart([b"status", b"{}"])
        early.join(10)
        assert slow["ping"]["ok"] and pushed == [(b"status", b"{}")]

        # A relayed command goes to the link; ping and status are answered meanwhile.
        waiter = threading.Thread(target=lambda: slow.update(reply=request(
            endpoint, "slow", params={"x": 1}, timeout_s=10)))
        waiter.start()
        assert link.poll(5000)
        kind, token, body = link.recv_multipart()
        assert kind == b"request" and json.loads(body) == {"x": 1, "command": "slow"}
        for _ in range(20):
            assert request(endpoint, "ping", timeout_s=2)["ok"]
        assert request(endpoint, "status", timeout_s=2)["result"] == {"pushed": 1}
        assert "reply" not in slow
        answer = {"ok": False, "command": "slow", "error": "it failed there"}
        link.send_multipart([b"reply", token, b"0", json.dumps(answer).encode()])
        waiter.join(10)
        assert slow["reply"] == answer
        stats = server.status()
        assert stats["requests"] == 23 and stats["errors"] == 1
        assert stats["recent_errors"] == ["it failed there"] and stats["pid"] == os.getpid()
        # A reply nobody waits for (its token unknown) is dropped.
        link.send_multipart([b"reply", b"999", b"1", b"{}"])
        assert request(endpoint, "ping", timeout_s=2)["ok"]
    finally:
        server.close()
        link.close(linger=0)


def test_the_control_process_answers_pushed_status_and_relays_the_rest(
        tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []

    def echo(params: dict[str, Any]) -> dict[str, Any]:
        calls.append(params)
        return {"echo": params}

    endpoint = f"ipc://{tmp_path}/ctl"
    made = {"n": 0}

    def status() -> dict[str, Any]:
        made["n"] += 1
        return {"state": "running", "as_of": time.time(), "n": made["n"]}

    proc = ControlProcess(_settings(endpoint, ["echo", "reset_stats"]),
                          {"echo": echo, "reset_stats": lambda p: {"reset": True}}, status)
    proc.start()
    try:
        assert proc.endpoint == endpoint and proc.pid is not None
        proc.open()
        first = request(endpoint, "status", timeout_s=5)["result"]
        assert first["state"] == "running" and first["control"]["pid"] == proc.pid
        time.sleep(0.35)  # pushed every 0.1 s
        later = request(endpoint, "status", timeout_s=5)["result"]
        assert later["n"] >= first["n"] + 2 and later["as_of"] > first["as_of"]
        assert request(endpoint, "version", timeout_s=5)["result"]["version"] == "test"
        nack = request(endpoint, "version", params={"x": 1}, timeout_s=5)
        assert not nack["ok"] and "x: Extra inputs are not permitted" in nack["error"]
        assert request(endpoint, "echo", params={"a": [1]}, timeout_s=5)["result"] == {
            "echo": {"a": [1]}}
        assert calls == [{"a": [1]}]
        assert request(endpoint, "nope", timeout_s=5)["error"].startswith("unknown command")
        assert request(endpoint, "status", timeout_s=5)["result"]["control"]["requests"] >= 5
        proc.reset_stats()  # as the daemon's reset_stats handler does
        assert request(endpoint, "reset_stats", timeout_s=5)["ok"]
        control = request(endpoint, "status", timeout_s=5)["result"]["control"]
        assert control["requests"] == 1 and control["errors"] == 0  # the reset's own reply
    finally:
        assert proc.close()
    assert not Path(f"/proc/{proc.pid}").exists() or _zombie(proc.pid)
    with pytest.raises(BusError):
        request(endpoint, "ping", timeout_s=0.3)


def test_a_control_process_that_cannot_bind_says_why(tmp_path: Path) -> None:
    taken = zmq.Context.instance().socket(zmq.REP)
    taken.bind("tcp://127.0.0.1:*")
    endpoint = taken.getsockopt(zmq.LAST_ENDPOINT).decode()
    try:
        proc = ControlProcess(_settings(endpoint, []), {}, dict)
        with pytest.raises(BusError, match="cannot bind"):
            proc.start()
        assert proc.close()
    finally:
        taken.close(linger=0)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_relayed_request_still_waiting_when_the_server_stops_gets_a_nack(
        tmp_path: Path) -> None:
    link = _daemon_side(tmp_path)
    server = ControlServer(f"ipc://{tmp_path}/ctl", relay=Relay(
        f"ipc://{tmp_path}/link", frozenset({"slow"}), lambda kind, body: None)).start()
    got: dict[str, Any] = {}
    try:
        link.send_multipart([b"status", b"{}"])
        waiter = threading.Thread(target=lambda: got.update(reply=request(
            f"ipc://{tmp_path}/ctl", "slow", timeout_s=10)))
        waiter.start()
        assert link.poll(5000) and link.recv_multipart()[0] == b"request"
    finally:
        server.close()
        link.close(linger=0)
    waiter.join(10)
    assert got["reply"] == {"ok": False, "command": "slow",
                            "error": "slow: the control server is stopping"}


def test_the_control_process_does_not_import_from_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "ran"
    (planted / "zmq.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    monkeypatch.chdir(planted)
    proc = ControlProcess(_settings(f"ipc://{tmp_path}/ctl", []), {}, dict)
    proc.start()
    try:
        proc.open()
        assert request(f"ipc://{tmp_path}/ctl", "ping", timeout_s=5)["ok"]
    finally:
        assert proc.close()
    assert not marker.exists()


def test_a_status_asked_after_a_quiet_spell_waits_for_a_fresh_push(tmp_path: Path) -> None:
    """Nobody asked for a while, so the daemon pushes only every second: a status asked
    now is answered after a fresh push, never from the older document."""
    endpoint = f"ipc://{tmp_path}/ctl"
    state = {"v": 0}
    proc = ControlProcess(_settings(endpoint, []), {},
                          lambda: {"state": "running", "as_of": time.time(), **state})
    proc.start()
    try:
        proc.open()
        deadline = time.monotonic() + 10
        while proc.last_status is None:  # the first push is out
            assert time.monotonic() < deadline
            time.sleep(0.01)
        state["v"] = 1  # changed after it: the next idle push is a second away
        assert request(endpoint, "status", timeout_s=5)["result"]["v"] == 1
        state["v"] = 2  # asked just now: answered from pushes at most 0.25 s old
        time.sleep(0.3)
        assert request(endpoint, "status", timeout_s=5)["result"]["v"] == 2
    finally:
        assert proc.close()

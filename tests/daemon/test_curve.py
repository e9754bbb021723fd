"""Who may change a scan: CURVE on tcp (pyzmq's authenticator, keys from the config),
against the real daemon; read-only clients; no CURVE on tcp means nobody may change a
scan there; keys, key directories and the config's rules."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon_helpers import DaemonProcess, daemon_settings, wait_for, write_toml
from flyprep.client import Client, ClientError
from flyprep.cli.keys import write_pair
from flyprep.config import load_daemon_config, parse_daemon_config
from flyprep.daemon.bus import BusError, ControlServer, Subscriber, request
from flyprep.daemon.curve import ClientKeys, Guard, KeyDirectory, client_keys, load_key
from flyprep.errors import ConfigError
from test_e2e import Simulation

FLYPREP = [sys.executable, "-m", "flyprep.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keys_of(server_public: Path, secret: Path) -> ClientKeys:
    pair = load_key(secret, secret=True)
    assert pair.secret is not None
    return ClientKeys(load_key(server_public, secret=False).public, pair.public, pair.secret)


@pytest.fixture
def keyring(tmp_path: Path) -> dict[str, Path]:
    """A server pair, an authorised client (alice), a reader (bob), a stranger (mallory)."""
    private = tmp_path / "private"
    clients, readers = tmp_path / "clients", tmp_path / "readers"
    clients.mkdir()
    readers.mkdir()
    paths: dict[str, Path] = {"clients": clients, "readers": readers}
    for name in ("server", "alice", "bob", "mallory"):
        public, secret = write_pair(private, name)
        paths[name], paths[f"{name}_secret"] = public, secret
    shutil.copy(paths["alice"], clients)
    shutil.copy(paths["bob"], readers)
    return paths


def curve_daemon(tmp_path: Path, dirs: tuple[Path, Path, Path], keyring: dict[str, Path],
                 **bus: object) -> DaemonProcess:
    root, out, sockets = dirs
    control = f"tcp://127.0.0.1:{free_port()}"
    data = daemon_settings(root, out, sockets, bus={
        "events": f"tcp://127.0.0.1:{free_port()}", "control": control,
        "curve_server_key": str(keyring["server"]), "curve_clients": str(keyring["clients"]),
        "curve_readers": str(keyring["readers"]),
        "curve_client_key": str(keyring["alice_secret"]), **bus})
    path = write_toml(tmp_path / "daemon.toml", data)
    load_daemon_config(path)
    return DaemonProcess(path, control, tmp_path / "daemon.log",
                         keys=keys_of(keyring["server"], keyring["alice_secret"]))


def test_only_an_authorised_key_may_change_a_scan_over_tcp(tmp_path, daemon_dirs, keyring):
    root = daemon_dirs[0]
    daemon = curve_daemon(tmp_path, daemon_dirs, keyring).start()
    alice = daemon.keys
    bob = keys_of(keyring["server"], keyring["bob_secret"])
    mallory = keys_of(keyring["server"], keyring["mallory_secret"])
    sim = Simulation(root / "scan_c", num_frames=2000, rate_hz=50)
    sim.start()
    try:
        wait_for(lambda: daemon.scan("scan_c"), 30, "the scan to start")
        ctl = daemon.control

        # a stranger's key and no key at all: turned down in the handshake, and told so
        # ... at once, not when the request times out
        started = time.monotonic()
        with pytest.raises(BusError, match="refused this client's CURVE key"):
            request(ctl, "status", timeout_s=20, keys=mallory)
        with pytest.raises(BusError, match="wants CURVE keys"):
            request(ctl, "status", timeout_s=20)
        assert time.monotonic() - started < 5
        # a reader queries, but cannot end, abort or reset
        assert request(ctl, "status", keys=bob)["ok"]
        for command in ("end_scan", "abort_scan"):
            nack = request(ctl, command, params={"scan": "scan_c"}, keys=bob)
            assert not nack["ok"] and "not authorised" in nack["error"], nack
        assert not request(ctl, "reset_stats", keys=bob)["ok"]
        assert daemon.scan("scan_c")["state"] == "acquiring"
        status = request(ctl, "status", keys=alice)["result"]
        assert status["control"]["refused"] == 3

        # a reader subscribes; a stranger's subscription is refused, and says why
        with Subscriber(daemon_events(daemon), keys=bob, topics=(b"daemon.",)) as sub:
            assert sub.receive(5.0) is not None
        with Subscriber(daemon_events(daemon), keys=mallory) as sub:
            assert sub.receive(2.0) is None
            assert "refused this client's CURVE key" in (sub.refused() or "")

        # the authorised key ends the scan
        ok = request(ctl, "end_scan", params={"scan": "scan_c"}, keys=alice)
        assert ok["ok"], ok
        wait_for(lambda: daemon.scan("scan_c")["state"] == "complete", 30, "the scan to end")

        # a key added to the directory counts at once, no restart
        shutil.copy(keyring["bob"], keyring["clients"])
        assert request(ctl, "reset_stats", keys=bob)["ok"]
    finally:
        sim.stop.set()
        sim.finish()
        assert daemon.stop() == 0


def daemon_events(daemon: DaemonProcess) -> str:
    return load_daemon_config(daemon.config).bus.events


def test_client_commands_and_library_take_the_keys_from_the_config(tmp_path, daemon_dirs,
                                                                   keyring):
    daemon = curve_daemon(tmp_path, daemon_dirs, keyring).start()
    try:
        env = dict(os.environ, FLYPREP_CLIENT_KEY=str(keyring["bob_secret"]))
        status = subprocess.run([*FLYPREP, "status", "--config", str(daemon.config)],
                                capture_output=True, text=True, timeout=30, env=env)
        assert status.returncode == 0, status.stderr
        refused = subprocess.run([*FLYPREP, "end-scan", "any", "--config", str(daemon.config)],
                                 capture_output=True, text=True, timeout=30, env=env)
        assert refused.returncode == 1 and "not authorised" in refused.stderr
        stranger = dict(os.environ, FLYPREP_CLIENT_KEY=str(keyring["mallory_secret"]))
        denied = subprocess.run([*FLYPREP, "status", "--config", str(daemon.config),
                                 "--timeout", "20"],
                                capture_output=True, text=True, timeout=30, env=stranger)
        assert denied.returncode == 1 and "refused this client's CURVE key" in denied.stderr
        events = subprocess.run([*FLYPREP, "events", "--config", str(daemon.config)],
                                capture_output=True, text=True, timeout=30, env=stranger)
        assert events.returncode == 1 and "refused" in events.stderr

        # the library: the config's own client key (alice), and one given
        with Client(config=daemon.config, heartbeat_timeout_s=3) as client:
            assert client.snapshot()["run"]
            assert next(iter(client.events())).kind
        with Client(config=daemon.config, client_key=keyring["mallory_secret"],
                    heartbeat_timeout_s=2, timeout_s=20) as client:
            with pytest.raises(ClientError, match="refused"):
                client.status()
            with pytest.raises(ClientError, match="refused"):
                next(iter(client.events()))
    finally:
        assert daemon.stop() == 0


def test_tcp_without_curve_answers_queries_but_changes_nothing(tmp_path):
    """The default: tcp on loopback, no CURVE: any local user may read, nobody may change."""
    ended = []
    handlers = {"status": lambda p: {"ok": 1}, "end_scan": lambda p: ended.append(p)}
    with ControlServer(f"tcp://127.0.0.1:{free_port()}", handlers,
                       mutating=("end_scan",)) as server:
        assert request(server.endpoint, "status")["ok"]
        nack = request(server.endpoint, "end_scan", params={"scan": "s"})
        assert not nack["ok"] and "without CURVE nobody may change a scan" in nack["error"]
        assert server.status()["refused"] == 1
    with ControlServer(f"ipc://{tmp_path}/ctl", handlers, mutating=("end_scan",)) as server:
        assert request(server.endpoint, "end_scan", params={"scan": "s"})["ok"]
    assert ended == [{"scan": "s"}]


def test_the_daemon_refuses_to_start_with_a_secret_key_others_can_read(tmp_path, daemon_dirs,
                                                                       keyring):
    daemon = curve_daemon(tmp_path, daemon_dirs, keyring)
    os.chmod(keyring["server_secret"], 0o644)
    run = subprocess.run([*FLYPREP, "run", "--config", str(daemon.config)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr
    assert "server.key_secret" in run.stderr and "chmod 600" in run.stderr


def test_key_files_and_directories(tmp_path, keyring):
    public, secret = write_pair(tmp_path / "k", "carol")
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert oct(public.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(FileExistsError):
        write_pair(tmp_path / "k", "carol")
    with pytest.raises(ConfigError, match="holds no secret key"):
        load_key(public, secret=True)
    with pytest.raises(ConfigError, match="no_such.key"):
        load_key(tmp_path / "no_such.key", secret=False)
    directory = KeyDirectory(keyring["clients"])
    alice = load_key(keyring["alice"], secret=False).public
    assert alice in directory
    carol = load_key(public, secret=False).public
    assert carol not in directory
    shutil.copy(public, keyring["clients"])
    assert carol in directory
    (keyring["clients"] / "alice.key").unlink()
    time.sleep(0.01)
    assert alice not in directory
    # a key file replaced in place (the directory itself unchanged) counts at once too
    shutil.copy(keyring["mallory"], keyring["clients"] / "carol.key")
    mallory = load_key(keyring["mallory"], secret=False).public
    assert mallory in directory and carol not in directory
    with pytest.raises(ConfigError, match="key directory"):
        KeyDirectory(tmp_path / "missing")


def test_refusals_say_what_would_authorise(keyring):
    server = load_key(keyring["server_secret"], secret=True)
    none_named = Guard(server=server, readers="any")
    why = none_named.may_change("tcp://127.0.0.1:1", "somekey")
    assert "names no authorised clients (bus.curve_clients)" in why
    clients = KeyDirectory(keyring["clients"])
    guard = Guard(server=server, authorised=clients)
    alice = load_key(keyring["alice"], secret=False).public.decode()
    assert guard.may_change("tcp://127.0.0.1:1", alice) is None
    assert "not authorised" in guard.may_change("tcp://127.0.0.1:1", None)
    assert guard.may_change("ipc:///run/x", None) is None
    shutil.rmtree(keyring["clients"])
    assert "cannot read its authorised keys" in guard.may_change("tcp://127.0.0.1:1", alice)


def test_ipc_clients_need_no_key_of_their_own(tmp_path, keyring):
    from flyprep.cli.daemon_address import resolve
    from flyprep.cli.main import build_parser

    config = write_toml(tmp_path / "d.toml", {
        "watch": {"roots": [str(tmp_path)]},
        "bus": {"control": f"ipc://{tmp_path}/ctl", "curve_server_key": str(keyring["server"]),
                "curve_readers": "any", "curve_client_key": str(tmp_path / "none.key_secret")}})
    args = build_parser().parse_args(["status", "--config", str(config)])
    address = resolve(args, "control")
    assert address is not None and address.keys is None
    events = build_parser().parse_args(["events", "--config", str(config)])
    assert resolve(events, "events") is None  # tcp events: the missing key is said


def test_config_rules_for_curve(tmp_path, keyring):
    base = {"watch": {"roots": [str(tmp_path)]}}
    remote = {"allow_remote": True, "events": "tcp://0.0.0.0:5570"}
    with pytest.raises(ConfigError, match="remote endpoint needs CURVE"):
        parse_daemon_config({**base, "bus": remote})
    with pytest.raises(ConfigError, match="apx.stream.*remote endpoint needs CURVE"):
        parse_daemon_config({**base, "bus": {"allow_remote": True},
                             "apx": {"stream": "tcp://10.0.0.1:5572"}})
    with pytest.raises(ConfigError, match="need the server's key"):
        parse_daemon_config({**base, "bus": {"curve_clients": str(keyring["clients"])}})
    with pytest.raises(ConfigError, match="curve_clients"):
        parse_daemon_config({**base, "bus": {"curve_server_key": str(keyring["server"])}})
    config = parse_daemon_config({**base, "bus": {
        **remote, "curve_server_key": str(keyring["server"]), "curve_readers": "any"}})
    assert config.bus.curve_readers == "any"
    # clients read the public key only; the daemon needs the secret beside it
    bus = parse_daemon_config({**base, "bus": {
        "curve_server_key": str(keyring["server"]), "curve_clients": str(keyring["clients"]),
        "curve_client_key": str(keyring["alice_secret"])}}).bus
    assert client_keys(bus).public == load_key(keyring["alice"], secret=False).public
    guard = Guard.from_config(bus)
    assert guard.curve and guard.server.public == load_key(keyring["server"], secret=False).public
    guard.close()
    check = subprocess.run([*FLYPREP, "check-config", str(write_toml(
        tmp_path / "remote.toml", {**base, "bus": remote}))], capture_output=True, text=True,
        timeout=30)
    assert check.returncode == 2 and "bus.events" in check.stderr and "CURVE" in check.stderr


def test_any_reader_may_read_with_readers_any(tmp_path, daemon_dirs, keyring):
    daemon = curve_daemon(tmp_path, daemon_dirs, keyring, curve_readers="any").start()
    try:
        mallory = keys_of(keyring["server"], keyring["mallory_secret"])
        assert request(daemon.control, "status", keys=mallory)["ok"]
        nack = request(daemon.control, "reset_stats", keys=mallory)
        assert not nack["ok"] and "not authorised" in nack["error"]
        assert request(daemon.control, "reset_stats", keys=daemon.keys)["ok"]
    finally:
        assert daemon.stop() == 0


def test_the_apx_stream_is_a_curve_server_too(tmp_path, daemon_dirs, keyring):
    apx = f"tcp://127.0.0.1:{free_port()}"
    daemon = curve_daemon(tmp_path, daemon_dirs, keyring)
    data = load_daemon_config(daemon.config).model_dump(mode="json")
    data["apx"].update({"follow": True, "stream": apx})
    write_toml(daemon.config, data)
    daemon.start()
    try:
        bob = keys_of(keyring["server"], keyring["bob_secret"])
        mallory = keys_of(keyring["server"], keyring["mallory_secret"])
        with Subscriber(apx, keys=mallory) as sub:
            assert sub.receive(2.0) is None
            assert "refused this client's CURVE key" in (sub.refused() or "")
        with Subscriber(apx, keys=bob):
            wait_for(lambda: request(daemon.control, "status", keys=daemon.keys)["result"]
                     ["apx_stream"]["subscribers"] == 1, 10, "the reader connected")
    finally:
        assert daemon.stop() == 0

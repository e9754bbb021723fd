"""``flyprep run`` as systemd runs it: readiness, clean stop, exit codes, the unit files."""

from __future__ import annotations

import configparser
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import daemon_settings, write_toml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _run(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "flyprep.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **(env or {})))


def test_ready_and_stopping_reach_systemd_and_sigterm_exits_0(tmp_path, daemon_dirs):
    root, out, sockets = daemon_dirs
    config = write_toml(tmp_path / "d.toml", daemon_settings(root, out, sockets))
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        sock.settimeout(30)
        proc = _run(config, {"NOTIFY_SOCKET": str(notify)})
        try:
            ready = sock.recv(4096).decode().split("\n")
            assert ready[0] == "READY=1" and ready[1].startswith("STATUS=0 scans running")
            proc.send_signal(signal.SIGTERM)
            said: list[str] = []
            while "STOPPING=1" not in said:  # STATUS= lines may come first
                said = sock.recv(4096).decode().split("\n")
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in err


def test_a_bad_config_value_exits_2_naming_key_value_and_reason(tmp_path, daemon_dirs):
    root, out, sockets = daemon_dirs
    data = daemon_settings(root, out, sockets, output={"chunk_frames": 0})
    proc = _run(write_toml(tmp_path / "d.toml", data))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "output.chunk_frames = 0" in err and "greater than or equal to 1" in err


def test_an_endpoint_in_use_exits_3(tmp_path, daemon_dirs):
    import zmq

    root, out, sockets = daemon_dirs
    data = daemon_settings(root, out, sockets)
    ctx = zmq.Context()
    taken = ctx.socket(zmq.PUB)
    taken.setsockopt(zmq.LINGER, 0)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    data["bus"]["events"] = f"tcp://127.0.0.1:{port}"
    try:
        proc = _run(write_toml(tmp_path / "d.toml", data))
        _, err = proc.communicate(timeout=30)
    finally:
        taken.close()
        ctx.term()
    assert proc.returncode == 3
    assert "could not start" in err and str(port) in err


@pytest.mark.parametrize("unit", ["flyprep.service", "flyprep@.service"])
def test_unit_files_run_commands_that_exist(unit, tmp_path, daemon_dirs):
    """ExecStartPre/ExecStart name real sub-commands with real options."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read(DEPLOY / unit)
    service = parser["Service"]
    assert service["Type"] == "notify" and service["KillSignal"] == "SIGTERM"
    assert service["RestartPreventExitStatus"] == "2"
    root, out, sockets = daemon_dirs
    config = write_toml(tmp_path / "d.toml", daemon_settings(root, out, sockets))
    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(service[key])
        assert argv[0] == "/opt/flyprep/.venv/bin/flyprep"
        args = [a if not a.startswith("/etc/flyprep/") else str(config) for a in argv[1:]]
        if args[0] == "run":
            args += ["--help"]  # parsing only: the options must exist
        res = subprocess.run([sys.executable, "-m", "flyprep.cli", *args], capture_output=True,
                             text=True, timeout=60)
        assert res.returncode == 0, (key, res.stderr)


def test_a_missing_root_exits_3_so_that_systemd_retries(tmp_path, daemon_dirs):
    root, out, sockets = daemon_dirs
    data = daemon_settings(root, out, sockets)
    data["watch"]["roots"] = [str(tmp_path / "mount-not-there-yet")]
    proc = _run(write_toml(tmp_path / "d.toml", data))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert "mount-not-there-yet" in err and "does not exist" in err


def test_the_daemon_caps_mallocs_arenas_unless_the_environment_says(monkeypatch):
    """Each scan's threads would grow glibc arenas of their own (the soak's daemon grew
    48 % in 5 minutes, flat with 2); $MALLOC_ARENA_MAX, when set, is left to glibc."""
    from flyprep.cli.run import limit_malloc_arenas

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is sys.platform.startswith("linux")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_malloc_arenas() is False

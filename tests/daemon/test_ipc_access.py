"""Who may talk to the daemon over ipc is who may open its socket files: their mode (and
group) come from the config, 0660 by default, and an abstract ipc socket (no file) is
refused. Checked with another uid (``nobody``) against the real daemon process."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess, daemon_settings, write_toml

from flyprep.daemon.bus import request

SYSTEM_PYTHON = "/usr/bin/python3"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists() or
    "nobody" not in {p.pw_name for p in pwd.getpwall()},
    reason="needs root, a system python3 and the user nobody to act as another uid")

CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("refused")
else:
    print("connected")
"""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every uid can reach (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="flyprep-ipc-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_nobody(socket_path: Path) -> str:
    nobody = pwd.getpwnam("nobody")

    def drop() -> None:
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    return subprocess.run([SYSTEM_PYTHON, "-c", CONNECT, str(socket_path)], preexec_fn=drop,
                          capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.mark.parametrize("mode, other_uid", [("0660", "refused"), ("0666", "connected")])
def test_the_socket_files_mode_says_who_may_connect(tmp_path, daemon_dirs, open_dir, mode,
                                                    other_uid):
    root, out, _ = daemon_dirs
    data = daemon_settings(root, out, open_dir, bus={"ipc_mode": mode})
    config = write_toml(tmp_path / "daemon.toml", data)
    daemon = DaemonProcess(config, data["bus"]["control"], tmp_path / "daemon.log").start()
    try:
        for name in ("ctl", "ev"):
            assert stat.S_IMODE((open_dir / name).stat().st_mode) == int(mode, 8)
        assert as_nobody(open_dir / "ctl") == other_uid  # another uid
        assert request(daemon.control, "ping")["ok"]  # the daemon's own user
    finally:
        daemon.stop()


def test_an_abstract_ipc_socket_is_refused(tmp_path, daemon_dirs, cli):
    root, out, sockets = daemon_dirs
    data = daemon_settings(root, out, sockets)
    data["bus"]["control"] = "ipc://@flyprep-control"
    res = cli("check-config", write_toml(tmp_path / "daemon.toml", data))
    assert res.code == 2 and "abstract ipc socket" in res.err

"""Fixtures: the daemon, run for real, as a subprocess (``flyprep run``) or in a thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import DaemonProcess, InProcessDaemon, daemon_settings, write_toml

from flyprep.config import load_daemon_config


@pytest.fixture
def daemon_dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root watched, output directory, socket directory), all new."""
    root, out, sockets = tmp_path / "root", tmp_path / "out", tmp_path / "s"
    for d in (root, out, sockets):
        d.mkdir()
    return root, out, sockets


@pytest.fixture
def daemon_process(tmp_path: Path, daemon_dirs: tuple[Path, Path, Path]
                   ) -> Iterator[Callable[..., DaemonProcess]]:
    """Factory: write the config (with section overrides) and return a DaemonProcess."""
    made: list[DaemonProcess] = []

    def make(**sections: dict[str, Any]) -> DaemonProcess:
        root, out, sockets = daemon_dirs
        data = daemon_settings(root, out, sockets, **sections)
        path = write_toml(tmp_path / "daemon.toml", data)
        load_daemon_config(path)  # a bad test config fails here, not in the child
        proc = DaemonProcess(path, data["bus"]["control"], tmp_path / "daemon.log")
        made.append(proc)
        return proc

    yield make
    for proc in made:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait(10)


@pytest.fixture
def inprocess_daemon(daemon_dirs: tuple[Path, Path, Path]) -> Callable[..., InProcessDaemon]:
    root, out, sockets = daemon_dirs

    def make(**sections: dict[str, Any]) -> InProcessDaemon:
        return InProcessDaemon(daemon_settings(root, out, sockets, **sections))

    return make

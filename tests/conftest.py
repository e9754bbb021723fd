"""Shared, generic fixtures: example scans on disk, ways to run the ``flyprep`` CLI, and
the one thread-leak check every test passes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import pytest
from thread_check import live_threads

#: How long a test's threads may take to end after it (a join with a timeout, a thread
#: finishing its last item).
THREAD_GRACE_S = 5.0


#: Whether a test left threads running, and pytest's exit status (see pytest_unconfigure).
_session = {"leaked": False, "status": 1}


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every test leaves the threads it found, no more: workers (``flyprep:*``), watchdog
    observers, helper threads of the test itself."""
    before = live_threads()
    yield
    deadline = time.monotonic() + THREAD_GRACE_S
    while (leaked := live_threads() - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    _session["leaked"] = _session["leaked"] or bool(leaked)
    assert not leaked, f"threads left running: {sorted(t.name for t in leaked)}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _session["status"] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """After a test left threads running, exit as soon as pytest has reported: such a
    thread (a failed scan's writer, say) may hold h5py's lock, and the interpreter's own
    exit would wait for it forever, so that a red run looked like a hung one."""
    if _session["leaked"]:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_session["status"])


@dataclass(frozen=True)
class CliResult:
    """Exit code and captured output of one ``flyprep`` invocation."""

    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``flyprep.cli.main(args)`` in-process; returns its exit code and output."""
    from flyprep.cli.main import main

    def run(*args: object) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_flyprep(*args: object, cwd: Path | None = None, timeout: float = 60) -> CliResult:
    """Run ``python -m flyprep.cli ARGS`` as a separate process (the real entry point)."""
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "flyprep.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def flyprep_process() -> Callable[..., CliResult]:
    """:func:`run_flyprep` as a fixture."""
    return run_flyprep


@pytest.fixture
def make_example(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a synthetic finished scan (small frames by default) under tmp_path."""
    from flyprep.sim.example import write_example

    def make(layout: str = "ptypy", *, frames: int = 20, side: int = 64,
             name: str | None = None, seed: int = 0) -> Path:
        root = tmp_path / (name or f"scan_{layout}_{frames}")
        return write_example(root, layout=layout, num_frames=frames, frame_side=side, seed=seed)

    return make

"""``flyprep check-config``'s memory estimate (:mod:`flyprep.memory`), and
``configs/local.toml``: the daemon config that runs as is from a clone."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flyprep import memory
from flyprep.config import load_daemon_config, parse_daemon_config

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "configs" / "local.toml"

MiB = 1 << 20


def config(tmp_path: Path, **sections: dict) -> object:
    root = tmp_path / "incoming"
    root.mkdir(exist_ok=True)
    data: dict = {"watch": {"roots": [str(root)]}}
    for name, values in sections.items():
        data[name] = values
    return parse_daemon_config(data)


def write_config(tmp_path: Path, text: str) -> Path:
    root = tmp_path / "incoming"
    root.mkdir(exist_ok=True)
    path = tmp_path / "daemon.toml"
    path.write_text(f'[watch]\nroots = ["{root}"]\n{text}')
    return path


# --- the arithmetic ----------------------------------------------------------------------

#: 2 scans x (prepared 4 x 100 x 256^2 x (4 + 1) + raw 100 x 512^2 x 4 + work 100 x 256^2
#: x 4 float32, as uint32 raw frames do not go straight into float32 output)
KNOWN = {"scan": {"frame_shape": [512, 512], "frame_dtype": "uint32"},
         "prep": {"shape": 256, "dtype": "float32"},
         "output": {"chunk_frames": 100},
         "limits": {"max_scans": 2, "chunk_buffers": 4}}
KNOWN_BYTES = 2 * (4 * 100 * 256 * 256 * 5 + 100 * 512 * 512 * 4 + 100 * 256 * 256 * 4)


def test_estimate_of_a_config_known_by_hand(tmp_path):
    est = memory.estimate_memory(config(tmp_path, **KNOWN))
    assert est is not None
    assert est.total_bytes == KNOWN_BYTES == 524_288_000
    assert est.per_scan_bytes == KNOWN_BYTES // 2 and est.max_scans == 2
    terms = {what: n for what, n, _ in est.per_scan}
    assert terms == {"prepared chunk buffers": 131_072_000, "raw frames": 104_857_600,
                     "working array": 26_214_400}
    assert est.assumptions == ()


def test_estimate_follows_the_preparation(tmp_path):
    # uint16 frames kept as they are: no working array; rebinned by 2 (mean): float32
    # stored frames half as wide, a float32 working array of the whole ROI; saturation: a
    # byte per ROI pixel more.
    plain = memory.estimate_memory(config(
        tmp_path, scan={"frame_shape": [300, 400], "frame_dtype": "uint16"},
        prep={"shape": 200}, output={"chunk_frames": 10}, limits={"max_scans": 1,
                                                                   "chunk_buffers": 2}))
    assert plain is not None
    assert plain.total_bytes == 2 * 10 * 200 * 200 * 3 + 10 * 300 * 400 * 2
    binned = memory.estimate_memory(config(
        tmp_path, scan={"frame_shape": [300, 400], "frame_dtype": "uint16"},
        prep={"shape": 200, "rebin": 2, "saturation": 60000}, output={"chunk_frames": 10},
        limits={"max_scans": 1, "chunk_buffers": 2}))
    assert binned is not None
    assert binned.total_bytes == (2 * 10 * 100 * 100 * 5 + 10 * 300 * 400 * 2
                                  + 10 * 200 * 200 * 4 + 10 * 200 * 200)


def test_estimate_says_what_it_assumes_and_when_it_cannot(tmp_path):
    est = memory.estimate_memory(config(tmp_path, prep={"shape": 128}))
    assert est is not None  # defaults: 4 scans, 4 buffers, 100 frames, raw uint32 128^2
    assert est.total_bytes == 4 * (4 * 100 * 128 * 128 * 5 + 100 * 128 * 128 * 4)
    assert any("scan.frame_shape" in a for a in est.assumptions)
    assert any("scan.frame_dtype" in a for a in est.assumptions)
    assert memory.estimate_memory(config(tmp_path)) is None  # full frames of unknown size


def test_assess_warns_above_half_and_refuses_above_all_of_the_machine(tmp_path):
    est = memory.estimate_memory(config(tmp_path, **KNOWN))
    assert est is not None
    assert memory.assess(est, 2 * KNOWN_BYTES).level == "ok"
    assert memory.assess(est, None).level == "ok"
    warn = memory.assess(est, KNOWN_BYTES + 1)
    assert warn.level == "warn" and "more than half" in warn.message
    refuse = memory.assess(est, KNOWN_BYTES - 1)
    assert refuse.level == "refuse"
    for setting in ("limits.max_scans = 2", "limits.chunk_buffers = 4",
                    "output.chunk_frames = 100", "prep.shape = 256"):
        assert setting in refuse.message


def test_machine_memory(tmp_path, monkeypatch):
    assert memory.machine_memory() > 64 * MiB
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:        8000000 kB\nMemFree:         100 kB\n")

    def no_sysconf(name):
        raise ValueError(name)

    monkeypatch.setattr(os, "sysconf", no_sysconf)
    assert memory.machine_memory(meminfo) == 8_000_000 * 1024
    assert memory.machine_memory(tmp_path / "missing") is None


def test_human_bytes():
    assert [memory.human_bytes(n) for n in (7, 12 * 1024, 500 * MiB, 3 * 1024 * MiB // 2)] \
        == ["7 B", "12 KiB", "500 MiB", "1.5 GiB"]


# --- check-config says it ----------------------------------------------------------------

KNOWN_TOML = """
[prep]
shape = 256
dtype = "float32"
[scan]
frame_shape = [512, 512]
frame_dtype = "uint32"
[output]
chunk_frames = 100
[limits]
max_scans = 2
chunk_buffers = 4
"""


def test_check_config_says_the_estimate(tmp_path, cli, monkeypatch):
    monkeypatch.setattr(memory, "machine_memory", lambda: 100 * KNOWN_BYTES)
    res = cli("check-config", write_config(tmp_path, KNOWN_TOML))
    assert res.code == 0 and res.err == ""
    assert "# memory: up to 500 MiB (1% of this machine's" in res.out
    assert "2 running scans (limits.max_scans) x 250 MiB each" in res.out
    assert "#   prepared chunk buffers: 125 MiB = 4 (limits.chunk_buffers)" in res.out
    assert "[limits]" in res.out
    res = cli("check-config", write_config(tmp_path, KNOWN_TOML), "--json")
    assert res.code == 0 and res.out.startswith("{")
    assert "memory: up to 500 MiB" in res.err


def test_check_config_warns_above_half_of_the_machine(tmp_path, cli, monkeypatch):
    monkeypatch.setattr(memory, "machine_memory", lambda: KNOWN_BYTES * 3 // 2)
    res = cli("check-config", write_config(tmp_path, KNOWN_TOML))
    assert res.code == 0
    assert "[limits]" in res.out
    assert "flyprep: warning:" in res.err and "more than half" in res.err
    assert "limits.max_scans = 2" in res.err


def test_check_config_refuses_more_than_the_machine(tmp_path, cli, monkeypatch):
    monkeypatch.setattr(memory, "machine_memory", lambda: KNOWN_BYTES // 2)
    res = cli("check-config", write_config(tmp_path, KNOWN_TOML))
    assert res.code == 2 and res.out == ""
    assert "flyprep: error:" in res.err and "more than this machine's 250 MiB" in res.err
    for setting in ("limits.max_scans", "limits.chunk_buffers", "output.chunk_frames",
                    "prep.shape"):
        assert setting in res.err


def test_check_config_without_a_frame_size(tmp_path, cli):
    res = cli("check-config", write_config(tmp_path, ""))
    assert res.code == 0 and "# memory: not estimated" in res.out


# --- configs/local.toml ------------------------------------------------------------------

def test_local_config_loads_with_paths_inside_the_clone():
    cfg = load_daemon_config(LOCAL, env={}, require_roots=False)
    scratch = (REPO / "scratch").resolve()
    assert [r.resolve() for r in cfg.watch.roots] == [scratch / "incoming"]
    assert cfg.output.directory is not None
    assert cfg.output.directory.resolve() == scratch / "prepared"
    for endpoint in (cfg.bus.events, cfg.bus.control, cfg.apx.stream):
        assert endpoint.startswith("ipc://scratch/")  # from the repository root
    assert "scratch/" in (REPO / ".gitignore").read_text().split()


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """The layout of a clone as configs/local.toml says to prepare it."""
    (tmp_path / "configs").mkdir()
    shutil.copy(LOCAL, tmp_path / "configs" / "local.toml")
    (tmp_path / "scratch" / "incoming").mkdir(parents=True)  # mkdir -p scratch/incoming
    return tmp_path


def test_local_config_checks(clone, flyprep_process):
    res = flyprep_process("check-config", "configs/local.toml", cwd=clone)
    assert res.code == 0, res.err
    assert "# memory: up to" in res.out


def test_local_config_runs_and_stops_on_sigterm(clone, flyprep_process):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env = {k: v for k, v in env.items() if not k.startswith("FLYPREP__")}
    with open(clone / "run.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flyprep.cli", "run", "--config",
                                 "configs/local.toml"], cwd=clone, stdout=log, stderr=log,
                                env=env)
    try:
        deadline = time.monotonic() + 60
        while True:  # until it answers (no fixed sleep: status waits for its reply)
            assert proc.poll() is None, (clone / "run.log").read_text()
            res = flyprep_process("status", "--config", "configs/local.toml", cwd=clone)
            if res.code == 0:
                break
            assert time.monotonic() < deadline, res.err + (clone / "run.log").read_text()
        assert "running" in res.out
        sim = flyprep_process("simulate", "scratch/incoming/scan_0001", "--frames", 20,
                              "--side", 128, "--rate", 0, cwd=clone)
        assert sim.code == 0, sim.err
        master = clone / "scratch" / "prepared" / "scan_0001.ptyd"
        while "scan_0001: complete" not in (res := flyprep_process(
                "status", "--config", "configs/local.toml", cwd=clone)).out:
            assert time.monotonic() < deadline, res.out + (clone / "run.log").read_text()
        assert master.is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, (clone / "run.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

"""``flyprep demo``: simulator and daemon together, as the README's first command runs it."""

from __future__ import annotations

import _thread
import tempfile
import threading
from pathlib import Path

import pytest

from flyprep.config import load_daemon_config
from flyprep.ptyd.reader import open_ptyd
from flyprep.ptyd.verify import Finding

REPO = Path(__file__).resolve().parents[2]


def test_demo_as_a_process(flyprep_process, tmp_path):
    root = tmp_path / "demo"
    res = flyprep_process("demo", "--dir", root, "--frames", 150, "--rate", 300, "--side", 128,
                          "--no-progress", timeout=120)
    assert res.code == 0, res.out + res.err
    assert "scan_0001: complete, 150 frames in 2 chunks, 0 missing" in res.out
    assert "verified OK" in res.out and "PtydScan" in res.out
    assert "3000 readouts" in res.out  # 20 per frame, all streamed
    ptyd = open_ptyd(root / "prepared" / "scan_0001.ptyd")
    assert ptyd.meta.num_frames == 150 and ptyd.n_frames == 150 and ptyd.state == "complete"
    assert ptyd.meta.shape == (128, 128)
    assert [c.n_frames for c in ptyd.chunks] == [100, 50]
    assert len(list((root / "incoming" / "scan_0001" / "ccd").glob("*.npy"))) == 150
    # a --dir is the user's: kept, and the summary says where; the hints work as printed
    assert f"the files are in {root} (your --dir: the demo never removes it)" in res.out
    assert f"flyprep run --config {root / 'demo.toml'}" in res.out
    assert "configs/daemon.toml" not in res.out
    assert (root / "demo.toml").is_file()


def test_demo_exits_1_when_its_output_does_not_verify(tmp_path, cli, monkeypatch):
    import flyprep.cli.demo

    broken = [Finding("error", "layout", "/chunks/0", "simulated breakage")]
    monkeypatch.setattr(flyprep.cli.demo, "verify", lambda path: broken)
    res = cli("demo", "--dir", tmp_path / "demo", "--frames", 30, "--rate", 0, "--side", 64,
              "--no-progress")
    assert res.code == 1
    assert "simulated breakage" in res.out and "verify FAILED" in res.out


def test_demo_refuses_a_directory_holding_an_earlier_demo(tmp_path, cli):
    (tmp_path / "demo" / "incoming" / "scan_0001").mkdir(parents=True)
    res = cli("demo", "--dir", tmp_path / "demo", "--no-progress")
    assert res.code == 1 and "use a new --dir" in res.out


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """Where the demo's temporary directory goes (tempfile's default, pointed here)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "1000")  # rich wraps lines at the console's width
    return tmp_path


def demo_dirs(where: Path) -> list[Path]:
    return sorted(where.glob("flyprep-demo-*"))


def test_demo_removes_its_temporary_directory(temp_dir, cli):
    res = cli("demo", "--frames", 30, "--rate", 0, "--side", 64, "--no-progress")
    assert res.code == 0, res.out + res.err
    assert demo_dirs(temp_dir) == []
    assert "verified OK" in res.out
    assert "files          removed " + str(temp_dir / "flyprep-demo-") in res.out
    assert "flyprep demo --keep keeps the files" in res.out
    assert "Look inside with" not in res.out  # the file is gone
    # what it suggests runs from a clone: configs/local.toml (tests/cli/test_check_config.py
    # runs it), not configs/daemon.toml (it watches /data/incoming)
    assert "mkdir -p scratch/incoming && flyprep run --config configs/local.toml" in res.out
    assert (REPO / "configs" / "local.toml").is_file()
    assert "configs/daemon.toml" not in res.out


def test_demo_keep_keeps_it_and_says_where(temp_dir, cli):
    res = cli("demo", "--keep", "--frames", 30, "--rate", 0, "--side", 64, "--no-progress")
    assert res.code == 0, res.out + res.err
    [root] = demo_dirs(temp_dir)
    assert f"the files are kept in {root} (remove them with: rm -r {root})" in res.out
    ptyd = open_ptyd(root / "prepared" / "scan_0001.ptyd")
    assert ptyd.state == "complete" and ptyd.n_frames == 30
    assert f"flyprep inspect {root / 'prepared' / 'scan_0001.ptyd'}" in res.out
    # the daemon's own config, for the hint: flyprep run --config <dir>/demo.toml
    assert f"flyprep run --config {root / 'demo.toml'}" in res.out
    assert f"flyprep simulate {root / 'incoming' / 'scan_0002'}" in res.out
    cfg = load_daemon_config(root / "demo.toml", env={})
    assert cfg.watch.roots == [root / "incoming"] and cfg.output.directory == root / "prepared"
    assert cfg.bus.control == f"ipc://{root}/control.sock"


def test_demo_removes_its_temporary_directory_on_ctrl_c(temp_dir, cli, monkeypatch):
    import flyprep.cli.demo

    stopped = threading.Event()

    def interrupted_scan(root, *, stop_event, **kwargs):
        Path(root).mkdir(parents=True)
        (Path(root) / "frame.npy").write_bytes(b"")
        _thread.interrupt_main()  # Ctrl-C, while the demo waits for the scan
        assert stop_event.wait(30)  # the demo stops the simulator before removing its files
        stopped.set()

    monkeypatch.setattr(flyprep.cli.demo, "simulate_scan", interrupted_scan)
    res = cli("demo", "--no-progress")
    assert res.code == 130 and "interrupted" in res.err
    assert stopped.is_set()
    assert demo_dirs(temp_dir) == []
    assert "flyprep demo: removed " + str(temp_dir / "flyprep-demo-") in res.out


def test_demo_removes_its_temporary_directory_after_an_error(temp_dir, cli, monkeypatch):
    import flyprep.cli.demo

    def broken(path):
        raise RuntimeError("reader broke")

    monkeypatch.setattr(flyprep.cli.demo, "open_ptyd", broken)
    with pytest.raises(RuntimeError, match="reader broke"):
        cli("demo", "--frames", 20, "--rate", 0, "--side", 64, "--no-progress")
    assert demo_dirs(temp_dir) == []


def test_demo_keeps_a_dir_it_refused(tmp_path, cli):
    (tmp_path / "demo" / "incoming" / "scan_0001").mkdir(parents=True)
    cli("demo", "--dir", tmp_path / "demo", "--no-progress")
    assert (tmp_path / "demo" / "incoming" / "scan_0001").is_dir()

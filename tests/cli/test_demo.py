"""``flyprep demo``: simulator and daemon together, as the README's first command runs it."""

from __future__ import annotations

from flyprep.ptyd.reader import open_ptyd
from flyprep.ptyd.verify import Finding


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

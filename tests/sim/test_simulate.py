"""``flyprep simulate``: a scan written as it is measured, with real writers' habits."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from flyprep.cli import simulate as sim_cli
from flyprep.sim import simulate as sim
from flyprep.apx.decode import decode_readout
from flyprep.apx.format import PREAMBLE_SIZE, PREFIX_SIZE, open_apx
from flyprep.errors import ConfigError, OutputError
from flyprep.sim.example import ExampleScan
from flyprep.sim.simulate import (
    APX_NAME,
    END_MARKER,
    SCAN_TOML,
    ChoppyWriter,
    Simulator,
    encode_hit,
    simulate_scan,
)
from flyprep.sources import discover, read_frames

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "apx" / "fixture.apx"


def _check_scan(root: Path, layout: str, n: int, side: int, seed: int = 0) -> None:
    """``root`` is a finished scan whose frames and positions are ExampleScan's."""
    source = discover(root)
    assert source.layout == layout
    assert len(source.frames) == n
    expected = ExampleScan(num_frames=n, frame_side=side, seed=seed)
    want = expected.frames(0, n)
    got = np.stack([f for _i, f, _name in read_frames(source, 0, n)])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(source.positions, expected.positions, rtol=1e-6, atol=1e-15)


def _toml(root: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python < 3.11
        import tomli as tomllib
    return tomllib.loads((root / SCAN_TOML).read_text())


def test_ptypy_layout_is_a_finished_example_scan(tmp_path: Path) -> None:
    root = tmp_path / "run1"
    result = simulate_scan(root, layout="ptypy", num_frames=12, frame_side=32, rate_hz=0,
                           seed=3, partial_fraction=0.3, partial_pause_s=0.0)
    _check_scan(root, "ptypy", 12, 32, seed=3)
    assert result.frames_written == 12 and not result.stopped
    assert result.temp_renames + len(result.partial_frames) == 12
    assert result.partial_frames  # seed 3 writes some frames in pieces
    assert (root / END_MARKER).exists()
    assert (root / "geometry.txt").read_text().startswith("distance ")
    assert not [p for p in (root / "ccd").iterdir() if p.name.endswith(sim.TEMP_SUFFIX)]
    meta = _toml(root)
    assert meta["label"] == "run1" and meta["num_frames"] == 12
    assert set(meta["geometry"]) == {"energy", "distance", "psize"}


def test_hdf5_layout_is_a_finished_example_scan(tmp_path: Path) -> None:
    root = tmp_path / "h"
    result = simulate_scan(root, layout="hdf5", num_frames=11, frame_side=32, rate_hz=0,
                           frames_per_file=4, end_marker=False, label="x")
    _check_scan(root, "hdf5", 11, 32)
    assert sorted(p.name for p in root.glob("*.h5")) == [
        "scan_data_000001.h5", "scan_data_000002.h5", "scan_data_000003.h5"]
    assert not (root / END_MARKER).exists()
    assert result.temp_renames == 0 and result.apx_path is None
    assert _toml(root)["label"] == "x"


def test_same_seed_same_scan(tmp_path: Path) -> None:
    a = simulate_scan(tmp_path / "a", num_frames=8, frame_side=16, rate_hz=0, seed=5)
    b = simulate_scan(tmp_path / "b", num_frames=8, frame_side=16, rate_hz=0, seed=5)
    assert a.partial_frames == b.partial_frames
    assert (tmp_path / "a/positions.txt").read_text() == (tmp_path / "b/positions.txt").read_text()


def test_temp_then_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At each rename a watcher listing ``ccd/`` sees the temporary name, not the frame."""
    seen: list[tuple[str, set[str]]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        if Path(dst).parent.name == "ccd":
            seen.append((Path(dst).name, set(os.listdir(Path(dst).parent))))
        real_replace(src, dst)

    monkeypatch.setattr(sim.os, "replace", spy)
    result = simulate_scan(tmp_path / "s", num_frames=6, frame_side=16, rate_hz=0,
                           partial_fraction=0.0)
    assert result.temp_renames == 6 and len(seen) == 6
    for name, listing in seen:
        assert f".{name}.part" in listing and name not in listing


def test_partial_writes_are_visible_to_a_watcher(tmp_path: Path) -> None:
    """Frames written in place in pieces: a watcher sees files that do not load yet."""
    root = tmp_path / "p"
    sizes: dict[str, set[int]] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            ccd = root / "ccd"
            if ccd.is_dir():
                for p in ccd.glob("diffraction_*.npy"):
                    try:
                        sizes.setdefault(p.name, set()).add(p.stat().st_size)
                    except FileNotFoundError:  # pragma: no cover
                        pass
            time.sleep(0.001)

    t = threading.Thread(target=watch)
    t.start()
    try:
        result = simulate_scan(root, num_frames=3, frame_side=32, rate_hz=0,
                               partial_fraction=1.0, partial_pieces=3, partial_pause_s=0.05)
    finally:
        done.set()
        t.join()
    assert result.partial_frames == (0, 1, 2) and result.temp_renames == 0
    full = (root / "ccd/diffraction_0000.npy").stat().st_size
    assert any(s < full for s in sizes["diffraction_0000.npy"])
    _check_scan(root, "ptypy", 3, 32)


def test_apx_grows_in_pieces_and_reads_back(tmp_path: Path) -> None:
    root = tmp_path / "a"
    path = root / APX_NAME
    sizes: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if path.exists():
                s = path.stat().st_size
                if not sizes or sizes[-1] != s:
                    sizes.append(s)
            time.sleep(0.0005)

    t = threading.Thread(target=watch)
    t.start()
    try:
        result = simulate_scan(root, num_frames=40, frame_side=16, rate_hz=400, apx=True,
                               readouts_per_frame=25, apx_source=FIXTURE)
    finally:
        done.set()
        t.join()
    assert result.apx_records == 1000 and result.apx_pieces >= 3
    with open_apx(path) as reader:
        got = reader.read_all()
    with open_apx(FIXTURE) as reader:
        fixture = reader.read_all()
    assert len(got) == 1000
    assert got.readout_id.tolist() == list(range(1000))
    assert np.all(np.diff(got.timestamp.astype(np.int64)) >= 0)
    assert [r.payload for r in got] == [fixture[i].payload for i in range(1000)]
    # Seen growing: several sizes, the intermediate ones 4-8 KiB apart and some mid-record.
    final = path.stat().st_size
    inner = [s for s in sizes if 0 < s < final]
    assert inner and all(s >= 4096 for s in inner)
    lens = got.records["length"].astype(np.int64) + PREFIX_SIZE
    header = len(open_apx(path).header.to_bytes()) + PREAMBLE_SIZE
    boundaries = set((header + np.cumsum(lens)).tolist()) | {header}
    assert any(s not in boundaries for s in inner)


def test_synthesised_readouts_decode(tmp_path: Path) -> None:
    result = simulate_scan(tmp_path / "s", num_frames=5, frame_side=16, rate_hz=0, apx=True,
                           readouts_per_frame=10)
    with open_apx(result.apx_path) as reader:
        assert reader.header.readout_uid == 4000
        batch = reader.read_all()
    assert len(batch) == 50
    for r in batch:
        hits, status, extra = decode_readout(r.payload, r.readout_id, r.timestamp)
        assert len(hits) >= 1 and status == 0 and extra is None
        assert np.all(hits["payload"] == 7)


def test_encode_hit_matches_the_spec_example() -> None:
    # apx.md: e05042030620d701 -> chip 0, row 1, column 9, ts_dec1 14331, ts_dec2 14952
    hits, _status, _extra = decode_readout(
        b"\xbc" + encode_hit(0, 1, 9, 14331, 14952 - 14331) + b"\xbc\xbc", 0, 0)
    h = hits[0]
    got = (h["chip_id"], h["row"], h["column"], h["ts_dec1"], h["ts_dec2"])
    assert got == (0, 1, 9, 14331, 14952)
    assert h["tot_us"] == pytest.approx(31.05)


def test_choppy_writer_cuts_anywhere(tmp_path: Path) -> None:
    pieces: list[int] = []
    data = bytes(random.Random(1).randbytes(50_000))
    w = ChoppyWriter(tmp_path / "f", random.Random(2), (4096, 8192), on_piece=pieces.append)
    for k in range(0, len(data), 37):
        w.write(data[k:k + 37])
    w.close()
    assert (tmp_path / "f").read_bytes() == data
    steps = np.diff([0, *pieces])
    assert all(4096 <= s <= 8192 for s in steps[:-1]) and 0 < steps[-1] <= 8192


def test_rate_is_respected(tmp_path: Path) -> None:
    t0 = time.monotonic()
    result = simulate_scan(tmp_path / "r", num_frames=50, frame_side=16, rate_hz=200)
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.2 and result.elapsed_s >= 49 / 200
    assert elapsed < 3.0


def test_stop_event_in_a_thread(tmp_path: Path) -> None:
    root = tmp_path / "t"
    stop = threading.Event()
    out: list[sim.SimulationResult] = []

    def on_frame(i: int) -> None:
        if i == 4:
            stop.set()

    t = threading.Thread(target=lambda: out.append(simulate_scan(
        root, num_frames=1000, frame_side=16, rate_hz=50, stop_event=stop, on_frame=on_frame,
        apx=True)))
    t.start()
    t.join(timeout=5)
    assert not t.is_alive()
    (result,) = out
    assert result.stopped and result.frames_written == 5
    assert not (root / END_MARKER).exists()
    assert len(discover(root).frames) == 5
    assert len(open_apx(root / APX_NAME).read_all()) == 5 * 20


def test_runs_in_a_process(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    root = tmp_path / "proc"
    proc = ctx.Process(target=simulate_scan, args=(root,),
                       kwargs={"layout": "hdf5", "num_frames": 6, "frame_side": 16,
                               "rate_hz": 0, "frames_per_file": 4})
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == 0
    assert (root / END_MARKER).exists()
    _check_scan(root, "hdf5", 6, 16)


def test_refuses_bad_options_and_non_empty_dirs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        Simulator(tmp_path / "x", layout="tiff")
    with pytest.raises(ConfigError):
        Simulator(tmp_path / "x", num_frames=0)
    with pytest.raises(ConfigError):
        Simulator(tmp_path / "x", rate_hz=-1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a").write_text("x")
    with pytest.raises(OutputError):
        simulate_scan(tmp_path / "full", num_frames=2, frame_side=16, rate_hz=0)


def test_cli_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="flyprep")
    sub = parser.add_subparsers(dest="command", required=True)
    sim_cli.add_parser(sub)
    root = tmp_path / "cli"
    args = parser.parse_args(["simulate", str(root), "--layout", "hdf5", "--frames", "5",
                              "--side", "16", "--rate", "0", "--readouts-per-frame", "3"])
    assert args.command == "simulate"
    assert sim_cli.run(args) == 0
    assert "simulated 5/5 frames (hdf5 layout)" in capsys.readouterr().out
    _check_scan(root, "hdf5", 5, 16)
    assert len(open_apx(root / APX_NAME).read_all()) == 15
    args = parser.parse_args(["simulate", str(tmp_path / "c2"), "--frames", "2", "--side", "16",
                              "--rate", "0", "--no-apx", "--no-end-marker"])
    assert sim_cli.run(args) == 0
    assert not (tmp_path / "c2" / APX_NAME).exists() and not (tmp_path / "c2" / END_MARKER).exists()

"""``flyprep prepare`` / ``inspect`` / ``verify`` end to end on real files.

Stored frames are compared with a straightforward reference: the raw frames read with
numpy/h5py, cropped (or zero padded) around the fftshift centre, rebinned by hand.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from flyprep.sim.example import write_example
from flyprep.ptyd import open_ptyd

SIDE = 64  # raw frame side of the example scans used here
PTYPY_FRAMES = 30
HDF5_FRAMES = 130  # two HDF5 files: a stack of 100 and one of 30


# -- scans and references ----------------------------------------------------------------

@pytest.fixture(scope="module")
def ptypy_scan(tmp_path_factory) -> Path:
    """A finished scan in PtyPy's tutorial layout (geometry.txt declares shape 128)."""
    return write_example(tmp_path_factory.mktemp("ptypy") / "scan", layout="ptypy",
                         num_frames=PTYPY_FRAMES, frame_side=SIDE)


@pytest.fixture(scope="module")
def hdf5_scan(tmp_path_factory) -> Path:
    """A finished scan of stacked HDF5 files, written by ``flyprep example``."""
    from flyprep.cli.main import main

    root = tmp_path_factory.mktemp("hdf5") / "scan"
    assert main(["example", str(root), "--layout", "hdf5", "--frames", str(HDF5_FRAMES),
                 "--side", str(SIDE)]) == 0
    assert sorted(p.name for p in root.glob("*.h5")) == ["scan_data_000001.h5",
                                                         "scan_data_000002.h5"]
    return root


@pytest.fixture
def scan_copy(ptypy_scan, tmp_path) -> Path:
    """A private copy of the PtyPy-layout scan, free to break."""
    return Path(shutil.copytree(ptypy_scan, tmp_path / "scan"))


def raw_frames(scan: Path) -> np.ndarray:
    """Every raw frame of a scan directory, in scan order, read without flyprep."""
    if (scan / "ccd").is_dir():
        names = [line.split()[0] for line in (scan / "positions.txt").read_text().splitlines()]
        return np.stack([np.load(scan / n) for n in names])
    stacks = []
    for path in sorted(scan.glob("*.h5")):
        with h5py.File(path, "r") as f:
            stacks.append(f["/entry/data/data"][()])
    return np.concatenate(stacks)


def raw_positions(scan: Path) -> np.ndarray:
    rows = [line.split()[-2:] for line in (scan / "positions.txt").read_text().splitlines()]
    return np.asarray(rows, float)


def reference(raw: np.ndarray, side: int, rebin: int = 1, mode: str = "mean"
              ) -> tuple[np.ndarray, np.ndarray]:
    """Crop/pad ``side`` x ``side`` around the fftshift centre, then rebin; and weights."""
    n, h, w = raw.shape
    lo_y, lo_x = h // 2 - side // 2, w // 2 - side // 2
    pad = ((0, 0), (side, side), (side, side))
    crop = np.pad(raw, pad)[:, side + lo_y:side + lo_y + side, side + lo_x:side + lo_x + side]
    valid = np.pad(np.ones((h, w), bool), pad[1:])[side + lo_y:side + lo_y + side,
                                                    side + lo_x:side + lo_x + side]
    if rebin > 1:
        s = side // rebin
        blocks = crop.reshape(n, s, rebin, s, rebin).astype(np.float64)
        crop = blocks.sum(axis=(2, 4)) if mode == "sum" else blocks.mean(axis=(2, 4))
        valid = valid.reshape(s, rebin, s, rebin).all(axis=(1, 3))
    return crop, np.broadcast_to(valid, crop.shape)


def read_back(path: Path) -> dict:
    """Everything a reader sees in a .ptyd, frames concatenated in PtyPy's order."""
    ptyd = open_ptyd(path)
    chunks = list(ptyd.iter_chunks())
    return {
        "ptyd": ptyd,
        "meta": ptyd.meta,
        "sizes": [c.data.shape[0] for c in chunks],
        "data": np.concatenate([c.data for c in chunks]),
        "weights": np.concatenate([c.weights for c in chunks]),
        "positions": np.concatenate([c.positions for c in chunks]),
        "indices": np.concatenate([c.indices for c in chunks]),
    }


def assert_geometry(meta, *, n, side, psize, energy, distance):
    assert meta.num_frames == n
    assert meta.shape == (side, side)
    assert meta.center == (side / 2, side / 2)  # fftshift centre after crop and rebin
    if psize is None:
        assert meta.psize is None
    else:
        assert meta.psize == pytest.approx((psize, psize), rel=1e-9)
    assert meta.energy == pytest.approx(energy) if energy is not None else meta.energy is None
    assert meta.distance == pytest.approx(distance) if distance is not None else meta.distance is None
    assert meta.propagation == "farfield"


# -- prepare: output equals the reference ---------------------------------------------

def test_prepare_ptypy_layout_as_a_process(flyprep_process, ptypy_scan, tmp_path, cli):
    out = tmp_path / "out.ptyd"
    res = flyprep_process("prepare", ptypy_scan, "-o", out, "--shape", 32, "--chunk-frames", 8,
                      "--no-progress")
    assert res.code == 0, res.err
    assert f"{PTYPY_FRAMES} frames in 4 chunks, 0 missing" in res.out
    got = read_back(out)
    # Geometry from geometry.txt: 172 um pixels, 6.2 keV, 7 m.
    assert_geometry(got["meta"], n=PTYPY_FRAMES, side=32, psize=172e-6, energy=6.2, distance=7.0)
    assert got["sizes"] == [8, 8, 8, 6]
    data, weights = reference(raw_frames(ptypy_scan), 32)
    assert got["data"].dtype == np.int32
    np.testing.assert_array_equal(got["data"], data)
    np.testing.assert_array_equal(got["weights"], weights)
    np.testing.assert_array_equal(got["positions"], raw_positions(ptypy_scan))
    np.testing.assert_array_equal(got["indices"], np.arange(PTYPY_FRAMES))
    prov = got["ptyd"].provenance
    assert prov["state"] == "complete" and prov["frames_missing"] == 0
    assert cli("verify", out).code == 0


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_prepare_hdf5_layout_with_rebin(hdf5_scan, tmp_path, cli, mode):
    out = tmp_path / "out.ptyd"
    res = cli("prepare", hdf5_scan, "-o", out, "--shape", 48, "--rebin", 2, "--rebin-mode", mode,
              "--chunk-frames", 40, "--energy", 8.5, "--distance", 2.5, "--psize", "75e-6",
              "--no-progress")
    assert res.code == 0, res.err
    got = read_back(out)
    assert_geometry(got["meta"], n=HDF5_FRAMES, side=24, psize=150e-6, energy=8.5, distance=2.5)
    assert got["sizes"] == [40, 40, 40, 10]  # chunk 2 spans both HDF5 files
    data, weights = reference(raw_frames(hdf5_scan), 48, rebin=2, mode=mode)
    if mode == "mean":
        assert got["data"].dtype == np.float32
        np.testing.assert_allclose(got["data"], data, rtol=1e-6)
    else:
        assert got["data"].dtype.kind == "i"
        np.testing.assert_array_equal(got["data"], data)
    np.testing.assert_array_equal(got["weights"], weights)
    np.testing.assert_allclose(got["positions"], raw_positions(hdf5_scan), rtol=0)
    np.testing.assert_array_equal(got["indices"], np.arange(HDF5_FRAMES))


def test_prepare_pads_a_roi_larger_than_the_frame(ptypy_scan, tmp_path, cli):
    out = tmp_path / "out.ptyd"
    assert cli("prepare", ptypy_scan, "-o", out, "--shape", 128, "--no-progress").code == 0
    got = read_back(out)  # a 128-pixel ROI around 64-pixel frames
    assert_geometry(got["meta"], n=PTYPY_FRAMES, side=128, psize=172e-6, energy=6.2,
                    distance=7.0)
    data, weights = reference(raw_frames(ptypy_scan), 128)
    np.testing.assert_array_equal(got["data"], data)
    np.testing.assert_array_equal(got["weights"], weights)
    assert not got["weights"][:, :32].any() and got["weights"][:, 32:96, 32:96].all()
    assert got["sizes"] == [PTYPY_FRAMES]  # default: 100 frames per chunk


def test_options_override_the_toml_config(ptypy_scan, tmp_path, cli):
    cfg = tmp_path / "prep.toml"
    cfg.write_text('[prep]\nshape = 16\nrebin = 2\nrebin_mode = "sum"\n\n'
                   '[output]\nchunk_frames = 12\n\n'
                   '[geometry]\nenergy = 5.0\ndistance = 3.0\n')
    out = tmp_path / "out.ptyd"
    res = cli("prepare", ptypy_scan, "-o", out, "--config", cfg, "--shape", 32,
              "--energy", 9.0, "--no-progress")
    assert res.code == 0, res.err
    got = read_back(out)
    # --shape and --energy win over the TOML file, which wins over geometry.txt (distance);
    # what neither sets comes from geometry.txt (psize) and the defaults.
    assert_geometry(got["meta"], n=PTYPY_FRAMES, side=16, psize=2 * 172e-6, energy=9.0,
                    distance=3.0)
    assert got["sizes"] == [12, 12, 6]
    data, _ = reference(raw_frames(ptypy_scan), 32, rebin=2, mode="sum")
    np.testing.assert_array_equal(got["data"], data)


# -- bad configuration: exit 2, the key named --------------------------------------------

@pytest.mark.parametrize("toml, flags, expected", [
    ("[prep]\nrebin = 40\n", [], ["prep.rebin = 40"]),
    ("[prep]\nshpe = 32\n", [], ["prep.shpe"]),
    ('[output]\ncompression = "zstd"\n', [], ["output.compression = 'zstd'"]),
    ("[sample]\nx = 1\n", [], ["sample: Extra inputs are not permitted"]),
    ("[prep]\nshape = [32\n", [], ["not valid TOML"]),
    (None, ["--rebin", "40"], ["command line", "prep.rebin = 40"]),
    (None, ["--chunk-frames", "0"], ["output.chunk_frames = 0"]),
    (None, ["--energy", "-1"], ["geometry.energy = -1.0"]),
    # geometry.txt declares shape 128, which rebin 3 does not divide.
    (None, ["--rebin", "3"], ["rebin 3 does not divide shape 64", "geometry.txt"]),
])
def test_bad_config_exits_2_naming_the_key(ptypy_scan, tmp_path, cli, toml, flags, expected):
    args = ["prepare", ptypy_scan, "-o", tmp_path / "out.ptyd", "--no-progress", *flags]
    if toml is not None:
        cfg = tmp_path / "bad.toml"
        cfg.write_text(toml)
        args += ["--config", cfg]
        expected = [*expected, str(cfg)]
    res = cli(*args)
    assert res.code == 2
    assert res.err.startswith("flyprep: error: ")
    for text in expected:
        assert text in res.err
    assert "Traceback" not in res.err
    assert not list(tmp_path.glob("out.ptyd*"))


def test_bad_config_value_as_a_process(flyprep_process, ptypy_scan, tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[prep]\nrebin = 40\n")
    res = flyprep_process("prepare", ptypy_scan, "-o", tmp_path / "out.ptyd", "--config", cfg)
    assert res.code == 2
    assert "flyprep: error:" in res.err and "prep.rebin" in res.err
    assert "Traceback" not in res.err


def test_missing_config_file_exits_2(ptypy_scan, tmp_path, cli):
    res = cli("prepare", ptypy_scan, "-o", tmp_path / "out.ptyd", "--config", tmp_path / "no.toml")
    assert res.code == 2 and "no.toml" in res.err and "not found" in res.err


# -- missing frames ---------------------------------------------------------------------

def test_missing_frame_file_exits_2_naming_it(scan_copy, tmp_path, cli):
    gone = scan_copy / "ccd" / "diffraction_0003.npy"
    gone.unlink()
    res = cli("prepare", scan_copy, "-o", tmp_path / "out.ptyd", "--shape", 32, "--no-progress")
    assert res.code == 2
    assert res.err.startswith("flyprep: error: ")
    assert str(gone) in res.err
    assert not (tmp_path / "out.ptyd").exists()


def test_allow_missing_fills_unreadable_frames(scan_copy, tmp_path, cli):
    (scan_copy / "ccd" / "diffraction_0010.npy").unlink()
    (scan_copy / "ccd" / "diffraction_0017.npy").write_bytes(b"not a frame" * 50)
    out = tmp_path / "out.ptyd"
    res = cli("prepare", scan_copy, "-o", out, "--shape", 32, "--chunk-frames", 8,
              "--allow-missing", "--no-progress")
    assert res.code == 0, res.err
    assert "2 missing" in res.out
    got = read_back(out)
    assert got["meta"].num_frames == PTYPY_FRAMES and sum(got["sizes"]) == PTYPY_FRAMES
    prov = got["ptyd"].provenance
    assert prov["frames_missing"] == 2
    assert prov["missing_indices"] == [10, 17]
    assert prov["state"] == "complete"
    missing = [10, 17]
    assert not got["data"][missing].any()
    assert not got["weights"][missing].any()
    keep = np.setdiff1d(np.arange(PTYPY_FRAMES), missing)
    raw = np.stack([np.load(scan_copy / f"ccd/diffraction_{i:04d}.npy") if i in keep
                    else np.zeros((SIDE, SIDE), np.int32) for i in range(PTYPY_FRAMES)])
    data, weights = reference(raw, 32)
    np.testing.assert_array_equal(got["data"][keep], data[keep])
    assert got["weights"][keep].all()
    # Every frame keeps the position positions.txt gives it, the missing ones too.
    np.testing.assert_array_equal(got["positions"], raw_positions(scan_copy))
    assert cli("verify", out).code == 0


@pytest.mark.parametrize("odd", [np.zeros((SIDE, SIDE + 2), np.int32),
                                 np.zeros((SIDE, SIDE), np.float64),
                                 np.zeros((2, SIDE, SIDE), np.int32)],
                         ids=["shape", "dtype", "3-D"])
def test_odd_frame_names_the_file_or_is_filled(scan_copy, tmp_path, cli, odd):
    bad = scan_copy / "ccd" / "diffraction_0012.npy"
    np.save(bad, odd)
    res = cli("prepare", scan_copy, "-o", tmp_path / "a.ptyd", "--shape", 32, "--no-progress")
    assert res.code == 2 and str(bad) in res.err
    res = cli("prepare", scan_copy, "-o", tmp_path / "b.ptyd", "--shape", 32, "--allow-missing",
              "--no-progress")
    assert res.code == 0, res.err
    got = read_back(tmp_path / "b.ptyd")
    assert got["ptyd"].provenance["missing_indices"] == [12]
    assert not got["weights"][12].any() and got["weights"][13].all()


def test_num_frames_beyond_the_scan(ptypy_scan, tmp_path, cli):
    res = cli("prepare", ptypy_scan, "-o", tmp_path / "a.ptyd", "--shape", 32,
              "--num-frames", PTYPY_FRAMES + 3, "--no-progress")
    assert res.code == 2 and str(ptypy_scan) in res.err
    out = tmp_path / "b.ptyd"
    res = cli("prepare", ptypy_scan, "-o", out, "--shape", 32, "--chunk-frames", 8,
              "--num-frames", PTYPY_FRAMES + 3, "--allow-missing", "--no-progress")
    assert res.code == 0, res.err
    got = read_back(out)
    assert got["meta"].num_frames == PTYPY_FRAMES + 3 and got["sizes"] == [8, 8, 8, 8, 1]
    assert got["ptyd"].provenance["missing_indices"] == [30, 31, 32]
    assert not got["weights"][PTYPY_FRAMES:].any()
    pos = raw_positions(ptypy_scan)
    np.testing.assert_array_equal(got["positions"][PTYPY_FRAMES:], np.repeat(pos[-1:], 3, 0))


# -- output modes -------------------------------------------------------------------------

def test_save_append_writes_one_file(ptypy_scan, tmp_path, cli):
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "scan.ptyd"
    res = cli("prepare", ptypy_scan, "-o", out, "--shape", 32, "--chunk-frames", 8,
              "--save", "append", "--no-progress")
    assert res.code == 0, res.err
    assert [p.name for p in outdir.iterdir()] == ["scan.ptyd"]
    got = read_back(out)
    assert [c.file for c in got["ptyd"].chunks] == [None] * 4
    assert got["sizes"] == [8, 8, 8, 6]
    data, _ = reference(raw_frames(ptypy_scan), 32)
    np.testing.assert_array_equal(got["data"], data)
    np.testing.assert_array_equal(got["positions"], raw_positions(ptypy_scan))
    assert got["ptyd"].provenance["state"] == "complete"
    assert cli("verify", out).code == 0


@pytest.mark.parametrize("compression, filter_id", [("gzip", "gzip"), ("bitshuffle-lz4", "32008")])
def test_compression_round_trips(hdf5_scan, tmp_path, cli, compression, filter_id):
    import hdf5plugin  # noqa: F401  (registers the bitshuffle filter for reading)

    out = tmp_path / "out.ptyd"
    res = cli("prepare", hdf5_scan, "-o", out, "--shape", 32, "--chunk-frames", 50,
              "--compression", compression, "--energy", 8.5, "--distance", 2.5,
              "--psize", "75e-6", "--no-progress")
    assert res.code == 0, res.err
    with h5py.File(tmp_path / "out.ptyd.chunk00000", "r") as f:
        assert filter_id in f["data"]._filters
        assert "gzip" in f["weights"]._filters  # masks: deflate, which every HDF5 reads
    got = read_back(out)
    data, weights = reference(raw_frames(hdf5_scan), 32)
    np.testing.assert_array_equal(got["data"], data)
    np.testing.assert_array_equal(got["weights"], weights)
    assert cli("verify", out).code == 0


def test_existing_output_needs_overwrite(ptypy_scan, tmp_path, cli):
    out = tmp_path / "out.ptyd"
    assert cli("prepare", ptypy_scan, "-o", out, "--shape", 32, "--no-progress").code == 0
    before = out.read_bytes()
    res = cli("prepare", ptypy_scan, "-o", out, "--shape", 16, "--no-progress")
    assert res.code == 3
    assert res.err.startswith("flyprep: error: ") and str(out) in res.err
    assert out.read_bytes() == before
    assert open_ptyd(out).meta.shape == (32, 32)
    res = cli("prepare", ptypy_scan, "-o", out, "--shape", 16, "--overwrite", "--no-progress")
    assert res.code == 0, res.err
    assert open_ptyd(out).meta.shape == (16, 16)
    assert not list(tmp_path.glob("*flyprep-tmp"))


def test_output_directory_missing_exits_3(ptypy_scan, tmp_path, cli):
    res = cli("prepare", ptypy_scan, "-o", tmp_path / "nowhere" / "out.ptyd", "--shape", 32,
              "--no-progress")
    assert res.code == 3 and "nowhere" in res.err


# -- verify, inspect, demo ----------------------------------------------------------------

@pytest.fixture
def link_output(ptypy_scan, tmp_path, cli) -> Path:
    out = tmp_path / "out.ptyd"
    res = cli("prepare", ptypy_scan, "-o", out, "--shape", 32, "--chunk-frames", 8, "--no-progress")
    assert res.code == 0, res.err
    return out


def test_verify_accepts_good_output(link_output, cli):
    res = cli("verify", link_output)
    assert res.code == 0
    assert "OK" in res.out and "error" not in res.err


def test_verify_fails_on_a_missing_middle_chunk(flyprep_process, link_output, tmp_path):
    (tmp_path / "out.ptyd.chunk00001").unlink()
    res = flyprep_process("verify", link_output)
    assert res.code == 1
    assert "4-order" in res.err and "dangling links [1]" in res.err


@pytest.mark.parametrize("damage", ["garbage", "no_meta", "num_frames"])
def test_verify_fails_on_broken_masters(link_output, cli, damage):
    if damage == "garbage":
        link_output.write_bytes(b"not hdf5 at all")
    elif damage == "no_meta":
        with h5py.File(link_output, "a") as f:
            del f["meta"]
    else:
        with h5py.File(link_output, "a") as f:
            del f["meta/num_frames"]
            f["meta/num_frames"] = np.int64(PTYPY_FRAMES + 5)
            f["meta/num_frames"].attrs["type"] = "scalar"
    res = cli("verify", link_output)
    assert res.code == 1
    assert "error" in res.err


def test_inspect_prints_meta_and_chunks(link_output, cli):
    res = cli("inspect", link_output)
    assert res.code == 0, res.err
    for text in ["meta/", "num_frames", "(32, 32)", "(16.0, 16.0)", "farfield",
                 "chunks", "out.ptyd.chunk00000", "out.ptyd.chunk00003",
                 f"{PTYPY_FRAMES} of {PTYPY_FRAMES} frames stored", "complete"]:
        assert text in res.out, text
    rows = re.findall(r"│ (\d+) +│ out\.ptyd\.chunk(\d{5}) +│ (\d+) +│ (\d+) +│", res.out)
    assert rows == [("0", "00000", "8", "0"), ("1", "00001", "8", "8"),
                    ("2", "00002", "8", "16"), ("3", "00003", "6", "24")]


def test_inspect_of_a_missing_file_exits_2(tmp_path, cli):
    res = cli("inspect", tmp_path / "absent.ptyd")
    assert res.code == 2 and "absent.ptyd" in res.err


def test_prepare_refuses_to_start_without_geometry(hdf5_scan, tmp_path, cli):
    """An HDF5 scan has no geometry.txt: energy, distance and psize must be given."""
    out = tmp_path / "out.ptyd"
    res = cli("prepare", hdf5_scan, "-o", out, "--shape", 32, "--energy", 8.5, "--no-progress")
    assert res.code == 2
    assert "distance, psize not given" in res.err and "energy" not in res.err.split("given")[0]
    assert not out.exists()


def test_a_whole_first_chunk_missing_is_filled(scan_copy, tmp_path, cli):
    for i in range(10):
        (scan_copy / f"ccd/diffraction_{i:04d}.npy").unlink()
    out = tmp_path / "out.ptyd"
    res = cli("prepare", scan_copy, "-o", out, "--shape", 32, "--chunk-frames", 10,
              "--allow-missing", "--no-progress")
    assert res.code == 0, res.err
    got = read_back(out)
    assert got["ptyd"].provenance["missing_indices"] == list(range(10))
    assert not got["weights"][:10].any() and got["weights"][10:].all()
    assert not got["data"][:10].any()


def test_a_failed_run_leaves_a_complete_aborted_file(scan_copy, tmp_path, cli):
    """A bad frame stops the run, but what arrived is written, the rest is filled, and
    the master says aborted with every planned frame: a live reader reaches the end."""
    np.save(scan_copy / "ccd/diffraction_0017.npy", np.zeros((3, 3, 3)))
    out = tmp_path / "out.ptyd"
    res = cli("prepare", scan_copy, "-o", out, "--shape", 32, "--chunk-frames", 5, "--no-progress")
    assert res.code == 2 and "diffraction_0017.npy" in res.err
    got = read_back(out)
    prov = got["ptyd"].provenance
    assert prov["state"] == "aborted"
    assert got["ptyd"].n_frames == PTYPY_FRAMES
    assert prov["missing_indices"] == list(range(17, PTYPY_FRAMES))
    assert got["weights"][:17].all() and not got["weights"][17:].any()


def test_inspect_shows_a_gap_instead_of_failing(link_output, tmp_path, cli):
    (tmp_path / "out.ptyd.chunk00001").unlink()
    res = cli("inspect", link_output)
    assert res.code == 0, res.err
    assert "GAP before resolved chunks at keys [1]" in res.out


def test_prepare_takes_the_frame_type_the_first_frames_agree_on(tmp_path):
    """One odd first frame is the one refused (or, with --allow-missing, the one filled),
    not the 99 good ones after it."""
    from flyprep.config import parse_config
    from flyprep.errors import InputError
    from flyprep.pipeline import prepare_scan
    from flyprep.sources.scan_dir import discover

    scan = tmp_path / "scan"
    (scan / "ccd").mkdir(parents=True)
    with open(scan / "positions.txt", "w") as pos:
        for i in range(30):
            frame = np.full((32, 32), i, np.int32) if i else np.zeros((20, 20), np.int32)
            np.save(scan / f"ccd/f_{i:02d}.npy", frame)
            pos.write(f"ccd/f_{i:02d}.npy {i * 1e-7} 0\n")
    config = parse_config({"geometry": {"energy": 6.2, "distance": 7.0, "psize": 172e-6},
                           "prep": {"shape": 16}, "output": {"chunk_frames": 10}})
    with pytest.raises(InputError, match=r"f_00\.npy.*\(20, 20\)"):
        prepare_scan(discover(scan), config, tmp_path / "a.ptyd")
    summary = prepare_scan(discover(scan), config, tmp_path / "b.ptyd", allow_missing=True)
    assert summary.frames_missing == 1


def spy_on_rows(monkeypatch) -> list[object]:
    """Record the ``rows`` every read_frames call of ``prepare`` asks for."""
    import flyprep.pipeline.prepare as prepare_module

    asked: list[object] = []
    real = prepare_module.read_frames

    def reading(source, start, stop, **kwargs):
        asked.append(kwargs.get("rows"))
        return real(source, start, stop, **kwargs)

    monkeypatch.setattr(prepare_module, "read_frames", reading)
    return asked


@pytest.mark.parametrize("scan, flags", [
    ("ptypy_scan", ["--shape", 24, "--center", "20,40", "--orientation", 5]),
    ("ptypy_scan", ["--shape", 32, "--auto-center", "--saturation", 3000]),
    ("hdf5_scan", ["--shape", 40, "--rebin", 2, "--center", "50,30", "--energy", 6.2,
                   "--distance", 7, "--psize", 75e-6]),
], ids=["npy-crop-oriented", "npy-auto-centre", "hdf5-stacks-rebinned"])
def test_reading_only_the_roi_rows_writes_what_whole_frames_write(
        request, tmp_path, cli, monkeypatch, scan, flags):
    """``prepare`` reads only the rows of the ROI once the preparation is fixed (whole
    frames for an auto centre's first chunk): the output is that of whole frames."""
    from flyprep.prep import Preparation

    root = request.getfixturevalue(scan)
    args = ["--chunk-frames", 8, "--no-progress", *flags]
    asked = spy_on_rows(monkeypatch)
    assert cli("prepare", root, "-o", tmp_path / "rows.ptyd", *args).code == 0
    assert asked[-1] is not None and asked[-1] != (0, SIDE)  # rows, not whole frames
    if "--auto-center" in flags:
        assert asked[0] is None  # the first chunk is read whole: its centre of mass
    monkeypatch.setattr(Preparation, "raw_rows", property(lambda self: None))
    asked.clear()
    res = cli("prepare", root, "-o", tmp_path / "whole.ptyd", *args)
    assert res.code == 0, res.err
    assert set(asked) == {None}
    a, b = read_back(tmp_path / "rows.ptyd"), read_back(tmp_path / "whole.ptyd")
    for key in ("data", "weights", "positions", "indices"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["data"].any()
    assert a["meta"] == b["meta"]
    assert a["ptyd"].provenance["params"] == b["ptyd"].provenance["params"]


# -- --resume ------------------------------------------------------------------------------

def interrupt_reading_at(monkeypatch, frame: int) -> None:
    """Ctrl-C while frame ``frame`` is read (the run stops between two frames)."""
    import flyprep.pipeline.prepare as prepare_module

    real = prepare_module.read_frames

    def reading(source, start, stop, **kwargs):
        for item in real(source, start, stop, **kwargs):
            if item[0] == frame:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(prepare_module, "read_frames", reading)


def test_resume_after_ctrl_c_gives_the_file_an_uninterrupted_run_gives(
        ptypy_scan, tmp_path, cli, monkeypatch):
    whole = tmp_path / "whole.ptyd"
    assert cli("prepare", ptypy_scan, "-o", whole, "--shape", 32, "--chunk-frames", 4,
               "--no-progress").code == 0
    out = tmp_path / "out.ptyd"
    with monkeypatch.context() as m:
        interrupt_reading_at(m, 10)
        res = cli("prepare", ptypy_scan, "-o", out, "--shape", 32, "--chunk-frames", 4,
                  "--no-progress")
    assert res.code == 130
    assert "keeps its first 8 frames in whole chunks; rerun with --resume" in res.err
    ptyd = open_ptyd(out)
    assert ptyd.state == "acquiring" and sum(c.n_frames for c in ptyd.chunks) == 8
    res = cli("prepare", ptypy_scan, "-o", out, "--shape", 32, "--chunk-frames", 4,
              "--no-progress")
    assert res.code == 3 and "--resume to go on with it" in res.err
    res = cli("prepare", ptypy_scan, "-o", out, "--shape", 32, "--chunk-frames", 4,
              "--resume", "--no-progress")
    assert res.code == 0, res.err
    a, b = read_back(whole), read_back(out)
    for key in ("data", "weights", "positions"):
        np.testing.assert_array_equal(a[key], b[key])
    assert b["ptyd"].state == "complete" and cli("verify", out).code == 0


def test_resume_after_a_crash_keeps_only_sound_chunks(ptypy_scan, tmp_path, cli, monkeypatch):
    """What a kill -9 leaves: a torn temporary chunk, a chunk cut short. The sound prefix
    is kept, the broken chunk moved aside (never deleted), the temporary file removed."""
    out = tmp_path / "out.ptyd"
    with monkeypatch.context() as m:
        interrupt_reading_at(m, 14)
        assert cli("prepare", ptypy_scan, "-o", out, "--shape", 32, "--chunk-frames", 4,
                   "--no-progress").code == 130
    chunk1 = tmp_path / "out.ptyd.chunk00001"
    chunk1.write_bytes(chunk1.read_bytes()[:600])
    (tmp_path / "out.ptyd.chunk00003.flyprep-tmp").write_bytes(b"\x89HDF torn")
    res = cli("prepare", ptypy_scan, "-o", out, "--shape", 32, "--chunk-frames", 4,
              "--resume", "--no-progress")
    assert res.code == 0, res.err
    assert [p.name for p in tmp_path.glob("out.ptyd.chunk00001.orphaned-*")] == [
        "out.ptyd.chunk00001.orphaned-0"]
    assert not list(tmp_path.glob("*flyprep-tmp"))
    got = read_back(out)
    data, weights = reference(raw_frames(ptypy_scan), 32)
    np.testing.assert_array_equal(got["data"], data)
    np.testing.assert_array_equal(got["weights"], weights)
    assert cli("verify", out).code == 0


def test_resume_with_other_settings_prepares_the_scan_anew(ptypy_scan, tmp_path, cli,
                                                            monkeypatch):
    out = tmp_path / "out.ptyd"
    with monkeypatch.context() as m:
        interrupt_reading_at(m, 10)
        assert cli("prepare", ptypy_scan, "-o", out, "--shape", 32, "--chunk-frames", 4,
                   "--no-progress").code == 130
    res = cli("prepare", ptypy_scan, "-o", out, "--shape", 16, "--chunk-frames", 4,
              "--resume", "--no-progress")
    assert res.code == 0, res.err
    assert len(list(tmp_path.glob("out.ptyd.chunk*.orphaned-*"))) == 2  # moved, not lost
    got = read_back(out)
    data, _ = reference(raw_frames(ptypy_scan), 16)
    np.testing.assert_array_equal(got["data"], data)


def test_resume_of_a_finished_output_touches_nothing(link_output, ptypy_scan, tmp_path, cli):
    before = link_output.read_bytes()
    for settings in (["--chunk-frames", 8], ["--chunk-frames", 5, "--shape", 16]):
        res = cli("prepare", ptypy_scan, "-o", link_output, "--shape", 32, *settings,
                  "--resume", "--no-progress")
        assert res.code == 3 and "finished scan already (complete); nothing to resume" in res.err
    assert link_output.read_bytes() == before


def test_resume_without_an_output_prepares_it(ptypy_scan, tmp_path, cli):
    out = tmp_path / "new.ptyd"
    assert cli("prepare", ptypy_scan, "-o", out, "--shape", 32, "--resume",
               "--no-progress").code == 0
    assert open_ptyd(out).state == "complete"


def test_resume_and_overwrite_exclude_each_other(ptypy_scan, tmp_path, cli):
    with pytest.raises(SystemExit) as exc:
        cli("prepare", ptypy_scan, "-o", tmp_path / "x.ptyd", "--resume", "--overwrite")
    assert exc.value.code == 2

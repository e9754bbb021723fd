"""Scan directory layouts and frame readers on real files: discovery, parsing, errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from flyprep.errors import InputError
from flyprep.sources import FrameRef, discover, read_frame, read_frames, read_map
from flyprep.sources import layouts

H, W = 8, 6
DSET = "/entry/data/data"


def frames_for(start: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(start)
    return rng.integers(0, 1000, (n, H, W)).astype(np.uint16) + np.uint16(start)


def write_ptypy_scan(root: Path, n: int = 5, *, geometry: str | None = None) -> tuple[Path, np.ndarray, np.ndarray]:
    """A hand-written PtyPy tutorial scan: geometry.txt, positions.txt, ccd/*.npy."""
    (root / "ccd").mkdir(parents=True)
    frames = frames_for(0, n)
    pos = np.stack([np.linspace(0, 1e-6, n), np.linspace(2e-6, -1e-6, n)], 1)
    lines = ["# frame file, y, x", ""]
    for i in range(n):
        name = f"ccd/diffraction_{i:04d}.npy"
        np.save(root / name, frames[i])
        lines.append(f"{name} {pos[i, 0]:.9e} {pos[i, 1]:.9e}")
    (root / "positions.txt").write_text("\n".join(lines) + "\n")
    (root / "geometry.txt").write_text(geometry if geometry is not None else
                                       "distance 1.5e-01\nenergy 9.3\n# detector\n"
                                       "psize 1.72e-4\n\nshape 256\n")
    return root, frames, pos


def write_hdf5_scan(root: Path, sizes=(3, None, 2), *, positions: str = "txt"
                    ) -> tuple[Path, np.ndarray, np.ndarray]:
    """HDF5 frame files: stacks of ``n`` frames, or a single 2-D frame for None."""
    root.mkdir(parents=True)
    blocks, start = [], 0
    for k, n in enumerate(sizes):
        block = frames_for(start, n or 1)
        with h5py.File(root / f"scan_{k:03d}.h5", "w") as f:
            f.create_dataset(DSET, data=block if n else block[0])
        blocks.append(block)
        start += n or 1
    frames = np.concatenate(blocks)
    pos = np.stack([np.arange(start) * 1e-7, np.arange(start) * -2e-7], 1)
    if positions == "txt":
        np.savetxt(root / "positions.txt", pos)
    else:
        with h5py.File(root / "positions.h5", "w") as f:
            f["positions"] = pos
    return root, frames, pos


def assert_names(exc: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    err = exc.value
    assert Path(str(err.path).split("[")[0]) == Path(path), f"{err} does not name {path}"
    assert str(path) in str(err)
    for text in fragments:
        assert text in err.reason, f"{text!r} not in {err.reason!r}"


# -- discovery ------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["auto", "ptypy"])
def test_ptypy_layout_discovered(tmp_path, layout):
    root, frames, pos = write_ptypy_scan(tmp_path / "scan")
    src = discover(root, layout=layout)
    assert src.layout == "ptypy"
    assert [r.index for r in src.frames] == list(range(5))
    assert [r.path for r in src.frames] == [root / f"ccd/diffraction_{i:04d}.npy" for i in range(5)]
    assert all(r.slot is None for r in src.frames)
    np.testing.assert_allclose(src.positions, pos, rtol=1e-8)
    for i, name_frame in enumerate(read_frames(src, 0, 5)):
        index, arr, name = name_frame
        assert index == i and name == str(root / f"ccd/diffraction_{i:04d}.npy")
        np.testing.assert_array_equal(arr, frames[i])


def test_ptypy_geometry_parsed(tmp_path):
    root, _, _ = write_ptypy_scan(tmp_path / "scan")
    geo = discover(root).geometry
    assert geo == {"distance": 0.15, "energy": 9.3, "psize": 1.72e-4, "shape": 256}
    assert isinstance(geo["shape"], int)


def test_example_scans_discovered_in_both_layouts(make_example):
    ptypy = discover(make_example("ptypy", frames=7, side=16))
    assert ptypy.layout == "ptypy" and len(ptypy.frames) == 7
    assert ptypy.geometry == {"distance": 7.0, "energy": 6.2, "psize": 172e-6, "shape": 16}
    hdf5 = discover(make_example("hdf5", frames=7, side=16))
    assert hdf5.layout == "hdf5" and len(hdf5.frames) == 7
    assert [r.slot for r in hdf5.frames] == list(range(7))
    np.testing.assert_allclose(hdf5.positions, ptypy.positions)


@pytest.mark.parametrize("layout", ["auto", "hdf5"])
def test_hdf5_layout_with_stacks_and_single_frames(tmp_path, layout):
    root, frames, pos = write_hdf5_scan(tmp_path / "scan")
    src = discover(root, layout=layout)
    assert src.layout == "hdf5"
    assert [(r.index, r.path.name, r.slot) for r in src.frames] == [
        (0, "scan_000.h5", 0), (1, "scan_000.h5", 1), (2, "scan_000.h5", 2),
        (3, "scan_001.h5", None),
        (4, "scan_002.h5", 0), (5, "scan_002.h5", 1)]
    np.testing.assert_allclose(src.positions, pos)
    got = list(read_frames(src, 0, 6))
    assert [i for i, _, _ in got] == list(range(6))
    np.testing.assert_array_equal(np.stack([f for _, f, _ in got]), frames)
    assert got[1][2] == f"{root / 'scan_000.h5'}[1]"
    assert got[3][2] == str(root / "scan_001.h5")


def test_stacked_frames_read_with_one_slice_per_file(tmp_path, monkeypatch):
    root, frames, _ = write_hdf5_scan(tmp_path / "scan", sizes=(4, 4, None, 3))
    src = discover(root)
    calls = []
    real = layouts._read_stack

    def spy(ref, dataset, lo, hi):
        calls.append((ref.path.name, lo, hi))
        return real(ref, dataset, lo, hi)

    monkeypatch.setattr(layouts, "_read_stack", spy)
    got = list(read_frames(src, 1, 11))  # starts and ends inside stacks
    assert [i for i, _, _ in got] == list(range(1, 11))
    np.testing.assert_array_equal(np.stack([f for _, f, _ in got]), frames[1:11])
    assert calls == [("scan_000.h5", 1, 4), ("scan_001.h5", 0, 4), ("scan_003.h5", 0, 2)]
    names = [name for _, _, name in got]
    assert names[:2] == [f"{root / 'scan_000.h5'}[1]", f"{root / 'scan_000.h5'}[2]"]
    assert names[-3:] == [str(root / "scan_002.h5"), f"{root / 'scan_003.h5'}[0]",
                          f"{root / 'scan_003.h5'}[1]"]


def test_hdf5_positions_dataset_and_units(tmp_path):
    root, frames, pos = write_hdf5_scan(tmp_path / "scan", positions="h5")
    src = discover(root)
    np.testing.assert_allclose(src.positions, pos)
    with h5py.File(root / "positions.h5", "a") as f:
        f["/scan/xy_um"] = pos * 1e6
    src = discover(root, positions=root / "positions.h5", positions_dataset="/scan/xy_um",
                   units=1e-6)
    np.testing.assert_allclose(src.positions, pos)


def test_hdf5_text_positions_may_name_the_frame(tmp_path):
    root, _, pos = write_hdf5_scan(tmp_path / "scan")
    (root / "positions.txt").write_text(
        "".join(f"f{i} {y} {x}\n" for i, (y, x) in enumerate(pos)) + "f9 1 1\n")
    src = discover(root, layout="hdf5")
    np.testing.assert_allclose(src.positions, pos)  # extra positions are cut


def test_read_map_from_npy_and_hdf5(tmp_path):
    dark = np.arange(H * W, dtype=float).reshape(H, W)
    np.save(tmp_path / "dark.npy", dark)
    with h5py.File(tmp_path / "maps.h5", "w") as f:
        f["/cal/dark"] = dark
        f["/data"] = dark * 2
    np.testing.assert_array_equal(read_map(tmp_path / "dark.npy"), dark)
    np.testing.assert_array_equal(read_map(f"{tmp_path / 'maps.h5'}::/cal/dark"), dark)
    np.testing.assert_array_equal(read_map(tmp_path / "maps.h5"), dark * 2)


# -- bad input: InputError naming the file (and the line) ------------------------------

def test_missing_frame_file(tmp_path):
    root, _, _ = write_ptypy_scan(tmp_path / "scan")
    gone = root / "ccd/diffraction_0003.npy"
    gone.unlink()
    src = discover(root)  # discovery does not open frames
    with pytest.raises(InputError) as exc:
        list(read_frames(src, 0, 5))
    assert_names(exc, gone, "not found")


def test_missing_hdf5_frame_file_at_read_time(tmp_path):
    root, _, _ = write_hdf5_scan(tmp_path / "scan")
    src = discover(root)
    (root / "scan_002.h5").unlink()
    with pytest.raises(InputError) as exc:
        list(read_frames(src, 3, 6))
    assert_names(exc, root / "scan_002.h5", "not found")


@pytest.mark.parametrize("layout", ["auto", "ptypy"])
@pytest.mark.parametrize("bad", ["ccd/diffraction_0002.npy 1e-7",
                                 "ccd/diffraction_0002.npy 1e-7 nan-ish",
                                 "ccd/diffraction_0002.npy 1 2 3"])
def test_malformed_positions_line(tmp_path, layout, bad):
    root, _, _ = write_ptypy_scan(tmp_path / "scan")
    lines = (root / "positions.txt").read_text().splitlines()
    lines[4] = bad  # line 5 of the file (a comment and a blank line come first)
    (root / "positions.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as exc:
        discover(root, layout=layout)
    assert_names(exc, root / "positions.txt", "line 5")


def test_empty_positions_file(tmp_path):
    root, _, _ = write_ptypy_scan(tmp_path / "scan")
    (root / "positions.txt").write_text("# nothing yet\n")
    with pytest.raises(InputError) as exc:
        discover(root, layout="ptypy")
    assert_names(exc, root / "positions.txt", "no positions")


def test_malformed_hdf5_text_positions_line(tmp_path):
    root, _, _ = write_hdf5_scan(tmp_path / "scan")
    lines = (root / "positions.txt").read_text().splitlines()
    lines[2] = "0.1 zero"
    (root / "positions.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as exc:
        discover(root, layout="hdf5")
    assert_names(exc, root / "positions.txt", "line 3")


def test_non_numeric_geometry(tmp_path):
    root, _, _ = write_ptypy_scan(tmp_path / "scan",
                                  geometry="distance 1.5e-01\nenergy nine\npsize 1e-4\n")
    with pytest.raises(InputError) as exc:
        discover(root)
    assert_names(exc, root / "geometry.txt", "line 2", "nine")


@pytest.mark.parametrize("line", ["wavelength 1e-10", "energy", "energy 9.3 keV"])
def test_unknown_or_malformed_geometry_line(tmp_path, line):
    root, _, _ = write_ptypy_scan(tmp_path / "scan",
                                  geometry=f"# geometry\ndistance 1.5e-01\n{line}\n")
    with pytest.raises(InputError) as exc:
        discover(root)
    assert_names(exc, root / "geometry.txt", "line 3", line.split()[0])


def test_three_dimensional_npy_frame(tmp_path):
    root, _, _ = write_ptypy_scan(tmp_path / "scan")
    bad = root / "ccd/diffraction_0001.npy"
    np.save(bad, np.zeros((2, H, W), np.uint16))
    with pytest.raises(InputError) as exc:
        list(read_frames(discover(root), 0, 5))
    assert_names(exc, bad, "(2, 8, 6)", "2-D")


@pytest.mark.parametrize("content", [b"\x00garbage\xff" * 20, b""])
def test_corrupt_npy_frame(tmp_path, content):
    root, _, _ = write_ptypy_scan(tmp_path / "scan")
    bad = root / "ccd/diffraction_0002.npy"
    bad.write_bytes(content)
    with pytest.raises(InputError) as exc:
        read_frame(discover(root).frames[2])
    assert_names(exc, bad, "unreadable")


def test_truncated_npy_frame(tmp_path):
    root, _, _ = write_ptypy_scan(tmp_path / "scan")
    bad = root / "ccd/diffraction_0000.npy"
    bad.write_bytes(bad.read_bytes()[:-7])
    with pytest.raises(InputError) as exc:
        read_frame(discover(root).frames[0])
    assert_names(exc, bad, "unreadable")


def test_corrupt_hdf5_frame_file_at_discovery(tmp_path):
    root, _, _ = write_hdf5_scan(tmp_path / "scan")
    bad = root / "scan_001.h5"
    bad.write_bytes(b"\x89HDF-not-really" * 50)
    with pytest.raises(InputError) as exc:
        discover(root)
    assert_names(exc, bad, "HDF5")


def test_corrupt_hdf5_frame_file_at_read_time(tmp_path):
    root, _, _ = write_hdf5_scan(tmp_path / "scan")
    src = discover(root)
    for name, index in (("scan_001.h5", 3), ("scan_002.h5", 4)):
        (root / name).write_bytes(b"garbage" * 100)
        with pytest.raises(InputError) as exc:
            list(read_frames(src, index, index + 1))
        assert_names(exc, root / name, "unreadable")


def test_garbage_h5_frame_is_refused(tmp_path):
    bad = tmp_path / "frame.h5"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError) as exc:
        read_frame(FrameRef(0, bad))
    assert_names(exc, bad, "unreadable")


def test_missing_dataset(tmp_path):
    root, _, _ = write_hdf5_scan(tmp_path / "scan")
    with h5py.File(root / "scan_002.h5", "a") as f:
        f.move(DSET, "/entry/data/other")
    with pytest.raises(InputError) as exc:
        discover(root)
    assert_names(exc, root / "scan_002.h5", DSET)


def test_missing_dataset_at_read_time_names_the_dataset(tmp_path):
    path = tmp_path / "one.h5"
    with h5py.File(path, "w") as f:
        f["/x"] = np.zeros((H, W))
    with pytest.raises(InputError) as exc:
        read_frame(FrameRef(0, path))
    assert_names(exc, path, DSET)
    with pytest.raises(InputError) as exc:
        read_frame(FrameRef(0, path), dataset="/y")
    assert_names(exc, path, "/y")


def test_hdf5_frames_of_wrong_rank(tmp_path):
    root, _, _ = write_hdf5_scan(tmp_path / "scan")
    with h5py.File(root / "scan_001.h5", "a") as f:
        del f[DSET]
        f[DSET] = np.zeros((2, 2, H, W))
    with pytest.raises(InputError) as exc:
        discover(root)
    assert_names(exc, root / "scan_001.h5", "(2, 2, 8, 6)")


@pytest.mark.parametrize("kind", ["txt", "h5"])
def test_fewer_positions_than_frames(tmp_path, kind):
    root, _, pos = write_hdf5_scan(tmp_path / "scan", positions=kind)
    if kind == "txt":
        np.savetxt(root / "positions.txt", pos[:4])
    else:
        with h5py.File(root / "positions.h5", "w") as f:
            f["positions"] = pos[:4]
    with pytest.raises(InputError) as exc:
        discover(root)
    assert_names(exc, root / f"positions.{kind}", "4 positions for 6 frames")


def test_positions_dataset_of_wrong_shape_or_absent(tmp_path):
    root, _, pos = write_hdf5_scan(tmp_path / "scan", positions="h5")
    with h5py.File(root / "positions.h5", "w") as f:
        f["positions"] = np.zeros((6, 3))
    with pytest.raises(InputError) as exc:
        discover(root)
    assert_names(exc, root / "positions.h5", "(6, 3)")
    with pytest.raises(InputError) as exc:
        discover(root, positions_dataset="/nowhere")
    assert_names(exc, root / "positions.h5", "/nowhere")


def test_no_positions_file(tmp_path):
    root, _, _ = write_hdf5_scan(tmp_path / "scan")
    (root / "positions.txt").unlink()
    with pytest.raises(InputError) as exc:
        discover(root)
    assert_names(exc, root, "positions")
    with pytest.raises(InputError) as exc:
        discover(root, positions=tmp_path / "elsewhere.txt")
    assert_names(exc, tmp_path / "elsewhere.txt", "not found")


def test_no_frame_files_or_no_directory(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    np.savetxt(root / "positions.txt", np.zeros((3, 2)))
    with pytest.raises(InputError) as exc:
        discover(root)
    assert_names(exc, root, "*.h5")
    with pytest.raises(InputError) as exc:
        discover(tmp_path / "absent")
    assert_names(exc, tmp_path / "absent", "does not exist")

"""Scan directory layouts and frame readers on real files: discovery, parsing, errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from flyprep.errors import InputError
from flyprep.sources import FrameRef, discover, read_frame, read_frames, read_map
from flyprep.sources import scan_dir as layouts

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


def spy_on_slices(monkeypatch) -> list[tuple[str, int, int]]:
    """Record ``(file name, lo, hi)`` of every stack slice read_frames asks for."""
    calls: list[tuple[str, int, int]] = []
    real = layouts._read_stack

    def spy(ref, dataset, lo, hi, rows=None):
        calls.append((ref.path.name, lo, hi))
        return real(ref, dataset, lo, hi, rows)

    monkeypatch.setattr(layouts, "_read_stack", spy)
    return calls


@pytest.mark.parametrize("max_block, slices", [
    (None, [("scan_000.h5", 1, 4), ("scan_001.h5", 0, 4), ("scan_003.h5", 0, 2)]),
    (3, [("scan_000.h5", 1, 4), ("scan_001.h5", 0, 3), ("scan_001.h5", 3, 4),
         ("scan_003.h5", 0, 2)]),
])
def test_stacked_frames_read_in_slices_of_at_most_max_block(tmp_path, monkeypatch,
                                                             max_block, slices):
    root, frames, _ = write_hdf5_scan(tmp_path / "scan", sizes=(4, 4, None, 3))
    src = discover(root)
    calls = spy_on_slices(monkeypatch)
    kw = {} if max_block is None else {"max_block": max_block}
    got = list(read_frames(src, 1, 11, **kw))  # starts and ends inside stacks
    assert [i for i, _, _ in got] == list(range(1, 11))
    np.testing.assert_array_equal(np.stack([f for _, f, _ in got]), frames[1:11])
    assert calls == slices
    names = [name for _, _, name in got]
    assert names[:2] == [f"{root / 'scan_000.h5'}[1]", f"{root / 'scan_000.h5'}[2]"]
    assert names[-3:] == [str(root / "scan_002.h5"), f"{root / 'scan_003.h5'}[0]",
                          f"{root / 'scan_003.h5'}[1]"]


@pytest.mark.parametrize("max_block", [1, 4, 64, 1000])
def test_big_stack_is_never_read_whole(tmp_path, monkeypatch, max_block):
    """An Eiger-like file of many frames is read max_block frames at a time, not at once."""
    root, frames, _ = write_hdf5_scan(tmp_path / "scan", sizes=(150,))
    src = discover(root)
    calls = spy_on_slices(monkeypatch)
    got = list(read_frames(src, 3, 150, max_block=max_block))
    np.testing.assert_array_equal(np.stack([f for _, f, _ in got]), frames[3:150])
    assert [i for i, _, _ in got] == list(range(3, 150))
    assert all(0 < hi - lo <= max_block for _, lo, hi in calls)
    assert [lo for _, lo, _ in calls] == list(range(3, 150, max_block))
    assert calls[-1][2] == 150
    assert len(calls) == -(-147 // max_block)  # several frames per slice, not one by one


@pytest.mark.parametrize("max_block", [0, -5])
def test_max_block_must_be_positive(tmp_path, max_block):
    root, _, _ = write_hdf5_scan(tmp_path / "scan")
    with pytest.raises(ValueError, match="max_block"):
        list(read_frames(discover(root), 0, 6, max_block=max_block))


def test_hdf5_frame_files_sorted_naturally(tmp_path):
    """frame_2.h5 comes before frame_10.h5: digit runs compare as numbers."""
    root = tmp_path / "scan"
    root.mkdir()
    numbers = [10, 2, 1, 9, 100, 11]
    for k in numbers:
        with h5py.File(root / f"frame_{k}.h5", "w") as f:
            f[DSET] = np.full((H, W), k, np.uint16)
    np.savetxt(root / "positions.txt", np.zeros((len(numbers), 2)))
    src = discover(root)
    assert [r.path.name for r in src.frames] == [f"frame_{k}.h5" for k in sorted(numbers)]
    got = [int(frame[0, 0]) for _, frame, _ in read_frames(src, 0, len(numbers))]
    assert got == sorted(numbers)


def test_natural_order_mixes_text_and_numbers(tmp_path):
    root = tmp_path / "scan"
    root.mkdir()
    names = ["b_1.h5", "a_10_x2.h5", "a_10_x10.h5", "a_9.h5", "a_09.h5", "A_1.h5", "a.h5"]
    for name in names:
        with h5py.File(root / name, "w") as f:
            f[DSET] = np.zeros((H, W))
    np.savetxt(root / "positions.txt", np.zeros((len(names), 2)))
    got = [r.path.name for r in discover(root).frames]
    assert got == ["A_1.h5", "a.h5", "a_09.h5", "a_9.h5", "a_10_x2.h5", "a_10_x10.h5", "b_1.h5"]


def write_eiger_master(root: Path, data_files: list[str], name: str = "series_1_master.h5") -> Path:
    """A DECTRIS-style master file: no /entry/data/data, external links to the data files."""
    master = root / name
    with h5py.File(master, "w") as f:
        f["/entry/instrument/detector/x_pixel_size"] = 75e-6
        for k, data in enumerate(data_files, 1):
            f[f"/entry/data/data_{k:06d}"] = h5py.ExternalLink(data, DSET)
    return master


def test_eiger_master_file_is_not_a_frame_file(tmp_path):
    root, frames, pos = write_hdf5_scan(tmp_path / "scan", positions="h5")
    master = write_eiger_master(root, ["scan_000.h5", "scan_001.h5", "scan_002.h5"])
    src = discover(root)
    assert master not in [r.path for r in src.frames]
    assert root / "positions.h5" not in [r.path for r in src.frames]
    assert len(src.frames) == 6
    got = np.stack([f for _, f, _ in read_frames(src, 0, 6)])
    np.testing.assert_array_equal(got, frames)


def test_master_exclusion_can_be_changed(tmp_path):
    root, _, _ = write_hdf5_scan(tmp_path / "scan")
    master = write_eiger_master(root, ["scan_000.h5"])
    with pytest.raises(InputError) as exc:  # without the exclusion it is taken as frames
        discover(root, exclude=())
    assert_names(exc, master, DSET)
    (root / "scan_001.h5").rename(root / "scan_001_skip.h5")
    src = discover(root, exclude=("*_master.h5", "*_skip.h5"))
    assert [r.path.name for r in src.frames] == ["scan_000.h5"] * 3 + ["scan_002.h5"] * 2


def test_only_master_files_match(tmp_path):
    root = tmp_path / "scan"
    root.mkdir()
    np.savetxt(root / "positions.txt", np.zeros((3, 2)))
    write_eiger_master(root, ["series_1_data_000001.h5"])
    with pytest.raises(InputError) as exc:
        discover(root)
    assert_names(exc, root, "*.h5", "*_master.h5")


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


def test_read_map_errors_do_not_call_the_map_a_frame(tmp_path):
    with pytest.raises(InputError) as exc:
        read_map(tmp_path / "dark.npy")
    assert_names(exc, tmp_path / "dark.npy", "file not found")
    assert "frame" not in str(exc.value)
    garbage = tmp_path / "flat.h5"
    garbage.write_bytes(b"garbage" * 10)
    with pytest.raises(InputError) as exc:
        read_map(f"{garbage}::/flat")
    assert_names(exc, garbage, "unreadable")
    assert "frame" not in str(exc.value)
    np.save(tmp_path / "cube.npy", np.zeros((2, H, W)))
    with pytest.raises(InputError) as exc:
        read_map(tmp_path / "cube.npy")
    assert_names(exc, tmp_path / "cube.npy", "(2, 8, 6)", "2-D")
    assert "frame" not in str(exc.value)


def test_frame_errors_still_name_a_frame_file(tmp_path):
    with pytest.raises(InputError) as exc:
        read_frame(FrameRef(0, tmp_path / "gone.npy"))
    assert_names(exc, tmp_path / "gone.npy", "frame file not found")
    np.save(tmp_path / "cube.npy", np.zeros((2, H, W)))
    with pytest.raises(InputError) as exc:
        read_frame(FrameRef(0, tmp_path / "cube.npy"))
    assert_names(exc, tmp_path / "cube.npy", "frame has shape")


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


NON_FINITE = ["nan", "NaN", "inf", "-inf", "1e400"]


@pytest.mark.parametrize("layout", ["auto", "ptypy"])
@pytest.mark.parametrize("value", NON_FINITE)
def test_non_finite_named_positions_refused(tmp_path, layout, value):
    root, _, _ = write_ptypy_scan(tmp_path / "scan")
    lines = (root / "positions.txt").read_text().splitlines()
    lines[4] = f"ccd/diffraction_0002.npy 1e-7 {value}"  # line 5
    (root / "positions.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as exc:
        discover(root, layout=layout)
    assert_names(exc, root / "positions.txt", "line 5", "finite")


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("named", [False, True])
def test_non_finite_text_positions_refused(tmp_path, value, named):
    root, _, pos = write_hdf5_scan(tmp_path / "scan")
    lines = [f"{'f%d ' % i if named else ''}{y} {x}" for i, (y, x) in enumerate(pos)]
    lines[2] = f"{'f2 ' if named else ''}{value} 0.0"  # line 3
    (root / "positions.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as exc:
        discover(root, layout="hdf5")
    assert_names(exc, root / "positions.txt", "line 3", "finite")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_hdf5_positions_refused(tmp_path, value):
    root, _, pos = write_hdf5_scan(tmp_path / "scan", positions="h5")
    pos = pos.copy()
    pos[4, 1] = value
    with h5py.File(root / "positions.h5", "w") as f:
        f["positions"] = pos
    with pytest.raises(InputError) as exc:
        discover(root)
    assert_names(exc, root / "positions.h5", "finite", "row 4")


@pytest.mark.parametrize("line", ["distance nan", "energy inf", "shape inf", "psize -inf"])
def test_non_finite_geometry_refused(tmp_path, line):
    root, _, _ = write_ptypy_scan(tmp_path / "scan", geometry=f"distance 1.5e-01\n{line}\n")
    with pytest.raises(InputError) as exc:
        discover(root)
    assert_names(exc, root / "geometry.txt", "line 2", "finite")


def shorten_stack(path: Path, keep: int) -> None:
    """Rewrite a stack file with only its first ``keep`` frames (changed since discovery)."""
    with h5py.File(path, "a") as f:
        data = f[DSET][:keep]
        del f[DSET]
        f[DSET] = data


@pytest.mark.parametrize("max_block", [64, 3])
def test_stack_shorter_at_read_time_is_refused(tmp_path, max_block):
    root, frames, _ = write_hdf5_scan(tmp_path / "scan", sizes=(5, None, 2))
    src = discover(root)
    shorten_stack(root / "scan_000.h5", 2)
    got = []
    with pytest.raises(InputError) as exc:
        for index, frame, _name in read_frames(src, 0, 8, max_block=max_block):
            got.append(index)
    expected = min(5, max_block)
    assert_names(exc, root / "scan_000.h5", f"expected {expected} frames", "found 2")
    assert got == [0, 1]  # the frames that are there still come, in order


def test_stack_read_past_its_new_end_is_refused(tmp_path):
    root, _, _ = write_hdf5_scan(tmp_path / "scan", sizes=(5, None, 2))
    src = discover(root)
    shorten_stack(root / "scan_000.h5", 2)
    with pytest.raises(InputError) as exc:
        list(read_frames(src, 3, 5))
    assert_names(exc, root / "scan_000.h5", "expected 2 frames", "found 0")
    with pytest.raises(InputError) as exc:
        read_frame(src.frames[4], dataset=DSET)
    assert_names(exc, root / "scan_000.h5", "unreadable")


def test_stack_that_became_a_single_frame_is_refused(tmp_path):
    root, _, _ = write_hdf5_scan(tmp_path / "scan", sizes=(5, None, 2))
    src = discover(root)
    with h5py.File(root / "scan_000.h5", "a") as f:
        del f[DSET]
        f[DSET] = np.zeros((H, W))
    with pytest.raises(InputError) as exc:
        list(read_frames(src, 0, 3))
    assert_names(exc, root / "scan_000.h5", "(8, 6)")


@pytest.mark.parametrize("chunks, cached", [((1, H, W), False), ((1, 4, W), False),
                                            ((3, H, W), False), (None, True)])
def test_chunked_stacks_are_read_without_the_chunk_cache(tmp_path, monkeypatch, chunks,
                                                         cached):
    """The file is opened for each read and one read visits each chunk once: a chunked
    stack is read straight into the rows asked for, never through HDF5's chunk cache. The
    rows read are the file's either way."""
    frames = frames_for(0, 7)
    path = tmp_path / "stack.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset(DSET, data=frames, chunks=chunks)
    seen = []
    real = layouts._open_dataset

    def spy(f, name):
        dset = real(f, name)
        seen.append(dset.id.get_access_plist().get_chunk_cache()[1])
        return dset

    monkeypatch.setattr(layouts, "_open_dataset", spy)
    block, top, shape = layouts.read_stack_rows(path, DSET, 2, 7, (3, 6))
    np.testing.assert_array_equal(block, frames[2:7, 3:6])
    assert (top, shape) == (3, (H, W))
    assert (seen[0] != 0) == cached

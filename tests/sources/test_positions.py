"""GrowingPositions: a positions file read again and again while the acquisition appends."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from flyprep.errors import InputError
from flyprep.sources.positions import GrowingPositions


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def test_missing_file_has_no_rows(tmp_path: Path) -> None:
    pos = GrowingPositions(tmp_path / "positions.txt")
    assert pos.refresh() == 0
    assert pos.positions.shape == (0, 2)
    assert len(pos) == 0
    assert pos.names is None


def test_text_rows_in_pieces_with_units(tmp_path: Path) -> None:
    path = tmp_path / "positions.txt"
    pos = GrowingPositions(path, units=1e-6)
    append(path, "# y x in micrometres\n1.5 2.5\n")
    assert pos.refresh() == 1
    append(path, "\n3 4\n5 6\n")
    assert pos.refresh() == 2
    assert pos.refresh() == 0
    np.testing.assert_allclose(pos.positions, [[1.5e-6, 2.5e-6], [3e-6, 4e-6], [5e-6, 6e-6]])
    assert pos.names is None
    assert len(pos) == 3


def test_line_without_newline_waits_until_completed(tmp_path: Path) -> None:
    path = tmp_path / "positions.txt"
    pos = GrowingPositions(path)
    append(path, "1 2\n3 4")  # the writer is in the middle of line 2
    assert pos.refresh() == 1
    np.testing.assert_array_equal(pos.positions, [[1, 2]])
    append(path, "5")  # '3 45', still not finished
    assert pos.refresh() == 0
    assert len(pos) == 1
    append(path, "\n")
    assert pos.refresh() == 1
    np.testing.assert_array_equal(pos.positions, [[1, 2], [3, 45]])


def test_first_line_split_mid_number(tmp_path: Path) -> None:
    path = tmp_path / "positions.txt"
    pos = GrowingPositions(path)
    append(path, "1.25e-")
    assert pos.refresh() == 0
    append(path, "6 2e-6\n")
    assert pos.refresh() == 1
    np.testing.assert_allclose(pos.positions, [[1.25e-6, 2e-6]])


def test_short_single_line_file_is_read(tmp_path: Path) -> None:
    """A one-point scan: 4 bytes, fewer than an HDF5 signature, still a complete line."""
    path = tmp_path / "positions.txt"
    path.write_text("0 1\n")
    pos = GrowingPositions(path)
    assert pos.refresh() == 1
    np.testing.assert_array_equal(pos.positions, [[0, 1]])


def test_ptypy_names(tmp_path: Path) -> None:
    path = tmp_path / "positions.txt"
    pos = GrowingPositions(path)
    append(path, "ccd/frame_0.npy 1 2\n")
    assert pos.refresh() == 1
    append(path, "ccd/frame_1.npy 3 4\nccd/frame_2.npy 5 6\n")
    assert pos.refresh() == 2
    assert pos.names == ["ccd/frame_0.npy", "ccd/frame_1.npy", "ccd/frame_2.npy"]
    np.testing.assert_array_equal(pos.positions, [[1, 2], [3, 4], [5, 6]])


def test_replaced_file_starts_over(tmp_path: Path) -> None:
    """A writer that rewrites the whole file each time (write, rename) replaces it."""
    path = tmp_path / "positions.txt"
    pos = GrowingPositions(path)
    path.write_text("f0.npy 1 2\nf1.npy 3 4\n")
    assert pos.refresh() == 2
    tmp = tmp_path / "positions.new"
    tmp.write_text("g0.npy 10 20\ng1.npy 30 40\ng2.npy 50 60\n")  # larger, new inode
    inode_before = path.stat().st_ino
    os.replace(tmp, path)
    assert path.stat().st_ino != inode_before
    pos.refresh()
    np.testing.assert_array_equal(pos.positions, [[10, 20], [30, 40], [50, 60]])
    assert pos.names == ["g0.npy", "g1.npy", "g2.npy"]


def test_replaced_by_file_with_no_complete_line_forgets_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "positions.txt"
    pos = GrowingPositions(path)
    path.write_text("1 2\n3 4\n")
    assert pos.refresh() == 2
    tmp = tmp_path / "positions.new"
    tmp.write_text("7 8")  # no newline yet
    os.replace(tmp, path)
    pos.refresh()
    assert pos.positions.shape == (0, 2)
    append(path, "\n")
    pos.refresh()
    np.testing.assert_array_equal(pos.positions, [[7, 8]])


def test_shrunk_file_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "positions.txt"
    pos = GrowingPositions(path)
    path.write_text("1 2\n3 4\n5 6\n")
    assert pos.refresh() == 3
    inode = path.stat().st_ino
    with open(path, "w") as f:  # truncated in place: same inode, smaller
        f.write("9 9\n")
    assert path.stat().st_ino == inode
    assert pos.refresh() == 1
    np.testing.assert_array_equal(pos.positions, [[9, 9]])
    append(path, "8 8\n")
    assert pos.refresh() == 1
    np.testing.assert_array_equal(pos.positions, [[9, 9], [8, 8]])


def test_truncated_to_empty_forgets_old_rows(tmp_path: Path) -> None:
    path = tmp_path / "positions.txt"
    pos = GrowingPositions(path)
    path.write_text("1 2\n3 4\n")
    assert pos.refresh() == 2
    path.write_text("")
    pos.refresh()
    assert pos.positions.shape == (0, 2)
    append(path, "5 6\n")
    assert pos.refresh() == 1
    np.testing.assert_array_equal(pos.positions, [[5, 6]])


@pytest.mark.parametrize(("text", "lineno", "words"), [
    ("1 2\n3 x\n", 2, "must be numbers"),
    ("1 2\n\n# comment\n3 4 5\n", 4, "expected '<y> <x>'"),
    ("1 2\n3 nan\n", 2, "must be finite"),
    ("a.npy 1 2\nb.npy 3\n", 2, "expected '<frame file> <y> <x>'"),
    ("a.npy 1 2\nb.npy 3 inf\n", 2, "must be finite"),
])
def test_bad_line_names_file_and_line(tmp_path: Path, text: str, lineno: int, words: str) -> None:
    path = tmp_path / "positions.txt"
    path.write_text(text)
    pos = GrowingPositions(path)
    with pytest.raises(InputError) as info:
        pos.refresh()
    assert info.value.path == str(path)
    assert f"line {lineno}:" in info.value.reason
    assert words in info.value.reason


def test_bad_line_in_a_later_piece_counts_earlier_lines(tmp_path: Path) -> None:
    path = tmp_path / "positions.txt"
    pos = GrowingPositions(path)
    append(path, "1 2\n3 4\n")
    assert pos.refresh() == 2
    append(path, "5 6\n7 oops\n")
    with pytest.raises(InputError, match="line 4:"):
        pos.refresh()


def test_bad_line_again_reports_the_same_line_and_keeps_rows(tmp_path: Path) -> None:
    """A caller that logs the error and refreshes again gets the same answer, and the good
    rows before the bad line are not counted twice."""
    path = tmp_path / "positions.txt"
    pos = GrowingPositions(path)
    append(path, "1 2\n")
    assert pos.refresh() == 1
    append(path, "3 4\n5 6\nbad\n")
    for _ in range(2):
        with pytest.raises(InputError, match="line 4:"):
            pos.refresh()
    np.testing.assert_array_equal(pos.positions, [[1, 2]])
    assert len(pos) == 1


def test_bad_first_ptypy_line_again_reports_the_same(tmp_path: Path) -> None:
    path = tmp_path / "positions.txt"
    path.write_text("a.npy 1 y\n")
    pos = GrowingPositions(path)
    for _ in range(2):
        with pytest.raises(InputError, match="line 1: positions must be numbers"):
            pos.refresh()
    assert pos.names is None


def test_names_decided_by_first_line(tmp_path: Path) -> None:
    path = tmp_path / "positions.txt"
    path.write_text("1 2\nb.npy 3 4\n")
    with pytest.raises(InputError, match="line 2: expected '<y> <x>'"):
        GrowingPositions(path).refresh()


def test_binary_garbage_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "positions.txt"
    path.write_bytes(b"1 2\n\xff\xfe\xfd 3\n")
    with pytest.raises(InputError, match="not text"):
        GrowingPositions(path).refresh()


# ---- HDF5


def write_h5_rows(path: Path, rows: np.ndarray, *, dataset: str = "positions") -> None:
    """Rewrite the whole (preallocated) dataset, as a writer flushing its buffer does."""
    with h5py.File(path, "a") as f:
        if dataset in f:
            f[dataset][...] = rows
        else:
            f.create_dataset(dataset, data=rows, maxshape=(None, 2))


def test_hdf5_grows_with_nan_tail(tmp_path: Path) -> None:
    path = tmp_path / "positions.h5"
    table = np.full((5, 2), np.nan)
    write_h5_rows(path, table, dataset="/entry/pos")
    pos = GrowingPositions(path, units=1e-3, dataset="/entry/pos")
    assert pos.refresh() == 0
    assert pos.positions.shape == (0, 2)
    assert pos.names is None
    table[0] = [1, 2]
    table[1] = [3, 4]
    write_h5_rows(path, table, dataset="/entry/pos")
    assert pos.refresh() == 2
    np.testing.assert_allclose(pos.positions, [[1e-3, 2e-3], [3e-3, 4e-3]])
    table[3] = [7, 8]  # row 2 is still NaN: row 3 does not count yet
    write_h5_rows(path, table, dataset="/entry/pos")
    pos.refresh()
    assert len(pos) == 2
    table[2] = [5, np.nan]  # half written
    write_h5_rows(path, table, dataset="/entry/pos")
    pos.refresh()
    assert len(pos) == 2
    table[2] = [5, 6]
    write_h5_rows(path, table, dataset="/entry/pos")
    assert pos.refresh() == 2
    np.testing.assert_allclose(pos.positions, np.arange(1, 9).reshape(4, 2) * 1e-3)


def test_hdf5_resized_dataset(tmp_path: Path) -> None:
    path = tmp_path / "positions.h5"
    write_h5_rows(path, np.array([[1.0, 2.0]]))
    pos = GrowingPositions(path)  # default dataset "positions"
    assert pos.refresh() == 1
    with h5py.File(path, "a") as f:
        f["positions"].resize((3, 2))
        f["positions"][1:] = [[3, 4], [5, 6]]
    assert pos.refresh() == 2
    np.testing.assert_array_equal(pos.positions, [[1, 2], [3, 4], [5, 6]])


def test_hdf5_without_the_dataset_yet(tmp_path: Path) -> None:
    path = tmp_path / "positions.h5"
    with h5py.File(path, "w") as f:
        f.create_group("entry")
    pos = GrowingPositions(path, dataset="/entry/pos")
    assert pos.refresh() == 0
    write_h5_rows(path, np.array([[1.0, 2.0]]), dataset="/entry/pos")
    assert pos.refresh() == 1


def test_hdf5_replaced_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "positions.h5"
    write_h5_rows(path, np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    pos = GrowingPositions(path)
    assert pos.refresh() == 3
    tmp = tmp_path / "new.h5"
    write_h5_rows(tmp, np.array([[9.0, 9.0]]))
    os.replace(tmp, path)
    pos.refresh()
    np.testing.assert_array_equal(pos.positions, [[9, 9]])


def test_hdf5_wrong_shape_names_file_and_dataset(tmp_path: Path) -> None:
    path = tmp_path / "positions.h5"
    with h5py.File(path, "w") as f:
        f["positions"] = np.zeros((4, 3))
    with pytest.raises(InputError) as info:
        GrowingPositions(path).refresh()
    assert info.value.path == str(path)
    assert "'positions'" in info.value.reason and "(4, 3)" in info.value.reason

"""Reading only the rows a preparation uses: ``read_npy_rows``, ``read_frames(rows=)`` and
the :class:`FrameRows` they give, which refuses to be read where nothing was read."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from flyprep.errors import InputError
from flyprep.sources import discover, read_frames
from flyprep.sources.npy import read_npy_rows
from flyprep.sources.rows import FrameRows


def frame(h: int = 40, w: int = 24, dtype: str = "<i4", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, (h, w)).astype(dtype)


def record_reads(monkeypatch) -> list[int]:
    """Bytes of every read of file data (pread and preadv) from now on."""
    sizes: list[int] = []
    real_pread, real_preadv = os.pread, os.preadv

    def pread(fd, n, offset):
        data = real_pread(fd, n, offset)
        sizes.append(len(data))
        return data

    def preadv(fd, buffers, offset):
        n = real_preadv(fd, buffers, offset)
        sizes.append(n)
        return n

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "preadv", preadv)
    return sizes


@pytest.mark.parametrize("dtype", ["<i4", ">u2", "<f8"])
def test_only_the_rows_asked_are_read(tmp_path: Path, monkeypatch, dtype: str) -> None:
    whole = frame(400, 300, dtype)
    path = tmp_path / "f.npy"
    np.save(path, whole)
    reads = record_reads(monkeypatch)
    got = read_npy_rows(path, 150, 250)
    assert isinstance(got, FrameRows)
    assert (got.top, got.stop, got.shape, got.dtype) == (150, 250, (400, 300), whole.dtype)
    np.testing.assert_array_equal(got.rows, whole[150:250])
    assert got.rows.flags.c_contiguous and got.rows.flags.writeable
    # the header (one read of at most 512 bytes), then the 100 rows and nothing else
    assert sum(reads) <= 512 + 100 * 300 * whole.itemsize
    assert sum(reads) >= 100 * 300 * whole.itemsize


@pytest.mark.parametrize("arr", [
    np.asfortranarray(frame()),  # the rows are not contiguous: read whole
    np.arange(24, dtype=np.int32).reshape(2, 3, 4),  # not a frame
])
def test_other_arrays_are_read_whole(tmp_path: Path, arr: np.ndarray) -> None:
    path = tmp_path / "a.npy"
    np.save(path, arr)
    got = read_npy_rows(path, 0, 1)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("rows", [(0, 41), (-1, 5), (5, 5)])
def test_rows_the_frame_lacks_read_it_whole(tmp_path: Path, rows) -> None:
    path = tmp_path / "f.npy"
    np.save(path, frame())
    assert isinstance(read_npy_rows(path, *rows), np.ndarray)


def test_a_truncated_file_is_refused_even_if_the_rows_are_there(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    np.save(path, frame())
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated: the file is"):
        read_npy_rows(path, 0, 2)


def test_frame_rows_index_like_the_frame_and_refuse_the_rest() -> None:
    whole = frame()
    rows = FrameRows(whole[10:30].copy(), 10, whole.shape)
    np.testing.assert_array_equal(rows[10:30, 3:9], whole[10:30, 3:9])
    np.testing.assert_array_equal(rows[12:20, :], whole[12:20, :])
    assert rows[20:15, :].shape == (0, whole.shape[1])
    for key in [(slice(9, 20), slice(None)), (slice(20, 31), slice(None)),
                (slice(10, 30, 2), slice(None))]:
        with pytest.raises(IndexError, match="read only for rows 10..30"):
            rows[key]
    with pytest.raises(TypeError):
        rows[5]
    with pytest.raises(TypeError, match="only rows 10..30 of this"):
        np.asarray(rows)
    with pytest.raises(ValueError, match="do not fit"):
        FrameRows(whole[:5], 38, whole.shape)


def write_h5_scan(root: Path, frames: np.ndarray, sizes: list[int | None]) -> None:
    """HDF5 frame files holding ``sizes`` frames each (None: one 2-D frame)."""
    root.mkdir()
    i = 0
    for k, size in enumerate(sizes):
        with h5py.File(root / f"scan_{k:03d}.h5", "w") as f:
            if size is None:
                f["/entry/data/data"] = frames[i]
                i += 1
            else:
                f.create_dataset("/entry/data/data", data=frames[i:i + size],
                                 chunks=(1, *frames.shape[1:]))
                i += size
    np.savetxt(root / "positions.txt", np.zeros((i, 2)))


def test_read_frames_gives_the_rows_of_stacks_and_single_frames(tmp_path: Path) -> None:
    frames = np.stack([frame(seed=s) for s in range(7)])
    write_h5_scan(tmp_path / "scan", frames, [3, None, 3])
    source = discover(tmp_path / "scan")
    got = list(read_frames(source, 1, 7, max_block=2, rows=(5, 17)))
    assert [i for i, _, _ in got] == list(range(1, 7))
    for i, rows, _ in got:
        assert isinstance(rows, FrameRows) and rows.shape == (40, 24)
        np.testing.assert_array_equal(rows[5:17, :], frames[i, 5:17])
    whole = list(read_frames(source, 0, 7))
    assert all(isinstance(f, np.ndarray) for _, f, _ in whole)


def test_rows_read_from_a_damaged_file_still_name_it(tmp_path: Path) -> None:
    root = tmp_path / "scan"
    root.mkdir()
    (root / "ccd").mkdir()
    np.save(root / "ccd" / "a.npy", frame())
    (root / "ccd" / "b.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "positions.txt").write_text("ccd/a.npy 0 0\nccd/b.npy 0 0\n")
    source = discover(root)
    with pytest.raises(InputError, match="b.npy.*unreadable frame"):
        list(read_frames(source, 0, 2, rows=(0, 4)))

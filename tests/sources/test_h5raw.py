"""Plain reads of HDF5 stacks give exactly what h5py gives, and step aside (None) for
every storage HDF5 must decode itself."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from flyprep.sources.h5raw import read_rows_raw
from flyprep.sources.scan_dir import read_stack_rows

N, H, W = 7, 10, 6
DSET = "/entry/data/data"


def stack(dtype: str = "<u2") -> np.ndarray:
    return np.random.default_rng(3).integers(0, 60000, (N, H, W)).astype(dtype)


def write(path: Path, data: np.ndarray | None = None, **kw) -> np.ndarray:
    data = stack() if data is None else data
    with h5py.File(path, "w", **kw.pop("file_kw", {})) as f:
        f.create_dataset(DSET, data=data, **kw)
    return data


PLAIN = {"contiguous": {}, "one frame per chunk": {"chunks": (1, H, W)}}


@pytest.mark.parametrize("kw", PLAIN.values(), ids=PLAIN.keys())
@pytest.mark.parametrize("lo, hi, top, stop", [(0, N, 0, H), (2, 5, 3, 8), (6, 7, 9, 10),
                                               (4, 20, 0, 1), (7, 9, 2, 4)])
@pytest.mark.parametrize("dtype", ["<u2", "<i4", "<f4", "<f8", "u1"])
def test_plain_stacks_read_as_h5py_reads_them(tmp_path, kw, lo, hi, top, stop, dtype):
    data = write(tmp_path / "s.h5", stack(dtype), **kw)
    with h5py.File(tmp_path / "s.h5", "r") as f:
        got = read_rows_raw(f[DSET], lo, hi, top, stop)
        want = f[DSET][lo:hi, top:stop]
    assert got is not None and got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, data[lo:hi, top:stop])


DECODED = {
    "gzip": {"chunks": (1, H, W), "compression": "gzip"},
    "shuffle": {"chunks": (1, H, W), "shuffle": True},
    "rows per chunk": {"chunks": (1, 4, W)},
    "frames per chunk": {"chunks": (3, H, W)},
    "big-endian": {"data": stack(">u2")},
    "user block": {"file_kw": {"userblock_size": 512}},
}


@pytest.mark.parametrize("kw", DECODED.values(), ids=DECODED.keys())
def test_storage_hdf5_must_decode_is_left_to_it(tmp_path, kw):
    data = write(tmp_path / "s.h5", **dict(kw))
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert read_rows_raw(f[DSET], 1, 4, 2, 6) is None
    block, top, shape = read_stack_rows(tmp_path / "s.h5", DSET, 1, 4, (2, 6))
    np.testing.assert_array_equal(block, data[1:4, 2:6])
    assert (top, shape) == (2, (H, W))


@pytest.mark.parametrize("kw", [{"chunks": (1, H, W)}, {}], ids=["chunked", "contiguous"])
def test_frames_not_written_yet_are_left_to_hdf5(tmp_path, kw):
    """An unwritten chunk (or a contiguous dataset with no data yet) reads as the fill
    value through HDF5; there are no bytes in the file to read plainly."""
    with h5py.File(tmp_path / "s.h5", "w") as f:
        dset = f.create_dataset(DSET, (N, H, W), "<u2", fillvalue=9, **kw)
        if kw:
            dset[0] = 1
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert read_rows_raw(f[DSET], 0, 3, 0, H) is None
    block, _, _ = read_stack_rows(tmp_path / "s.h5", DSET, 0, 3, None)
    assert (block[1:] == 9).all()


def test_a_stack_behind_an_external_link_is_read_from_its_own_file(tmp_path):
    data = write(tmp_path / "data.h5", chunks=(1, H, W))
    with h5py.File(tmp_path / "master.h5", "w") as f:
        f["entry/data/data"] = h5py.ExternalLink("data.h5", DSET)
    block, top, _ = read_stack_rows(tmp_path / "master.h5", DSET, 0, N, (1, 9))
    np.testing.assert_array_equal(block, data[:, 1:9])
    assert top == 1


def test_a_file_cut_short_while_read_is_an_error(tmp_path):
    """The data's bytes end before the frames do (the file shrank after HDF5 opened it):
    an error, never zeros."""
    path = tmp_path / "s.h5"
    write(path, np.ones((N, 64, 64), "<u2"))  # contiguous, its data last in the file
    with h5py.File(path, "r") as f:
        os.truncate(path, path.stat().st_size - 64 * 64 * 2 * 2)
        with pytest.raises(OSError, match="shrank"):
            read_rows_raw(f[DSET], 0, N, 0, 64)

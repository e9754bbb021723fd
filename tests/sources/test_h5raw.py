"""Plain reads of HDF5 stacks give exactly what h5py gives, and step aside (None) for
every storage HDF5 must decode itself."""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from flyprep.errors import InputError
from flyprep.sources.h5raw import read_rows_raw
from flyprep.sources.rows import FrameRows
from flyprep.sources import scan_dir as layouts
from flyprep.sources.scan_dir import FrameRef, read_frame, read_stack_rows

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


def _file_type(f: h5py.File, name: str, ftype: object, data: np.ndarray,
               chunks: tuple[int, ...] | None, mtype: object = None) -> None:
    """``f[name]`` of HDF5 file type ``ftype`` holding ``data`` (written as ``mtype``)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    if chunks:
        dcpl.set_chunk(chunks)
    dset = h5py.h5d.create(f.id, name.encode(), ftype, h5py.h5s.create_simple(data.shape),
                           dcpl=dcpl)
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, data, mtype=mtype)


def twelve_bits_of_sixteen(f, chunks):
    ftype = h5py.h5t.STD_U16LE.copy()
    ftype.set_precision(12)
    ftype.set_offset(4)
    raw = (np.arange(N * H * W) % 4000).astype("<u2").reshape(N, H, W) << 4
    _file_type(f, "d", ftype, raw, chunks, mtype=h5py.h5t.STD_U16LE)


def bool_enum_of_int32(f, chunks):
    ftype = h5py.h5t.enum_create(h5py.h5t.STD_I32LE)
    ftype.enum_insert(b"FALSE", 0)
    ftype.enum_insert(b"TRUE", 1)
    _file_type(f, "d", ftype, (np.arange(N * H * W) % 2).astype("<i4").reshape(N, H, W),
               chunks, mtype=ftype)


def float_of_another_bias(f, chunks):
    ftype = h5py.h5t.IEEE_F32LE.copy()
    ftype.set_ebias(100)
    _file_type(f, "d", ftype, np.linspace(1, 2, N * H * W).astype("<f4").reshape(N, H, W),
               chunks)


@pytest.mark.parametrize("chunks", [None, (1, H, W)], ids=["contiguous", "one frame per chunk"])
@pytest.mark.parametrize("make", [twelve_bits_of_sixteen, bool_enum_of_int32,
                                  float_of_another_bias])
def test_file_types_h5py_converts_are_left_to_hdf5(tmp_path, make, chunks):
    """Types whose bytes in the file are not the array's (some bits of a wider integer,
    an enum h5py shows as bool, a float of other layout) are converted by HDF5."""
    with h5py.File(tmp_path / "t.h5", "w") as f:
        make(f, chunks)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        assert read_rows_raw(f["d"], 0, N, 0, H) is None
        want = f["d"][:, 1:5]
    block, _, _ = read_stack_rows(tmp_path / "t.h5", "d", 0, N, (1, 5))
    assert block.dtype == want.dtype
    np.testing.assert_array_equal(block, want)


def test_a_stack_behind_an_external_link_is_read_from_its_own_file(tmp_path):
    """Eiger's layout: the master links ``data_000001`` to another file's ``data``; the
    master has a dataset at that path of its own too, which must not be read instead."""
    data = write(tmp_path / "data_000001.h5", chunks=(1, H, W))
    with h5py.File(tmp_path / "master.h5", "w") as f:
        f["entry/data/data_000001"] = h5py.ExternalLink("data_000001.h5", DSET)
        f.create_dataset(DSET, data=np.full((N, H, W), 7, "<u2"), chunks=(1, H, W))
    for chunks in ((1, H, W), None):
        block, top, _ = read_stack_rows(tmp_path / "master.h5", "/entry/data/data_000001",
                                        0, N, (1, 9))
        np.testing.assert_array_equal(block, data[:, 1:9])
        assert top == 1
        data = write(tmp_path / "data_000001.h5", chunks=chunks)


def test_the_file_read_is_the_one_hdf5_opened(tmp_path):
    """A file replaced under its name after HDF5 opened it: the bytes are read from the
    file HDF5 has open, as HDF5 itself would."""
    write(tmp_path / "a.h5", np.full((N, H, W), 1, "<u2"), chunks=(1, H, W))
    write(tmp_path / "b.h5", np.full((N, H, W), 2, "<u2"), chunks=(1, H, W))
    with h5py.File(tmp_path / "a.h5", "r") as f:
        os.rename(tmp_path / "b.h5", tmp_path / "a.h5")
        got = read_rows_raw(f[DSET], 0, N, 0, H)
    assert got is not None and (got == 1).all()


def test_a_file_cut_short_while_read_is_an_error(tmp_path):
    """The data's bytes end before the frames do (the file shrank after HDF5 opened it):
    an error, never zeros."""
    path = tmp_path / "s.h5"
    write(path, np.ones((N, 64, 64), "<u2"))  # contiguous, its data last in the file
    with h5py.File(path, "r") as f:
        os.truncate(path, path.stat().st_size - 64 * 64 * 2 * 2)
        with pytest.raises(OSError, match=f"{re.escape(str(path))}: .*shrank"):
            read_rows_raw(f[DSET], 0, N, 0, 64)


@pytest.mark.parametrize("kw", PLAIN.values(), ids=PLAIN.keys())
@pytest.mark.parametrize("rows", [None, (2, 7)])
def test_one_frame_files_and_single_stack_frames_are_read_plainly(tmp_path, monkeypatch,
                                                                   kw, rows):
    """A frame file holding one 2-D frame, and one frame of a stack read alone, take the
    same plain reads as a stack's slices; the frame or rows are h5py's."""
    plain = []

    def spy(*args):
        block = read_rows_raw(*args)
        plain.append(block is not None)
        return block

    monkeypatch.setattr(layouts, "read_rows_raw", spy)
    frame = stack()[3]
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset(DSET, data=frame, chunks=(H, W) if kw else None)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert read_rows_raw(f[DSET], 0, 1, *(rows or (0, H))) is not None
    data = write(tmp_path / "s.h5", **kw)
    top, stop = rows or (0, H)
    for path, slot, want in ((tmp_path / "f.h5", None, frame), (tmp_path / "s.h5", 3, data[3])):
        got = read_frame(FrameRef(0, path, slot), dataset=DSET, rows=rows)
        if rows is None:
            assert isinstance(got, np.ndarray)
            np.testing.assert_array_equal(got, want)
        else:
            assert isinstance(got, FrameRows) and got.shape == (H, W)
            np.testing.assert_array_equal(got[top:stop, :], want[top:stop])
    assert plain == [True, True]
    with pytest.raises(InputError, match=r"s\.h5\[9\]"):
        read_frame(FrameRef(0, tmp_path / "s.h5", 9), dataset=DSET, rows=rows)

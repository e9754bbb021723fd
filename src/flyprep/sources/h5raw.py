"""Frames of an HDF5 stack read with plain reads where HDF5 would only copy bytes.

A dataset without filters, whose file type is exactly a native numeric array type,
stored contiguously or one whole frame per chunk, holds each frame's rows as plain bytes
at a known place in its file
(``H5Dget_offset``, ``H5Dget_chunk_info``). Reading them with ``preadv`` gives the same
array as ``dataset[...]`` without HDF5's per-call work, and lets other threads run
meanwhile: h5py holds the interpreter lock for a whole read. The bytes are read through
the descriptor HDF5 has open. Anything else (filters, types HDF5 converts, compact,
external or virtual storage, a chunk not yet written, a user block, another file driver)
is left to HDF5.
"""

from __future__ import annotations

import h5py
import numpy as np

from .npy import fill_from


def read_rows_raw(dset: h5py.Dataset, lo: int, hi: int, top: int, stop: int
                  ) -> np.ndarray | None:
    """Rows ``top .. stop`` of frames ``lo .. hi`` (as many as there are) of the 3-D
    dataset ``dset``, as ``dset[lo:hi, top:stop]`` would give them (a 2-D dataset is one
    frame: ``lo, hi = 0, 1``); None where HDF5 itself must read them. OSError if the file
    ends before the frames do."""
    if dset.ndim not in (2, 3):
        return None
    places = _frame_places(dset, lo, min(hi, int(dset.shape[0]) if dset.ndim == 3 else 1))
    if places is None:
        return None
    width = int(dset.shape[-1])
    block = np.empty((len(places), stop - top, width), dset.dtype)
    skip = top * width * dset.dtype.itemsize
    fd = dset.file.id.get_vfd_handle()  # the file HDF5 has open, whatever its name is now
    try:
        for frame, place in zip(block, places):
            fill_from(fd, frame, place + skip)
    except ValueError as exc:
        raise OSError(f"{dset.file.filename}: {exc}") from None
    return block


def _frame_places(dset: h5py.Dataset, lo: int, hi: int) -> list[int] | None:
    """The file offset of each frame ``lo .. hi`` when every one is plain bytes there."""
    if not _plain(dset):
        return None
    frame_bytes = int(dset.shape[-2]) * int(dset.shape[-1]) * dset.dtype.itemsize
    lead = dset.ndim - 2
    if dset.chunks is None:
        start = dset.id.get_offset()
        if start is None:  # no data written yet
            return None
        return [start + i * frame_bytes for i in range(lo, hi)]
    places = []
    for i in range(lo, hi):
        info = dset.id.get_chunk_info_by_coord((i, 0, 0) if lead else (0, 0))
        if info.byte_offset is None or info.size != frame_bytes:
            return None
        places.append(info.byte_offset)
    return places


def _plain(dset: h5py.Dataset) -> bool:
    """Stored in plain bytes in the one file HDF5 has open (the default driver):
    contiguous or in chunks of exactly one frame, no filter, no external storage, and a
    native numeric file type that is exactly the array's (not, say, 12 bits of 16 or an
    enum that h5py shows as bool). No user block either: ``H5Dget_chunk_info`` left it
    out of its offsets before HDF5 1.14.4."""
    if dset.file.driver != "sec2" or not dset.id.get_type().equal(h5py.h5t.py_create(dset.dtype)):
        return False
    dcpl = dset.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.CHUNKED:
        if tuple(dset.chunks) != (1,) * (dset.ndim - 2) + tuple(dset.shape[-2:]):
            return False
    elif layout != h5py.h5d.CONTIGUOUS:
        return False
    return (dcpl.get_nfilters() == 0 and dcpl.get_external_count() == 0
            and dset.dtype.kind in "biuf" and dset.dtype.isnative
            and dset.file.userblock_size == 0)

"""Frames of an HDF5 stack read with plain reads where HDF5 would only copy bytes.

A dataset without filters, of a native numeric type, stored contiguously or one whole
frame per chunk, holds each frame's rows as plain bytes at a known place in its file
(``H5Dget_offset``, ``H5Dget_chunk_info``). Reading them with ``preadv`` gives the same
array as ``dataset[...]`` without HDF5's per-call work, and lets other threads run
meanwhile: h5py holds the interpreter lock for a whole read. Anything else (filters,
external or virtual storage, a chunk not yet written, a user block) is left to HDF5.
"""

from __future__ import annotations

import os

import h5py
import numpy as np

from .npy import fill_from


def read_rows_raw(dset: h5py.Dataset, lo: int, hi: int, top: int, stop: int
                  ) -> np.ndarray | None:
    """Rows ``top .. stop`` of frames ``lo .. hi`` (as many as there are) of the 3-D
    dataset ``dset``, as ``dset[lo:hi, top:stop]`` would give them; None where HDF5 itself
    must read them. OSError if the file ends before the frames do."""
    places = _frame_places(dset, lo, min(hi, int(dset.shape[0])))
    if places is None:
        return None
    width = int(dset.shape[2])
    block = np.empty((len(places), stop - top, width), dset.dtype)
    skip = top * width * dset.dtype.itemsize
    fd = os.open(dset.file.filename, os.O_RDONLY)
    try:
        for frame, place in zip(block, places):
            fill_from(fd, frame, place + skip)
    except ValueError as exc:
        raise OSError(str(exc)) from None
    finally:
        os.close(fd)
    return block


def _frame_places(dset: h5py.Dataset, lo: int, hi: int) -> list[int] | None:
    """The file offset of each frame ``lo .. hi`` when every one is plain bytes there."""
    if not _plain(dset):
        return None
    frame_bytes = int(dset.shape[1]) * int(dset.shape[2]) * dset.dtype.itemsize
    if dset.chunks is None:
        start = dset.id.get_offset()
        if start is None:  # no data written yet
            return None
        return [start + i * frame_bytes for i in range(lo, hi)]
    places = []
    for i in range(lo, hi):
        info = dset.id.get_chunk_info_by_coord((i, 0, 0))
        if info.byte_offset is None or info.size != frame_bytes:
            return None
        places.append(info.byte_offset)
    return places


def _plain(dset: h5py.Dataset) -> bool:
    """No filter, native numeric type, stored in its own file in plain bytes (contiguous,
    or chunks of exactly one frame), no user block shifting HDF5's addresses."""
    dcpl = dset.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.CHUNKED:
        if tuple(dset.chunks) != (1, *dset.shape[1:]):
            return False
    elif layout != h5py.h5d.CONTIGUOUS:
        return False
    return (dcpl.get_nfilters() == 0 and dcpl.get_external_count() == 0
            and dset.dtype.kind in "biuf" and dset.dtype.isnative
            and dset.file.userblock_size == 0)

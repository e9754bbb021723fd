"""Reading many small ``.npy`` files of one kind (a detector's frames) quickly.

``np.load`` parses each file's header with ``ast.literal_eval``: about 110 us of a 256x256
frame's 125 us. Frames of one scan share their header byte for byte, so the header is
parsed once (by numpy's own ``numpy.lib.format`` readers) and remembered by its bytes;
each file then costs four system calls (open, fstat, one read, close) into one buffer.
Anything unusual (format version 3, Fortran order, object dtypes) goes to ``np.load``.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

_MAGIC = b"\x93NUMPY"


@lru_cache(maxsize=32)
def _parse_header(head: bytes) -> tuple[np.dtype, tuple[int, ...]] | None:
    """(dtype, shape) from a whole ``.npy`` header, None if only ``np.load`` should read it."""
    f = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
    except ValueError:
        return None
    if fortran or dtype.hasobject:
        return None
    return dtype, tuple(shape)


def _header_length(buf: np.ndarray) -> int | None:
    """Bytes before the data, from the magic, version and header length fields."""
    if buf.size < 10 or bytes(buf[:6]) != _MAGIC:
        return None
    major = int(buf[6])
    if major == 1:
        return 10 + int(buf[8]) + 256 * int(buf[9])
    if major in (2, 3) and buf.size >= 12:
        return 12 + int.from_bytes(bytes(buf[8:12]), "little")
    return None


def read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in ``path``, as ``np.load(path, allow_pickle=False)`` gives it.
    Raises FileNotFoundError, OSError or ValueError (a truncated or malformed file) as
    ``np.load`` does."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        buf = np.empty(size, np.uint8)
        got = 0
        while got < size:  # one call for a frame; Linux returns at most ~2 GiB per call
            n = os.preadv(fd, [buf[got:]], got)
            if n == 0:
                raise ValueError(f"read {got} of {size} bytes: the file shrank while read")
            got += n
    finally:
        os.close(fd)
    offset = _header_length(buf)
    parsed = None if offset is None or offset > size else _parse_header(bytes(buf[:offset]))
    if parsed is None:
        return np.load(Path(path), allow_pickle=False)
    dtype, shape = parsed
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if size - offset < nbytes:
        raise ValueError(f"file holds {size - offset} data bytes, its header says "
                         f"{nbytes} ({shape} {dtype})")
    arr = buf[offset:offset + nbytes].view(dtype).reshape(shape)
    # A header padded to a length that is no multiple of the item size (other writers)
    # would leave the array misaligned: slower to compute with; np.load's never is.
    return arr if arr.flags.aligned else arr.copy()

"""Reading many small ``.npy`` files of one kind (a detector's frames) quickly and safely.

``np.load`` parses each file's header with ``ast.literal_eval``: about 110 us of a 256x256
frame's 125 us. Frames of one scan share their header byte for byte, so the header is
parsed once (by numpy's own ``numpy.lib.format`` readers) and remembered by its bytes;
each file then costs a few system calls (open, fstat, two reads, close).

Only the bytes the header declares are read (only those of some rows, with
:func:`read_npy_rows`), and a file whose size disagrees with its
header is refused before anything else is read: a sparse or runaway file of gigabytes
behind a small header costs nothing. Object (pickled) arrays are refused: no frame is
made of Python objects.
"""

from __future__ import annotations

import io
import math
import os
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .rows import FrameRows

_MAGIC = b"\x93NUMPY"
#: Bytes read first: the magic and the header (numpy pads it to 128 bytes or a multiple
#: of 64); a longer header takes a second read.
_HEAD_BYTES = 512


class NpyHeader(NamedTuple):
    """What a ``.npy`` header declares, and where its data start."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """Data bytes the header declares."""
        return math.prod(self.shape) * self.dtype.itemsize


@lru_cache(maxsize=32)
def _parse_header(head: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    """(dtype, shape, fortran order) from a whole ``.npy`` header; ValueError if malformed."""
    if head[6:7] == b"\x03":
        # Version 3 differs from 2 only in allowing UTF-8 in the header; numpy's public
        # readers stop at 2.0, and a frame's header is ASCII.
        try:
            head[12:].decode("ascii")
        except UnicodeDecodeError:
            raise ValueError("non-ASCII text in a version 3 header") from None
        head = head[:6] + b"\x02" + head[7:]
    f = io.BytesIO(head)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unknown .npy format version {version[0]}.{version[1]}")
    return np.dtype(dtype), tuple(int(n) for n in shape), bool(fortran)


def _header_length(head: bytes) -> int:
    """Bytes before the data, from the magic, version and header length fields."""
    if len(head) < 10 or head[:6] != _MAGIC:
        raise ValueError("not a .npy file: it does not start with the NUMPY magic"
                         if len(head) else "the file is empty (0 bytes)")
    major = head[6]
    if major == 1:
        return 10 + int.from_bytes(head[8:10], "little")
    if major in (2, 3) and len(head) >= 12:
        return 12 + int.from_bytes(head[8:12], "little")
    raise ValueError(f"unknown .npy format version {major}")


def _header_of(fd: int, size: int) -> tuple[NpyHeader, bytes]:
    """The header of the open file ``fd`` of ``size`` bytes, and the bytes read for it."""
    head = os.pread(fd, min(size, _HEAD_BYTES), 0)
    offset = _header_length(head)
    if offset > size:
        raise ValueError(f"the file is {size} bytes, shorter than its own header "
                         f"({offset} bytes)")
    if offset > len(head):
        head += os.pread(fd, offset - len(head), len(head))
    try:
        dtype, shape, fortran = _parse_header(bytes(head[:offset]))
    except (ValueError, SyntaxError, TypeError) as exc:
        text = str(exc).split("\n")[0]
        raise ValueError(f"malformed .npy header: {text}") from None
    if dtype.hasobject:
        raise ValueError(f"holds Python objects (dtype {dtype}), not detector values")
    return NpyHeader(dtype, shape, fortran, offset), head


def read_npy_header(path: str | os.PathLike[str]) -> NpyHeader:
    """What ``path``'s header declares, checked against the file's size (a few KiB read).
    Raises FileNotFoundError, OSError or ValueError naming the problem."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        header, _ = _header_of(fd, size)
    finally:
        os.close(fd)
    _check_size(header, size)
    return header


def _check_size(header: NpyHeader, size: int) -> int:
    """The data bytes, if the file's ``size`` is what its header declares; else
    ValueError saying both."""
    nbytes = header.nbytes
    declared = header.offset + nbytes
    if size != declared:
        what = "truncated: " if size < declared else ""
        raise ValueError(f"{what}the file is {size} bytes, its header declares {declared} "
                         f"({header.offset} of header, then {header.shape} {header.dtype})")
    return nbytes


def read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """The array stored in ``path``, as ``np.load(path, allow_pickle=False)`` gives it,
    reading only the bytes its header declares. Raises FileNotFoundError, OSError or
    ValueError (empty, truncated, oversized or malformed file, object array) with a
    sentence naming the problem."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        header, head = _header_of(fd, size)
        _check_size(header, size)
        return _read_whole(fd, header, head)
    finally:
        os.close(fd)


def read_npy_rows(path: str | os.PathLike[str], top: int, stop: int) -> np.ndarray | FrameRows:
    """Rows ``top .. stop`` of the 2-D C-order array in ``path``, reading only their bytes
    (as :class:`FrameRows`); any other array (Fortran order, not 2-D, rows it lacks) whole,
    as :func:`read_npy` gives it. The same checks as :func:`read_npy`, on the whole file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        header, head = _header_of(fd, size)
        _check_size(header, size)
        shape = header.shape
        if len(shape) != 2 or header.fortran or not 0 <= top < stop <= shape[0]:
            return _read_whole(fd, header, head)
        rows = np.empty((stop - top, shape[1]), header.dtype)
        row_bytes = shape[1] * header.dtype.itemsize
        fill_from(fd, rows, header.offset + top * row_bytes, head)
        return FrameRows(rows, top, (shape[0], shape[1]))
    finally:
        os.close(fd)


def _read_whole(fd: int, header: NpyHeader, head: bytes) -> np.ndarray:
    """Every data byte of the open file ``fd`` as the array its header declares."""
    arr = np.empty(header.shape, header.dtype, order="F" if header.fortran else "C")
    fill_from(fd, arr.reshape(-1, order="A"), header.offset, head)
    return arr


def fill_from(fd: int, arr: np.ndarray, position: int, head: bytes = b"") -> None:
    """Read ``arr``'s bytes (a contiguous array) from ``position`` of ``fd``; bytes of
    ``head`` (the file's first bytes, read already) are not read again. ValueError if the
    file ends first."""
    nbytes = arr.nbytes
    if not nbytes:
        return
    view = memoryview(arr.reshape(-1, order="A").view(np.uint8))
    have = head[position:position + nbytes]
    view[:len(have)] = have
    got = len(have)
    while got < nbytes:
        n = os.preadv(fd, [view[got:]], position + got)
        if n == 0:
            raise ValueError(f"read {got} of {nbytes} data bytes: the file shrank while read")
        got += n

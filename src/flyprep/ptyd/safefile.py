"""HDF5 files that fail cleanly when the disk does.

HDF5 cannot recover from a failed write (full disk, quota, size limit): the file stays
open inside the library, its ids refuse to close, and the process crashes when HDF5 cleans
up at exit. So flyprep hands h5py a Python file object instead of a path: the first OS
error is recorded and every later write is discarded, HDF5 closes normally, and the
recorded error is raised afterwards. The half-written temporary file is then removed.
"""

from __future__ import annotations

import ctypes
import io
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import h5py

_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h


def _load_sync_file_range() -> Callable[..., int] | None:
    """libc's ``sync_file_range`` (Linux only; the standard library does not wrap it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Any = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


class GuardedFile(io.RawIOBase):
    """A raw file for h5py's ``fileobj`` driver that records instead of raising OS errors.

    Small writes that follow each other are gathered and written in one system call (HDF5
    seeks before every write, and most of its writes are small); large ones go straight
    through, so frames are not copied twice.
    """

    GATHER_MAX_BYTES = 1 << 16
    FLUSH_AT_BYTES = 1 << 22

    def __init__(self, path: Path, mode: str) -> None:
        super().__init__()
        self.path = path
        self._f = open(path, mode, buffering=0)  # noqa: SIM115 - closed in close()
        self.error: OSError | None = None
        self._pos = 0  # the position HDF5 sees
        self._pending = bytearray()
        self._pending_at = 0  # file offset of the first pending byte
        self._abandoned = False

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def _flush_pending(self) -> None:
        if self._pending:
            self._write_at(self._pending_at, self._pending)
            self._pending = bytearray()

    def _write_at(self, offset: int, data) -> None:
        if self.error is not None:
            return
        try:
            view = memoryview(data).cast("B")
            done = 0
            while done < view.nbytes:
                done += os.pwrite(self._f.fileno(), view[done:], offset + done)
        except OSError as exc:
            self.error = exc

    def readinto(self, buffer) -> int:  # type: ignore[override]
        self._flush_pending()
        n = os.preadv(self._f.fileno(), [buffer], self._pos)
        self._pos += n
        return n

    def write(self, buffer) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        size = view.nbytes
        contiguous = self._pending and self._pos == self._pending_at + len(self._pending)
        if size <= self.GATHER_MAX_BYTES:
            if not contiguous:
                self._flush_pending()
                self._pending_at = self._pos
            self._pending += view.cast("B")
            if len(self._pending) >= self.FLUSH_AT_BYTES:
                self._flush_pending()
        else:
            self._flush_pending()
            self._write_at(self._pos, view)
        self._pos += size
        return size

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        else:
            self._flush_pending()
            self._pos = os.fstat(self._f.fileno()).st_size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        self._flush_pending()
        size = self._pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self._f.fileno(), size)
            except OSError as exc:
                self.error = exc
        return size

    def flush(self) -> None:
        return None

    def abandon(self) -> None:
        """The file is about to be deleted: closing it will not flush it to the disk."""
        self._abandoned = True

    def fsync(self) -> None:
        """Flush the file's data to the disk (errors are recorded)."""
        self._flush_pending()
        if self.error is None and not self._abandoned:
            try:
                os.fsync(self._f.fileno())
            except OSError as exc:
                self.error = exc

    def start_writeback(self) -> None:
        """Have the kernel start writing the file's data to the disk now, without waiting
        (Linux; elsewhere nothing): the final fsync then has little left to do."""
        self._flush_pending()
        if self.error is None and _sync_file_range is not None:
            _sync_file_range(self._f.fileno(), 0, 0, _SYNC_FILE_RANGE_WRITE)  # advisory

    def close(self) -> None:
        if not self._f.closed:
            self._flush_pending()
            self._f.close()
        super().close()


@contextmanager
def guarded_h5(path: Path, mode: str = "w", *, image: bytes | None = None) -> Iterator[h5py.File]:
    """An HDF5 file at ``path`` (``'w'`` creates, ``'r+'`` updates), durable on exit.
    With ``image``, the file is created holding those bytes (an HDF5 file image) and
    opened for update.

    Raises the first OSError the writes met, after HDF5 has closed the file."""
    with guarded_h5_file(path, mode, image=image) as (f, _):
        yield f


@contextmanager
def guarded_h5_file(path: Path, mode: str = "w", *,
                    image: bytes | None = None) -> Iterator[tuple[h5py.File, GuardedFile]]:
    """:func:`guarded_h5`, also giving the :class:`GuardedFile` under the HDF5 file."""
    guard = GuardedFile(path, "w+b" if mode == "w" or image is not None else "r+b")
    if image is not None:
        guard.write(image)
        guard.seek(0)
        mode = "r+"
    try:
        with h5py.File(guard, mode) as f:
            yield f, guard
        guard.fsync()
    finally:
        guard.close()
        if guard.error is not None:
            raise guard.error

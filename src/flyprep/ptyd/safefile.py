"""HDF5 files that fail cleanly when the disk does.

HDF5 cannot recover from a failed write (full disk, quota, size limit): the file stays
open inside the library, its ids refuse to close, and the process crashes when HDF5 cleans
up at exit. So flyprep hands h5py a Python file object instead of a path: the first OS
error is recorded and every later write is discarded, HDF5 closes normally, and the
recorded error is raised afterwards. The half-written temporary file is then removed.
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py


class GuardedFile(io.RawIOBase):
    """A raw file for h5py's ``fileobj`` driver that records instead of raising OS errors."""

    def __init__(self, path: Path, mode: str) -> None:
        super().__init__()
        self.path = path
        self._f = open(path, mode, buffering=0)  # noqa: SIM115 - closed in close()
        self.error: OSError | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        return self._f.readinto(buffer)

    def write(self, buffer) -> int:  # type: ignore[override]
        size = memoryview(buffer).nbytes
        if self.error is None:
            try:
                done = 0
                view = memoryview(buffer).cast("B")
                while done < size:
                    done += self._f.write(view[done:])
            except OSError as exc:
                self.error = exc
        return size

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return self._f.truncate(size)
            except OSError as exc:
                self.error = exc
        return self.tell() if size is None else size

    def flush(self) -> None:
        return None

    def fsync(self) -> None:
        """Flush the file's data to the disk (errors are recorded)."""
        if self.error is None:
            try:
                os.fsync(self._f.fileno())
            except OSError as exc:
                self.error = exc

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        super().close()


@contextmanager
def guarded_h5(path: Path, mode: str = "w", *, image: bytes | None = None) -> Iterator[h5py.File]:
    """An HDF5 file at ``path`` (``'w'`` creates, ``'r+'`` updates), durable on exit.
    With ``image``, the file is created holding those bytes (an HDF5 file image) and
    opened for update.

    Raises the first OSError the writes met, after HDF5 has closed the file."""
    guard = GuardedFile(path, "w+b" if mode == "w" or image is not None else "r+b")
    if image is not None:
        guard.write(image)
        guard.seek(0)
        mode = "r+"
    try:
        with h5py.File(guard, mode) as f:
            yield f
        guard.fsync()
    finally:
        guard.close()
        if guard.error is not None:
            raise guard.error

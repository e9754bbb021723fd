"""Follow an ``.apx`` file while another process (the DAQ) is still appending to it.

The DAQ writes through a buffered file without flushing, so the file grows in arbitrary
pieces: the tailer may see half a header, half a record prefix or half a payload.
:class:`ApxTailer` reads only the bytes added since its last read, keeps the incomplete
end (at most one record plus one read), and hands out each complete record exactly once,
in file order, as a :class:`~flyprep.apx.format.ReadoutBatch`.

It refuses, with an :class:`~flyprep.errors.InputError` naming the file and an offset:

- bad bytes as soon as they are visible: wrong file or record magic, a header longer than
  ``max_header_length`` (1 MiB), a record longer than ``max_record_length`` (16 MiB),
  header text that is not JSON. Such lengths are errors, never a reason to wait or to
  allocate;
- the file being replaced (its inode changes, or it disappears), truncated (its size
  shrinks) or rewritten (bytes already read change).

When the writer is done, :meth:`ApxTailer.finish` reads what is left and reports a file
that ends inside a record (a :class:`~flyprep.apx.format.Truncation`: offset and bytes
missing).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import InputError
from .format import ApxHeader, ApxStreamParser, PathLike, ReadoutBatch, Truncation

#: Default maximum header length accepted while following (bytes).
MAX_HEADER_LENGTH = 1 << 20
#: Default maximum record payload accepted while following (bytes).
MAX_RECORD_LENGTH = 16 << 20
#: Bytes re-read before the read position on each poll to notice a rewritten file.
_CHECK_BYTES = 64


@dataclass(frozen=True)
class TailEnd:
    """What :meth:`ApxTailer.finish` found: the last records and any truncation."""

    batch: ReadoutBatch
    truncation: Optional[Truncation]
    path: str

    def raise_for_truncation(self) -> None:
        """Raise :class:`~flyprep.apx.format.ApxTruncatedError` if the file ended mid-record."""
        if self.truncation is not None:
            raise self.truncation.error(self.path)


class ApxTailer:
    """Incrementally read the complete records of a growing ``.apx`` file.

    The file need not exist yet: :meth:`poll` returns empty batches until it appears.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        poll_interval_s: float = 0.05,
        max_header_length: int = MAX_HEADER_LENGTH,
        max_record_length: int = MAX_RECORD_LENGTH,
        read_size: int = 1 << 20,
    ) -> None:
        self.path = os.fspath(path)
        self.poll_interval_s = float(poll_interval_s)
        self.read_size = int(read_size)
        self._parser = ApxStreamParser(
            self.path, max_header_length=max_header_length, max_record_length=max_record_length
        )
        self._fd: Optional[int] = None
        self._ident: Optional[tuple[int, int]] = None
        self._read_pos = 0  # bytes of the file read so far
        self._check = b""  # the last bytes read, compared again on every poll

    # ----------------------------------------------------------------- state

    @property
    def header(self) -> Optional[ApxHeader]:
        """The file header, once it has been completely written (else None)."""
        return self._parser.header

    @property
    def offset(self) -> int:
        """File offset just past the last record delivered (or the header)."""
        return self._parser.offset

    @property
    def bytes_read(self) -> int:
        """How much of the file has been read (delivered plus buffered)."""
        return self._read_pos

    @property
    def pending(self) -> int:
        """Bytes read but not yet part of a complete record."""
        return self._parser.buffered

    # ----------------------------------------------------------------- reading

    def _open(self) -> bool:
        """Open the file if it exists; False if it does not (yet)."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        st = os.fstat(fd)
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)
        return True

    def _error(self, reason: str) -> InputError:
        return InputError(self.path, reason)

    def _check_same_file(self) -> int:
        """Size of the followed file; raises if it was replaced, truncated or rewritten."""
        assert self._fd is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise self._error(
                f"offset {self._read_pos}: file disappeared (removed or renamed) while "
                "being followed"
            ) from None
        if (st.st_dev, st.st_ino) != self._ident:
            raise self._error(
                f"offset {self._read_pos}: file was replaced by another file (inode "
                f"{self._ident[1]} -> {st.st_ino}) while being followed"
            )
        size = os.fstat(self._fd).st_size
        if size < self._read_pos:
            raise self._error(
                f"offset {size}: file shrank from {self._read_pos} to {size} bytes "
                "(truncated) while being followed"
            )
        if self._check:
            start = self._read_pos - len(self._check)
            if os.pread(self._fd, len(self._check), start) != self._check:
                raise self._error(
                    f"offset {start}: bytes already read have changed (file rewritten) "
                    "while being followed"
                )
        return size

    def poll(self) -> ReadoutBatch:
        """Every record completed since the last call (possibly none), in file order."""
        if not self._open():
            return ReadoutBatch.empty()
        size = self._check_same_file()
        # bad bytes met after good records by the last poll raise now
        parts = [self._parser.take()]
        while self._read_pos < size:
            want = min(self.read_size, size - self._read_pos)
            chunk = os.pread(self._fd, want, self._read_pos)  # type: ignore[arg-type]
            if not chunk:
                break
            self._read_pos += len(chunk)
            self._check = (self._check + chunk)[-_CHECK_BYTES:]
            self._parser.feed(chunk)
            parts.append(self._parser.take())
        return ReadoutBatch.concat(parts)

    def wait(self, timeout_s: float) -> ReadoutBatch:
        """Poll every ``poll_interval_s`` until some records arrive or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            batch = self.poll()
            if len(batch) or time.monotonic() >= deadline:
                return batch
            time.sleep(self.poll_interval_s)

    def finish(self) -> TailEnd:
        """The writer is done: the last records, and a truncation if the file ends mid-item.

        Raises :class:`~flyprep.errors.InputError` if the file never appeared or if bad
        bytes (not a mere truncation) follow the last complete record.
        """
        if not self._open():
            raise self._error("offset 0: file does not exist")
        batch = self.poll()
        self._parser.take()  # raises if the bytes after the last record are bad
        return TailEnd(batch, self._parser.truncation(), self.path)

    def close(self) -> None:
        """Close the file descriptor."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ApxTailer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

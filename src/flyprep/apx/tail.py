"""Follow an ``.apx`` file while another process (the DAQ) is still appending to it.

The DAQ writes through a buffered file without flushing, so the file grows in arbitrary
pieces: the tailer may see half a header, half a record prefix or half a payload.
:class:`ApxTailer` reads only the bytes added since its last read, at most
``max_poll_bytes`` per :meth:`ApxTailer.poll` (in pieces of ``read_size``), and hands out
each complete record exactly once, in file order, as a
:class:`~flyprep.apx.format.ReadoutBatch`. A file that has grown by more than that is
read by the following polls. Memory therefore stays bounded: the parser keeps the
incomplete end (at most one record, itself at most ``max_record_length``) plus what one
poll read, and one batch holds at most that much. :meth:`ApxTailer.finish` is the
exception: it reads everything not yet read (poll until caught up first).

It refuses, with an :class:`~flyprep.errors.InputError` naming the file and an offset:

- bad bytes as soon as they are visible: wrong file or record magic, a header longer than
  ``max_header_length`` (1 MiB), a record longer than ``max_record_length`` (16 MiB),
  header text that is not JSON. Such lengths are errors, never a reason to wait or to
  allocate. Good records read before the bad bytes are delivered first: if a poll has
  gathered records when it meets bad bytes, it returns them and the error is raised by
  the next :meth:`ApxTailer.poll` (and every later one);
- the file being replaced (its inode changes, or it disappears), truncated (its size
  shrinks) or rewritten (bytes already read change), as an
  :class:`~flyprep.apx.format.ApxFormatError` whose ``offset`` says where;
- a file that cannot be opened or read (permissions, a directory, I/O errors).

When the writer is done, :meth:`ApxTailer.finish` reads what is left and reports a file
that ends inside a record (a :class:`~flyprep.apx.format.Truncation`: offset and bytes
missing).
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import InputError
from .format import (
    ApxFormatError,
    ApxHeader,
    ApxStreamParser,
    PathLike,
    ReadoutBatch,
    Truncation,
)

#: Default maximum header length accepted while following (bytes).
MAX_HEADER_LENGTH = 1 << 20
#: Default maximum record payload accepted while following (bytes).
MAX_RECORD_LENGTH = 16 << 20
#: Default maximum bytes read by one poll (a file that grew more is read by later polls).
MAX_POLL_BYTES = 4 << 20
#: Bytes re-read before the read position on each poll to notice a rewritten file.
_CHECK_BYTES = 64


@dataclass(frozen=True)
class TailEnd:
    """What :meth:`ApxTailer.finish` found: the last records, any truncation or error.

    ``error`` is set when bad bytes followed records gathered by the same
    :meth:`ApxTailer.finish` call: those records are in ``batch`` and the error is raised
    by :meth:`raise_for_truncation` (and by any later poll or finish).
    """

    batch: ReadoutBatch
    truncation: Optional[Truncation]
    path: str
    error: Optional[InputError] = None

    def raise_for_truncation(self) -> None:
        """Raise ``error`` if set, else :class:`~flyprep.apx.format.ApxTruncatedError` if
        the file ended mid-record."""
        if self.error is not None:
            raise self.error
        if self.truncation is not None:
            raise self.truncation.error(self.path)


class ApxTailer:
    """Incrementally read the complete records of a growing ``.apx`` file.

    The file need not exist yet: :meth:`poll` returns empty batches until it appears.
    Each poll reads at most ``max_poll_bytes``; call it again to read on.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        poll_interval_s: float = 0.05,
        max_header_length: int = MAX_HEADER_LENGTH,
        max_record_length: int = MAX_RECORD_LENGTH,
        read_size: int = 1 << 20,
        max_poll_bytes: int = MAX_POLL_BYTES,
        start_at: Optional[int] = None,
    ) -> None:
        self.path = os.fspath(path)
        #: a record boundary an earlier reader stopped at: records before it are skipped
        self._start_at = start_at
        self.poll_interval_s = float(poll_interval_s)
        self.read_size = int(read_size)
        self.max_poll_bytes = int(max_poll_bytes)
        if self.read_size < 1 or self.max_poll_bytes < 1:
            raise ValueError("read_size and max_poll_bytes must be >= 1")
        self._parser = ApxStreamParser(
            self.path, max_header_length=max_header_length, max_record_length=max_record_length
        )
        self._fd: Optional[int] = None
        self._ident: Optional[tuple[int, int]] = None
        self._read_pos = 0  # bytes of the file read so far
        self._check = b""  # the last bytes read, compared again on every poll
        #: bad bytes met after good records were gathered: raised by the next poll
        self._failed: Optional[InputError] = None

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
    def data_offset(self) -> Optional[int]:
        """File offset of the first record (known once the header is read)."""
        return self._parser.data_offset

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
        except OSError as exc:
            raise self._error(0, f"cannot open: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise self._error(0, "is a directory, not an .apx file")
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._ident = (st.st_dev, st.st_ino)
        return True

    def _error(self, offset: int, reason: str) -> ApxFormatError:
        return ApxFormatError(self.path, offset, reason)

    def _check_same_file(self) -> int:
        """Size of the followed file; raises if it was replaced, truncated or rewritten."""
        assert self._fd is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise self._error(
                self._read_pos, "file disappeared (removed or renamed) while being followed"
            ) from None
        except OSError as exc:
            raise self._error(self._read_pos, f"cannot stat: {exc.strerror or exc}") from None
        if (st.st_dev, st.st_ino) != self._ident:
            raise self._error(
                self._read_pos,
                f"file was replaced by another file (inode {self._ident[1]} -> "
                f"{st.st_ino}) while being followed",
            )
        try:
            size = os.fstat(self._fd).st_size
            if size < self._read_pos:
                raise self._error(
                    size,
                    f"file shrank from {self._read_pos} to {size} bytes (truncated) while "
                    "being followed",
                )
            if self._check:
                start = self._read_pos - len(self._check)
                if os.pread(self._fd, len(self._check), start) != self._check:
                    raise self._error(
                        start,
                        "bytes already read have changed (file rewritten) while being "
                        "followed",
                    )
        except OSError as exc:
            raise self._error(self._read_pos, f"cannot read: {exc.strerror or exc}") from None
        return size

    def _read(self, size: int, budget: int) -> tuple[list[ReadoutBatch], Optional[InputError]]:
        """Read at most ``budget`` bytes, in pieces of ``read_size``, up to ``size``.

        Returns the records completed and the error met (bad bytes), if any: reading
        stops at an error, the records before it are returned.
        """
        parts: list[ReadoutBatch] = []
        try:
            # bytes read by an earlier call may hold complete records or bad bytes
            parts.append(self._parser.take())
            self._parser.check()
            done = 0
            while self._read_pos < size and done < budget:
                want = min(self.read_size, size - self._read_pos, budget - done)
                try:
                    chunk = os.pread(self._fd, want, self._read_pos)  # type: ignore[arg-type]
                except OSError as exc:
                    raise self._error(
                        self._read_pos, f"cannot read: {exc.strerror or exc}"
                    ) from None
                if not chunk:
                    break
                done += len(chunk)
                self._read_pos += len(chunk)
                self._check = (self._check + chunk)[-_CHECK_BYTES:]
                self._parser.feed(chunk)
                if self._start_at is not None and self._parser.header is not None:
                    self._skip_to_start(size)
                parts.append(self._parser.take())
                # bad bytes right after the records taken: stop here, deliver those
                self._parser.check()
        except InputError as exc:
            return parts, exc
        return parts, None

    def _skip_to_start(self, size: int) -> None:
        """The header is read: go on at ``start_at`` (within the file as it is now)."""
        start, self._start_at = self._start_at, None
        assert start is not None
        if start > size:
            raise self._error(size, f"file is {size} bytes, shorter than the {start} "
                                    "already streamed: not the file streamed before")
        self._parser.skip_to(start)
        if start > self._read_pos:
            self._read_pos = start
            self._check = os.pread(self._fd, min(_CHECK_BYTES, start),  # type: ignore[arg-type]
                                   start - min(_CHECK_BYTES, start))

    def read_range(self, start: int, stop: int) -> bytes:
        """The file's bytes ``[start, stop)`` as they are on disk (records already
        delivered: their exact bytes)."""
        if self._fd is None:
            raise self._error(start, "file is not open")
        data = os.pread(self._fd, stop - start, start)
        if len(data) != stop - start:
            raise self._error(start + len(data), "file shorter than the records delivered")
        return data

    def poll(self) -> ReadoutBatch:
        """Every record completed since the last call (possibly none), in file order.

        Reads at most ``max_poll_bytes``; a file that grew by more is read on by the next
        polls. Records before bad bytes are returned first; the error is raised by the
        next poll (at once if there are no such records).
        """
        if self._failed is not None:
            raise self._failed
        if not self._open():
            return ReadoutBatch.empty()
        size = self._check_same_file()
        parts, err = self._read(size, self.max_poll_bytes)
        batch = ReadoutBatch.concat(parts)
        if err is not None:
            self._failed = err
            if not len(batch):
                raise err
        return batch

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

        Reads everything not yet read, whatever ``max_poll_bytes`` (poll until caught up
        first to keep the batch small). Raises :class:`~flyprep.errors.InputError` if the
        file never appeared or if bad bytes (not a mere truncation) follow the last
        complete record; if this call gathered records before them, it returns those with
        the error in :attr:`TailEnd.error` instead (raised by
        :meth:`TailEnd.raise_for_truncation` and by any later poll or finish).
        """
        if self._failed is not None:
            raise self._failed
        if not self._open():
            raise self._error(0, "file does not exist")
        size = self._check_same_file()
        parts, err = self._read(size, max(size - self._read_pos, 1))
        batch = ReadoutBatch.concat(parts)
        if err is not None:
            self._failed = err
            if not len(batch):
                raise err
            return TailEnd(batch, None, self.path, err)
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

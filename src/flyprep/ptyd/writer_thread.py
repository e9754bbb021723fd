"""A :class:`PtydWriter` running in its own thread, so that HDF5 writes and fsyncs overlap
with reading and preparing the next chunk."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..errors import OutputError
from ..prep.chunk import PreparedChunk, PreparedPart
from ..states import ScanState
from ..workers import STOP, Worker
from .writer import EncodedChunk, EncodedPart, PtydWriter


@dataclass(frozen=True)
class Listed:
    """A chunk the published master lists: its file, and the master's generation and
    frames readable from the scan's start."""

    target: Path
    generation: int
    frames_available: int


#: Told of each chunk once the master lists it (never before).
OnListed = Callable[[PreparedChunk, Listed], None]


def tell_listed(writer: PtydWriter, unlisted: list[tuple[PreparedChunk, Path]],
                on_written: OnListed | None) -> list[tuple[PreparedChunk, Path]]:
    """The master just published lists every chunk written: tell ``on_written`` of the
    ``unlisted`` ones; returns what is left to tell (nothing)."""
    if on_written is not None:
        for chunk, target in unlisted:
            on_written(chunk, Listed(target, writer.generation, writer.frames_written))
    return []


class WriterThread(Worker):
    """Owns a writer while it runs: at most ``max_queued`` chunks wait to be written
    besides the one being written (parts of the chunk being filled do not count: their frames already sit in that
    chunk's buffer, and the pool of chunk buffers bounds the memory).

    The master is published whenever the queue runs dry, and at least every
    ``publish_interval_s`` while chunks keep coming, so a writer that falls behind
    publishes once for several chunks without keeping readers waiting. ``on_written`` hears
    of each chunk once a published master lists it, in the writer thread (or, for the last
    ones, in the thread that closes). Each chunk's buffers go back to their pool once
    written (or dropped after a failure). A failure stops the thread and is raised by the
    next :meth:`submit` or by :meth:`close`.
    """

    def __init__(self, writer: PtydWriter, *, max_queued: int = 1,
                 publish_interval_s: float = 0.5,
                 on_written: OnListed | None = None) -> None:
        super().__init__(f"writer:{writer.path.name}")
        self.writer = writer
        self.publish_interval_s = publish_interval_s
        # The first chunk is always published at once: readers start on it.
        self._published_at = float("-inf")
        self.on_written = on_written
        self._queue: queue.Queue[object] = queue.Queue()
        self._chunk_slots = threading.Semaphore(max_queued)
        self._chunks_queued = 0  # chunks submitted and not yet taken by the thread
        self._count_lock = threading.Lock()
        self._error: BaseException | None = None
        self._unlisted: list[tuple[PreparedChunk, Path]] = []  # written, master not yet new
        #: Since when the thread writes what it took last (monotonic), None while idle.
        self.busy_since: float | None = None
        self.start()

    @property
    def queued(self) -> int:
        """Chunks submitted and not yet taken up for writing."""
        with self._count_lock:
            return self._chunks_queued

    def submit(self, chunk: PreparedChunk) -> None:
        """Compress ``chunk``'s frames here, in the caller's thread, and queue it for writing;
        blocks while the queue is full (back-pressure). The chunk's buffers go back to
        their pool once written, or at once if it cannot be queued."""
        try:
            self._raise_if_failed()
            # Frames are compressed here; the writer thread, which has time to spare
            # while it waits for the disk, deflates the masks.
            encoded = self.writer.encode(chunk, weights=False)
        except BaseException:
            if chunk.release is not None:
                chunk.release()
            raise
        while not self._chunk_slots.acquire(timeout=0.1):
            try:
                self._raise_if_failed()
            except BaseException:
                if chunk.release is not None:
                    chunk.release()
                raise
        with self._count_lock:
            self._chunks_queued += 1
        self._queue.put(encoded)

    def submit_part(self, part: PreparedPart) -> None:
        """Compress a part of the chunk being filled and queue it (see
        :meth:`PtydWriter.write_part`); never waits."""
        self._raise_if_failed()
        self._queue.put(self.writer.encode_part(part))

    def close(self, state: ScanState = ScanState.COMPLETE) -> None:
        """Write what is queued, stop the thread, publish the final master."""
        self._stop()
        self._raise_if_failed()
        self.writer.close(state)
        self._tell_listed()

    def suspend(self) -> None:
        """Write what is queued, stop the thread and publish, leaving the scan
        ``acquiring`` (a later run resumes it)."""
        self._stop()
        self._raise_if_failed()
        self.writer.discard_partial()
        self.writer.publish()
        self._tell_listed()

    def halt(self) -> None:
        """Stop after what is queued (what fails is dropped), remove a chunk filled only in
        parts, publish nothing: the output stays as last published (a full disk)."""
        self._stop()
        self.writer.discard_partial()

    def abort(self) -> None:
        """Stop after what is queued and publish the master as aborted."""
        self._stop()
        self.writer.abort()
        if self.writer.save == "link":  # an unpublished append file is gone
            self._tell_listed()

    def _tell_listed(self) -> None:
        self._unlisted = tell_listed(self.writer, self._unlisted, self.on_written)

    def _stop(self) -> None:
        self.stop_and_join()

    def wake(self) -> None:
        self._queue.put(STOP)  # after what is queued: that is written first

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            if isinstance(self._error, OutputError):
                raise self._error
            raise OutputError(f"{self.writer.path}: writer failed: {self._error}") from self._error

    def loop(self) -> None:
        while True:
            self.busy_since = None
            item = self._queue.get()
            if item is STOP:
                return
            self.busy_since = time.monotonic()
            if isinstance(item, EncodedPart):
                if self._error is None:
                    try:
                        self.writer.write_part(item)
                    except BaseException as exc:  # reported to the producer, never lost
                        self._error = exc
                continue
            encoded: EncodedChunk = item  # type: ignore[assignment]
            chunk = encoded.chunk
            with self._count_lock:
                self._chunks_queued -= 1
                more = self._chunks_queued > 0
            self._chunk_slots.release()  # max_queued counts the chunks waiting, as before
            try:
                if self._error is None:
                    due = time.monotonic() - self._published_at >= self.publish_interval_s
                    publish = due or not more
                    target = self.writer.write_chunk(encoded, publish=publish)
                    self._unlisted.append((chunk, target))
                    if publish and self.writer.save == "link":
                        self._published_at = time.monotonic()
                        self._tell_listed()
            except BaseException as exc:  # reported to the producer, never lost
                self._error = exc
            finally:
                if chunk.release is not None:
                    chunk.release()
            if self._error is None and not more:
                try:
                    self.writer.publish()
                    if self.writer.save == "link":
                        self._tell_listed()
                except BaseException as exc:
                    self._error = exc


class InlineWriter:
    """A :class:`WriterThread`'s interface with no thread: every chunk is written (and the
    master published) in the caller's thread, before :meth:`submit` returns. For runs
    that must stay in one thread (tests of the scan logic); slower, the same files."""

    def __init__(self, writer: PtydWriter, *, on_written: OnListed | None = None) -> None:
        self.writer = writer
        self.on_written = on_written
        self._unlisted: list[tuple[PreparedChunk, Path]] = []

    @property
    def queued(self) -> int:
        """Chunks waiting to be written: none, each is written at once."""
        return 0

    def submit(self, chunk: PreparedChunk) -> None:
        """Write ``chunk`` and publish the master; its buffers go back to their pool."""
        try:
            with self._as_output_error():
                target = self.writer.write_chunk(self.writer.encode(chunk), publish=True)
        finally:
            if chunk.release is not None:
                chunk.release()
        self._unlisted.append((chunk, target))
        if self.writer.save == "link":
            self._tell_listed()

    def submit_part(self, part: PreparedPart) -> None:
        """Write a part of the chunk being filled."""
        with self._as_output_error():
            self.writer.write_part(self.writer.encode_part(part))

    @contextlib.contextmanager
    def _as_output_error(self) -> Iterator[None]:
        """Errors as :class:`WriterThread` reports them."""
        try:
            yield
        except OutputError:
            raise
        except Exception as exc:
            raise OutputError(f"{self.writer.path}: writer failed: {exc}") from exc

    def close(self, state: ScanState = ScanState.COMPLETE) -> None:
        """Publish the final master."""
        self.writer.close(state)
        self._tell_listed()

    def suspend(self) -> None:
        """Publish, leaving the scan ``acquiring``."""
        self.writer.discard_partial()
        self.writer.publish()
        self._tell_listed()

    def halt(self) -> None:
        """Remove a chunk filled only in parts; publish nothing."""
        self.writer.discard_partial()

    def abort(self) -> None:
        """Publish the master as aborted."""
        self.writer.abort()
        if self.writer.save == "link":
            self._tell_listed()

    def _tell_listed(self) -> None:
        self._unlisted = tell_listed(self.writer, self._unlisted, self.on_written)

"""Stream the decoded readouts of growing ``.apx`` files while the DAQ writes them.

:class:`ApxStreamer` follows any number of ``.apx`` files (up to ``max_files``) with one
background thread. Every ``poll_interval_s``, or soon after :meth:`ApxStreamer.poke`, the
thread polls each followed file's :class:`~flyprep.apx.tail.ApxTailer`, decodes the new
complete records with :func:`~flyprep.apx.decode.decode_batch` and hands them out as one
:class:`~flyprep.events.ApxReadouts` event plus the hits (a ``HIT_DTYPE`` array) through
the ``publish`` callable; the daemon passes an :class:`flyprep.bus.EventPublisher`'s
``emit`` bound on ``apx.stream``. The same event, without the hits, may also go to an
:class:`~flyprep.events.EventSink` (the daemon's main bus): one event per file per poll
at most.

Every record is published exactly once, in file order. One poll reads at most
``max_poll_bytes`` of each file, so memory stays bounded; a file that is behind is read
on at once by the next rounds (the other files get their turn in between). A file that
breaks the format (the tailer raises an :class:`~flyprep.errors.InputError`) is marked
``failed`` with the message, which names the file and the byte offset; it is logged once
and the other files are served on. Records before the bad bytes are still published.

This module does not import zmq (only :mod:`flyprep.bus` does); the wire format of the
stream is described in ``docs/apx-format.md``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from typing_extensions import Self

from ..errors import InputError
from ..events import ApxHeaderRead, ApxReadouts, ApxRecords, ErrorReported, EventSink
from ..workers import Worker
from .decode import decode_batch
from .format import PREFIX_SIZE, ApxFormatError, ReadoutBatch, Truncation
from .stream_state import load_offset, save_offset
from .tail import MAX_POLL_BYTES, ApxTailer

__all__ = ["FAILED", "FINISHED", "FOLLOWING", "ApxStreamer", "Publish"]

log = logging.getLogger(__name__)

#: How long after a batch was handed to the publisher its offset is kept as streamed: the
#: messages of the last moments may still be on their way out when the daemon dies.
DURABLE_LAG_S = 0.5

#: How a batch goes out: ``publish(event, [hits])``.
Publish = Callable[[ApxReadouts, Sequence[np.ndarray]], None]

FOLLOWING = "following"  #: being polled (possibly catching up after finish() was asked)
FINISHED = "finished"  #: the writer was done and everything complete was published
FAILED = "failed"  #: bad bytes (or an unreadable file): given up, see ``error``


def stream_id(path: str) -> str:
    """A file's stream id: the same for the same path in every run."""
    return hashlib.sha1(path.encode()).hexdigest()[:16]


@dataclass
class _File:
    """One followed file. Counters are changed under the streamer's lock; ``tailer`` and
    ``extra`` belong to the streamer's thread."""

    path: str
    scan: str | None
    state: str = FOLLOWING
    readouts: int = 0
    hits: int = 0
    batches: int = 0
    bytes_read: int = 0
    offset: int = 0
    error: str | None = None
    error_offset: int | None = None
    truncation: Truncation | None = None
    finish_requested: bool = False
    poked: bool = False
    behind: bool = False  # the last poll read max_poll_bytes: read on at once
    next_poll: float = 0.0  # time.monotonic() of the next timed poll
    ended: int = 0  # order in which files ended (finished or failed); 0 while following
    tailer: ApxTailer | None = None
    extra: bytes | None = None  # the last readout's extra bytes (carry_extra)
    stream: str = ""  # the file's stream id
    header: bytes | None = None  # the file's exact header bytes, once read
    header_sent: bool = False
    readout_uid: int | None = None
    unsaved: list[tuple[float, int]] = field(default_factory=list)  # (sent at, offset)
    size: int = -1  # the file's size at the last poll
    quiet_since: float = 0.0  # since when its size has not changed

    def urgent(self) -> bool:
        """True if the file must be polled now, whatever the timer says."""
        return self.poked or self.behind or self.finish_requested

    def to_status(self) -> dict[str, Any]:
        """Plain JSON data for :meth:`ApxStreamer.status`."""
        trunc = self.truncation
        return {
            "path": self.path, "scan": self.scan, "state": self.state,
            "readouts": self.readouts, "hits": self.hits, "batches": self.batches,
            "bytes_read": self.bytes_read, "offset": self.offset,
            "finish_requested": self.finish_requested,
            "error": self.error, "error_offset": self.error_offset,
            "truncation": None if trunc is None else {
                "offset": trunc.offset, "what": trunc.what, "present": trunc.present,
                "missing": trunc.missing},
        }


class ApxStreamer(Worker):
    """Follow growing ``.apx`` files and publish their decoded readouts, on one thread.

    ``publish(event, arrays)`` receives, for every poll of a file that found complete
    records, one :class:`~flyprep.events.ApxReadouts` and ``arrays = [hits]`` (a
    ``HIT_DTYPE`` array, possibly empty; not used by the streamer afterwards). ``events``,
    if given, receives the same event without the arrays. Neither should block; an
    exception from either is logged and counted, never fatal.

    ``carry_extra`` is :func:`~flyprep.apx.decode.decode_batch`'s (off by default, so the
    hits equal the reference's); with it, each file's last extra bytes are carried from one
    batch to the next as ``previous_extra``.

    :meth:`follow`, :meth:`poke`, :meth:`finish`, :meth:`status` and :meth:`close` may be
    called from any thread. Files may be followed before :meth:`start`.
    """

    def __init__(
        self,
        publish: Publish,
        *,
        events: EventSink | None = None,
        poll_interval_s: float = 0.1,
        max_files: int = 64,
        max_poll_bytes: int = MAX_POLL_BYTES,
        carry_extra: bool = False,
        records: bool = False,
        hits: bool = True,
        durable: bool = False,
        finish_quiet_s: float = 0.0,
    ) -> None:
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        if max_files < 1:
            raise ValueError(f"max_files must be >= 1, got {max_files}")
        if max_poll_bytes < 1:
            raise ValueError(f"max_poll_bytes must be >= 1, got {max_poll_bytes}")
        super().__init__("apx-stream")
        self._publish = publish
        self._events = events
        self.poll_interval_s = float(poll_interval_s)
        self.max_files = int(max_files)
        self.max_poll_bytes = int(max_poll_bytes)
        self.carry_extra = bool(carry_extra)
        self.records = bool(records)
        self.hits = bool(hits)
        self.durable = bool(durable)
        self.finish_quiet_s = float(finish_quiet_s)
        self._lock = threading.Lock()
        self._nudge = threading.Event()  # news for the thread: a file, a poke, stop
        self._files: dict[str, _File] = {}
        self._closed = False
        self._ended = 0
        self._counts = {"published": 0, "publish_errors": 0, "event_errors": 0,
                        "refused": 0, "forgotten": 0, "failed": 0, "truncated": 0}
        self._last_refused: str | None = None
        self._last_publish_error: str | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        """Start the thread (idempotent); returns ``self``. RuntimeError after close()."""
        with self._lock:
            if self._closed:
                raise RuntimeError("ApxStreamer is closed")
            if self.started:
                return self
            Worker.start(self)
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread and close every tailer; finishes nothing. Idempotent.

        Files still being followed stay ``following`` in :meth:`status`; bytes of an
        incomplete last record are neither published nor reported as a truncation.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if not self.stop_and_join(timeout_s):  # pragma: no cover - a publish() that blocks
            log.warning("apx stream thread did not stop within %s s", timeout_s)

    def wake(self) -> None:
        self._nudge.set()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ control

    @staticmethod
    def _key(path: str | os.PathLike[str]) -> str:
        return os.path.abspath(os.fspath(path))

    def follow(self, path: str | os.PathLike[str], scan: str | None = None) -> bool:
        """Start following ``path`` (it need not exist yet); True if it is followed.

        Idempotent: a file already known (in any state) is left as it is. With
        ``max_files`` files known, the one that ended (finished or failed) first is
        forgotten; if all are still being followed the new file is refused: logged as an
        error, counted in :meth:`status` (``refused``) and False is returned.
        """
        key = self._key(path)
        with self._lock:
            if self._closed:
                log.warning("apx stream closed: not following %s", key)
                return False
            if key in self._files:
                return True
            if len(self._files) >= self.max_files:
                ended = sorted((f for f in self._files.values() if f.state != FOLLOWING),
                               key=lambda f: f.ended)
                excess = len(self._files) - self.max_files + 1
                if len(ended) < excess:
                    self._counts["refused"] += 1
                    self._last_refused = (f"{key}: not followed: already following "
                                          f"{len(self._files)} .apx files (max_files "
                                          f"{self.max_files}), none of them finished")
                    log.error("%s", self._last_refused)
                    return False
                for f in ended[:excess]:
                    del self._files[f.path]
                    self._counts["forgotten"] += 1
            self._files[key] = _File(key, scan, stream=stream_id(key))
        self._nudge.set()
        return True

    def poke(self, path: str | os.PathLike[str]) -> bool:
        """``path`` grew: poll it soon. False (and nothing done) if it is not being followed
        (or the streamer is closed)."""
        with self._lock:
            f = self._files.get(self._key(path))
            if self._closed or f is None or f.state != FOLLOWING:
                return False
            f.poked = True
        self._nudge.set()
        return True

    def finish(self, path: str | os.PathLike[str]) -> bool:
        """The writer of ``path`` is done: poll it until caught up, then end it.

        The file becomes ``finished`` (or ``failed``) once the thread has read it to its
        end. A file ending inside a record is reported (logged, counted as ``truncated``,
        its ``error`` and ``truncation`` say where), after every complete record before it
        was published. A file not followed yet is followed first. Returns False if it
        cannot be (see :meth:`follow`), True otherwise.
        """
        if not self.follow(path):
            return False
        with self._lock:
            f = self._files.get(self._key(path))
            if f is None or f.state != FOLLOWING:
                return True
            f.finish_requested = True
        self._nudge.set()
        return True

    def status(self) -> dict[str, Any]:
        """Plain JSON data: counters, and per file (by path) its state and counters."""
        with self._lock:
            files = {k: f.to_status() for k, f in self._files.items()}
            running = self.alive
            return {
                "running": running,
                "max_files": self.max_files,
                "following": sum(f["state"] == FOLLOWING for f in files.values()),
                **self._counts,
                "last_refused": self._last_refused,
                "last_publish_error": self._last_publish_error,
                "files": files,
            }

    # ------------------------------------------------------------------ the thread

    def loop(self) -> None:
        """Poll what is due, then sleep until the next timed poll or a wake-up."""
        try:
            while True:
                self._nudge.clear()
                with self._lock:
                    if self.stopping:
                        break
                    now = time.monotonic()
                    due = [f for f in self._files.values()
                           if f.state == FOLLOWING and (f.urgent() or now >= f.next_poll)]
                    for f in due:
                        f.poked = False
                for f in due:
                    if self.stopping:
                        break
                    self._service(f)
                with self._lock:
                    now = time.monotonic()
                    waits = [0.0 if f.urgent() else f.next_poll - now
                             for f in self._files.values() if f.state == FOLLOWING]
                wait = min(waits, default=self.poll_interval_s)
                if wait > 0:
                    self._nudge.wait(wait)
        finally:
            with self._lock:
                files = list(self._files.values())
            for f in files:
                self._close_tailer(f)

    def _service(self, f: _File) -> None:
        """One poll of ``f`` (and its end, if finish() was asked and it is caught up)."""
        try:
            if f.tailer is None:
                start = load_offset(f.path) if self.durable else None
                f.tailer = ApxTailer(f.path, max_poll_bytes=self.max_poll_bytes,
                                     start_at=start)
                if start:
                    log.info("apx stream: %s goes on at byte %d (streamed before)", f.path,
                             start)
            tailer = f.tailer
            before = tailer.bytes_read
            batch = tailer.poll()
            behind = tailer.bytes_read - before >= self.max_poll_bytes
            now = time.monotonic()
            with self._lock:
                f.behind = behind
                f.next_poll = now + self.poll_interval_s
                finishing = f.finish_requested
            if tailer.bytes_read != f.size:
                f.size, f.quiet_since = tailer.bytes_read, now
            self._send_header(f)
            self._deliver(f, batch)
            if self.durable:
                self._keep_offset(f)
            # A DAQ may still write after the scan's end: finish once the file is quiet.
            if finishing and not behind and now - f.quiet_since >= self.finish_quiet_s:
                end = tailer.finish()
                self._deliver(f, end.batch)
                if end.error is not None:
                    self._fail(f, end.error)
                else:
                    self._end(f, end.truncation)
        except Exception as exc:  # noqa: BLE001 - one file's problem, never the thread's
            self._fail(f, exc)

    def _send_header(self, f: _File) -> None:
        """A stream starts with the file's header: its exact bytes."""
        tailer = f.tailer
        assert tailer is not None
        if f.header_sent or tailer.header is None:
            return
        data_offset = tailer.data_offset
        assert data_offset is not None
        f.header = tailer.read_range(0, data_offset)
        f.readout_uid = tailer.header.readout_uid
        f.header_sent = True
        if self.records:
            event = ApxHeaderRead(stream=f.stream, file=f.path,
                                  readout_uid=tailer.header.readout_uid, length=data_offset,
                                  scan=f.scan)
            self._send(f, event, [np.frombuffer(f.header, np.uint8)])

    def _send(self, f: _File, event: Any, arrays: Sequence[np.ndarray]) -> bool:
        """``publish(event, arrays)``; a failure is logged and counted, never raised."""
        try:
            self._publish(event, arrays)
        except Exception as exc:  # noqa: BLE001 - counted into status, never raised
            with self._lock:
                self._counts["publish_errors"] += 1
                self._last_publish_error = f"{f.path}: {type(exc).__name__}: {exc}"
            log.warning("apx stream: not published: %s", self._last_publish_error)
            return False
        return True

    def header_of(self, path: str | os.PathLike[str]) -> dict[str, Any] | None:
        """The header of a followed file (its stream id, readout uid and exact bytes),
        once read; None before."""
        with self._lock:
            f = self._files.get(self._key(path))
            if f is None or f.header is None:
                return None
            return {"file": f.path, "stream": f.stream, "readout_uid": f.readout_uid,
                    "header": f.header}

    def _deliver(self, f: _File, batch: ReadoutBatch) -> None:
        """Decode ``batch`` (records of ``f``, in order) and publish it if not empty."""
        tailer = f.tailer
        assert tailer is not None
        n = len(batch)
        if n and self.records:
            end = tailer.offset
            start = end - n * PREFIX_SIZE - int(batch.records["length"].sum())
            ids = batch.readout_id
            assert tailer.header is not None
            self._send(f, ApxRecords(stream=f.stream, file=f.path,
                                     readout_uid=tailer.header.readout_uid,
                                     first_readout=int(ids[0]), last_readout=int(ids[-1]),
                                     count=n, start=start, end=end, scan=f.scan),
                       [np.frombuffer(tailer.read_range(start, end), np.uint8)])
        hits = None
        if n and self.hits:
            rec = batch.records
            dec = decode_batch(batch.payload, rec["offset"], rec["length"], rec["readout_id"],
                               rec["timestamp"], carry_extra=self.carry_extra,
                               previous_extra=f.extra)
            if self.carry_extra:
                f.extra = dec.extra[-1]
            hits = dec.hits
        with self._lock:
            f.bytes_read = tailer.bytes_read
            f.offset = tailer.offset
            if n:
                f.readouts += n
                f.hits += 0 if hits is None else len(hits)
                f.batches += 1
        if not n:
            return
        ids = batch.readout_id
        event = ApxReadouts(path=f.path, first_readout=int(ids[0]), last_readout=int(ids[-1]),
                            n_readouts=n, n_hits=None if hits is None else len(hits),
                            scan=f.scan)
        try:
            if hits is not None:  # without hits, the records (if streamed) say it all
                self._publish(event, [hits])
        except Exception as exc:  # noqa: BLE001 - counted into status, never raised
            with self._lock:
                self._counts["publish_errors"] += 1
                self._last_publish_error = f"{f.path}: {type(exc).__name__}: {exc}"
            log.warning("apx readouts not published: %s", self._last_publish_error)
        else:
            with self._lock:
                self._counts["published"] += 1
        if self._events is not None:
            try:
                self._events.emit(event)
            except Exception as exc:  # noqa: BLE001 - counted into status, never raised
                with self._lock:
                    self._counts["event_errors"] += 1
                log.warning("apx readouts event not emitted for %s: %s: %s", f.path,
                            type(exc).__name__, exc)
        if self.durable:
            f.unsaved.append((time.monotonic(), tailer.offset))
            self._keep_offset(f)

    def keep_offsets(self) -> None:
        """After :meth:`close`, once the publisher has sent what it was given (a clean
        shutdown): keep every file's offset as streamed, so the next start sends nothing
        twice."""
        if self.alive:  # close() timed out: what is still queued may never go out
            log.warning("apx stream still running: offsets kept only as far as sent")
            return
        if self.durable:
            for f in list(self._files.values()):
                self._keep_offset(f, final=True)

    def _keep_offset(self, f: _File, *, final: bool = False) -> None:
        """Keep durably the offset of the records sent ``DURABLE_LAG_S`` ago or more (or,
        ``final``, all): a kill -9 then makes the next start send the last ones again,
        with the same byte ranges, rather than lose those still on their way out."""
        if not f.unsaved:
            return
        due = time.monotonic() - DURABLE_LAG_S
        ready = [o for t, o in f.unsaved if final or t <= due]
        if ready:
            f.unsaved = [(t, o) for t, o in f.unsaved if not (final or t <= due)]
            save_offset(f.path, ready[-1])

    def _end(self, f: _File, truncation: Truncation | None) -> None:
        """``f`` was read to its end: finished (with a truncation if it ends mid-record)."""
        if self.durable:
            self._keep_offset(f, final=True)
        with self._lock:
            self._ended += 1
            f.ended = self._ended
            f.state = FINISHED
            if truncation is not None:
                err = truncation.error(f.path)
                f.truncation = truncation
                f.error, f.error_offset = str(err), err.offset
                self._counts["truncated"] += 1
        if truncation is not None:
            log.warning("apx stream: %s (the %d complete readouts before it were published)",
                        f.error, f.readouts)
        self._close_tailer(f)

    def _fail(self, f: _File, exc: BaseException) -> None:
        """Give up on ``f``: failed, with the error naming the file and an offset."""
        tailer = f.tailer
        if isinstance(exc, ApxFormatError):
            text, offset = str(exc), exc.offset
        else:
            offset = tailer.offset if tailer is not None else 0
            why = exc.reason if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            text = f"{f.path}: offset {offset}: {why}"
        with self._lock:
            self._ended += 1
            f.ended = self._ended
            f.state = FAILED
            f.error, f.error_offset = text, offset
            if tailer is not None:
                f.bytes_read, f.offset = tailer.bytes_read, tailer.offset
            self._counts["failed"] += 1
        log.error("apx stream: %s (file given up after %d readouts)", text, f.readouts)
        if self._events is not None:
            try:
                self._events.emit(ErrorReported(where="apx", message=text, scan=f.scan))
            except Exception:  # noqa: BLE001 - a sink must not stop the stream
                log.exception("apx stream: error event not emitted")
        self._close_tailer(f)

    @staticmethod
    def _close_tailer(f: _File) -> None:
        if f.tailer is not None:
            try:
                f.tailer.close()
            except OSError:  # pragma: no cover
                pass
            f.tailer = None

"""One scan from frames pushed in index order to a finished ``.ptyd``: the frame book, the
preparer and the writer thread behind one :class:`ScanRun`."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..config import PrepareConfig
from ..errors import DiskFull, InputError, OutputError, ScanInterrupted, is_disk_full
from ..events import ChunkWritten, EventSink, ScanStarted
from ..prep import Calibration, Preparation, PreparedChunk
from ..states import ScanState
from ..ptyd.writer import FileAccess, OutputMode, PtydWriter
from ..ptyd.writer_thread import InlineWriter, Listed, WriterThread
from .items import FrameItem, ReadyFrame, RunItem, ScanEnd
from .buffer_pool import BufferPool
from .preparer import ChunkPreparer, require_geometry, scan_meta, writer_params
from .frame_book import FrameBook, Scan


@dataclass(frozen=True)
class PrepareSummary:
    """What one ``prepare`` run did."""

    output: Path
    frames: int
    chunks: int
    frames_missing: int
    seconds: float
    bytes_written: int

    @property
    def frames_per_s(self) -> float:
        """Throughput over the whole run."""
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


#: Prepared chunk buffers of a run by default (``limits.chunk_buffers`` in the daemon): one
#: being prepared, one being written, the rest queued for the writer thread to absorb
#: fsync stalls. When all are in use, preparation waits (back-pressure).
CHUNK_BUFFERS = 4

#: A chunk is written in parts of about this many bytes of prepared frames while it fills,
#: so that little is left to write when its last frame arrives.
PART_BYTES = 4 << 20


class ScanRun:
    """Prepares and writes one scan from frames pushed to it in index order: the one code
    path of ``flyprep prepare``, of the daemon's scans and of the benchmarks. It owns the
    frame book, the preparer and the writer thread; the writer side tells ``events`` of
    every chunk on disk (``chunk.written``). Nothing calls back into the caller.

    Frames never pushed are missing; a frame of the wrong shape or dtype raises
    :class:`InputError`, or with ``allow_missing`` is filled as missing. A position with an
    item overrides ``positions``.

    ``mode`` says how the output is opened: new, overwritten, or resumed at the next chunk
    of a reconciled output (see :mod:`flyprep.pipeline.resume`); ``resolved`` fixes the
    preparation as the kept chunks had it (see :meth:`ChunkPreparer.resolved`).
    ``threaded`` False writes every chunk in the pushing thread (one thread in all: for
    tests of the logic). ``chunk_buffers`` bounds the prepared chunks in memory;
    ``part_bytes``: while a chunk fills, its frames are prepared and written in parts of
    about this size (0: whole). With ``buffer_pool``, chunk buffers come from it first
    and go back to it when the run ends, however it ends.

    Ends: :meth:`push` of :class:`ScanEnd` (complete or aborted), :meth:`suspend` (whole
    chunks written, master still ``acquiring``: a later run resumes it), or :meth:`fail`
    after an error: every chunk whose frames are all in is still written, the rest filled
    as missing, the master says ``aborted`` (a reader still reaches ``num_frames``) -
    except for a full disk, which publishes nothing more (:class:`DiskFull`), and a failure
    before any chunk, which leaves no output.
    """

    def __init__(self, *, num_frames: int, positions: np.ndarray | None,
                 config: PrepareConfig, output: Path, calibration: Calibration | None = None,
                 frame_shape: tuple[int, int] | None = None, dtype: np.dtype | str | None = None,
                 allow_missing: bool = False, mode: OutputMode = OutputMode.NEW,
                 resolved: dict[str, Any] | None = None,
                 chunk_buffers: int = CHUNK_BUFFERS, part_bytes: int = PART_BYTES,
                 events: EventSink | None = None, scan: str = "",
                 clock: Callable[[], float] = time.monotonic, threaded: bool = True,
                 announce: bool = True, buffer_pool: BufferPool | None = None) -> None:
        self.t0 = time.perf_counter()
        require_geometry(config.geometry)
        if mode.kind == "new" and Path(output).exists():
            raise OutputError(f"{output}: exists already (pass --overwrite to replace it, "
                              "or --resume to go on with it)")
        self.config, self.output, self.num_frames = config, Path(output), num_frames
        self.mode, self.allow_missing = mode, allow_missing
        resume = mode.state
        self.chunk_buffers = chunk_buffers
        self.events, self.scan_name, self.clock = events, scan, clock
        out_cfg = config.output
        self.chunk_frames = out_cfg.chunk_frames
        self.book = FrameBook(num_frames=num_frames, chunk_frames=out_cfg.chunk_frames,
                              buffer_chunks=1, positions=positions, frame_shape=frame_shape,
                              dtype=dtype, start_key=0 if resume is None else resume.next_key)
        if resume is not None:
            self.book.missing_total = len(resume.missing_indices)
        self.preparer = ChunkPreparer(config.prep, calibration=calibration,
                                      chunk_frames=out_cfg.chunk_frames,
                                      buffers=max(2, chunk_buffers), pool=buffer_pool)
        if frame_shape is not None and dtype is not None:
            self.preparer.warm(tuple(frame_shape), np.dtype(dtype))  # parts from frame 0 on
        if resolved is not None:
            preparation = self.preparer.preset(resolved)
            # Known even if no frame of the rest of the scan ever comes.
            self.book.set_frame_type(preparation.raw_shape, preparation.raw_dtype)
        self._scan = Scan(self.book, self.preparer)
        self._writer: WriterThread | InlineWriter | None = None
        self.threaded = threaded
        self.bytes_written = 0
        self._chunk_submitted = False  # from the first whole chunk on, the output exists
        self._parts = out_cfg.save == "link" and part_bytes > 0
        self._part_bytes = part_bytes
        self._part_frames = 0  # frames per part; 0 until the preparation is fixed
        self._arrivals: dict[int, float] = {}  # the pushing thread's only
        # (frames, chunks) on disk, replaced whole by the writer's thread: read without a
        # lock by any thread (status must not wait on the threads doing the work)
        self._written_so_far = (0, 0) if resume is None else (resume.next_frame,
                                                               resume.next_key)
        self.summary: PrepareSummary | None = None
        #: ``scan.started`` was sent (once the preparation is fixed: its meta goes with it)
        self.announced = not announce
        self._announce()

    # ---- the pushing side

    def push(self, item: RunItem) -> PrepareSummary | None:
        """Hand on the next frame (in index order), or the end; blocks while every chunk
        buffer is in use (back-pressure). Returns the summary after :class:`ScanEnd`."""
        if isinstance(item, ScanEnd):
            return self._finish(item.state)
        book, index = self.book, item.index
        if not book.accepts(index):
            self._flush_ready()
            if not book.accepts(index):
                raise InputError(item.source, f"frame {index} arrived out of order "
                                              f"(expected frames {book.window.start}..)")
        added = False
        if isinstance(item, ReadyFrame):
            try:
                added = book.add(index, item.data, item.position, source=item.source)
            except ValueError as exc:
                if not self.allow_missing:
                    raise InputError(item.source, str(exc)) from None
            if added:
                if item.arrived is not None:
                    self._arrivals[index] = item.arrived
                if self.preparer.preparation is None:
                    self.preparer.warm(item.data.shape, item.data.dtype)
                    self._announce()
        if not added:
            book.mark_missing([index], [item.position])
        grid = self.book.grid
        if grid.ends_chunk(index):
            self._flush_ready()  # the chunk is whole: on disk now, not at the next frame
        elif self._parts and self.preparer.preparation is not None:
            if not self._part_frames:
                self._part_frames = parts_of(self.preparer.preparation, grid.chunk_frames,
                                             self._part_bytes)
            if (index + 1 - grid.start(grid.key_of(index))) % self._part_frames == 0:
                self._flush_part()
        return None

    def suspend(self) -> None:
        """Stop here (the daemon shuts down): whole chunks written, the master still
        ``acquiring``, ready to be resumed."""
        try:
            self._flush_ready()
        finally:
            if self._writer is not None:
                self._writer.suspend()
            self.preparer.give_back()

    def fail(self, exc: BaseException) -> BaseException:
        """The run cannot go on because of ``exc``: finish the output as well as it can
        (see the class) and return the error to raise (a full disk becomes DiskFull)."""
        writer = self._writer
        if is_disk_full(exc):
            # Nothing is published aborted for a full disk: the master stays as it was
            # (acquiring), and the scan is written again from its files once there is space.
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.halt()
            if isinstance(exc, DiskFull):
                return exc
            full = DiskFull(f"{self.output}: the disk is full: {exc}")
            full.__cause__ = exc
            return full
        if writer is not None and not self._chunk_submitted and self.mode.next_key == 0:
            # Only parts of the first chunk were stored, nothing published: the scan
            # failed before its output existed, and leaves none.
            with contextlib.suppress(Exception):
                writer.abort()
            return exc
        finisher = None
        with contextlib.suppress(Exception):
            finisher = self._resumed_writer()
        if finisher is not None:
            _finish_aborted(self.book, self._flush_ready, finisher)
        self.preparer.give_back()
        return exc

    def progress(self) -> tuple[int, int]:
        """(frames, chunks) on disk so far; any thread."""
        return self._written_so_far

    @property
    def writing_since(self) -> float | None:
        """Since when its writer thread writes what it took last (monotonic seconds);
        None while it waits for work, or without a writer thread."""
        return getattr(self._writer, "busy_since", None)

    @property
    def chunks_queued(self) -> int:
        """Prepared chunks waiting for the writer; any thread."""
        writer = self._writer
        return 0 if writer is None else writer.queued

    # ---- internals

    def _finish(self, state: ScanState) -> PrepareSummary:
        self.book.end()
        self._flush_ready()
        finisher = self._resumed_writer()
        assert finisher is not None, "a scan has at least one chunk"
        finisher.close(state)
        self.preparer.give_back()
        self.summary = PrepareSummary(
            output=self.output, frames=self.num_frames, chunks=self.book.n_chunks,
            frames_missing=self.book.missing_total, seconds=time.perf_counter() - self.t0,
            bytes_written=self.bytes_written)
        return self.summary

    def _open_writer(self) -> WriterThread | InlineWriter:
        if self._writer is None and not self.threaded:
            self._writer = InlineWriter(
                _open_writer(self.output, self.config, self.preparer, self.num_frames,
                             self.mode), on_written=self._written)
        if self._writer is None:
            self._writer = WriterThread(
                _open_writer(self.output, self.config, self.preparer, self.num_frames,
                             self.mode),
                max_queued=max(1, self.chunk_buffers - 2), on_written=self._written)
        return self._writer

    def _resumed_writer(self) -> WriterThread | InlineWriter | None:
        # A resumed scan has a master to finish even when no new chunk was written.
        if self._writer is None and self.mode.next_key > 0 \
                and self.preparer.preparation is not None:
            return self._open_writer()
        return self._writer

    def _flush_ready(self) -> None:
        while isinstance(chunk := self._scan.auto(), PreparedChunk):
            self._announce()  # the first chunk fixed the preparation, if nothing did before
            self.bytes_written += chunk.data.nbytes + chunk.weights.nbytes
            self._chunk_submitted = True
            times = [self._arrivals.pop(i) for i in range(chunk.frame_start,
                                                          chunk.frame_start + chunk.n_frames)
                     if i in self._arrivals]
            if times:  # travels with the chunk to the writer thread
                chunk = dataclasses.replace(chunk, last_arrival=max(times))
            self._open_writer().submit(chunk)

    def _flush_part(self) -> None:
        raw = self.book.release_part()
        if raw is None:
            return
        try:
            part = self.preparer.part(raw)
        except BaseException:
            self.book.unrelease_part(raw)  # its frames stay for the chunk (and a failed run)
            raise
        self._open_writer().submit_part(part)

    def _announce(self) -> None:
        """``scan.started`` with the scan's meta, once the preparation is fixed."""
        preparation = self.preparer.preparation
        if self.announced or preparation is None:
            return
        self.announced = True
        if self.events is None:
            return
        cfg = self.config
        meta = scan_meta(preparation, num_frames=self.num_frames, geometry=cfg.geometry,
                         label=cfg.scan.label)
        resume = self.mode.state
        self.events.emit(ScanStarted(
            scan=self.scan_name, master=str(self.output), num_frames=self.num_frames,
            chunk_frames=self.chunk_frames, label=cfg.scan.label or self.scan_name or None,
            resumed_at=0 if resume is None else resume.next_frame,
            meta={"shape": list(meta.shape), "dtype": preparation.out_dtype.name,
                  "energy": meta.energy, "distance": meta.distance,
                  "psize": None if meta.psize is None else list(meta.psize),
                  "propagation": meta.propagation, "center": list(meta.center)}))

    def _written(self, chunk: PreparedChunk, listed: Listed) -> None:
        """The master lists ``chunk`` now: progress, and ``chunk.written``."""
        self._written_so_far = (chunk.frame_start + chunk.n_frames,
                                self._written_so_far[1] + 1)
        if self.events is None:
            return
        latency = None if chunk.last_arrival is None else self.clock() - chunk.last_arrival
        own_file = self.config.output.save == "link"
        self.events.emit(ChunkWritten(
            scan=self.scan_name, key=chunk.key, frame_start=chunk.frame_start,
            n_frames=chunk.n_frames, master=str(self.output),
            file=str(listed.target) if own_file else None,
            frames_available=listed.frames_available, generation=listed.generation,
            frames_missing=int(np.count_nonzero(chunk.missing)), latency_s=latency))


def run_scan(
    frames: Iterable[FrameItem],
    *,
    num_frames: int,
    positions: np.ndarray | None,
    config: PrepareConfig,
    output: Path,
    calibration: Calibration | None = None,
    frame_shape: tuple[int, int] | None = None,
    dtype: np.dtype | str | None = None,
    allow_missing: bool = False,
    mode: OutputMode = OutputMode.NEW,
    resolved: dict[str, Any] | None = None,
    chunk_buffers: int = CHUNK_BUFFERS,
    part_bytes: int = PART_BYTES,
    events: EventSink | None = None,
) -> PrepareSummary:
    """A :class:`ScanRun` fed from ``frames`` (typed items in index order; see
    :func:`~flyprep.pipeline.items.frame_item`), ended ``complete``.
    :class:`~flyprep.errors.ScanInterrupted` raised by ``frames``, or Ctrl-C
    (KeyboardInterrupt), suspends the run (see
    :meth:`ScanRun.suspend`); any other error fails it (:meth:`ScanRun.fail`)."""
    run = ScanRun(num_frames=num_frames, positions=positions, config=config, output=output,
                  calibration=calibration, frame_shape=frame_shape, dtype=dtype,
                  allow_missing=allow_missing, mode=mode,
                  resolved=resolved, chunk_buffers=chunk_buffers, part_bytes=part_bytes,
                  events=events)
    try:
        for item in frames:
            run.push(item)
        summary = run.push(ScanEnd(ScanState.COMPLETE))
    except (ScanInterrupted, KeyboardInterrupt):
        run.suspend()  # whole chunks kept, master acquiring: a later run resumes it
        raise
    except BaseException as exc:
        raise run.fail(exc)  # noqa: B904 - the error to report
    assert summary is not None
    return summary


def parts_of(preparation: Preparation, chunk_frames: int, part_bytes: int) -> int:
    """Frames per part of a chunk: about ``part_bytes`` of prepared frames, at least one."""
    frame_bytes = int(np.prod(preparation.stored_shape)) * preparation.out_dtype.itemsize
    return max(1, min(chunk_frames, part_bytes // max(1, frame_bytes)))


def _finish_aborted(book: FrameBook, flush_ready: Callable[[], None],
                    writer: WriterThread | InlineWriter) -> None:
    """After a failure: write what arrived, fill the rest as missing, publish ``aborted``.
    If that fails too (the writer itself broke), publish what is there as ``aborted``;
    the first error is the one reported."""
    try:
        book.end()
        flush_ready()
        writer.close(ScanState.ABORTED)
    except Exception:
        with contextlib.suppress(Exception):
            writer.abort()


def _open_writer(output: Path, config: PrepareConfig, preparer: ChunkPreparer,
                 num_frames: int, mode: OutputMode) -> PtydWriter:
    out_cfg = config.output
    assert preparer.preparation is not None
    meta = scan_meta(preparer.preparation, num_frames=num_frames, geometry=config.geometry,
                     label=config.scan.label)
    kwargs: dict[str, Any] = dict(
        meta=meta, save=out_cfg.save, chunk_frames=out_cfg.chunk_frames,
        chunk_format=out_cfg.chunk_format, compression=out_cfg.compression,
        compression_level=out_cfg.compression_level,
        params=writer_params(config, preparer.resolved(), preparer.calibration),
        access=FileAccess(None if out_cfg.file_mode is None else int(out_cfg.file_mode, 8),
                          out_cfg.group))
    return PtydWriter(output, mode=mode, **kwargs)

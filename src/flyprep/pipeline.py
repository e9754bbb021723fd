"""Wiring of one scan: raw chunks -> prepared chunks -> ``.ptyd``.

:class:`ChunkPreparer` turns config sections into a :class:`~flyprep.prep.Preparation`
(at the first chunk, since the auto centre needs data). :func:`prepare_scan` runs a
finished scan directory through the same book, preparer and writer the daemon uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from .config import GeometryConfig, PrepareConfig, PrepConfig, parse_config
from .errors import ConfigError, DiskFull, InputError, OutputError, ScanInterrupted, is_disk_full
from .events import ChunkWritten, EventSink
from .prep import (Calibration, Preparation, PreparedChunk, PreparedPart, center_from_spec,
                   mass_center)
from .ptyd.layout import ScanMeta, ScanState
from .ptyd.resume import ResumeState
from .ptyd.writer import PtydWriter
from .ptyd.writer_thread import WriterThread
from .scan import FrameBook, RawChunk, RawPart, Scan
from .sources.layouts import ScanSource, read_frame, read_frames, read_map
from .sources.live import agreed_type


def load_calibration(prep: PrepConfig) -> Calibration:
    """Read the dark, flat and bad-pixel maps named in the config."""
    return Calibration(
        dark=None if prep.dark is None else read_map(prep.dark),
        flat=None if prep.flat is None else read_map(prep.flat),
        bad_pixels=None if prep.bad_pixels is None else read_map(prep.bad_pixels),
    )


class ChunkPreparer:
    """Prepares raw chunks; the preparation is fixed at the first chunk, as in PtyPy.

    With ``buffers=1`` each chunk's arrays are reused by the next call. With more, chunks
    take output buffers from a pool and the consumer (a writer thread) hands them back
    with :attr:`PreparedChunk.release`; a call blocks while every buffer is in use.
    """

    def __init__(self, prep: PrepConfig, *, calibration: Calibration | None = None,
                 chunk_frames: int, buffers: int = 1) -> None:
        if buffers < 1:
            raise ValueError("buffers must be at least 1")
        self.config = prep
        self.calibration = calibration or Calibration()
        self.chunk_frames = chunk_frames
        self.buffers = buffers
        self.preparation: Preparation | None = None
        self._created = 0  # buffer pairs allocated so far (at most ``buffers``)
        self._free: queue.Queue[tuple[np.ndarray, np.ndarray]] = queue.Queue()
        # The chunk being prepared part by part, and its output buffers.
        self._filling: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None

    def resolved(self) -> dict[str, Any]:
        """What the first chunk decided (raw frame shape and dtype, ROI side, centre), as
        JSON data: stored in the output's provenance so that a resumed scan prepares its
        remaining chunks exactly as the first ones."""
        p = self.preparation
        if p is None:
            raise RuntimeError("nothing resolved before the first chunk")
        return {"raw_shape": list(p.raw_shape), "raw_dtype": p.raw_dtype.str,
                "side": p.side, "center": list(p.center)}

    def preset(self, resolved: dict[str, Any]) -> Preparation:
        """Fix the preparation from :meth:`resolved` data (a resumed scan) instead of
        from the first chunk; ConfigError if it does not fit the config."""
        try:
            shape = tuple(int(v) for v in resolved["raw_shape"])
            dtype = np.dtype(resolved["raw_dtype"])
            side = int(resolved["side"])
            center = np.asarray([float(v) for v in resolved["center"]])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"resolved preparation {resolved!r} is unusable: {exc}") from exc
        self.preparation = self._build(shape, dtype, side, center)
        return self.preparation

    def plan(self, raw: RawChunk) -> Preparation:
        """Resolve ROI side and centre from the config and the first chunk's frames."""
        if self.config.center is None and not raw.present.any():
            raise ConfigError("auto_center: no frame of the first chunk arrived")
        return self._plan_for(raw.frame_shape, raw.dtype,
                              [f for f in raw.frames if f is not None])

    def _plan_for(self, shape: tuple[int, ...], dtype: np.dtype,
                  frames: Sequence[np.ndarray]) -> Preparation:
        """The preparation for raw frames of ``shape``; ``frames`` give the auto centre."""
        cfg = self.config
        side = cfg.shape if cfg.shape is not None else min(shape)
        for name in ("dark", "flat", "bad_pixels"):
            arr = getattr(self.calibration, name)
            if arr is not None and tuple(arr.shape) != tuple(shape):
                raise InputError(getattr(cfg, name) or name,
                                 f"{name} map has shape {tuple(arr.shape)}, raw frames have {shape}")
        if cfg.center is None:
            bad = self.calibration.bad_pixels
            center = mass_center(list(frames), None if bad is None else ~bad.astype(bool))
        else:
            center = center_from_spec(cfg.center, shape)
        if not ((center > 0).all() and (np.asarray(shape) - center > 0).all()):
            raise ConfigError(f"centre {tuple(center)} lies outside the {shape} raw frame")
        return self._build(shape, dtype, side, center)

    def _build(self, shape: tuple[int, ...], dtype: np.dtype, side: int,
               center: np.ndarray) -> Preparation:
        cfg = self.config
        try:
            return Preparation(
                raw_shape=shape, raw_dtype=dtype, side=side, center=center,
                orientation=cfg.orientation, rebin=cfg.rebin, rebin_mode=cfg.rebin_mode,
                saturation=cfg.saturation, out_dtype=cfg.dtype, calibration=self.calibration,
                max_frames=self.chunk_frames)
        except ValueError as exc:
            raise ConfigError(f"prep: {exc}") from exc

    def warm(self, frame_shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Plan from the first frame already, when the centre does not need a whole chunk
        (no auto centre): the first chunk can then be prepared in parts as it fills."""
        if self.preparation is not None or self.config.center is None:
            return
        try:
            self.preparation = self._plan_for(tuple(frame_shape), np.dtype(dtype), ())
        except (ConfigError, InputError):
            return  # the first chunk plans again and reports the error

    def _take(self) -> tuple[np.ndarray, np.ndarray]:
        """A free pair of output buffers: a new one while fewer than ``buffers`` exist
        (allocated when first needed, not all at once: measured 145 ms for four 256x256
        chunk pairs, which held up the first chunk), else the next one given back."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        assert self.preparation is not None
        if self._created < self.buffers:
            self._created += 1
            return self.preparation.allocate()
        return self._free.get()

    def part(self, raw: RawPart) -> PreparedPart:
        """Prepare frames of the chunk being filled into that chunk's output buffers; the
        chunk itself comes later from :meth:`__call__`. Needs the preparation fixed."""
        if self.preparation is None:
            raise RuntimeError("a part needs the preparation fixed (first chunk or warm)")
        if self._filling is None or self._filling[0] != raw.key:
            self._filling = (raw.key, self._take())
        data_buf, weights_buf = self._filling[1]
        end = raw.offset + len(raw.frames)
        data, _ = self.preparation.apply(
            raw.frames, present=raw.present,
            out=(data_buf[raw.offset:end], weights_buf[raw.offset:end]))
        return PreparedPart(key=raw.key, frame_start=raw.frame_start,
                            chunk_frames=raw.chunk_frames, offset=raw.offset, data=data,
                            missing=~raw.present)

    def __call__(self, raw: RawChunk) -> PreparedChunk:
        if self.preparation is None:
            self.preparation = self.plan(raw)
        filling, self._filling = self._filling, None
        if filling is not None and filling[0] == raw.key:
            buffers = filling[1]
        elif raw.done:
            raise RuntimeError(f"chunk {raw.key}: {raw.done} frames were prepared as parts "
                               f"into buffers that are gone")
        else:
            if filling is not None:
                self._free.put(filling[1])
            buffers = self._take()
        if self.buffers == 1:
            self._free.put(buffers)
            release = None
        else:
            def release(buffers: tuple[np.ndarray, np.ndarray] = buffers) -> None:
                self._free.put(buffers)
        n, done = len(raw.frames), raw.done
        try:
            self.preparation.apply(raw.frames[done:], present=raw.present[done:],
                                   out=(buffers[0][done:n], buffers[1][done:n]))
        except BaseException:
            if release is not None:
                release()
            raise
        return PreparedChunk(key=raw.key, frame_start=raw.frame_start, data=buffers[0][:n],
                             weights=buffers[1][:n], positions=raw.positions,
                             missing=~raw.present, sources=raw.sources, written_ahead=done,
                             release=release)


def scan_meta(preparation: Preparation, *, num_frames: int, geometry: GeometryConfig,
              label: str | None) -> ScanMeta:
    """``meta/`` for the stored frames: shape, centre and pixel size after rebinning."""
    psize = None
    if geometry.psize is not None:
        raw = geometry.psize if isinstance(geometry.psize, tuple) else (geometry.psize,) * 2
        psize = (raw[0] * preparation.rebin, raw[1] * preparation.rebin)
    return ScanMeta(num_frames=num_frames, shape=preparation.stored_shape,
                    center=preparation.stored_center, psize=psize, energy=geometry.energy,
                    distance=geometry.distance, propagation=geometry.propagation, label=label)


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


def effective_config(config: PrepareConfig, source: ScanSource) -> PrepareConfig:
    """Fill geometry and ROI shape the config leaves open from the scan's own files."""
    geo = config.geometry.model_dump()
    for key in ("energy", "distance", "psize"):
        if geo[key] is None and key in source.geometry:
            geo[key] = source.geometry[key]
    prep = config.prep.model_dump()
    if prep["shape"] is None and "shape" in source.geometry:
        prep["shape"] = source.geometry["shape"]
    data = config.model_dump()
    data["geometry"], data["prep"] = geo, prep
    # Values from the scan's geometry.txt can clash with the config (e.g. its shape with
    # rebin): a ConfigError, like any other bad configuration.
    return parse_config(data, source=f"configuration completed from "
                                     f"{source.root / 'geometry.txt'}")


#: Prepared chunk buffers of a run by default (``limits.chunk_buffers`` in the daemon): one
#: being prepared, one being written, the rest queued for the writer thread to absorb
#: fsync stalls. When all are in use, preparation waits (back-pressure).
CHUNK_BUFFERS = 4

#: A chunk is written in parts of about this many bytes of prepared frames while it fills,
#: so that little is left to write when its last frame arrives.
PART_BYTES = 4 << 20

#: One frame of a scan in index order: (index, frame or None if missing, source name).
FrameInput = Tuple[int, Optional[np.ndarray], str]


@dataclass(frozen=True)
class ReadyFrame:
    """Frame ``index`` arrived and was read (``arrived``: when its file was finished,
    on the run's clock; gives the chunk's latency)."""

    index: int
    data: np.ndarray
    source: str
    position: Any = None
    arrived: float | None = None


@dataclass(frozen=True)
class MissingFrame:
    """Frame ``index`` will never arrive: written with weight 0."""

    index: int
    source: str
    position: Any = None


@dataclass(frozen=True)
class FailedFrame:
    """Frame ``index`` arrived but cannot be used: written with weight 0."""

    index: int
    source: str
    position: Any = None


@dataclass(frozen=True)
class ScanEnd:
    """Every frame is pushed: finish the output with the master saying ``state``."""

    state: ScanState = ScanState.COMPLETE


RunItem = Union[ReadyFrame, MissingFrame, FailedFrame, ScanEnd]


class ScanRun:
    """Prepares and writes one scan from frames pushed to it in index order: the one code
    path of ``flyprep prepare``, of the daemon's scans and of the benchmarks. It owns the
    frame book, the preparer and the writer thread; the writer side tells ``events`` of
    every chunk on disk (``chunk.written``). Nothing calls back into the caller.

    Frames never pushed are missing; a frame of the wrong shape or dtype raises
    :class:`InputError`, or with ``allow_missing`` is filled as missing. A position with an
    item overrides ``positions``.

    ``resume`` continues a reconciled output at its next chunk; ``resolved`` fixes the
    preparation as the kept chunks had it (see :meth:`ChunkPreparer.resolved`).
    ``chunk_buffers`` bounds the prepared chunks in memory; ``part_bytes``: while a chunk
    fills, its frames are prepared and written in parts of about this size (0: whole).

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
                 allow_missing: bool = False, overwrite: bool = False,
                 resume: ResumeState | None = None, resolved: dict[str, Any] | None = None,
                 chunk_buffers: int = CHUNK_BUFFERS, part_bytes: int = PART_BYTES,
                 events: EventSink | None = None, scan: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.t0 = time.perf_counter()
        require_geometry(config.geometry)
        if Path(output).exists() and not overwrite and resume is None:
            raise OutputError(f"{output}: exists already (pass --overwrite to replace it)")
        self.config, self.output, self.num_frames = config, Path(output), num_frames
        self.overwrite, self.resume, self.allow_missing = overwrite, resume, allow_missing
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
                                      buffers=max(2, chunk_buffers))
        if frame_shape is not None and dtype is not None:
            self.preparer.warm(tuple(frame_shape), np.dtype(dtype))  # parts from frame 0 on
        if resolved is not None:
            preparation = self.preparer.preset(resolved)
            # Known even if no frame of the rest of the scan ever comes.
            self.book.set_frame_type(preparation.raw_shape, preparation.raw_dtype)
        self._scan = Scan(self.book, self.preparer)
        self._writer: WriterThread | None = None
        self.bytes_written = 0
        self._chunk_submitted = False  # from the first whole chunk on, the output exists
        self._parts = out_cfg.save == "link" and part_bytes > 0
        self._part_bytes = part_bytes
        self._part_frames = 0  # frames per part; 0 until the preparation is fixed
        self._arrivals: dict[int, float] = {}  # the pushing thread's only
        self._lock = threading.Lock()  # guards the progress figures the writer updates
        self._frames_written = 0 if resume is None else resume.next_frame
        self._chunks_written = 0 if resume is None else resume.next_key
        self.summary: PrepareSummary | None = None

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
        resume = self.resume
        if writer is not None and not self._chunk_submitted and (resume is None
                                                                 or resume.next_key == 0):
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
        return exc

    def progress(self) -> tuple[int, int]:
        """(frames, chunks) on disk so far; any thread."""
        with self._lock:
            return self._frames_written, self._chunks_written

    # ---- internals

    def _finish(self, state: ScanState) -> PrepareSummary:
        self.book.end()
        self._flush_ready()
        finisher = self._resumed_writer()
        assert finisher is not None, "a scan has at least one chunk"
        finisher.close(state)
        self.summary = PrepareSummary(
            output=self.output, frames=self.num_frames, chunks=self.book.n_chunks,
            frames_missing=self.book.missing_total, seconds=time.perf_counter() - self.t0,
            bytes_written=self.bytes_written)
        return self.summary

    def _open_writer(self) -> WriterThread:
        if self._writer is None:
            self._writer = WriterThread(
                _open_writer(self.output, self.config, self.preparer, self.num_frames,
                             self.overwrite, self.resume),
                max_queued=max(1, self.chunk_buffers - 2), on_written=self._written)
        return self._writer

    def _resumed_writer(self) -> WriterThread | None:
        # A resumed scan has a master to finish even when no new chunk was written.
        if self._writer is None and self.resume is not None and self.resume.next_key > 0 \
                and self.preparer.preparation is not None:
            return self._open_writer()
        return self._writer

    def _flush_ready(self) -> None:
        while isinstance(chunk := self._scan.auto(), PreparedChunk):
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

    def _written(self, chunk: PreparedChunk, _target: Path) -> None:
        """The writer thread stored ``chunk``: progress, and ``chunk.written``."""
        with self._lock:
            self._frames_written = chunk.frame_start + chunk.n_frames
            self._chunks_written += 1
        if self.events is None:
            return
        latency = None if chunk.last_arrival is None else self.clock() - chunk.last_arrival
        self.events.emit(ChunkWritten(
            scan=self.scan_name, key=chunk.key, frame_start=chunk.frame_start,
            n_frames=chunk.n_frames, path=str(self.output),
            frames_missing=int(np.count_nonzero(chunk.missing)), latency_s=latency))


def run_scan(
    frames: Iterable[FrameInput],
    *,
    num_frames: int,
    positions: np.ndarray | None,
    config: PrepareConfig,
    output: Path,
    calibration: Calibration | None = None,
    frame_shape: tuple[int, int] | None = None,
    dtype: np.dtype | str | None = None,
    allow_missing: bool = False,
    overwrite: bool = False,
    resume: ResumeState | None = None,
    resolved: dict[str, Any] | None = None,
    chunk_buffers: int = CHUNK_BUFFERS,
    part_bytes: int = PART_BYTES,
    events: EventSink | None = None,
) -> PrepareSummary:
    """A :class:`ScanRun` fed from ``frames``, ``(index, frame or None, source[, (y,
    x)])`` in index order (None: missing), ended ``complete``.
    :class:`~flyprep.errors.ScanInterrupted` raised by ``frames`` suspends the run (see
    :meth:`ScanRun.suspend`); any other error fails it (:meth:`ScanRun.fail`)."""
    run = ScanRun(num_frames=num_frames, positions=positions, config=config, output=output,
                  calibration=calibration, frame_shape=frame_shape, dtype=dtype,
                  allow_missing=allow_missing, overwrite=overwrite, resume=resume,
                  resolved=resolved, chunk_buffers=chunk_buffers, part_bytes=part_bytes,
                  events=events)
    try:
        for item in frames:
            index, frame, name = item[0], item[1], item[2]
            position = item[3] if len(item) > 3 else None
            run.push(MissingFrame(index, name, position) if frame is None
                     else ReadyFrame(index, frame, name, position))
        summary = run.push(ScanEnd(ScanState.COMPLETE))
    except ScanInterrupted:
        run.suspend()
        raise
    except BaseException as exc:
        raise run.fail(exc)  # noqa: B904 - the error to report
    assert summary is not None
    return summary


def parts_of(preparation: Preparation, chunk_frames: int, part_bytes: int) -> int:
    """Frames per part of a chunk: about ``part_bytes`` of prepared frames, at least one."""
    frame_bytes = int(np.prod(preparation.stored_shape)) * preparation.out_dtype.itemsize
    return max(1, min(chunk_frames, part_bytes // max(1, frame_bytes)))


def _finish_aborted(book: FrameBook, flush_ready: Callable[[], None], writer: WriterThread) -> None:
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


def require_geometry(geometry: GeometryConfig) -> None:
    """PtyPy builds its geometry from energy, distance and psize in ``meta/``: refuse to
    start without them (they come from the config, options or ``geometry.txt``)."""
    missing = [k for k in ("energy", "distance", "psize") if getattr(geometry, k) is None]
    if missing:
        raise ConfigError(f"geometry: {', '.join(missing)} not given; PtyPy needs them in "
                          f"meta/ (set them in [geometry], with --{' --'.join(missing)}, "
                          f"or in the scan's geometry.txt)")


def prepare_scan(
    source: ScanSource,
    config: PrepareConfig,
    output: Path,
    *,
    allow_missing: bool = False,
    overwrite: bool = False,
    events: EventSink | None = None,
) -> PrepareSummary:
    """Prepare a finished scan directory into ``output`` (.ptyd). Missing or unreadable
    frame files raise :class:`InputError`, unless ``allow_missing`` fills them as missing.
    ``events`` hears of each chunk on disk (``chunk.written``)."""
    config = effective_config(config, source)
    num_frames = config.scan.num_frames or len(source.frames)
    if num_frames > len(source.frames) and not allow_missing:
        raise InputError(source.root, f"num_frames is {num_frames} but the scan has only "
                                      f"{len(source.frames)} frames")
    if Path(output).exists() and not overwrite:
        raise OutputError(f"{output}: exists already (pass --overwrite to replace it)")
    calibration = load_calibration(config.prep)
    declared = config.scan
    if declared.frame_shape is not None and declared.frame_dtype is not None:
        shape, dtype = tuple(declared.frame_shape), np.dtype(declared.frame_dtype)
    else:
        shape, dtype = _probe(source, allow_missing)
    frames = _frames_from(source, min(num_frames, len(source.frames)), allow_missing,
                          block=config.output.chunk_frames)
    return run_scan(frames,
                    num_frames=num_frames, positions=_positions_for(source, num_frames),
                    config=config, output=output, calibration=calibration,
                    frame_shape=shape, dtype=dtype, allow_missing=allow_missing,
                    overwrite=overwrite, events=events)


def _probe(source: ScanSource, allow_missing: bool) -> tuple[tuple[int, int], np.dtype]:
    """Shape and dtype of the scan's frames: what its first readable files agree on (two
    of the first three), so that one odd first frame does not decide for all the others."""
    votes: list[Any] = []
    seen: set[Path] = set()
    for ref in source.frames:
        if ref.path in seen:
            continue  # one vote per file: a stack's frames share its header
        seen.add(ref.path)
        try:
            frame = read_frame(ref, dataset=source.dataset)
        except InputError:
            if not allow_missing:
                raise
            continue
        votes.append((frame.shape, frame.dtype))
        decided = agreed_type(votes, final=False)
        if decided is not None or len(votes) == 3:
            break
    decided = agreed_type(votes, final=True)
    if decided is None:
        raise InputError(source.root, "no frame of the scan could be read")
    return decided  # type: ignore[return-value]


def writer_params(config: PrepareConfig, resolved: dict[str, Any],
                  calibration: Calibration | None = None) -> dict[str, Any]:
    """The provenance stored with every chunk (and hashed): the settings, what the first
    chunk resolved, and the calibration maps' contents (their digests)."""
    params = {**config.model_dump(mode="json"), "resolved": resolved}
    maps = (calibration or Calibration()).digests()
    if any(maps.values()):  # without maps the identity is what it was before digests
        params["calibration"] = maps
    return params


def _open_writer(output: Path, config: PrepareConfig, preparer: ChunkPreparer,
                 num_frames: int, overwrite: bool, resume: ResumeState | None) -> PtydWriter:
    out_cfg = config.output
    assert preparer.preparation is not None
    meta = scan_meta(preparer.preparation, num_frames=num_frames, geometry=config.geometry,
                     label=config.scan.label)
    kwargs: dict[str, Any] = dict(
        meta=meta, save=out_cfg.save, chunk_frames=out_cfg.chunk_frames,
        chunk_format=out_cfg.chunk_format, compression=out_cfg.compression,
        compression_level=out_cfg.compression_level,
        params=writer_params(config, preparer.resolved(), preparer.calibration))
    if resume is not None and resume.next_key > 0:
        return PtydWriter.resume(output, resume, **kwargs)
    return PtydWriter(output, overwrite=overwrite, **kwargs)


def _positions_for(source: ScanSource, num_frames: int) -> np.ndarray:
    pos = source.positions
    if pos.shape[0] >= num_frames:
        return pos[:num_frames]
    pad = np.repeat(pos[-1:], num_frames - pos.shape[0], axis=0)
    return np.concatenate([pos, pad])


def _frames_from(source: ScanSource, stop: int, allow_missing: bool, *,
                 block: int) -> Iterator[FrameInput]:
    """Frames ``[0, stop)`` of a scan directory, stacks read ``block`` frames at a time;
    with ``allow_missing`` a frame that cannot be read comes as None (missing) instead of
    ending the run."""
    i = 0
    while i < stop:
        try:
            for index, frame, name in read_frames(source, i, stop, max_block=block):
                yield index, frame, name
                i = index + 1
        except InputError:
            if not allow_missing:
                raise
            yield i, None, str(source.frames[i].path)
            i += 1

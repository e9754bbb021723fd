"""Wiring of one scan: raw chunks -> prepared chunks -> ``.ptyd``.

:class:`ChunkPreparer` turns config sections into a :class:`~flyprep.prep.Preparation`
(at the first chunk, since the auto centre needs data). :func:`prepare_scan` runs a
finished scan directory through the same book, preparer and writer the daemon uses.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import GeometryConfig, PrepareConfig, PrepConfig, parse_config
from .errors import ConfigError, InputError
from .prep import Calibration, Preparation, PreparedChunk, center_from_spec, mass_center
from .ptyd.layout import ScanMeta
from .ptyd.writer import PtydWriter
from .scan import EOS, WAIT, FrameBook, RawChunk, Scan
from .sources.layouts import ScanSource, read_frames, read_map


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
        self._free: queue.Queue[tuple[np.ndarray, np.ndarray]] = queue.Queue()

    def plan(self, raw: RawChunk) -> Preparation:
        """Resolve ROI side and centre from the config and the first chunk's frames."""
        cfg = self.config
        shape = raw.frame_shape
        side = cfg.shape if cfg.shape is not None else min(shape)
        if cfg.auto_center:
            if not raw.present.any():
                raise ConfigError("auto_center: no frame of the first chunk arrived")
            valid = None if self.calibration.bad_pixels is None else ~self.calibration.bad_pixels.astype(bool)
            center = mass_center(raw.stack(), valid)
        else:
            center = center_from_spec(cfg.center, shape)
        if not ((center > 0).all() and (np.asarray(shape) - center > 0).all()):
            raise ConfigError(f"centre {tuple(center)} lies outside the {shape} raw frame")
        try:
            return Preparation(
                raw_shape=shape, raw_dtype=raw.dtype, side=side, center=center,
                orientation=cfg.orientation, rebin=cfg.rebin, rebin_mode=cfg.rebin_mode,
                saturation=cfg.saturation, out_dtype=cfg.dtype, calibration=self.calibration,
                max_frames=self.chunk_frames)
        except ValueError as exc:
            raise ConfigError(f"prep: {exc}") from exc

    def __call__(self, raw: RawChunk) -> PreparedChunk:
        if self.preparation is None:
            self.preparation = self.plan(raw)
            for _ in range(self.buffers):
                self._free.put(self.preparation.allocate())
        buffers = self._free.get()
        if self.buffers == 1:
            self._free.put(buffers)
            release = None
        else:
            def release(buffers: tuple[np.ndarray, np.ndarray] = buffers) -> None:
                self._free.put(buffers)
        try:
            data, weights = self.preparation.apply(raw.frames, present=raw.present, out=buffers)
        except BaseException:
            if release is not None:
                release()
            raise
        return PreparedChunk(key=raw.key, frame_start=raw.frame_start, data=data,
                             weights=weights, positions=raw.positions, missing=~raw.present,
                             sources=raw.sources, release=release)


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


def prepare_scan(
    source: ScanSource,
    config: PrepareConfig,
    output: Path,
    *,
    allow_missing: bool = False,
    overwrite: bool = False,
    on_chunk: Callable[[PreparedChunk], Any] | None = None,
) -> PrepareSummary:
    """Prepare a finished scan into ``output`` (.ptyd). Missing or unreadable frame files
    raise :class:`InputError`, unless ``allow_missing`` fills them as missing frames."""
    t0 = time.perf_counter()
    config = effective_config(config, source)
    out_cfg, scan_cfg = config.output, config.scan
    num_frames = scan_cfg.num_frames or len(source.frames)
    if num_frames > len(source.frames) and not allow_missing:
        raise InputError(source.root, f"num_frames is {num_frames} but the scan has only "
                                      f"{len(source.frames)} frames")
    book = FrameBook(num_frames=num_frames, chunk_frames=out_cfg.chunk_frames, buffer_chunks=1,
                     positions=_positions_for(source, num_frames))
    preparer = ChunkPreparer(config.prep, calibration=load_calibration(config.prep),
                             chunk_frames=out_cfg.chunk_frames)
    scan = Scan(book, preparer)
    writer: PtydWriter | None = None
    bytes_written = 0
    available = min(num_frames, len(source.frames))
    try:
        for key in range(book.n_chunks):
            start = key * out_cfg.chunk_frames
            stop = min(start + out_cfg.chunk_frames, num_frames)
            _feed(book, source, start, min(stop, available), allow_missing)
            if stop > available:
                book.mark_missing(range(max(start, available), stop))
            chunk = scan.auto()
            assert chunk is not WAIT and chunk is not EOS, "every frame of the chunk is resolved"
            if writer is None:
                meta = scan_meta(preparer.preparation, num_frames=num_frames,
                                 geometry=config.geometry, label=scan_cfg.label)
                writer = PtydWriter(output, meta=meta, save=out_cfg.save,
                                    chunk_frames=out_cfg.chunk_frames,
                                    chunk_format=out_cfg.chunk_format,
                                    compression=out_cfg.compression,
                                    compression_level=out_cfg.compression_level,
                                    params=config.model_dump(mode="json"), overwrite=overwrite)
            writer.write_chunk(chunk)
            bytes_written += chunk.data.nbytes + chunk.weights.nbytes
            if on_chunk is not None:
                on_chunk(chunk)
        assert writer is not None
        writer.close("complete")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return PrepareSummary(output=Path(output), frames=num_frames, chunks=book.n_chunks,
                          frames_missing=book.missing_total,
                          seconds=time.perf_counter() - t0, bytes_written=bytes_written)


def _positions_for(source: ScanSource, num_frames: int) -> np.ndarray:
    pos = source.positions
    if pos.shape[0] >= num_frames:
        return pos[:num_frames]
    pad = np.repeat(pos[-1:], num_frames - pos.shape[0], axis=0)
    return np.concatenate([pos, pad])


def _feed(book: FrameBook, source: ScanSource, start: int, stop: int, allow_missing: bool) -> None:
    """Read frames ``[start, stop)`` into the book; with ``allow_missing`` a frame that
    cannot be read is declared missing instead of ending the run."""
    i = start
    while i < stop:
        try:
            for index, frame, name in read_frames(source, i, stop):
                _add(book, index, frame, name)
                i = index + 1
        except InputError:
            if not allow_missing:
                raise
            book.mark_missing([i])
            i += 1


def _add(book: FrameBook, index: int, frame: np.ndarray, name: str) -> None:
    try:
        book.add(index, frame, source=name)
    except ValueError as exc:
        raise InputError(name, str(exc)) from None

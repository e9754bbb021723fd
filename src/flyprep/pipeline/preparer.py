"""From config sections to a fixed preparation: :class:`ChunkPreparer` (fixed at the
first chunk, as PtyPy does, or preset from a resumed scan), the scan's ``meta/``, the
provenance hashed into every chunk, and the calibration maps."""

from __future__ import annotations

import queue
from typing import Any, Sequence

import numpy as np

from ..config import GeometryConfig, PrepareConfig, PrepConfig, parse_config
from ..errors import ConfigError, InputError
from ..prep import (Calibration, Preparation, PreparedChunk, PreparedPart, center_from_spec,
                   mass_center)
from ..ptyd.format import ScanMeta
from .buffer_pool import BufferPool
from .frame_book import RawChunk, RawPart
from ..sources.scan_dir import ScanSource, read_map


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
                 chunk_frames: int, buffers: int = 1, pool: BufferPool | None = None) -> None:
        if buffers < 1:
            raise ValueError("buffers must be at least 1")
        self.config = prep
        self.calibration = calibration or Calibration()
        self.chunk_frames = chunk_frames
        self.buffers = buffers
        self.preparation: Preparation | None = None
        self._created = 0  # buffer pairs allocated so far (at most ``buffers``)
        self._pool = pool  # pairs of earlier scans, taken before allocating
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
        return self._planned(raw.frame_shape, raw.dtype,
                             [f for f in raw.frames if f is not None])

    def fix(self, shape: tuple[int, ...], dtype: np.dtype,
            frames: Sequence[np.ndarray]) -> Preparation:
        """Fix the preparation before any chunk, for raw frames of ``shape`` and ``dtype``,
        as the first chunk would: from the config, and from ``frames`` (the first chunk's
        frames that arrived) for an auto centre."""
        self.preparation = self._planned(shape, dtype, frames)
        return self.preparation

    def _planned(self, shape: tuple[int, ...], dtype: np.dtype,
                 frames: Sequence[np.ndarray]) -> Preparation:
        if self.config.center is None and not frames:
            raise ConfigError("auto_center: no frame of the first chunk arrived")
        return self._plan_for(shape, dtype, frames)

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
        p = self.preparation
        assert p is not None
        if self._created < self.buffers:
            self._created += 1
            n, shape = p.max_frames, p.stored_shape
            kept = None if self._pool is None else \
                self._pool.take((n, *shape), p.out_dtype, (n, *shape))
            return kept if kept is not None else p.allocate()
        return self._free.get()

    def give_back(self) -> None:
        """The run is over: the pairs not in use go to the pool for the next scan."""
        if self._pool is None:
            return
        idle = []
        while True:
            try:
                idle.append(self._free.get_nowait())
            except queue.Empty:
                break
        self._pool.give(idle)

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


def require_geometry(geometry: GeometryConfig) -> None:
    """PtyPy builds its geometry from energy, distance and psize in ``meta/``: refuse to
    start without them (they come from the config, options or ``geometry.txt``)."""
    missing = [k for k in ("energy", "distance", "psize") if getattr(geometry, k) is None]
    if missing:
        raise ConfigError(f"geometry: {', '.join(missing)} not given; PtyPy needs them in "
                          f"meta/ (set them in [geometry], with --{' --'.join(missing)}, "
                          f"or in the scan's geometry.txt)")


def writer_params(config: PrepareConfig, resolved: dict[str, Any],
                  calibration: Calibration | None = None) -> dict[str, Any]:
    """The provenance stored with every chunk (and hashed): the settings, what the first
    chunk resolved, and the calibration maps' contents (their digests)."""
    # Who may read the files is not part of what was prepared: changing it (or an upgrade
    # that adds such a setting) must not make earlier chunks look mismatched on resume.
    params = {**config.model_dump(mode="json", exclude={"output": {"file_mode", "group"}}),
              "resolved": resolved}
    maps = (calibration or Calibration()).digests()
    if any(maps.values()):  # without maps the identity is what it was before digests
        params["calibration"] = maps
    return params

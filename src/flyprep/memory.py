"""How much memory a daemon config can take, and how that compares with the machine's.

:func:`estimate_memory` is pure arithmetic on a :class:`~flyprep.config.DaemonConfig`;
:func:`assess` compares its figure with a machine's memory (given, so that it can be
tested); :func:`machine_memory` reads the real one. ``flyprep check-config`` says all three.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import DaemonConfig

#: The raw frame type assumed when neither ``scan.frame_dtype`` nor the frames say it
#: (4 bytes: photon-counting detectors write 32-bit counts).
ASSUMED_RAW_DTYPE = "uint32"


@dataclass(frozen=True)
class MemoryEstimate:
    """The memory a config's running scans can hold: ``max_scans`` times ``per_scan``."""

    #: ``limits.max_scans``: scans prepared at the same time (more wait in a queue).
    max_scans: int
    #: What one running scan holds: (what, bytes, how it is counted).
    per_scan: tuple[tuple[str, int, str], ...]
    #: What was assumed because the config leaves it to the frames.
    assumptions: tuple[str, ...]
    #: The settings that can lower the figure, with their values.
    settings: tuple[str, ...]

    @property
    def per_scan_bytes(self) -> int:
        """Bytes one running scan holds."""
        return sum(n for _, n, _ in self.per_scan)

    @property
    def total_bytes(self) -> int:
        """Bytes every running scan together holds at most."""
        return self.max_scans * self.per_scan_bytes


def estimate_memory(config: DaemonConfig) -> MemoryEstimate | None:
    """The frame buffers ``limits.max_scans`` running scans can hold at once, or None when
    the frame size is unknown (neither ``prep.shape`` nor ``scan.frame_shape`` is set).

    Counted per running scan (``n`` = ``output.chunk_frames``; ``side`` = ``prep.shape``,
    else the smaller side of ``scan.frame_shape``; stored frames are ``side // prep.rebin``
    wide):

    * **prepared chunk buffers**: ``limits.chunk_buffers`` pairs of arrays of ``n`` stored
      frames, data (``prep.dtype``, resolved as the preparation resolves ``"auto"``) and
      one byte of weights (bool) per pixel. The preparer's pool
      (``pipeline/preparer.ChunkPreparer``, ``buffers=max(2, chunk_buffers)`` in
      ``pipeline/scan_run.ScanRun``) holds every chunk in flight: the one being filled
      (prepared part by part), the ones queued for the writer thread
      (``max_queued=chunk_buffers - 2``) and the one being written; a chunk waits for a
      free buffer (back-pressure), so there are never more.
    * **raw frames**: ``n`` raw frames (``scan.frame_shape`` and ``scan.frame_dtype``;
      unset: a ``side`` square of ``uint32``, a lower bound). The frame book keeps one
      chunk of slots (``FrameBook(buffer_chunks=1)``), and an HDF5 stack is read ahead in
      one slice up to the end of the chunk (``sources/live.LiveFrames.read``); the session
      reads a frame only when the run takes it.
    * **working arrays** of the preparation (``prep/plan.Preparation``): ``n`` frames of
      ``side`` squared in float32 (float64 for a float64 output, the raw type when nothing
      is converted) unless raw values go straight into the output (no rebinning, dark or
      flat, and a raw type the output holds safely); plus ``n`` bytes of ``side`` squared
      when ``prep.saturation`` is set.

    Not counted: compressed copies of a chunk on its way to the writer (smaller than the
    chunk), the calibration maps (a few frames), HDF5's caches, numpy's temporaries while
    one part is prepared, and the interpreter and libraries themselves (~150 MB).
    """
    prep, scan, limits = config.prep, config.scan, config.limits
    n = config.output.chunk_frames
    assumptions: list[str] = []
    if scan.frame_shape is not None:
        raw_shape = (int(scan.frame_shape[0]), int(scan.frame_shape[1]))
    elif prep.shape is not None:
        raw_shape = (prep.shape, prep.shape)
        assumptions.append(f"raw frames assumed {prep.shape}x{prep.shape} (prep.shape; set "
                           "scan.frame_shape for the detector's size)")
    else:
        return None
    if scan.frame_dtype is not None:
        raw_dtype = np.dtype(scan.frame_dtype)
    else:
        raw_dtype = np.dtype(ASSUMED_RAW_DTYPE)
        assumptions.append(f"raw frames assumed {ASSUMED_RAW_DTYPE} (set scan.frame_dtype)")
    side = prep.shape if prep.shape is not None else min(raw_shape)
    stored = side // prep.rebin
    corrections = prep.dark is not None or prep.flat is not None
    out_dtype = _out_dtype(prep.dtype, raw_dtype, rebin=prep.rebin,
                           rebin_mode=prep.rebin_mode, corrections=corrections)

    buffers = max(2, limits.chunk_buffers)
    pair = n * stored * stored * (out_dtype.itemsize + 1)
    per_scan = [(
        "prepared chunk buffers", buffers * pair,
        f"{buffers} (limits.chunk_buffers) x {n} frames (output.chunk_frames) x "
        f"{stored}x{stored} x ({out_dtype.itemsize} B {out_dtype.name} data + 1 B weights)")]
    raw_frame = raw_shape[0] * raw_shape[1] * raw_dtype.itemsize
    per_scan.append(("raw frames", n * raw_frame,
                     f"{n} frames x {raw_shape[0]}x{raw_shape[1]} x {raw_dtype.itemsize} B "
                     f"{raw_dtype.name}"))
    direct = prep.rebin == 1 and not corrections and \
        np.can_cast(raw_dtype, out_dtype, "safe")
    if not direct:
        if corrections or (prep.rebin > 1 and prep.rebin_mode == "mean") \
                or out_dtype.kind == "f":
            work = np.dtype(np.float64 if out_dtype == np.float64 else np.float32)
        else:
            work = raw_dtype
        per_scan.append(("working array", n * side * side * work.itemsize,
                         f"{n} frames x {side}x{side} x {work.itemsize} B {work.name}"))
    if prep.saturation is not None:
        per_scan.append(("saturation mask", n * side * side,
                         f"{n} frames x {side}x{side} x 1 B"))

    settings = [f"limits.max_scans = {limits.max_scans}"] if limits.max_scans > 1 else []
    if limits.chunk_buffers > 2:
        settings.append(f"limits.chunk_buffers = {limits.chunk_buffers}")
    if n > 1:
        settings.append(f"output.chunk_frames = {n}")
    settings.append(f"prep.shape = {side}" if prep.shape is not None
                    else f"prep.shape (unset: the frame's {side})")
    return MemoryEstimate(max_scans=limits.max_scans, per_scan=tuple(per_scan),
                          assumptions=tuple(assumptions), settings=tuple(settings))


def _out_dtype(dtype: str, raw: np.dtype, *, rebin: int, rebin_mode: str,
               corrections: bool) -> np.dtype:
    """The stored frames' type, as ``prep/plan.Preparation`` resolves ``prep.dtype``."""
    if dtype != "auto":
        return np.dtype(dtype)
    if corrections or (rebin > 1 and rebin_mode == "mean") or raw.kind == "f":
        return np.dtype(np.float32)
    if rebin > 1:
        return np.promote_types(raw, np.int32)
    return raw


@dataclass(frozen=True)
class Assessment:
    """How an estimate compares with a machine's memory: ``ok``, ``warn`` (more than half
    of it) or ``refuse`` (more than all of it); ``message`` says so (empty when ok)."""

    level: str
    message: str


def assess(estimate: MemoryEstimate, machine_bytes: int | None) -> Assessment:
    """``refuse`` above ``machine_bytes``, ``warn`` above half of it, else ``ok`` (also
    when the machine's memory is unknown, None)."""
    total = estimate.total_bytes
    if machine_bytes is None or machine_bytes <= 0 or 2 * total <= machine_bytes:
        return Assessment("ok", "")
    lower = "lower " + ", ".join(estimate.settings)
    if total > machine_bytes:
        return Assessment("refuse", f"the running scans can take {human_bytes(total)}, more "
                                    f"than this machine's {human_bytes(machine_bytes)} of "
                                    f"memory: {lower}")
    return Assessment("warn", f"the running scans can take {human_bytes(total)}, more than "
                              f"half of this machine's {human_bytes(machine_bytes)} of "
                              f"memory; to leave more room, {lower}")


def machine_memory(meminfo: str | os.PathLike[str] = "/proc/meminfo") -> int | None:
    """This machine's physical memory in bytes (``SC_PHYS_PAGES`` x ``SC_PAGE_SIZE``, else
    ``MemTotal`` of ``meminfo``), or None when neither says."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and size > 0:
            return int(pages) * int(size)
    except (AttributeError, ValueError, OSError):
        pass
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemTotal:"):
                value, *unit = line.split()[1:]
                return int(value) * (1024 if unit and unit[0].lower() == "kb" else 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def human_bytes(n: int) -> str:
    """``n`` bytes for people: ``1.5 GiB``, ``250 MiB``, ``12 KiB``, ``7 B``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover

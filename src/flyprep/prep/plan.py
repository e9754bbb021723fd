"""A preparation resolved once per scan and applied to whole raw chunks.

:class:`Preparation` fixes everything that does not change from frame to frame (ROI
placement, orientation, calibration maps cut to the ROI, buffer sizes), so that preparing a
chunk is a handful of vectorised numpy operations into preallocated arrays.
"""

from __future__ import annotations

import hashlib

from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import numpy as np

from . import kernels as k

#: Raw frames of a chunk: one (n, H, W) array, or n 2-D frames with None for absent ones.
RawFrames = Union[np.ndarray, Sequence[Union[np.ndarray, None]]]

OUTPUT_DTYPES = ("auto", "int32", "uint32", "uint16", "float32", "float64")


@dataclass(frozen=True)
class Calibration:
    """Per-pixel maps at the raw frame shape; any of them may be absent."""

    dark: np.ndarray | None = None
    flat: np.ndarray | None = None
    bad_pixels: np.ndarray | None = None  # True (nonzero) marks a pixel to ignore

    def digests(self) -> dict[str, str | None]:
        """A SHA-256 of each map's contents (dtype, shape, values): part of a preparation's
        identity, so that a map replaced under the same name is noticed."""
        out: dict[str, str | None] = {}
        for name in ("dark", "flat", "bad_pixels"):
            arr = getattr(self, name)
            if arr is None:
                out[name] = None
                continue
            arr = np.ascontiguousarray(arr)
            h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(memoryview(arr).cast("B"))
            out[name] = h.hexdigest()
        return out

    def check(self, raw_shape: tuple[int, int]) -> None:
        """Raise ValueError naming the map whose shape is not the raw frame shape."""
        for name in ("dark", "flat", "bad_pixels"):
            arr = getattr(self, name)
            if arr is not None and tuple(arr.shape) != tuple(raw_shape):
                raise ValueError(f"{name} map has shape {tuple(arr.shape)}, "
                                 f"raw frames have {tuple(raw_shape)}")


def _inverse_oriented(view: np.ndarray, flags: tuple[bool, bool, bool]) -> np.ndarray:
    """View ``v`` of ``view`` such that writing ``v`` writes ``orient(v)`` into ``view``."""
    transpose, flipud, fliplr = flags
    if fliplr:
        view = view[..., ::-1]
    if flipud:
        view = view[..., ::-1, :]
    if transpose:
        view = np.swapaxes(view, -1, -2)
    return view


class Preparation:
    """Turns raw chunks ``(n, H, W)`` into stored frames and weights, PtyPy-style.

    ``side`` is the square ROI in raw pixels; stored frames are ``side // rebin`` wide.
    ``center`` is the optical axis (y, x) in raw pixels, already resolved.
    """

    def __init__(
        self,
        *,
        raw_shape: Sequence[int],
        raw_dtype: np.dtype | str,
        side: int,
        center: Sequence[float],
        orientation: k.OrientationSpec = None,
        rebin: int = 1,
        rebin_mode: str = "mean",
        saturation: float | None = None,
        out_dtype: str = "auto",
        calibration: Calibration | None = None,
        max_frames: int = 100,
    ) -> None:
        self.raw_shape = (int(raw_shape[-2]), int(raw_shape[-1]))
        self.raw_dtype = np.dtype(raw_dtype)
        if side < 1:
            raise ValueError(f"ROI side must be positive, got {side}")
        if not 1 <= rebin <= 32:
            raise ValueError(f"rebin must be 1-32, got {rebin}")
        if side % rebin:
            raise ValueError(f"rebin {rebin} does not divide the ROI side {side}")
        if rebin_mode not in ("mean", "sum"):
            raise ValueError(f"rebin_mode must be 'mean' or 'sum', got {rebin_mode!r}")
        self.side = side
        self.center = (float(center[0]), float(center[1]))
        self.rebin = rebin
        self.rebin_mode = rebin_mode
        self.saturation = saturation
        self.flags = k.orientation_flags(orientation)
        self.max_frames = max_frames
        calibration = calibration or Calibration()
        calibration.check(self.raw_shape)

        self.crop = k.plan_crop_pad(self.raw_shape, side, center)
        roi_center = k.orient_center(self.crop.center, (side, side), self.flags)
        self.stored_side = side // rebin
        self.stored_center = (roi_center[0] / rebin, roi_center[1] / rebin)

        corrections = calibration.dark is not None or calibration.flat is not None
        self.out_dtype = self._resolve_dtype(out_dtype, corrections)
        if corrections or (rebin > 1 and rebin_mode == "mean") or self.out_dtype.kind == "f":
            work_dtype = np.dtype(np.float32) if self.out_dtype != np.float64 else self.out_dtype
        else:
            work_dtype = self.raw_dtype
        # Raw values go straight into the output array when nothing else happens to them.
        self._direct = (rebin == 1 and not corrections
                        and np.can_cast(self.raw_dtype, self.out_dtype, "safe"))
        self._work = None if self._direct else np.zeros((max_frames, side, side), work_dtype)
        self._saturated = (np.zeros((max_frames, side, side), bool)
                           if saturation is not None else None)

        self._dark = self._to_roi(calibration.dark, np.float32)
        inv_flat = None
        if calibration.flat is not None:
            flat = calibration.flat.astype(np.float64)
            with np.errstate(divide="ignore"):
                inv_flat = np.where(flat > 0, 1.0 / flat, 0.0)
        self._inv_flat = self._to_roi(inv_flat, np.float32)

        valid = np.ones(self.raw_shape, bool)
        if calibration.bad_pixels is not None:
            valid &= ~calibration.bad_pixels.astype(bool)
        if calibration.flat is not None:
            valid &= calibration.flat > 0
        #: 2-D weights of the stored frames: padding and bad pixels are False.
        self.mask2d = k.rebin_mask(self._to_roi(valid, bool), rebin)

    @property
    def raw_rows(self) -> tuple[int, int] | None:
        """The rows ``(top, stop)`` of a raw frame this preparation reads (its ROI's), or
        None when it reads them all: a reader need not read the others."""
        src = self.crop.src[0]
        return None if (src.start, src.stop) == (0, self.raw_shape[0]) else (src.start, src.stop)

    @property
    def stored_shape(self) -> tuple[int, int]:
        """Shape of one stored frame."""
        return (self.stored_side, self.stored_side)

    def _resolve_dtype(self, out_dtype: str, corrections: bool) -> np.dtype:
        if out_dtype not in OUTPUT_DTYPES:
            raise ValueError(f"output dtype must be one of {OUTPUT_DTYPES}, got {out_dtype!r}")
        if out_dtype != "auto":
            return np.dtype(out_dtype)
        if corrections or (self.rebin > 1 and self.rebin_mode == "mean") or self.raw_dtype.kind == "f":
            return np.dtype(np.float32)
        if self.rebin > 1:  # summed counts need room
            return np.promote_types(self.raw_dtype, np.int32)
        return self.raw_dtype

    def _to_roi(self, arr: np.ndarray | None, dtype: type) -> np.ndarray | None:
        """A raw-shaped map cut to the ROI (zero outside the frame) and oriented."""
        if arr is None:
            return None
        roi = np.zeros((self.side, self.side), dtype)
        _inverse_oriented(roi, self.flags)[self.crop.dst] = arr[self.crop.src]
        return roi

    def allocate(self, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Fresh output arrays (data, weights) for ``n`` frames (default: ``max_frames``)."""
        n = self.max_frames if n is None else n
        data = np.empty((n, *self.stored_shape), self.out_dtype)
        weights = np.empty((n, *self.stored_shape), bool)
        # Written now, so that the kernel maps the pages here and not while the first
        # chunks are prepared (measured: tens of ms per chunk buffer on a VM).
        data.fill(0)
        weights.fill(False)
        return data, weights

    def _roi_pairs(self, raw: RawFrames, target: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ROI of the raw frames, oriented view of ``target`` to put it in): one pair for a
        3-D array, one per present frame for a sequence. Only ROI pixels are ever read."""
        view = _inverse_oriented(target, self.flags)
        if isinstance(raw, np.ndarray):
            yield raw[(..., *self.crop.src)], view[(..., *self.crop.dst)]
            return
        for i, frame in enumerate(raw):
            if frame is not None:
                yield frame[self.crop.src], view[i][self.crop.dst]

    def _check_raw(self, raw: RawFrames) -> int:
        n = len(raw)
        if n > self.max_frames:
            raise ValueError(f"{n} frames exceed the planned {self.max_frames} per chunk")
        shapes = ({raw.shape[1:]} if isinstance(raw, np.ndarray)
                  else {f.shape for f in raw if f is not None})
        for shape in shapes:
            if tuple(shape) != self.raw_shape:
                raise ValueError(f"raw frames have shape {tuple(shape)}, "
                                 f"the preparation was planned for {self.raw_shape}")
        return n

    def apply(
        self,
        raw: RawFrames,
        *,
        present: np.ndarray | None = None,
        out: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Prepare ``raw``: an (n, H, W) array, or n frames with None for absent ones.

        Frames where ``present`` is False (or None) become zero data with all-zero weights.
        Returns views ``(data, weights)`` of ``out``."""
        n = self._check_raw(raw)
        if present is None and not isinstance(raw, np.ndarray):
            present = np.array([f is not None for f in raw], bool)
        data_out, weights_out = out if out is not None else self.allocate(n)
        data, weights = data_out[:n], weights_out[:n]

        if self._direct:
            if self.crop.pads:
                data.fill(0)
            for roi, target in self._roi_pairs(raw, data):
                np.copyto(target, roi, casting="unsafe")
        else:
            # The scratch buffers' padding is never written, so it stays zero (False).
            work = self._work[:n]
            for roi, target in self._roi_pairs(raw, work):
                np.copyto(target, roi, casting="unsafe")
            if self._dark is not None or self._inv_flat is not None:
                k.dark_flat(work, dark=self._dark, inv_flat=self._inv_flat, out=work)
            if self.rebin > 1:
                binned = k.rebin(work, self.rebin, mode=self.rebin_mode)
                k.cast_clipped(binned, self.out_dtype, out=data)
            else:
                k.cast_clipped(work, self.out_dtype, out=data)

        np.copyto(weights, self.mask2d)
        if self._saturated is not None:
            sat = self._saturated[:n]
            for roi, target in self._roi_pairs(raw, sat):
                np.greater_equal(roi, self.saturation, out=target)
            if self.rebin > 1:
                weights &= ~sat.reshape(n, self.stored_side, self.rebin,
                                        self.stored_side, self.rebin).any(axis=(2, 4))
            else:
                weights &= ~sat
        if present is not None and not np.all(present):
            missing = ~np.asarray(present, bool)
            data[missing] = 0
            weights[missing] = False
        return data, weights

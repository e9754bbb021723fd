"""Pure numpy kernels with PtyPy's ``PtyScan`` preparation semantics.

Every function takes whole chunks ``(n, H, W)`` and plain values, never paths, config
objects or loggers. The geometry follows PtyPy 0.9: the ROI is cropped (or zero padded)
symmetrically around the rounded centre at the raw pixel size, then re-oriented, then
rebinned; the centre is carried through every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

CenterSpec = Union[str, Sequence[float], None]
OrientationSpec = Union[int, Sequence[bool], None]

NAMED_CENTERS = ("fftshift", "geometric", "fft")


def center_from_spec(spec: str | Sequence[float], frame_shape: Sequence[int]) -> np.ndarray:
    """Resolve a PtyPy centre specification to (y, x) pixel coordinates of the raw frame."""
    sh = np.asarray(frame_shape[-2:], dtype=np.int64)
    if isinstance(spec, str):
        if spec == "fftshift":
            return (sh // 2).astype(np.float64)
        if spec == "geometric":
            return sh / 2.0 - 0.5
        if spec == "fft":
            return np.zeros(2)
        raise ValueError(f"unknown centre {spec!r}; expected one of {NAMED_CENTERS} or (y, x)")
    cen = np.asarray(spec, dtype=np.float64).reshape(-1)
    if cen.size != 2:
        raise ValueError(f"centre must be (y, x), got {spec!r}")
    return cen


def mass_center(frames: np.ndarray | Sequence[np.ndarray],
                valid: np.ndarray | None = None) -> np.ndarray:
    """Mean over frames of each frame's centre of mass (y, x), ignoring invalid pixels.

    ``frames`` is an (n, H, W) array or a sequence of 2-D frames; ``valid`` a 2-D or
    per-frame boolean mask. Frames with no signal are skipped. Works frame by frame, so a
    chunk of large frames is never copied whole.
    """
    if isinstance(frames, np.ndarray) and frames.ndim == 2:
        frames = frames[None]
    centres = []
    for i, frame in enumerate(frames):
        if valid is not None:
            mask = valid if valid.ndim == 2 else valid[i]
            frame = np.where(mask, frame, 0)
        rows = frame.sum(axis=1, dtype=np.float64)
        total = rows.sum()
        if total > 0:
            cols = frame.sum(axis=0, dtype=np.float64)
            centres.append((rows @ np.arange(rows.size) / total,
                            cols @ np.arange(cols.size) / total))
    if not centres:
        raise ValueError("cannot find a centre of mass: every frame is empty or masked")
    return np.asarray(centres).mean(axis=0)


@dataclass(frozen=True)
class CropPad:
    """Where a square ROI of side ``side`` sits relative to a raw frame.

    ``src`` slices the raw frame, ``dst`` the ROI; pixels of the ROI outside ``dst`` are
    zero fill. ``center`` is the optical axis in ROI pixels.
    """

    side: int
    src: tuple[slice, slice]
    dst: tuple[slice, slice]
    center: tuple[float, float]

    @property
    def pads(self) -> bool:
        """True when part of the ROI lies outside the raw frame."""
        return any(d.start > 0 or d.stop < self.side for d in self.dst)


def plan_crop_pad(frame_shape: Sequence[int], side: int, center: Sequence[float]) -> CropPad:
    """Plan PtyPy's symmetric crop/pad of a raw frame to ``side`` x ``side`` around ``center``."""
    osh = np.asarray(frame_shape[-2:], dtype=np.int64)
    c = np.round(np.asarray(center, dtype=np.float64)).astype(np.int64)
    low = side // 2 - c  # ROI index = raw index + low
    src, dst = [], []
    for axis in range(2):
        lo_out = max(0, int(low[axis]))
        hi_out = min(side, int(osh[axis] + low[axis]))
        if hi_out <= lo_out:
            raise ValueError(
                f"ROI of side {side} around centre {tuple(center)} misses the "
                f"{tuple(int(s) for s in osh)} frame entirely"
            )
        dst.append(slice(lo_out, hi_out))
        src.append(slice(lo_out - int(low[axis]), hi_out - int(low[axis])))
    new_center = c + low
    return CropPad(side=side, src=tuple(src), dst=tuple(dst),
                   center=(float(new_center[0]), float(new_center[1])))


def crop_pad(frames: np.ndarray, plan: CropPad, *, out: np.ndarray | None = None) -> np.ndarray:
    """Cut (or zero pad) every frame of ``frames`` to the planned ROI."""
    lead = frames.shape[:-2]
    if out is None:
        out = np.zeros(lead + (plan.side, plan.side), dtype=frames.dtype)
    elif plan.pads:
        out.fill(0)
    out[(..., *plan.dst)] = frames[(..., *plan.src)]
    return out


def orientation_flags(orientation: OrientationSpec) -> tuple[bool, bool, bool]:
    """PtyPy's (transpose, flipud, fliplr) from an int 0-7 (bits 4, 2, 1) or a 3-tuple."""
    if orientation is None:
        return (False, False, False)
    if isinstance(orientation, (int, np.integer)) and not isinstance(orientation, bool):
        o = int(orientation)
        if not 0 <= o <= 7:
            raise ValueError(f"orientation must be 0-7, got {o}")
        return (bool(o & 4), bool(o & 2), bool(o & 1))
    flags = tuple(bool(v) for v in orientation)
    if len(flags) != 3:
        raise ValueError(f"orientation tuple must have 3 entries, got {orientation!r}")
    return flags  # type: ignore[return-value]


def orient(frames: np.ndarray, orientation: OrientationSpec) -> np.ndarray:
    """View of ``frames`` transposed, then flipped up-down, then left-right, as PtyPy does."""
    transpose, flipud, fliplr = orientation_flags(orientation)
    if transpose:
        frames = np.swapaxes(frames, -1, -2)
    if flipud:
        frames = frames[..., ::-1, :]
    if fliplr:
        frames = frames[..., ::-1]
    return frames


def orient_center(center: Sequence[float], shape: Sequence[int],
                  orientation: OrientationSpec) -> tuple[float, float]:
    """The centre (y, x) after :func:`orient` on frames of ``shape`` (before orientation)."""
    transpose, flipud, fliplr = orientation_flags(orientation)
    cy, cx = float(center[0]), float(center[1])
    h, w = int(shape[-2]), int(shape[-1])
    if transpose:
        cy, cx, h, w = cx, cy, w, h
    if flipud:
        cy = h - 1 - cy
    if fliplr:
        cx = w - 1 - cx
    return (cy, cx)


def rebin(frames: np.ndarray, factor: int, *, mode: str = "mean",
          out: np.ndarray | None = None) -> np.ndarray:
    """Combine ``factor`` x ``factor`` pixel blocks by their mean (PtyPy) or their sum."""
    if factor == 1:
        if out is None:
            return frames
        np.copyto(out, frames, casting="unsafe")
        return out
    *lead, h, w = frames.shape
    if h % factor or w % factor:
        raise ValueError(f"rebin {factor} does not divide the frame shape ({h}, {w})")
    blocks = frames.reshape(*lead, h // factor, factor, w // factor, factor)
    if mode == "sum":
        acc = np.promote_types(frames.dtype, np.int64) if frames.dtype.kind in "iub" else frames.dtype
        summed = blocks.sum(axis=(-3, -1), dtype=acc)
        if out is None:
            return summed
        np.copyto(out, summed, casting="unsafe")
        return out
    if mode != "mean":
        raise ValueError(f"rebin mode must be 'mean' or 'sum', got {mode!r}")
    dtype = frames.dtype if frames.dtype.kind == "f" else np.float64
    mean = blocks.mean(axis=(-3, -1), dtype=dtype)
    if out is None:
        return mean
    np.copyto(out, mean, casting="unsafe")
    return out


def rebin_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """A rebinned pixel is valid only when every pixel of its block is (PtyPy's rule)."""
    mask = np.asarray(mask, dtype=bool)
    if factor == 1:
        return mask
    *lead, h, w = mask.shape
    if h % factor or w % factor:
        raise ValueError(f"rebin {factor} does not divide the mask shape ({h}, {w})")
    return mask.reshape(*lead, h // factor, factor, w // factor, factor).all(axis=(-3, -1))


def dark_flat(frames: np.ndarray, *, dark: np.ndarray | None, inv_flat: np.ndarray | None,
              out: np.ndarray) -> np.ndarray:
    """``max((frames - dark) * inv_flat, 0)`` into the float buffer ``out``."""
    np.copyto(out, frames, casting="unsafe")
    if dark is not None:
        out -= dark
    if inv_flat is not None:
        out *= inv_flat
    np.maximum(out, 0, out=out)
    return out


def cast_clipped(src: np.ndarray, dtype: np.dtype, *, out: np.ndarray | None = None) -> np.ndarray:
    """Cast to ``dtype``; floats going to integers are rounded and clipped to its range."""
    dtype = np.dtype(dtype)
    if out is None:
        out = np.empty(src.shape, dtype=dtype)
    if src.dtype.kind == "f" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        # Round and clip in float64: in float32 the bounds of 32-bit integers round up
        # (2**31 - 1 -> 2**31), and the cast of the "clipped" value then overflows.
        tmp = np.rint(src, dtype=np.float64)
        hi = np.float64(info.max)
        if int(hi) > info.max:  # 64-bit bounds are not exact in float64 either
            hi = np.nextafter(hi, 0)
        np.clip(tmp, info.min, hi, out=tmp)
        np.copyto(out, tmp, casting="unsafe")
    elif src.dtype.kind in "iu" and dtype.kind in "iu" and not np.can_cast(src.dtype, dtype):
        info = np.iinfo(dtype)
        np.copyto(out, np.clip(src, info.min, info.max), casting="unsafe")
    else:
        np.copyto(out, src, casting="unsafe")
    return out

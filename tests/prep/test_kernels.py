"""Kernels of ``flyprep.prep.kernels`` against plain per-pixel / per-frame references.

The references below are written from PtyPy 0.9's ``PtyScan`` semantics with explicit
Python loops; none of them calls the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flyprep.prep import kernels as k

SETTINGS = settings(max_examples=60, deadline=None)


# --------------------------------------------------------------------------- references

def ref_round(v: float) -> int:
    """Round half to even (numpy's np.round); Python's round does the same for floats."""
    return int(round(float(v)))


def ref_flags(orientation) -> tuple[bool, bool, bool]:
    if orientation is None:
        return (False, False, False)
    if isinstance(orientation, int):
        return (orientation // 4 % 2 == 1, orientation // 2 % 2 == 1, orientation % 2 == 1)
    t, u, l = orientation
    return (bool(t), bool(u), bool(l))


def ref_orient_2d(frame: np.ndarray, flags) -> np.ndarray:
    """Transpose, then flipud, then fliplr, pixel by pixel."""
    transpose, flipud, fliplr = flags
    cur = frame
    if transpose:
        h, w = cur.shape
        new = np.empty((w, h), cur.dtype)
        for i in range(w):
            for j in range(h):
                new[i, j] = cur[j, i]
        cur = new
    if flipud:
        h, w = cur.shape
        new = np.empty_like(cur)
        for i in range(h):
            for j in range(w):
                new[i, j] = cur[h - 1 - i, j]
        cur = new
    if fliplr:
        h, w = cur.shape
        new = np.empty_like(cur)
        for i in range(h):
            for j in range(w):
                new[i, j] = cur[i, w - 1 - j]
        cur = new
    return cur


def ref_crop_pad_2d(frame: np.ndarray, side: int, center) -> tuple[np.ndarray, tuple[int, int]]:
    """ROI pixel o <- raw pixel o - low, zero outside; returns (roi, new centre)."""
    h, w = frame.shape
    c = (ref_round(center[0]), ref_round(center[1]))
    low = (side // 2 - c[0], side // 2 - c[1])
    roi = np.zeros((side, side), frame.dtype)
    for i in range(side):
        for j in range(side):
            y, x = i - low[0], j - low[1]
            if 0 <= y < h and 0 <= x < w:
                roi[i, j] = frame[y, x]
    return roi, (c[0] + low[0], c[1] + low[1])


def ref_roi_misses(shape, side, center) -> bool:
    for axis in range(2):
        c = ref_round(center[axis])
        low = side // 2 - c
        # ROI rows i in [0, side) map to raw rows i - low; any inside [0, shape)?
        if not any(0 <= i - low < shape[axis] for i in range(side)):
            return True
    return False


def ref_rebin_2d(frame: np.ndarray, r: int, mode: str) -> np.ndarray:
    """Block sum with exact Python numbers; the mean divides by r*r."""
    h, w = frame.shape
    out = np.empty((h // r, w // r), dtype=object)
    for i in range(h // r):
        for j in range(w // r):
            total = 0
            for a in range(r):
                for b in range(r):
                    v = frame[i * r + a, j * r + b]
                    total += int(v) if frame.dtype.kind in "iub" else float(v)
            out[i, j] = total if mode == "sum" else total / (r * r)
    return out


def ref_mass_center(frames: np.ndarray, valid=None) -> tuple[float, float]:
    cys, cxs = [], []
    for f in range(frames.shape[0]):
        total = sy = sx = 0.0
        for y in range(frames.shape[1]):
            for x in range(frames.shape[2]):
                ok = True
                if valid is not None:
                    ok = bool(valid[f, y, x] if valid.ndim == 3 else valid[y, x])
                if ok:
                    v = float(frames[f, y, x])
                    total += v
                    sy += v * y
                    sx += v * x
        if total > 0:
            cys.append(sy / total)
            cxs.append(sx / total)
    return (sum(cys) / len(cys), sum(cxs) / len(cxs))


# --------------------------------------------------------------------------- strategies

ORIENTATIONS = st.one_of(
    st.integers(0, 7),
    st.tuples(st.booleans(), st.booleans(), st.booleans()),
    st.lists(st.booleans(), min_size=3, max_size=3),
)


@st.composite
def frames_2d(draw, max_side=12, dtype=np.int32):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    return draw(hnp.arrays(dtype, (h, w), elements=st.integers(-1000, 1000)))


# --------------------------------------------------------------------------- centres

@pytest.mark.parametrize("shape", [(7, 10), (8, 8), (5, 6), (1, 3)])
def test_named_centres(shape):
    h, w = shape
    assert tuple(k.center_from_spec("fftshift", shape)) == (h // 2, w // 2)
    assert tuple(k.center_from_spec("geometric", shape)) == (h / 2 - 0.5, w / 2 - 0.5)
    assert tuple(k.center_from_spec("fft", shape)) == (0.0, 0.0)
    # leading (frame) axes are ignored
    assert tuple(k.center_from_spec("fftshift", (3, *shape))) == (h // 2, w // 2)


def test_explicit_centre_and_errors():
    assert tuple(k.center_from_spec((3.5, 2), (10, 10))) == (3.5, 2.0)
    assert tuple(k.center_from_spec([1, 7.25], (10, 10))) == (1.0, 7.25)
    with pytest.raises(ValueError, match="unknown centre"):
        k.center_from_spec("middle", (10, 10))
    with pytest.raises(ValueError, match=r"\(y, x\)"):
        k.center_from_spec((1, 2, 3), (10, 10))


# --------------------------------------------------------------------------- mass centre

@SETTINGS
@given(
    frames=st.integers(1, 4).flatmap(lambda n: st.tuples(st.integers(1, 9), st.integers(1, 9)).flatmap(
        lambda hw: hnp.arrays(np.float64, (n, *hw), elements=st.integers(0, 50).map(float)))),
    mask_kind=st.sampled_from(["none", "2d", "3d"]),
    data=st.data(),
)
def test_mass_center_matches_per_frame_loop(frames, mask_kind, data):
    n, h, w = frames.shape
    valid = None
    if mask_kind == "2d":
        valid = data.draw(hnp.arrays(bool, (h, w)))
    elif mask_kind == "3d":
        valid = data.draw(hnp.arrays(bool, (n, h, w)))
    eff = frames if valid is None else frames * np.broadcast_to(valid, frames.shape)
    if not (eff.reshape(n, -1).sum(axis=1) > 0).any():
        with pytest.raises(ValueError, match="empty or masked"):
            k.mass_center(frames, valid)
        return
    got = k.mass_center(frames, valid)
    np.testing.assert_allclose(got, ref_mass_center(frames, valid), rtol=1e-12, atol=1e-12)


def test_mass_center_skips_empty_frames_and_accepts_2d():
    frames = np.zeros((3, 5, 7), np.uint16)
    frames[0, 1, 2] = 10
    frames[2, 4, 6] = 5
    frames[2, 0, 0] = 5
    # frame 1 is empty and must not pull the mean towards (0, 0)
    got = k.mass_center(frames)
    np.testing.assert_allclose(got, [(1 + 2) / 2, (2 + 3) / 2])
    np.testing.assert_allclose(k.mass_center(frames[0]), [1, 2])
    # a masked pixel is ignored
    valid = np.ones((5, 7), bool)
    valid[0, 0] = False
    np.testing.assert_allclose(k.mass_center(frames, valid), [(1 + 4) / 2, (2 + 6) / 2])
    # the input is not modified
    assert frames[2, 0, 0] == 5


def test_mass_center_all_empty_raises():
    with pytest.raises(ValueError, match="centre of mass"):
        k.mass_center(np.zeros((2, 4, 4)))
    frames = np.ones((2, 4, 4))
    with pytest.raises(ValueError):
        k.mass_center(frames, np.zeros((4, 4), bool))


# --------------------------------------------------------------------------- crop / pad

@st.composite
def crop_cases(draw):
    h = draw(st.integers(1, 14))
    w = draw(st.integers(1, 14))
    side = draw(st.integers(1, 20))
    center = draw(st.one_of(
        st.sampled_from(k.NAMED_CENTERS),
        st.tuples(st.integers(-3, h + 2), st.integers(-3, w + 2)),
        st.tuples(st.integers(-6, 2 * h + 4).map(lambda v: v / 2),
                  st.integers(-6, 2 * w + 4).map(lambda v: v / 2)),
    ))
    n = draw(st.integers(1, 3))
    frames = draw(hnp.arrays(np.int32, (n, h, w), elements=st.integers(1, 10_000)))
    return frames, side, center


@SETTINGS
@given(case=crop_cases())
def test_crop_pad_matches_pixel_loop(case):
    frames, side, center = case
    shape = frames.shape[1:]
    cen = k.center_from_spec(center, shape) if isinstance(center, str) else center
    if ref_roi_misses(shape, side, cen):
        with pytest.raises(ValueError, match="misses"):
            k.plan_crop_pad(shape, side, cen)
        return
    plan = k.plan_crop_pad(shape, side, cen)
    got = k.crop_pad(frames, plan)
    assert got.shape == (frames.shape[0], side, side)
    assert got.dtype == frames.dtype
    for f in range(frames.shape[0]):
        ref, ref_center = ref_crop_pad_2d(frames[f], side, cen)
        np.testing.assert_array_equal(got[f], ref)
    assert plan.center == ref_center == (side // 2, side // 2)
    # pads <=> some ROI pixel lies outside the raw frame (raw data are >= 1 everywhere)
    assert plan.pads == bool((ref == 0).any())
    # a reused output buffer full of garbage gets no stale pixels
    out = np.full_like(got, 12345)
    np.testing.assert_array_equal(k.crop_pad(frames, plan, out=out), got)


def test_crop_pad_rounds_half_to_even():
    frame = np.arange(100, dtype=np.int32).reshape(10, 10)
    # 2.5 -> 2 and 3.5 -> 4 (numpy rounding), side 3 keeps rows c-1..c+1
    plan = k.plan_crop_pad(frame.shape, 3, (2.5, 3.5))
    roi = k.crop_pad(frame[None], plan)[0]
    np.testing.assert_array_equal(roi, frame[1:4, 3:6])
    assert not plan.pads


def test_crop_pad_explicit_pad_example():
    frame = np.arange(1, 13, dtype=np.uint16).reshape(3, 4)
    plan = k.plan_crop_pad(frame.shape, 6, k.center_from_spec("fft", frame.shape))
    # centre (0, 0): the ROI starts 3 pixels before the frame
    roi = k.crop_pad(frame[None], plan)[0]
    expected = np.zeros((6, 6), np.uint16)
    expected[3:6, 3:6] = frame[0:3, 0:3]
    np.testing.assert_array_equal(roi, expected)
    assert plan.pads and plan.center == (3.0, 3.0)


@pytest.mark.parametrize("center", [(-5, 3), (3, 20), (-2.6, -2.6), (12, 12)])
def test_crop_pad_roi_outside_raises(center):
    with pytest.raises(ValueError, match="misses the"):
        k.plan_crop_pad((8, 9), 4, center)


# --------------------------------------------------------------------------- orientation

@pytest.mark.parametrize("o", range(8))
def test_orientation_flags_int_bits(o):
    assert k.orientation_flags(o) == ((o & 4) != 0, (o & 2) != 0, (o & 1) != 0)
    assert k.orientation_flags(np.int64(o)) == k.orientation_flags(o)


def test_orientation_flags_forms_and_errors():
    assert k.orientation_flags(None) == (False, False, False)
    assert k.orientation_flags(4) == (True, False, False)
    assert k.orientation_flags(2) == (False, True, False)
    assert k.orientation_flags(1) == (False, False, True)
    assert k.orientation_flags((True, False, True)) == (True, False, True)
    assert k.orientation_flags([0, 1, 0]) == (False, True, False)
    for bad in (8, -1):
        with pytest.raises(ValueError, match="0-7"):
            k.orientation_flags(bad)
    with pytest.raises(ValueError, match="3 entries"):
        k.orientation_flags((True, False))


@SETTINGS
@given(frame=frames_2d(), orientation=ORIENTATIONS, n=st.integers(1, 3))
def test_orient_matches_pixel_loop(frame, orientation, n):
    frames = np.stack([frame + 7 * i for i in range(n)])
    got = k.orient(frames, orientation)
    flags = ref_flags(orientation)
    for f in range(n):
        np.testing.assert_array_equal(got[f], ref_orient_2d(frames[f], flags))


@SETTINGS
@given(h=st.integers(1, 9), w=st.integers(1, 9), orientation=ORIENTATIONS, data=st.data())
def test_orient_center_follows_a_marker_pixel(h, w, orientation, data):
    cy = data.draw(st.integers(0, h - 1))
    cx = data.draw(st.integers(0, w - 1))
    frame = np.zeros((h, w), np.int32)
    frame[cy, cx] = 1
    moved = ref_orient_2d(frame, ref_flags(orientation))
    iy, ix = np.argwhere(moved == 1)[0]
    assert k.orient_center((cy, cx), (h, w), orientation) == (iy, ix)


@SETTINGS
@given(h=st.integers(1, 9), w=st.integers(1, 9), orientation=ORIENTATIONS,
       cy=st.integers(-4, 40).map(lambda v: v / 4), cx=st.integers(-4, 40).map(lambda v: v / 4))
def test_orient_center_fractional_formula(h, w, orientation, cy, cx):
    transpose, flipud, fliplr = ref_flags(orientation)
    ey, ex, eh, ew = (cx, cy, w, h) if transpose else (cy, cx, h, w)
    if flipud:
        ey = eh - 1 - ey
    if fliplr:
        ex = ew - 1 - ex
    assert k.orient_center((cy, cx), (h, w), orientation) == (ey, ex)
    # the geometric centre stays the geometric centre of the oriented frame
    gy, gx = k.orient_center((h / 2 - 0.5, w / 2 - 0.5), (h, w), orientation)
    oh, ow = (w, h) if transpose else (h, w)
    assert (gy, gx) == (oh / 2 - 0.5, ow / 2 - 0.5)


# --------------------------------------------------------------------------- rebin

@st.composite
def rebin_cases(draw):
    r = draw(st.integers(1, 5))
    h = r * draw(st.integers(1, 4))
    w = r * draw(st.integers(1, 4))
    n = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.uint16, np.int32, np.float32, np.float64]))
    if np.dtype(dtype).kind == "u":
        elements = st.integers(0, 65535)
    elif np.dtype(dtype).kind == "i":
        elements = st.integers(-2**31, 2**31 - 1)
    else:  # multiples of 1/4: block sums are exact in float32
        elements = st.integers(-40000, 40000).map(lambda v: v / 4)
    frames = draw(hnp.arrays(dtype, (n, h, w), elements=elements))
    return frames, r


@SETTINGS
@given(case=rebin_cases(), mode=st.sampled_from(["mean", "sum"]))
def test_rebin_matches_block_loop(case, mode):
    frames, r = case
    got = k.rebin(frames, r, mode=mode)
    n, h, w = frames.shape
    assert got.shape == (n, h // r, w // r)
    if r == 1:
        np.testing.assert_array_equal(got, frames)
        return
    if mode == "mean":
        # PtyPy: the block mean; integer data become float (float64), floats keep theirs
        assert got.dtype == (frames.dtype if frames.dtype.kind == "f" else np.float64)
    else:
        assert got.dtype == (np.int64 if frames.dtype.kind in "iu" else frames.dtype)
    for f in range(n):
        ref = ref_rebin_2d(frames[f], r, mode)
        for i in range(h // r):
            for j in range(w // r):
                expected = ref[i, j]
                if got.dtype.kind == "f":
                    expected = got.dtype.type(expected)  # one rounding of the exact value
                assert got[f, i, j] == expected, (f, i, j, got[f, i, j], ref[i, j])


@SETTINGS
@given(case=rebin_cases(), mode=st.sampled_from(["mean", "sum"]),
       out_dtype=st.sampled_from([np.float32, np.float64, np.int64]))
def test_rebin_into_out_buffer(case, mode, out_dtype):
    frames, r = case
    assume(not (np.dtype(out_dtype).kind == "i" and (mode == "mean" or frames.dtype.kind == "f")))
    n, h, w = frames.shape
    out = np.full((n, h // r, w // r), -99, out_dtype)
    res = k.rebin(frames, r, mode=mode, out=out)
    assert res is out
    expected = k.rebin(frames, r, mode=mode).astype(out_dtype)
    np.testing.assert_array_equal(out, expected)
    # the sum must not overflow the raw dtype (uint16 blocks of 65535 summed)
    if mode == "sum" and frames.dtype == np.uint16 and r > 1:
        big = np.full((1, r, r), 65535, np.uint16)
        assert k.rebin(big, r, mode="sum")[0, 0, 0] == 65535 * r * r


def test_rebin_errors():
    frames = np.zeros((2, 6, 6))
    with pytest.raises(ValueError, match="does not divide"):
        k.rebin(frames, 4)
    with pytest.raises(ValueError, match="does not divide"):
        k.rebin(np.zeros((1, 6, 9)), 2, mode="sum")
    with pytest.raises(ValueError, match="'mean' or 'sum'"):
        k.rebin(frames, 2, mode="median")
    with pytest.raises(ValueError, match="does not divide"):
        k.rebin_mask(np.ones((4, 6), bool), 4)


@SETTINGS
@given(r=st.integers(1, 4), data=st.data())
def test_rebin_mask_requires_whole_block(r, data):
    h = r * data.draw(st.integers(1, 4))
    w = r * data.draw(st.integers(1, 4))
    lead = data.draw(st.sampled_from([(), (2,)]))
    mask = data.draw(hnp.arrays(bool, (*lead, h, w)))
    got = k.rebin_mask(mask, r)
    assert got.dtype == bool and got.shape == (*lead, h // r, w // r)
    flat = mask.reshape(-1, h, w)
    gflat = got.reshape(-1, h // r, w // r)
    for f in range(flat.shape[0]):
        for i in range(h // r):
            for j in range(w // r):
                ok = True
                for a in range(r):
                    for b in range(r):
                        ok = ok and bool(flat[f, i * r + a, j * r + b])
                assert gflat[f, i, j] == ok
    # nonzero integers count as valid
    np.testing.assert_array_equal(k.rebin_mask(mask.astype(np.uint8) * 3, r), got)


# --------------------------------------------------------------------------- dark / flat

@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6)),
    use_dark=st.booleans(), use_flat=st.booleans(), data=st.data(),
)
def test_dark_flat_matches_pixel_loop(shape, use_dark, use_flat, data):
    n, h, w = shape
    raw = data.draw(hnp.arrays(np.uint16, shape, elements=st.integers(0, 65535)))
    dark = (data.draw(hnp.arrays(np.float32, (h, w), elements=st.integers(0, 3000).map(float)))
            if use_dark else None)
    flat = (data.draw(hnp.arrays(np.float64, (h, w),
                                 elements=st.sampled_from([-1.0, 0.0, 0.25, 0.5, 1.0, 2.0, 8.0])))
            if use_flat else None)
    inv_flat = None
    if flat is not None:
        inv_flat = np.zeros((h, w), np.float32)
        for y in range(h):
            for x in range(w):
                inv_flat[y, x] = 1.0 / flat[y, x] if flat[y, x] > 0 else 0.0
    out = np.full(shape, np.nan, np.float32)
    res = k.dark_flat(raw, dark=dark, inv_flat=inv_flat, out=out)
    assert res is out
    for f in range(n):
        for y in range(h):
            for x in range(w):
                v = float(raw[f, y, x])
                if dark is not None:
                    v -= float(dark[y, x])
                if flat is not None:
                    v = v / flat[y, x] if flat[y, x] > 0 else 0.0
                assert out[f, y, x] == np.float32(max(v, 0.0))


# --------------------------------------------------------------------------- casting

def ref_cast(value, dtype) -> float | int:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return dtype.type(value)
    info = np.iinfo(dtype)
    v = round(value) if isinstance(value, float) else int(value)  # half to even
    return min(max(v, int(info.min)), int(info.max))


INT_TARGETS = [np.uint16, np.int32, np.uint32]


@SETTINGS
@given(
    src=hnp.arrays(np.float32, st.integers(1, 20),
                   elements=st.one_of(st.integers(-2**34, 2**34).map(float),
                                      st.integers(-400, 400).map(lambda v: v / 4),
                                      st.sampled_from([65535.5, 65536.0, 2.0**31, 2.0**31 + 256,
                                                       2.0**32, 3e9, 5e9, -1e10, -0.5, 0.5]))),
    dtype=st.sampled_from(INT_TARGETS),
)
def test_cast_clipped_float_to_int_rounds_and_clips(src, dtype):
    got = k.cast_clipped(src, dtype)
    assert got.dtype == np.dtype(dtype)
    for i in range(src.size):
        assert int(got[i]) == ref_cast(float(src[i]), dtype), (float(src[i]), int(got[i]))


@pytest.mark.parametrize("dtype", [np.int32, np.uint32])
def test_cast_clipped_float32_at_the_int_limits(dtype):
    info = np.iinfo(dtype)
    src = np.array([3e9, 5e9, 2.0**31, 2.0**32, -1e10], np.float32)
    got = k.cast_clipped(src, dtype)
    expected = [min(max(int(v), int(info.min)), int(info.max)) for v in src.tolist()]
    assert got.tolist() == expected


@SETTINGS
@given(
    src=st.one_of(
        hnp.arrays(np.int64, st.integers(1, 20), elements=st.integers(-2**40, 2**40)),
        hnp.arrays(np.int32, st.integers(1, 20)),
        hnp.arrays(np.uint32, st.integers(1, 20)),
        hnp.arrays(np.uint16, st.integers(1, 20)),
    ),
    dtype=st.sampled_from(INT_TARGETS + [np.float32, np.float64]),
)
def test_cast_clipped_int_sources(src, dtype):
    out = np.empty(src.shape, dtype)
    got = k.cast_clipped(src, dtype, out=out)
    assert got is out
    for i in range(src.size):
        expected = ref_cast(int(src[i]), dtype)
        if np.dtype(dtype).kind == "f":
            assert got[i] == expected
        else:
            assert int(got[i]) == expected

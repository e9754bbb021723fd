"""``flyprep.prep.plan.Preparation`` against a plain per-frame, per-pixel reference.

The reference follows PtyPy 0.9's ``PtyScan``: dark/flat correction of the raw frame (in
float32), symmetric crop/pad around the rounded centre, orientation (transpose, flipud,
fliplr), rebin (block mean, or sum), weights from padding / bad pixels / flat <= 0 /
saturation, absent frames zeroed. It never calls the code under test.

Values are drawn so that every intermediate result is exact in float32 (dyadic flats,
half-integer floats, bounded magnitudes); the comparison is then bit-exact.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flyprep.prep import Calibration, Preparation, mass_center
from flyprep.sources.rows import FrameRows

SETTINGS = settings(max_examples=150, deadline=None)

NAMED = ("fftshift", "geometric", "fft")
EXPLICIT_OUT = ("int32", "uint32", "uint16", "float32", "float64")


# --------------------------------------------------------------------------- reference

def ref_named_center(name: str, shape) -> tuple[float, float]:
    h, w = shape
    if name == "fftshift":
        return (float(h // 2), float(w // 2))
    if name == "geometric":
        return (h / 2 - 0.5, w / 2 - 0.5)
    assert name == "fft"
    return (0.0, 0.0)


def ref_flags(orientation) -> tuple[bool, bool, bool]:
    if orientation is None:
        return (False, False, False)
    if isinstance(orientation, int):
        return (orientation in (4, 5, 6, 7), orientation in (2, 3, 6, 7), orientation in (1, 3, 5, 7))
    t, u, l = orientation
    return (bool(t), bool(u), bool(l))


def ref_orient(img: np.ndarray, flags) -> np.ndarray:
    """Square ``img``: transpose, then flipud, then fliplr, pixel by pixel."""
    transpose, flipud, fliplr = flags
    s = img.shape[0]
    cur = img
    for step, on in (("t", transpose), ("u", flipud), ("l", fliplr)):
        if not on:
            continue
        new = np.empty_like(cur)
        for i in range(s):
            for j in range(s):
                if step == "t":
                    new[i, j] = cur[j, i]
                elif step == "u":
                    new[i, j] = cur[s - 1 - i, j]
                else:
                    new[i, j] = cur[i, s - 1 - j]
        cur = new
    return cur


def ref_auto_dtype(raw_dtype, *, rebin, mode, corrections) -> np.dtype:
    """'auto': keep the raw dtype unless the values change (PtyPy makes them float)."""
    raw_dtype = np.dtype(raw_dtype)
    if corrections or (rebin > 1 and mode == "mean") or raw_dtype.kind == "f":
        return np.dtype(np.float32)
    if rebin > 1:  # summed integer counts get a wider integer
        return {np.dtype(np.uint16): np.dtype(np.int32),
                np.dtype(np.int32): np.dtype(np.int32)}[raw_dtype]
    return raw_dtype


def ref_store(value, dtype: np.dtype, work_float32: bool):
    """Final value of one stored pixel: floats rounded half-to-even and clipped for ints."""
    if dtype.kind == "f":
        return dtype.type(value)
    if isinstance(value, float):
        if work_float32:
            value = float(np.float32(value))
        value = round(value)  # Python rounds half to even, as np.rint
    info = np.iinfo(dtype)
    return min(max(int(value), int(info.min)), int(info.max))


def ref_misses(shape, side, center) -> bool:
    for axis in range(2):
        low = side // 2 - int(round(center[axis]))
        if not any(0 <= i - low < shape[axis] for i in range(side)):
            return True
    return False


def ref_prepare(raw, *, side, center, orientation=None, rebin=1, mode="mean",
                saturation=None, dark=None, flat=None, bad=None, out_dtype="auto",
                present=None):
    """Per-frame PtyPy preparation; returns (data, weights, dtype, stored_center)."""
    n, h, w = raw.shape
    flags = ref_flags(orientation)
    corrections = dark is not None or flat is not None
    dtype = (ref_auto_dtype(raw.dtype, rebin=rebin, mode=mode, corrections=corrections)
             if out_dtype == "auto" else np.dtype(out_dtype))
    work_float32 = dtype != np.float64
    c = (int(round(center[0])), int(round(center[1])))
    low = (side // 2 - c[0], side // 2 - c[1])
    s = side // rebin
    data = np.zeros((n, s, s), dtype)
    weights = np.zeros((n, s, s), bool)
    for f in range(n):
        if present is not None and not present[f]:
            continue
        roi = np.zeros((side, side), dtype=object)
        roi[:] = 0
        valid = np.zeros((side, side), bool)
        sat = np.zeros((side, side), bool)
        for i in range(side):
            for j in range(side):
                y, x = i - low[0], j - low[1]
                if not (0 <= y < h and 0 <= x < w):
                    continue  # zero fill, weight 0
                v = raw[f, y, x]
                pv = int(v) if raw.dtype.kind in "iu" else float(v)
                if corrections:
                    fv = np.float32(v)
                    if dark is not None:
                        fv = np.float32(fv - np.float32(dark[y, x]))
                    if flat is not None:
                        fv = np.float32(fv / np.float32(flat[y, x])) if flat[y, x] > 0 else np.float32(0)
                    pv = float(max(fv, np.float32(0)))
                roi[i, j] = pv
                valid[i, j] = (bad is None or not bad[y, x]) and (flat is None or flat[y, x] > 0)
                sat[i, j] = saturation is not None and v >= saturation
        roi, valid, sat = ref_orient(roi, flags), ref_orient(valid, flags), ref_orient(sat, flags)
        for bi in range(s):
            for bj in range(s):
                total = 0
                ok = True
                for a in range(rebin):
                    for b in range(rebin):
                        y, x = bi * rebin + a, bj * rebin + b
                        total += roi[y, x]
                        ok = ok and valid[y, x] and not sat[y, x]
                value = total / (rebin * rebin) if (rebin > 1 and mode == "mean") else total
                data[f, bi, bj] = ref_store(value, dtype, work_float32)
                weights[f, bi, bj] = ok
    cy, cx = side // 2, side // 2
    if flags[0]:
        cy, cx = cx, cy
    if flags[1]:
        cy = side - 1 - cy
    if flags[2]:
        cx = side - 1 - cx
    return data, weights, dtype, (cy / rebin, cx / rebin)


# --------------------------------------------------------------------------- strategies

ORIENTATIONS = st.one_of(
    st.none(),
    st.integers(0, 7),
    st.tuples(st.booleans(), st.booleans(), st.booleans()),
    st.lists(st.booleans(), min_size=3, max_size=3),
)


def raw_elements(dtype):
    if dtype == np.uint16:
        return st.one_of(st.integers(0, 65535), st.integers(0, 300))
    if dtype == np.int32:
        return st.integers(-1000, 100_000)
    return st.integers(-200, 10_000).map(lambda v: v / 2)  # float32, exact halves


@st.composite
def centres(draw, shape):
    h, w = shape
    return draw(st.one_of(
        st.sampled_from(NAMED),
        st.tuples(st.integers(-1, h), st.integers(-1, w)),  # integer, incl. just outside
        st.tuples(st.integers(-2, 2 * h).map(lambda v: v / 2),
                  st.integers(-2, 2 * w).map(lambda v: v / 2)),  # half-integers
        st.tuples(st.sampled_from([0, 0.5, -0.5, h - 1, h - 0.5, h - 1.5]),
                  st.sampled_from([0, 0.5, -0.5, w - 1, w - 0.5, w - 1.5])),  # near edges
        st.tuples(st.integers(-30, h + 30), st.integers(-30, w + 30)),  # possibly outside
    ))


@st.composite
def prep_cases(draw):
    dtype = np.dtype(draw(st.sampled_from([np.uint16, np.int32, np.float32])))
    h = draw(st.integers(1, 20))
    w = draw(st.integers(1, 20))
    rebin = draw(st.sampled_from([1, 1, 2, 3, 4]))
    side = rebin * draw(st.integers(1, 24 // rebin))
    n = draw(st.integers(1, 4))
    raw = draw(hnp.arrays(dtype, (n, h, w), elements=raw_elements(dtype)))
    kw = dict(
        side=side,
        center=draw(centres((h, w))),
        orientation=draw(ORIENTATIONS),
        rebin=rebin,
        mode=draw(st.sampled_from(["mean", "sum"])),
        out_dtype=draw(st.one_of(st.just("auto"), st.sampled_from(EXPLICIT_OUT))),
        saturation=draw(st.one_of(st.none(), st.sampled_from(raw.ravel().tolist()),
                                  st.integers(0, 70_000), st.floats(0, 70_000))),
        dark=draw(st.none() | hnp.arrays(np.float32, (h, w), elements=st.integers(0, 300).map(float))),
        flat=draw(st.none() | hnp.arrays(np.float64, (h, w),
                                         elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0]))),
        bad=draw(st.none() | hnp.arrays(st.sampled_from([np.bool_, np.uint8]), (h, w))),
        present=draw(st.none() | st.lists(st.booleans(), min_size=n, max_size=n)),
    )
    max_frames = n + draw(st.integers(0, 2))
    return raw, kw, max_frames


def make_prep(raw_shape, raw_dtype, kw, max_frames=8) -> Preparation:
    center = kw["center"]
    if isinstance(center, str):
        center = ref_named_center(center, raw_shape)
    return Preparation(
        raw_shape=raw_shape, raw_dtype=raw_dtype, side=kw["side"], center=center,
        orientation=kw.get("orientation"), rebin=kw.get("rebin", 1),
        rebin_mode=kw.get("mode", "mean"), saturation=kw.get("saturation"),
        out_dtype=kw.get("out_dtype", "auto"),
        calibration=Calibration(dark=kw.get("dark"), flat=kw.get("flat"), bad_pixels=kw.get("bad")),
        max_frames=max_frames)


def run_ref(raw, kw):
    kw = dict(kw)
    if isinstance(kw["center"], str):
        kw["center"] = ref_named_center(kw["center"], raw.shape[1:])
    return ref_prepare(raw, **kw)


# --------------------------------------------------------------------------- the property

@SETTINGS
@given(case=prep_cases(), use_out=st.booleans())
def test_apply_matches_per_frame_reference(case, use_out):
    raw, kw, max_frames = case
    center = kw["center"]
    resolved = ref_named_center(center, raw.shape[1:]) if isinstance(center, str) else center
    if ref_misses(raw.shape[1:], kw["side"], resolved):
        event("ROI misses the frame")
        with pytest.raises(ValueError, match="misses"):
            make_prep(raw.shape[1:], raw.dtype, kw, max_frames)
        return
    prep = make_prep(raw.shape[1:], raw.dtype, kw, max_frames)
    event("pads" if prep.crop.pads else "crops only")
    ref_data, ref_weights, ref_dtype, ref_center = run_ref(raw, kw)

    s = kw["side"] // kw["rebin"]
    assert prep.stored_shape == (s, s)
    assert prep.stored_center == ref_center
    assert prep.out_dtype == ref_dtype

    raw_before = raw.copy()
    present = None if kw["present"] is None else np.array(kw["present"])
    out = None
    if use_out:  # buffers full of garbage from "earlier chunks"
        out = prep.allocate()
        out[0][...] = 77
        out[1][...] = True
    data, weights = prep.apply(raw, present=present, out=out)
    np.testing.assert_array_equal(raw, raw_before)  # the input is left alone
    assert data.dtype == ref_dtype
    assert weights.dtype == bool
    assert data.shape == weights.shape == (raw.shape[0], s, s)
    if use_out:
        assert np.shares_memory(data, out[0]) and np.shares_memory(weights, out[1])
    np.testing.assert_array_equal(data, ref_data)
    np.testing.assert_array_equal(weights, ref_weights)


@SETTINGS
@given(case=prep_cases())
def test_frames_read_only_for_the_roi_rows_prepare_the_same(case):
    """A reader that read only the rows the preparation uses (:class:`FrameRows`) gives
    what the whole frames give; frames may also be absent (None)."""
    raw, kw, max_frames = case
    center = kw["center"]
    resolved = ref_named_center(center, raw.shape[1:]) if isinstance(center, str) else center
    if ref_misses(raw.shape[1:], kw["side"], resolved):
        return
    prep = make_prep(raw.shape[1:], raw.dtype, kw, max_frames)
    top, stop = prep.crop.src[0].start, prep.crop.src[0].stop
    present = [True] * raw.shape[0] if kw["present"] is None else kw["present"]
    banded = [FrameRows(f[top:stop].copy(), top, f.shape) if p else None
              for f, p in zip(raw, present)]
    ref_data, ref_weights, _, _ = run_ref(raw, {**kw, "present": present})
    data, weights = prep.apply(banded)
    np.testing.assert_array_equal(data, ref_data)
    np.testing.assert_array_equal(weights, ref_weights)


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(2, 12), w=st.integers(2, 12), rebin=st.sampled_from([1, 2]),
    orientation=st.integers(0, 7), out_dtype=st.sampled_from(["float32", "int32", "auto"]),
    data=st.data(),
)
def test_apply_with_generic_flat_and_dark(h, w, rebin, orientation, out_dtype, data):
    """Non-dyadic flats: equal to the float32 reference up to rounding."""
    side = rebin * data.draw(st.integers(1, 8))
    raw = data.draw(hnp.arrays(np.uint16, (3, h, w), elements=st.integers(0, 60000)))
    dark = data.draw(hnp.arrays(np.float32, (h, w), elements=st.floats(0, 500, width=32)))
    flat = data.draw(hnp.arrays(np.float32, (h, w),
                                elements=st.one_of(st.floats(0.0625, 4, width=32), st.just(0.0))))
    kw = dict(side=side, center="geometric", orientation=orientation, rebin=rebin,
              mode="mean", out_dtype=out_dtype, saturation=None, dark=dark, flat=flat,
              bad=None, present=None)
    got, got_w = make_prep((h, w), np.uint16, kw).apply(raw)
    ref, ref_w, ref_dtype, _ = run_ref(raw, kw)
    assert got.dtype == ref_dtype
    np.testing.assert_array_equal(got_w, ref_w)
    if ref_dtype.kind == "f":
        np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-6)
    else:  # rounding may flip on a tie that float32 noise moved
        assert np.abs(got.astype(np.int64) - ref.astype(np.int64)).max(initial=0) <= 1


# --------------------------------------------------------------------------- geometry

@pytest.mark.parametrize("side,rebin", [(6, 1), (7, 1), (8, 1), (6, 2), (8, 2), (12, 2),
                                         (6, 3), (12, 3), (8, 4), (12, 4)])
@pytest.mark.parametrize("orientation", list(range(8)) + [(True, True, False), (False, False, True)])
def test_stored_center_and_shape(side, orientation, rebin):
    prep = Preparation(raw_shape=(11, 9), raw_dtype=np.uint16, side=side, center=(4.6, 3.5),
                       orientation=orientation, rebin=rebin)
    t, u, l = ref_flags(orientation)
    cy = cx = side // 2  # centre after the crop, whatever the raw centre was
    if u:
        cy = side - 1 - cy
    if l:
        cx = side - 1 - cx
    assert prep.stored_center == (cy / rebin, cx / rebin)
    assert prep.stored_shape == (side // rebin, side // rebin)
    assert prep.stored_side == side // rebin


def test_stored_center_explicit_values():
    # side 8: crop centre (4, 4); flipud -> (3, 4); rebin 2 -> (1.5, 2.0)
    prep = Preparation(raw_shape=(20, 30), raw_dtype=np.uint16, side=8, center=(10, 15),
                       orientation=2, rebin=2)
    assert prep.stored_center == (1.5, 2.0)
    assert prep.stored_shape == (4, 4)
    # the raw centre's fractional part is lost, as in PtyPy
    prep = Preparation(raw_shape=(20, 30), raw_dtype=np.uint16, side=7, center=(10.4, 3.2))
    assert prep.stored_center == (3.0, 3.0)


def test_centre_pixel_lands_on_stored_centre():
    """A single bright raw pixel at the rounded centre ends up at the stored centre."""
    raw = np.zeros((1, 13, 10), np.uint16)
    raw[0, 4, 7] = 1000
    for orientation in range(8):
        prep = Preparation(raw_shape=(13, 10), raw_dtype=np.uint16, side=6,
                           center=(4.4, 6.5), orientation=orientation)  # rounds to (4, 6)
        data, _ = prep.apply(raw)
        # the marker sits one column right of the centre (7 vs 6) before orientation
        t, u, l = ref_flags(orientation)
        my, mx = 3, 4
        if t:
            my, mx = mx, my
        if u:
            my = 5 - my
        if l:
            mx = 5 - mx
        assert np.argwhere(data[0] == 1000).tolist() == [[my, mx]]


def test_auto_centre_puts_the_blob_in_the_middle():
    yy, xx = np.mgrid[0:21, 0:17]
    blob = (1000 * np.exp(-((yy - 8) ** 2 + (xx - 11) ** 2) / 4.0)).astype(np.uint16)
    raw = np.stack([blob, np.roll(blob, 1, axis=0), np.roll(blob, -1, axis=0)])
    center = mass_center(raw)
    np.testing.assert_allclose(center, [8, 11], atol=1e-6)
    prep = Preparation(raw_shape=raw.shape[1:], raw_dtype=raw.dtype, side=8, center=center)
    data, _ = prep.apply(raw)
    assert np.argwhere(data[0] == data[0].max()).tolist() == [[4, 4]]


# --------------------------------------------------------------------------- buffers

def _kw(**over):
    kw = dict(side=10, center=(1.0, 2.0), orientation=None, rebin=1, mode="mean",
              out_dtype="auto", saturation=None, dark=None, flat=None, bad=None, present=None)
    kw.update(over)
    return kw


@pytest.mark.parametrize("over", [
    dict(),                                      # direct path, padding
    dict(orientation=5, saturation=900),         # direct path + saturation buffer
    dict(rebin=2, mode="sum"),                   # integer work buffer
    dict(rebin=2, orientation=(True, True, False), saturation=500),  # float work buffer
    dict(dark=np.full((6, 7), 3, np.float32)),   # corrections
    dict(out_dtype="int32", orientation=3),      # widened direct path
])
def test_out_buffers_reused_across_calls(over):
    rng = np.random.default_rng(1)
    kw = _kw(**over)
    prep = make_prep((6, 7), np.uint16, kw, max_frames=5)
    assert prep.crop.pads
    out = prep.allocate()
    first = rng.integers(500, 1000, (5, 6, 7)).astype(np.uint16)
    second = rng.integers(0, 1000, (3, 6, 7)).astype(np.uint16)
    third = rng.integers(0, 1000, (4, 6, 7)).astype(np.uint16)
    prep.apply(first, out=out)
    data, weights = prep.apply(second, out=out)
    ref = run_ref(second, kw)
    np.testing.assert_array_equal(data, ref[0])
    np.testing.assert_array_equal(weights, ref[1])
    # the same as with fresh buffers of a fresh preparation
    fresh = make_prep((6, 7), np.uint16, kw, max_frames=5).apply(second)
    np.testing.assert_array_equal(data, fresh[0])
    np.testing.assert_array_equal(weights, fresh[1])
    present = np.array([True, False, True, True])
    data, weights = prep.apply(third, present=present, out=out)
    ref = run_ref(third, dict(kw, present=present))
    np.testing.assert_array_equal(data, ref[0])
    np.testing.assert_array_equal(weights, ref[1])
    # and a missing frame does not leak into the next call
    data, weights = prep.apply(third, out=out)
    ref = run_ref(third, kw)
    np.testing.assert_array_equal(data, ref[0])
    np.testing.assert_array_equal(weights, ref[1])


def test_padded_preparation_after_other_preparation_shares_buffers():
    rng = np.random.default_rng(2)
    raw = rng.integers(1, 1000, (4, 12, 12)).astype(np.uint16)
    inner = make_prep((12, 12), np.uint16, _kw(side=8, center=(6, 6)), max_frames=4)
    edge = make_prep((12, 12), np.uint16, _kw(side=8, center=(0, 11), orientation=6), max_frames=4)
    assert not inner.crop.pads and edge.crop.pads
    out = inner.allocate()
    inner.apply(raw, out=out)
    assert (out[0] > 0).all()
    data, weights = edge.apply(raw[::-1].copy(), out=out)
    ref = run_ref(raw[::-1].copy(), _kw(side=8, center=(0, 11), orientation=6))
    np.testing.assert_array_equal(data, ref[0])
    np.testing.assert_array_equal(weights, ref[1])
    assert (data == 0).sum() > 0


def test_apply_without_out_gives_fresh_arrays():
    prep = make_prep((6, 7), np.uint16, _kw(), max_frames=5)
    a = prep.apply(np.ones((2, 6, 7), np.uint16))
    b = prep.apply(np.full((2, 6, 7), 5, np.uint16))
    assert not np.shares_memory(a[0], b[0])
    assert a[0].max() == 1 and b[0].max() == 5


# --------------------------------------------------------------------------- dtypes

@pytest.mark.parametrize("raw_dtype,over,expected", [
    (np.uint16, dict(), np.uint16),
    (np.int32, dict(), np.int32),
    (np.float32, dict(), np.float32),
    (np.uint16, dict(orientation=7, side=4), np.uint16),          # geometry keeps values
    (np.uint16, dict(bad=np.eye(6, 7, dtype=bool)), np.uint16),   # weights only
    (np.uint16, dict(saturation=100), np.uint16),                 # weights only
    (np.uint16, dict(dark=np.ones((6, 7), np.float32)), np.float32),
    (np.int32, dict(flat=np.ones((6, 7))), np.float32),
    (np.uint16, dict(rebin=2), np.float32),                       # PtyPy mean -> float
    (np.int32, dict(rebin=5), np.float32),
    (np.uint16, dict(rebin=2, mode="sum"), np.int32),             # widened for sums
    (np.int32, dict(rebin=2, mode="sum"), np.int32),
    (np.float32, dict(rebin=2, mode="sum"), np.float32),
    (np.uint16, dict(rebin=2, mode="sum", flat=np.ones((6, 7))), np.float32),
    (np.uint16, dict(out_dtype="float64", rebin=2), np.float64),
    (np.float32, dict(out_dtype="uint16"), np.uint16),
    (np.int32, dict(out_dtype="uint32", dark=np.ones((6, 7), np.float32)), np.uint32),
])
def test_output_dtype_resolution(raw_dtype, over, expected):
    kw = _kw(**over)
    prep = make_prep((6, 7), raw_dtype, kw)
    assert prep.out_dtype == np.dtype(expected)
    raw = np.arange(2 * 6 * 7).reshape(2, 6, 7).astype(raw_dtype)
    data, _ = prep.apply(raw)
    assert data.dtype == np.dtype(expected)
    assert prep.allocate(3)[0].dtype == np.dtype(expected)
    ref = run_ref(raw, kw)
    np.testing.assert_array_equal(data, ref[0])


def test_sum_rebin_clips_to_int32():
    raw = np.full((1, 4, 4), 2**31 - 10, np.int32)
    raw[0, 2:, 2:] = -(2**31)
    prep = Preparation(raw_shape=(4, 4), raw_dtype=np.int32, side=4, center=(2, 2),
                       rebin=2, rebin_mode="sum")
    data, _ = prep.apply(raw)
    assert data.dtype == np.int32
    assert data[0].tolist() == [[2**31 - 1, 2**31 - 1], [2**31 - 1, -(2**31)]]
    # uint16 sums go beyond the raw range without clipping
    raw16 = np.full((1, 4, 4), 65535, np.uint16)
    prep = Preparation(raw_shape=(4, 4), raw_dtype=np.uint16, side=4, center=(2, 2),
                       rebin=2, rebin_mode="sum")
    assert prep.apply(raw16)[0][0].tolist() == [[4 * 65535] * 2] * 2


def test_float_to_int_output_clips_at_the_dtype_limits():
    raw = np.array([[[3e9, 5e9], [-1e10, 2.5]]], np.float32)
    for dtype in ("int32", "uint32", "uint16"):
        info = np.iinfo(dtype)
        prep = Preparation(raw_shape=(2, 2), raw_dtype=np.float32, side=2, center=(1, 1),
                           out_dtype=dtype)
        data, _ = prep.apply(raw)
        expected = [[min(max(round(v), int(info.min)), int(info.max)) for v in row]
                    for row in raw[0].tolist()]
        assert data[0].tolist() == expected, dtype


def test_saturation_on_raw_values_and_blocks():
    raw = np.zeros((2, 4, 4), np.uint16)
    raw[0, 0, 0] = 65535
    raw[1, 3, 2] = 65534
    dark = np.full((4, 4), 65535, np.float32)  # corrected data are all zero...
    prep = Preparation(raw_shape=(4, 4), raw_dtype=np.uint16, side=4, center=(2, 2), rebin=2,
                       saturation=65535, calibration=Calibration(dark=dark))
    data, weights = prep.apply(raw)
    assert (data == 0).all()
    # ...but saturation is judged on the raw value, and spoils the whole block
    assert weights[0].tolist() == [[False, True], [True, True]]
    assert weights[1].all()


# --------------------------------------------------------------------------- errors

def test_error_rebin_not_dividing_side():
    with pytest.raises(ValueError, match="rebin 3 does not divide the ROI side 8"):
        Preparation(raw_shape=(10, 10), raw_dtype=np.uint16, side=8, center=(5, 5), rebin=3)


@pytest.mark.parametrize("rebin", [0, -2, 33, 64])
def test_error_rebin_out_of_range(rebin):
    with pytest.raises(ValueError, match="rebin must be 1-32"):
        Preparation(raw_shape=(64, 64), raw_dtype=np.uint16, side=64, center=(32, 32), rebin=rebin)


def test_rebin_32_is_allowed():
    prep = Preparation(raw_shape=(64, 64), raw_dtype=np.uint16, side=64, center=(32, 32), rebin=32)
    assert prep.stored_shape == (2, 2)


@pytest.mark.parametrize("center", [(-10, 5), (5, 40), (100, 100), (-3.6, 5)])
def test_error_roi_outside_frame(center):
    with pytest.raises(ValueError, match="misses the"):
        Preparation(raw_shape=(12, 20), raw_dtype=np.uint16, side=6, center=center)


@pytest.mark.parametrize("name", ["dark", "flat", "bad_pixels"])
def test_error_calibration_map_wrong_shape(name):
    cal = Calibration(**{name: np.ones((10, 9))})
    with pytest.raises(ValueError, match=rf"{name} map has shape \(10, 9\), raw frames have \(9, 10\)"):
        Preparation(raw_shape=(9, 10), raw_dtype=np.uint16, side=4, center=(4, 5), calibration=cal)


def test_error_raw_chunk_wrong_shape():
    prep = Preparation(raw_shape=(9, 10), raw_dtype=np.uint16, side=4, center=(4, 5))
    with pytest.raises(ValueError, match=r"raw frames have shape \(10, 9\).*\(9, 10\)"):
        prep.apply(np.zeros((2, 10, 9), np.uint16))
    with pytest.raises(ValueError, match="raw frames have shape"):
        prep.apply(np.zeros((9, 10), np.uint16))  # a single frame without the frame axis


def test_error_more_frames_than_max_frames():
    prep = Preparation(raw_shape=(9, 10), raw_dtype=np.uint16, side=4, center=(4, 5), max_frames=3)
    prep.apply(np.zeros((3, 9, 10), np.uint16))
    with pytest.raises(ValueError, match="4 frames exceed the planned 3"):
        prep.apply(np.zeros((4, 9, 10), np.uint16))


@pytest.mark.parametrize("kwargs,match", [
    (dict(side=0), "side must be positive"),
    (dict(rebin_mode="median"), "'mean' or 'sum'"),
    (dict(out_dtype="int8"), "output dtype must be one of"),
    (dict(orientation=8), "0-7"),
    (dict(orientation=(True, False)), "3 entries"),
])
def test_error_other_parameters(kwargs, match):
    base = dict(raw_shape=(9, 10), raw_dtype=np.uint16, side=4, center=(4, 5))
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Preparation(**base)

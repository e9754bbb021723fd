"""Compare two .ptyd files frame by frame: data, weights, positions and meta."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flyprep.ptyd.reader import open_ptyd

META_KEYS = ("num_frames", "shape", "center", "psize", "energy", "distance", "propagation")


def ptyd_contents(path: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """meta (the keys PtyPy uses), data, weights and positions of every frame."""
    f = open_ptyd(path)
    chunks = list(f.iter_chunks())
    data = np.concatenate([c.data for c in chunks])
    weights = np.concatenate([c.weights for c in chunks])
    positions = np.concatenate([c.positions for c in chunks])
    meta = {k: getattr(f.meta, k) for k in META_KEYS}
    return meta, data, weights, positions


def assert_same_ptyd(a: Path, b: Path) -> None:
    """The two files hold the same frames, weights, positions and meta."""
    meta_a, data_a, w_a, pos_a = ptyd_contents(a)
    meta_b, data_b, w_b, pos_b = ptyd_contents(b)
    assert meta_a == meta_b
    assert data_a.shape == data_b.shape
    bad = np.flatnonzero((data_a != data_b).reshape(len(data_a), -1).any(axis=1))
    assert bad.size == 0, f"frames differ: {bad[:10]}"
    np.testing.assert_array_equal(w_a, w_b)
    np.testing.assert_array_equal(pos_a, pos_b)


def contents(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """data, weights and positions of every frame."""
    _, data, weights, positions = ptyd_contents(path)
    return data, weights, positions


def check_never_misplaced(out: Path, ref: tuple[np.ndarray, ...]) -> np.ndarray:
    """Every frame of ``out`` is the reference's frame at that index (data, weights,
    position), or has weight 0 and no data; the file verifies. Returns which are good."""
    from flyprep.ptyd.verify import verify

    data, weights, positions = contents(out)
    r_data, r_weights, r_positions = ref
    assert data.shape == r_data.shape
    good = weights.reshape(len(weights), -1).any(axis=1)
    for i in np.flatnonzero(good):
        assert np.array_equal(data[i], r_data[i]), f"frame {i} holds another frame's data"
        assert np.array_equal(weights[i], r_weights[i]), f"frame {i}: wrong weights"
        assert np.array_equal(positions[i], r_positions[i]), f"frame {i}: wrong position"
    assert not data[~good].any(), "a weightless frame holds data"
    errors = [f for f in verify(out) if f.level == "error"]
    assert not errors, errors
    return good

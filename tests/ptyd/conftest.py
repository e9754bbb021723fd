"""Shared helpers for the .ptyd tests."""

from pathlib import Path

import numpy as np
import pytest

from flyprep.prep.chunk import PreparedChunk
from flyprep.ptyd import ScanMeta

DATA = Path(__file__).resolve().parents[1] / "data"


def make_chunk(key: int, start: int, n: int, side: int = 16, missing: tuple[int, ...] = ()) -> PreparedChunk:
    """Frames whose every pixel holds the global frame index."""
    idx = np.arange(start, start + n)
    data = np.broadcast_to(idx[:, None, None], (n, side, side)).astype(np.int32).copy()
    miss = np.isin(idx, missing)
    weights = np.ones(data.shape, bool)
    weights[miss] = False
    data[miss] = 0
    return PreparedChunk(key=key, frame_start=start, data=data, weights=weights,
                         positions=np.stack([idx * 1e-6, -idx * 1e-6], 1), missing=miss,
                         sources=tuple(f"/det/scan/f{i:05d}.h5" for i in idx))


@pytest.fixture
def meta() -> ScanMeta:
    return ScanMeta(num_frames=50, shape=(16, 16), center=(8.0, 8.0), psize=(1e-4, 1e-4),
                    energy=6.2, distance=7.0, label="test scan")


@pytest.fixture
def fixture_ptyd() -> Path:
    return DATA / "ptyd" / "sample.ptyd"

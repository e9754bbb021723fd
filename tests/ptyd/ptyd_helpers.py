"""Chunks for the .ptyd tests: every pixel of frame i holds i."""

import numpy as np

from flyprep.prep.chunk import PreparedChunk

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



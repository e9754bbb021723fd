"""Subprocess: publish a scan chunk by chunk as fast as possible (frame i holds value i)."""

import sys
from pathlib import Path

import numpy as np

from flyprep.prep.chunk import PreparedChunk
from flyprep.ptyd import PtydWriter, ScanMeta

path, num_frames, chunk_frames, side = Path(sys.argv[1]), *map(int, sys.argv[2:5])
meta = ScanMeta(num_frames=num_frames, shape=(side, side), center=(side / 2, side / 2),
                psize=(1e-4, 1e-4), energy=6.2, distance=7.0)
with PtydWriter(path, meta=meta, chunk_frames=chunk_frames) as writer:
    for key, start in enumerate(range(0, num_frames, chunk_frames)):
        idx = np.arange(start, min(start + chunk_frames, num_frames))
        data = np.broadcast_to(idx[:, None, None], (idx.size, side, side)).astype(np.int32)
        writer.write_chunk(PreparedChunk(
            key=key, frame_start=start, data=data, weights=np.ones(data.shape, bool),
            positions=np.stack([idx * 1e-6, -idx * 1e-6], 1), missing=np.zeros(idx.size, bool)))
        print(f"chunk {key}", flush=True)

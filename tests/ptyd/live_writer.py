"""Subprocess: publish a scan as fast as possible; frame i holds the value i + 1.

Mode ``writer`` drives PtydWriter chunk by chunk; mode ``run_scan`` goes through the code
path of ``flyprep prepare`` (preparation, writer thread, coalesced publication), with
every 97th frame missing; ``run_scan_parts`` the same with each chunk written in parts of
two frames while it fills.
"""

import sys
from pathlib import Path

import numpy as np

from flyprep.config import parse_config
from flyprep.pipeline import frame_item, run_scan
from flyprep.prep.chunk import PreparedChunk
from flyprep.ptyd import PtydWriter, ScanMeta

mode, path = sys.argv[1], Path(sys.argv[2])
num_frames, chunk_frames, side = map(int, sys.argv[3:6])
positions = np.stack([np.arange(num_frames) * 1e-6, -np.arange(num_frames) * 1e-6], 1)


def frame(i: int) -> np.ndarray:
    return np.full((side, side), i + 1, np.int32)


if mode == "writer":
    meta = ScanMeta(num_frames=num_frames, shape=(side, side), center=(side / 2, side / 2),
                    psize=(1e-4, 1e-4), energy=6.2, distance=7.0)
    with PtydWriter(path, meta=meta, chunk_frames=chunk_frames) as writer:
        for key, start in enumerate(range(0, num_frames, chunk_frames)):
            idx = np.arange(start, min(start + chunk_frames, num_frames))
            writer.write_chunk(PreparedChunk(
                key=key, frame_start=start, data=np.stack([frame(i) for i in idx]),
                weights=np.ones((idx.size, side, side), bool), positions=positions[idx],
                missing=np.zeros(idx.size, bool)))
else:
    config = parse_config({"prep": {"shape": side},
                           "output": {"chunk_frames": chunk_frames},
                           "geometry": {"energy": 6.2, "distance": 7.0, "psize": 1e-4}})
    frames = (frame_item(i, None if i % 97 == 5 else frame(i), f"f{i}")
              for i in range(num_frames))
    run_scan(frames, num_frames=num_frames, positions=positions, config=config, output=path,
             part_bytes=2 * side * side * 4 if mode == "run_scan_parts" else 0)

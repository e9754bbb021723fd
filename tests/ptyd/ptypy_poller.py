"""Subprocess: poll a .ptyd exactly as PtyPy's PtydScan does, as fast as it can.

Opens the master read-only on every poll, lists chunks/, skips dangling links, sorts the
keys as integers, and reads only the frames beyond those it already has, by their position
in that order. Prints one JSON line: frames read, errors, polls.
"""

import json
import sys
import time

import h5py
import numpy as np

path, timeout_s = sys.argv[1], float(sys.argv[2])
num_frames = None
framestart = 0
seen = []  # (global index from order, stored value, y position)
errors = []
polls = 0
deadline = time.monotonic() + timeout_s
while time.monotonic() < deadline:
    try:
        with h5py.File(path, "r") as f:
            polls += 1
            if num_frames is None:
                num_frames = int(f["meta/num_frames"][()])
            items = [(int(k), v) for k, v in f["chunks"].items() if v is not None]
            items.sort(key=lambda t: t[0])
            coords = [(k, j) for k, v in items for j in range(v["data"].shape[0])]
            for gi in range(framestart, len(coords)):
                k, j = coords[gi]
                frame = f[f"chunks/{k}/data"][j]
                pos = f[f"chunks/{k}/positions"][j]
                seen.append((gi, int(frame.flat[0]), bool((frame == frame.flat[0]).all()),
                             float(pos[0])))
            framestart = len(coords)
    except FileNotFoundError:
        time.sleep(0.001)  # master not published yet: PtyPy would not have started
        continue
    except Exception as exc:  # every other failure is a reader error
        errors.append(f"{type(exc).__name__}: {exc}")
    if num_frames is not None and framestart >= num_frames:
        break
print(json.dumps({"num_frames": num_frames, "seen": seen, "errors": errors[:20],
                  "n_errors": len(errors), "polls": polls}))

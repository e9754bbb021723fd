"""Subprocess: read a .ptyd while it is written, as PtyPy's PtydScan does, keep every frame.

Each poll is PtyPy's check() then load(): open the master read-only, list chunks/, skip
dangling links, order the keys as integers, close; open it again and read only the frames
beyond those already read, by their position in that order. Stops at meta/num_frames
frames (PtyPy's end of scan) or at the deadline. Saves what it read to an .npz and prints
one JSON line: frames read, errors, when the first and the last frame were read.

argv: master path, output .npz, timeout in seconds.
"""

import json
import sys
import time

import h5py
import numpy as np

path, out, timeout_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
open(out + ".ready", "w").close()  # imports done: the test may start the scan
num_frames = None
framestart = 0
data, weights, positions = [], [], []
errors = []
first_read = last_read = None
deadline = time.monotonic() + timeout_s
while time.monotonic() < deadline:
    try:
        with h5py.File(path, "r") as f:  # check()
            if num_frames is None:
                num_frames = int(f["meta/num_frames"][()])
            items = sorted(((int(k), v) for k, v in f["chunks"].items() if v is not None),
                           key=lambda t: t[0])
            coords = [(k, j) for k, v in items for j in range(v["data"].shape[0])]
        if len(coords) > framestart:
            with h5py.File(path, "r") as f:  # load()
                for gi in range(framestart, len(coords)):
                    k, j = coords[gi]
                    data.append(f[f"chunks/{k}/data"][j])
                    weights.append(f[f"chunks/{k}/weights"][j])
                    positions.append(f[f"chunks/{k}/positions"][j])
            framestart = len(coords)
            last_read = time.time()
            first_read = first_read or last_read
    except FileNotFoundError:
        pass  # no master yet: PtyPy would not have started
    except Exception as exc:  # every other failure is a reader error
        errors.append(f"{type(exc).__name__}: {exc}")
    if num_frames is not None and framestart >= num_frames:
        break
    time.sleep(0.01)
if data:
    np.savez(out, data=np.stack(data), weights=np.stack(weights), positions=np.stack(positions))
print(json.dumps({"num_frames": num_frames, "frames": framestart, "errors": errors[:20],
                  "n_errors": len(errors), "first_read": first_read, "last_read": last_read}))

"""Subprocess: poll a .ptyd exactly as PtyPy's PtydScan does, as fast as it can.

Each poll is PtyPy's check() then load(): open the master read-only, list chunks/, skip
dangling links, sort the keys as integers and note each chunk's length, close; open it
again and read only the frames beyond those already read, by their position in that
order. Prints one JSON line: what was read, the errors, the polls and the master
generations seen.
"""

import json
import sys
import time

import h5py

path, timeout_s = sys.argv[1], float(sys.argv[2])
open(path + ".poller-ready", "w").close()  # imports done: the writer may start
num_frames = None
framestart = 0
seen = []  # (global index by order, stored value, frame uniform, y position, any weight)
errors = []
polls = 0
generations = set()
deadline = time.monotonic() + timeout_s
while time.monotonic() < deadline:
    try:
        with h5py.File(path, "r") as f:  # check()
            polls += 1
            if num_frames is None:
                num_frames = int(f["meta/num_frames"][()])
            status = f.get("flyprep")
            if status is not None:
                generations.add(json.loads(status.attrs["status"])["generation"])
            items = sorted(((int(k), v) for k, v in f["chunks"].items() if v is not None),
                           key=lambda t: t[0])
            coords = [(k, j) for k, v in items for j in range(v["data"].shape[0])]
        with h5py.File(path, "r") as f:  # load()
            for gi in range(framestart, len(coords)):
                k, j = coords[gi]
                frame = f[f"chunks/{k}/data"][j]
                seen.append((gi, int(frame.flat[0]), bool((frame == frame.flat[0]).all()),
                             float(f[f"chunks/{k}/positions"][j][0]),
                             bool(f[f"chunks/{k}/weights"][j].any())))
        framestart = len(coords)
    except FileNotFoundError:
        time.sleep(0.001)  # master not published yet: PtyPy would not have started
        continue
    except Exception as exc:  # every other failure is a reader error
        errors.append(f"{type(exc).__name__}: {exc}")
    if num_frames is not None and framestart >= num_frames:
        break
print(json.dumps({"num_frames": num_frames, "seen": seen, "errors": errors[:20],
                  "n_errors": len(errors), "polls": polls, "generations": sorted(generations)}))

"""Helper process for the tailer tests: copy a file to a new file in random pieces.

Usage: ``python apx_writer_proc.py SRC DST --seed S [--min-piece A] [--max-piece B]
[--max-pause-s P] [--pause-prob Q] [--stop-at N]``

Appends ``SRC``'s bytes (the first ``N`` only with ``--stop-at``) to ``DST`` in pieces of
``A..B`` bytes, flushing after each piece and, with probability ``Q``, sleeping up to ``P``
seconds between pieces, like a DAQ writing through an unflushed buffered file. Seeded, so
a run is reproducible. Creates ``DST`` (empty) first; prints ``done`` when finished.
"""

from __future__ import annotations

import argparse
import random
import sys
import time


def main(argv: list[str] | None = None) -> int:
    """Copy SRC to DST piece by piece as described in the module docstring."""
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--min-piece", type=int, default=1)
    ap.add_argument("--max-piece", type=int, default=8192)
    ap.add_argument("--max-pause-s", type=float, default=0.01)
    ap.add_argument("--pause-prob", type=float, default=1.0)
    ap.add_argument("--stop-at", type=int, default=None)
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    with open(args.src, "rb") as f:
        data = f.read()
    if args.stop_at is not None:
        data = data[: args.stop_at]
    pos = 0
    with open(args.dst, "wb") as out:
        while pos < len(data):
            n = rng.randint(args.min_piece, args.max_piece)
            out.write(data[pos : pos + n])
            out.flush()
            pos += n
            if rng.random() < args.pause_prob:
                time.sleep(rng.uniform(0.0, args.max_pause_s))
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

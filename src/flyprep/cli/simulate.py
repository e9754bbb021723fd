"""``flyprep simulate``: write a realistic scan as it is measured (frames, positions, an
``.apx`` file) at a set rate."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..sim.simulate import APX_NAME, END_MARKER, LAYOUTS
from .exit_codes import ExitCode
from .registry import summary


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``simulate`` sub-command on ``subparsers``; returns its parser."""
    p = subparsers.add_parser("simulate", help=summary("simulate"))
    p.add_argument("dir", type=Path, help="scan directory (created; must be new or empty)")
    p.add_argument("--layout", choices=list(LAYOUTS), default="ptypy")
    p.add_argument("--frames", type=int, default=200, help="number of frames (default 200)")
    p.add_argument("--side", type=int, default=256, help="raw frame side in pixels (default 256)")
    p.add_argument("--rate", type=float, default=10.0,
                   help="frames per second (default 10; 0: as fast as possible)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default=None, help="scan label (default: the directory name)")
    p.add_argument("--frames-per-file", type=int, default=100,
                   help="frames per HDF5 stack file (default 100)")
    p.add_argument("--partial-fraction", type=float, default=0.2,
                   help="share of PtyPy frames written in place in pieces (default 0.2)")
    p.add_argument("--apx", action=argparse.BooleanOptionalAction, default=True,
                   help=f"also write an AstroPix file {APX_NAME} (default: yes)")
    p.add_argument("--readouts-per-frame", type=int, default=20)
    p.add_argument("--apx-source", type=Path, default=None,
                   help="cycle the readouts of this .apx file instead of synthesising them")
    p.add_argument("--end-marker", action=argparse.BooleanOptionalAction, default=True,
                   help=f"write {END_MARKER} when the scan is complete (default: yes)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``flyprep simulate`` from parsed arguments."""
    from ..sim.simulate import simulate_scan

    result = simulate_scan(
        args.dir, layout=args.layout, num_frames=args.frames, frame_side=args.side,
        rate_hz=args.rate, seed=args.seed, end_marker=args.end_marker, apx=args.apx,
        label=args.label, frames_per_file=args.frames_per_file,
        partial_fraction=args.partial_fraction, readouts_per_frame=args.readouts_per_frame,
        apx_source=args.apx_source)
    extra = f", {result.apx_records} readouts in {result.apx_path}" if result.apx_path else ""
    print(f"simulated {result.frames_written}/{result.num_frames} frames ({result.layout} layout) "
          f"in {result.root} in {result.elapsed_s:.2f} s{extra}")
    return ExitCode.OK


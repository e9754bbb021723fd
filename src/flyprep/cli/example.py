"""``flyprep example``: write a synthetic finished scan directory."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .exit_codes import ExitCode
from .registry import summary


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``example``; returns its parser."""
    p = subparsers.add_parser("example", help=summary("example"))
    p.add_argument("dir", type=Path)
    p.add_argument("--layout", choices=["ptypy", "hdf5"], default="ptypy")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--side", type=int, default=256, help="raw frame side in pixels")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``flyprep example`` from parsed arguments."""
    from ..sim.example import write_example

    root = write_example(args.dir, layout=args.layout, num_frames=args.frames,
                         frame_side=args.side)
    print(f"wrote a {args.frames}-frame example scan ({args.layout} layout) to {root}")
    return ExitCode.OK

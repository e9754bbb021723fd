"""``flyprep export-usid SCAN.ptyd [-o OUT]``: an h5USID view of a prepared scan, for pyUSID
and pycroscopy: frames x detector pixels over the chunk files (an HDF5 virtual dataset, no
copy; --copy writes a self-contained file), the positions and pixels as USID's ancillary
datasets, the weights beside the frames (docs/ptyd-format.md, h5USID view)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .exit_codes import ExitCode
from .registry import summary


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``export-usid``; returns its parser."""
    p = subparsers.add_parser("export-usid", help=summary("export-usid"))
    p.add_argument("file", type=Path, help="the .ptyd master")
    p.add_argument("-o", "--output", type=Path,
                   help="the h5USID file (default: SCAN_usid.h5 beside the .ptyd)")
    p.add_argument("--copy", action="store_true",
                   help="copy the frames into the file instead of referencing the chunk files")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="export a scan still acquiring (the frames written so far)")
    return p


def default_output(master: Path) -> Path:
    """``SCAN_usid.h5`` beside ``SCAN.ptyd``."""
    return master.with_name(f"{master.stem}_usid.h5")


def run(args: argparse.Namespace) -> int:
    """Run ``flyprep export-usid`` from parsed arguments."""
    from ..ptyd.usid import plan_usid, write_usid
    from .terminal import out

    plan = plan_usid(args.file)
    target = write_usid(plan, args.output or default_output(args.file), copy=args.copy,
                        allow_incomplete=args.allow_incomplete)
    how = "copied" if args.copy else "referenced from the chunk files"
    out.print(f"{target}: {plan.n_frames} frames of {plan.shape[0]}x{plan.shape[1]} "
              f"{how}{'' if plan.finished else f' (scan {plan.state}: frames {plan.not_written()} not written yet)'}",
              markup=False, soft_wrap=True)
    if plan.missing:
        out.print(f"{len(plan.missing)} frames were missing or failed in the scan: zero "
                  f"frames with zero weights", markup=False)
    return ExitCode.OK

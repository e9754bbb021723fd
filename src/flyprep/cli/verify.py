"""``flyprep verify``: check a ``.ptyd`` against every rule of the format (or an h5USID view
of one: every chunk file it references is there); exit 1 with the reasons when one is
broken."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .exit_codes import ExitCode
from .registry import summary


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``verify``; returns its parser."""
    p = subparsers.add_parser("verify", help=summary("verify"))
    p.add_argument("file", type=Path)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``flyprep verify`` from parsed arguments."""
    return run_verify(args.file)


def run_verify(path: Path) -> int:
    """``flyprep verify``: exit 1 with the reasons when a rule is broken."""
    from ..ptyd import verify
    from ..ptyd.usid import check_usid, is_usid_view

    if is_usid_view(path):
        return _report(path, check_usid(path), "its frames would not read as the scan's")
    return _report(path, verify(path), "PtyPy would not read it correctly")


def _report(path: Path, findings: Any, consequence: str) -> int:
    from .terminal import console, out

    for finding in findings:
        (console if finding.level == "error" else out).print(str(finding), markup=False,
                                                             soft_wrap=True)
    errors = [f for f in findings if f.level == "error"]
    if errors:
        console.print(f"{path}: {len(errors)} error(s): {consequence}", markup=False)
        return ExitCode.FAILED
    out.print(f"{path}: OK ({len(findings)} warning(s))", markup=False)
    return ExitCode.OK

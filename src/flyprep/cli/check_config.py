"""``flyprep check-config FILE``: validate a ``flyprep run`` daemon config and print it.

Exit 0 with the effective config (file, then ``FLYPREP__SECTION__KEY`` environment
overrides, then defaults) on stdout, as TOML (default) or JSON (``--json``); exit 2 with one
``key = value: reason`` line per bad value on stderr.

It also estimates the memory the running scans can take (:mod:`flyprep.memory`): said as
comments of the TOML (on stderr with ``--json``), a warning on stderr above half of the
machine's memory (still exit 0), and exit 2 above all of it, naming the settings to lower.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .. import memory
from ..config import DaemonConfig, load_daemon_config, to_toml
from ..errors import ConfigError
from .exit_codes import ExitCode
from .registry import summary


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``check-config FILE [--json]`` on an ``add_subparsers()`` object."""
    parser = subparsers.add_parser(
        "check-config", help=summary("check-config"),
        description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="daemon config (TOML)")
    parser.add_argument("--json", action="store_true",
                        help="print the effective config as JSON instead of TOML")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Validate ``args.file`` with the environment's overrides; 0 if valid, 2 if not (or
    if its running scans can take more memory than the machine has)."""
    try:
        config = load_daemon_config(args.file)
    except ConfigError as exc:
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return ExitCode.INPUT
    machine = memory.machine_memory()
    lines, verdict = memory_report(config, machine)
    if verdict.level == "refuse":
        print(f"flyprep: error: {args.file}: {verdict.message}", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        return ExitCode.INPUT
    if getattr(args, "json", False):
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        for line in lines:
            print(f"flyprep: {line}", file=sys.stderr)
    else:
        print(f"# effective configuration of {args.file} (TOML)")
        for line in lines:
            print(f"# {line}")
        print(to_toml(config), end="")
    if verdict.level == "warn":
        print(f"flyprep: warning: {args.file}: {verdict.message}", file=sys.stderr)
    return ExitCode.OK


def memory_report(config: DaemonConfig, machine_bytes: int | None
                  ) -> tuple[list[str], memory.Assessment]:
    """What to say of the memory ``config`` can take (lines), and the verdict against
    ``machine_bytes`` (None: unknown)."""
    estimate = memory.estimate_memory(config)
    if estimate is None:
        return (["memory: not estimated: the frame size is unknown (set prep.shape or "
                 "scan.frame_shape)"], memory.Assessment("ok", ""))
    human = memory.human_bytes
    of_machine = "" if not machine_bytes else \
        f" ({100 * estimate.total_bytes / machine_bytes:.0f}% of this machine's " \
        f"{human(machine_bytes)})"
    lines = [f"memory: up to {human(estimate.total_bytes)}{of_machine}: "
             f"{estimate.max_scans} running scans (limits.max_scans) x "
             f"{human(estimate.per_scan_bytes)} each"]
    lines += [f"  {what}: {human(n)} = {how}" for what, n, how in estimate.per_scan]
    lines += [f"  {text}" for text in estimate.assumptions]
    return lines, memory.assess(estimate, machine_bytes)

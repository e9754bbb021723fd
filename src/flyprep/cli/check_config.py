"""``flyprep check-config FILE``: validate a ``flyprep run`` daemon config and print it.

Exit 0 with the effective config (file, then ``FLYPREP__SECTION__KEY`` environment
overrides, then defaults) on stdout, as TOML (default) or JSON (``--json``); exit 2 with one
``key = value: reason`` line per bad value on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..config import load_daemon_config, to_toml
from ..errors import ConfigError
from .exit_codes import ExitCode



def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``check-config FILE [--json]`` on an ``add_subparsers()`` object."""
    parser = subparsers.add_parser(
        "check-config", help="validate a flyprep run config and print the effective values",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="daemon config (TOML)")
    parser.add_argument("--json", action="store_true",
                        help="print the effective config as JSON instead of TOML")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Validate ``args.file`` with the environment's overrides; 0 if valid, 2 if not."""
    try:
        config = load_daemon_config(args.file)
    except ConfigError as exc:
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return ExitCode.INPUT
    if getattr(args, "json", False):
        print(json.dumps(config.model_dump(mode="json"), indent=2))
    else:
        print(f"# effective configuration of {args.file} (TOML)")
        print(to_toml(config), end="")
    return ExitCode.OK

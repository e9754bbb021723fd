"""Where a running daemon is, for the commands that talk to it: ``--config`` (the daemon's
own TOML file) or the endpoints themselves; an option given wins over the file, the file
over the defaults."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULTS = {"control": "tcp://127.0.0.1:5571", "events": "tcp://127.0.0.1:5570",
            "apx": "tcp://127.0.0.1:5572"}
FLAGS = {"control": "--endpoint", "events": "--events", "apx": "--apx-stream"}


def add_options(parser: argparse.ArgumentParser, *sockets: str) -> None:
    """``--config`` and one option per socket the command uses (``control``, ``events``,
    ``apx``)."""
    parser.add_argument("--config", type=Path,
                        help="the daemon's config file: its endpoints are used")
    for name in sockets:
        parser.add_argument(FLAGS[name], dest=f"{name}_endpoint", default=None,
                            help=f"the daemon's {name} endpoint (default: from --config, "
                                 f"else {DEFAULTS[name]})")


def endpoint(args: argparse.Namespace, name: str) -> str | None:
    """The endpoint of socket ``name``; None (said on stderr) when it is unusable."""
    value = getattr(args, f"{name}_endpoint", None)
    if value is None and getattr(args, "config", None) is not None:
        from ..config import load_daemon_config
        from ..errors import ConfigError

        try:
            config = load_daemon_config(args.config, require_roots=False)
        except ConfigError as exc:
            print(f"flyprep: error: {exc}", file=sys.stderr)
            return None
        value = {"control": config.bus.control, "events": config.bus.events,
                 "apx": config.apx.stream}[name]
    value = value or DEFAULTS[name]
    if "://" not in value:
        print(f"flyprep: error: endpoint {value!r}: expected tcp://host:port or ipc://path",
              file=sys.stderr)
        return None
    return value

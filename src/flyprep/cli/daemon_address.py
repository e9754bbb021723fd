"""Where a running daemon is, and with which keys, for the commands that talk to it:
``--config`` (the daemon's own TOML file) or the endpoints themselves; an option given
wins over the file, the file over the defaults. With ``--config`` of a daemon that uses
CURVE, the user's key (``bus.curve_client_key``, or ``FLYPREP_CLIENT_KEY``) goes along."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path

    from ..daemon.curve import ClientKeys

DEFAULTS = {"control": "tcp://127.0.0.1:5571", "events": "tcp://127.0.0.1:5570",
            "apx": "tcp://127.0.0.1:5572"}
FLAGS = {"control": "--endpoint", "events": "--events", "apx": "--apx-stream"}


class Address(NamedTuple):
    """One socket of the daemon: its endpoint and the keys to reach it (None: no CURVE).
    (A named tuple, not a dataclass: the client commands start without loading
    dataclasses and inspect.)"""

    endpoint: str
    keys: ClientKeys | None = None


def _path(value: str) -> Path:
    from pathlib import Path  # only when --config is given

    return Path(value)


def add_options(parser: argparse.ArgumentParser, *sockets: str) -> None:
    """``--config`` and one option per socket the command uses (``control``, ``events``,
    ``apx``)."""
    parser.add_argument("--config", type=_path,
                        help="the daemon's config file: its endpoints and CURVE keys are used")
    for name in sockets:
        parser.add_argument(FLAGS[name], dest=f"{name}_endpoint", default=None,
                            help=f"the daemon's {name} endpoint (default: from --config, "
                                 f"else {DEFAULTS[name]})")


def resolve(args: argparse.Namespace, name: str) -> Address | None:
    """Socket ``name`` of the daemon; None (said on stderr) when it is unusable."""
    value = getattr(args, f"{name}_endpoint", None)
    keys = None
    if getattr(args, "config", None) is not None:
        from ..config import load_daemon_config
        from ..daemon.curve import client_keys
        from ..errors import ConfigError

        try:
            config = load_daemon_config(args.config, require_roots=False)
            if value is None:
                value = {"control": config.bus.control, "events": config.bus.events,
                         "apx": config.apx.stream}[name]
            if value.startswith("tcp://"):  # ipc needs no key: none is asked for
                keys = client_keys(config.bus)
        except ConfigError as exc:
            print(f"flyprep: error: {exc}", file=sys.stderr)
            return None
    value = value or DEFAULTS[name]
    if "://" not in value:
        print(f"flyprep: error: endpoint {value!r}: expected tcp://host:port or ipc://path",
              file=sys.stderr)
        return None
    return Address(value, keys)

"""``flyprep events``: print the daemon's events as they come, one line each (or their
JSON bodies with ``--json``), until Ctrl-C.

Exit codes: 0 never (it runs until interrupted: 130), 1 the daemon refused this client
(CURVE), 2 the endpoint or the config is not usable.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import daemon_address
from .exit_codes import ExitCode
from .registry import summary


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``events``; returns its parser."""
    parser = subparsers.add_parser("events", help=summary("events"))
    daemon_address.add_options(parser, "events")
    parser.add_argument("--topic", action="append", default=None,
                        help="only events whose kind starts with this (repeatable), e.g. "
                             "scan. or chunk.written")
    parser.add_argument("--json", action="store_true", help="print each event's JSON body")
    return parser


def line(body: dict[str, Any]) -> str:
    """One readable line for an event body."""
    skip = {"v", "run", "seq", "time", "kind"}
    fields = " ".join(f"{k}={v}" for k, v in body.items() if k not in skip and v is not None)
    return f"{body.get('seq', '?'):>6} {body.get('kind', '?'):<16} {fields}"


def run(args: argparse.Namespace) -> int:
    """Subscribe and print until interrupted."""
    from ..daemon.bus import BusError, Subscriber

    address = daemon_address.resolve(args, "events")
    if address is None:
        return ExitCode.INPUT
    try:
        sub = Subscriber(address.endpoint, keys=address.keys,
                         topics=[t.encode() for t in args.topic or [""]])
    except BusError as exc:
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return ExitCode.INPUT
    print(f"flyprep: events of {address.endpoint} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        while True:
            frames = sub.receive_frames(1.0)
            if frames is None:
                refused = sub.refused()
                if refused is not None:
                    print(f"flyprep: error: {refused}", file=sys.stderr)
                    return ExitCode.FAILED
                continue
            body = json.loads(frames[1].bytes)
            print(json.dumps(body) if args.json else line(body), flush=True)
    finally:
        sub.close()

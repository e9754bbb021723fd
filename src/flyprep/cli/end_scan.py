"""``flyprep end-scan SCAN``: ask a running daemon to end a scan now.

Frames that have not arrived are written as missing (weight 0), so readers still reach
``num_frames``; the master says ``complete`` (``aborted`` with ``--abort``).
Only an authorised peer may end a scan: over ipc whoever may open the socket file, over
tcp a CURVE key in the daemon's ``bus.curve_clients`` (give ``--config``).
Exit codes: 0 the daemon is ending the scan, 1 no daemon answered or it refused (no such
running scan, or this user is not authorised), 2 the endpoint or the config is not usable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from . import daemon_address
from .exit_codes import ExitCode
from .registry import summary



def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``end-scan`` on an ``add_subparsers()`` object; returns its parser."""
    parser = subparsers.add_parser("end-scan", help=summary("end-scan"))
    parser.add_argument("scan", help="the scan's name (its directory name)")
    parser.add_argument("--abort", action="store_true",
                        help="the master says 'aborted' instead of 'complete'")
    daemon_address.add_options(parser, "control")
    parser.add_argument("--timeout", type=float, default=5.0, dest="timeout_s")
    return parser


def run(args: argparse.Namespace) -> int:
    """Send ``end_scan``; see the module doc for exit codes."""
    from ..daemon.control_client import BusError, request

    address = daemon_address.resolve(args, "control")
    if address is None:
        return ExitCode.INPUT
    try:
        reply = request(address.endpoint, "end_scan",
                        params={"scan": args.scan, "abort": args.abort},
                        timeout_s=args.timeout_s, keys=address.keys)
    except BusError as exc:
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    if not reply.get("ok"):
        print(f"flyprep: error: {reply.get('error', 'refused')}", file=sys.stderr)
        return ExitCode.FAILED
    state = reply["result"]["state"]
    print(f"{args.scan}: ending; missing frames are filled and the master will say {state}")
    return ExitCode.OK

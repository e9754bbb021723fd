"""``flyprep status``: ask a running daemon's control server how its scans are going;
``--watch`` keeps a live view (a progress bar per active scan, frames/s, ETA) until Ctrl-C.

Exit codes: 0 the daemon answered, 1 no daemon answered (or it answered with an error),
2 the endpoint or the config is not usable.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from . import daemon_address
from .exit_codes import ExitCode
from .registry import summary



def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``status`` on an ``add_subparsers()`` object; returns its parser."""
    parser = subparsers.add_parser("status", help=summary("status"))
    daemon_address.add_options(parser, "control")
    parser.add_argument("--json", action="store_true", help="print the raw status as JSON")
    parser.add_argument("--watch", action="store_true",
                        help="a live view, refreshed every --interval seconds, until Ctrl-C")
    parser.add_argument("--interval", type=float, default=0.5,
                        help="seconds between refreshes with --watch (default 0.5)")
    parser.add_argument("--timeout", type=float, default=2.0, dest="timeout_s",
                        help="seconds to wait for a reply (default 2)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Query the daemon and print its status; see the module doc for exit codes."""
    from ..daemon.control_client import BusError, request

    address = daemon_address.resolve(args, "control")
    if address is None:
        return ExitCode.INPUT
    endpoint = address.endpoint
    if getattr(args, "watch", False):
        from .status_watch import watch

        return watch(address, interval_s=args.interval, timeout_s=args.timeout_s)
    try:
        reply = request(endpoint, "status", timeout_s=getattr(args, "timeout_s", 2.0),
                        keys=address.keys)
    except BusError as exc:
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    if not reply.get("ok"):
        print(f"flyprep: error: daemon at {endpoint} could not report status: "
              f"{reply.get('error', 'no reason given')}", file=sys.stderr)
        return ExitCode.FAILED
    result = reply.get("result")
    if args.json:
        import json

        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print_status(result, endpoint=endpoint)
    return ExitCode.OK


def _progress(scan: dict[str, Any]) -> str:
    done = scan.get("frames_written", scan.get("frames"))
    total = scan.get("num_frames")
    if done is None:
        return ""
    if total:
        return f"{done}/{total} frames ({100.0 * done / total:.0f}%)"
    return f"{done} frames"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _pipeline(scan: dict[str, Any]) -> str:
    """Frames stage by stage, their rates, the queues: one line (empty without them)."""
    stages = [(name, scan.get(f"frames_{name}"))
              for name in ("received", "prepared", "written", "published")]
    if all(value is None for _, value in stages):
        return ""
    rates = scan.get("rates") or {}
    parts = []
    for name, value in stages:
        rate = rates.get(name)
        parts.append(f"{name} {value}" + ("" if rate is None else f" ({rate:,.0f}/s)"))
    queues = scan.get("queues") or {}
    if queues:
        parts.append("waiting: " + ", ".join(f"{v} {k}" for k, v in queues.items()))
    if scan.get("files_quarantined"):
        parts.append(f"{scan['files_quarantined']} file(s) quarantined")
    return "; ".join(parts)


def print_status(status: Any, *, endpoint: str, file: TextIO | None = None) -> None:
    """A readable rendering of a status dict: its scans, then its other entries."""
    out = file or sys.stdout
    if not isinstance(status, dict):
        print(f"flyprep daemon at {endpoint}\n  {status!r}", file=out)
        return
    up = status.get("uptime_s")
    print(f"flyprep daemon at {endpoint}: {status.get('state', '?')}"
          + ("" if up is None else f", up {_duration(float(up))}"), file=out)
    scans = status.get("scans")
    if isinstance(scans, dict):  # {name: info} is accepted as well as a list
        scans = [{"scan": name, **(info if isinstance(info, dict) else {"state": info})}
                 for name, info in scans.items()]
    if isinstance(scans, list):
        print(f"scans: {len(scans)}" if scans else "scans: none", file=out)
        for scan in scans:
            if not isinstance(scan, dict):
                print(f"  {scan!r}", file=out)
                continue
            parts = [str(scan.get("state", "")), _progress(scan)]
            missing = scan.get("frames_missing")
            if missing:
                parts.append(f"{missing} missing")
            failed = scan.get("frames_failed")
            if failed:
                parts.append(f"{failed} failed")
            end = scan.get("end_reason")
            if end and scan.get("state") in ("complete", "aborted"):
                parts.append(f"ended by {end}")
            print(f"  {scan.get('scan', '?')}: {', '.join(p for p in parts if p)}", file=out)
            pipeline = _pipeline(scan)
            if pipeline:
                print(f"    {pipeline}", file=out)
            if scan.get("paused"):
                print(f"    paused: {scan['paused']}", file=out)
            if scan.get("files_unmatched"):
                names = ", ".join(scan.get("unmatched_files") or [])
                print(f"    {scan['files_unmatched']} file(s) match no frame pattern, never "
                      f"read: {names}", file=out)
            if scan.get("error"):
                print(f"    error: {scan['error']}", file=out)
            elif scan.get("last_problem"):
                print(f"    last problem: {scan['last_problem']}", file=out)
    for key, value in status.items():
        if key in ("scans", "state", "uptime_s"):
            continue
        if isinstance(value, dict):
            inner = ", ".join(f"{k}={len(v) if isinstance(v, (dict, list)) else v}"
                              for k, v in value.items())
            print(f"{key}: {inner}", file=out)
        else:
            print(f"{key}: {value}", file=out)

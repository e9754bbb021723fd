"""``flyprep status --watch``: a live view of a running daemon, refreshed until Ctrl-C: one
progress bar per active scan with frames/s over the last seconds, ETA, missing and failed
frames and the last error; the terminal is left clean."""

from __future__ import annotations

import time
from typing import Any

from .exit_codes import ExitCode
from .daemon_address import Address

ACTIVE = ("waiting", "acquiring", "queued")


def _eta(remaining: int, rate: float | None) -> str:
    if not remaining:
        return "-"
    if not rate or rate <= 0:
        return "?"
    seconds = int(remaining / rate)
    return f"{seconds // 60}:{seconds % 60:02d}"


def render(status: dict[str, Any], endpoint: str) -> Any:
    """The view of one status reply (a rich renderable); frames/s is the daemon's rate of
    written frames over its last 5 s."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table

    table = Table(title=f"flyprep at {endpoint}: up {status.get('uptime_s', 0):.0f} s",
                  expand=True)
    for column in ("scan", "state", "progress", "frames", "frames/s", "ETA", "missing",
                   "failed", "last error"):
        table.add_column(column, overflow="fold")
    shown = 0
    for scan in status.get("scans", []):
        if scan.get("state") not in ACTIVE:
            continue
        shown += 1
        written, total = int(scan.get("frames_written") or 0), scan.get("num_frames")
        rate = (scan.get("rates") or {}).get("written")  # null for a second at a start
        bar = ProgressBar(total=float(total or 1), completed=float(written if total else 0),
                          width=30)
        table.add_row(scan["scan"], "paused" if scan.get("paused") else scan["state"], bar,
                      f"{written}/{total if total is not None else '?'}",
                      "-" if rate is None else f"{rate:,.0f}",
                      _eta((total or 0) - written, rate) if total else "?",
                      str(scan.get("frames_missing", 0)), str(scan.get("frames_failed", 0)),
                      scan.get("error") or scan.get("last_problem") or "")
    ended = [s for s in status.get("scans", []) if s.get("state") not in ACTIVE]
    footer = f"{shown} active scan(s), {len(ended)} ended; Ctrl-C leaves"
    return Group(table, footer)


def watch(address: Address, *, interval_s: float, timeout_s: float) -> int:
    """Poll ``status`` every ``interval_s`` (at most 1 s) and redraw until Ctrl-C."""
    endpoint = address.endpoint
    from rich.console import Console
    from rich.live import Live

    from ..daemon.control_client import BusError, request

    interval_s = min(max(interval_s, 0.1), 1.0)
    console = Console()
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while True:
            now = time.monotonic()
            try:
                reply = request(endpoint, "status", timeout_s=timeout_s, keys=address.keys)
            except BusError as exc:
                live.update(f"[red]flyprep at {endpoint}: {exc}[/red]")
            else:
                if reply.get("ok"):
                    live.update(render(reply["result"], endpoint))
                else:
                    live.update(f"[red]status refused: {reply.get('error')}[/red]")
            time.sleep(max(0.0, interval_s - (time.monotonic() - now)))
    return ExitCode.OK  # pragma: no cover - left by Ctrl-C (exit 130)

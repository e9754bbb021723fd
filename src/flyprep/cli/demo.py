"""``flyprep demo``: the detector simulator and the daemon together, on a new directory.

The simulator writes a scan (frames with real detector habits, positions, an AstroPix
``.apx`` file) into ``<dir>/incoming/scan_0001`` at a set rate while the daemon, started
in this process with its ZeroMQ sockets on ipc endpoints in ``<dir>``, prepares it into
``<dir>/prepared/scan_0001.ptyd`` chunk by chunk. Progress shows both; the summary says
what was written, how fast, how soon the first chunk was readable, and how to point
PtyPy at it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..config import parse_daemon_config
from ..daemon.service import Daemon
from ..events import ChunkWritten, Event, ScanEnded, ScanStarted
from ..ptyd.reader import open_ptyd
from ..ptyd.verify import verify
from ..sim.simulate import simulate_scan
from ..workers import Call
from .exit_codes import ExitCode

SCAN = "scan_0001"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo`` on an ``add_subparsers()`` object; returns its parser."""
    p = subparsers.add_parser("demo", help="simulate a scan and prepare it live with the daemon")
    p.add_argument("--dir", type=Path, help="where to put it (default: a new temporary dir)")
    p.add_argument("--frames", type=int, default=600, help="frames in the scan (default 600)")
    # The simulator computes each frame (FFT and Poisson noise, ~5 ms) in the demo's own
    # process, beside the daemon: 200 frames/s was asked but ~140 achieved on 2 cores.
    p.add_argument("--rate", type=float, default=100.0,
                   help="detector frames per second (default 100; 0: as fast as possible)")
    p.add_argument("--side", type=int, default=256, help="raw frame side (default 256)")
    p.add_argument("--layout", choices=["ptypy", "hdf5"], default="ptypy")
    p.add_argument("--chunk-frames", type=int, default=100, help="frames per chunk (default 100)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


class _Tracker:
    """Event sink of the demo: counts what the daemon did, for the progress and summary."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames_written = 0
        self.chunks = 0
        self.missing = 0
        self.latencies: list[float] = []
        self.started_at: float | None = None
        self.first_chunk_at: float | None = None
        self.last_chunk_at: float | None = None
        self.ended = threading.Event()
        self.state: str | None = None

    def emit(self, event: Event) -> None:
        now = time.monotonic()
        with self.lock:
            if isinstance(event, ScanStarted):
                self.started_at = now
            elif isinstance(event, ChunkWritten):
                self.chunks += 1
                self.frames_written = event.frame_start + event.n_frames
                self.missing += event.frames_missing
                if event.latency_s is not None:
                    self.latencies.append(event.latency_s)
                if self.first_chunk_at is None:
                    self.first_chunk_at = now
                self.last_chunk_at = now
            elif isinstance(event, ScanEnded):
                self.state = event.state
                self.ended.set()


def demo_config(root: Path, *, chunk_frames: int, layout: str) -> dict[str, Any]:
    """The daemon configuration the demo runs with (shown by ``--dir`` in ``demo.toml``)."""
    return {
        "watch": {"roots": [str(root / "incoming")],
                  "frame_patterns": ["*.npy"] if layout == "ptypy" else ["*.h5"],
                  "quiet_window_s": 1.0, "inactivity_timeout_s": 60.0},
        "prep": {"shape": 128},
        "output": {"directory": str(root / "prepared"), "chunk_frames": chunk_frames},
        "bus": {"events": f"ipc://{root}/events.sock", "control": f"ipc://{root}/control.sock"},
        "apx": {"follow": True, "stream": f"ipc://{root}/apx.sock"},
    }


def run(args: argparse.Namespace) -> int:
    """Run the demo; 0 when the scan was prepared completely and verifies."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(highlight=False)
    root = (args.dir or Path(tempfile.mkdtemp(prefix="flyprep-demo-"))).absolute()
    for sub in ("incoming", "prepared"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if (root / "incoming" / SCAN).exists():
        console.print(f"[red]flyprep demo: {root / 'incoming' / SCAN} exists; "
                      "use a new --dir[/red]")
        return ExitCode.FAILED
    config = parse_daemon_config(demo_config(root, chunk_frames=args.chunk_frames,
                                             layout=args.layout), source="demo")
    tracker = _Tracker()
    daemon = Daemon(config, sinks=[tracker])
    daemon.startup()
    loop = Call("demo-daemon", daemon.main_loop).start()
    written = {"n": 0, "last_at": 0.0}
    sim_error: list[BaseException] = []

    def simulate() -> None:
        try:
            simulate_scan(root / "incoming" / SCAN, layout=args.layout, num_frames=args.frames,
                          frame_side=args.side, rate_hz=args.rate, apx=True,
                          on_frame=lambda i: written.update(n=i + 1, last_at=time.monotonic()))
        except BaseException as exc:  # reported below
            sim_error.append(exc)

    console.print(f"flyprep demo in {root}")
    console.print(f"  detector: {args.frames} frames of {args.side}x{args.side} "
                  f"({args.layout} layout) at {args.rate:g}/s into incoming/{SCAN}")
    console.print(f"  daemon:   prepares them into prepared/{SCAN}.ptyd, "
                  f"{args.chunk_frames} frames per chunk")
    console.print(f"  meanwhile, try: flyprep status --endpoint {daemon.endpoints['control']}")
    t0 = time.monotonic()
    sim = Call("demo-simulator", simulate).start()
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    try:
        with Progress(*columns, console=console, disable=args.no_progress) as progress:
            detector = progress.add_task("detector frames", total=args.frames)
            prepared = progress.add_task("prepared in .ptyd", total=args.frames)
            while not tracker.ended.wait(0.1):
                progress.update(detector, completed=written["n"])
                progress.update(prepared, completed=tracker.frames_written)
                if sim_error or time.monotonic() - t0 > 60 + 2 * args.frames / max(args.rate, 1):
                    break
            progress.update(detector, completed=written["n"])
            progress.update(prepared, completed=tracker.frames_written)
        sim.join()
    finally:
        status = daemon.status()
        daemon.should_exit.set()
        loop.join()
        daemon.shutdown()
    if sim_error:
        console.print(f"[red]flyprep demo: the simulator failed: {sim_error[0]}[/red]")
        return ExitCode.FAILED
    return _summary(console, root, tracker, status, t0, written["last_at"], args)


def _summary(console: Any, root: Path, tracker: _Tracker, status: dict[str, Any],
             t0: float, last_frame_at: float, args: argparse.Namespace) -> int:
    output = root / "prepared" / f"{SCAN}.ptyd"
    if tracker.state is None:
        scans = [s for s in status.get("scans", []) if s.get("scan") == SCAN]
        error = scans[0].get("error") if scans else "the daemon never saw the scan"
        console.print(f"[red]flyprep demo: the scan did not finish: {error}[/red]")
        return ExitCode.FAILED
    findings = [f for f in verify(output) if f.level == "error"]
    ptyd = open_ptyd(output)
    apx = status.get("apx", {})
    apx_files = list(apx.get("files", {}).values()) if isinstance(apx, dict) else []
    readouts = sum(f.get("readouts", 0) for f in apx_files)
    hits = sum(f.get("hits", 0) for f in apx_files)
    first = (tracker.first_chunk_at - tracker.started_at
             if tracker.first_chunk_at and tracker.started_at else None)
    lat = sorted(tracker.latencies)
    console.print("\n[bold]summary[/bold]")
    rows = [
        ("scan", f"{SCAN}: {tracker.state}, {ptyd.n_frames} frames in {len(ptyd.chunks)} "
                 f"chunks, {tracker.missing} missing"),
        ("timing", f"detector wrote {args.frames} frames in {last_frame_at - t0:.2f} s "
                   f"({args.frames / max(last_frame_at - t0, 1e-9):.0f}/s); the last chunk was "
                   f"readable {(tracker.last_chunk_at or last_frame_at) - last_frame_at:.2f} s "
                   "after the last frame"),
        ("first chunk", "readable " + (f"{first:.2f} s after the scan started"
                                       if first is not None else "-")),
        ("chunk latency", f"median {statistics.median(lat) * 1000:.0f} ms, from a chunk's "
                          f"last frame file to the chunk on disk" if lat else "-"),
        ("astropix", f"{readouts} readouts, {hits} hits streamed"),
        ("output", f"{output} ({'verified OK' if not findings else 'verify FAILED'})"),
    ]
    for key, value in rows:
        console.print(f"  {key:<14} {value}")
    for finding in findings:
        console.print(f"[red]  {finding}[/red]")
    console.print("\nPoint PtyPy at it (it can read the file while a scan is still running):\n"
                  "  p.scans.demo.data.name = 'PtydScan'\n"
                  "  p.scans.demo.data.source = 'file'\n"
                  f"  p.scans.demo.data.dfile = '{output}'\n"
                  f"Look inside with: flyprep inspect {output}\n"
                  "Run the daemon on your own directories: flyprep run --config "
                  "configs/daemon.toml")
    return ExitCode.OK if tracker.state == "complete" and not findings else ExitCode.FAILED

"""``flyprep demo``: the detector simulator and the daemon together, on a new directory.

The simulator writes a scan (frames with real detector habits, positions, an AstroPix
``.apx`` file) into ``<dir>/incoming/scan_0001`` at a set rate while the daemon, started
in this process with its ZeroMQ sockets on ipc endpoints in ``<dir>``, prepares it into
``<dir>/prepared/scan_0001.ptyd`` chunk by chunk. Progress shows both; the summary says
what was written, how fast, how soon the first chunk was readable, and how to point
PtyPy at it.

A temporary directory (no ``--dir``) is removed when the demo ends, also on Ctrl-C or an
error, unless ``--keep``; a ``--dir`` is never removed. Either way the demo says what
became of the files. A directory kept holds ``demo.toml``, the daemon's config, for
``flyprep run --config``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..config import parse_daemon_config, to_toml
from ..events import ChunkWritten, Event, ScanEnded, ScanStarted
from ..ptyd.reader import open_ptyd
from ..ptyd.verify import verify
from ..sim.simulate import simulate_scan
from ..workers import Call
from .exit_codes import ExitCode
from .registry import summary

SCAN = "scan_0001"

#: The config that runs the daemon from a clone of the repository (absent when installed
#: from a wheel: the hint then says how to keep the demo's directory instead).
LOCAL_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "local.toml"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``demo`` on an ``add_subparsers()`` object; returns its parser."""
    p = subparsers.add_parser("demo", help=summary("demo"))
    p.add_argument("--dir", type=Path, help="where to put it, kept afterwards (default: a new "
                                            "temporary dir, removed at the end)")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (and say where it is)")
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
    """The daemon configuration the demo runs with (written to ``<dir>/demo.toml``)."""
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
    """Run the demo; 0 when the scan was prepared completely and verifies. A temporary
    directory is removed at the end (also on Ctrl-C or an error) unless ``--keep``."""
    from rich.console import Console

    console = Console(highlight=False)
    temporary = args.dir is None
    root = (args.dir or Path(tempfile.mkdtemp(prefix="flyprep-demo-"))).absolute()
    files = _Files(root, temporary=temporary,
                   keep=not temporary or bool(getattr(args, "keep", False)))
    try:
        return _demo(console, root, args, files)
    finally:
        if not files.keep:
            shutil.rmtree(root, ignore_errors=True)
            if root.exists():
                console.print(f"[red]flyprep demo: could not remove all of {root}[/red]")
        if not files.told:  # the summary did not say it: an error or Ctrl-C
            console.print(f"flyprep demo: {files.fate()}")


class _Files:
    """What becomes of the demo's directory, and whether the demo said so yet."""

    def __init__(self, root: Path, *, temporary: bool, keep: bool) -> None:
        self.root, self.temporary, self.keep = root, temporary, keep
        self.told = False

    def fate(self) -> str:
        """One line saying where the files are, or that they are gone."""
        self.told = True
        if not self.keep:
            return f"removed {self.root} (flyprep demo --keep keeps the files)"
        if self.temporary:
            return f"the files are kept in {self.root} (remove them with: rm -r {self.root})"
        return f"the files are in {self.root} (your --dir: the demo never removes it)"


def _demo(console: Any, root: Path, args: argparse.Namespace, files: _Files) -> int:
    """The demo in ``root``; the caller removes it afterwards, or not."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..daemon.service import Daemon

    for sub in ("incoming", "prepared"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    if (root / "incoming" / SCAN).exists():
        console.print(f"[red]flyprep demo: {root / 'incoming' / SCAN} exists; "
                      "use a new --dir[/red]")
        files.told = True  # nothing of it is the demo's
        return ExitCode.FAILED
    data = demo_config(root, chunk_frames=args.chunk_frames, layout=args.layout)
    config = parse_daemon_config(data, source="demo")
    (root / "demo.toml").write_text("# flyprep demo's daemon: flyprep run --config "
                                    f"{root / 'demo.toml'}\n\n{to_toml(data)}")
    tracker = _Tracker()
    written = {"n": 0, "last_at": 0.0}
    sim_error: list[BaseException] = []
    stop_sim = threading.Event()

    def simulate() -> None:
        try:
            simulate_scan(root / "incoming" / SCAN, layout=args.layout, num_frames=args.frames,
                          frame_side=args.side, rate_hz=args.rate, apx=True, stop_event=stop_sim,
                          on_frame=lambda i: written.update(n=i + 1, last_at=time.monotonic()))
        except BaseException as exc:  # reported below
            sim_error.append(exc)

    daemon = Daemon(config, sinks=[tracker])
    daemon.startup()
    loop = Call("demo-daemon", daemon.main_loop).start()
    sim: Call | None = None
    try:
        console.print(f"flyprep demo in {root}")
        console.print(f"  detector: {args.frames} frames of {args.side}x{args.side} "
                      f"({args.layout} layout) at {args.rate:g}/s into incoming/{SCAN}")
        console.print(f"  daemon:   prepares them into prepared/{SCAN}.ptyd, "
                      f"{args.chunk_frames} frames per chunk")
        console.print(f"  meanwhile, try: flyprep status --endpoint {daemon.endpoints['control']}")
        t0 = time.monotonic()
        # Named before it starts: a Ctrl-C as soon as it runs must still find it to stop.
        sim = Call("demo-simulator", simulate)
        sim.start()
        columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn())
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
        if sim is not None:  # Ctrl-C or an error: the simulator stops writing first
            stop_sim.set()
            sim.join()
        status = daemon.status()
        daemon.should_exit.set()
        loop.join()
        daemon.shutdown()
    if sim_error:
        console.print(f"[red]flyprep demo: the simulator failed: {sim_error[0]}[/red]")
        return ExitCode.FAILED
    return _summary(console, root, tracker, status, t0, written["last_at"], args, files)


def _summary(console: Any, root: Path, tracker: _Tracker, status: dict[str, Any],
             t0: float, last_frame_at: float, args: argparse.Namespace, files: _Files) -> int:
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
        ("files", files.fate()),
    ]
    for key, value in rows:
        console.print(f"  {key:<14} {value}")
    for finding in findings:
        console.print(f"[red]  {finding}[/red]")
    console.print(("\nPoint PtyPy at it (it can read the file while a scan is still running):"
                   if files.keep else "\nTo point PtyPy at the file, keep it (flyprep demo "
                   "--keep, or --dir DIR); PtyPy can read it while a scan is still running:")
                  + "\n"
                  "  p.scans.demo.data.name = 'PtydScan'\n"
                  "  p.scans.demo.data.source = 'file'\n"
                  f"  p.scans.demo.data.dfile = '{output}'")
    if files.keep:
        console.print(f"Look inside with: flyprep inspect {output}")
    console.print(_next_steps(root, files.keep, args.layout))
    return ExitCode.OK if tracker.state == "complete" and not findings else ExitCode.FAILED


def _next_steps(root: Path, kept: bool, layout: str = "ptypy") -> str:
    """How to run the daemon yourself: on the demo's kept directory, or with the clone's
    ``configs/local.toml``; each works as printed."""
    lines = []
    if kept:
        lines += ["Run the daemon on this directory; then, in a second terminal, give it "
                  "another scan:",
                  f"  flyprep run --config {root / 'demo.toml'}",
                  f"  flyprep simulate {root / 'incoming' / 'scan_0002'} --frames 300 "
                  f"--rate 50{' --layout hdf5' if layout == 'hdf5' else ''}"]
    if LOCAL_CONFIG.is_file():
        repo = LOCAL_CONFIG.parents[1]
        here = "" if Path.cwd().resolve() == repo else f"cd {repo} && "
        lines += ["Run the daemon on directories of your own (configs/local.toml says how "
                  "to feed it):",
                  f"  {here}mkdir -p scratch/incoming && flyprep run --config "
                  "configs/local.toml"]
    elif not kept:
        lines.append("Run the daemon yourself: flyprep demo --keep keeps the files and "
                     "says how")
    return "\n".join(lines)

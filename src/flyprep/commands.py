"""What the command-line verbs do, with terminal output (rich) kept out of the library."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import h5py
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task,
                           TextColumn, TimeRemainingColumn)
from rich.text import Text
from rich.table import Table
from rich.tree import Tree

from .config import PrepareConfig
from .errors import FlyprepError, PtydError
from .events import ChunkWritten, Event
from .pipeline import PrepareSummary, prepare_scan
from .ptyd import open_ptyd, verify
from .sources import discover

console = Console(stderr=True, highlight=False)
out = Console(highlight=False)


class FrameRateColumn(ProgressColumn):
    """Frames per second, as rich measures the task's speed."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} frames/s")


@contextmanager
def frame_progress(total: int, enabled: bool, label: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (nothing elsewhere); yields ``advance(n_frames)``."""
    if not (enabled and console.is_terminal):
        yield lambda n: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("frames"), FrameRateColumn(), TimeRemainingColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def run_prepare(scan_dir: Path, output: Path, config: PrepareConfig, *, overwrite: bool,
                allow_missing: bool, progress: bool) -> int:
    """``flyprep prepare``: a finished scan directory into a ``.ptyd``."""
    inp = config.input
    source = discover(scan_dir, layout=inp.layout, dataset=inp.dataset, pattern=inp.frame_glob,
                      positions=inp.positions, positions_dataset=inp.positions_dataset,
                      units=inp.positions_units)
    total = config.scan.num_frames or len(source.frames)
    with frame_progress(total, progress, f"preparing {source.root.name}") as advance:
        class ChunkProgress:
            """Advances the bar by each chunk the writer reports stored."""

            def emit(self, event: Event) -> None:
                if isinstance(event, ChunkWritten):
                    advance(event.n_frames)

        try:
            summary = prepare_scan(source, config, output, overwrite=overwrite,
                                   allow_missing=allow_missing, events=ChunkProgress())
        except FlyprepError:
            _say_what_was_left(output)
            raise
    print_summary(summary)
    return 0


def _say_what_was_left(output: Path) -> None:
    """After a failed run: tell the user about the partial output, if one was published."""
    try:
        ptyd = open_ptyd(output)
    except PtydError:
        return
    if ptyd.state == "aborted":
        kept = ptyd.meta.num_frames - len(ptyd.provenance.get("missing_indices", []))
        console.print(f"flyprep: note: {output} keeps the {kept} frames prepared before the "
                      f"error; it is marked aborted with the rest filled as missing (zero "
                      f"weights). Rerun with --overwrite to replace it.", markup=False,
                      soft_wrap=True)


def print_summary(summary: PrepareSummary) -> None:
    """One paragraph a person reads after a run."""
    mb = summary.bytes_written / 1e6
    out.print(f"wrote {summary.output}: {summary.frames} frames in {summary.chunks} chunks, "
              f"{summary.frames_missing} missing, {summary.seconds:.2f} s "
              f"({summary.frames_per_s:.0f} frames/s, {mb / summary.seconds:.0f} MB/s prepared)",
              soft_wrap=True)


def run_inspect(path: Path) -> int:
    """``flyprep inspect``: tree, meta and a chunk table."""
    ptyd = open_ptyd(path)
    tree = Tree(f"[bold]{path}")
    with h5py.File(path, "r") as f:
        def add(node: Tree, group: h5py.Group, depth: int) -> None:
            for key in group:
                link = group.get(key, getlink=True)
                if isinstance(link, h5py.ExternalLink):
                    target = group.get(key)
                    state = "" if target is not None else " [red](dangling)"
                    node.add(f"{key} -> {link.filename}:{link.path}{state}")
                    continue
                item = group[key]
                if isinstance(item, h5py.Group):
                    if depth < 2:
                        add(node.add(f"{key}/"), item, depth + 1)
                else:
                    node.add(f"{key} {item.shape} {item.dtype}")
        add(tree, f, 0)
    out.print(tree)
    meta = Table("meta", "value", title="meta/")
    for key, value in ptyd.meta.model_dump().items():
        meta.add_row(key, str(value))
    out.print(meta)
    chunks = Table("key", "file", "frames", "first frame", "datasets", title="chunks")
    start = 0
    for entry in ptyd.chunks:
        chunks.add_row(str(entry.key), entry.file or "(in master)", str(entry.n_frames),
                       str(start), ", ".join(entry.datasets))
        start += entry.n_frames
    out.print(chunks)
    line = f"{sum(c.n_frames for c in ptyd.chunks)} of {ptyd.meta.num_frames} frames stored"
    if ptyd.dangling:
        line += f"; dangling links: {ptyd.dangling}"
    if ptyd.gaps:
        line += f"; GAP before resolved chunks at keys {ptyd.gaps}: frames after it are misplaced"
    if ptyd.provenance:
        p = ptyd.provenance
        line += (f"; flyprep scan {p.get('state')}, generation {p.get('generation')}, "
                 f"{p.get('frames_missing')} frames missing")
    out.print(line, soft_wrap=True)
    return 0


def run_verify(path: Path) -> int:
    """``flyprep verify``: exit 1 with the reasons when a rule is broken."""
    findings = verify(path)
    for finding in findings:
        (console if finding.level == "error" else out).print(str(finding), markup=False,
                                                             soft_wrap=True)
    errors = [f for f in findings if f.level == "error"]
    if errors:
        console.print(f"{path}: {len(errors)} error(s): PtyPy would not read it correctly",
                      markup=False)
        return 1
    out.print(f"{path}: OK ({len(findings)} warning(s))", markup=False)
    return 0

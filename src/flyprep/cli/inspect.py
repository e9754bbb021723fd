"""``flyprep inspect``: the tree, ``meta/`` and the chunks of a ``.ptyd``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .exit_codes import ExitCode
from .registry import summary


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``inspect``; returns its parser."""
    p = subparsers.add_parser("inspect", help=summary("inspect"))
    p.add_argument("file", type=Path)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``flyprep inspect`` from parsed arguments."""
    return run_inspect(args.file)


def run_inspect(path: Path) -> int:
    """``flyprep inspect``: tree, meta and a chunk table."""
    import h5py
    from rich.table import Table
    from rich.tree import Tree

    from ..ptyd import open_ptyd
    from .terminal import out

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
    return ExitCode.OK



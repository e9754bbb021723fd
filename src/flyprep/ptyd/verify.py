"""Check a ``.ptyd`` against every rule of the format contract (``docs/ptyd-format.md``)."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from ..errors import PtydError
from ..states import END_STATES, ScanState
from .format import TMP_SUFFIX
from .reader import PtydFile, link_target_path

Level = Literal["error", "warning"]
# Filters every HDF5 build has; anything else needs a plugin on every reader.
BUILTIN_FILTERS = {"gzip", "lzf", "shuffle", "fletcher32", "scaleoffset", "szip", None}
#: meta/ keys PtyPy builds its geometry from: without any of them a reconstruction fails
#: at start.
GEOMETRY_KEYS = ("energy", "distance", "psize")


@dataclass(frozen=True)
class Finding:
    """One broken (error) or questionable (warning) point, with the rule it concerns."""

    level: Level
    rule: str
    h5path: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: [{self.rule}] {self.h5path}: {self.message}"


def verify(path: str | os.PathLike[str]) -> list[Finding]:
    """All findings for the file at ``path``; no error finding means PtyPy can read it."""
    path = Path(path)
    try:
        ptyd = PtydFile(path)
    except PtydError as exc:
        # The reader refuses the file: one finding, in the file it names (a chunk file
        # the master links to is named in the message).
        where = "" if exc.path == str(path) else f"{exc.path}: "
        return [Finding("error", _rule_of(exc, path), exc.h5path, where + exc.reason)]
    findings: list[Finding] = []
    add = findings.append
    meta = ptyd.meta

    missing = [k for k in GEOMETRY_KEYS if getattr(meta, k) is None]
    if missing:
        add(Finding("error", "meta-geometry", "/meta",
                    f"{', '.join(missing)} missing or None: PtyPy builds its geometry from "
                    "energy, distance and psize and fails at start without them"))

    if not ptyd.chunks or ptyd.chunks[0].key != 0:
        add(Finding("error", "3-first-chunk", "/chunks/0",
                    "does not resolve: PtyPy refuses the file ('contains no data')"))
    keys = [c.key for c in ptyd.chunks]
    if keys and keys != list(range(keys[0], keys[0] + len(keys))):
        add(Finding("error", "4-order", "/chunks",
                    f"resolved chunk keys {keys} have gaps: later frames shift onto wrong positions"))
    gaps = [d for d in ptyd.dangling if keys and d < keys[-1]]
    if gaps:
        add(Finding("error", "4-order", "/chunks",
                    f"dangling links {gaps} lie before resolved chunks: frames would shift"))

    first = ptyd.chunks[0] if ptyd.chunks else None
    start = 0
    with h5py.File(path, "r") as f:
        for entry in ptyd.chunks:
            where = f"/chunks/{entry.key}"
            group = f[where]
            if first is not None and entry.datasets != first.datasets:
                add(Finding("error", "4-same-datasets", where,
                            f"holds {list(entry.datasets)}, chunk 0 holds {list(first.datasets)}"))
            _check_chunk(group, where, entry.n_frames, start, meta.shape, add)
            if entry.file is not None and os.path.basename(entry.file) != entry.file:
                add(Finding("warning", "6-bare-links", where,
                            f"link target {entry.file!r} is not a bare file name"))
            start += entry.n_frames

    total = sum(c.n_frames for c in ptyd.chunks)  # ptyd.n_frames refuses gaps
    if total > meta.num_frames:
        add(Finding("error", "2-num-frames", "/meta/num_frames",
                    f"{total} frames stored but num_frames is {meta.num_frames}"))
    if ptyd.state in END_STATES and total != meta.num_frames:
        add(Finding("error", "2-num-frames", "/meta/num_frames",
                    f"scan is {ptyd.state} with {total} of {meta.num_frames} frames: readers hang"))
    sizes = [c.n_frames for c in ptyd.chunks]
    if any(s != sizes[0] for s in sizes[:-1]):
        add(Finding("warning", "4-order", "/chunks",
                    f"chunks before the last differ in size: {sizes}"))
    if len(sizes) > 20 and np.mean(sizes) < 20:
        add(Finding("warning", "8-chunk-count", "/chunks",
                    f"{len(sizes)} chunks of ~{np.mean(sizes):.0f} frames: readers re-open every "
                    "chunk on each poll; prefer ~100 frames per chunk"))
    leftovers = sorted(p.name for p in path.parent.glob(path.name + "*" + TMP_SUFFIX))
    # While a scan is acquiring, the chunk filling and the next master are being written.
    if leftovers and ptyd.state != ScanState.ACQUIRING:
        add(Finding("warning", "7-atomic-writes", "/",
                    f"temporary files left beside the master: {leftovers}"))
    stale = _stale_chunk_files(path, ptyd.state)
    if stale:
        add(Finding("warning", "stale-chunks", "/chunks",
                    f"files named like chunks after the last linked one lie beside the "
                    f"master: {stale} (left from an earlier run?); a writer that links them "
                    "before rewriting them would serve their old frames"))
    return findings


def _rule_of(exc: PtydError, path: Path) -> str:
    """The rule a reader's refusal concerns."""
    if exc.path != str(path):
        return "4-order"  # a linked chunk file is unreadable: PtyPy skips it, frames shift
    if exc.h5path.startswith("/meta"):
        if "tag" in exc.reason or "'type' attribute" in exc.reason:
            return "1-type-tags"
        if exc.h5path.startswith("/meta/num_frames"):
            return "2-num-frames"
        key = exc.h5path.split("/")[2] if exc.h5path.count("/") >= 2 else ""
        if key in GEOMETRY_KEYS + ("center", "shape"):
            return "meta-geometry"
    return "layout"


def _stale_chunk_files(path: Path, state: str | None) -> list[str]:
    """Files beside the chunks named like chunks after the last linked key.

    The pattern comes from the first external link's file name: if it ends in digits,
    siblings with the same prefix and a larger number than every linked file (resolved or
    dangling) are stale. While flyprep is still acquiring, such a file may be a finished
    chunk waiting for the next publication of the master, so then only files older than
    the first linked chunk count. Append mode or other names give no pattern: no findings.
    """
    with h5py.File(path, "r") as f:
        group = f["chunks"]
        links = {int(name): group.get(name, getlink=True) for name in group}
    files = [links[k].filename for k in sorted(links) if isinstance(links[k], h5py.ExternalLink)]
    if not files:
        return []
    first = link_target_path(path, files[0])
    match = re.fullmatch(r"(.*?)(\d+)", first.name)
    if match is None:
        return []
    pattern = re.compile(re.escape(match.group(1)) + r"(\d+)")
    linked = {link_target_path(path, name).name for name in files}
    last = max(int(m.group(1)) for m in map(pattern.fullmatch, linked) if m is not None)
    try:
        newest_allowed = first.stat().st_mtime if state == ScanState.ACQUIRING else float("inf")
    except OSError:  # first chunk dangling: nothing to compare with
        newest_allowed = float("inf")
    stale = []
    for sibling in first.parent.glob(glob.escape(match.group(1)) + "*"):
        m = pattern.fullmatch(sibling.name)
        if (m is not None and int(m.group(1)) > last and sibling.name not in linked
                and sibling.stat().st_mtime < newest_allowed):
            stale.append((int(m.group(1)), sibling.name))
    return [name for _, name in sorted(stale)]


def _check_chunk(group: h5py.Group, where: str, n: int, start: int,
                 shape: tuple[int, int], add) -> None:
    """Layout, order and storage findings for one resolved chunk holding frames
    ``start .. start + n - 1``."""
    data = group["data"]
    if data.ndim != 3 or tuple(data.shape[1:]) != tuple(shape):
        add(Finding("error", "layout", f"{where}/data",
                    f"shape {data.shape}, expected (n, {shape[0]}, {shape[1]}) from meta/shape"))
    if data.chunks is not None and data.ndim == 3 and data.chunks[0] != 1:
        add(Finding("warning", "9-hdf5-chunking", f"{where}/data",
                    f"HDF5 chunks {data.chunks}: PtyPy reads frame by frame, (1, H, W) is ~6x faster"))
    for name in ("data", "weights"):
        if name in group and group[name].compression not in BUILTIN_FILTERS:
            add(Finding("warning", "9-filters", f"{where}/{name}",
                        f"filter {group[name].compression!r} needs a plugin on every reader"))
    pos = group.get("positions")
    if pos is None:
        add(Finding("error", "layout", f"{where}/positions", "missing"))
    elif tuple(pos.shape) != (n, 2):
        add(Finding("error", "layout", f"{where}/positions", f"shape {pos.shape}, expected ({n}, 2)"))
    weights = group.get("weights")
    if weights is not None and tuple(weights.shape) != tuple(data.shape):
        add(Finding("error", "layout", f"{where}/weights",
                    f"shape {weights.shape} differs from data {data.shape}"))
    idx = group.get("indices")
    if idx is not None:
        stored = idx[()]
        if stored.shape != (n,) or not np.array_equal(stored, np.arange(start, start + n)):
            add(Finding("error", "4-order", f"{where}/indices",
                        f"stored indices {stored[:3].tolist()}... are not frames "
                        f"{start}..{start + n - 1} that PtyPy will assign"))

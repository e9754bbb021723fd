"""Crash-safe resume: reconcile an output directory after the daemon died mid-scan.

:func:`plan_reconcile` only reads: it decides which chunk files to keep (the contiguous
prefix ``0..k-1`` of chunks that open as HDF5 and whose ``flyprep`` provenance, shapes
and parameters match this scan), which to move aside and which temporary files to
remove. :func:`apply_reconcile` acts on that plan: it publishes a master listing the kept
chunks (state ``acquiring``, generation continuing from the old master's), then renames
every other chunk file to ``<name>.orphaned-<n>`` (never deletes one) and removes the
``*.flyprep-tmp`` files. :func:`reconcile` does both. The returned :class:`ResumeState`
says where to continue; :class:`~flyprep.ptyd.writer.OutputMode` ``resuming(state)``
takes it, so that writing the remaining chunks gives the file an uninterrupted run gives.

A scan whose master says ``complete`` or ``aborted`` and whose chunks are all there is
reported :attr:`~ResumeState.finished`, and nothing is touched.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..states import END_STATES, ScanState
from ..errors import OutputError
from .format import (
    ChunkGrid,
    TMP_SUFFIX,
    MasterPlan,
    ScanMeta,
    chunk_file_name,
    chunk_name_regex,
    now_iso,
    tmp_name,
)
from .safefile import guarded_h5
from .writer import fsync_path, master_image, publish, write_master_state

ORPHAN_INFIX = ".orphaned-"


@dataclass(frozen=True)
class OldMaster:
    """What the previous master said (all None/empty when it is absent or unreadable)."""

    exists: bool = False
    readable: bool = False
    state: str | None = None
    generation: int = 0
    created: str | None = None
    chunk_files: tuple[str, ...] = ()
    missing_indices: tuple[int, ...] | None = None


@dataclass(frozen=True)
class KeptChunk:
    """A chunk file that passed every check."""

    key: int
    name: str
    frame_start: int
    frame_stop: int
    missing_indices: tuple[int, ...]
    params_json: str
    params_hash: str


@dataclass(frozen=True)
class ReconcilePlan:
    """What :func:`apply_reconcile` will do; nothing has been touched yet."""

    master: Path
    chunk_format: str
    chunk_frames: int
    meta: ScanMeta | None
    old: OldMaster
    kept: tuple[KeptChunk, ...]
    orphans: tuple[tuple[str, str], ...]  # (chunk file name, why it is not kept)
    tmp_files: tuple[str, ...]
    finished: bool

    @property
    def next_key(self) -> int:
        return len(self.kept)

    @property
    def next_frame(self) -> int:
        return self.kept[-1].frame_stop if self.kept else 0


@dataclass(frozen=True)
class ResumeState:
    """Where a reconciled scan continues (see :meth:`OutputMode.resuming
    <flyprep.ptyd.writer.OutputMode.resuming>`)."""

    master: Path
    next_key: int
    next_frame: int
    chunk_files: tuple[str, ...]
    missing_indices: tuple[int, ...]
    removed_tmp: tuple[str, ...]
    orphaned: tuple[tuple[str, str, str], ...]  # (old name, new name, reason)
    generation: int  # of the master as it is now (0: no master)
    finished: bool
    chunk_frames: int
    chunk_format: str
    params_hash: str | None  # the kept chunks' (None when none is kept)
    created: str | None  # the scan's creation time, kept across the restart
    master_removed: bool = False


def reconcile(master: str | os.PathLike[str], *, chunk_format: str, meta: ScanMeta | None,
              chunk_frames: int, params_hash: str | None) -> ResumeState:
    """Plan, then act: bring ``master``'s directory to a state a writer can continue.
    ``meta`` None (the scan cannot say what its chunks should hold): nothing is kept."""
    plan = plan_reconcile(master, chunk_format=chunk_format, meta=meta,
                          chunk_frames=chunk_frames, params_hash=params_hash)
    return apply_reconcile(plan)


# -- planning (read only) -------------------------------------------------------------
def plan_reconcile(master: str | os.PathLike[str], *, chunk_format: str, meta: ScanMeta | None,
                   chunk_frames: int, params_hash: str | None,
                   deep: bool = False) -> ReconcilePlan:
    """Decide what to keep, move aside and remove. With ``deep``, every frame of every
    chunk is read (else only the small datasets and the last frame of the stacks)."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    master = Path(master).absolute()
    pattern = chunk_name_regex(master.name, chunk_format)
    tmp_files, chunk_names = [], []
    if master.with_name(tmp_name(master.name)).exists():
        tmp_files.append(tmp_name(master.name))
    for p in sorted(master.parent.iterdir()):
        if pattern.match(p.name):
            (tmp_files if p.name.endswith(TMP_SUFFIX) else chunk_names).append(p.name)
    old = _read_old_master(master)
    by_name = set(chunk_names)
    kept: list[KeptChunk] = []
    orphans: list[tuple[str, str]] = []
    broken: str | None = None  # why the prefix ended
    key = 0
    if meta is None and chunk_names:
        broken = "chunk 0: the scan's preparation could not be recovered from it"
    grid = None if meta is None else ChunkGrid(meta.num_frames, chunk_frames)
    while broken is None and grid is not None:
        start = grid.start(key)
        if key >= grid.n_chunks:
            break
        name = chunk_file_name(master.name, chunk_format, key)
        if name not in by_name:
            break
        expected_hash = params_hash if params_hash is not None else (
            kept[0].params_hash if kept else None)
        reason, chunk = _check_chunk(master.parent / name, key, start,
                                     grid.stop(key) - start, meta, expected_hash, old, deep)
        if chunk is None:
            broken = f"chunk {key}: {reason}"
            orphans.append((name, reason))
            by_name.discard(name)
            break
        kept.append(chunk)
        by_name.discard(name)
        key += 1
    if broken is not None:
        after = f"after the invalid {broken}"
    elif grid is not None and len(kept) >= grid.n_chunks:
        after = f"beyond the scan's {meta.num_frames} frames"
    else:
        after = f"after the missing chunk {len(kept)}"
    for name in sorted(by_name):
        orphans.append((name, after))
    frames = kept[-1].frame_stop if kept else 0
    finished = (meta is not None and old.state in END_STATES
                and frames == meta.num_frames
                and not orphans and old.chunk_files == tuple(c.name for c in kept))
    return ReconcilePlan(master, chunk_format, chunk_frames, meta, old, tuple(kept),
                         tuple(orphans), tuple(tmp_files), finished)


def resolved_of_first_chunk(master: str | os.PathLike[str], chunk_format: str
                            ) -> dict[str, Any] | None:
    """What the first chunk of an earlier run resolved (its provenance's
    ``params.resolved``: raw frame type, ROI side, centre), or None."""
    master = Path(master)
    path = master.with_name(chunk_file_name(master.name, chunk_format, 0))
    try:
        with h5py.File(path, "r") as f:
            prov = json.loads(f.attrs["flyprep"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
    resolved = prov.get("params", {}).get("resolved") if isinstance(prov, dict) else None
    return resolved if isinstance(resolved, dict) else None


def finished_state(master: str | os.PathLike[str]) -> str | None:
    """``complete`` or ``aborted`` when ``master`` is a readable, finished master (whatever
    settings it was made with), else None."""
    old = _read_old_master(Path(master))
    return old.state if old.readable and old.state in END_STATES else None


def _read_old_master(master: Path) -> OldMaster:
    if not master.exists():
        return OldMaster()
    try:
        with h5py.File(master, "r") as f:
            group = f.get("flyprep")
            status = json.loads(group.attrs["status"]) if group is not None else {}
            missing = (tuple(int(i) for i in group["missing_indices"][()])
                       if group is not None and "missing_indices" in group else None)
            links = []
            chunks = f.get("chunks")
            if chunks is not None:
                for k in sorted(chunks, key=int):
                    link = chunks.get(k, getlink=True)
                    links.append(link.filename if isinstance(link, h5py.ExternalLink) else "")
    except (OSError, KeyError, ValueError, TypeError):
        return OldMaster(exists=True)
    if not isinstance(status, dict):
        return OldMaster(exists=True)
    return OldMaster(exists=True, readable=True, state=status.get("state"),
                     generation=int(status.get("generation", 0)),
                     created=status.get("created"), chunk_files=tuple(links),
                     missing_indices=missing)


def _check_chunk(path: Path, key: int, start: int, n: int, meta: ScanMeta,
                 params_hash: str | None, old: OldMaster, deep: bool
                 ) -> tuple[str, KeptChunk | None]:
    """``("", chunk)`` for a chunk file fit to keep, else ``(reason, None)``."""
    shape = (n, *meta.shape)
    try:
        with h5py.File(path, "r") as f:
            try:
                prov = json.loads(f.attrs["flyprep"])
            except (KeyError, TypeError, ValueError):
                return "no readable 'flyprep' provenance attribute", None
            if prov.get("chunk") != key:
                return f"provenance says chunk {prov.get('chunk')}, expected {key}", None
            if (prov.get("frame_start"), prov.get("frame_stop")) != (start, start + n):
                return (f"provenance frames [{prov.get('frame_start')}, "
                        f"{prov.get('frame_stop')}), expected [{start}, {start + n})"), None
            if params_hash is not None and prov.get("params_hash") != params_hash:
                return (f"params_hash {prov.get('params_hash')}, expected {params_hash}"), None
            for name, want in (("data", shape), ("weights", shape), ("positions", (n, 2)),
                               ("indices", (n,))):
                ds = f.get(name)
                if not isinstance(ds, h5py.Dataset) or ds.shape != want:
                    got = getattr(ds, "shape", None)
                    return f"'{name}' has shape {got}, expected {want}", None
            if not np.array_equal(f["indices"][()], np.arange(start, start + n)):
                return "stored 'indices' do not match the chunk's frames", None
            _ = f["positions"][()]
            weights = f["weights"][()]
            if deep:
                f["data"][()]
            else:
                f["data"][n - 1]
    except OSError as exc:
        return f"not readable HDF5 ({exc})", None
    stop = start + n
    count = int(prov.get("frames_missing", -1))
    missing = None
    if old.missing_indices is not None:
        missing = tuple(i for i in old.missing_indices if start <= i < stop)
        if len(missing) != count:
            missing = None  # the old master does not cover this chunk: ask the masks
    if missing is None:
        blank = ~weights.reshape(n, -1).any(axis=1)
        missing = tuple(int(i) for i in np.flatnonzero(blank) + start)
        if len(missing) != count:
            return (f"provenance counts {count} missing frames, the masks show "
                    f"{len(missing)}"), None
    params = json.dumps(prov.get("params", {}), sort_keys=True, default=str)
    return "", KeptChunk(key, path.name, start, stop, missing, params,
                         str(prov.get("params_hash")))


# -- acting ---------------------------------------------------------------------------
def apply_reconcile(plan: ReconcilePlan) -> ResumeState:
    """Carry out ``plan``: publish the rebuilt master first (readers then see only the
    kept chunks), then move the other chunk files aside and remove temporary files."""
    master, old, kept = plan.master, plan.old, plan.kept
    generation = old.generation
    created = old.created
    missing = tuple(i for c in kept for i in c.missing_indices)
    master_removed = False
    try:
        if plan.finished:
            removed = _remove_tmp(master, plan.tmp_files)
            return ResumeState(master, plan.next_key, plan.next_frame,
                               tuple(c.name for c in kept), missing, removed, (), generation,
                               True, plan.chunk_frames, plan.chunk_format,
                               kept[0].params_hash if kept else None, created)
        # Temporary files first: no reader ever sees them, and the master's is reused.
        removed = _remove_tmp(master, plan.tmp_files)
        if kept:
            created = created or now_iso()
            generation += 1
            _publish_master(plan, generation, created, missing)
        elif old.exists:
            # A master without chunk 0 breaks the format: gone before any chunk moves.
            master.unlink()
            master_removed = True
            # The generation goes on from the old master's: a reader that saw N must
            # recognise the next master as newer.
        orphaned = []
        for name, reason in plan.orphans:
            new = _orphan_name(master.parent, name)
            os.replace(master.parent / name, master.parent / new)
            orphaned.append((name, new, reason))
        fsync_path(master.parent)
    except OSError as exc:
        raise OutputError(f"{master}: could not reconcile the output: {exc}") from exc
    return ResumeState(master, plan.next_key, plan.next_frame, tuple(c.name for c in kept),
                       missing, removed, tuple(orphaned), generation, False,
                       plan.chunk_frames, plan.chunk_format,
                       kept[0].params_hash if kept else None, created, master_removed)


def _publish_master(plan: ReconcilePlan, generation: int, created: str,
                    missing: tuple[int, ...]) -> None:
    first = plan.kept[0]
    master_plan = MasterPlan(
        meta=plan.meta, chunk_files=tuple(c.name for c in plan.kept), state=ScanState.ACQUIRING,
        generation=generation, frames_written=plan.next_frame, missing_indices=missing,
        chunk_frames=plan.chunk_frames, params_json=first.params_json,
        params_hash=first.params_hash, flyprep_version=__version__, created=created)
    tmp = plan.master.with_name(tmp_name(plan.master.name))
    try:
        with guarded_h5(tmp, image=master_image(plan.meta, created)) as f:
            write_master_state(f, master_plan)
        publish(tmp, plan.master)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _orphan_name(directory: Path, name: str) -> str:
    n = 0
    while (directory / f"{name}{ORPHAN_INFIX}{n}").exists():
        n += 1
    return f"{name}{ORPHAN_INFIX}{n}"


def _remove_tmp(master: Path, names: tuple[str, ...]) -> tuple[str, ...]:
    removed = []
    for name in names:
        path = master.parent / name
        if path.exists():
            path.unlink()
            removed.append(name)
    return tuple(removed)


def describe(state: ResumeState) -> dict[str, Any]:
    """The state as plain JSON-able data (for the daemon's log)."""
    return {"master": str(state.master), "finished": state.finished,
            "next_key": state.next_key, "next_frame": state.next_frame,
            "kept": list(state.chunk_files), "removed_tmp": list(state.removed_tmp),
            "orphaned": [list(o) for o in state.orphaned], "generation": state.generation,
            "master_removed": state.master_removed}

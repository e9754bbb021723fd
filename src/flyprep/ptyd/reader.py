"""Read a ``.ptyd`` (flyprep's or PtyPy's) the way PtyPy's ``PtydScan`` does.

:func:`open_ptyd` returns a :class:`PtydFile` whose ``meta`` and chunk list are validated
pydantic models. Chunks are found exactly as PtyPy finds them: ``chunks/`` keys as
integers, dangling links skipped, read in integer key order; the global index of a frame
is its position in that order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import h5py
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from ..errors import PtydError
from .tags import read_tagged

try:  # registers the compression filters (bitshuffle, LZ4, ...) with HDF5 for reading
    import hdf5plugin  # noqa: F401
except ImportError:  # pragma: no cover - plain gzip/lzf files still read
    pass


class PtydMeta(BaseModel):
    """``meta/`` as PtyPy needs it; unknown keys are kept."""

    model_config = ConfigDict(frozen=True, extra="allow", arbitrary_types_allowed=True)

    num_frames: StrictInt = Field(ge=0)
    shape: Tuple[int, int]
    center: Optional[Tuple[float, float]] = None
    psize: Optional[Tuple[float, float]] = None
    energy: Optional[float] = None
    distance: Optional[float] = None
    propagation: Optional[str] = None
    label: Optional[str] = None
    version: Optional[float] = None

    @field_validator("shape", "center", "psize", mode="before")
    @classmethod
    def _pair(cls, v: Any) -> Any:
        if v is None:
            return None
        arr = np.asarray(v).reshape(-1)
        if arr.size == 1:
            arr = np.repeat(arr, 2)
        if arr.size != 2:
            raise ValueError(f"expected 2 values, got {arr.size}")
        return tuple(arr.tolist())

    @field_validator("shape")
    @classmethod
    def _square(cls, v: Tuple[int, int]) -> Tuple[int, int]:
        if v[0] != v[1] or v[0] < 1:
            raise ValueError(f"frames must be square and non-empty, got {v}")
        return v


class ChunkEntry(BaseModel):
    """One resolved chunk: its key, where it lives and what it holds."""

    model_config = ConfigDict(frozen=True)

    key: int
    file: Optional[str]  # link target as stored; None for a chunk inside the master
    n_frames: int = Field(ge=0)
    datasets: Tuple[str, ...]


@dataclass(frozen=True)
class ChunkArrays:
    """The arrays of one chunk, frames numbered globally from ``frame_start``."""

    key: int
    frame_start: int
    data: np.ndarray
    positions: np.ndarray
    weights: np.ndarray | None
    indices: np.ndarray | None


def _load_meta(f: h5py.File, path: str) -> PtydMeta:
    if "meta" not in f:
        raise PtydError(path, "/meta", "missing: PtyPy reads geometry and num_frames from it")
    raw = read_tagged(f["meta"], path=path)
    if raw.get("num_frames") is None:
        raise PtydError(path, "/meta/num_frames", "missing or None: PtyPy needs an integer")
    try:
        return PtydMeta.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise PtydError(path, f"/meta/{key}", f"{first['msg']} (value {first.get('input')!r})") from exc


def _list_chunks(f: h5py.File, path: str) -> tuple[list[ChunkEntry], list[int]]:
    """Resolved chunks in integer key order, and the keys of dangling links."""
    if "chunks" not in f:
        raise PtydError(path, "/chunks", "missing")
    group = f["chunks"]
    entries, dangling = [], []
    for name in group:
        try:
            key = int(name)
        except ValueError:
            raise PtydError(path, f"/chunks/{name}", "chunk keys must be integers") from None
        link = group.get(name, getlink=True)
        target = group.get(name)
        if target is None:
            dangling.append(key)
            continue
        if not isinstance(target, h5py.Group) or "data" not in target:
            raise PtydError(path, f"/chunks/{name}", "chunk has no 'data' dataset")
        file = link.filename if isinstance(link, h5py.ExternalLink) else None
        entries.append(ChunkEntry(key=key, file=file, n_frames=int(target["data"].shape[0]),
                                  datasets=tuple(sorted(target.keys()))))
    entries.sort(key=lambda e: e.key)
    return entries, sorted(dangling)


def _load_provenance(f: h5py.File, path: str) -> dict[str, Any]:
    """flyprep's ``flyprep/status`` (empty for files flyprep did not write)."""
    group = f.get("flyprep")
    if group is None or "status" not in group.attrs:
        return {}
    try:
        status = json.loads(group.attrs["status"])
    except (TypeError, ValueError) as exc:
        raise PtydError(path, "/flyprep", f"status attribute is not JSON: {exc}") from exc
    if "missing_indices" in group:
        status["missing_indices"] = group["missing_indices"][()].tolist()
    return status


class PtydFile:
    """A ``.ptyd`` opened read-only: validated meta, chunk list, chunk and frame iteration.

    The master is opened and closed for each call, as PtyPy's poller does, so a writer
    can publish new versions between calls.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.refresh()

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except FileNotFoundError as exc:
            raise PtydError(self.path, "/", "file not found") from exc
        except OSError as exc:
            raise PtydError(self.path, "/", f"not a readable HDF5 file: {exc}") from exc

    def refresh(self) -> None:
        """Re-read meta, the chunk list and flyprep's provenance from the master."""
        p = str(self.path)
        with self._open() as f:
            self.meta = _load_meta(f, p)
            self.chunks, self.dangling = _list_chunks(f, p)
            self.provenance = _load_provenance(f, p)

    @property
    def n_frames(self) -> int:
        """Frames readable now (resolved chunks only)."""
        return sum(c.n_frames for c in self.chunks)

    @property
    def state(self) -> str | None:
        """flyprep's scan state, or None for a file flyprep did not write."""
        return self.provenance.get("state")

    def read_chunk(self, entry: ChunkEntry, *, frame_start: int = 0) -> ChunkArrays:
        """The arrays of one chunk."""
        with self._open() as f:
            where = f"/chunks/{entry.key}"
            group = f.get(where)
            if group is None:
                raise PtydError(self.path, where, "chunk disappeared or its link dangles")
            try:
                data = group["data"][()]
                positions = group["positions"][()] if "positions" in group else None
                weights = group["weights"][()] if "weights" in group else None
                indices = group["indices"][()] if "indices" in group else None
            except (OSError, KeyError) as exc:
                raise PtydError(self.path, where, f"unreadable chunk: {exc}") from exc
        if positions is None:
            raise PtydError(self.path, f"{where}/positions", "missing")
        if positions.shape != (data.shape[0], 2):
            raise PtydError(self.path, f"{where}/positions",
                            f"shape {positions.shape}, expected ({data.shape[0]}, 2)")
        return ChunkArrays(entry.key, frame_start, data, positions, weights, indices)

    def iter_chunks(self) -> Iterator[ChunkArrays]:
        """Every resolved chunk in PtyPy's order, with its global first frame index."""
        start = 0
        for entry in self.chunks:
            yield self.read_chunk(entry, frame_start=start)
            start += entry.n_frames

    def iter_frames(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        """``(global_index, frame, position, weights_or_None)`` for every frame."""
        for chunk in self.iter_chunks():
            for i in range(chunk.data.shape[0]):
                w = None if chunk.weights is None else chunk.weights[i]
                yield chunk.frame_start + i, chunk.data[i], chunk.positions[i], w


def open_ptyd(path: str | os.PathLike[str]) -> PtydFile:
    """Open and validate a ``.ptyd``; raises :class:`PtydError` naming file, node and reason."""
    return PtydFile(path)

"""Read a ``.ptyd`` (flyprep's or PtyPy's) the way PtyPy's ``PtydScan`` does.

:func:`open_ptyd` returns a :class:`PtydFile` whose ``meta`` and chunk list are validated
pydantic models. Chunks are found exactly as PtyPy finds them: ``chunks/`` keys as
integers, dangling links skipped, read in integer key order; the global index of a frame
is its position in that order.

What is refused, always with one :class:`~flyprep.errors.PtydError` naming the file, the
HDF5 path and the reason:

- when opening: a ``meta/`` PtyPy cannot use (missing tags, no integer ``num_frames``,
  non-square ``shape``, non-positive or non-finite ``energy``/``distance``/``psize``,
  non-finite ``center``); a chunk whose ``data`` is not ``(n, H, W)`` with meta's shape; a
  linked chunk file that exists but HDF5 cannot read (PtyPy would skip it like a dangling
  link and shift every later frame). A link whose file does not exist is legal (dangling).
- when numbering frames (:attr:`PtydFile.n_frames`, :meth:`PtydFile.iter_chunks`,
  :meth:`PtydFile.iter_frames`): a gap, i.e. a key before the last resolved chunk that does
  not resolve. The file still opens, so that ``inspect`` and ``verify`` can report it
  (:attr:`PtydFile.gaps`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional, Tuple

import h5py
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from ..errors import PtydError
from .tags import read_tagged

try:  # registers the compression filters (bitshuffle, LZ4, ...) with HDF5 for reading
    import hdf5plugin  # noqa: F401
except ImportError:  # pragma: no cover - plain gzip/lzf files still read
    pass


#: A finite number greater than zero (pixel size entries, energy, distance).
PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]
#: A finite number (centre entries).
Finite = Annotated[float, Field(allow_inf_nan=False)]


class PtydMeta(BaseModel):
    """``meta/`` as PtyPy needs it; unknown keys are kept.

    Geometry values may be absent (None: ``verify`` reports that PtyPy cannot start without
    energy, distance and psize), but when present they must be usable: energy, distance
    and psize entries finite and > 0, centre entries finite, shape square.
    """

    model_config = ConfigDict(frozen=True, extra="allow", arbitrary_types_allowed=True)

    num_frames: StrictInt = Field(ge=0)
    shape: Tuple[int, int]
    center: Optional[Tuple[Finite, Finite]] = None
    psize: Optional[Tuple[PositiveFinite, PositiveFinite]] = None
    energy: Optional[PositiveFinite] = None
    distance: Optional[PositiveFinite] = None
    propagation: Optional[str] = None
    label: Optional[str] = None
    version: Optional[float] = None

    @field_validator("shape", "center", "psize", mode="before")
    @classmethod
    def _pair(cls, v: Any) -> Any:
        """A scalar or two numbers as a pair; strings and booleans are not numbers."""
        if v is None:
            return None
        arr = np.asarray(v).reshape(-1)
        if arr.dtype.kind not in "iuf":
            raise ValueError(f"expected numbers, got dtype {arr.dtype}")
        if arr.size == 1:
            arr = np.repeat(arr, 2)
        if arr.size != 2:
            raise ValueError(f"expected 2 values, got {arr.size}")
        return tuple(arr.tolist())

    @field_validator("energy", "distance", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        """A real number, not a string or boolean pydantic would coerce."""
        if v is None or (isinstance(v, (int, float, np.integer, np.floating))
                         and not isinstance(v, (bool, np.bool_))):
            return v
        raise ValueError(f"expected a number, got {type(v).__name__}")

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
        key, *where = first["loc"]
        entry = f"entry {where[0]}: " if where else ""
        raise PtydError(path, f"/meta/{key}",
                        f"{entry}{first['msg']} (value {first.get('input')!r})") from exc


def link_target_path(master: str | os.PathLike[str], filename: str) -> Path:
    """Where the file of an external link stored in ``master`` lives: ``filename`` itself
    when absolute, else relative to the master's directory (as HDF5 resolves it)."""
    target = Path(filename)
    return target if target.is_absolute() else Path(master).parent / target


def _check_unresolved_link(path: str, link: h5py.ExternalLink) -> None:
    """Refuse an external link that does not resolve although its file exists.

    A missing file is a legal dangling link (declared before its file is written). A file
    that exists but HDF5 cannot open (corrupt, truncated, locked by a writer), or that lacks
    the link's target node, would be skipped by PtyPy like a dangling link, shifting every
    later chunk onto the wrong frames: a :class:`PtydError` naming that chunk file.
    """
    target = link_target_path(path, link.filename)
    if not target.exists():
        return
    try:
        with h5py.File(target, "r") as chunk:
            if link.path in chunk:
                return  # the file appeared after the link was looked up: still dangling then
    except OSError as exc:
        raise PtydError(target, "/", f"chunk file is not readable HDF5 ({exc}); PtyPy would "
                                     "skip it and shift every later frame") from exc
    raise PtydError(target, link.path, "missing: the master's external link points at it")


def _list_chunks(f: h5py.File, path: str, shape: Tuple[int, int]) -> tuple[list[ChunkEntry], list[int]]:
    """Resolved chunks in integer key order, and the keys of dangling links.

    Every resolved chunk must hold ``data`` of frames with meta's ``shape``; an external
    link that does not resolve must not have a file (see :func:`_check_unresolved_link`).
    """
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
            if isinstance(link, h5py.ExternalLink):
                _check_unresolved_link(path, link)
            dangling.append(key)
            continue
        if not isinstance(target, h5py.Group) or not isinstance(target.get("data"), h5py.Dataset):
            raise PtydError(path, f"/chunks/{name}", "chunk has no 'data' dataset")
        data_shape = tuple(target["data"].shape)
        if len(data_shape) != 3 or data_shape[1:] != tuple(shape):
            raise PtydError(path, f"/chunks/{name}/data",
                            f"shape {data_shape}, expected (n, {shape[0]}, {shape[1]}) "
                            f"from meta/shape {tuple(shape)}")
        file = link.filename if isinstance(link, h5py.ExternalLink) else None
        entries.append(ChunkEntry(key=key, file=file, n_frames=data_shape[0],
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

    A file with a gap (see :attr:`gaps`) opens, so that its meta and chunk list can be
    inspected and verified, but everything that numbers frames globally (:attr:`n_frames`,
    :meth:`iter_chunks`, :meth:`iter_frames`) refuses it with a :class:`PtydError` on
    ``/chunks``: PtyPy would give every frame after the gap a wrong index.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.refresh()

    def _open(self) -> h5py.File:
        return self._open_path(self.path)

    @staticmethod
    def _open_path(path: Path) -> h5py.File:
        try:
            return h5py.File(path, "r")
        except FileNotFoundError as exc:
            raise PtydError(path, "/", "file not found") from exc
        except OSError as exc:
            raise PtydError(path, "/", f"not a readable HDF5 file: {exc}") from exc

    def refresh(self) -> None:
        """Re-read meta, the chunk list and flyprep's provenance from the master."""
        p = str(self.path)
        with self._open() as f:
            self.meta = _load_meta(f, p)  # first: the chunk checks need meta's shape
            self.chunks, self.dangling = _list_chunks(f, p, self.meta.shape)
            self.provenance = _load_provenance(f, p)

    @property
    def gaps(self) -> list[int]:
        """Keys before the last resolved chunk that do not resolve (dangling or absent).

        PtyPy numbers frames by their position in key order, so a gap shifts every later
        frame onto a wrong index; keys after the last resolved chunk are no gap.
        """
        resolved = {c.key for c in self.chunks}
        if not resolved:
            return []
        return [k for k in range(0, max(resolved)) if k not in resolved]

    def _refuse_gaps(self) -> None:
        """Raise :class:`PtydError` on ``/chunks`` when frames cannot be numbered correctly."""
        gaps = self.gaps
        if not gaps:
            return
        dangling = [k for k in gaps if k in self.dangling]
        absent = [k for k in gaps if k not in self.dangling]
        later = [c.key for c in self.chunks if c.key > gaps[0]]
        parts = ([f"dangling links {dangling}"] if dangling else []) + \
                ([f"missing keys {absent}"] if absent else [])
        raise PtydError(self.path, "/chunks",
                        f"{' and '.join(parts)} lie before resolved chunks {later}: PtyPy "
                        "would shift every later frame onto a wrong index")

    @property
    def n_frames(self) -> int:
        """Frames readable now (resolved chunks only); refuses a file with :attr:`gaps`."""
        self._refuse_gaps()
        return sum(c.n_frames for c in self.chunks)

    @property
    def state(self) -> str | None:
        """flyprep's scan state, or None for a file flyprep did not write."""
        return self.provenance.get("state")

    def read_chunk(self, entry: ChunkEntry, *, frame_start: int = 0) -> ChunkArrays:
        """The arrays of one chunk, numbered from ``frame_start`` as the caller says."""
        with self._open() as f:
            return _read_chunk(f, self.path, entry.key, frame_start)

    def iter_chunks(self) -> Iterator[ChunkArrays]:
        """Every resolved chunk in PtyPy's order, with its global first frame index.

        Refuses a file with :attr:`gaps` at the call, before anything is read.
        """
        self._refuse_gaps()
        return self._chunks_in_order(list(self.chunks))

    def _chunks_in_order(self, entries: list[ChunkEntry]) -> Iterator[ChunkArrays]:
        """Read ``entries`` one by one, numbering frames consecutively from 0."""
        start = 0
        for entry in entries:
            yield self.read_chunk(entry, frame_start=start)
            start += entry.n_frames

    def iter_frames(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        """``(global_index, frame, position, weights_or_None)`` for every frame.

        Refuses a file with :attr:`gaps` at the call, before anything is read.
        """
        return self._frames_of(self.iter_chunks())

    @staticmethod
    def _frames_of(chunks: Iterator[ChunkArrays]
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray | None]]:
        """The frames of ``chunks`` one by one, with their global indices."""
        for chunk in chunks:
            for i in range(chunk.data.shape[0]):
                w = None if chunk.weights is None else chunk.weights[i]
                yield chunk.frame_start + i, chunk.data[i], chunk.positions[i], w


def _read_chunk(f: h5py.File, path: Path, key: int, frame_start: int | None) -> ChunkArrays:
    """Chunk ``key`` of the open master; ``frame_start`` None: from its stored indices."""
    where = f"/chunks/{key}"
    group = f.get(where)
    if group is None:
        link = f.get(where, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            target = link_target_path(path, link.filename)
            if not target.exists():
                raise PtydError(path, where, f"chunk disappeared: its file {target} is gone")
            raise PtydError(path, where, f"chunk link does not resolve: its file {target} "
                                         f"cannot be opened or lacks {link.path}")
        raise PtydError(path, where, "chunk disappeared or its link dangles")
    try:
        data = group["data"][()]
        positions = group["positions"][()] if "positions" in group else None
        weights = group["weights"][()] if "weights" in group else None
        indices = group["indices"][()] if "indices" in group else None
    except (OSError, KeyError) as exc:
        raise PtydError(path, where, f"unreadable chunk: {exc}") from exc
    if positions is None:
        raise PtydError(path, f"{where}/positions", "missing")
    if positions.shape != (data.shape[0], 2):
        raise PtydError(path, f"{where}/positions",
                        f"shape {positions.shape}, expected ({data.shape[0]}, 2)")
    if frame_start is None:
        if indices is None or not len(indices):
            raise PtydError(path, f"{where}/indices", "missing: the chunk's frames are unknown")
        frame_start = int(indices[0])
    return ChunkArrays(key, frame_start, data, positions, weights, indices)


def read_chunk_at(master: str | os.PathLike[str], key: int) -> ChunkArrays:
    """Chunk ``key`` of a master, without listing the others (their number does not slow
    it: what a live reader following new chunks needs); frames numbered from the chunk's
    stored indices."""
    path = Path(master)
    with PtydFile._open_path(path) as f:
        return _read_chunk(f, path, key, None)


def count_listed(master: str | os.PathLike[str]) -> int:
    """How many chunk keys the master lists now (without opening the chunks)."""
    path = Path(master)
    with PtydFile._open_path(path) as f:
        group = f.get("chunks")
        return 0 if group is None else len(group)


def open_ptyd(path: str | os.PathLike[str]) -> PtydFile:
    """Open and validate a ``.ptyd``; raises :class:`PtydError` naming file, node and reason.

    A file with a gap in its chunks opens (see :class:`PtydFile`); reading its frames raises.
    """
    return PtydFile(path)

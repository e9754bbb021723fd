"""Finished scan directories: PtyPy's tutorial layout and HDF5 frame files.

A layout tells how many frames a scan has, where each comes from, its position, and the
geometry it declares; readers turn a source into a raw frame. Every problem raises
:class:`InputError` naming the file (and the line, for text files).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Tuple

import h5py
import numpy as np

from ..errors import InputError
from .h5raw import read_rows_raw
from .npy import read_npy, read_npy_rows
from .rows import FrameRows

GEOMETRY_KEYS = {"distance": float, "energy": float, "psize": float, "shape": int}
# DECTRIS Eiger master files link to the data files and hold no frames themselves.
DEFAULT_EXCLUDE = ("*_master.h5",)
DEFAULT_MAX_BLOCK = 64  # frames per HDF5 slice in read_frames


@dataclass(frozen=True)
class FrameRef:
    """Where frame ``index`` lives: a file, and an index inside it for stacked files."""

    index: int
    path: Path
    slot: int | None = None  # frame number inside a stacked HDF5 dataset

    def describe(self) -> str:
        """The file and, for stacks, the frame inside it."""
        return str(self.path) if self.slot is None else f"{self.path}[{self.slot}]"


@dataclass(frozen=True)
class ScanSource:
    """A finished scan on disk: frame references in index order, positions, geometry."""

    root: Path
    layout: str
    frames: tuple[FrameRef, ...]
    positions: np.ndarray  # (n, 2) metres (y, x)
    geometry: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None


def parse_geometry(path: Path) -> dict[str, Any]:
    """PtyPy tutorial ``geometry.txt``: ``key value`` lines (distance, energy, psize, shape)."""
    out: dict[str, Any] = {}
    for lineno, line in _lines(path):
        parts = line.split()
        if len(parts) != 2 or parts[0] not in GEOMETRY_KEYS:
            raise InputError(path, f"line {lineno}: expected '<key> <value>' with key one of "
                                   f"{sorted(GEOMETRY_KEYS)}, got {line!r}")
        value = _finite_number(path, lineno, parts[1])
        out[parts[0]] = GEOMETRY_KEYS[parts[0]](value)
    return out


def _finite_number(path: Path, lineno: int, text: str) -> float:
    """``text`` as a finite float; :class:`InputError` naming the line otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(path, f"line {lineno}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(path, f"line {lineno}: {text!r} is not a finite number")
    return value


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"unreadable: {exc}") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            yield lineno, line


def parse_named_positions(path: Path) -> tuple[list[str], np.ndarray]:
    """PtyPy tutorial ``positions.txt``: ``<frame file> <y> <x>`` per line."""
    names, pos = [], []
    for lineno, line in _lines(path):
        parts = line.split()
        if len(parts) != 3:
            raise InputError(path, f"line {lineno}: expected '<frame file> <y> <x>', got {line!r}")
        pos.append(_position(path, lineno, line, parts[1], parts[2]))
        names.append(parts[0])
    if not names:
        raise InputError(path, "no positions in file")
    return names, np.asarray(pos, np.float64)


def _position(path: Path, lineno: int, line: str, y: str, x: str) -> tuple[float, float]:
    """One ``(y, x)`` text position; both must be finite numbers."""
    try:
        yx = (float(y), float(x))
    except ValueError:
        raise InputError(path, f"line {lineno}: positions must be numbers, got {line!r}") from None
    if not all(math.isfinite(v) for v in yx):
        raise InputError(path, f"line {lineno}: positions must be finite numbers, got {line!r}")
    return yx


def load_positions(path: Path, *, dataset: str | None = None, units: float = 1.0) -> np.ndarray:
    """Positions (n, 2) in metres from a text file (``y x`` per line; a leading frame name
    is allowed) or from an HDF5 dataset of shape (n, 2)."""
    if h5py.is_hdf5(path):
        name = dataset or "positions"
        try:
            with h5py.File(path, "r") as f:
                arr = np.asarray(f[name][()], np.float64)
        except KeyError:
            raise InputError(path, f"no dataset {name!r}") from None
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise InputError(path, f"dataset {name!r} has shape {arr.shape}, expected (n, 2)")
        _check_finite_rows(path, name, arr)
        return arr * units
    pos = []
    for lineno, line in _lines(path):
        parts = line.split()
        if len(parts) not in (2, 3):
            raise InputError(path, f"line {lineno}: expected '[name] <y> <x>', got {line!r}")
        pos.append(_position(path, lineno, line, parts[-2], parts[-1]))
    if not pos:
        raise InputError(path, "no positions in file")
    return np.asarray(pos, np.float64) * units


def _check_finite_rows(path: Path, name: str, arr: np.ndarray) -> None:
    """Refuse a positions dataset with nan or inf, naming the first bad rows."""
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        rows = ", ".join(str(r) for r in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise InputError(path, f"dataset {name!r} has positions that are not finite numbers "
                               f"({bad.size} rows: row {rows})")


def discover_ptypy(root: Path, *, units: float = 1.0) -> ScanSource:
    """A scan in PtyPy's tutorial layout: ``geometry.txt``, ``positions.txt``, frame files."""
    geometry = parse_geometry(root / "geometry.txt") if (root / "geometry.txt").exists() else {}
    names, positions = parse_named_positions(root / "positions.txt")
    frames = tuple(FrameRef(i, root / name) for i, name in enumerate(names))
    return ScanSource(root, "ptypy", frames, positions * units, geometry)


def discover_hdf5(root: Path, *, dataset: str, pattern: str, positions: Path | None,
                  positions_dataset: str | None = None, units: float = 1.0,
                  exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> ScanSource:
    """A scan of HDF5 frame files (in natural name order), each holding one frame or a stack;
    files matching an ``exclude`` pattern (Eiger master files by default) are left out."""
    pos_path = positions or _default_positions(root)
    files = _frame_files(root, pattern, Path(pos_path), exclude)
    refs: list[FrameRef] = []
    for path in files:
        n = _stack_length(path, dataset)
        refs.extend(FrameRef(len(refs), path, None if n is None else j) for j in range(n or 1))
    pos = load_positions(pos_path, dataset=positions_dataset, units=units)
    if pos.shape[0] < len(refs):
        raise InputError(pos_path, f"{pos.shape[0]} positions for {len(refs)} frames")
    return ScanSource(root, "hdf5", tuple(refs), pos[: len(refs)], {}, dataset)


def _frame_files(root: Path, pattern: str, pos_path: Path,
                 exclude: tuple[str, ...]) -> list[Path]:
    """Files matching ``pattern`` in natural order, without the positions file (even if the
    glob matches it) and without files matching an ``exclude`` pattern."""
    pos_path = pos_path.resolve()
    files = [p for p in root.glob(pattern)
             if p.is_file() and p.resolve() != pos_path
             and not any(p.match(x) for x in exclude)]
    if not files:
        skipped = f" (excluding {', '.join(repr(x) for x in exclude)})" if exclude else ""
        raise InputError(root, f"no frame files match {pattern!r}{skipped}")
    return sorted(files, key=lambda p: _natural_key(p.relative_to(root)))


def _natural_key(path: Path) -> list[tuple[tuple[str | int, ...], str]]:
    """Sort key comparing digit runs as numbers, so ``frame_2`` comes before ``frame_10``;
    ties (``frame_02`` and ``frame_2``) are broken by the name itself."""
    return [(tuple(int(run) if k % 2 else run for k, run in enumerate(re.split(r"(\d+)", part))),
             part) for part in path.parts]


def _default_positions(root: Path) -> Path:
    for name in ("positions.txt", "positions.h5"):
        if (root / name).exists():
            return root / name
    raise InputError(root, "no positions file: pass one (positions.txt or positions.h5 by default)")


def _stack_length(path: Path, dataset: str) -> int | None:
    """Frames in a file: None for a single 2-D frame."""
    try:
        with h5py.File(path, "r") as f:
            if dataset not in f:
                raise InputError(path, f"no dataset {dataset!r}")
            shape = f[dataset].shape
    except OSError as exc:
        raise InputError(path, f"not a readable HDF5 file: {exc}") from None
    if len(shape) == 2:
        return None
    if len(shape) == 3:
        return shape[0]
    raise InputError(path, f"dataset {dataset!r} has shape {shape}; expected (H, W) or (n, H, W)")


def discover(root: str | os.PathLike[str], *, layout: str = "auto", dataset: str = "/entry/data/data",
             pattern: str = "*.h5", positions: Path | None = None,
             positions_dataset: str | None = None, units: float = 1.0,
             exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> ScanSource:
    """Find a finished scan in ``root`` in the given (or detected) layout; ``exclude`` holds
    name patterns of HDF5 files that match ``pattern`` but are no frame files."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "scan directory does not exist")
    if layout == "auto":
        # PtyPy's positions.txt names the frame file first; HDF5 scans list 'y x' only.
        # Decided on the first line, so a broken later line is reported, not guessed around.
        text_pos = root / "positions.txt"
        layout = "ptypy" if positions is None and _names_frames(text_pos) else "hdf5"
    if layout == "ptypy":
        return discover_ptypy(root, units=units)
    return discover_hdf5(root, dataset=dataset, pattern=pattern, positions=positions,
                         positions_dataset=positions_dataset, units=units, exclude=exclude)


def _names_frames(path: Path) -> bool:
    """True when the first line of a positions text file starts with a frame file name."""
    if not path.is_file():
        return False
    for _lineno, line in _lines(path):
        try:
            float(line.split()[0])
        except ValueError:
            return True
        return False
    return False


#: Rows ``(top, stop)`` of each frame that a reader needs to read (the others are not
#: used); None: whole frames.
Rows = Optional[Tuple[int, int]]


def read_frame(ref: FrameRef, *, dataset: str | None = None, rows: Rows = None
               ) -> np.ndarray | FrameRows:
    """Read one raw frame (only ``rows`` of it, when given and the file allows; see
    :class:`~flyprep.sources.rows.FrameRows`); :class:`InputError` names the file for
    anything wrong."""
    return _read_2d(ref.path, dataset or "/entry/data/data", ref.slot, ref.describe(), _FRAME,
                    rows)


def read_map(spec: str | os.PathLike[str]) -> np.ndarray:
    """A calibration map (dark, flat, bad pixels): ``map.npy`` or ``file.h5::/dataset``."""
    text = os.fspath(spec)
    path, _, dataset = text.partition("::")
    return _read_2d(Path(path), dataset or "/data", None, path, _MAP)


@dataclass(frozen=True)
class _Wording:
    """How read errors name what was read: a frame, or any 2-D array such as a map."""

    not_found: str
    unreadable: str
    array: str


_FRAME = _Wording("frame file not found", "unreadable frame", "frame")
_MAP = _Wording("file not found", "unreadable", "array")


def _read_2d(path: Path, dataset: str, slot: int | None, label: str, words: _Wording,
             rows: Rows = None) -> np.ndarray | FrameRows:
    """A 2-D array from ``.npy`` or an HDF5 dataset (frame ``slot`` of a stack), or only
    its ``rows``; errors name ``label`` (the file, or the frame inside it) in the given
    wording."""
    try:
        if path.suffix == ".npy":
            arr = read_npy(path) if rows is None else read_npy_rows(path, *rows)
        else:
            with h5py.File(path, "r") as f:
                dset = _open_dataset(f, dataset)
                if not isinstance(dset, h5py.Dataset):
                    raise InputError(path, f"{dataset!r} is a group, not a dataset")
                lead = () if slot is None else (slot,)
                if dset.ndim == len(lead) + 2:
                    return _frame_rows(dset, slot or 0, rows)
                arr = dset[lead] if lead else dset[()]
    except FileNotFoundError:
        raise InputError(path, words.not_found) from None
    except KeyError:
        raise InputError(path, f"no dataset {dataset!r}") from None
    except (OSError, ValueError, EOFError, IndexError) as exc:
        raise InputError(label, f"{words.unreadable}: {exc}") from None
    if isinstance(arr, FrameRows):
        return arr
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise InputError(label, f"{words.array} has shape {arr.shape}; expected 2-D")
    return arr


def _frame_rows(dset: h5py.Dataset, index: int, rows: Rows) -> np.ndarray | FrameRows:
    """Frame ``index`` of a stack (0 of a 2-D dataset): only ``rows`` of it when they fit
    (as :class:`FrameRows`), else whole; plain reads where :mod:`.h5raw` can."""
    height = int(dset.shape[-2])
    top, stop = rows if _fits(rows, dset.shape, dset.ndim) else (0, height)  # type: ignore[misc]
    block = read_rows_raw(dset, index, index + 1, top, stop)
    if block is not None and len(block):
        data = block[0]
    else:  # HDF5's own read (and its error for a frame the stack lacks)
        data = dset[(*(index,) * (dset.ndim - 2), slice(top, stop))]
    return data if (top, stop) == (0, height) else FrameRows(data, top, dset.shape[-2:])


def _fits(rows: Rows, shape: tuple[int, ...], ndim: int) -> bool:
    """True when ``rows`` are given and lie inside frames of a dataset of ``shape``
    (``ndim`` dimensions expected: 2 for one frame, 3 for a stack)."""
    return rows is not None and len(shape) == ndim and 0 <= rows[0] < rows[1] <= shape[-2]


def read_frames(source: ScanSource, start: int, stop: int, *, max_block: int = DEFAULT_MAX_BLOCK,
                rows: Rows = None) -> Iterator[tuple[int, np.ndarray | FrameRows, str]]:
    """``(index, frame, source name)`` for frames ``[start, stop)`` (only ``rows`` of each
    where the file allows); consecutive frames of one HDF5 stack are read in slices of at
    most ``max_block`` frames."""
    if max_block < 1:
        raise ValueError(f"max_block must be at least 1, got {max_block}")
    i = start
    while i < stop:
        ref = source.frames[i]
        if ref.slot is None:
            yield i, read_frame(ref, dataset=source.dataset, rows=rows), str(ref.path)
            i += 1
            continue
        n = _run_length(source, i, min(stop, i + max_block))
        yield from _stack_frames(i, ref, source.dataset or "/entry/data/data", n, rows)
        i += n


def _run_length(source: ScanSource, i: int, stop: int) -> int:
    """How many frames from ``i`` (before ``stop``) are consecutive frames of one stack."""
    ref = source.frames[i]
    n = 1
    while i + n < stop and source.frames[i + n].path == ref.path:
        n += 1
    return n


def _stack_frames(i: int, ref: FrameRef, dataset: str, n: int, rows: Rows = None
                  ) -> Iterator[tuple[int, np.ndarray | FrameRows, str]]:
    """Frames ``i .. i + n`` (``ref.slot ..`` in the stack), read in one slice (only
    ``rows`` of each, when given); the frames present come first, then
    :class:`InputError` if the file holds fewer than at discovery."""
    lo, hi = ref.slot, ref.slot + n
    block, top, shape = _read_stack(ref, dataset, lo, hi, rows)
    for k in range(min(n, block.shape[0])):
        frame = block[k] if top is None else FrameRows(block[k], top, shape)
        yield i + k, frame, f"{ref.path}[{lo + k}]"
    if block.shape[0] < n:
        raise InputError(f"{ref.path}[{lo}:{hi}]",
                         f"expected {n} frames in dataset {dataset!r}, found {block.shape[0]}: "
                         "the file is shorter than when the scan was discovered")


def _read_stack(ref: FrameRef, dataset: str, lo: int, hi: int, rows: Rows = None
                ) -> tuple[np.ndarray, int | None, tuple[int, int]]:
    """Frames ``[lo, hi)`` of a stack, as many as the file holds (only ``rows`` of each
    when they fit the frames), the first row read (None: whole frames) and the frames'
    shape; the dataset must be 3-D."""
    try:
        with h5py.File(ref.path, "r") as f:
            dset = _open_dataset(f, dataset)
            if not isinstance(dset, h5py.Dataset):
                raise InputError(ref.path, f"{dataset!r} is a group, not a dataset")
            if dset.ndim != 3:
                raise InputError(ref.path, f"dataset {dataset!r} has shape {dset.shape}; "
                                           "expected a stack (n, H, W) as at discovery")
            shape = (int(dset.shape[1]), int(dset.shape[2]))
            top, stop = rows if _fits(rows, dset.shape, 3) else (0, shape[0])  # type: ignore[misc]
            block = read_rows_raw(dset, lo, hi, top, stop)
            if block is None:
                block = dset[lo:hi, top:stop]
            return block, (None if top == 0 and stop == shape[0] else top), shape
    except FileNotFoundError:
        raise InputError(ref.path, "frame file not found") from None
    except KeyError:
        raise InputError(ref.path, f"no dataset {dataset!r}") from None
    except OSError as exc:
        raise InputError(f"{ref.path}[{lo}:{hi}]", f"unreadable frames: {exc}") from None


def _open_dataset(f: h5py.File, dataset: str) -> Any:
    """``f[dataset]``, a chunked dataset opened without HDF5's chunk cache. The file is
    opened for each read, and one read visits each chunk once, so the cache never serves
    a chunk twice; it would only read a whole chunk and copy the rows asked for out of it
    (twice the time of a 256-row crop of 512-row frames in one-frame chunks)."""
    dset = f[dataset]
    if not isinstance(dset, h5py.Dataset) or dset.chunks is None:
        return dset
    del dset  # closed: a dataset opened twice shares its first opening's chunk cache
    # By the caller's path, which HDF5 resolves through soft and external links as f[...]
    # did (a linked dataset's own name is its path in the file the link points to).
    return h5py.Dataset(h5py.h5d.open(f.id, dataset.encode(), _no_chunk_cache()))


def _no_chunk_cache() -> Any:
    """A dataset access property list without a chunk cache. Made for each opening, not
    kept: an h5py object left in a module global is freed at interpreter exit, and
    freeing it then can wait forever for h5py's lock."""
    dapl = h5py.h5p.create(h5py.h5p.DATASET_ACCESS)
    dapl.set_chunk_cache(0, 0, 1.0)
    return dapl


def read_stack_rows(path: Path, dataset: str, lo: int, hi: int, rows: Rows
                    ) -> tuple[np.ndarray, int | None, tuple[int, int]]:
    """Frames ``[lo, hi)`` of an HDF5 stack (as many as the file holds), only ``rows`` of
    each when they fit its frames: (the frames read, their first row or None for whole
    frames, the frames' shape); InputError names the file for anything wrong."""
    return _read_stack(FrameRef(lo, Path(path), lo), dataset, lo, hi, rows)


def natural_key(path: Path) -> list[tuple[tuple[str | int, ...], str]]:
    """Sort key comparing digit runs as numbers (``frame_2`` before ``frame_10``)."""
    return _natural_key(path)

"""Finished scan directories: PtyPy's tutorial layout and HDF5 frame files.

A layout tells how many frames a scan has, where each comes from, its position, and the
geometry it declares; readers turn a source into a raw frame. Every problem raises
:class:`InputError` naming the file (and the line, for text files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from ..errors import InputError

GEOMETRY_KEYS = {"distance": float, "energy": float, "psize": float, "shape": int}


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
        try:
            out[parts[0]] = GEOMETRY_KEYS[parts[0]](float(parts[1]))
        except ValueError:
            raise InputError(path, f"line {lineno}: {parts[1]!r} is not a number") from None
    return out


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
        try:
            pos.append((float(parts[1]), float(parts[2])))
        except ValueError:
            raise InputError(path, f"line {lineno}: positions must be numbers, got {line!r}") from None
        names.append(parts[0])
    if not names:
        raise InputError(path, "no positions in file")
    return names, np.asarray(pos, np.float64)


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
        return arr * units
    pos = []
    for lineno, line in _lines(path):
        parts = line.split()
        if len(parts) not in (2, 3):
            raise InputError(path, f"line {lineno}: expected '[name] <y> <x>', got {line!r}")
        try:
            pos.append((float(parts[-2]), float(parts[-1])))
        except ValueError:
            raise InputError(path, f"line {lineno}: positions must be numbers, got {line!r}") from None
    if not pos:
        raise InputError(path, "no positions in file")
    return np.asarray(pos, np.float64) * units


def discover_ptypy(root: Path, *, units: float = 1.0) -> ScanSource:
    """A scan in PtyPy's tutorial layout: ``geometry.txt``, ``positions.txt``, frame files."""
    geometry = parse_geometry(root / "geometry.txt") if (root / "geometry.txt").exists() else {}
    names, positions = parse_named_positions(root / "positions.txt")
    frames = tuple(FrameRef(i, root / name) for i, name in enumerate(names))
    return ScanSource(root, "ptypy", frames, positions * units, geometry)


def discover_hdf5(root: Path, *, dataset: str, pattern: str, positions: Path | None,
                  positions_dataset: str | None = None, units: float = 1.0) -> ScanSource:
    """A scan of HDF5 frame files (sorted by name), each holding one frame or a stack."""
    pos_path = positions or _default_positions(root)
    # The positions file (positions.h5 by default) is no frame file even if the glob matches.
    files = sorted(p for p in root.glob(pattern)
                   if p.is_file() and p.resolve() != Path(pos_path).resolve())
    if not files:
        raise InputError(root, f"no frame files match {pattern!r}")
    refs: list[FrameRef] = []
    for path in files:
        n = _stack_length(path, dataset)
        refs.extend(FrameRef(len(refs), path, None if n is None else j) for j in range(n or 1))
    pos = load_positions(pos_path, dataset=positions_dataset, units=units)
    if pos.shape[0] < len(refs):
        raise InputError(pos_path, f"{pos.shape[0]} positions for {len(refs)} frames")
    return ScanSource(root, "hdf5", tuple(refs), pos[: len(refs)], {}, dataset)


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
             positions_dataset: str | None = None, units: float = 1.0) -> ScanSource:
    """Find a finished scan in ``root`` in the given (or detected) layout."""
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
                         positions_dataset=positions_dataset, units=units)


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


def read_frame(ref: FrameRef, *, dataset: str | None = None) -> np.ndarray:
    """Read one raw frame; :class:`InputError` names the file for anything wrong."""
    path = ref.path
    dataset = dataset or "/entry/data/data"
    try:
        if path.suffix == ".npy":
            frame = np.load(path, allow_pickle=False)
        else:
            with h5py.File(path, "r") as f:
                dset = f[dataset]
                frame = dset[ref.slot] if ref.slot is not None else dset[()]
    except FileNotFoundError:
        raise InputError(path, "frame file not found") from None
    except KeyError:
        raise InputError(path, f"no dataset {dataset!r}") from None
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(ref.describe(), f"unreadable frame: {exc}") from None
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise InputError(ref.describe(), f"frame has shape {frame.shape}; expected 2-D")
    return frame


def read_map(spec: str | os.PathLike[str]) -> np.ndarray:
    """A calibration map (dark, flat, bad pixels): ``map.npy`` or ``file.h5::/dataset``."""
    text = os.fspath(spec)
    path, _, dataset = text.partition("::")
    return read_frame(FrameRef(0, Path(path)), dataset=dataset or "/data")


def read_frames(source: ScanSource, start: int, stop: int) -> Iterator[tuple[int, np.ndarray, str]]:
    """``(index, frame, source name)`` for frames ``[start, stop)``; consecutive frames of
    one HDF5 stack are read with a single slice."""
    i = start
    while i < stop:
        ref = source.frames[i]
        if ref.slot is None:
            yield i, read_frame(ref, dataset=source.dataset), str(ref.path)
            i += 1
            continue
        j = i
        while j + 1 < stop and source.frames[j + 1].path == ref.path:
            j += 1
        block = _read_stack(ref, source.dataset or "/entry/data/data", ref.slot,
                            source.frames[j].slot + 1)
        for k in range(block.shape[0]):
            yield i + k, block[k], f"{ref.path}[{ref.slot + k}]"
        i = j + 1


def _read_stack(ref: FrameRef, dataset: str, lo: int, hi: int) -> np.ndarray:
    try:
        with h5py.File(ref.path, "r") as f:
            return f[dataset][lo:hi]
    except FileNotFoundError:
        raise InputError(ref.path, "frame file not found") from None
    except KeyError:
        raise InputError(ref.path, f"no dataset {dataset!r}") from None
    except OSError as exc:
        raise InputError(f"{ref.path}[{lo}:{hi}]", f"unreadable frames: {exc}") from None

"""An h5USID view of a prepared scan, for pyUSID and pycroscopy users.

USID (Universal Spectroscopic and Imaging Data) stores a measurement as a 2-D *main*
dataset, positions × spectroscopic values, described by four ancillary datasets that the
main dataset references in its attributes. Here:

* ``/Measurement_000/Channel_000/Raw_Data``: frames × detector pixels (a frame's pixels
  row by row), ``quantity`` "Intensity"; ``Channel_001/Weights`` beside it, the frames'
  weights (0 = ignore the pixel), sharing the same ancillary datasets.
* ``Position_Indices`` / ``Position_Values`` (frames × 2, metres): ptychography positions
  are seldom a grid, so, as USID prescribes for sparse sampling, both index columns
  (``Y``, ``X``) count the frames 0..N-1 and the values hold each frame's position; pyUSID
  then has no N-dimensional form for the data (it cannot reshape sparse positions). A scan
  whose positions are an exact raster grid, frame after frame (a simulation, nominal
  positions), gets grid indices instead, fastest dimension first, and an N-dimensional
  form (slow, fast, detector rows, columns).
* ``Spectroscopic_Indices`` / ``Spectroscopic_Values`` (2 × pixels, rows ``Column`` (the
  fastest) and ``Row``): each pixel's column and row, and its offset from the optical
  axis on the detector in metres (``meta/center``, ``meta/psize``).

The frames are not copied: each main dataset is an HDF5 virtual dataset over the chunk
files (paths relative to the view, so the pair may move together). A virtual dataset reads
a missing source as its fill value without a word, so :func:`check_usid` (and ``flyprep
verify`` of a view) checks every source and says which frames would read as zeros.
``copy=True`` writes a self-contained file instead. Like every flyprep file, the view is
written to a temporary name, fsynced and renamed.

Planned apart from written (h5py's manner): :func:`plan_usid` reads the ``.ptyd`` and
decides everything, :func:`write_usid` writes what the plan says.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import __version__
from ..errors import OutputError, PtydError
from .format import tmp_name
from .reader import PtydFile, link_target_path, open_ptyd
from .safefile import guarded_h5
from .writer import fsync_path

MEASUREMENT = "Measurement_000"
DATA = f"{MEASUREMENT}/Channel_000/Raw_Data"
WEIGHTS = f"{MEASUREMENT}/Channel_001/Weights"
ANCILLARY = ("Position_Indices", "Position_Values", "Spectroscopic_Indices",
             "Spectroscopic_Values")


@dataclass(frozen=True)
class ChunkSource:
    """Where one chunk's frames are: its file (the master itself in append mode) and the
    datasets in it, and which frames of the scan they are."""

    key: int
    frame_start: int
    n_frames: int
    file: Path
    group: str  # "/" in a chunk file, "/chunks/K" inside the master
    has_weights: bool

    def dataset(self, name: str) -> str:
        return f"{self.group.rstrip('/')}/{name}"


@dataclass(frozen=True)
class UsidPlan:
    """Everything the view will hold, decided from the ``.ptyd``."""

    master: Path
    shape: tuple[int, int]
    dtype: np.dtype
    sources: list[ChunkSource]
    positions: np.ndarray  # (n_frames, 2): y, x in metres
    num_frames: int  # planned (meta/num_frames)
    state: str | None
    missing: list[int]  # frames flyprep wrote as zeros with zero weights
    meta: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return sum(s.n_frames for s in self.sources)

    @property
    def finished(self) -> bool:
        return self.state in ("complete", "aborted") or (
            self.state is None and self.n_frames == self.num_frames)

    def not_written(self) -> str:
        """The frames not in the output yet, as ranges (for a scan still acquiring)."""
        return _ranges(range(self.n_frames, self.num_frames))


def plan_usid(master: str | os.PathLike[str]) -> UsidPlan:
    """Read ``master`` and plan its view; PtydError naming the file if it cannot be read
    (a gap in its chunks included)."""
    ptyd = open_ptyd(master)
    n = ptyd.n_frames  # refuses a gap: frames would be numbered wrong
    sources, positions = [], []
    start = 0
    with h5py.File(ptyd.path, "r") as f:
        for entry in sorted(ptyd.chunks, key=lambda c: c.key):
            file = ptyd.path if entry.file is None else link_target_path(ptyd.path, entry.file)
            group = f"/chunks/{entry.key}" if entry.file is None else "/"
            chunk = f[f"chunks/{entry.key}"]
            if "weights" in chunk and chunk["weights"].shape != chunk["data"].shape:
                raise PtydError(ptyd.path, f"/chunks/{entry.key}/weights",
                                f"shape {chunk['weights'].shape}: one mask per frame "
                                f"({chunk['data'].shape}) is needed for the view")
            positions.append(np.asarray(chunk["positions"][()], dtype=np.float64))
            sources.append(ChunkSource(entry.key, start, entry.n_frames, file, group,
                                       "weights" in chunk))
            start += entry.n_frames
        dtype = f[f"chunks/{sources[0].key}/data"].dtype if sources else np.dtype(np.float32)
    assert start == n
    meta = ptyd.meta.model_dump(mode="json")
    return UsidPlan(master=ptyd.path.absolute(), shape=tuple(ptyd.meta.shape), dtype=dtype,
                    sources=sources,
                    positions=np.concatenate(positions) if positions else np.zeros((0, 2)),
                    num_frames=ptyd.meta.num_frames, state=ptyd.state,
                    missing=list(ptyd.provenance.get("missing_indices", [])), meta=meta,
                    params=_params(ptyd))


def _params(ptyd: PtydFile) -> dict[str, Any]:
    """The preparation parameters stored with the first chunk (empty if none)."""
    if not ptyd.chunks:
        return {}
    first = min(ptyd.chunks, key=lambda c: c.key)
    with h5py.File(ptyd.path, "r") as f:
        raw = f[f"chunks/{first.key}"].attrs.get("flyprep")
    if raw is None:
        return {}
    try:
        params = json.loads(raw)["params"]
    except (TypeError, ValueError, KeyError):
        return {}
    return params if isinstance(params, dict) else {}


def write_usid(plan: UsidPlan, out: str | os.PathLike[str], *, copy: bool = False,
               allow_incomplete: bool = False) -> Path:
    """Write the view ``plan`` describes to ``out`` (atomically); OutputError if the scan
    is not finished (unless ``allow_incomplete``), or if the file cannot be written."""
    out = Path(out).absolute()
    if not plan.finished and not allow_incomplete:
        raise OutputError(f"{plan.master}: the scan is still {plan.state or 'incomplete'}: "
                          f"frames {plan.not_written()} of {plan.num_frames} are not written "
                          f"yet (export it anyway with --allow-incomplete)")
    if not plan.sources:
        raise OutputError(f"{plan.master}: no chunk written yet: nothing to view")
    missing = [s for s in plan.sources if not s.file.is_file()]
    if missing:
        raise OutputError(f"{missing[0].file}: chunk {missing[0].key} is gone (frames "
                          f"{_ranges(_frames(missing))}): the view would read zeros there")
    tmp = out.with_name(tmp_name(out.name))
    try:
        with guarded_h5(tmp) as f:
            _write(f, plan, out.parent, copy=copy)
        os.replace(tmp, out)
        fsync_path(out.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{out}: could not write the h5USID view: {exc}") from exc
    return out


def _write(f: h5py.File, plan: UsidPlan, where: Path, *, copy: bool) -> None:
    n, (rows, cols) = plan.n_frames, plan.shape
    pixels = rows * cols
    stamp = _stamp()
    f.attrs.update(stamp)
    measurement = f.create_group(MEASUREMENT)
    measurement.attrs.update({**stamp, "source": str(plan.master),
                              "source_state": plan.state or "", "num_frames": plan.num_frames,
                              "frames": n, "flyprep_version": __version__,
                              "missing_indices": np.asarray(plan.missing, dtype=np.int64),
                              "meta": json.dumps(plan.meta),
                              "preparation": json.dumps(plan.params, sort_keys=True)})
    ancillary = _ancillary(measurement, plan, rows, cols)
    for path, name, dtype, quantity, units in (
            (DATA, "data", plan.dtype, "Intensity", "counts"),
            (WEIGHTS, "weights", np.dtype(bool), "Weight", "")):
        group = f.require_group(path.rsplit("/", 1)[0])
        group.attrs.update(stamp)
        if copy:
            main = _copied(group, path.rsplit("/", 1)[1], plan, name, dtype, pixels)
        else:
            main = _virtual(group, path.rsplit("/", 1)[1], plan, name, dtype, pixels, where)
        main.attrs.update({**stamp, "quantity": quantity, "units": units,
                           "flyprep_view": "copy" if copy else "virtual"})
        for label in ANCILLARY:
            main.attrs[label] = ancillary[label].ref
    assert f[DATA].shape == (n, pixels)


def raster_indices(positions: np.ndarray) -> tuple[np.ndarray, list[int]] | None:
    """For positions (y, x) that form a raster grid visited in order: the (N, 2) grid
    indices, fastest dimension first, and which position column each index column is;
    None otherwise. Coordinates equal within a millionth of their range count as one."""
    n = len(positions)
    steps = []
    for axis in (0, 1):
        values = positions[:, axis]
        span = float(values.max() - values.min()) if n else 0.0
        keys = np.round(values / max(span * 1e-6, 1e-15)).astype(np.int64)
        unique, index = np.unique(keys, return_inverse=True)
        steps.append((len(unique), index.astype(np.uint32)))
    for fast, slow in ((1, 0), (0, 1)):
        (n_fast, i_fast), (n_slow, i_slow) = steps[fast], steps[slow]
        if n_fast * n_slow == n and n_fast > 1 and n_slow > 1 and \
                np.array_equal(i_fast, np.tile(np.arange(n_fast), n_slow)) and \
                np.array_equal(i_slow, np.repeat(np.arange(n_slow), n_fast)):
            return np.stack([i_fast, i_slow], axis=1), [fast, slow]
    return None


def _ancillary(group: h5py.Group, plan: UsidPlan, rows: int, cols: int) -> dict[str, h5py.Dataset]:
    n = plan.n_frames
    grid = raster_indices(plan.positions)
    if grid is None:  # USID's sparse sampling: the same counter in every column
        order = [0, 1]
        pos_indices = np.repeat(np.arange(n, dtype=np.uint32)[:, None], 2, axis=1)
    else:
        pos_indices, order = grid
    pos_labels = [("Y", "X")[axis] for axis in order]
    col_index = np.tile(np.arange(cols, dtype=np.uint32), rows)
    row_index = np.repeat(np.arange(rows, dtype=np.uint32), cols)
    center = plan.meta.get("center") or [rows / 2, cols / 2]
    psize = plan.meta.get("psize") or [1.0, 1.0]
    spec_values = np.stack([(col_index - center[1]) * psize[1],
                            (row_index - center[0]) * psize[0]]).astype(np.float32)
    made = {
        "Position_Indices": (pos_indices, pos_labels, ["m", "m"]),
        "Position_Values": (plan.positions[:, order].astype(np.float32), pos_labels,
                            ["m", "m"]),
        "Spectroscopic_Indices": (np.stack([col_index, row_index]), ["Column", "Row"],
                                  ["m", "m"]),  # USID: the units of the values they count
        "Spectroscopic_Values": (spec_values, ["Column", "Row"], ["m", "m"]),
    }
    out = {}
    for name, (values, labels, units) in made.items():
        dset = group.create_dataset(name, data=values)
        dset.attrs["labels"] = np.array(labels, dtype=h5py.string_dtype())
        dset.attrs["units"] = np.array(units, dtype=h5py.string_dtype())
        out[name] = dset
    return out


def _virtual(group: h5py.Group, name: str, plan: UsidPlan, dataset: str, dtype: np.dtype,
             pixels: int, where: Path) -> h5py.Dataset:
    """Frames × pixels over the chunks' ``dataset``, no copy; sources named relative to the
    view's directory (HDF5 looks for them there)."""
    rows, cols = plan.shape
    layout = h5py.VirtualLayout(shape=(plan.n_frames, pixels), dtype=dtype)
    for source in plan.sources:
        if dataset == "weights" and not source.has_weights:
            continue  # read as the fill value: all ones, PtyPy's default weights
        target = os.path.relpath(source.file, where)
        layout[source.frame_start:source.frame_start + source.n_frames, :] = \
            h5py.VirtualSource(target, source.dataset(dataset),
                               shape=(source.n_frames, rows, cols), dtype=dtype)
    fill = True if dataset == "weights" else 0
    return group.create_virtual_dataset(name, layout, fillvalue=fill)


def _copied(group: h5py.Group, name: str, plan: UsidPlan, dataset: str, dtype: np.dtype,
            pixels: int) -> h5py.Dataset:
    """Frames × pixels copied chunk by chunk (one frame per HDF5 chunk, as flyprep's)."""
    main = group.create_dataset(name, shape=(plan.n_frames, pixels), dtype=dtype,
                                chunks=(1, pixels) if plan.n_frames else None,
                                fillvalue=True if dataset == "weights" else 0)
    for source in plan.sources:
        if dataset == "weights" and not source.has_weights:
            continue
        with h5py.File(source.file, "r") as f:
            values = f[source.dataset(dataset)][()]
        main[source.frame_start:source.frame_start + source.n_frames] = \
            values.reshape(source.n_frames, pixels)
    return main


def _stamp() -> dict[str, str]:
    """USID's attributes of traceability on every group and main dataset."""
    return {"time_stamp": time.strftime("%Y_%m_%d-%H_%M_%S"), "machine_id": socket.gethostname(),
            "platform": platform.platform(), "flyprep_version": __version__}


def _frames(sources: list[ChunkSource]) -> list[int]:
    return [i for s in sources for i in range(s.frame_start, s.frame_start + s.n_frames)]


def _ranges(frames: Any) -> str:
    """``0-99, 200-249``: consecutive frames as ranges."""
    frames = list(frames)
    if not frames:
        return "none"
    parts, first, last = [], frames[0], frames[0]
    for i in frames[1:]:
        if i == last + 1:
            last = i
            continue
        parts.append(f"{first}" if first == last else f"{first}-{last}")
        first = last = i
    parts.append(f"{first}" if first == last else f"{first}-{last}")
    return ", ".join(parts)


@dataclass(frozen=True)
class UsidFinding:
    """One problem of a view: ``error`` (would read wrong) or ``warning``."""

    level: str
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"


def is_usid_view(path: str | os.PathLike[str]) -> bool:
    """True for an h5USID view flyprep wrote (``flyprep verify`` checks it as one)."""
    try:
        with h5py.File(path, "r") as f:
            return DATA in f and "flyprep_view" in f[DATA].attrs
    except OSError:
        return False


def check_usid(path: str | os.PathLike[str]) -> list[UsidFinding]:
    """Every problem of a view: a source chunk file or dataset gone or of another shape
    (its frames would read as zeros: which are named), USID's references broken."""
    path = Path(path)
    found: list[UsidFinding] = []
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        return [UsidFinding("error", str(path), f"not a readable HDF5 file: {exc}")]
    with f:
        for name in (DATA, WEIGHTS):
            if name not in f:
                found.append(UsidFinding("error", f"{path}:/{name}", "missing"))
                continue
            main = f[name]
            for label in ANCILLARY:
                ref = main.attrs.get(label)
                if not isinstance(ref, h5py.Reference) or not ref or f[ref].shape[
                        0 if label.startswith("Position") else 1] != main.shape[
                        0 if label.startswith("Position") else 1]:
                    found.append(UsidFinding("error", f"{path}:/{name}",
                                             f"attribute {label} does not reference a "
                                             f"matching ancillary dataset"))
            if main.is_virtual:
                found.extend(_check_sources(path, name, main))
        state = f[MEASUREMENT].attrs.get("source_state", "") if MEASUREMENT in f else ""
        if state not in ("complete", "aborted"):
            found.append(UsidFinding("warning", str(path), f"made from a scan that was "
                                     f"{state or 'not finished'} at the time"))
    return found


def _check_sources(path: Path, name: str, main: h5py.Dataset) -> list[UsidFinding]:
    found = []
    for source in main.virtual_sources():
        file = Path(source.file_name)
        if not file.is_absolute():
            file = path.parent / file
        start, stop = _rows_of(source.vspace)
        frames = f"frames {start}-{stop - 1}"
        try:
            with h5py.File(file, "r") as f:
                if source.dset_name not in f:
                    problem = f"its dataset {source.dset_name} is missing"
                else:
                    size = f[source.dset_name].size
                    expected = source.vspace.get_select_npoints()
                    problem = None if size == expected else \
                        f"its dataset holds {size} values, the view maps {expected}"
        except FileNotFoundError:
            problem = "the file is gone"
        except OSError as exc:
            problem = f"unreadable: {exc}"
        if problem is not None:
            found.append(UsidFinding("error", f"{path}:/{name}", f"{file}: {problem}: "
                                     f"{frames} would read as zeros"))
    return found


def _rows_of(space: h5py.h5s.SpaceID) -> tuple[int, int]:
    """The first and past-the-last rows a virtual mapping selects."""
    start, end = space.get_select_bounds()
    return int(start[0]), int(end[0]) + 1

"""The ``.ptyd`` layout as plain data: names, meta, provenance. No file is touched here."""

from __future__ import annotations

import hashlib
import json
import os.path
import re
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..states import ScanState  # also this layer's name for it (re-exported)

FORMAT_VERSION = 1
TMP_SUFFIX = ".flyprep-tmp"


@dataclass(frozen=True)
class ChunkGrid:
    """How a scan of ``num_frames`` is cut into chunks: chunk k holds frames
    ``[k * chunk_frames, (k + 1) * chunk_frames)``, the last one fewer (the one place
    this arithmetic is written)."""

    num_frames: int
    chunk_frames: int

    @property
    def n_chunks(self) -> int:
        """Number of chunks of the scan."""
        return -(-self.num_frames // self.chunk_frames)

    def key_of(self, index: int) -> int:
        """The chunk holding frame ``index``."""
        return index // self.chunk_frames

    def start(self, key: int) -> int:
        """First frame of chunk ``key``."""
        return key * self.chunk_frames

    def stop(self, key: int) -> int:
        """One past the last frame of chunk ``key``."""
        return min(self.num_frames, (key + 1) * self.chunk_frames)

    def ends_chunk(self, index: int) -> bool:
        """True when frame ``index`` is the last of a whole (full-size) chunk."""
        return (index + 1) % self.chunk_frames == 0


def chunk_file_name(master_name: str, chunk_format: str, key: int) -> str:
    """Bare file name of chunk ``key``: the master's name plus ``chunk_format % key``."""
    return master_name + (chunk_format % key)


def chunk_name_regex(master_name: str, chunk_format: str) -> re.Pattern[str]:
    """Matches the names of every chunk file (and its temporary) of a master."""
    field = re.search(r"%0?\d*d", chunk_format)
    if field is None:
        raise ValueError(f"chunk_format {chunk_format!r} has no integer field")
    prefix, suffix = chunk_format[:field.start()], chunk_format[field.end():]
    return re.compile(re.escape(master_name + prefix) + r"\d+" + re.escape(suffix)
                      + f"(?:{re.escape(TMP_SUFFIX)})?$")


def tmp_name(final_name: str) -> str:
    """The temporary name a file is written under before it is renamed into place."""
    return final_name + TMP_SUFFIX


@dataclass(frozen=True)
class ScanMeta:
    """What goes into ``meta/``: PtyPy's geometry of the stored frames."""

    num_frames: int
    shape: tuple[int, int]
    center: tuple[float, float]
    psize: tuple[float, float] | None = None
    energy: float | None = None
    distance: float | None = None
    propagation: str | None = "farfield"
    label: str | None = None

    def to_tagged(self) -> dict[str, Any]:
        """The ``meta/`` tree in PtyPy's types (int64 count, int64 shape, float64 rest)."""
        meta: dict[str, Any] = {
            "num_frames": np.int64(self.num_frames),
            "shape": np.asarray(self.shape, np.int64),
            "center": np.asarray(self.center, np.float64),
            "psize": None if self.psize is None else np.asarray(self.psize, np.float64),
            "energy": None if self.energy is None else np.float64(self.energy),
            "distance": None if self.distance is None else np.float64(self.distance),
            "label": self.label,
            "version": np.float64(0.1),
        }
        if self.propagation is not None:
            meta["propagation"] = self.propagation
        return meta


def params_hash(params: dict[str, Any]) -> str:
    """Stable short hash of the preparation parameters (canonical JSON, sha256)."""
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class ChunkProvenance:
    """Root attributes of one chunk file: where its frames came from and how."""

    key: int
    frame_start: int
    frame_stop: int
    frames_missing: int
    sources: Sequence[str]
    params_json: str
    params_hash: str
    flyprep_version: str
    written_at: str = field(default_factory=now_iso)

    def as_json(self) -> str:
        """The chunk file's ``flyprep`` attribute (one JSON attribute: HDF5 attributes are
        costly one by one). Source files are listed relative to their common directory."""
        common = _common_dir(self.sources)
        cut = len(common) + 1 if common else 0
        return json.dumps({
            "chunk": self.key, "frame_start": self.frame_start, "frame_stop": self.frame_stop,
            "frames_missing": self.frames_missing, "source_dir": common or "",
            "sources": [p[cut:] if p else p for p in self.sources],
            "params": json.loads(self.params_json),
            "params_hash": self.params_hash, "flyprep_version": self.flyprep_version,
            "written_at": self.written_at}, separators=(",", ":"))


def _common_dir(paths: Sequence[str]) -> str | None:
    """The deepest directory holding every path (None if there is none or a path is empty)."""
    if not paths or not all(paths):
        return None
    dirs = {os.path.dirname(p) for p in paths}
    try:
        common = dirs.pop() if len(dirs) == 1 else os.path.commonpath(list(dirs))
    except ValueError:
        return None
    return common or None


@dataclass(frozen=True)
class MasterPlan:
    """Everything the master file holds at one publication."""

    meta: ScanMeta
    chunk_files: tuple[str, ...]  # bare names, index = chunk key; link mode only
    state: ScanState
    generation: int
    frames_written: int
    missing_indices: tuple[int, ...]
    chunk_frames: int
    params_json: str
    params_hash: str
    flyprep_version: str
    created: str

    def status_json(self) -> str:
        """The master's ``flyprep/status`` attribute: the scan's state and provenance."""
        return json.dumps({
            "format_version": FORMAT_VERSION,
            "generation": self.generation,
            "state": self.state,
            "frames_written": self.frames_written,
            "frames_missing": len(self.missing_indices),
            "chunk_frames": self.chunk_frames,
            "params": json.loads(self.params_json),
            "params_hash": self.params_hash,
            "flyprep_version": self.flyprep_version,
            "created": self.created,
            "updated": now_iso(),
        }, separators=(",", ":"))

"""The ``.ptyd`` layout as plain data: names, meta, provenance. No file is touched here."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

FORMAT_VERSION = 1
TMP_SUFFIX = ".flyprep-tmp"
ScanState = Literal["acquiring", "complete", "aborted"]


def chunk_file_name(master_name: str, chunk_format: str, key: int) -> str:
    """Bare file name of chunk ``key``: the master's name plus ``chunk_format % key``."""
    return master_name + (chunk_format % key)


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

    def attrs(self) -> dict[str, Any]:
        """Attribute names and values as written to the chunk file."""
        common = _common_dir(self.sources)
        names = [str(Path(s).relative_to(common)) if common else s for s in self.sources]
        return {
            "flyprep_chunk": self.key,
            "flyprep_frame_start": self.frame_start,
            "flyprep_frame_stop": self.frame_stop,
            "flyprep_frames_missing": self.frames_missing,
            "flyprep_source_dir": common or "",
            "flyprep_sources": json.dumps(names, separators=(",", ":")),
            "flyprep_params": self.params_json,
            "flyprep_params_hash": self.params_hash,
            "flyprep_version": self.flyprep_version,
            "flyprep_written_at": self.written_at,
        }


def _common_dir(paths: Sequence[str]) -> str | None:
    if not paths:
        return None
    try:
        import os.path

        common = os.path.commonpath([str(Path(p).parent) for p in paths])
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

    def provenance_attrs(self) -> dict[str, Any]:
        """Attributes of the master's ``flyprep`` group."""
        return {
            "format_version": FORMAT_VERSION,
            "generation": self.generation,
            "state": self.state,
            "frames_written": self.frames_written,
            "frames_missing": len(self.missing_indices),
            "chunk_frames": self.chunk_frames,
            "params": self.params_json,
            "params_hash": self.params_hash,
            "flyprep_version": self.flyprep_version,
            "created": self.created,
            "updated": now_iso(),
        }

"""What is pushed into a :class:`~flyprep.pipeline.scan_run.ScanRun`: typed, frozen items,
one per frame in index order, then the end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

import numpy as np

from ..states import ScanState


#: One frame of a scan in index order: (index, frame or None if missing, source name).
FrameInput = Tuple[int, Optional[np.ndarray], str]


@dataclass(frozen=True)
class ReadyFrame:
    """Frame ``index`` arrived and was read (``arrived``: when its file was finished,
    on the run's clock; gives the chunk's latency)."""

    index: int
    data: np.ndarray
    source: str
    position: Any = None
    arrived: float | None = None


@dataclass(frozen=True)
class MissingFrame:
    """Frame ``index`` will never arrive: written with weight 0."""

    index: int
    source: str
    position: Any = None


@dataclass(frozen=True)
class FailedFrame:
    """Frame ``index`` arrived but cannot be used: written with weight 0."""

    index: int
    source: str
    position: Any = None


@dataclass(frozen=True)
class ScanEnd:
    """Every frame is pushed: finish the output with the master saying ``state``."""

    state: ScanState = ScanState.COMPLETE


RunItem = Union[ReadyFrame, MissingFrame, FailedFrame, ScanEnd]

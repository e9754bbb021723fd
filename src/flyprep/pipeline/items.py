"""What is pushed into a :class:`~flyprep.pipeline.scan_run.ScanRun`: typed, frozen items,
one per frame in index order, then the end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from ..states import ScanState


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


#: One frame of a scan, in index order.
FrameItem = Union[ReadyFrame, MissingFrame, FailedFrame]
#: What a run takes: frames, then the end.
RunItem = Union[ReadyFrame, MissingFrame, FailedFrame, ScanEnd]


def frame_item(index: int, frame: np.ndarray | None, source: str,
               position: Any = None) -> FrameItem:
    """Frame ``index`` read from ``source`` (None: missing)."""
    if frame is None:
        return MissingFrame(index, source, position)
    return ReadyFrame(index, frame, source, position)

"""``flyprep prepare``'s library side: a finished scan directory through the same
:class:`~flyprep.pipeline.scan_run.ScanRun` the daemon uses.

The preparation is fixed before the run, as the run would fix it (from the config, or from
the first chunk's frames for an auto centre), so that the frames after are read only for
the rows it uses, in a thread of their own ahead of preparing and writing.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..config import PrepareConfig
from ..errors import InputError, OutputError
from ..events import EventSink
from .items import FrameItem, MissingFrame, ReadyFrame
from ..ptyd.resume import finished_state
from ..ptyd.writer import OutputMode
from .preparer import ChunkPreparer, effective_config, load_calibration
from .read_ahead import ReadAhead
from .resume import apply_resume, plan_resume
from .scan_run import PrepareSummary, run_scan
from ..sources.scan_dir import Rows, ScanSource, read_frame, read_frames
from ..sources.live import agreed_type


#: Bytes of frames read ahead of the run at most.
READ_AHEAD_BYTES = 64 << 20


def prepare_scan(
    source: ScanSource,
    config: PrepareConfig,
    output: Path,
    *,
    allow_missing: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    events: EventSink | None = None,
) -> PrepareSummary:
    """Prepare a finished scan directory into ``output`` (.ptyd). Missing or unreadable
    frame files raise :class:`InputError`, unless ``allow_missing`` fills them as missing.
    An existing output is an error, unless ``overwrite`` replaces it or ``resume`` goes on
    with it (the chunks an interrupted run finished are kept when they were prepared as
    this configuration prepares them; see :mod:`flyprep.pipeline.resume`). ``events``
    hears of each chunk on disk (``chunk.written``)."""
    if overwrite and resume:
        raise ValueError("overwrite and resume exclude each other")
    config = effective_config(config, source)
    num_frames = config.scan.num_frames or len(source.frames)
    if num_frames > len(source.frames) and not allow_missing:
        raise InputError(source.root, f"num_frames is {num_frames} but the scan has only "
                                      f"{len(source.frames)} frames")
    if Path(output).exists() and not (overwrite or resume):
        raise OutputError(f"{output}: exists already (pass --overwrite to replace it, or "
                          "--resume to go on with it)")
    calibration = load_calibration(config.prep)
    mode, resolved, start = OutputMode.OVERWRITE if overwrite else OutputMode.NEW, None, 0
    if resume:
        finished = finished_state(output)
        if finished is not None:  # whatever settings made it, as in the daemon
            raise OutputError(f"{output}: is a finished scan already ({finished}); nothing "
                              "to resume (pass --overwrite to prepare it again)")
        plan = plan_resume(output, config, num_frames=num_frames, calibration=calibration)
        if plan is not None:
            mode, resolved, start = apply_resume(plan), plan.resolved, plan.next_frame
    declared = config.scan
    if declared.frame_shape is not None and declared.frame_dtype is not None:
        shape, dtype = tuple(declared.frame_shape), np.dtype(declared.frame_dtype)
    else:
        shape, dtype = _probe(source, allow_missing)
    stop, block = min(num_frames, len(source.frames)), config.output.chunk_frames
    preparer = ChunkPreparer(config.prep, calibration=calibration, chunk_frames=block)
    first: list[FrameItem] = []
    if resolved is None:
        first = _first_chunk(source, config, stop, allow_missing) \
            if config.prep.center is None else []
        preparation = preparer.fix(shape, dtype, [
            f.data for f in first if isinstance(f, ReadyFrame)
            and f.data.shape == shape and f.data.dtype == dtype])
        resolved = preparer.resolved()
    else:
        preparation = preparer.preset(resolved)
    rows = preparation.raw_rows
    later = _frames_from(source, start + len(first), stop, allow_missing, block=block,
                         rows=rows)
    band = ((rows[1] - rows[0]) if rows else shape[0]) * shape[1] * dtype.itemsize
    with ReadAhead(later, depth=max(2, min(block, READ_AHEAD_BYTES // max(1, band))),
                   name="prepare-read") as ahead:
        return run_scan(itertools.chain(first, ahead),
                        num_frames=num_frames, positions=_positions_for(source, num_frames),
                        config=config, output=output, calibration=calibration,
                        frame_shape=shape, dtype=dtype, allow_missing=allow_missing,
                        mode=mode, resolved=resolved, events=events)


def _first_chunk(source: ScanSource, config: PrepareConfig, stop: int,
                 allow_missing: bool) -> list[FrameItem]:
    """The first chunk's frames, whole: an auto centre is found from them."""
    block = config.output.chunk_frames
    return list(_frames_from(source, 0, min(block, stop), allow_missing, block=block))


def _probe(source: ScanSource, allow_missing: bool) -> tuple[tuple[int, int], np.dtype]:
    """Shape and dtype of the scan's frames: what its first readable files agree on (two
    of the first three), so that one odd first frame does not decide for all the others."""
    votes: list[Any] = []
    seen: set[Path] = set()
    for ref in source.frames:
        if ref.path in seen:
            continue  # one vote per file: a stack's frames share its header
        seen.add(ref.path)
        try:
            frame = read_frame(ref, dataset=source.dataset)
        except InputError:
            if not allow_missing:
                raise
            continue
        votes.append((frame.shape, frame.dtype))
        decided = agreed_type(votes, final=False)
        if decided is not None or len(votes) == 3:
            break
    decided = agreed_type(votes, final=True)
    if decided is None:
        raise InputError(source.root, "no frame of the scan could be read")
    return decided  # type: ignore[return-value]


def _positions_for(source: ScanSource, num_frames: int) -> np.ndarray:
    pos = source.positions
    if pos.shape[0] >= num_frames:
        return pos[:num_frames]
    pad = np.repeat(pos[-1:], num_frames - pos.shape[0], axis=0)
    return np.concatenate([pos, pad])


def _frames_from(source: ScanSource, start: int, stop: int, allow_missing: bool, *,
                 block: int, rows: Rows = None) -> Iterator[FrameItem]:
    """Frames ``[start, stop)`` of a scan directory (only ``rows`` of each, when given),
    stacks read ``block`` frames at a time; with ``allow_missing`` a frame that cannot be
    read comes as missing instead of ending the run."""
    i = start
    while i < stop:
        try:
            for index, frame, name in read_frames(source, i, stop, max_block=block,
                                                  rows=rows):
                yield ReadyFrame(index, frame, name)
                i = index + 1
        except InputError:
            if not allow_missing:
                raise
            yield MissingFrame(i, str(source.frames[i].path))
            i += 1

"""Resume: what an output left by an earlier run means for this one, planned before
anything is touched (:func:`plan_resume`, read only), then done (:func:`apply_resume`).

The one place that decides it, for ``flyprep prepare --resume`` and for the daemon's
scans alike. The earlier chunks are kept when their provenance says they were prepared
exactly as this configuration would prepare them (the preparation the first chunk
resolved, the settings, the calibration maps); the plan recovers that preparation from
chunk 0, so that the remaining chunks are prepared as the kept ones were.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import PrepareConfig
from ..errors import ConfigError, InputError
from ..prep import Calibration
from ..ptyd.format import params_hash
from ..ptyd.resume import (ReconcilePlan, apply_reconcile, plan_reconcile,
                           resolved_of_first_chunk)
from ..ptyd.writer import OutputMode
from .preparer import ChunkPreparer, scan_meta, writer_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePlan:
    """What resuming an output will do; nothing has been touched yet."""

    reconcile: ReconcilePlan
    #: The preparation the kept chunks were made with (None: none is kept).
    resolved: dict[str, Any] | None
    #: Why the earlier chunks cannot be kept with this configuration, if they cannot.
    unfit: str | None = None

    @property
    def output(self) -> Path:
        """The master."""
        return self.reconcile.master

    @property
    def finished(self) -> bool:
        """The output is a finished scan (complete or aborted) with every chunk there."""
        return self.reconcile.finished

    @property
    def next_frame(self) -> int:
        """The first frame still to prepare."""
        return self.reconcile.next_frame

    def describe(self) -> str:
        """One line for a log or a terminal."""
        plan = self.reconcile
        parts = [f"{plan.next_key} chunk(s) kept (frames 0..{plan.next_frame - 1})"
                 if plan.next_key else "no chunk kept"]
        if plan.orphans:
            parts.append(f"{len(plan.orphans)} chunk file(s) moved aside "
                         f"({plan.orphans[0][1]})")
        if self.unfit:
            parts.append(f"earlier chunks do not fit this configuration: {self.unfit}")
        return "; ".join(parts)


def plan_resume(output: str | os.PathLike[str], config: PrepareConfig, *, num_frames: int,
                calibration: Calibration | None = None) -> ResumePlan | None:
    """Plan to continue the output at ``output`` with ``config`` (read only). None when
    there is nothing there: no master, no chunk, no temporary file."""
    out = Path(output).absolute()
    if not out.exists() and not any(out.parent.glob(out.name + "*")):
        return None
    out_cfg = config.output
    resolved = resolved_of_first_chunk(out, out_cfg.chunk_format)
    meta, expected_hash, unfit = None, None, None
    if resolved is not None:
        preparer = ChunkPreparer(config.prep, calibration=calibration,
                                 chunk_frames=out_cfg.chunk_frames)
        try:
            preparation = preparer.preset(resolved)
            meta = scan_meta(preparation, num_frames=num_frames, geometry=config.geometry,
                             label=config.scan.label)
            expected_hash = params_hash(writer_params(config, resolved, calibration))
        except (ConfigError, InputError, ValueError) as exc:
            meta, resolved, unfit = None, None, str(exc)
    plan = plan_reconcile(out, chunk_format=out_cfg.chunk_format, meta=meta,
                          chunk_frames=out_cfg.chunk_frames, params_hash=expected_hash)
    return ResumePlan(plan, resolved if plan.next_key else None, unfit)


def apply_resume(plan: ResumePlan) -> OutputMode:
    """Carry out ``plan``: the kept chunks listed in a rebuilt master, the others moved
    aside (never deleted), temporary files removed. Returns how the writer opens the
    output: resuming it, or new when no chunk is kept."""
    if plan.finished:
        raise ValueError(f"{plan.output}: the scan is finished; there is nothing to resume")
    state = apply_reconcile(plan.reconcile)
    for old, new, reason in state.orphaned:
        log.warning("%s moved aside to %s: %s", plan.output.parent / old, new, reason)
    return OutputMode.resuming(state) if state.next_key > 0 else OutputMode.NEW

"""One resume module: the plan only reads, the act carries the plan out; ``prepare`` and
the daemon both go through it (tests/cli/test_prepare.py, tests/daemon)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from flyprep.config import parse_config
from flyprep.errors import ScanInterrupted
from flyprep.pipeline import frame_item, run_scan
from flyprep.pipeline.resume import apply_resume, plan_resume
from flyprep.ptyd.reader import open_ptyd

NUM, CHUNK, RAW = 20, 4, (24, 24)
POSITIONS = np.arange(2 * NUM, dtype=float).reshape(NUM, 2)


def settings(**prep: object):
    return parse_config({"prep": {"shape": 16, "center": [12, 12], **prep},
                         "output": {"chunk_frames": CHUNK},
                         "geometry": {"energy": 7.0, "distance": 1.0, "psize": 1e-4}})


def frames(start: int = 0, stop: int = NUM):
    for i in range(start, stop):
        yield frame_item(i, np.full(RAW, i + 1, dtype=np.uint16), f"f{i}")


def interrupted(out: Path, at: int) -> None:
    def until():
        yield from frames(stop=at)
        raise ScanInterrupted("stop")

    with pytest.raises(ScanInterrupted):
        run_scan(until(), num_frames=NUM, positions=POSITIONS, config=settings(), output=out)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


def test_nothing_there_plans_nothing(tmp_path: Path) -> None:
    assert plan_resume(tmp_path / "s.ptyd", settings(), num_frames=NUM) is None


def test_the_plan_touches_nothing_and_says_what_the_act_will_do(tmp_path: Path) -> None:
    out = tmp_path / "s.ptyd"
    interrupted(out, 13)  # chunks 0..2 whole
    (tmp_path / "s.ptyd.chunk00002").write_bytes(b"torn")
    (tmp_path / "s.ptyd.chunk00003.flyprep-tmp").write_bytes(b"torn")
    before = snapshot(tmp_path)
    plan = plan_resume(out, settings(), num_frames=NUM)
    assert snapshot(tmp_path) == before
    assert plan is not None and not plan.finished and plan.next_frame == 8
    assert plan.describe().startswith("2 chunk(s) kept (frames 0..7); 1 chunk file(s) moved")
    mode = apply_resume(plan)
    assert mode.kind == "resume" and mode.next_key == 2
    assert sorted(os.listdir(tmp_path)) == ["s.ptyd", "s.ptyd.chunk00000", "s.ptyd.chunk00001",
                                            "s.ptyd.chunk00002.orphaned-0"]
    assert [c.n_frames for c in open_ptyd(out).chunks] == [4, 4]
    run_scan(frames(start=8), num_frames=NUM, positions=POSITIONS, config=settings(), output=out,
             mode=mode, resolved=plan.resolved)
    whole = tmp_path / "whole" / "s.ptyd"
    whole.parent.mkdir()
    run_scan(frames(), num_frames=NUM, positions=POSITIONS, config=settings(), output=whole)
    a, b = open_ptyd(out), open_ptyd(whole)
    for ca, cb in zip(a.iter_chunks(), b.iter_chunks(), strict=True):
        np.testing.assert_array_equal(ca.data, cb.data)
        np.testing.assert_array_equal(ca.weights, cb.weights)


def test_chunks_of_other_settings_are_not_kept(tmp_path: Path) -> None:
    out = tmp_path / "s.ptyd"
    interrupted(out, 10)
    plan = plan_resume(out, settings(shape=8), num_frames=NUM)
    assert plan is not None and plan.next_frame == 0 and plan.resolved is None
    assert apply_resume(plan).kind == "new"
    assert not out.exists() and len(list(tmp_path.glob("*.orphaned-*"))) == 2


def test_a_finished_scan_is_not_resumed(tmp_path: Path) -> None:
    out = tmp_path / "s.ptyd"
    run_scan(frames(), num_frames=NUM, positions=POSITIONS, config=settings(), output=out)
    plan = plan_resume(out, settings(), num_frames=NUM)
    assert plan is not None and plan.finished
    with pytest.raises(ValueError, match="nothing to resume"):
        apply_resume(plan)

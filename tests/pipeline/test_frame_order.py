"""FrameOrder: the scan session's frame logic without its thread, with an injected clock:
which frame is handed on next, as data, missing or failed, and the scan's frame type."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from flyprep.events import FrameFailed, FrameMissing, MemorySink
from flyprep.pipeline.frame_order import FrameOrder
from flyprep.pipeline import FailedFrame, MissingFrame, ReadyFrame
from flyprep.sources.live import LiveFrames


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def ptypy(scan: Path, n: int, *, skip: tuple[int, ...] = (), odd: dict[int, np.ndarray] = {}
          ) -> list[Path]:
    scan.mkdir(parents=True, exist_ok=True)
    (scan / "positions.txt").write_text("".join(f"f{i}.npy {i} {-i}\n" for i in range(n)))
    paths = []
    for i in range(n):
        path = scan / f"f{i}.npy"
        if i not in skip:
            np.save(path, odd.get(i, np.full((6, 6), i, np.int32)))
        paths.append(path)
    return paths


def order_for(scan: Path, clock: Clock, n: int, **kw) -> tuple[FrameOrder, MemorySink]:
    live = LiveFrames(scan, positions_file="positions.txt", quarantine_dir="q", clock=clock,
                      read_retries=0)
    live.refresh()
    sink = MemorySink()
    order = FrameOrder(live, scan="s", scan_dir=scan, num_frames=n, chunk_frames=4,
                       frame_timeout_s=10.0, events=sink, clock=clock, **kw)
    return order, sink


def add(order: FrameOrder, paths: list[Path]) -> None:
    for path in paths:
        if path.exists():
            order.live.add_file(path)


def test_frames_in_order_a_gap_waits_then_is_missing_after_the_timeout(tmp_path: Path) -> None:
    clock = Clock()
    paths = ptypy(tmp_path, 6, skip=(2, 3))
    order, sink = order_for(tmp_path, clock, 6)
    add(order, paths)
    assert order.agreed_type(0, ending=False) == ((6, 6), np.dtype("<i4"))
    order.fix_type(order.agreed_type(0, ending=False), "agreed")
    first = order.next(0, ended=False, ending=False)
    assert (first.index, first.source) == (0, str(paths[0]))
    assert order.next(1, ended=False, ending=False).data[0, 0] == 1
    assert order.next(2, ended=False, ending=False) is None  # frame 4 waited 0 s
    clock.t += 9.99
    assert order.next(2, ended=False, ending=False) is None
    clock.t += 0.01
    item = order.next(2, ended=False, ending=False)
    assert isinstance(item, MissingFrame) and item.position.tolist() == [2.0, -2.0]
    assert isinstance(order.next(3, ended=False, ending=False), MissingFrame)
    assert order.next(4, ended=False, ending=False).data[0, 0] == 4
    # f2 and f3 were expected from two files: two runs, each reported once a later
    # frame is handed on
    assert [(e.index, e.count) for e in sink.of_kind(FrameMissing)] == [(2, 1), (3, 1)]
    assert order.missing == 2 and order.failed == 0


def test_a_scan_ended_early_reports_its_gap_once(tmp_path: Path) -> None:
    clock = Clock()
    paths = ptypy(tmp_path, 40)
    order, sink = order_for(tmp_path, clock, 40)
    add(order, paths[:5])
    order.fix_type(((6, 6), np.dtype("<i4")), "declared")
    for i in range(5):
        assert isinstance(order.next(i, ended=True, ending=True), ReadyFrame)
    assert order.next(5, ended=True, ending=True) is None
    for i in range(5, 40):
        order.gap(i, "end marker")
    order.flush()
    [missing] = sink.of_kind(FrameMissing)
    assert (missing.index, missing.count) == (5, 35) and "end marker" in missing.reason


def test_one_odd_first_frame_does_not_decide_the_type(tmp_path: Path) -> None:
    clock = Clock()
    paths = ptypy(tmp_path, 5, odd={0: np.zeros((9, 9), np.uint16)})
    order, sink = order_for(tmp_path, clock, 5)
    add(order, paths[:2])
    assert order.agreed_type(0, ending=False) is None  # 1 vote each: wait for a third
    add(order, paths[2:])
    kind = order.agreed_type(0, ending=False)
    assert kind == ((6, 6), np.dtype("<i4"))
    order.fix_type(kind, "agreed by the scan's first frames")
    assert isinstance(order.next(0, ended=False, ending=False), FailedFrame)
    assert (tmp_path / "q" / "f0.npy").exists()
    assert order.next(1, ended=False, ending=False).data[0, 0] == 1
    [failed] = sink.of_kind(FrameFailed)  # reported once a good frame follows
    assert failed.path == str(paths[0]) and "(9, 9) uint16" in failed.reason


def test_a_lone_vote_decides_after_the_timeout_or_at_the_end(tmp_path: Path) -> None:
    clock = Clock()
    paths = ptypy(tmp_path, 3)
    order, _ = order_for(tmp_path, clock, 3)
    add(order, paths[:1])
    assert order.agreed_type(0, ending=False) is None
    assert order.agreed_type(0, ending=True) == ((6, 6), np.dtype("<i4"))
    clock.t += 10.0
    assert order.agreed_type(0, ending=False) == ((6, 6), np.dtype("<i4"))


def test_declared_type_fixes_it_and_filters_the_votes(tmp_path: Path) -> None:
    clock = Clock()
    paths = ptypy(tmp_path, 4, odd={0: np.zeros((6, 6), np.uint16),
                                    1: np.zeros((6, 6), np.uint16)})
    order, _ = order_for(tmp_path, clock, 4, declared=(None, "int32"))
    add(order, paths)
    assert order.agreed_type(0, ending=False) == ((6, 6), np.dtype("<i4"))  # 2 and 3 only
    declared, _ = order_for(tmp_path, clock, 4, declared=((6, 6), "int32"))
    assert declared.frame_type == ((6, 6), np.dtype("int32"))
    assert declared.type_source == "as the scan's settings declare"


def test_a_stack_is_one_vote(tmp_path: Path) -> None:
    clock = Clock()
    (tmp_path / "positions.txt").write_text("".join(f"{i} {i}\n" for i in range(30)))
    for k, shape in enumerate([(10, 8, 8), (10, 6, 6), (10, 6, 6)]):
        with h5py.File(tmp_path / f"d_{k + 1}.h5", "w") as f:
            f["/entry/data/data"] = np.zeros(shape, np.int32)
    live = LiveFrames(tmp_path, layout="hdf5", positions_file="positions.txt",
                      quarantine_dir="q", clock=clock)
    live.refresh()
    order = FrameOrder(live, scan="s", scan_dir=tmp_path, num_frames=30, chunk_frames=10,
                       frame_timeout_s=10.0, events=MemorySink(), clock=clock)
    live.add_file(tmp_path / "d_1.h5")
    live.add_file(tmp_path / "d_2.h5")
    assert order.agreed_type(0, ending=False) is None  # 10 frames of (8, 8) are one vote
    live.add_file(tmp_path / "d_3.h5")
    assert order.agreed_type(0, ending=False) == ((6, 6), np.dtype("<i4"))

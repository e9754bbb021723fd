"""The chunk buffers one scan leaves for the next: reused when they fit, never more than
one scan's worth, dropped when a scan of another shape needs memory of its own."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flyprep.config import parse_config
from flyprep.pipeline import ReadyFrame, ScanEnd, ScanRun
from flyprep.pipeline.buffer_pool import BufferPool
from flyprep.ptyd import open_ptyd


def pair(n: int = 4, side: int = 8, dtype: str = "int32") -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, side, side), dtype), np.zeros((n, side, side), bool)


def test_a_pair_is_taken_once_and_only_by_its_shape_and_type() -> None:
    pool = BufferPool(max_pairs=4)
    a = pair()
    pool.give([a])
    assert pool.take((4, 8, 8), np.dtype("int32"), (4, 8, 8)) is a
    assert pool.take((4, 8, 8), np.dtype("int32"), (4, 8, 8)) is None


def test_a_scan_of_another_shape_drops_what_is_kept() -> None:
    pool = BufferPool(max_pairs=4)
    pool.give([pair(), pair()])
    assert pool.take((4, 8, 8), np.dtype("float32"), (4, 8, 8)) is None
    assert pool.idle == 0


def test_at_most_max_pairs_are_kept_the_newest() -> None:
    pool = BufferPool(max_pairs=2)
    pairs = [pair() for _ in range(3)]
    pool.give(pairs)
    assert pool.idle == 2
    got = {id(pool.take((4, 8, 8), np.dtype("int32"), (4, 8, 8))[0]) for _ in range(2)}
    assert got == {id(pairs[1][0]), id(pairs[2][0])}


def scan(tmp_path: Path, name: str, pool: BufferPool, value: int, n: int = 10) -> Path:
    config = parse_config({"geometry": {"energy": 6.2, "distance": 7.0, "psize": 172e-6},
                           "prep": {"shape": 16}, "output": {"chunk_frames": 4}})
    out = tmp_path / f"{name}.ptyd"
    run = ScanRun(num_frames=n, positions=np.zeros((n, 2)), config=config, output=out,
                  chunk_buffers=3, buffer_pool=pool)
    for i in range(n):
        run.push(ReadyFrame(i, np.full((32, 32), value + i, np.int32), f"f{i}"))
    run.push(ScanEnd())
    return out


def test_the_next_scan_takes_the_buffers_and_writes_only_its_own_frames(tmp_path) -> None:
    pool = BufferPool(max_pairs=3)
    scan(tmp_path, "a", pool, 1000)
    assert pool.idle == 3  # every pair of the finished run is kept
    kept = [pool.take((4, 16, 16), np.dtype("int32"), (4, 16, 16)) for _ in range(3)]
    pool.give(kept)
    second = scan(tmp_path, "b", pool, 5, n=6)  # a short last chunk: reused rows beyond
    again = [pool.take((4, 16, 16), np.dtype("int32"), (4, 16, 16)) for _ in range(3)]
    # the same arrays: taken by the second scan, used and given back
    assert {id(p[0]) for p in again} == {id(p[0]) for p in kept}
    got = np.concatenate([c.data for c in open_ptyd(second).iter_chunks()])
    np.testing.assert_array_equal(got, np.arange(5, 11)[:, None, None]
                                  * np.ones((6, 16, 16), np.int32))

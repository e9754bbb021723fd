"""ChunkGrid: the one place where a scan is cut into chunks."""

from __future__ import annotations

from flyprep.ptyd.format import ChunkGrid


def test_chunks_of_a_scan_and_the_short_last_one() -> None:
    grid = ChunkGrid(num_frames=250, chunk_frames=100)
    assert grid.n_chunks == 3
    assert [(grid.start(k), grid.stop(k)) for k in range(3)] == [(0, 100), (100, 200),
                                                                  (200, 250)]
    assert [grid.key_of(i) for i in (0, 99, 100, 249)] == [0, 0, 1, 2]
    assert [i for i in range(250) if grid.ends_chunk(i)] == [99, 199]  # 249: short chunk
    assert ChunkGrid(200, 100).n_chunks == 2 and ChunkGrid(1, 100).n_chunks == 1

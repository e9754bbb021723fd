"""FrameBook and Scan.auto(): ordering, WAIT/EOS, back-pressure, missing frames, positions."""

from __future__ import annotations

import numpy as np
import pytest

from flyprep.config import PrepConfig
from flyprep.pipeline import ChunkPreparer
from flyprep.pipeline.frame_book import EOS, WAIT, FrameBook, RawChunk, Scan

SHAPE = (6, 5)



def make_book(**kwargs) -> FrameBook:
    """A FrameBook whose frames have positions (frame i at (i, -i) um) unless the test
    brings its own table or per-frame positions."""
    kwargs.setdefault("positions", np.stack([np.arange(kwargs["num_frames"]) * 1e-6,
                                             -np.arange(kwargs["num_frames"]) * 1e-6], 1))
    return FrameBook(**kwargs)

def frame(i: int, dtype: str = "int32") -> np.ndarray:
    """A frame whose every pixel tells its index (plus a pattern so frames differ)."""
    return (np.full(SHAPE, 1000 * (i + 1)) + np.arange(SHAPE[0] * SHAPE[1]).reshape(SHAPE)
            ).astype(dtype)


def roi(f: np.ndarray) -> np.ndarray:
    """PrepConfig() defaults on a (6, 5) frame: side 5 around the fftshift centre (3, 2)."""
    return f[1:6, :]


class FakeClock:
    """An injectable monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def drain(book: FrameBook) -> list[RawChunk]:
    """Release chunks until WAIT or EOS."""
    out = []
    while isinstance(raw := book.release(), RawChunk):
        out.append(raw)
    return out


def assert_chunk(raw: RawChunk, key: int, indices: list[int], present: list[bool] | None = None):
    assert raw.key == key
    assert raw.frame_start == indices[0]
    assert len(raw.frames) == len(indices) and raw.frame_shape == SHAPE
    present = [True] * len(indices) if present is None else present
    np.testing.assert_array_equal(raw.present, present)
    for j, (i, p) in enumerate(zip(indices, present)):
        if p:
            np.testing.assert_array_equal(raw.frames[j], frame(i))
        else:
            assert raw.frames[j] is None


# -- ordering, WAIT, EOS --------------------------------------------------------------

def test_out_of_order_frames_come_out_in_index_order():
    book = make_book(num_frames=10, chunk_frames=4, buffer_chunks=2)
    for i in [5, 3, 7, 0, 2, 6, 1, 4]:
        assert book.add(i, frame(i), source=f"f{i}")
    first = drain(book)
    assert [c.key for c in first] == [0, 1]
    assert_chunk(first[0], 0, [0, 1, 2, 3])
    assert_chunk(first[1], 1, [4, 5, 6, 7])
    assert first[0].sources == ("f0", "f1", "f2", "f3")
    assert book.release() is WAIT
    for i in [9, 8]:
        assert book.add(i, frame(i))
    (last,) = drain(book)
    assert_chunk(last, 2, [8, 9])
    assert book.release() is EOS


def test_wait_until_every_frame_of_the_chunk_is_resolved():
    book = make_book(num_frames=8, chunk_frames=4, buffer_chunks=2)
    for i in [0, 1, 3, 4, 5, 6, 7]:  # frame 2 is late; the whole next chunk is there
        book.add(i, frame(i))
    for _ in range(3):
        assert book.release() is WAIT
    assert book.next_key == 0
    book.add(2, frame(2))
    chunks = drain(book)
    assert [c.frame_start for c in chunks] == [0, 4]
    assert_chunk(chunks[0], 0, [0, 1, 2, 3])


def test_last_chunk_is_shorter_then_eos_forever():
    book = make_book(num_frames=7, chunk_frames=3, buffer_chunks=3)
    assert book.n_chunks == 3
    for i in reversed(range(7)):
        book.add(i, frame(i))
    chunks = drain(book)
    assert [len(c.frames) for c in chunks] == [3, 3, 1]
    assert_chunk(chunks[2], 2, [6])
    assert book.release() is EOS
    assert book.release() is EOS


def test_scan_auto_releases_prepared_chunks_and_signals():
    book = make_book(num_frames=5, chunk_frames=3, buffer_chunks=2)
    scan = Scan(book, ChunkPreparer(PrepConfig(), chunk_frames=3))
    assert scan.auto(3) is WAIT
    for i in range(5):
        book.add(i, frame(i))
    first = scan.auto(3)
    assert first.frame_start == 0 and first.n_frames == 3
    np.testing.assert_array_equal(first.data[1], roi(frame(1)))
    second = scan.auto()
    assert second.frame_start == 3 and second.n_frames == 2
    assert scan.auto(3) is EOS


@pytest.mark.parametrize("wrong", [1, 2, 4, 100])
def test_scan_auto_refuses_another_chunk_size(wrong):
    book = make_book(num_frames=6, chunk_frames=3)
    scan = Scan(book, lambda raw: raw)
    for i in range(3):
        book.add(i, frame(i))
    with pytest.raises(ValueError, match="chunks of 3 frames"):
        scan.auto(wrong)
    assert book.next_key == 0  # nothing was released by the refused call
    assert isinstance(scan.auto(3), RawChunk)


# -- back-pressure ------------------------------------------------------------------

def test_add_beyond_the_window_is_refused_until_a_chunk_is_released():
    book = make_book(num_frames=100, chunk_frames=5, buffer_chunks=2)
    assert list(book.window) == list(range(10))
    assert not book.accepts(10)
    assert book.add(10, frame(10)) is False
    assert book.add(99, frame(99)) is False
    for i in range(10):
        assert book.add(i, frame(i)) is True
    raw = book.release()
    assert_chunk(raw, 0, [0, 1, 2, 3, 4])
    assert list(book.window) == list(range(5, 15))
    assert book.add(10, frame(10)) is True
    assert book.add(15, frame(15)) is False


def test_memory_is_bounded_by_the_ring_of_slots():
    """The book holds at most ring * chunk frames, keeps references (no copies), and lets
    go of every frame once its chunk is released."""
    import gc
    import weakref

    n, chunk, ring = 60, 5, 3
    book = make_book(num_frames=n, chunk_frames=chunk, buffer_chunks=ring)
    pending = list(range(n))[::-1]
    held = []
    while True:
        # The producer pushes everything it may; refused frames wait for the next round.
        pending = [i for i in pending if not book.add(i, frame(i))]
        raw = book.release()
        if raw is EOS:
            break
        assert isinstance(raw, RawChunk), "every frame fitting the window was added"
        assert_chunk(raw, raw.key, list(range(raw.frame_start, raw.frame_start + chunk)))
        assert sum(f is not None for f in book._frames) <= ring * chunk
        held.append(weakref.ref(raw.frames[0]))
        del raw
    gc.collect()
    assert len(held) == n // chunk and not pending
    assert all(ref() is None for ref in held), "released frames are not kept alive"
    assert all(f is None for f in book._frames)


# -- refusals -------------------------------------------------------------------------

def test_duplicate_frame_raises():
    book = make_book(num_frames=4, chunk_frames=2)
    book.add(1, frame(1))
    with pytest.raises(ValueError, match="already stored"):
        book.add(1, frame(1))


def test_wrong_shape_raises():
    book = make_book(num_frames=4, chunk_frames=2)
    book.add(0, frame(0))
    with pytest.raises(ValueError, match="shape"):
        book.add(1, np.zeros((5, 6), "int32"))
    with pytest.raises(ValueError, match="shape"):
        book.add(1, np.zeros((1, *SHAPE), "int32"))
    book.add(1, frame(1))  # the refused frames left no trace


def test_other_dtype_raises():
    book = make_book(num_frames=4, chunk_frames=2)
    book.add(0, frame(0))
    with pytest.raises(ValueError, match="dtype"):
        book.add(1, frame(1).astype(np.float64) + 0.5)


@pytest.mark.parametrize("index", [-1, 4, 1000])
def test_index_outside_the_scan_raises(index):
    book = make_book(num_frames=4, chunk_frames=2)
    with pytest.raises(ValueError, match="outside the scan"):
        book.add(index, frame(0))


def test_frame_of_a_released_chunk_raises():
    book = make_book(num_frames=4, chunk_frames=2)
    book.add(0, frame(0))
    book.add(1, frame(1))
    assert isinstance(book.release(), RawChunk)
    with pytest.raises(ValueError, match="released"):
        book.add(1, frame(1))


def test_fewer_table_positions_than_frames_raises():
    with pytest.raises(ValueError, match="positions"):
        make_book(num_frames=5, chunk_frames=2, positions=np.zeros((4, 2)))


# -- missing frames -------------------------------------------------------------------

def test_end_fills_every_frame_not_arrived_and_readers_reach_num_frames():
    book = make_book(num_frames=10, chunk_frames=4, buffer_chunks=2)
    for i in [0, 1, 5]:
        book.add(i, frame(i))
    assert book.release() is WAIT
    book.end()
    chunks = drain(book)
    assert book.release() is EOS
    assert sum(len(c.frames) for c in chunks) == 10
    assert_chunk(chunks[0], 0, [0, 1, 2, 3], [True, True, False, False])
    assert_chunk(chunks[1], 1, [4, 5, 6, 7], [False, True, False, False])
    assert_chunk(chunks[2], 2, [8, 9], [False, False])
    assert book.missing_total == 7


def test_missing_frames_become_zero_data_and_zero_weights_after_preparation():
    book = make_book(num_frames=12, chunk_frames=4, buffer_chunks=2)
    scan = Scan(book, ChunkPreparer(PrepConfig(), chunk_frames=4))
    for i in [0, 1, 2, 3, 4, 5, 6, 7]:
        book.add(i, frame(i))
    assert [scan.auto().frame_start, scan.auto().frame_start] == [0, 4]
    # Chunk 2 reuses chunk 0's slots: the slots of frames that never come hold old data.
    book.add(8, frame(8))
    book.add(10, frame(10))
    book.end()
    chunk = scan.auto()
    assert chunk.frame_start == 8
    np.testing.assert_array_equal(chunk.missing, [False, True, False, True])
    for j in (1, 3):
        assert not chunk.data[j].any()
        assert not chunk.weights[j].any()
    for j in (0, 2):
        assert chunk.weights[j].all()
        np.testing.assert_array_equal(chunk.data[j], roi(frame(8 + j)))
    assert scan.auto() is EOS
    assert book.missing_total == 2


def test_mark_missing_resolves_frames_and_counts_them():
    book = make_book(num_frames=6, chunk_frames=3, buffer_chunks=1)
    book.add(0, frame(0))
    book.mark_missing([1, 2, 3, 4])  # 3 and 4 lie beyond the window: ignored
    raw = book.release()
    assert_chunk(raw, 0, [0, 1, 2], [True, False, False])
    assert book.missing_total == 2
    assert book.release() is WAIT  # frames 3-5 are still expected
    book.add(3, frame(3))
    book.add(5, frame(5))
    book.mark_missing([4])
    assert_chunk(book.release(), 1, [3, 4, 5], [True, False, True])
    assert book.missing_total == 3
    assert book.release() is EOS


def test_frame_timeout_fills_only_frames_overtaken_by_old_enough_later_frames():
    clock = FakeClock()
    book = make_book(num_frames=8, chunk_frames=4, buffer_chunks=2, frame_timeout_s=1.0,
                     clock=clock)
    book.add(0, frame(0))
    book.add(2, frame(2))  # overtakes frame 1
    assert book.release() is WAIT
    clock.t = 0.99  # frame 2 is not yet older than the timeout
    assert book.release() is WAIT
    clock.t = 5.0
    # Frame 1 is overtaken by frame 2 (5 s old), but frame 3 has nothing after it.
    assert book.release() is WAIT
    book.add(4, frame(4))  # overtakes frame 3, just now
    clock.t = 5.5
    assert book.release() is WAIT
    clock.t = 6.0
    raw = book.release()
    assert_chunk(raw, 0, [0, 1, 2, 3], [True, False, True, False])
    assert book.missing_total == 2
    # Frame 5 is overtaken by nothing: it waits however long it takes.
    clock.t = 1000.0
    assert book.release() is WAIT
    for i in (5, 6, 7):
        book.add(i, frame(i))
    assert_chunk(book.release(), 1, [4, 5, 6, 7])
    assert book.missing_total == 2


def test_frame_timeout_overtaken_from_the_next_chunk_in_the_ring():
    clock = FakeClock()
    book = make_book(num_frames=8, chunk_frames=4, buffer_chunks=2, frame_timeout_s=2.0,
                     clock=clock)
    for i in (0, 1, 2):
        book.add(i, frame(i))
    clock.t = 1.0
    book.add(6, frame(6))
    clock.t = 2.9
    assert book.release() is WAIT
    clock.t = 3.0
    raw = book.release()
    assert_chunk(raw, 0, [0, 1, 2, 3], [True, True, True, False])


def test_frame_timeout_overtaken_across_the_ring_wrap():
    clock = FakeClock()
    book = make_book(num_frames=12, chunk_frames=4, buffer_chunks=2, frame_timeout_s=1.0,
                     clock=clock)
    for i in range(8):
        if i != 7:
            book.add(i, frame(i))
    assert_chunk(book.release(), 0, [0, 1, 2, 3])
    clock.t = 10.0
    assert book.release() is WAIT  # frame 7 ends the window so far: nothing overtook it
    book.add(8, frame(8))  # chunk 2 reuses the ring's first slots
    clock.t = 10.5
    assert book.release() is WAIT
    clock.t = 11.0
    assert_chunk(book.release(), 1, [4, 5, 6, 7], [True, True, True, False])
    assert book.missing_total == 1


def test_frame_timeout_never_fills_the_last_frame_of_the_window():
    clock = FakeClock()
    book = make_book(num_frames=8, chunk_frames=4, buffer_chunks=1, frame_timeout_s=1.0,
                     clock=clock)
    for i in range(3):
        book.add(i, frame(i))
    clock.t = 100.0
    assert book.release() is WAIT  # frame 3 may still come: nothing can overtake it yet
    book.add(3, frame(3))
    assert_chunk(book.release(), 0, [0, 1, 2, 3])
    assert book.missing_total == 0


def test_no_timeout_means_waiting_forever():
    clock = FakeClock()
    book = make_book(num_frames=4, chunk_frames=4, clock=clock)
    book.add(0, frame(0))
    book.add(3, frame(3))
    clock.t = 1e9
    assert book.release() is WAIT


# -- positions ------------------------------------------------------------------------

def test_positions_from_the_table():
    table = np.arange(20, dtype=float).reshape(10, 2) * 1e-6
    book = make_book(num_frames=10, chunk_frames=4, buffer_chunks=3, positions=table)
    for i in range(10):
        if i != 6:
            book.add(i, frame(i))
    book.end()
    chunks = drain(book)
    np.testing.assert_array_equal(np.concatenate([c.positions for c in chunks]), table)


def test_positions_from_each_frame_and_missing_frames_repeat_the_previous():
    book = FrameBook(num_frames=8, chunk_frames=4, buffer_chunks=2)  # no table
    given = {i: (0.5 * i, -0.25 * i) for i in range(8)}
    for i in (0, 2, 3, 5, 6):
        book.add(i, frame(i), position=given[i])
    book.mark_missing([1, 4, 7])
    first, second = drain(book)
    np.testing.assert_array_equal(first.positions, [given[0], given[0], given[2], given[3]])
    # Frame 4 opens the chunk: it repeats the last position of the chunk before.
    np.testing.assert_array_equal(second.positions, [given[3], given[5], given[6], given[6]])
    assert first.positions.dtype == np.float64


def test_no_frame_at_all_cannot_be_released():
    book = make_book(num_frames=3, chunk_frames=3)
    book.end()
    with pytest.raises(ValueError, match="no frame"):
        book.release()


def test_a_present_frame_without_position_is_refused():
    book = FrameBook(num_frames=4, chunk_frames=2)
    book.add(0, frame(0), position=(0.0, 0.0))
    book.add(1, frame(1))
    with pytest.raises(ValueError, match="frame 1 arrived without a position"):
        book.release()


def test_an_all_missing_chunk_is_released_when_the_frame_shape_is_known():
    book = make_book(num_frames=4, chunk_frames=2, frame_shape=SHAPE, dtype="int32")
    book.mark_missing([0, 1])
    raw = book.release()
    assert isinstance(raw, RawChunk) and not raw.present.any()
    assert raw.frame_shape == SHAPE and raw.dtype == np.int32

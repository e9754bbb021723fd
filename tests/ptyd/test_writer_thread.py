"""WriterThread: chunks written in order off the producer's thread, failures surfaced."""

import threading

import pytest

from flyprep.errors import OutputError
from flyprep.ptyd import PtydWriter, open_ptyd
from flyprep.ptyd.writer_thread import WriterThread

from ptyd_helpers import make_chunk


def pooled(key, start, n, released):
    chunk = make_chunk(key, start, n)
    return type(chunk)(**{**chunk.__dict__, "release": lambda: released.append(key)})


def test_chunks_written_in_order_and_buffers_returned(tmp_path, meta):
    released, written, threads = [], [], set()

    def on_written(chunk, listed):
        written.append((chunk.key, listed.target.name))
        threads.add(threading.current_thread().name)

    w = WriterThread(PtydWriter(tmp_path / "s.ptyd", meta=meta, chunk_frames=10),
                     max_queued=2, on_written=on_written)
    for key in range(5):
        w.submit(pooled(key, key * 10, 10, released))
    w.close()
    assert written == [(k, f"s.ptyd.chunk0000{k}") for k in range(5)]
    assert sorted(released) == list(range(5))
    assert threads == {"flyprep:writer:s.ptyd"}
    ptyd = open_ptyd(tmp_path / "s.ptyd")
    assert ptyd.state == "complete" and ptyd.n_frames == 50


def test_a_chunk_is_told_of_only_once_the_published_master_lists_it(tmp_path, meta):
    """Chunks queue up behind a slow disk and the master is published once for several:
    each is told of after that publication, never before (chunk.written's promise)."""
    import time

    writer = PtydWriter(tmp_path / "s.ptyd", meta=meta, chunk_frames=10)
    slow_write = writer.write_chunk
    publishes: list[bool] = []

    def write_chunk(chunk, *, publish=True):
        time.sleep(0.05)
        publishes.append(publish)
        return slow_write(chunk, publish=publish)

    writer.write_chunk = write_chunk
    told = []

    def on_written(chunk, listed):
        master = open_ptyd(tmp_path / "s.ptyd")
        assert chunk.key in [c.key for c in master.chunks]
        assert listed.frames_available == master.n_frames >= chunk.frame_start + chunk.n_frames
        told.append((chunk.key, listed.generation))

    w = WriterThread(writer, max_queued=3, publish_interval_s=60.0, on_written=on_written)
    for key in range(5):
        w.submit(make_chunk(key, key * 10, 10))
    w.close()
    assert False in publishes, "no chunk was deferred: the test did not test"
    assert [k for k, _ in told] == list(range(5))
    generations = [g for _, g in told]
    assert generations == sorted(generations) and len(set(generations)) < 5


def test_a_writer_that_falls_behind_still_publishes_at_the_interval(tmp_path, meta):
    """With chunks always queued, the master is still republished every interval."""
    import time

    published = []
    writer = PtydWriter(tmp_path / "s.ptyd", meta=meta, chunk_frames=10)
    slow_write = writer.write_chunk

    def write_chunk(chunk, *, publish=True):
        time.sleep(0.05)  # a slow disk: the producer always has the next chunk queued
        published.append(publish)
        return slow_write(chunk, publish=publish)

    writer.write_chunk = write_chunk
    w = WriterThread(writer, max_queued=3, publish_interval_s=0.0)
    for key in range(5):
        w.submit(make_chunk(key, key * 10, 10))
    w.close()
    assert published == [True] * 5, "an interval of 0 publishes after every chunk"

    published.clear()
    writer2 = PtydWriter(tmp_path / "t.ptyd", meta=meta, chunk_frames=10)
    slow2 = writer2.write_chunk
    writer2.write_chunk = lambda chunk, *, publish=True: (time.sleep(0.05), published.append(publish),
                                                           slow2(chunk, publish=publish))[2]
    w2 = WriterThread(writer2, max_queued=5, publish_interval_s=3600)
    for key in range(5):
        w2.submit(make_chunk(key, key * 10, 10))
    w2.close()
    assert published[0], "the first chunk is published at once: readers start on it"
    assert published.count(True) < 5, "a long interval coalesces while chunks are queued"
    assert open_ptyd(tmp_path / "t.ptyd").n_frames == 50


def test_failure_reaches_the_producer_and_buffers_still_return(tmp_path, meta):
    released = []
    w = WriterThread(PtydWriter(tmp_path / "s.ptyd", meta=meta, chunk_frames=10))
    w.submit(pooled(0, 0, 10, released))
    w.submit(pooled(2, 20, 10, released))  # out of order: the writer refuses it
    with pytest.raises(OutputError, match="out of order"):
        for key in range(3, 50):
            w.submit(pooled(key, key * 10, 10, released))
    with pytest.raises(OutputError, match="out of order"):
        w.close()
    assert 0 in released and 2 in released
    assert open_ptyd(tmp_path / "s.ptyd").n_frames == 10


def test_abort_publishes_aborted_after_the_queue(tmp_path, meta):
    w = WriterThread(PtydWriter(tmp_path / "s.ptyd", meta=meta, chunk_frames=10))
    w.submit(make_chunk(0, 0, 10))
    w.submit(make_chunk(1, 10, 10))
    w.abort()
    ptyd = open_ptyd(tmp_path / "s.ptyd")
    assert ptyd.state == "aborted" and ptyd.n_frames == 20


def test_parts_never_wait_behind_queued_chunks_nor_delay_publication(tmp_path, meta):
    """Parts of the filling chunk go to the thread at once (their frames sit in a chunk
    buffer already); only whole chunks count against max_queued, and a chunk is published
    as soon as no other *chunk* waits, however many parts do."""
    import time

    import numpy as np

    from flyprep.prep.chunk import PreparedPart

    gate = threading.Event()
    writer = PtydWriter(tmp_path / "s.ptyd", meta=meta, chunk_frames=10)
    real_write = writer.write_chunk
    publishes = []

    def write_chunk(chunk, *, publish=True):
        gate.wait(10)  # a disk stall
        publishes.append((chunk.chunk.key, publish))
        return real_write(chunk, publish=publish)

    writer.write_chunk = write_chunk
    w = WriterThread(writer, max_queued=1, publish_interval_s=3600)
    w.submit(make_chunk(0, 0, 10))  # taken by the thread, stalled
    time.sleep(0.1)
    started = time.monotonic()
    full = make_chunk(1, 10, 10)
    for offset in (0, 3, 6):
        w.submit_part(PreparedPart(1, 10, 10, offset, full.data[offset:offset + 3],
                                   np.zeros(3, bool)))
    assert time.monotonic() - started < 0.5, "a part waited behind a stalled chunk"
    done = threading.Event()

    def submit_next():
        w.submit(type(full)(**{**full.__dict__, "written_ahead": 9}))
        done.set()

    threading.Thread(target=submit_next, daemon=True).start()
    gate.set()
    assert done.wait(10)
    w.suspend()
    assert publishes == [(0, True), (1, True)], "each chunk published: no chunk waited"
    ptyd = open_ptyd(tmp_path / "s.ptyd")
    assert ptyd.n_frames == 20
    np.testing.assert_array_equal(ptyd.read_chunk(ptyd.chunks[1]).data, full.data)


def test_max_queued_counts_chunks_waiting_not_the_one_being_written(tmp_path, meta):
    gate = threading.Event()
    writer = PtydWriter(tmp_path / "s.ptyd", meta=meta, chunk_frames=10)
    real_write = writer.write_chunk

    def write_chunk(chunk, *, publish=True):
        gate.wait(10)  # a disk stall
        return real_write(chunk, publish=publish)

    writer.write_chunk = write_chunk
    w = WriterThread(writer, max_queued=1)
    w.submit(make_chunk(0, 0, 10))  # being written (stalled)
    import time

    time.sleep(0.1)
    second = threading.Thread(target=w.submit, args=(make_chunk(1, 10, 10),), daemon=True)
    second.start()
    second.join(1)
    assert not second.is_alive(), "one chunk may wait while another is written"
    third = threading.Thread(target=w.submit, args=(make_chunk(2, 20, 10),), daemon=True)
    third.start()
    third.join(0.3)
    assert third.is_alive(), "a second waiting chunk must wait for room"
    gate.set()
    third.join(10)
    w.suspend()
    assert open_ptyd(tmp_path / "s.ptyd").n_frames == 30


def test_the_writer_says_since_when_it_writes_and_nothing_while_idle(tmp_path, meta):
    """What the daemon's health check reads: a writer stuck on one chunk (a hung disk) is
    seen by how long it has been busy; an idle writer is never stuck."""
    import time

    writer = PtydWriter(tmp_path / "s.ptyd", meta=meta, chunk_frames=10)
    real_write, gate = writer.write_chunk, threading.Event()

    def hung_write(chunk, *, publish=True):
        gate.wait(10)
        return real_write(chunk, publish=publish)

    writer.write_chunk = hung_write
    w = WriterThread(writer, max_queued=2)
    try:
        time.sleep(0.1)
        assert w.busy_since is None
        before = time.monotonic()
        w.submit(make_chunk(0, 0, 10))
        deadline = time.monotonic() + 5
        while w.busy_since is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.2)
        assert before <= w.busy_since <= time.monotonic() - 0.2
        gate.set()
        deadline = time.monotonic() + 5
        while w.busy_since is not None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        gate.set()
        w.suspend()

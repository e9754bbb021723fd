"""ReadAhead: the same items in the same order, an error where it happened, a bounded
lead, and a thread that ends however the consumer stops."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

from flyprep.pipeline.read_ahead import ReadAhead


def test_the_same_items_in_order() -> None:
    with ReadAhead(iter(range(1000)), depth=7) as ahead:
        assert list(ahead) == list(range(1000))
        assert list(ahead) == []  # ended stays ended


def test_an_error_comes_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with ReadAhead(items(), depth=4) as ahead:
        with pytest.raises(OSError, match="disk gone"):
            for item in ahead:
                got.append(item)
    assert got == [1, 2]


def test_it_reads_at_most_depth_items_ahead() -> None:
    made = []

    def items() -> Iterator[int]:
        for i in range(100):
            made.append(i)
            yield i

    with ReadAhead(items(), depth=3) as ahead:
        assert next(ahead) == 0
        time.sleep(0.2)
        # one taken, three waiting, one more read and waiting for room
        assert len(made) <= 1 + 3 + 1


def test_leaving_early_stops_the_thread_and_closes_the_reader() -> None:
    closed = threading.Event()

    def items() -> Iterator[int]:
        try:
            for i in range(10**9):
                yield i
        finally:
            closed.set()

    ahead = ReadAhead(items(), depth=2, name="test-read-ahead")
    with ahead:
        assert next(ahead) == 0
    assert not ahead.alive and closed.is_set()
    assert not any(t.name == "flyprep:test-read-ahead" for t in threading.enumerate())


def test_a_consumer_interrupted_stops_the_reader() -> None:
    ahead = ReadAhead(iter(range(10**9)), depth=2)
    with pytest.raises(KeyboardInterrupt):
        with ahead:
            for item in ahead:
                if item == 5:
                    raise KeyboardInterrupt
    assert not ahead.alive


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        ReadAhead(iter(()), depth=0)

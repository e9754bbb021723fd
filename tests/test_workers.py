"""The one thread base: start, stop with a sentinel, join, errors handed back; and the leak
check every test runs under."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from thread_check import live_threads
from flyprep.workers import STOP, THREAD_PREFIX, Call, Ticker, Worker


class Echo(Worker):
    """Doubles what it is given until it gets STOP."""

    def __init__(self) -> None:
        super().__init__("echo")
        self.inbox: queue.Queue[object] = queue.Queue()
        self.out: list[int] = []

    def wake(self) -> None:
        self.inbox.put(STOP)

    def loop(self) -> None:
        self.mark_ready()
        while (item := self.inbox.get()) is not STOP:
            self.out.append(2 * item)  # type: ignore[operator]


def test_a_worker_does_what_is_queued_before_it_stops() -> None:
    echo = Echo().start()
    assert echo.alive and echo.started and not echo.stopping
    assert any(t.name == THREAD_PREFIX + "echo" for t in threading.enumerate())
    for i in range(5):
        echo.inbox.put(i)
    assert echo.stop_and_join(5)
    assert echo.out == [0, 2, 4, 6, 8] and not echo.alive and echo.stopping
    assert echo.thread_error is None
    with pytest.raises(RuntimeError, match="started already"):
        echo.start()


def test_an_error_before_ready_is_raised_by_start() -> None:
    class BadBind(Worker):
        def loop(self) -> None:
            raise OSError("address in use")

    worker = BadBind("bad")
    with pytest.raises(OSError, match="address in use"):
        worker.start(ready_timeout_s=5)
    assert not worker.alive


def test_an_error_after_ready_is_kept_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Breaks(Worker):
        def loop(self) -> None:
            self.mark_ready()
            raise ValueError("bug")

    worker = Breaks("breaks").start(ready_timeout_s=5)
    assert worker.join(5)
    assert isinstance(worker.thread_error, ValueError)
    assert "breaks: thread ended by an error" in caplog.text


def test_an_error_of_a_worker_nobody_waits_for_is_logged(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    class Breaks(Worker):
        def loop(self) -> None:
            raise ValueError("bug")

    worker = Breaks("unwatched").start()
    assert worker.join(5)
    assert isinstance(worker.thread_error, ValueError)
    assert "unwatched: thread ended by an error" in caplog.text


def test_a_ticker_ticks_survives_a_bad_tick_and_stops(caplog: pytest.LogCaptureFixture) -> None:
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.monotonic())
        if len(ticks) == 2:
            raise RuntimeError("one bad tick")

    ticker = Ticker("tick", 0.01, tick).start()
    deadline = time.monotonic() + 5
    while len(ticks) < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ticker.stop_and_join(5)
    assert len(ticks) >= 5 and "tick: tick failed" in caplog.text


def test_a_call_runs_once_and_hands_back_its_error() -> None:
    done: list[str] = []
    ok = Call("once", lambda: done.append(threading.current_thread().name)).start()
    assert ok.join(5) and done == [THREAD_PREFIX + "once"] and ok.thread_error is None
    bad = Call("bad-call", lambda: 1 / 0).start()
    assert bad.join(5) and isinstance(bad.thread_error, ZeroDivisionError)


def test_the_leak_check_sees_a_worker_left_running() -> None:
    before = live_threads()
    echo = Echo().start()
    try:
        assert {t.name for t in live_threads() - before} == {THREAD_PREFIX + "echo"}
    finally:
        echo.stop_and_join(5)
    assert not live_threads() - before


def test_no_module_but_workers_starts_a_thread_of_its_own() -> None:
    """docs/architecture.md: every thread flyprep owns is a Worker."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "flyprep"
    owners = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(
                    node.func, "id", None)) == "Thread":
                owners.append(path.relative_to(src).as_posix())
    assert owners == ["workers.py"]

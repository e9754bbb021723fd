"""One way to own a thread: a :class:`Worker` is started, told to stop, joined, and hands
back an error that escaped its loop.

Everything in flyprep that owns a thread is a worker (the scan sessions, the writer thread,
the event publisher, the control server, the ``.apx`` streamer, the watcher's timer
(:class:`Ticker`), the demo's daemon loop and simulator (:class:`Call`)), so
that every thread is named ``flyprep:<what>``, stops the same way and can be checked for
leaks the same way. A subclass writes its loop in :meth:`Worker.loop` and, when the loop
sleeps on something, says in :meth:`Worker.wake` how to wake it: put :data:`STOP` into
its queue, set its event, send on its pipe.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, TypeVar

log = logging.getLogger(__name__)

#: What a worker's queue carries when the worker should stop.
STOP = object()

#: Every worker thread's name starts with this.
THREAD_PREFIX = "flyprep:"

W = TypeVar("W", bound="Worker")


class Worker:
    """A thread with a life: :meth:`start`, :meth:`stop`, :meth:`join`; an error that
    escapes :meth:`loop` is logged and kept in :attr:`thread_error` (the thread ends)."""

    def __init__(self, name: str) -> None:
        self.worker_name = name
        #: The error that ended the loop, if one did.
        self.thread_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        #: When the loop last said it makes progress (:meth:`beat`; monotonic seconds).
        self.last_beat = time.monotonic()

    def start(self: W, *, ready_timeout_s: float | None = None) -> W:
        """Start the thread (once). With ``ready_timeout_s``, wait until the loop says it
        is ready (:meth:`mark_ready`: its sockets bound, say); an error before that is
        raised here, and TimeoutError if it takes longer."""
        if ready_timeout_s is None:
            self._ready.set()  # nobody waits: an error at any time is logged
        self.launch()
        if ready_timeout_s is not None:
            self.wait_ready(ready_timeout_s)
        return self

    def launch(self) -> None:
        """Start the thread without waiting; :meth:`wait_ready` waits later (other work
        can be done meanwhile)."""
        if self._thread is not None:
            raise RuntimeError(f"{self.worker_name}: started already")
        self._thread = threading.Thread(target=self._main, daemon=True,
                                        name=THREAD_PREFIX + self.worker_name)
        self._thread.start()

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until the loop says it is ready; an error before that is raised here,
        TimeoutError if it takes longer than ``timeout_s``."""
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"{self.worker_name}: not ready within {timeout_s} s")
        if self._startup_error is not None and self._thread is not None:
            self._thread.join()
            raise self._startup_error

    def stop(self) -> None:
        """Ask the loop to end (:attr:`stopping` turns true, :meth:`wake` is called);
        returns at once, see :meth:`join`."""
        self._stopping.set()
        self.wake()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for the thread; True once it has ended (or never started)."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    def stop_and_join(self, timeout_s: float | None = None) -> bool:
        """:meth:`stop`, then :meth:`join`."""
        self.stop()
        return self.join(timeout_s)

    @property
    def started(self) -> bool:
        """True once :meth:`start` was called."""
        return self._thread is not None

    @property
    def alive(self) -> bool:
        """True while the thread runs."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping.is_set()

    # ---- for subclasses

    def loop(self) -> None:
        """The thread's work; return when :attr:`stopping` (or when done)."""
        raise NotImplementedError

    def wake(self) -> None:
        """Make a sleeping :meth:`loop` look at :attr:`stopping` (nothing by default)."""

    def beat(self) -> None:
        """Say the loop is making progress (a health check reads :attr:`last_beat`)."""
        self.last_beat = time.monotonic()

    def mark_ready(self) -> None:
        """Called by :meth:`loop` once set up: :meth:`start` returns."""
        self._ready.set()

    def _main(self) -> None:
        try:
            self.loop()
        except BaseException as exc:  # handed back, never lost with the thread
            self.thread_error = exc
            if self._ready.is_set():
                log.error("%s: thread ended by an error", self.worker_name, exc_info=exc)
            else:
                self._startup_error = exc  # start() raises it
        finally:
            self._ready.set()


class Ticker(Worker):
    """Calls ``tick()`` every ``interval_s`` until stopped; an error in one tick is logged
    and the next tick comes as usual."""

    def __init__(self, name: str, interval_s: float, tick: Callable[[], object]) -> None:
        super().__init__(name)
        self.interval_s = interval_s
        self._tick = tick
        self._stop_event = threading.Event()

    def wake(self) -> None:
        self._stop_event.set()

    def loop(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                self._tick()
            except Exception:
                log.exception("%s: tick failed", self.worker_name)


class Call(Worker):
    """Runs ``function()`` once in its own thread (a tool's main loop, a simulator)."""

    def __init__(self, name: str, function: Callable[[], object]) -> None:
        super().__init__(name)
        self._function = function

    def loop(self) -> None:
        self._function()

"""Reading ahead: an iterator that reads (files, say) run in a thread of its own, a bounded
number of items ahead of the thread that uses them, so that reading overlaps with what
that thread does with earlier items."""

from __future__ import annotations

import contextlib
import queue
from typing import Any, Generic, Iterator, TypeVar

from ..workers import Worker

T = TypeVar("T")

_END = object()


class _Raised:
    """What the iterator raised, carried to the consuming thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ReadAhead(Worker, Generic[T]):
    """Iterates ``items`` in its own thread, at most ``depth`` items ahead of the
    iteration over this object, which gets the same items in the same order; an error
    ``items`` raises is raised by the iteration where it happened, after the items before
    it. Use as a context manager (or call :meth:`close`): leaving early stops the thread."""

    def __init__(self, items: Iterator[T], *, depth: int, name: str = "read-ahead") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        super().__init__(name)
        self._items = items
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._done = False

    def __enter__(self) -> ReadAhead[T]:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> ReadAhead[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._done = True
            raise item.error
        return item  # type: ignore[no-any-return]

    def close(self) -> None:
        """Stop reading and wait for the thread (what it read and nobody took is dropped)."""
        self._done = True
        self.stop_and_join()

    # ---- the reading thread

    def loop(self) -> None:
        try:
            for item in self._items:
                self._queue.put(item)
                if self.stopping:
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, not lost
            self._queue.put(_Raised(exc))
            return
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()  # a generator left early gives back its open files here
        self._queue.put(_END)

    def wake(self) -> None:
        # A put blocked on a full queue returns once there is room; the loop then sees
        # ``stopping``.
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

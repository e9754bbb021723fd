"""Which threads are running, for the leak check every test passes (conftest.py)."""

from __future__ import annotations

import threading


def live_threads() -> set[threading.Thread]:
    """Live Python threads, except pyzmq's zero-copy garbage collector: a process-wide
    singleton that the first large zero-copy send starts and nothing ever stops."""
    from zmq.utils.garbage import GarbageCollectorThread

    return {t for t in threading.enumerate()
            if t.is_alive() and not isinstance(t, GarbageCollectorThread)}

"""ZeroMQ transport of the daemon: the event publisher, and the clients of the daemon's
sockets.

With :mod:`.control` (the control socket's server), :mod:`.control_client` (its client),
:mod:`.front` (the control process) and :mod:`.curve` (who may connect), the only modules
that import zmq. Following pyzmq's own threads, each thread creates and owns its sockets;
other threads talk to it through a queue (:class:`EventPublisher`).

* :class:`EventPublisher` is an :class:`~flyprep.events.EventSink`: ``emit()`` never
  blocks. Messages are multipart ``[topic, json_body, *array_buffers]`` (``docs/protocol.md``).
* :class:`Subscriber` receives them; :func:`decode_message` decodes one.
* :func:`request` is the control client: a dead daemon gives :class:`ControlTimeout`,
  never a hang. The server, :class:`~.control.ControlServer`, is re-exported here.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from ..events import Event, event_from_dict
from ..workers import STOP, Worker
from .curve import ClientKeys, Guard, Handshake
from .control import (CONTROL_BATCH, DEFAULT_CONTROL_ENDPOINT, ControlServer, IpcAccess,
                      bind, check_endpoint)
from .control_client import BusError, ControlTimeout, request

__all__ = ["CONTROL_BATCH", "DEFAULT_CONTROL_ENDPOINT", "DEFAULT_EVENTS_ENDPOINT",
           "PROTOCOL_VERSION", "BusError", "ControlServer", "ControlTimeout",
           "EventPublisher", "IpcAccess", "Received", "Subscriber", "check_endpoint",
           "decode_message", "encode_message", "request"]

log = logging.getLogger(__name__)

DEFAULT_EVENTS_ENDPOINT = "tcp://127.0.0.1:5570"


# ---------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Received:
    """One published message, decoded: the event, its sequence number, emit time, arrays."""

    event: Event
    seq: int
    time: float
    arrays: list[np.ndarray] = field(default_factory=list)
    body: dict[str, Any] = field(default_factory=dict)


#: The version of docs/protocol.md every body carries as ``v``.
PROTOCOL_VERSION = 1


def encode_message(event: Event, *, seq: int, emit_time: float, run: str = "",
                   arrays: Sequence[np.ndarray] = ()) -> list[Any]:
    """``[topic, json_body, *arrays]`` for ``event`` (arrays must be C-contiguous); the
    body carries the protocol version ``v``, the daemon's ``run``, ``seq`` and ``time``."""
    body = {"v": PROTOCOL_VERSION, "run": run, "seq": seq, "time": emit_time,
            **event.to_dict()}
    if arrays:
        body["arrays"] = [{"dtype": _dtype_spec(a.dtype), "shape": list(a.shape)}
                          for a in arrays]
    return [event.kind.encode(), json.dumps(body).encode(), *arrays]


def _dtype_spec(dtype: np.dtype) -> Any:
    """A JSON form of ``dtype``: its type string, or numpy's field list for a structured
    dtype (so that field names travel too)."""
    return dtype.descr if dtype.names else dtype.str


def _dtype_of(spec: Any) -> np.dtype:
    if isinstance(spec, str):
        return np.dtype(spec)
    return np.dtype([tuple(field) for field in spec])


def decode_message(frames: Sequence[Any]) -> Received:
    """Read a published message back (frames as bytes or ``zmq.Frame``); ValueError if bad.

    Arrays are read-only views of the received buffers.
    """
    if len(frames) < 2:
        raise ValueError(f"expected [topic, body, ...], got {len(frames)} frame(s)")
    raw = [f.buffer if isinstance(f, zmq.Frame) else f for f in frames]
    body = json.loads(bytes(raw[1]))
    specs = body.get("arrays", [])
    if len(specs) != len(raw) - 2:
        raise ValueError(f"body announces {len(specs)} array(s), message has {len(raw) - 2}")
    arrays = [np.frombuffer(buf, dtype=_dtype_of(s["dtype"])).reshape(s["shape"])
              for s, buf in zip(specs, raw[2:])]
    return Received(event_from_dict(body), int(body.get("seq", -1)), float(body.get("time", 0.0)),
                    arrays, body)


# ---------------------------------------------------------------------------- subscriber


class Subscriber:
    """A SUB socket on a daemon's events (or ``apx.stream``) endpoint, for reconstruction
    code and monitors: ``receive()`` returns the next :class:`Received` or None.

    ``topics``: topic prefixes (``b"chunk."``; default everything). Messages published
    before the subscription reaches the publisher (a few ms after connecting) are not
    received: that is ZeroMQ's PUB/SUB.
    """

    def __init__(self, endpoint: str, *, topics: Sequence[bytes] = (b"",),
                 context: zmq.Context | None = None, keys: ClientKeys | None = None) -> None:
        self.endpoint = endpoint
        self._keys = keys
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.apply(self._sock, endpoint)
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic)
        self._handshake = Handshake(self._sock) if endpoint.startswith("tcp://") else None
        try:
            self._sock.connect(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise BusError(f"cannot connect to {endpoint}: {exc}") from exc

    def receive(self, timeout_s: float | None = None) -> Received | None:
        """The next message, waiting up to ``timeout_s`` (None: forever); None on timeout."""
        frames = self.receive_frames(timeout_s)
        return None if frames is None else decode_message(frames)

    def receive_frames(self, timeout_s: float | None = None) -> list[zmq.Frame] | None:
        """The next message's frames undecoded (``[topic, body, *raw]``); None on timeout."""
        timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000))
        if not self._sock.poll(timeout_ms):
            return None
        return self._sock.recv_multipart(copy=False)

    def refused(self) -> str | None:
        """Why the daemon turned this subscriber down (a CURVE key it does not know, or
        keys it wants and this side lacks); None while nothing says so."""
        if self._handshake is None:
            return None
        return self._handshake.failure(self.endpoint, self._keys)

    def close(self) -> None:
        """Close the socket (idempotent)."""
        if self._handshake is not None:
            self._handshake.close()
            self._handshake = None
        self._sock.close(0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------- publisher

class EventPublisher(Worker):
    """Publishes events on a ZeroMQ PUB socket owned by a background thread.

    ``emit()`` may be called from any thread and never blocks: the event goes into a
    bounded queue (``queue_size``); when that is full the event is dropped and counted.
    The thread sends with ``NOBLOCK`` and ``SNDHWM = sndhwm``: a subscriber that is slow
    or gone loses messages, the pipeline never waits. Those losses are ZeroMQ's and are
    not counted here: subscribers see them as gaps in ``seq``.
    """

    def __init__(self, endpoint: str = DEFAULT_EVENTS_ENDPOINT, *, allow_remote: bool = False,
                 queue_size: int = 10_000, sndhwm: int = 1_000,
                 context: zmq.Context | None = None, run: str = "",
                 on_sequenced: Callable[[Event, int], Any] | None = None,
                 ipc_access: IpcAccess | None = IpcAccess(), guard: Guard | None = None) -> None:
        super().__init__("events")
        self.guard = guard
        if guard is not None:
            context = guard.context
        self.ipc_access = ipc_access
        self.run = run  # the daemon run's id, in every body
        # Told of each event with its seq, in seq order, under the publisher's lock: what
        # a snapshot reflects (docs/protocol.md, catching up).
        self._on_sequenced = on_sequenced
        self.requested_endpoint = check_endpoint(endpoint, allow_remote=allow_remote)
        self.endpoint: str | None = None  # the bound one (random port resolved)
        self._sndhwm = sndhwm
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._ctx = context
        self._own_ctx = context is None
        self._closing = False
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._counts = {"emitted": 0, "sent": 0, "dropped": 0, "errors": 0}
        self._subscribers = 0  # peers connected now (the socket monitor's count)
        self._last_error: str | None = None
        self._linger_ms = 0
        self._accepted = 0  # put into the queue
        self._handled = 0  # taken out and sent, dropped or failed

    # -- lifecycle
    def start(self, timeout_s: float = 5.0) -> EventPublisher:
        """Start the thread and bind; BusError if the endpoint cannot be bound."""
        if self.started:
            return self
        if self._ctx is None:
            self._ctx = zmq.Context()
        try:
            Worker.start(self, ready_timeout_s=timeout_s)
        except TimeoutError as exc:  # pragma: no cover - binding is immediate
            raise BusError(f"event publisher did not start within {timeout_s} s") from exc
        except BaseException:
            self._term()
            raise
        return self

    def close(self, *, timeout_s: float = 5.0, linger_s: float = 0.0) -> bool:
        """Send what is queued, stop the thread, close the socket. Idempotent. False when
        the thread did not stop in time (its socket is then left open).

        With ``linger_s = 0`` messages still in ZeroMQ's buffers are discarded; give a
        short linger to let a final ``ScanEnded`` reach connected subscribers.
        """
        with self._lock:
            if self._closing:
                return not self.alive
            self._closing = True
        self._linger_ms = int(linger_s * 1000)
        if not self.stop_and_join(timeout_s):  # pragma: no cover
            log.warning("event publisher thread did not stop within %s s", timeout_s)
            return False
        self._term()
        return True

    def wake(self) -> None:
        try:
            self._queue.put_nowait(STOP)
        except queue.Full:
            pass  # the thread drains the queue, then sees it is stopping

    def _term(self) -> None:
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> EventPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the sink
    def emit(self, event: Event, *, arrays: Sequence[np.ndarray] = ()) -> None:
        """Queue ``event`` (and raw ``arrays``, sent without copy: do not modify them after)."""
        if arrays:
            arrays = [np.ascontiguousarray(a) for a in arrays]
        with self._lock:
            if self._closing or not self.started:
                self._counts["dropped"] += 1
                return
            self._counts["emitted"] += 1
            seq = next(self._seq)
            if self._on_sequenced is not None:
                try:
                    self._on_sequenced(event, seq)
                except Exception:  # noqa: BLE001 - a bookkeeping bug must not stop events
                    log.exception("event bookkeeping failed on %s", event.kind)
            item = (event, seq, time.time(), arrays)
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._counts["dropped"] += 1
            else:
                self._accepted += 1

    def reset_stats(self) -> None:
        """Counters back to 0 (the queue and the sequence numbers go on)."""
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)
            self._last_error = None

    def stats(self) -> dict[str, Any]:
        """Counters: emitted, sent, dropped (queue full or closed), errors; queued now and
        subscribers connected now. What ZeroMQ discards for a slow subscriber is not told to
        a PUB socket: that subscriber sees a gap in ``seq``. Read without the lock that
        every ``emit()`` takes (a copy of a dict of ints is one step for Python): ``status``
        must not wait for the threads that publish."""
        return {**self._counts, "queued": self._queue.qsize(), "endpoint": self.endpoint,
                "subscribers": self._subscribers, "last_error": self._last_error}

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued event has been handed to ZeroMQ; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if self._handled >= self._accepted:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    # -- the thread
    def loop(self) -> None:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.PUB)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, self._sndhwm)
            self.endpoint = bind(sock, self.requested_endpoint, self.ipc_access, self.guard)
        except BaseException:  # handed to start()
            sock.close(linger=0)
            raise
        monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self.mark_ready()
        counted_at = 0.0
        try:
            while True:
                now = time.monotonic()
                if now - counted_at >= 0.1:
                    counted_at = now
                    self._count_subscribers(monitor)
                    # Lets libzmq process its pending commands, among them the ends of
                    # disconnected subscribers' pipes: a socket that never sends (an idle
                    # .apx stream) would otherwise keep ~10 KB per subscriber gone.
                    sock.getsockopt(zmq.EVENTS)
                try:
                    item = self._queue.get(timeout=0.05)
                except queue.Empty:
                    if self.stopping:
                        break
                    continue
                if item is STOP:
                    break
                self._send(sock, *item)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=self._linger_ms)

    def _count_subscribers(self, monitor: zmq.Socket) -> None:
        from zmq.utils.monitor import recv_monitor_message

        change = 0
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            change += 1 if event == zmq.EVENT_ACCEPTED else -1
        if change:
            with self._lock:
                self._subscribers = max(0, self._subscribers + change)

    def _send(self, sock: zmq.Socket, event: Event, seq: int, emit_time: float,
              arrays: Sequence[np.ndarray]) -> None:
        try:
            frames = encode_message(event, seq=seq, emit_time=emit_time, run=self.run,
                                    arrays=arrays)
            # A PUB socket never blocks and never says when a slow subscriber's queue is
            # full: it discards the message for that subscriber (who sees a gap in seq).
            sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except Exception as exc:  # noqa: BLE001 - collected into stats, never raised
            outcome = "errors"
            with self._lock:
                self._last_error = f"{getattr(event, 'kind', '?')}: {type(exc).__name__}: {exc}"
            log.warning("event not published: %s", self._last_error)
        else:
            outcome = "sent"
        with self._lock:
            self._counts[outcome] += 1
            self._handled += 1


# ---------------------------------------------------------------------------- control

"""What reconstruction code imports to follow the flyprep daemon: its events, its state,
and the chunks of a scan as they are written (protocol v1, ``docs/protocol.md``).

    from flyprep.client import Client

    with Client(config="/etc/flyprep/beamline.toml") as c:   # or events=..., control=...
        scan = c.wait_for_scan()
        for chunk in c.chunks(scan):
            chunk.key, chunk.frame_start, chunk.data, chunk.weights, chunk.positions

Only pyzmq and h5py underneath; one :class:`Client` per thread.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from .daemon.bus import BusError, ControlTimeout
from .daemon.bus import request as control_request
from .daemon.curve import ClientKeys, Handshake
from .errors import FlyprepError

PROTOCOL_VERSION = 1
#: The daemon's default endpoints (``[bus]`` of its config).
DEFAULT_EVENTS = "tcp://127.0.0.1:5570"
DEFAULT_CONTROL = "tcp://127.0.0.1:5571"
DEFAULT_APX = "tcp://127.0.0.1:5572"
ENDED = ("complete", "aborted", "failed")


class ClientError(FlyprepError):
    """The daemon refused a request or answered something this client cannot read."""


class DaemonGone(ClientError):
    """No message (not even a heartbeat) from the daemon for ``heartbeat_timeout_s``."""


class ScanFailed(ClientError):
    """The scan ended ``failed``; the message is the daemon's error."""


@dataclass(frozen=True)
class Event:
    """One message of the events socket: its kind, run, seq, time and the whole body."""

    kind: str
    run: str
    seq: int
    time: float
    body: dict[str, Any]
    #: the raw frames after the body: an ``.apx`` header's or records' exact bytes, hits
    frames: tuple[bytes, ...] = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self.body[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class Chunk:
    """One chunk of a scan as the master lists it: frames ``frame_start ..
    frame_start + n_frames - 1``."""

    scan: str
    key: int
    frame_start: int
    data: np.ndarray
    weights: np.ndarray
    positions: np.ndarray
    master: Path

    @property
    def n_frames(self) -> int:
        """Frames in the chunk."""
        return int(self.data.shape[0])


class Client:
    """A connection to one daemon: ``config`` (its TOML file) gives the endpoints and, for
    a daemon that uses CURVE, the keys (the server's public key, and this user's secret
    key: ``client_key``, else ``FLYPREP_CLIENT_KEY``, else ``bus.curve_client_key``); or
    ``events``, ``control`` and ``keys`` do. ``heartbeat_timeout_s``: silence after which
    the daemon counts as gone; ``timeout_s``: how long a control request may take."""

    def __init__(self, *, config: str | os.PathLike[str] | None = None,
                 events: str | None = None, control: str | None = None,
                 apx: str | None = None, heartbeat_timeout_s: float = 5.0,
                 timeout_s: float = 5.0, context: zmq.Context | None = None,
                 keys: ClientKeys | None = None,
                 client_key: str | os.PathLike[str] | None = None) -> None:
        if config is not None:
            from .config import load_daemon_config
            from .daemon.curve import client_keys

            loaded = load_daemon_config(Path(config), require_roots=False)
            events, control = events or loaded.bus.events, control or loaded.bus.control
            apx = apx or loaded.apx.stream
            if keys is None and any((e or "").startswith("tcp://")
                                    for e in (events, control, apx)):
                keys = client_keys(loaded.bus, key_file=client_key)  # ipc needs none
        self.keys = keys
        self.events_endpoint = events or DEFAULT_EVENTS
        self.control_endpoint = control or DEFAULT_CONTROL
        self.apx_endpoint = apx or DEFAULT_APX
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.timeout_s = timeout_s
        self._ctx = context or zmq.Context.instance()
        self._sub: zmq.Socket | None = None
        self._handshakes: dict[int, Handshake] = {}  # per SUB socket

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the sockets."""
        if self._sub is not None:
            self._close_sub(self._sub)
            self._sub = None

    # ---- control

    def request(self, command: str, **params: Any) -> Any:
        """Send one control request; its result. ClientError when the daemon says no,
        DaemonGone when it does not answer within ``timeout_s``."""
        try:
            reply = control_request(self.control_endpoint, command, params=params,
                                    timeout_s=self.timeout_s, context=self._ctx, keys=self.keys)
        except ControlTimeout as exc:
            raise DaemonGone(str(exc)) from None
        except (BusError, zmq.ZMQError) as exc:
            raise ClientError(f"{self.control_endpoint}: {command!r} failed: {exc}") from None
        if not reply.get("ok"):
            error = reply.get("error") if isinstance(reply, dict) else reply
            raise ClientError(f"{command}: {error}")
        return reply.get("result")

    def status(self) -> dict[str, Any]:
        """The daemon's status (``flyprep status --json`` shows the same)."""
        return self.request("status")  # type: ignore[no-any-return]

    def snapshot(self) -> dict[str, Any]:
        """Every scan of the daemon's run and the ``seq`` of the last event it reflects."""
        return self.request("snapshot")  # type: ignore[no-any-return]

    # ---- events

    def events(self) -> Iterator[Event]:
        """Every event from now on, as it comes; DaemonGone after ``heartbeat_timeout_s``
        of silence."""
        sub = self._subscribe()
        while True:
            yield self._receive(sub)

    def wait_for_scan(self, name: str | None = None, *, timeout_s: float | None = None) -> str:
        """The scan named ``name`` once it has started (at once if it has), or the next scan
        that starts; TimeoutError after ``timeout_s``."""
        sub = self._subscribe()
        snap = self.snapshot()
        if name is not None and any(s["scan"] == name for s in snap["scans"]):
            return name
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            event = self._receive(sub, until=deadline)
            if event is None:
                break
            if event.kind == "scan.started" and (name is None or event.scan == name):
                return str(event.scan)
            if name is not None and event.kind == "daemon.heartbeat" and \
                    any(s["scan"] == name for s in self.snapshot()["scans"]):
                return name  # known without a start: finished by an earlier run
        raise TimeoutError(f"no scan {name or ''} started within {timeout_s} s".replace("  ", " "))

    def chunks(self, scan: str) -> Iterator[Chunk]:
        """Every chunk of ``scan`` exactly once, in frame order, as the daemon writes them
        (those written already first); returns after the last one. ScanFailed when the
        scan failed, DaemonGone when the daemon is silent for ``heartbeat_timeout_s``."""
        follower = _ScanFollower(self, scan)
        yield from follower.follow()

    # ---- the .apx stream

    def apx_records(self, *, timeout_s: float | None = None) -> Iterator[Event]:
        """``apx.header`` and ``apx.records`` messages of the ``.apx`` stream, each with its
        exact file bytes in ``frames[0]`` (``start``/``end``: where they lie in the file);
        returns after ``timeout_s`` without one."""
        yield from self._apx((b"apx.header", b"apx.records"), timeout_s)

    def apx_hits(self, *, timeout_s: float | None = None) -> Iterator[tuple[Event, np.ndarray]]:
        """Decoded hits of the ``.apx`` stream (``apx.readouts``): the event and its hits
        (a structured array with the field names of ``flyprep apx hits``)."""
        for event in self._apx((b"apx.readouts",), timeout_s):
            spec = event.body["arrays"][0]["dtype"]
            dtype = np.dtype(spec if isinstance(spec, str) else [tuple(f) for f in spec])
            yield event, np.frombuffer(event.frames[0], dtype=dtype)

    def apx_header(self, file: str | os.PathLike[str]) -> bytes:
        """The exact header bytes of a followed ``.apx`` file (the control socket)."""
        import base64

        return base64.b64decode(self.request("apx_header", file=os.fspath(file))["header"])

    def _apx(self, topics: tuple[bytes, ...], timeout_s: float | None) -> Iterator[Event]:
        sub = self._sub_socket(self.apx_endpoint, topics)
        try:
            while sub.poll(None if timeout_s is None else int(timeout_s * 1000)):
                event = decode(sub.recv_multipart())
                if event is not None:
                    yield event
            self._check_refused(sub, self.apx_endpoint)
        finally:
            self._close_sub(sub)

    # ---- internals

    def _subscribe(self) -> zmq.Socket:
        if self._sub is None:
            self._sub = self._sub_socket(self.events_endpoint, (b"",))
        return self._sub

    def _sub_socket(self, endpoint: str, topics: tuple[bytes, ...]) -> zmq.Socket:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.RECONNECT_IVL, 20)  # back soon after a daemon restart
        for topic in topics:
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        if self.keys is not None:
            self.keys.apply(sub, endpoint)
        if endpoint.startswith("tcp://"):
            self._handshakes[id(sub)] = Handshake(sub)
        sub.connect(endpoint)
        return sub

    def _check_refused(self, sub: zmq.Socket, endpoint: str) -> None:
        """ClientError when the daemon turned ``sub`` down (CURVE)."""
        handshake = self._handshakes.get(id(sub))
        refused = handshake.failure(endpoint, self.keys) if handshake else None
        if refused is not None:
            raise ClientError(refused)

    def _close_sub(self, sub: zmq.Socket) -> None:
        handshake = self._handshakes.pop(id(sub), None)
        if handshake is not None:
            handshake.close()
        sub.close(linger=0)

    def _receive(self, sub: zmq.Socket, *, until: float | None = None) -> Event | None:
        """The next event; None when ``until`` passes first; DaemonGone on silence."""
        silent_since = time.monotonic()
        while True:
            now = time.monotonic()
            wait = self.heartbeat_timeout_s - (now - silent_since)
            if until is not None:
                if now >= until:
                    return None
                wait = min(wait, until - now)
            if wait <= 0:
                self._check_refused(sub, self.events_endpoint)
                raise DaemonGone(f"{self.events_endpoint}: no message, not even a heartbeat, "
                                 f"for {self.heartbeat_timeout_s:g} s")
            if sub.poll(max(1, int(wait * 1000))):
                frames = sub.recv_multipart()
                event = decode(frames)
                if event is not None:
                    return event
                silent_since = time.monotonic()


def decode(frames: list[bytes]) -> Event | None:
    """An event from a message's frames (None for a message of another protocol)."""
    if len(frames) < 2:
        return None
    try:
        body = json.loads(frames[1])
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("v") != PROTOCOL_VERSION:
        return None
    return Event(str(body.get("kind")), str(body.get("run")), int(body.get("seq", -1)),
                 float(body.get("time", 0.0)), body, tuple(bytes(f) for f in frames[2:]))


class _ScanFollower:
    """The catch-up recipe of docs/protocol.md for one scan: subscribe, snapshot, then
    events; a gap or a new run means a new snapshot. Chunks are read from the master."""

    def __init__(self, client: Client, scan: str) -> None:
        self.client = client
        self.scan = scan
        self.next_key = 0
        self.run: str | None = None
        self.seq = -1
        self.master: Path | None = None
        self.listed = 0  # chunks the master is known to list
        self.ended: str | None = None
        self.error: str | None = None

    def follow(self) -> Iterator[Chunk]:
        sub = self.client._subscribe()
        self._sync()
        while True:
            yield from self._read_listed()
            if self.ended == "failed":  # what could be read was; the rest never will be
                raise ScanFailed(f"{self.scan}: {self.error or 'failed'}")
            if self.ended is not None and self.next_key >= self.listed:
                return
            event = self.client._receive(sub)
            assert event is not None
            if event.run != self.run:
                self._sync()  # the daemon was restarted: its new state
                continue
            if event.seq <= self.seq:
                continue  # covered by the snapshot
            if event.kind == "daemon.heartbeat" and self.master is None:
                self._sync()  # not started in this run (yet): the daemon may know it now
                continue
            if event.seq != self.seq + 1:
                self._sync()  # messages were lost
                continue
            self.seq = event.seq
            self._apply(event)

    def _apply(self, event: Event) -> None:
        if event.body.get("scan") != self.scan:
            return
        if event.kind == "scan.started":
            self.master = Path(event.master)
            self.ended, self.error = None, None
            resumed, size = int(event.body.get("resumed_at") or 0), int(event.chunk_frames)
            self.listed = max(self.listed, -(-resumed // size))  # kept by an earlier run
        elif event.kind == "chunk.written":
            self.master = Path(event.master)
            self.listed = max(self.listed, int(event.key) + 1)
        elif event.kind == "scan.ended":
            self.ended, self.error = str(event.state), event.body.get("error")
            if self.master is not None and self.ended != "failed":
                self.listed = max(self.listed, self._count_listed())

    def _sync(self) -> None:
        snap = self.client.snapshot()
        self.run, self.seq = str(snap["run"]), int(snap["seq"])
        mine = [s for s in snap["scans"] if s["scan"] == self.scan]
        if not mine:
            return
        entry = mine[-1]
        self.master = Path(entry["master"])
        self.listed = max(self.listed, len(entry["chunks"]))
        state = entry["state"]
        self.ended = state if state in ENDED else None
        self.error = entry.get("error")
        if self.ended is None:
            # A master left by an earlier run lists chunks this run has not announced.
            self.listed = max(self.listed, self._count_listed())

    def _count_listed(self) -> int:
        from .ptyd.reader import count_listed

        assert self.master is not None
        try:
            return count_listed(self.master)
        except FlyprepError:
            return 0

    def _read_listed(self) -> Iterator[Chunk]:
        """The chunks listed and not yet yielded, each read by its key: the master is not
        listed whole for every new chunk (683 ms for 1,000 chunks)."""
        if self.master is None:
            return
        from .ptyd.reader import read_chunk_at

        while self.next_key < self.listed:
            try:
                arrays = read_chunk_at(self.master, self.next_key)
            except FlyprepError:
                if self.ended == "failed":
                    return  # its output may be gone with it: ScanFailed says why
                raise
            yield Chunk(self.scan, arrays.key, arrays.frame_start, arrays.data,
                        arrays.weights, arrays.positions, self.master)
            self.next_key += 1

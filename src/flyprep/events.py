"""What the pipeline tells the world: small immutable events, and the sinks they go to.

Pipeline stages hand each other frozen dataclasses named in the past tense. Each has a
``kind`` (also the ZeroMQ topic, see ``docs/protocol.md``), ``to_dict()`` giving plain JSON
data and ``from_dict()`` reading it back; :func:`event_from_dict` picks the class by kind.

The pipeline emits to an :class:`EventSink`. :class:`MemorySink` keeps events in memory
(tests, the daemon's status), :class:`FanoutSink` forwards to several sinks, and
:class:`flyprep.daemon.bus.EventPublisher` (the only module importing zmq) publishes them.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import (
    Any,
    ClassVar,
    Protocol,
    TypeVar,
    Union,
    runtime_checkable,
)

from typing_extensions import Self

from .states import END_STATES

log = logging.getLogger(__name__)

E = TypeVar("E", bound="_EventBase")


def _fspath(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


class _EventBase:
    """Shared ``to_dict``/``from_dict`` of the event dataclasses."""

    kind: ClassVar[str]
    _path_fields: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for name in self._path_fields:  # paths travel as str
            object.__setattr__(self, name, _fspath(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., field: value, ...}``: plain JSON data."""
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        """Read :meth:`to_dict` output back; unknown keys (``seq``, ``time``...) are ignored."""
        kind = data.get("kind", cls.kind)
        if kind != cls.kind:
            raise ValueError(f"{cls.__name__}.from_dict: kind {kind!r} vs expected {cls.kind!r}")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in data:
                values[f.name] = data[f.name]
            elif f.default is dataclasses.MISSING:
                raise ValueError(f"{cls.__name__}.from_dict: field {f.name!r} is missing")
        return cls(**values)


@dataclass(frozen=True)
class ScanStarted(_EventBase):
    """A scan's preparation is fixed and its chunks will follow; ``resumed_at`` frames
    were kept from an earlier run. ``meta``: what PtyPy reads in ``meta/`` (shape, dtype,
    energy, distance, psize, propagation, center)."""

    kind: ClassVar[str] = "scan.started"
    _path_fields: ClassVar[tuple[str, ...]] = ("master",)
    scan: str
    master: str
    num_frames: int | None
    chunk_frames: int
    label: str | None = None
    resumed_at: int = 0
    meta: dict[str, Any] | None = None


@dataclass(frozen=True)
class ChunkWritten(_EventBase):
    """The master lists chunk ``key``: frames ``frame_start .. frame_start + n_frames - 1``
    can be read from it now."""

    kind: ClassVar[str] = "chunk.written"
    _path_fields: ClassVar[tuple[str, ...]] = ("master", "file")
    scan: str
    key: int  # the chunk's key under chunks/ in the master (PtyPy reads chunks in key order)
    frame_start: int
    n_frames: int
    master: str
    file: str | None = None  # the chunk's own file (None: inside the master)
    frames_available: int = 0  # readable from the scan's start without a gap
    generation: int = 0  # of the master that lists it
    frames_missing: int = 0
    latency_s: float | None = None  # last frame of the chunk arriving -> chunk listed


@dataclass(frozen=True)
class FrameMissing(_EventBase):
    """Frames ``index .. index + count - 1`` never arrived; written with weight 0."""

    kind: ClassVar[str] = "frame.missing"
    _path_fields: ClassVar[tuple[str, ...]] = ("path",)
    scan: str
    index: int
    path: str
    reason: str
    count: int = 1  # frames index .. index + count - 1 (a scan ended early: one event)


@dataclass(frozen=True)
class FrameFailed(_EventBase):
    """Frames ``index .. index + count - 1`` of one file arrived but cannot be used
    (unreadable, of another shape or type, unplaceable); written with weight 0."""

    kind: ClassVar[str] = "frame.failed"
    _path_fields: ClassVar[tuple[str, ...]] = ("path",)
    scan: str
    index: int
    path: str  # the file (never the scan directory)
    reason: str
    count: int = 1  # one event per bad file: frames index .. index + count - 1


#: How a scan may end: its master's final states, or ``failed`` (it could not be prepared).
SCAN_END_STATES = (*(s.value for s in END_STATES), "failed")


@dataclass(frozen=True)
class ScanEnded(_EventBase):
    """The scan is finished (``complete``), given up (``aborted``) or could not be
    prepared (``failed``, with ``error``); its file is final."""

    kind: ClassVar[str] = "scan.ended"
    scan: str
    state: str
    frames: int
    frames_missing: int  # never arrived
    frames_failed: int = 0  # arrived but unusable
    error: str | None = None


    def __post_init__(self) -> None:
        super().__post_init__()
        if self.state not in SCAN_END_STATES:
            raise ValueError(f"ScanEnded.state must be one of {SCAN_END_STATES}, got {self.state!r}")


@dataclass(frozen=True)
class ScanPaused(_EventBase):
    """The scan takes no frames for now (its frame files wait on disk): too little free
    space for its output. ``scan.continued`` follows when there is space again."""

    kind: ClassVar[str] = "scan.paused"
    _path_fields: ClassVar[tuple[str, ...]] = ("path",)
    scan: str
    reason: str
    path: str  # the output directory
    free_bytes: int
    min_free_bytes: int


@dataclass(frozen=True)
class ScanContinued(_EventBase):
    """A paused scan takes frames again (``free_bytes`` free on its output's disk)."""

    kind: ClassVar[str] = "scan.continued"
    scan: str
    free_bytes: int


@dataclass(frozen=True)
class ApxReadouts(_EventBase):
    """Readouts ``first_readout .. last_readout`` of an AstroPix ``.apx`` file were decoded."""

    kind: ClassVar[str] = "apx.readouts"
    _path_fields: ClassVar[tuple[str, ...]] = ("path",)
    path: str
    first_readout: int
    last_readout: int
    n_readouts: int
    n_hits: int | None  # None: not decoded (the streamer streams records only)
    scan: str | None = None


@dataclass(frozen=True)
class ApxHeaderRead(_EventBase):
    """The header of an ``.apx`` file a stream starts on: its exact bytes ``[0, length)``
    follow the message (``apx.stream`` socket)."""

    kind: ClassVar[str] = "apx.header"
    _path_fields: ClassVar[tuple[str, ...]] = ("file",)
    stream: str  # this file's stream id
    file: str
    readout_uid: int
    length: int
    scan: str | None = None


@dataclass(frozen=True)
class ApxRecords(_EventBase):
    """Consecutive complete records of an ``.apx`` file: their exact bytes ``[start,
    end)`` of the file follow the message (``apx.stream`` socket)."""

    kind: ClassVar[str] = "apx.records"
    _path_fields: ClassVar[tuple[str, ...]] = ("file",)
    stream: str
    file: str
    readout_uid: int
    first_readout: int
    last_readout: int
    count: int
    start: int
    end: int
    scan: str | None = None


@dataclass(frozen=True)
class DaemonHeartbeat(_EventBase):
    """The daemon is alive: sent every ``interval_s``; ``scans`` is the compact state of
    every scan that has not ended."""

    kind: ClassVar[str] = "daemon.heartbeat"
    uptime_s: float
    interval_s: float
    scans: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class ErrorReported(_EventBase):
    """Something failed that an operator should see: ``where`` is ``scan`` (``scan``
    names it), ``apx`` or ``daemon``."""

    kind: ClassVar[str] = "error"
    where: str
    message: str
    scan: str | None = None


Event = Union[ScanStarted, ChunkWritten, FrameMissing, FrameFailed, ScanEnded, ScanPaused,
              ScanContinued, ApxReadouts, ApxHeaderRead, ApxRecords, DaemonHeartbeat,
              ErrorReported]

EVENT_TYPES: dict[str, type] = {cls.kind: cls for cls in
                                (ScanStarted, ChunkWritten, FrameMissing, FrameFailed, ScanEnded,
                                 ScanPaused, ScanContinued, ApxReadouts, ApxHeaderRead,
                                 ApxRecords, DaemonHeartbeat, ErrorReported)}


def event_from_dict(data: Mapping[str, Any]) -> Event:
    """The event that ``data["kind"]`` names; ValueError for an unknown kind or a bad body."""
    kind = data.get("kind")
    cls = EVENT_TYPES.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown event kind {kind!r}; known: {', '.join(EVENT_TYPES)}")
    return cls.from_dict(data)  # type: ignore[no-any-return,attr-defined]


@runtime_checkable
class EventSink(Protocol):
    """Where the pipeline sends its events. ``emit`` must not block for long nor raise."""

    def emit(self, event: Event) -> None: ...


class MemorySink:
    """Keeps events in memory, in order; thread-safe. For tests and status: with
    ``maxlen`` only the most recent events are kept, so memory stays bounded."""

    def __init__(self, maxlen: int | None = None) -> None:
        self._lock = threading.Lock()
        self._events: collections.deque[Event] = collections.deque(maxlen=maxlen)

    def emit(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Event]:
        """A copy of the events received so far."""
        with self._lock:
            return list(self._events)

    def of_kind(self, cls: type[E]) -> list[E]:
        """The events that are instances of ``cls``."""
        return [e for e in self.events if isinstance(e, cls)]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)


class FanoutSink:
    """Forwards each event to every sink; a sink that raises is logged and counted, the
    others still get the event (a broken publisher must not stop the pipeline)."""

    def __init__(self, sinks: Iterable[EventSink] = ()) -> None:
        self.sinks: list[EventSink] = list(sinks)
        self.errors = 0
        self.last_error: str | None = None

    def add(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception as exc:  # noqa: BLE001 - collected into status, never raised
                self.errors += 1
                self.last_error = f"{type(sink).__name__}: {type(exc).__name__}: {exc}"
                log.warning("event sink failed on %s: %s", event.kind, self.last_error)

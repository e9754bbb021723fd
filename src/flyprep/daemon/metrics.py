"""Prometheus metrics over HTTP (``/metrics``), with the ``prometheus-client`` library.

Every figure but one is read from the status the control socket answers at the moment of
the scrape (the one the daemon pushed last; ``flyprep_status_time_seconds`` is its
``as_of``), so metrics and status agree: frames per scan and stage, queue depths, quarantined
files, scans per state, publisher counters and subscribers, pending files, free disk
space of the outputs, health. The exception is the histogram of chunk latencies (a
frame file's close to its chunk being readable), observed from ``chunk.written`` events:
the server is also an event sink. The HTTP server is a :class:`~flyprep.workers.Worker`
on ``metrics.address`` (loopback unless the config allows otherwise).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..errors import FlyprepError
from ..events import ChunkWritten, Event
from ..workers import Worker

log = logging.getLogger(__name__)

#: Chunk latency buckets (seconds): a chunk is readable within a second or so when all goes well.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
STAGES = ("received", "prepared", "written", "published", "missing", "failed")


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Scrapes are not logged: one line per scrape would fill the journal."""


class _StatusCollector:
    """Turns a status document into metric families at each scrape."""

    def __init__(self, status: Callable[[], dict[str, Any]],
                 health: Callable[[], list[str]], disks: Callable[[], list[str]]) -> None:
        self._status, self._health, self._disks = status, health, disks

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        frames = CounterMetricFamily("flyprep_frames", "Frames of a scan by stage (as in "
                                     "status: frames_<stage>)", labels=["scan", "stage"])
        queues = GaugeMetricFamily("flyprep_queue_depth", "What waits in a scan now",
                                   labels=["scan", "queue"])
        quarantined = GaugeMetricFamily("flyprep_files_quarantined",
                                        "Files of a scan set aside as unreadable", labels=["scan"])
        by_state: dict[str, int] = {}
        for scan in status["scans"]:
            name = scan["scan"]
            by_state[scan["state"]] = by_state.get(scan["state"], 0) + 1
            for stage in STAGES:
                value = scan.get(f"frames_{stage}")
                if value is not None:
                    frames.add_metric([name, stage], value)
            for queue, depth in (scan.get("queues") or {}).items():
                queues.add_metric([name, queue], depth)
            if scan.get("files_quarantined") is not None:
                quarantined.add_metric([name], scan["files_quarantined"])
        scans = GaugeMetricFamily("flyprep_scans", "Scans known now, by state", labels=["state"])
        for state, count in sorted(by_state.items()):
            scans.add_metric([state], count)
        yield from (frames, queues, quarantined, scans)

        messages = CounterMetricFamily("flyprep_publisher_messages", "Messages of a publisher "
                                       "by outcome (dropped: its queue was full)",
                                       labels=["publisher", "outcome"])
        subscribers = GaugeMetricFamily("flyprep_publisher_subscribers",
                                        "Subscribers connected now", labels=["publisher"])
        for publisher in ("events", "apx_stream"):
            stats = status.get(publisher)
            if stats is None:
                continue
            for outcome in ("sent", "dropped", "errors"):
                messages.add_metric([publisher, outcome], stats[outcome])
            subscribers.add_metric([publisher], stats["subscribers"])
        yield from (messages, subscribers)

        pending = GaugeMetricFamily("flyprep_watcher_pending_files",
                                    "Files the watcher tracks that are not finished yet")
        pending.add_metric([], status["watcher"]["pending_files"])
        uptime = GaugeMetricFamily("flyprep_uptime_seconds", "Seconds since the daemon started")
        uptime.add_metric([], status["uptime_s"])
        taken = GaugeMetricFamily("flyprep_status_time_seconds", "When the status these "
                                  "figures come from was taken (Unix time: its as_of)")
        taken.add_metric([], status["as_of"])
        healthy = GaugeMetricFamily("flyprep_healthy", "1 while no scan is stuck (the systemd "
                                    "watchdog is pinged), else 0")
        healthy.add_metric([], 0 if self._health() else 1)
        free = GaugeMetricFamily("flyprep_free_disk_bytes", "Free space for the outputs",
                                 labels=["path"])
        for path in self._disks():
            try:
                st = os.statvfs(path)
            except OSError:
                continue
            free.add_metric([path], st.f_bavail * st.f_frsize)
        yield from (pending, uptime, taken, healthy, free)


class MetricsServer(Worker):
    """``/metrics`` on ``address:port``; an event sink for the chunk latency histogram.

    ``status``: the daemon's status document; ``health``: what is stuck now;
    ``disks``: the directories whose free space is told."""

    def __init__(self, address: str, port: int, *, status: Callable[[], dict[str, Any]],
                 health: Callable[[], list[str]], disks: Callable[[], list[str]]) -> None:
        super().__init__("metrics")
        self.registry = CollectorRegistry(auto_describe=False)
        self.chunk_latency = Histogram(
            "flyprep_chunk_latency_seconds", "From a frame file's close to its chunk being "
            "readable in the master", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_StatusCollector(status, health, disks))  # type: ignore[arg-type]
        self._address, self._port = address, port
        self._server: WSGIServer | None = None

    @property
    def url(self) -> str:
        """Where the metrics are (the port bound)."""
        port = self._server.server_port if self._server is not None else self._port
        host = f"[{self._address}]" if ":" in self._address else self._address
        return f"http://{host}:{port}/metrics"

    def start(self, timeout_s: float = 5.0) -> MetricsServer:
        """Bind and serve; FlyprepError naming the address if it cannot be bound."""
        try:
            self._server = make_server(self._address, self._port, make_wsgi_app(self.registry),
                                       handler_class=_Quiet)
        except OSError as exc:
            raise FlyprepError(f"metrics: cannot bind {self._address}:{self._port}: "
                               f"{exc.strerror or exc}") from exc
        Worker.start(self)
        return self

    def emit(self, event: Event, **_: Any) -> None:
        if isinstance(event, ChunkWritten) and event.latency_s is not None:
            self.chunk_latency.observe(event.latency_s)

    def loop(self) -> None:
        assert self._server is not None
        self._server.serve_forever(poll_interval=0.5)

    def wake(self) -> None:
        if self._server is not None and self.alive:
            self._server.shutdown()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving and close the socket."""
        self.stop_and_join(timeout_s)
        if self._server is not None:
            self._server.server_close()

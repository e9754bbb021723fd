"""A scan session's logic in the test's own thread: no daemon, no watcher, no socket, no
writer thread. The session's ``loop()`` runs here to its end, fed the news the daemon
would give it (finished files, the end); the output is compared with ``flyprep prepare``'s
of the same files."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from flyprep.config import parse_config, parse_daemon_config
from flyprep.daemon.session import ScanSession, SessionState
from flyprep.events import ChunkWritten, Event, FrameMissing, ScanEnded, ScanStarted
from flyprep.pipeline import prepare_scan
from flyprep.ptyd.reader import open_ptyd
from flyprep.sim.simulate import simulate_scan
from flyprep.sources import discover
from flyprep.workers import THREAD_PREFIX

NUM, CHUNK, SIDE = 24, 8, 32
GEOMETRY = {"energy": 6.2, "distance": 7.0, "psize": 172e-6}


class Sink:
    """Keeps the events, notes the threads alive at each, and may act on one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.threads_seen: set[str] = set()
        self.on_event: Callable[[Event], Any] | None = None

    def emit(self, event: Event) -> None:
        self.events.append(event)
        self.threads_seen |= {t.name for t in threading.enumerate()
                              if t.name.startswith(THREAD_PREFIX)}
        if self.on_event is not None:
            self.on_event(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished scan in PtyPy's layout, as the simulator writes it (no end marker)."""
    root = tmp_path_factory.mktemp("scans") / "scan_01"
    simulate_scan(root, num_frames=NUM, frame_side=SIDE, rate_hz=0, end_marker=False)
    return root


@pytest.fixture(scope="module")
def offline(scan: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same scan prepared by ``flyprep prepare``'s code."""
    out = tmp_path_factory.mktemp("offline") / "scan_01.ptyd"
    config = parse_config({"prep": {"shape": 16}, "output": {"chunk_frames": CHUNK},
                           "geometry": GEOMETRY, "scan": {"num_frames": NUM}})
    prepare_scan(discover(scan), config, out)
    return out


def session_for(scan: Path, out: Path, sink: Sink, *, clock: Callable[[], float] | None = None,
                **sections: dict[str, Any]) -> ScanSession:
    data: dict[str, Any] = {
        "watch": {"roots": [str(scan.parent)], "frame_patterns": ["*.npy"],
                  "quiet_window_s": 0.1, "read_retries": 1, "retry_delay_s": 0.01},
        "geometry": GEOMETRY, "prep": {"shape": 16}, "scan": {"num_frames": NUM},
        "output": {"directory": str(out), "chunk_frames": CHUNK},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    options: dict[str, Any] = {} if clock is None else {"clock": clock}
    return ScanSession(scan, parse_daemon_config(data), events=sink, threaded_writer=False,
                       **options)


def files_of(scan: Path, *, skip: tuple[str, ...] = ()) -> list[Path]:
    return sorted(p for p in scan.rglob("*") if p.is_file() and p.name not in skip)


def assert_same_frames(a: Path, b: Path) -> None:
    fa, fb = open_ptyd(a), open_ptyd(b)
    assert fa.meta.shape == fb.meta.shape and fa.meta.num_frames == fb.meta.num_frames
    for ca, cb in zip(fa.iter_chunks(), fb.iter_chunks(), strict=True):
        np.testing.assert_array_equal(ca.data, cb.data)
        np.testing.assert_array_equal(ca.weights, cb.weights)
        np.testing.assert_array_equal(ca.positions, cb.positions)


def test_a_scan_runs_to_complete_in_the_callers_thread(scan, offline, tmp_path):
    sink = Sink()
    session = session_for(scan, tmp_path, sink)
    for path in files_of(scan):
        session.file_completed(path)
    session.end("end marker")
    session.loop()  # here, not in a thread
    assert not session.started and session.state is SessionState.COMPLETE
    assert sink.threads_seen == set()  # no writer thread, no worker of any kind
    kinds = [type(e) for e in sink.events]
    assert kinds == [ScanStarted] + [ChunkWritten] * (NUM // CHUNK) + [ScanEnded]
    assert [e.frame_start for e in sink.of(ChunkWritten)] == [0, 8, 16]
    assert sink.of(ScanEnded)[0].state == "complete"
    assert session.status()["frames_written"] == NUM
    assert_same_frames(tmp_path / "scan_01.ptyd", offline)


def test_a_frame_that_never_comes_is_missing_and_the_scan_goes_on(scan, tmp_path):
    sink = Sink()
    session = session_for(scan, tmp_path, sink)
    names = sorted(p.name for p in (scan / "ccd").iterdir())
    absent = names[10]
    for path in files_of(scan, skip=(absent,)):
        session.file_completed(path)
    session.end("end marker")
    session.loop()
    assert session.state is SessionState.COMPLETE
    assert [e.index for e in sink.of(FrameMissing)] == [10]
    ended = sink.of(ScanEnded)[0]
    assert (ended.state, ended.frames_missing) == ("complete", 1)
    weights = np.concatenate([c.weights for c in open_ptyd(tmp_path / "scan_01.ptyd")
                              .iter_chunks()])
    assert not weights[10].any() and weights[np.arange(NUM) != 10].all()


def test_a_stopped_session_is_resumed_by_the_next_one(scan, offline, tmp_path):
    sink = Sink()
    first = session_for(scan, tmp_path, sink)
    sink.on_event = lambda e: first.stop() if isinstance(e, ChunkWritten) else None
    for path in files_of(scan):
        first.file_completed(path)
    first.loop()
    assert first.state is SessionState.STOPPED
    master = tmp_path / "scan_01.ptyd"
    assert open_ptyd(master).state == "acquiring"
    kept = sum(c.n_frames for c in open_ptyd(master).chunks)
    assert 0 < kept < NUM
    assert not sink.of(ScanEnded)  # a stop is no end

    again = Sink()
    second = session_for(scan, tmp_path, again)
    for path in files_of(scan):
        second.file_completed(path)
    second.end("end marker")
    second.loop()
    assert second.state is SessionState.COMPLETE
    assert second.status()["resumed_at_frame"] == kept
    assert [e.frame_start for e in again.of(ChunkWritten)][0] == kept
    assert_same_frames(master, offline)


def test_no_news_for_the_inactivity_timeout_aborts_the_scan(scan, tmp_path):
    ticks = itertools.count()
    sink = Sink()
    session = session_for(scan, tmp_path, sink, clock=lambda: next(ticks) * 0.5,
                          watch={"inactivity_timeout_s": 30.0, "frame_timeout_s": 600.0})
    names = sorted(p.name for p in (scan / "ccd").iterdir())
    for path in files_of(scan, skip=tuple(names[CHUNK + 2:])):
        session.file_completed(path)
    session.loop()
    assert session.state is SessionState.ABORTED
    assert session.status()["end_reason"] == "no new file for 30 s"
    ended = sink.of(ScanEnded)[0]
    assert (ended.state, ended.frames_missing) == ("aborted", NUM - CHUNK - 2)
    ptyd = open_ptyd(tmp_path / "scan_01.ptyd")
    assert ptyd.state == "aborted" and sum(c.n_frames for c in ptyd.chunks) == NUM


@pytest.mark.parametrize("prep", [{"center": [14, 18]}, {"auto_center": True}],
                         ids=["centre-given", "auto-centre"])
def test_frames_after_the_preparation_is_fixed_are_read_for_its_rows_only(
        scan, tmp_path, monkeypatch, prep):
    """Once its preparation is fixed (at the first frame for a given centre, after the
    first chunk for an auto centre) a session reads only the ROI's rows of each frame;
    what it writes is what ``prepare`` writes from whole frames."""
    from flyprep.prep import Preparation
    from flyprep.sources import scan_dir

    offline = tmp_path / "offline" / "scan_01.ptyd"
    offline.parent.mkdir()
    config = parse_config({"prep": {"shape": 16, **prep}, "output": {"chunk_frames": CHUNK},
                           "geometry": GEOMETRY, "scan": {"num_frames": NUM}})
    with monkeypatch.context() as whole:  # every row of every frame read
        whole.setattr(Preparation, "raw_rows", property(lambda self: None))
        prepare_scan(discover(scan), config, offline)
    asked: list[tuple[int, int]] = []
    real = scan_dir.read_npy_rows

    def reading(path, top, stop):
        asked.append((top, stop))
        return real(path, top, stop)

    monkeypatch.setattr(scan_dir, "read_npy_rows", reading)
    session = session_for(scan, tmp_path, Sink(), prep=prep)
    session.files_completed(files_of(scan))
    session.end("end marker")
    session.loop()
    assert session.state is SessionState.COMPLETE
    assert_same_frames(tmp_path / "scan_01.ptyd", offline)
    whole_before = 1 if "center" in prep else CHUNK
    assert len(asked) == NUM - whole_before and len(set(asked)) == 1
    top, stop = asked[0]
    assert 0 < stop - top < SIDE


def test_status_counts_the_files_waiting_not_the_messages(scan, tmp_path):
    session = session_for(scan, tmp_path, Sink())
    files = files_of(scan)
    session.files_completed(files[:-1])  # a directory listed: one message
    session.file_completed(files[-1])
    assert session.status()["queues"]["files"] == len(files)
    session.end("end marker")
    session.loop()
    assert session.status()["queues"]["files"] == 0

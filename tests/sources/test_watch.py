"""ScanWatcher with real watchdog observers on temporary directories."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from flyprep.config import WatchConfig
from flyprep.sim.simulate import simulate_scan
from flyprep.sources.watch import (
    EndMarkerSeen,
    FileCompleted,
    FileGrew,
    ScanDirectoryAppeared,
    ScanWatcher,
    WatchEvent,
)


class Recorder:
    """Collects events; at each FileCompleted notes the file's size and whether it loads."""

    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self.size_at_event: dict[Path, list[int]] = {}
        self.load_error: dict[Path, str] = {}
        self.time_at_event: dict[Path, float] = {}
        self._cond = threading.Condition()

    def __call__(self, event: WatchEvent) -> None:
        if isinstance(event, FileCompleted):
            self.size_at_event.setdefault(event.path, []).append(event.path.stat().st_size)
            self.time_at_event[event.path] = time.monotonic()
            try:
                if event.path.suffix == ".npy":
                    np.load(event.path)
                elif event.path.suffix == ".h5":
                    with h5py.File(event.path, "r") as f:
                        f["/entry/data/data"][...]
            except Exception as exc:  # noqa: BLE001 - recorded, asserted later
                self.load_error[event.path] = repr(exc)
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[WatchEvent]], bool], timeout_s: float = 8) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.events), timeout_s), self.events

    def of(self, cls: type) -> list[Any]:
        with self._cond:
            return [e for e in self.events if isinstance(e, cls)]

    def completed(self) -> list[Path]:
        return [e.path for e in self.of(FileCompleted)]


def make_config(root: Path, **kw: Any) -> WatchConfig:
    base: dict[str, Any] = {"roots": [root], "frame_patterns": ["*.npy", "*.h5"],
                            "quiet_window_s": 0.3}
    base.update(kw)
    return WatchConfig(**base)


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc

    t = threading.Thread(target=target, name="test-simulator")
    t.start()
    return t, out


def assert_each_reported_once_final(rec: Recorder, expected: set[Path]) -> None:
    done = rec.completed()
    assert sorted(done) == sorted(expected), set(done) ^ expected
    for path in expected:
        assert rec.size_at_event[path] == [path.stat().st_size], path
    assert rec.load_error == {}
    assert not any(p.name.startswith(".") or p.name.endswith(".part") for p in done)


def expected_ptypy(scan: Path, frames: int, *, apx: bool) -> set[Path]:
    files = {scan / f"ccd/diffraction_{i:04d}.npy" for i in range(frames)}
    files |= {scan / "positions.txt", scan / "flyprep-scan.toml"}
    if apx:
        files.add(scan / "astropix.apx")
    return files


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_simulated_ptypy_scan_reported_once_each_when_final(tmp_path: Path, observer: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    config = make_config(root, observer=observer, poll_interval_s=0.05)
    rec = Recorder()
    scan = root / "scan_a"
    with ScanWatcher(config, rec, grow_debounce_s=0.02):
        t, out = run_in_thread(lambda: simulate_scan(
            scan, num_frames=30, frame_side=16, rate_hz=100, partial_fraction=0.4,
            partial_pause_s=0.02, apx=True, readouts_per_frame=30, apx_piece=(256, 512)))
        t.join(10)
        assert "error" not in out
        rec.wait_for(lambda ev: any(isinstance(e, EndMarkerSeen) for e in ev))
        time.sleep(0.4)  # nothing more may come (duplicates)
    result = out["result"]
    assert result.temp_renames > 0 and result.partial_frames
    assert rec.events[0] == ScanDirectoryAppeared(scan)
    assert rec.of(ScanDirectoryAppeared) == [ScanDirectoryAppeared(scan)]
    assert_each_reported_once_final(rec, expected_ptypy(scan, 30, apx=True))
    assert all(e.scan_dir == scan for e in rec.of(FileCompleted))
    assert rec.of(EndMarkerSeen) == [EndMarkerSeen(scan)]
    # the end marker comes after every file of the scan
    assert isinstance(rec.events[-1], EndMarkerSeen)
    grew = {e.path for e in rec.of(FileGrew)}
    assert grew and grew <= {scan / "astropix.apx", scan / "positions.txt"}


def test_simulated_hdf5_stacks_reported_when_closed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    rec = Recorder()
    scan = root / "scan_h5"
    with ScanWatcher(make_config(root), rec):
        t, out = run_in_thread(lambda: simulate_scan(
            scan, layout="hdf5", num_frames=12, frames_per_file=4, frame_side=16,
            rate_hz=60))
        t.join(10)
        assert "error" not in out
        rec.wait_for(lambda ev: any(isinstance(e, EndMarkerSeen) for e in ev))
        time.sleep(0.2)
    stacks = {scan / f"scan_data_{k:06d}.h5" for k in (1, 2, 3)}
    assert_each_reported_once_final(rec, stacks | {scan / "positions.txt",
                                                   scan / "flyprep-scan.toml"})
    for path in stacks:
        with h5py.File(path, "r") as f:
            assert f["/entry/data/data"].shape[0] == 4


def write_in_pieces(path: Path, data: bytes, pieces: int, pause_s: float) -> None:
    step = -(-len(data) // pieces)
    with open(path, "wb", buffering=0) as f:
        for k in range(0, len(data), step):
            if k:
                time.sleep(pause_s)
            f.write(data[k:k + step])


def npy_bytes(side: int = 32) -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, np.arange(side * side, dtype=np.int32).reshape(side, side))
    return buf.getvalue()


def test_native_partial_writes_with_long_pauses_reported_on_close(tmp_path: Path) -> None:
    root = tmp_path / "root"
    scan = root / "scan_b"
    scan.mkdir(parents=True)
    rec = Recorder()
    # pauses longer than the quiet window: only the close may complete the file
    with ScanWatcher(make_config(root, quiet_window_s=0.05), rec):
        rec.wait_for(lambda ev: ScanDirectoryAppeared(scan) in ev)
        frame = scan / "frame_0001.npy"
        write_in_pieces(frame, npy_bytes(), pieces=4, pause_s=0.25)
        closed_at = time.monotonic()
        # a temp name renamed into place, and temp names that stay
        tmp = scan / ".frame_0002.npy.part"
        tmp.write_bytes(npy_bytes())
        os.replace(tmp, scan / "frame_0002.npy")
        (scan / "frame_0003.npy.tmp").write_bytes(npy_bytes())
        (scan / ".hidden.npy").write_bytes(npy_bytes())
        (scan / "notes.txt").write_text("not a frame")
        rec.wait_for(lambda ev: len(rec.completed()) == 2)
        time.sleep(0.3)
    assert_each_reported_once_final(rec, {frame, scan / "frame_0002.npy"})
    assert rec.time_at_event[frame] >= closed_at


def test_polling_waits_for_quiet_window(tmp_path: Path) -> None:
    root = tmp_path / "root"
    scan = root / "scan_c"
    scan.mkdir(parents=True)
    rec = Recorder()
    config = make_config(root, observer="polling", poll_interval_s=0.05, quiet_window_s=0.4)
    with ScanWatcher(config, rec):
        frame = scan / "frame_0001.npy"
        write_in_pieces(frame, npy_bytes(64), pieces=3, pause_s=0.15)
        closed_at = time.monotonic()
        tmp = scan / "frame_0002.npy.part"
        tmp.write_bytes(npy_bytes())
        os.replace(tmp, scan / "frame_0002.npy")
        (scan / "flyprep-scan.done").touch()
        rec.wait_for(lambda ev: any(isinstance(e, EndMarkerSeen) for e in ev))
        time.sleep(0.2)
    assert_each_reported_once_final(rec, {frame, scan / "frame_0002.npy"})
    assert rec.time_at_event[frame] - closed_at >= 0.3
    assert isinstance(rec.events[-1], EndMarkerSeen)


def test_restart_reports_existing_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    old, fresh = root / "scan_old", root / "scan_fresh"
    (old / "ccd").mkdir(parents=True)
    fresh.mkdir()
    long_ago = time.time() - 3600
    for i in range(3):
        p = old / "ccd" / f"diffraction_{i:04d}.npy"
        p.write_bytes(npy_bytes())
        os.utime(p, (long_ago, long_ago))
    (old / ".diffraction_0003.npy.part").write_bytes(b"partial")
    (old / "flyprep-scan.done").touch()
    recent = fresh / "diffraction_0000.npy"
    recent.write_bytes(npy_bytes())
    (root / "flyprep-quarantine").mkdir()
    (root / "flyprep-quarantine" / "bad.npy").write_bytes(b"x")
    rec = Recorder()
    with ScanWatcher(make_config(root, quiet_window_s=0.3), rec) as watcher:
        assert set(rec.of(ScanDirectoryAppeared)) == {ScanDirectoryAppeared(old),
                                                      ScanDirectoryAppeared(fresh)}
        assert len(rec.completed()) == 3  # the old frames, at once
        assert EndMarkerSeen(old) in rec.events
        assert watcher.pending_count == 1  # the recent one waits for its quiet window
        rec.wait_for(lambda ev: recent in rec.completed(), timeout_s=3)
    expected = {old / "ccd" / f"diffraction_{i:04d}.npy" for i in range(3)} | {recent}
    assert_each_reported_once_final(rec, expected)


def test_new_scan_directory_and_marker_native(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    rec = Recorder()
    with ScanWatcher(make_config(root), rec):
        (root / ".staging").mkdir()  # ignored
        (root / "scan_d").mkdir()
        rec.wait_for(lambda ev: ScanDirectoryAppeared(root / "scan_d") in ev)
        (root / "scan_d" / "sub").mkdir()
        (root / "scan_d" / "flyprep-scan.done").touch()
        rec.wait_for(lambda ev: EndMarkerSeen(root / "scan_d") in ev)
        time.sleep(0.2)
    assert rec.events == [ScanDirectoryAppeared(root / "scan_d"), EndMarkerSeen(root / "scan_d")]


def test_stop_is_idempotent_and_joins_threads(tmp_path: Path) -> None:
    watcher = ScanWatcher(make_config(tmp_path), Recorder())
    watcher.start()
    with pytest.raises(RuntimeError):
        watcher.start()
    watcher.stop()
    watcher.stop()


def test_apx_pattern_is_configurable(tmp_path: Path) -> None:
    root = tmp_path / "root"
    scan = root / "scan_c"
    scan.mkdir(parents=True)
    rec = Recorder()
    with ScanWatcher(make_config(root), rec, apx_pattern="*.daq", grow_debounce_s=0.01):
        rec.wait_for(lambda ev: ScanDirectoryAppeared(scan) in ev)
        write_in_pieces(scan / "run.daq", b"\x00" * 4000, pieces=4, pause_s=0.05)
        write_in_pieces(scan / "run.apx", b"\x00" * 4000, pieces=4, pause_s=0.05)
        rec.wait_for(lambda ev: FileCompleted(scan / "run.daq", scan) in ev)
        time.sleep(0.3)
    assert FileGrew(scan / "run.daq") in rec.events
    # not followed as an AstroPix file: said once to match no pattern, never completed
    assert [type(e).__name__ for e in rec.events
            if getattr(e, "path", None) == scan / "run.apx"] == ["FileUnmatched"]


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_without_growth_reports_a_growing_file_is_reported_once_when_it_appears(
        tmp_path: Path, observer: str) -> None:
    """The daemon's mode: one FileGrew to start following an .apx, none per append, and
    FileCompleted at its close as usual."""
    root = tmp_path / "root"
    scan = root / "scan_g"
    scan.mkdir(parents=True)
    rec = Recorder()
    cfg = make_config(root, observer=observer, poll_interval_s=0.05, quiet_window_s=0.3)
    with ScanWatcher(cfg, rec, grow_debounce_s=0.01, report_growth=False):
        rec.wait_for(lambda ev: ScanDirectoryAppeared(scan) in ev)
        with open(scan / "run.apx", "wb", buffering=0) as f:
            f.write(b"\x00" * 100)
            rec.wait_for(lambda ev: FileGrew(scan / "run.apx") in ev)
            for _ in range(5):
                time.sleep(0.06)
                f.write(b"\x00" * 100)
        rec.wait_for(lambda ev: FileCompleted(scan / "run.apx", scan) in ev)
    assert rec.of(FileGrew) == [FileGrew(scan / "run.apx")]


@pytest.mark.parametrize("first", ["positions.txt", "frame_0000.npy"])
def test_scan_announced_before_its_first_file_whatever_the_event_order(
        tmp_path: Path, first: str) -> None:
    """The polling observer reports a new directory's files before the directory (files
    first in one snapshot diff); the scan must still be announced first."""
    from watchdog.events import FileClosedEvent, FileCreatedEvent

    root = tmp_path / "root"
    root.mkdir()
    rec = Recorder()
    scan = root / "scan_x"
    # a polling observer that will not poll during the test: only injected events count
    config = make_config(root, observer="polling", poll_interval_s=30,
                         quiet_window_s=30)
    with ScanWatcher(config, rec, grow_debounce_s=0.01) as watcher:
        scan.mkdir()
        path = scan / first
        path.write_bytes(b"1 2\n" if first.endswith(".txt") else b"x")
        handler = watcher._handler  # noqa: SLF001 - injects the event order under test
        handler.dispatch(FileCreatedEvent(str(path)))
        handler.dispatch(FileClosedEvent(str(path)))
        rec.wait_for(lambda ev: len(ev) >= 2)
    assert rec.events[0] == ScanDirectoryAppeared(scan)
    assert rec.of(ScanDirectoryAppeared) == [ScanDirectoryAppeared(scan)]


@pytest.mark.parametrize("observer", ["native", "polling"])
def test_a_finished_file_moved_in_from_outside_the_roots_is_reported(
        tmp_path: Path, observer: str) -> None:
    """A detector writing elsewhere and moving frames into the scan directory: inotify
    reports no close in the root, only the rename's second half."""
    root, outside = tmp_path / "root", tmp_path / "staging"
    (root / "scan").mkdir(parents=True)
    outside.mkdir()
    rec = Recorder()
    config = make_config(root, observer=observer, poll_interval_s=0.05)
    with ScanWatcher(config, rec):
        time.sleep(0.2)
        staged = outside / "f_0000.npy"
        np.save(staged, np.arange(16).reshape(4, 4))
        staged.rename(root / "scan" / "f_0000.npy")
        rec.wait_for(lambda ev: any(isinstance(e, FileCompleted) for e in ev), timeout_s=5)
        # moved out again, then back: reported again (it is a new arrival)
        (root / "scan" / "f_0000.npy").rename(staged)
        time.sleep(0.5)
        staged.rename(root / "scan" / "f_0000.npy")
        rec.wait_for(lambda ev: len([e for e in ev if isinstance(e, FileCompleted)]) == 2,
                     timeout_s=5)
    assert rec.completed() == [root / "scan" / "f_0000.npy"] * 2
    assert rec.load_error == {}


def test_a_rename_out_of_the_roots_does_not_hold_back_later_files(tmp_path: Path) -> None:
    """watchdog holds a rename's first half to pair it, and its queue waits behind it
    (0.5 s by default, even once paired): files closed meanwhile must not wait that long."""
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    (root / "scan").mkdir(parents=True)
    outside.mkdir()
    rec = Recorder()
    delays = []
    with ScanWatcher(make_config(root), rec):
        time.sleep(0.2)
        for k in range(5):
            moved = root / "scan" / f"m_{k}.npy"
            np.save(moved, np.zeros(4))
            rec.wait_for(lambda ev, p=moved: p in rec.completed())
            moved.rename(outside / moved.name)  # an unpaired first half
            frame = root / "scan" / f"f_{k}.npy"
            np.save(frame, np.zeros(4))
            closed = time.monotonic()
            rec.wait_for(lambda ev, p=frame: p in rec.completed())
            delays.append(rec.time_at_event[frame] - closed)
    assert max(delays) < 0.4, delays  # held: about 0.5 s


def old_scan_outside(tmp_path: Path, name: str, frames: int) -> tuple[Path, Path, list[Path]]:
    """A watched root, and a finished scan beside it (``ccd/`` frame files last changed a
    minute ago): (root, scan, frame files)."""
    root, scan = tmp_path / "root", tmp_path / "staging" / name
    root.mkdir()
    (scan / "ccd").mkdir(parents=True)
    names = [scan / "ccd" / f"diffraction_{i:04d}.npy" for i in range(frames)]
    for path in names:
        np.save(path, np.zeros((4, 4), np.int32))
    old = time.time() - 60
    for path in names:
        os.utime(path, (old, old))
    return root, scan, names


def test_old_files_of_a_directory_moved_in_are_reported_at_once_and_once(tmp_path: Path) -> None:
    """A finished scan moved into a root (its files quiet for longer than the quiet
    window already) is not held back by the window; its subdirectory, reported again by
    watchdog, reports nothing twice."""
    root, scan, names = old_scan_outside(tmp_path, "scan_old", 300)
    (scan / "positions.txt").write_text("0 0\n")
    old = time.time() - 60
    os.utime(scan / "positions.txt", (old, old))
    rec = Recorder()
    with ScanWatcher(make_config(root, quiet_window_s=3.0), rec):
        time.sleep(0.2)
        moved_at = time.monotonic()
        scan.rename(root / "scan_old")
        expected = {root / "scan_old" / p.relative_to(scan) for p in names}
        rec.wait_for(lambda ev: expected <= set(rec.completed()), timeout_s=10)
        took = max(rec.time_at_event[p] for p in expected) - moved_at
        time.sleep(0.5)
    assert took < 1.5, f"{took:.2f} s: held back by the 3 s quiet window"
    done = rec.completed()
    assert len(done) == len(set(done)) == len(expected) + 1  # and positions.txt


def test_a_scan_directory_moved_out_of_the_root_is_not_announced_again(tmp_path: Path) -> None:
    """inotify keeps reporting a directory moved away under its old path."""
    root, away = tmp_path / "root", tmp_path / "away"
    root.mkdir()
    away.mkdir()
    rec = Recorder()
    with ScanWatcher(make_config(root), rec):
        (root / "scan_a").mkdir()
        time.sleep(0.2)
        np.save(root / "scan_a" / "f0.npy", np.zeros(4))
        rec.wait_for(lambda ev: root / "scan_a" / "f0.npy" in rec.completed())
        (root / "scan_a").rename(away / "scan_a")
        time.sleep(0.3)
        np.save(away / "scan_a" / "f1.npy", np.zeros(4))
        time.sleep(0.5)
    assert rec.of(ScanDirectoryAppeared) == [ScanDirectoryAppeared(root / "scan_a")]
    assert rec.completed() == [root / "scan_a" / "f0.npy"]


@pytest.mark.parametrize("observer", ["native", "polling"])
@pytest.mark.parametrize("how", ["moved away", "deleted"])
def test_non_recursive_a_scan_directory_made_again_under_its_name_is_watched(
        tmp_path: Path, observer: str, how: str) -> None:
    """Each scan directory has its own watch when not recursive; inotify's follows the
    directory's inode wherever it goes, so a new directory of the same name needs a new
    one (before, its files were never reported)."""
    import shutil

    root, away = tmp_path / "root", tmp_path / "away"
    root.mkdir()
    away.mkdir()
    rec = Recorder()
    config = make_config(root, recursive=False, observer=observer, poll_interval_s=0.05)
    with ScanWatcher(config, rec):
        for k in range(2):
            scan = root / "scan_a"
            scan.mkdir()
            time.sleep(0.3)
            np.save(scan / f"f{k}.npy", np.zeros(4))
            rec.wait_for(lambda ev, p=scan / f"f{k}.npy": p in rec.completed())
            if how == "deleted":
                shutil.rmtree(scan)
            else:
                scan.rename(away / f"scan_a{k}")
            time.sleep(0.4)
    assert rec.completed() == [root / "scan_a" / "f0.npy", root / "scan_a" / "f1.npy"]


def test_a_tree_moved_in_is_listed_once_and_sent_in_batches_in_order(
        tmp_path: Path, monkeypatch) -> None:
    """The subdirectories of a directory moved in are walked by its listing; watchdog's
    own report of each as created does not list them again. With ``on_events`` what the
    listing finds comes in batches of at most LISTED_BATCH, in listing order, and nothing
    of it through ``on_event``."""
    from flyprep.sources import watch

    root, scan, names = old_scan_outside(tmp_path, "scan", 200)
    walked: list[str] = []
    real_list = ScanWatcher._list_files

    def list_files(self, top, **kwargs):
        walked.append(os.fspath(top))
        return real_list(self, top, **kwargs)

    monkeypatch.setattr(ScanWatcher, "_list_files", list_files)
    single, batches = Recorder(), []
    with ScanWatcher(make_config(root, quiet_window_s=3.0), single,
                     on_events=batches.append):
        time.sleep(0.2)
        walked.clear()
        scan.rename(root / "scan")
        expected = [root / "scan" / p.relative_to(scan) for p in names]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listed = [e.path for b in batches for e in b if isinstance(e, FileCompleted)]
            if len(listed) >= len(expected):
                break
            time.sleep(0.05)
        time.sleep(0.5)  # watchdog's created events for ccd and each file
    assert listed == expected
    assert all(1 <= len(b) <= watch.LISTED_BATCH for b in batches)
    assert not single.completed()
    assert walked == [str(root / "scan")]  # listed once, not ccd again


def test_a_subdirectory_made_after_its_scan_was_listed_is_listed(tmp_path: Path) -> None:
    """Only a directory moved in vouches for its subdirectories: one made in place may
    hold files from before its kernel watch, so it is listed when it appears."""
    root = tmp_path / "root"
    root.mkdir()
    rec = Recorder()
    with ScanWatcher(make_config(root, quiet_window_s=0.2), rec):
        (root / "scan").mkdir()
        time.sleep(0.3)
        (root / "scan" / "ccd").mkdir()
        files = [root / "scan" / "ccd" / f"f_{i}.npy" for i in range(20)]
        for path in files:
            np.save(path, np.zeros(4))
        rec.wait_for(lambda ev: set(files) <= set(rec.completed()))
        time.sleep(0.3)
    done = rec.completed()
    assert len(done) == len(set(done))

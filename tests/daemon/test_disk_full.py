"""A full disk never ends a scan: below the free-space floor a scan pauses, a write that
meets a full disk anyway publishes nothing aborted, and once there is space again the
scan finishes complete and identical to an uninterrupted run.

With a real small file system (tmpfs, mounted as root) and the daemon as a process; and
with an injected ENOSPC in-process where no file system can be mounted."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from compare import assert_same_ptyd
from daemon_helpers import GEOMETRY, master_state, staged_scan, wait_for, write_scan

from flyprep.config import parse_config
from flyprep.events import ScanContinued, ScanEnded, ScanPaused, ScanStarted
from flyprep.pipeline import prepare_scan
from flyprep.sources.scan_dir import discover
from flyprep.cli.status import print_status


def reference(scan: Path, out: Path) -> Path:
    config = parse_config({"geometry": dict(GEOMETRY), "prep": {"shape": 48},
                           "output": {"chunk_frames": 40}})
    prepare_scan(discover(scan), config, out)
    return out


@pytest.fixture
def small_disk(daemon_dirs) -> Iterator[Path]:
    """The output directory on a 4 MiB tmpfs of its own (skipped where none can be
    mounted: not root, or no mount permission in this container)."""
    _, out, _ = daemon_dirs
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "flyprep-test", str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield out
    finally:
        subprocess.run(["umount", "-l", str(out)], capture_output=True)


def fill(disk: Path, leave_bytes: int) -> Path:
    """A filler file taking all but ``leave_bytes`` of the disk."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


def watch_states(master: Path, stop: threading.Event, seen: set) -> threading.Thread:
    """Record every state the published master shows until ``stop``."""
    def run() -> None:
        while not stop.is_set():
            seen.add(master_state(master))
            time.sleep(0.01)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_below_the_floor_a_scan_pauses_and_goes_on_when_space_returns(
        daemon_process, daemon_dirs, small_disk, tmp_path):
    root, out, _ = daemon_dirs
    filler = fill(small_disk, 1 << 20)  # 1 MiB free, floor 2 MiB
    daemon = daemon_process(limits={"min_free_bytes": 2 << 20, "disk_check_s": 0.2}).start()
    write_scan(root / "scan_low", 200)
    paused = wait_for(lambda: (s := daemon.scan("scan_low")) and s["paused"] and s, 20,
                      "the scan to pause")
    assert "below limits.min_free_bytes (2 MiB)" in paused["paused"]
    assert paused["state"] == "acquiring" and paused["frames_written"] == 0
    time.sleep(1.0)
    assert daemon.scan("scan_low")["frames_done"] == paused["frames_done"]  # takes none
    assert "paused: low disk space" in daemon.log_text()
    filler.unlink()
    wait_for(lambda: master_state(out / "scan_low.ptyd") == "complete", 60, "the scan to end")
    # The status is the document the daemon last pushed (docs/daemon.md): up to 0.25 s
    # behind the master. Once it says complete, the pause must be gone from it too.
    ended = daemon.wait_scan("scan_low", ("complete", "aborted", "failed"))
    assert ended["state"] == "complete", ended
    assert ended["paused"] is None
    assert daemon.stop() == 0
    assert_same_ptyd(out / "scan_low.ptyd", reference(root / "scan_low", tmp_path / "ref.ptyd"))


def test_a_real_enospc_leaves_the_scan_resumable_and_it_finishes_identical(
        daemon_process, daemon_dirs, small_disk, tmp_path):
    """No floor: the chunk writes meet ENOSPC on a real file system. Nothing is published
    aborted; once the filler is gone the chunk is written again and the scan ends
    complete, frame for frame as an uninterrupted run."""
    root, out, _ = daemon_dirs
    filler = fill(small_disk, 600_000)  # the first chunk fits, the second does not
    daemon = daemon_process(limits={"min_free_bytes": 0, "disk_check_s": 0.2}).start()
    master = out / "scan_full.ptyd"
    stop, seen = threading.Event(), set()
    watcher = watch_states(master, stop, seen)
    write_scan(root / "scan_full", 200)
    wait_for(lambda: (s := daemon.scan("scan_full")) and s["paused"] and "disk full" in s["paused"],
             30, "the scan to wait for space after ENOSPC")
    assert "No space left on device" in daemon.log_text()
    filler.unlink()
    wait_for(lambda: master_state(master) == "complete", 60, "the scan to end")
    stop.set()
    watcher.join()
    assert "aborted" not in seen
    assert daemon.stop() == 0
    assert_same_ptyd(master, reference(root / "scan_full", tmp_path / "ref.ptyd"))


def test_an_injected_enospc_pauses_then_the_scan_is_prepared_again_from_its_files(
        inprocess_daemon, daemon_dirs, tmp_path, monkeypatch):
    """The same where no file system can be mounted: writes into the output fail with
    ENOSPC, and the disk says it has no space, until the test frees it."""
    from flyprep.ptyd import safefile
    from flyprep.daemon.session import ScanSession

    root, out, _ = daemon_dirs
    full = threading.Event()
    write_at = safefile.GuardedFile._write_at

    def failing_write_at(self, offset, data):
        if full.is_set() and self.error is None and Path(self.path).parent == out:
            self.error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))
            return
        write_at(self, offset, data)

    free_bytes = ScanSession._free_bytes
    monkeypatch.setattr(safefile.GuardedFile, "_write_at", failing_write_at)
    monkeypatch.setattr(ScanSession, "_free_bytes",
                        lambda self: 0 if full.is_set() else free_bytes(self))
    master = out / "scan_inj.ptyd"
    stop, seen = threading.Event(), set()
    watcher = watch_states(master, stop, seen)
    # The frames arrive in two parts, so that the scan cannot finish before the disk
    # fills: the first part makes a whole chunk, the rest comes once the disk is full.
    arrive = staged_scan(tmp_path / "staging", root / "scan_inj", 160)
    with inprocess_daemon(limits={"min_free_bytes": 0, "disk_check_s": 0.1}) as d:
        arrive(0, 60)
        wait_for(lambda: (d.scan("scan_inj") or {}).get("chunks_written", 0) >= 1, 30,
                 "a first chunk")
        full.set()
        arrive(60, 160)
        wait_for(lambda: (s := d.scan("scan_inj")) and s["paused"], 30, "the pause")
        shown = io.StringIO()
        print_status(d.daemon.status(), endpoint="x", file=shown)
        assert "    paused: disk full: " in shown.getvalue()
        assert "frames wait on disk" in shown.getvalue()
        time.sleep(0.5)
        (root / "scan_inj" / "flyprep-scan.done").touch()  # the end comes while paused
        full.clear()
        d.wait_state("scan_inj", ("complete",), timeout_s=60)
        events = d.sink.events
    stop.set()
    watcher.join()
    assert "aborted" not in seen
    assert len([e for e in events if isinstance(e, ScanStarted)]) == 1
    assert [e.state for e in events if isinstance(e, ScanEnded)] == ["complete"]
    kinds = [type(e) for e in events if isinstance(e, (ScanPaused, ScanContinued))]
    assert kinds[:2] == [ScanPaused, ScanContinued]
    assert_same_ptyd(master, reference(root / "scan_inj", tmp_path / "ref.ptyd"))

"""The ``.apx`` stream as records: the header and every record as their exact file bytes,
exactly once across a restart of the streamer (the offset kept beside the file), and a
file still written after its scan's end followed until it is quiet."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flyprep.apx.format import ApxStreamParser
from flyprep.apx.stream import ApxStreamer
from flyprep.apx.stream_state import load_offset, save_offset, state_path
from flyprep.apx.tail import ApxTailer
from flyprep.events import ApxHeaderRead, ApxReadouts, ApxRecords, ErrorReported, MemorySink

HERE = Path(__file__).resolve().parent
FIXTURE = HERE.parents[0] / "data" / "apx" / "fixture.apx"
WRITER = HERE / "apx_writer_proc.py"


class Captured:
    """What the streamer publishes, kept in order (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[Any, bytes]] = []

    def __call__(self, event: Any, arrays: Any) -> None:
        with self.lock:
            payload = arrays[0].tobytes() if not isinstance(event, ApxReadouts) else b""
            self.items.append((event, payload))

    def of(self, kind: type) -> list[tuple[Any, bytes]]:
        with self.lock:
            return [(e, b) for e, b in self.items if isinstance(e, kind)]


def rebuild(captured: Captured) -> bytes:
    """The file as the header and the records received make it (each byte range once)."""
    header = captured.of(ApxHeaderRead)[0][1]
    out = bytearray(header)
    for event, data in captured.of(ApxRecords):
        assert event.start == len(out), f"records from {event.start}, file so far {len(out)}"
        assert len(data) == event.end - event.start
        out += data
    return bytes(out)


def wait_until(cond: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def stream_the_rest(dst: Path, rest: bytes) -> Captured:
    """The DAQ writes ``rest``; a new durable streamer (a restarted daemon) streams the
    file to its end."""
    with open(dst, "ab") as f:
        f.write(rest)
    got = Captured()
    with ApxStreamer(got, records=True, durable=True, poll_interval_s=0.02) as streamer:
        streamer.finish(dst)
        wait_until(lambda: streamer.status()["files"][str(dst)]["state"] == "finished",
                   "the file finished")
    return got


def writer(dst: Path, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WRITER), str(FIXTURE), str(dst), "--seed", "3",
                             *map(str, args)], stdout=subprocess.PIPE, text=True)


def test_the_header_and_records_rebuild_a_file_written_in_pieces(tmp_path: Path) -> None:
    dst = tmp_path / "run.apx"
    got = Captured()
    with ApxStreamer(got, records=True, poll_interval_s=0.02) as streamer:
        streamer.follow(dst)
        proc = writer(dst, "--max-piece", 4096, "--max-pause-s", 0.002)
        assert proc.wait(60) == 0
        streamer.finish(dst)
        wait_until(lambda: streamer.status()["files"][str(dst)]["state"] == "finished",
                   "the file finished")
    assert rebuild(got) == FIXTURE.read_bytes()
    header = got.of(ApxHeaderRead)[0][0]
    records = [e for e, _ in got.of(ApxRecords)]
    assert header.readout_uid == records[0].readout_uid == 4000
    assert sum(r.count for r in records) == 2010
    assert len({e.stream for e, _ in got.items if not isinstance(e, ApxReadouts)}) == 1
    assert not state_path(dst).exists()  # not durable unless asked


def test_a_restarted_streamer_goes_on_where_the_last_one_stopped(tmp_path: Path) -> None:
    raw = FIXTURE.read_bytes()
    dst = tmp_path / "run.apx"
    dst.write_bytes(raw[:len(raw) // 2])
    first = Captured()
    with ApxStreamer(first, records=True, durable=True, poll_interval_s=0.02) as streamer:
        streamer.follow(dst)
        wait_until(lambda: first.of(ApxRecords), "the first records")
        wait_until(lambda: load_offset(dst) == first.of(ApxRecords)[-1][0].end,
                   "the offset kept")
    kept = load_offset(dst)
    assert kept is not None and 0 < kept <= len(raw) // 2
    second = stream_the_rest(dst, raw[len(raw) // 2:])
    assert second.of(ApxRecords)[0][0].start == kept  # nothing sent twice
    both = Captured()
    both.items = first.of(ApxHeaderRead) + first.of(ApxRecords) + second.of(ApxRecords)
    assert rebuild(both) == raw
    ids = np.concatenate([np.arange(e.first_readout, e.last_readout + 1)
                          for e, _ in both.of(ApxRecords)])
    assert len(ids) == 2010 and len(np.unique(ids)) == 2010


def test_after_a_clean_close_nothing_is_sent_twice(tmp_path: Path) -> None:
    raw = FIXTURE.read_bytes()
    dst = tmp_path / "run.apx"
    dst.write_bytes(raw[:len(raw) // 3])
    first = Captured()
    streamer = ApxStreamer(first, records=True, durable=True, poll_interval_s=0.02).start()
    streamer.follow(dst)
    wait_until(lambda: first.of(ApxRecords), "the first records")
    streamer.close()
    streamer.keep_offsets()  # the publisher sent everything: a clean shutdown
    assert load_offset(dst) == first.of(ApxRecords)[-1][0].end
    second = stream_the_rest(dst, raw[len(raw) // 3:])
    both = Captured()
    both.items = first.of(ApxHeaderRead) + first.of(ApxRecords) + second.of(ApxRecords)
    assert rebuild(both) == raw


def test_the_state_of_a_replaced_file_is_not_used(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    dst = tmp_path / "run.apx"
    dst.write_bytes(FIXTURE.read_bytes())
    save_offset(dst, 5000)
    assert load_offset(dst) == 5000
    replacement = tmp_path / "new.apx"
    replacement.write_bytes(FIXTURE.read_bytes())
    replacement.replace(dst)  # another inode at the same path
    assert load_offset(dst) is None
    assert "stream state is for another file" in caplog.text


def test_a_tailer_started_at_an_offset_gives_the_records_after_it(tmp_path: Path) -> None:
    raw = FIXTURE.read_bytes()
    whole = ApxTailer(FIXTURE).finish().batch
    parser = ApxStreamParser(FIXTURE)
    parser.feed(raw)
    first = parser.take(max_records=700)
    assert len(first) == 700
    for read_size in (64, 1 << 20):
        tail = ApxTailer(FIXTURE, start_at=parser.offset, read_size=read_size).finish().batch
        np.testing.assert_array_equal(tail.readout_id, whole.readout_id[700:])
    with pytest.raises(Exception, match="shorter than"):
        ApxTailer(FIXTURE, start_at=len(raw) + 10).poll()


def test_after_the_end_a_file_still_written_is_followed_until_quiet(tmp_path: Path) -> None:
    """end-scan while the DAQ still writes: the rest is streamed, no false truncation."""
    dst = tmp_path / "run.apx"
    got = Captured()
    with ApxStreamer(got, records=True, poll_interval_s=0.02,
                     finish_quiet_s=0.5) as streamer:
        proc = writer(dst, "--max-piece", 2048, "--max-pause-s", 0.02)
        wait_until(dst.exists, "the file")
        streamer.finish(dst)  # the scan ended; the writer goes on for a while
        assert proc.wait(60) == 0
        wait_until(lambda: streamer.status()["files"][str(dst)]["state"] == "finished",
                   "the file finished")
        status = streamer.status()
    assert status["truncated"] == 0 and status["files"][str(dst)]["error"] is None
    assert rebuild(got) == FIXTURE.read_bytes()


def test_a_file_that_breaks_the_format_is_an_error_event(tmp_path: Path) -> None:
    raw = FIXTURE.read_bytes()
    dst = tmp_path / "run.apx"
    dst.write_bytes(raw[:5000] + b"\x00" * 64 + raw[5000:])  # junk where a record starts
    sink = MemorySink()
    with ApxStreamer(Captured(), events=sink, records=True, poll_interval_s=0.02) as streamer:
        streamer.follow(dst, scan="scan_z")
        wait_until(lambda: streamer.status()["files"][str(dst)]["state"] == "failed",
                   "the file failed")
    errors = sink.of_kind(ErrorReported)
    assert len(errors) == 1 and errors[0].where == "apx" and errors[0].scan == "scan_z"
    assert str(dst) in errors[0].message and "offset" in errors[0].message

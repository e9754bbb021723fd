"""Following a growing ``.apx`` file written by another process."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flyprep.apx.format import (
    PREFIX_SIZE,
    ApxFormatError,
    ApxTruncatedError,
    Readout,
    ReadoutBatch,
)
from flyprep.apx.tail import ApxTailer
from flyprep.errors import InputError

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[0] / "data" / "apx"
FIXTURE = DATA / "fixture.apx"
WRITER = HERE / "apx_writer_proc.py"


@pytest.fixture(scope="module")
def raw() -> bytes:
    """The fixture file's bytes."""
    return FIXTURE.read_bytes()


@pytest.fixture(scope="module")
def recs() -> list[Readout]:
    """The reference's records, from fixture.jsonl."""
    out = []
    for line in (DATA / "fixture.jsonl").read_text().splitlines()[1:]:
        d = json.loads(line)
        out.append(Readout(d["readout_id"], d["timestamp"], bytes.fromhex(d["data"])))
    return out


def record_starts(raw: bytes) -> list[int]:
    """Offsets of every record."""
    pos, out = 10 + struct.unpack_from("<I", raw, 6)[0], []
    while pos < len(raw):
        out.append(pos)
        pos += PREFIX_SIZE + struct.unpack_from("<I", raw, pos + 15)[0]
    return out


def follow(
    tailer: ApxTailer, proc: subprocess.Popen, timeout_s: float = 10.0
) -> list[ReadoutBatch]:
    """Poll ``tailer`` until ``proc`` exits, then once more; the batches seen."""
    batches = []
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        assert time.monotonic() < deadline, "writer process did not finish"
        batches.append(tailer.poll())
        assert tailer.pending < PREFIX_SIZE + 64 + tailer.read_size
        time.sleep(0.002)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return batches


def start_writer(dst: Path, *args: object) -> subprocess.Popen:
    """Run the writer helper copying the fixture to ``dst``."""
    cmd = [sys.executable, str(WRITER), str(FIXTURE), str(dst), *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize(
    "args",
    [
        ("--seed", 1, "--max-piece", 8192, "--max-pause-s", 0.01),
        ("--seed", 2, "--max-piece", 8192, "--max-pause-s", 0.003),
        ("--seed", 3, "--max-piece", 40, "--max-pause-s", 0.002, "--pause-prob", 0.05),
    ],
)
def test_follow_writer_subprocess(
    tmp_path: Path, raw: bytes, recs: list[Readout], args: tuple
) -> None:
    dst = tmp_path / "growing.apx"
    tailer = ApxTailer(dst, poll_interval_s=0.001)
    assert len(tailer.poll()) == 0  # not there yet: wait, no error
    proc = start_writer(dst, *args)
    try:
        batches = follow(tailer, proc)
    finally:
        proc.kill()
        proc.wait()
    end = tailer.finish()
    assert end.truncation is None
    end.raise_for_truncation()
    batches.append(end.batch)
    got = list(ReadoutBatch.concat(batches))
    assert got == recs  # each exactly once, in order
    assert sum(1 for b in batches if len(b)) > 3  # really incremental
    assert tailer.header is not None and tailer.header.readout_uid == 4000
    assert tailer.offset == tailer.bytes_read == len(raw)
    tailer.close()


def test_truncated_file_reported_by_finish(tmp_path: Path, raw: bytes, recs: list[Readout]) -> None:
    last = record_starts(raw)[-1]
    dst = tmp_path / "cut.apx"
    proc = start_writer(dst, "--seed", 4, "--max-pause-s", 0.005, "--stop-at", len(raw) - 3)
    with ApxTailer(dst) as tailer:
        try:
            batches = follow(tailer, proc)
        finally:
            proc.kill()
            proc.wait()
        end = tailer.finish()
    assert list(ReadoutBatch.concat(batches + [end.batch])) == recs[:-1]
    assert end.truncation is not None
    assert end.truncation.offset == last and end.truncation.missing == 3
    with pytest.raises(ApxTruncatedError) as info:
        end.raise_for_truncation()
    assert info.value.offset == last and info.value.missing == 3
    assert str(dst) in str(info.value) and "3 bytes missing" in str(info.value)


@pytest.mark.parametrize("cut,offset,what", [(4, 0, "preamble"), (30, 6, "header")])
def test_truncated_in_header_reported(
    tmp_path: Path, raw: bytes, cut: int, offset: int, what: str
) -> None:
    dst = tmp_path / "h.apx"
    dst.write_bytes(raw[:cut])
    with ApxTailer(dst) as tailer:
        assert len(tailer.poll()) == 0 and tailer.header is None
        end = tailer.finish()
    assert end.truncation is not None
    assert (end.truncation.offset, end.truncation.what) == (offset, what)


def test_pieces_in_process_header_and_prefix_boundaries(
    tmp_path: Path, raw: bytes, recs: list[Readout]
) -> None:
    """Cut exactly inside the header, inside a prefix and inside a payload."""
    first = record_starts(raw)[0]
    cuts = [3, 8, 40, first, first + 2, first + 10, first + 19, first + 25, len(raw)]
    dst = tmp_path / "p.apx"
    dst.write_bytes(b"")
    got: list[Readout] = []
    with ApxTailer(dst) as tailer, open(dst, "ab") as out:
        prev = 0
        for cut in cuts:
            out.write(raw[prev:cut])
            out.flush()
            prev = cut
            batch = tailer.poll()
            got.extend(batch)
            if cut < first:
                assert tailer.header is None and len(batch) == 0
            if cut in (first + 2, first + 10, first + 19, first + 25):
                assert len(batch) == 0 and tailer.offset == first
        assert tailer.finish().truncation is None
    assert got == recs


def test_replaced_file_detected(tmp_path: Path, raw: bytes) -> None:
    dst = tmp_path / "r.apx"
    dst.write_bytes(raw[:5000])
    with ApxTailer(dst) as tailer:
        assert len(tailer.poll()) > 0
        other = tmp_path / "other.apx"
        other.write_bytes(raw)
        os.replace(other, dst)
        with pytest.raises(InputError) as info:
            tailer.poll()
    assert "replaced" in str(info.value) and str(dst) in str(info.value)
    assert "offset 5000" in str(info.value)


def test_removed_file_detected(tmp_path: Path, raw: bytes) -> None:
    dst = tmp_path / "gone.apx"
    dst.write_bytes(raw[:5000])
    with ApxTailer(dst) as tailer:
        tailer.poll()
        dst.unlink()
        with pytest.raises(InputError, match="disappeared"):
            tailer.poll()


def test_shrunk_file_detected(tmp_path: Path, raw: bytes) -> None:
    dst = tmp_path / "s.apx"
    dst.write_bytes(raw[:5000])
    with ApxTailer(dst) as tailer:
        tailer.poll()
        os.truncate(dst, 1000)
        with pytest.raises(ApxFormatError) as info:
            tailer.poll()
    assert "shrank from 5000 to 1000" in str(info.value) and "offset 1000" in str(info.value)
    assert info.value.offset == 1000


def test_rewritten_file_detected(tmp_path: Path, raw: bytes) -> None:
    """Truncated and rewritten to a larger size between polls: the size alone misses it."""
    dst = tmp_path / "w.apx"
    dst.write_bytes(raw[:5000])
    with ApxTailer(dst) as tailer:
        tailer.poll()
        with open(dst, "r+b") as f:  # same inode
            f.truncate(0)
            f.write(b"\x00" * 6000)
        with pytest.raises(InputError, match="rewritten"):
            tailer.poll()


def test_missing_file_finish_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        ApxTailer(tmp_path / "nope.apx").finish()


def test_wrong_magic_is_an_error_at_once(tmp_path: Path) -> None:
    dst = tmp_path / "m.apx"
    dst.write_bytes(b"%APX")  # fine so far
    with ApxTailer(dst) as tailer:
        tailer.poll()
        with open(dst, "ab") as f:
            f.write(b"Q")
        with pytest.raises(ApxFormatError) as info:
            tailer.poll()
    assert info.value.offset == 0


def test_absurd_header_length_is_an_error_not_a_wait(tmp_path: Path, raw: bytes) -> None:
    dst = tmp_path / "h.apx"
    dst.write_bytes(b"%APXDF" + struct.pack("<I", 0xFFFFFFFF))
    with ApxTailer(dst) as tailer, pytest.raises(ApxFormatError) as info:
        tailer.poll()
    assert info.value.offset == 6 and "allowed" in info.value.reason


def test_absurd_record_length_is_an_error_not_a_wait(tmp_path: Path, raw: bytes) -> None:
    first = record_starts(raw)[0]
    dst = tmp_path / "l.apx"
    dst.write_bytes(raw[:first] + b"\xfe\xdc\xba" + bytes(12) + struct.pack("<I", 17 << 20))
    with ApxTailer(dst) as tailer, pytest.raises(ApxFormatError) as info:
        tailer.poll()
    assert info.value.offset == first and "allowed" in info.value.reason


def test_garbage_after_records_delivers_then_raises(
    tmp_path: Path, raw: bytes, recs: list[Readout]
) -> None:
    starts = record_starts(raw)
    dst = tmp_path / "g.apx"
    dst.write_bytes(raw[: starts[10]] + b"\x01\x02")
    with ApxTailer(dst) as tailer:
        assert list(tailer.poll()) == recs[:10]
        with pytest.raises(ApxFormatError) as info:
            tailer.poll()
    assert info.value.offset == starts[10] and "record magic" in info.value.reason


def test_partial_garbage_prefix_detected_before_complete(tmp_path: Path, raw: bytes) -> None:
    """A wrong first byte of a record is an error even before 19 bytes are there."""
    first = record_starts(raw)[0]
    dst = tmp_path / "pg.apx"
    dst.write_bytes(raw[:first] + b"\xfe\x00")
    with ApxTailer(dst) as tailer, pytest.raises(ApxFormatError) as info:
        tailer.poll()
    assert info.value.offset == first


def test_wait_returns_records_or_times_out(tmp_path: Path, raw: bytes) -> None:
    dst = tmp_path / "wt.apx"
    dst.write_bytes(raw[:3000])
    with ApxTailer(dst, poll_interval_s=0.005) as tailer:
        assert len(tailer.wait(1.0)) > 0
        t0 = time.monotonic()
        assert len(tailer.wait(0.05)) == 0
        assert time.monotonic() - t0 >= 0.05
        batch = tailer.poll()
        assert batch.records.dtype == ReadoutBatch.empty().records.dtype
        assert isinstance(batch.payload, np.ndarray)


@pytest.mark.parametrize("read_size", [97, 4096])
def test_garbage_between_records_delivers_every_good_record_once(
    tmp_path: Path, raw: bytes, recs: list[Readout], read_size: int
) -> None:
    """Bad bytes met mid-poll, with more chunks after them: the records before them are
    returned, the error (file and offset) comes at the next poll and stays."""
    starts = record_starts(raw)
    k = min(1000, len(starts) - 1)
    dst = tmp_path / "mid.apx"
    dst.write_bytes(raw[: starts[k]] + b"\x00" * 8 + raw[starts[k] :])
    got: list[Readout] = []
    with ApxTailer(dst, read_size=read_size) as tailer:
        with pytest.raises(ApxFormatError) as info:
            for _ in range(10000):
                got.extend(tailer.poll())
        assert got == recs[:k]  # each exactly once
        assert info.value.offset == starts[k] and str(dst) in str(info.value)
        with pytest.raises(ApxFormatError):  # the error is kept
            tailer.poll()
        with pytest.raises(ApxFormatError):
            tailer.finish()


def test_finish_keeps_records_before_garbage(
    tmp_path: Path, raw: bytes, recs: list[Readout]
) -> None:
    starts = record_starts(raw)
    dst = tmp_path / "fin.apx"
    dst.write_bytes(raw[: starts[20]] + b"\x00" * 8 + raw[starts[20] :])
    with ApxTailer(dst, read_size=64) as tailer:
        end = tailer.finish()
        assert list(end.batch) == recs[:20]
        assert isinstance(end.error, ApxFormatError) and end.error.offset == starts[20]
        with pytest.raises(ApxFormatError):
            end.raise_for_truncation()
        with pytest.raises(ApxFormatError):
            tailer.poll()


def test_poll_reads_a_bounded_amount(tmp_path: Path, raw: bytes, recs: list[Readout]) -> None:
    """A large existing file is read over several polls, each bounded, all records once."""
    copies = 8
    body = raw[record_starts(raw)[0] :]
    dst = tmp_path / "big.apx"
    dst.write_bytes(raw + body * (copies - 1))
    limit = 64 << 10
    got: list[ReadoutBatch] = []
    with ApxTailer(dst, read_size=16 << 10, max_poll_bytes=limit) as tailer:
        while tailer.bytes_read < dst.stat().st_size:
            before = tailer.bytes_read
            batch = tailer.poll()
            assert tailer.bytes_read - before <= limit
            assert batch.payload.size <= limit
            got.append(batch)
        end = tailer.finish()
        assert len(end.batch) == 0 and end.truncation is None
    assert len(got) >= len(dst.read_bytes()) // limit
    assert list(ReadoutBatch.concat(got)) == recs * copies


def test_unreadable_paths_are_input_errors(
    tmp_path: Path, raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InputError) as info:
        ApxTailer(tmp_path).poll()
    assert str(tmp_path) in str(info.value) and "offset 0" in str(info.value)
    dst = tmp_path / "noperm.apx"
    dst.write_bytes(raw)
    real_open = os.open

    def refuse(path: object, *args: object, **kw: object) -> int:
        if os.fspath(path) == str(dst):  # type: ignore[arg-type]
            raise PermissionError(13, "Permission denied", str(dst))
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(InputError) as info:
        ApxTailer(dst).poll()
    assert str(dst) in str(info.value) and "Permission denied" in str(info.value)


def test_replaced_file_error_has_the_offset(tmp_path: Path, raw: bytes) -> None:
    dst = tmp_path / "o.apx"
    dst.write_bytes(raw[:5000])
    with ApxTailer(dst) as tailer:
        tailer.poll()
        other = tmp_path / "other.apx"
        other.write_bytes(raw)
        os.replace(other, dst)
        with pytest.raises(ApxFormatError) as info:
            tailer.poll()
    assert info.value.offset == 5000

"""``flyprep apx dump|hits|convert|tail`` end to end, against the reference fixture."""

from __future__ import annotations

import json
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flyprep.apx.convert import read_hits_hdf5, read_hits_npz
from flyprep.apx.format import PREFIX_SIZE

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data" / "apx"
FIXTURE = DATA / "fixture.apx"
REFERENCE_CSV = DATA / "fixture.csv"
WRITER = HERE.parent / "apx" / "apx_writer_proc.py"
N_READOUTS, N_HITS = 2010, 5040
# the real entry point, with Ctrl-C raising KeyboardInterrupt even if this process was
# started with SIGINT ignored (children inherit that)
FLYPREP = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
           "from flyprep.cli import main; sys.exit(main(sys.argv[1:]))")
FINAL = re.compile(r"(\d+) readouts, (\d+) hits, (\d+) flagged, (\d+) bytes; stopped: (.*)$")


@pytest.fixture(scope="module")
def reference() -> list[dict]:
    """fixture.jsonl: the header line, then one object per readout."""
    return [json.loads(line) for line in (DATA / "fixture.jsonl").read_text().splitlines()]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A copy of the fixture, so that outputs next to it land in tmp_path."""
    return Path(shutil.copy(FIXTURE, tmp_path / "run.apx"))


def corrupt_copy(tmp_path: Path, record: int = 1500) -> tuple[Path, int]:
    """The fixture with one record magic broken; its path and the bad record's offset."""
    raw = bytearray(FIXTURE.read_bytes())
    pos = 10 + struct.unpack_from("<I", raw, 6)[0]
    for _ in range(record):
        pos += PREFIX_SIZE + struct.unpack_from("<I", raw, pos + 15)[0]
    raw[pos + 1] = 0x00
    bad = tmp_path / "bad.apx"
    bad.write_bytes(bytes(raw))
    return bad, pos


def test_dump_jsonl_equals_reference_records(cli, src: Path, reference: list[dict]) -> None:
    res = cli("apx", "dump", src, "--jsonl")
    assert res.code == 0, res.err
    lines = [json.loads(line) for line in res.out.splitlines()]
    assert lines[0] == reference[0]  # the header (key order aside)
    assert len(lines) == 1 + N_READOUTS
    for got, ref in zip(lines[1:], reference[1:]):
        assert got == {k: ref[k] for k in ("readout_id", "timestamp", "data")}


def test_dump_text_and_limit(cli, src: Path, reference: list[dict]) -> None:
    res = cli("apx", "dump", src, "--limit", 3)
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[0] == f"file: {src}"
    assert '"readout_uid": 4000' in lines[1]
    rows = [line.split() for line in lines[3:6]]
    assert rows == [[str(r["readout_id"]), str(r["timestamp"]), str(len(r["data"]) // 2),
                     r["data"]] for r in reference[1:4]]
    assert lines[6:] == ["3 readouts"]


def test_hits_csv_to_stdout_equals_reference(cli, src: Path) -> None:
    res = cli("apx", "hits", src)
    assert res.code == 0, res.err
    assert res.out == REFERENCE_CSV.read_text()
    assert f"{N_HITS} hits from {N_READOUTS} readouts" in res.err


def test_hits_table(cli, src: Path) -> None:
    res = cli("apx", "hits", src, "--table", "--limit", 4)
    assert res.code == 0, res.err
    lines = res.out.splitlines()
    assert lines[1].split() == REFERENCE_CSV.read_text().splitlines()[1].split(",")
    ref_rows = [r.split(",") for r in REFERENCE_CSV.read_text().splitlines()[2:6]]
    assert [line.split() for line in lines[2:]] == ref_rows


def test_convert_csv_next_to_input_then_refuses_to_overwrite(cli, src: Path) -> None:
    res = cli("apx", "convert", src, "--to", "csv")
    assert res.code == 0, res.err
    out = src.with_suffix(".csv")
    assert out.read_bytes() == REFERENCE_CSV.read_bytes()
    assert f"{N_HITS} hits from {N_READOUTS} readouts" in res.out
    again = cli("apx", "convert", src, "--to", "csv")
    assert again.code == 3 and "already exists" in again.err
    assert cli("apx", "convert", src, "--to", "csv", "--overwrite").code == 0


def test_convert_hdf5_and_npz(cli, src: Path, tmp_path: Path) -> None:
    assert cli("apx", "convert", src, "-o", tmp_path / "h.hdf5").code == 0  # format from suffix
    assert cli("apx", "convert", src, "--to", "npz").code == 0
    hits, header = read_hits_hdf5(tmp_path / "h.hdf5")
    again, header2 = read_hits_npz(src.with_suffix(".npz"))
    assert len(hits) == N_HITS and np.array_equal(hits, again)
    assert header == header2 and header.readout_uid == 4000
    assert cli("apx", "convert", src, "-o", tmp_path / "x.txt").code == 2  # no format known


@pytest.mark.parametrize("command", [("dump",), ("dump", "--jsonl"), ("hits",),
                                     ("convert", "--to", "hdf5")])
def test_corrupt_file_exits_2_naming_file_and_offset(cli, tmp_path: Path, command) -> None:
    bad, offset = corrupt_copy(tmp_path)
    res = cli("apx", command[0], bad, *command[1:])
    assert res.code == 2
    assert str(bad) in res.err and f"offset {offset}" in res.err
    assert not bad.with_suffix(".h5").exists()


def test_missing_file_exits_2(cli, tmp_path: Path) -> None:
    res = cli("apx", "dump", tmp_path / "nope.apx")
    assert res.code == 2 and "nope.apx" in res.err


def start_tail(path: Path, *args: object) -> subprocess.Popen:
    cmd = [sys.executable, "-c", FLYPREP, "apx", "tail", str(path), *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_writer(dst: Path, *args: object) -> subprocess.Popen:
    cmd = [sys.executable, str(WRITER), str(FIXTURE), str(dst), *map(str, args)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def final_counts(out: str) -> tuple[int, int, int, str]:
    match = FINAL.search(out.strip().splitlines()[-1])
    assert match, out
    return int(match[1]), int(match[2]), int(match[4]), match[5]


def test_tail_follows_a_file_written_in_pieces(tmp_path: Path) -> None:
    dst = tmp_path / "growing.apx"
    # Pieces over about 3 s: the tail (a new interpreter, slow to start on a loaded
    # machine) must see the file grow, not only its end.
    writer = start_writer(dst, "--seed", 5, "--max-piece", 1500, "--max-pause-s", 0.08)
    deadline = time.monotonic() + 10
    while not dst.exists() and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    tail = start_tail(dst, "--timeout-s", 1.0, "--interval-s", 0.05)
    try:
        assert writer.wait(timeout=20) == 0, writer.stderr.read()
        out, err = tail.communicate(timeout=20)
    finally:
        for proc in (tail, writer):
            proc.kill()
            proc.wait()
    assert tail.returncode == 0, err
    assert final_counts(out) == (N_READOUTS, N_HITS, FIXTURE.stat().st_size,
                                 "no growth for 1 s")
    progress = [line for line in out.splitlines() if "hits/s" in line]
    assert len(progress) > 2  # it reported while the file grew


def test_tail_reports_a_truncated_end(tmp_path: Path) -> None:
    dst = tmp_path / "cut.apx"
    writer = start_writer(dst, "--seed", 6, "--stop-at", 50_000, "--max-pause-s", 0.0)
    assert writer.wait(timeout=20) == 0
    tail = start_tail(dst, "--timeout-s", 0.3)
    out, err = tail.communicate(timeout=20)
    assert tail.returncode == 2
    readouts, hits, offset, reason = final_counts(out)
    assert 0 < readouts < N_READOUTS and offset < 50_000
    assert str(dst) in err and f"offset {offset}" in err
    assert f"{50_000 - offset} of" in err and "bytes missing" in err


def test_tail_stops_on_ctrl_c(tmp_path: Path) -> None:
    dst = Path(shutil.copy(FIXTURE, tmp_path / "done.apx"))
    tail = start_tail(dst, "--interval-s", 0.01)
    try:
        first = tail.stdout.readline()  # a status line: it has read the file
        assert f"{N_READOUTS} readouts" in first
        time.sleep(0.1)
        tail.send_signal(signal.SIGINT)
        out, err = tail.communicate(timeout=20)
    finally:
        tail.kill()
        tail.wait()
    assert tail.returncode == 0, err
    assert final_counts(out)[:2] == (N_READOUTS, N_HITS)
    assert final_counts(out)[3] == "interrupted"

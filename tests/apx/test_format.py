"""Reading and writing ``.apx`` files against the reference-written fixture."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from flyprep.apx.format import (
    PREFIX_SIZE,
    RECORD_DTYPE,
    ApxFormatError,
    ApxHeader,
    ApxReader,
    ApxStreamParser,
    ApxTruncatedError,
    ApxWriter,
    Readout,
    ReadoutBatch,
    open_apx,
)
from flyprep.errors import InputError

DATA = Path(__file__).resolve().parents[1] / "data" / "apx"
FIXTURE = DATA / "fixture.apx"
N_RECORDS = 2010


@pytest.fixture(scope="module")
def raw() -> bytes:
    """The fixture file's bytes."""
    return FIXTURE.read_bytes()


@pytest.fixture(scope="module")
def expected() -> tuple[dict, list[Readout]]:
    """The reference's header and records, from fixture.jsonl."""
    lines = (DATA / "fixture.jsonl").read_text().splitlines()
    header = json.loads(lines[0])["header"]
    recs = []
    for line in lines[1:]:
        d = json.loads(line)
        recs.append(Readout(d["readout_id"], d["timestamp"], bytes.fromhex(d["data"])))
    return header, recs


def data_offset(raw: bytes) -> int:
    """Offset of the first record."""
    return 10 + struct.unpack_from("<I", raw, 6)[0]


def record_starts(raw: bytes) -> list[int]:
    """Offsets of every record (walked independently of the code under test)."""
    pos, out = data_offset(raw), []
    while pos < len(raw):
        out.append(pos)
        pos += PREFIX_SIZE + struct.unpack_from("<I", raw, pos + 15)[0]
    return out


# --------------------------------------------------------------------------- good files


def test_records_equal_reference(expected: tuple[dict, list[Readout]]) -> None:
    header, recs = expected
    with open_apx(FIXTURE) as r:
        assert isinstance(r, ApxReader)
        assert r.header.readout_uid == 4000
        assert {"readout_uid": 4000, **r.header.content} == header
        got = list(r)
    assert len(got) == N_RECORDS
    assert got == recs
    rid, ts, payload = got[5]  # iterates like the reference: a 3-tuple
    assert (rid, ts, payload) == tuple(recs[5])


def test_byte_for_byte_round_trip(tmp_path: Path, raw: bytes) -> None:
    out_batch, out_single = tmp_path / "batch.apx", tmp_path / "single.apx"
    with open_apx(FIXTURE) as r:
        with open_apx(out_batch, "w", header=r.header) as w:
            assert isinstance(w, ApxWriter)
            for batch in r.batches(max_records=333):
                w.write_batch(batch)
        with open_apx(out_single, "w", header=r.header) as w:
            for rid, ts, payload in r:
                w.write(rid, ts, payload)
    assert out_batch.read_bytes() == raw
    assert out_single.read_bytes() == raw


def test_header_bytes_identical(raw: bytes) -> None:
    text = raw[10 : data_offset(raw)]
    h = ApxHeader.from_bytes(text)
    assert h.to_bytes() == text
    assert list(h.content) == ["creator", "seed", "n_random", "args"]
    assert h.preamble_bytes() == raw[: data_offset(raw)]
    assert ApxHeader(4000, {"a": "\u2713"}).to_bytes() == b'{"readout_uid": 4000, "a": "\\u2713"}'


def test_batch_arrays(raw: bytes, expected: tuple[dict, list[Readout]]) -> None:
    _, recs = expected
    with open_apx(FIXTURE) as r:
        batch = r.read_all()
    assert batch.records.dtype == RECORD_DTYPE
    assert RECORD_DTYPE.itemsize == 28  # packed
    assert len(batch) == N_RECORDS
    lengths = np.array([len(x.payload) for x in recs])
    np.testing.assert_array_equal(batch.records["readout_id"], [x.readout_id for x in recs])
    np.testing.assert_array_equal(batch.records["timestamp"], [x.timestamp for x in recs])
    np.testing.assert_array_equal(batch.records["length"], lengths)
    np.testing.assert_array_equal(batch.records["offset"], np.cumsum(lengths) - lengths)
    assert batch.payload.dtype == np.uint8
    assert batch.payload.tobytes() == b"".join(x.payload for x in recs)
    assert batch.payload_of(0) == recs[0].payload
    assert batch.payload_of(N_RECORDS - 1) == recs[-1].payload
    assert batch[17] == recs[17]
    assert list(batch) == recs
    assert batch.to_bytes() == raw[data_offset(raw) :]


def test_batches_respect_max_records(expected: tuple[dict, list[Readout]]) -> None:
    _, recs = expected
    with open_apx(FIXTURE) as r:
        parts = list(r.batches(max_records=100))
    assert all(0 < len(b) <= 100 for b in parts)
    assert sum(len(b) for b in parts) == N_RECORDS
    assert list(ReadoutBatch.concat(parts)) == recs


def test_small_read_size_and_big_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records longer than one read, and reads ending anywhere, still parse."""
    rng = random.Random(1)
    recs = [Readout(i, 10**18 + i, rng.randbytes(rng.choice([0, 1, 50, 3000]))) for i in range(200)]
    path = tmp_path / "big.apx"
    with open_apx(path, "w", header=ApxHeader(4000, {"x": 1})) as w:
        for rec in recs:
            w.write(*rec)
    monkeypatch.setattr(ApxReader, "read_size", 777)
    with open_apx(path) as r:
        assert list(r) == recs
        assert sum(len(b) for b in r.batches(max_records=3)) == 200


def test_stream_parser_in_random_pieces(raw: bytes, expected: tuple[dict, list[Readout]]) -> None:
    _, recs = expected
    rng = random.Random(7)
    parser = ApxStreamParser("mem.apx", max_header_length=1 << 20, max_record_length=1 << 24)
    got: list[Readout] = []
    pos = 0
    while pos < len(raw):
        n = rng.randint(1, 300)
        parser.feed(raw[pos : pos + n])
        pos += n
        got.extend(parser.take())
        assert parser.buffered < PREFIX_SIZE + 64 + 300
    assert got == recs
    assert parser.truncation() is None
    assert parser.offset == len(raw)


def test_non_contiguous_batch_writes_in_record_order(
    tmp_path: Path, expected: tuple[dict, list[Readout]]
) -> None:
    _, recs = expected
    with open_apx(FIXTURE) as r:
        batch = r.read_all()
    picked = ReadoutBatch(batch.records[::-3].copy(), batch.payload)  # offsets out of order
    assert not picked.is_contiguous()
    path = tmp_path / "picked.apx"
    with open_apx(path, "w", header=ApxHeader(4000)) as w:
        w.write_batch(picked)
        w.write_batch(ReadoutBatch.empty())
    with open_apx(path) as r:
        assert list(r) == recs[::-3]


def test_empty_payload_and_no_records(tmp_path: Path) -> None:
    path = tmp_path / "e.apx"
    with open_apx(path, "w", header=ApxHeader(4000)) as w:
        pass
    with open_apx(path) as r:
        assert list(r) == []
    batch = ReadoutBatch.from_readouts([(1, 2, b""), (3, 4, b"ab")])
    with open_apx(path, "w", header=ApxHeader(4000)) as w:
        w.write_batch(batch)
    with open_apx(path) as r:
        assert list(r) == [(1, 2, b""), (3, 4, b"ab")]


def test_writer_rejects_out_of_range(tmp_path: Path) -> None:
    with open_apx(tmp_path / "w.apx", "w", header=ApxHeader(4000)) as w:
        with pytest.raises(ValueError):
            w.write(2**32, 0, b"")
        with pytest.raises(ValueError):
            w.write(0, -1, b"")
    with pytest.raises(ValueError):
        open_apx(tmp_path / "w.apx", "w")
    with pytest.raises(ValueError):
        open_apx(tmp_path / "w.apx", "a")


# --------------------------------------------------------------------------- bad files


def write(tmp_path: Path, data: bytes) -> Path:
    """``data`` as a file ``bad.apx`` in ``tmp_path``."""
    path = tmp_path / "bad.apx"
    path.write_bytes(data)
    return path


def read_error(path: Path) -> ApxFormatError:
    """The error raised opening ``path`` and reading every record."""
    with pytest.raises(ApxFormatError) as info:
        with open_apx(path) as r:
            list(r)
    err = info.value
    assert isinstance(err, InputError)
    assert err.path == str(path)
    assert str(path) in str(err)
    assert f"offset {err.offset}" in str(err)
    return err


def test_wrong_magic(tmp_path: Path, raw: bytes) -> None:
    err = read_error(write(tmp_path, b"%APXDX" + raw[6:]))
    assert err.offset == 0 and "magic" in err.reason


def test_absurd_header_length_is_not_allocated(tmp_path: Path, raw: bytes) -> None:
    err = read_error(write(tmp_path, raw[:6] + struct.pack("<I", 0xFFFFFFFF) + raw[10:]))
    assert err.offset == 6 and "4294967295" in err.reason


def test_header_length_larger_than_file(tmp_path: Path, raw: bytes) -> None:
    err = read_error(write(tmp_path, raw[:6] + struct.pack("<I", len(raw)) + raw[10:]))
    assert err.offset == 6 and "larger than the rest of the file" in err.reason


@pytest.mark.parametrize("text", [b'{"readout_uid": 4000, ', b"\xff\xfe", b"[1, 2]", b'{"x": 1}'])
def test_header_not_usable_json(tmp_path: Path, raw: bytes, text: bytes) -> None:
    data = b"%APXDF" + struct.pack("<I", len(text)) + text + raw[data_offset(raw) :]
    err = read_error(write(tmp_path, data))
    assert err.offset == 10


def test_garbage_between_records(tmp_path: Path, raw: bytes) -> None:
    starts = record_starts(raw)
    cut = starts[1000]
    err = read_error(write(tmp_path, raw[:cut] + b"\x00garbage" + raw[cut:]))
    assert err.offset == cut and "record magic" in err.reason
    # records before the garbage are still delivered
    with open_apx(tmp_path / "bad.apx") as r:
        got = []
        with pytest.raises(ApxFormatError):
            for batch in r.batches(max_records=10):
                got.extend(batch)
    assert len(got) == 1000


def test_garbage_after_last_record(tmp_path: Path, raw: bytes) -> None:
    err = read_error(write(tmp_path, raw + b"\x00\x01"))
    assert err.offset == len(raw)


def test_record_length_larger_than_file(tmp_path: Path, raw: bytes) -> None:
    starts = record_starts(raw)
    pos = starts[500]
    data = bytearray(raw)
    data[pos + 15 : pos + 19] = struct.pack("<I", 0xFFFFFFF0)
    err = read_error(write(tmp_path, bytes(data)))
    assert isinstance(err, ApxTruncatedError)
    assert err.offset == pos
    assert err.missing == 0xFFFFFFF0 - (len(raw) - pos - PREFIX_SIZE)


def test_truncated_last_record_payload(tmp_path: Path, raw: bytes) -> None:
    last = record_starts(raw)[-1]
    err = read_error(write(tmp_path, raw[:-5]))
    assert isinstance(err, ApxTruncatedError)
    assert err.offset == last and err.missing == 5
    assert "5 bytes missing" in err.reason


def test_truncated_last_record_prefix(tmp_path: Path, raw: bytes) -> None:
    last = record_starts(raw)[-1]
    err = read_error(write(tmp_path, raw[: last + 7]))
    assert isinstance(err, ApxTruncatedError)
    assert err.offset == last and err.missing == PREFIX_SIZE - 7
    assert "prefix" in err.reason


@pytest.mark.parametrize("size,offset", [(0, 0), (4, 0), (9, 0), (20, 6)])
def test_truncated_preamble_or_header(tmp_path: Path, raw: bytes, size: int, offset: int) -> None:
    err = read_error(write(tmp_path, raw[:size]))
    assert isinstance(err, ApxTruncatedError)
    assert err.offset == offset


# --------------------------------------------------------------------------- record search

from flyprep.apx import format as apx_format  # noqa: E402  (module internals: the walk)


def slow_walk(buf: bytes, pos: int, max_records: int, max_length: int | None) -> tuple[list, list, int]:
    """The record walk spelled out one record at a time (the specification of _walk)."""
    cap = 2**32 - 1 if max_length is None else max_length
    starts: list[int] = []
    lengths: list[int] = []
    while pos + PREFIX_SIZE <= len(buf) and len(starts) < max_records:
        length = struct.unpack_from("<I", buf, pos + 15)[0]
        if length > cap or pos + PREFIX_SIZE + length > len(buf):
            break
        if buf[pos : pos + 3] != b"\xfe\xdc\xba":
            break
        starts.append(pos)
        lengths.append(length)
        pos += PREFIX_SIZE + length
    return starts, lengths, pos


def record(readout_id: int, payload: bytes, timestamp: int = 7) -> bytes:
    """One record's bytes."""
    return b"\xfe\xdc\xba" + struct.pack("<IQI", readout_id, timestamp, len(payload)) + payload


def test_walk_repairs_false_magic_in_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    magic = b"\xfe\xdc\xba"
    payloads = [b"ab" + magic + b"cd", magic * 3, b"x" * 40, magic, b"", b"\xfe\xdc" + magic]
    buf = b"".join(record(i, p) for i, p in enumerate(payloads * 2))
    # a false magic in a prefix too (readout id 0xbadcfe -> bytes fe dc ba 00)
    buf += record(0xBADCFE, b"tail" + magic)
    calls = []
    monkeypatch.setattr(apx_format, "_walk_python", lambda *a: calls.append(a) or ([], [], 0))
    starts, lengths, stop = apx_format._walk(buf, 0, 1 << 40, None)
    assert not calls  # the numpy search found every record, no fallback
    assert (starts.tolist(), lengths.tolist(), stop) == slow_walk(buf, 0, 1 << 40, None)
    assert len(starts) == 13 and stop == len(buf)


def test_walk_falls_back_after_many_false_magics(monkeypatch: pytest.MonkeyPatch) -> None:
    magic = b"\xfe\xdc\xba"
    buf = b"".join(record(i, b"." + magic * (i % 3) + b".") for i in range(300))
    fallback = apx_format._walk_python
    calls = []
    monkeypatch.setattr(apx_format, "_walk_python", lambda *a: calls.append(a[1]) or fallback(*a))
    monkeypatch.setattr(apx_format, "_MAX_REPAIRS", 2)
    got = apx_format._walk(buf, 0, 1 << 40, None)
    assert calls and calls[0] > 0  # records before the third repair came from numpy
    assert (got[0].tolist(), got[1].tolist(), got[2]) == slow_walk(buf, 0, 1 << 40, None)
    assert len(got[0]) == 300


def test_walk_matches_record_by_record_walk_on_random_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(4)
    magic = b"\xfe\xdc\xba"
    for it in range(600):
        parts = []
        for _ in range(rng.randint(0, 40)):
            payload = bytearray(rng.getrandbits(8) for _ in range(rng.choice([0, 3, 19, rng.randint(0, 120)])))
            for _ in range(rng.choice([0, 1, 4])):  # false magics
                if len(payload) >= 3:
                    k = rng.randint(0, len(payload) - 3)
                    payload[k : k + 3] = magic
            parts.append(record(rng.choice([1, 0xBADCFE]), bytes(payload), rng.getrandbits(64)))
        buf = bytearray(b"".join(parts))
        damage = rng.random()
        if damage < 0.2 and buf:  # truncated
            buf = buf[: rng.randint(0, len(buf))]
        elif damage < 0.4 and buf:  # one byte changed (magic, length or payload)
            buf[rng.randrange(len(buf))] = rng.getrandbits(8)
        elif damage < 0.5:  # garbage at the end
            buf += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 30)))
        buf = bytes(buf)
        max_records = rng.choice([1 << 40, 1, 16, 23])
        max_length = rng.choice([None, 60])
        monkeypatch.setattr(apx_format, "_SCAN_WINDOW", rng.choice([1 << 20, 25, 200]))
        monkeypatch.setattr(apx_format, "_MAX_REPAIRS", rng.choice([16, 0, 1]))
        starts, lengths, stop = apx_format._walk(buf, 0, max_records, max_length)
        assert (starts.tolist(), lengths.tolist(), stop) == slow_walk(buf, 0, max_records, max_length), it


def test_false_magic_in_payload_file_round_trip(tmp_path: Path) -> None:
    magic = b"\xfe\xdc\xba"
    readouts = [Readout(i, 10 * i, bytes([i % 256]) + magic * (i % 4) + b"\xbc" * (i % 7)) for i in range(5000)]
    header = ApxHeader(4000, {"note": "false magics"})
    with open_apx(tmp_path / "m.apx", "w", header) as w:
        w.write_batch(ReadoutBatch.from_readouts(readouts))
    with open_apx(tmp_path / "m.apx") as r:
        batch = r.read_all()
    assert list(batch) == readouts
    assert batch.is_contiguous()


def test_read_error_names_file_and_offset(
    tmp_path: Path, raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError while reading records is an InputError with the file and offset."""
    dst = tmp_path / "io.apx"
    dst.write_bytes(raw)
    monkeypatch.setattr(ApxReader, "read_size", 4096)
    with ApxReader(dst) as reader:
        real = reader._file
        calls = []

        class Failing:
            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

            def read(self, n: int = -1) -> bytes:
                calls.append(n)
                if len(calls) > 2:
                    raise OSError(5, "Input/output error")
                return real.read(n)

        reader._file = Failing()  # type: ignore[assignment]
        with pytest.raises(ApxFormatError) as info:
            for _ in reader.batches(max_records=10):
                pass
        reader._file = real
    assert info.value.offset == reader.data_offset + 2 * 4096
    assert str(dst) in str(info.value) and "Input/output error" in str(info.value)


def test_small_take_scans_a_small_window(
    raw: bytes, expected: tuple[dict, list[Readout]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """take(max_records) scans about what those records need, not a fixed 1 MiB."""
    from flyprep.apx import format as fmt

    spans: list[int] = []
    real_chain = fmt._chain

    def spy(arr: np.ndarray, u32: np.ndarray, pos: int, hi: int):  # type: ignore[no-untyped-def]
        spans.append(hi - pos)
        return real_chain(arr, u32, pos, hi)

    monkeypatch.setattr(fmt, "_chain", spy)
    first = 10 + struct.unpack_from("<I", raw, 6)[0]
    parser = ApxStreamParser("mem.apx")
    parser.feed(raw + raw[first:] * 20)  # about 2 MiB of records
    got: list[Readout] = []
    while True:
        batch = parser.take(100)
        if not len(batch):
            break
        assert len(batch) <= 100
        got.extend(batch)
    assert got == expected[1] * 21
    assert spans and max(spans) <= 64 << 10
    # records longer than the first guess: the window grows until it holds them
    spans.clear()
    parser = ApxStreamParser("mem.apx")
    big = ReadoutBatch.from_readouts([(i, i, bytes(1000)) for i in range(300)])
    parser.feed(ApxHeader(4000).preamble_bytes() + big.to_bytes())
    assert list(parser.take(200)) == list(big)[:200]
    assert list(parser.take()) == list(big)[200:]


def test_a_header_formatted_by_another_writer_round_trips(tmp_path):
    """Compact separators, readout_uid last, raw UTF-8: kept byte for byte."""
    from flyprep.apx.format import ApxHeader, open_apx

    text = '{"note":"✓","readout_uid":4000}'.encode()
    header = ApxHeader.from_bytes(text)
    assert header.readout_uid == 4000 and header.content == {"note": "✓"}
    assert header.to_bytes() == text
    src = tmp_path / "other.apx"
    with open_apx(src, "w", header=header) as w:
        w.write(7, 123, b"\xbc\xbc")
    with open_apx(src) as r:
        assert r.header.to_bytes() == text
        assert [tuple(x) for x in r] == [(7, 123, b"\xbc\xbc")]
    assert ApxHeader(4000, {"note": "✓"}).to_bytes() == b'{"readout_uid": 4000, "note": "\\u2713"}'

"""Tests of flyprep.apx.decode against the reference's golden decode (fixture.jsonl)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from flyprep.apx.decode import (
    HIT_DTYPE,
    STATUS_EXTRA_START,
    STATUS_ORPHANS_DROPPED,
    STATUS_ORPHANS_MATCHED,
    STATUS_ORPHANS_NOT_USED,
    STATUS_REFERENCE_RAISES,
    STATUS_TRUNCATED_HIT,
    decode_batch,
    decode_readout,
    gray_to_binary,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "apx"
CSV_COLUMNS = (
    "chip_id,payload,readout_id,timestamp,decoding_order,row,column,ts_neg1,ts_coarse1,"
    "ts_fine1,ts_tdc1,ts_neg2,ts_coarse2,ts_fine2,ts_tdc2,ts_dec1,ts_dec2,tot_us"
).split(",")


@pytest.fixture(scope="module")
def records() -> list[dict]:
    lines = (DATA / "fixture.jsonl").read_text().splitlines()
    assert "header" in json.loads(lines[0])
    return [json.loads(line) for line in lines[1:]]


def _batch_inputs(payloads: list[bytes], ids, stamps):
    lengths = np.array([len(p) for p in payloads], dtype=np.int64)
    offsets = np.zeros(len(payloads), dtype=np.int64)
    offsets[1:] = np.cumsum(lengths)[:-1]
    buf = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    return buf, offsets, lengths, np.asarray(ids, dtype=np.uint32), np.asarray(stamps, dtype=np.uint64)


def _batch(records, carry_extra=False):
    payloads = [bytes.fromhex(r["data"]) for r in records]
    args = _batch_inputs(payloads, [r["readout_id"] for r in records], [r["timestamp"] for r in records])
    return decode_batch(*args, carry_extra=carry_extra)


def _assert_hits(hits: np.ndarray, expected: list) -> None:
    assert len(hits) == len(expected)
    for got, (_raw, fields) in zip(hits, expected):
        assert set(fields) == set(HIT_DTYPE.names)
        for name, value in fields.items():
            assert got[name] == value, (name, got[name], value)


def test_dtype_matches_reference_columns():
    assert list(HIT_DTYPE.names) == CSV_COLUMNS
    assert HIT_DTYPE["tot_us"] == np.float64 and HIT_DTYPE["timestamp"] == np.uint64
    assert HIT_DTYPE["ts_coarse1"] == np.uint16 and HIT_DTYPE["ts_dec2"] == np.uint32


def test_worked_example():
    hits, status, extra = decode_readout(bytes.fromhex("e05042030620d701bc"), 5, 77)
    assert status == 0 and extra is None and len(hits) == 1
    h = hits[0]
    assert (h["chip_id"], h["payload"], h["row"], h["column"]) == (0, 7, 1, 9)
    assert (h["ts_coarse1"], h["ts_fine1"], h["ts_coarse2"], h["ts_fine2"]) == (1408, 6, 1259, 4)
    assert (h["ts_dec1"], h["ts_dec2"], h["tot_us"]) == (14331, 14952, 31.05)
    assert (h["readout_id"], h["timestamp"], h["decoding_order"]) == (5, 77, 0)


def test_quirk_complete_hit_without_following_byte_is_extra():
    hits, status, extra = decode_readout(bytes.fromhex("bcbce05042030620d701"), 0, 0)
    assert len(hits) == 0 and status == STATUS_EXTRA_START and extra == bytes.fromhex("e05042030620d701")


def test_gray_to_binary_matches_bitwise_definition():
    g = np.arange(1 << 17, dtype=np.uint32)
    b = gray_to_binary(g)
    assert np.array_equal(b ^ (b >> 1), g)  # binary -> gray inverts it


def test_decode_readout_matches_reference(records):
    n = 0
    for r in records:
        if r["error"] is not None:
            continue
        hits, status, extra = decode_readout(bytes.fromhex(r["data"]), r["readout_id"], r["timestamp"])
        assert status == r["status"], r["readout_id"]
        assert (extra.hex() if extra is not None else None) == r["extra"], r["readout_id"]
        _assert_hits(hits, r["hits"])
        n += 1
    assert n > 2000


def test_decode_readout_reference_errors_do_not_raise(records):
    for r in records:
        if r["error"] is None:
            continue
        hits, status, _extra = decode_readout(bytes.fromhex(r["data"]), r["readout_id"], r["timestamp"])
        assert status & STATUS_REFERENCE_RAISES
        assert hits.dtype == HIT_DTYPE


@pytest.mark.parametrize(
    "hexdata",
    ["", "bc", "bcbcffbcff", "ffff", "d701bcbc", "0102030405060708090a0b"],
)
def test_reference_raising_payloads_flagged(hexdata):
    """Empty, all-idle and no-start-byte payloads: the reference raises, we flag."""
    hits, status, _extra = decode_readout(bytes.fromhex(hexdata), 1, 2)
    assert status & STATUS_REFERENCE_RAISES
    assert hits.dtype == HIT_DTYPE and len(hits) == 0
    batch = decode_batch(*_batch_inputs([bytes.fromhex(hexdata)], [1], [2]))
    assert batch.status[0] == status and len(batch.hits) == 0


def test_recoverable_hits_before_junk_kept():
    data = bytes.fromhex("bcbce05042030620d701bc0102")  # a good hit, then junk with no start byte
    hits, status, extra = decode_readout(data, 0, 0)
    assert len(hits) == 1 and hits[0]["column"] == 9
    assert status & STATUS_REFERENCE_RAISES or extra is not None


def test_batch_matches_reference_and_per_readout(records):
    batch = _batch(records)
    assert batch.hits.dtype == HIT_DTYPE and batch.status.dtype == np.uint8
    expected_hits = []
    per_readout = []
    for i, r in enumerate(records):
        hits, status, extra = decode_readout(bytes.fromhex(r["data"]), r["readout_id"], r["timestamp"])
        per_readout.append(hits)
        assert batch.status[i] == status and batch.extra[i] == extra
        if r["error"] is None:
            assert batch.status[i] == r["status"]
            assert (extra.hex() if extra is not None else None) == r["extra"]
            expected_hits.extend(r["hits"])
    assert np.array_equal(batch.hits, np.concatenate(per_readout))
    if all(r["error"] is None for r in records):
        _assert_hits(batch.hits, expected_hits)


def test_batch_matches_reference_csv(records):
    batch = _batch(records)
    with open(DATA / "fixture.csv", newline="") as f:
        lines = [line for line in f if not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    assert len(rows) == len(batch.hits)
    for name in CSV_COLUMNS:
        col = np.array([row[name] for row in rows], dtype=np.float64 if name == "tot_us" else np.uint64)
        assert np.array_equal(batch.hits[name].astype(col.dtype), col), name


def test_batch_non_contiguous_offsets(records):
    sub = records[:50]
    payloads = [bytes.fromhex(r["data"]) for r in sub]
    # lay the payloads out in reverse order with junk between them
    buf = bytearray(b"\x01\x02")
    offsets = [0] * len(payloads)
    for i in reversed(range(len(payloads))):
        offsets[i] = len(buf)
        buf += payloads[i] + b"\xe0\x03"
    batch = decode_batch(
        np.frombuffer(bytes(buf), dtype=np.uint8),
        np.array(offsets),
        np.array([len(p) for p in payloads]),
        np.array([r["readout_id"] for r in sub]),
        np.array([r["timestamp"] for r in sub], dtype=np.uint64),
    )
    assert np.array_equal(batch.hits, _batch(sub).hits)


def test_fast_path_handles_common_readouts(records):
    batch = _batch(records)
    # only the hand-made edge cases at the tail need the per-readout path
    assert batch.n_slow <= 10
    slow_ids = {records[i]["readout_id"] for i in range(len(records)) if batch.status[i]}
    assert slow_ids <= {2002, 2003, 2004, 2006, 2007, 2008}


def test_carry_extra_recovers_split_hit(records):
    by_id = {r["readout_id"]: r for r in records}
    r2, r3 = by_id[2002], by_id[2003]
    _h2, _s2, extra2 = decode_readout(bytes.fromhex(r2["data"]), 2002, r2["timestamp"])
    hits3, status3, _ = decode_readout(bytes.fromhex(r3["data"]), 2003, r3["timestamp"], previous_extra=extra2)
    assert status3 & STATUS_ORPHANS_MATCHED and not status3 & STATUS_ORPHANS_NOT_USED
    assert len(hits3) == len(r3["hits"]) + 1
    assert (hits3[0]["row"], hits3[0]["column"], hits3[0]["tot_us"]) == (1, 9, 31.05)
    assert list(hits3["decoding_order"]) == [0, 1]

    plain = _batch(records)
    carried = _batch(records, carry_extra=True)
    assert len(carried.hits) == len(plain.hits) + 2  # 2002/2003 and 2007/2008 (quirk)
    idx3 = [i for i, r in enumerate(records) if r["readout_id"] == 2003][0]
    assert carried.status[idx3] & STATUS_ORPHANS_MATCHED
    got = carried.hits[carried.hit_index == idx3]
    assert np.array_equal(got, hits3)
    # carried batch equals the sequential per-readout decode with previous_extra
    prev = None
    seq = []
    for i, r in enumerate(records):
        h, s, e = decode_readout(bytes.fromhex(r["data"]), r["readout_id"], r["timestamp"], previous_extra=prev)
        assert carried.status[i] == s and carried.extra[i] == e
        seq.append(h)
        prev = e
    assert np.array_equal(carried.hits, np.concatenate(seq))


def test_orphans_dropped_when_they_do_not_fit():
    hits, status, _ = decode_readout(bytes.fromhex("d701bcbce05041130620d701bc"), 0, 0, previous_extra=b"\xe0\x50")
    assert status & STATUS_ORPHANS_DROPPED and len(hits) == 1


def test_truncated_hit_dropped():
    hits, status, _ = decode_readout(bytes.fromhex("bcbce05042030620e05041130620d701bcbc"), 0, 0)
    assert status == STATUS_TRUNCATED_HIT and len(hits) == 1 and hits[0]["column"] == 10


def test_random_payloads_never_raise_and_batch_agrees():
    rng = np.random.default_rng(1)
    alphabet = np.array([0xBC] * 6 + [0xFF, 0xE0, 0xF0, 0xE8, 0x05, 0x42, 0xD7, 0x01, 0xE3], dtype=np.uint8)
    payloads = []
    for _ in range(3000):
        n = int(rng.integers(0, 40))
        if rng.random() < 0.5:
            payloads.append(bytes(rng.choice(alphabet, n).tolist()))
        else:
            payloads.append(bytes(rng.integers(0, 256, n, dtype=np.uint8).tolist()))
    args = _batch_inputs(payloads, np.arange(len(payloads)), np.arange(len(payloads)) * 10)
    for carry in (False, True):
        batch = decode_batch(*args, carry_extra=carry)
        prev = None
        seq = []
        for i, p in enumerate(payloads):
            h, s, e = decode_readout(p, i, i * 10, previous_extra=prev if carry else None)
            assert batch.status[i] == s and batch.extra[i] == e, i
            seq.append(h)
            prev = e
        assert np.array_equal(batch.hits, np.concatenate(seq))


def _random_clean_readouts(rng, n: int) -> list[bytes]:
    """Readouts of whole hits (random data bytes, start-like and idle bytes inside) and idle runs."""
    out = []
    for _ in range(n):
        parts = [b"\xbc" * int(rng.integers(0, 4))]
        for _h in range(int(rng.integers(1, 6))):
            hit = bytes([0xE0 | int(rng.integers(0, 32)) % 0x1F]) + bytes(rng.integers(0, 256, 7, dtype=np.uint8).tolist())
            parts.append(hit + b"\xbc" * int(rng.integers(0, 5)))
        parts.append(b"\xbc" * int(rng.integers(1, 8)))
        out.append(b"".join(parts))
    return out


def test_fast_path_agrees_with_walk_on_random_clean_and_corrupted_readouts():
    rng = np.random.default_rng(7)
    payloads = _random_clean_readouts(rng, 4000)
    for i in range(0, len(payloads), 7):  # corrupt some: cut, flip a byte, add padding
        p = bytearray(payloads[i])
        kind = i % 3
        if kind == 0:
            p = p[: int(rng.integers(0, len(p)))]
        elif kind == 1:
            p[int(rng.integers(0, len(p)))] = int(rng.integers(0, 256))
        else:
            p[int(rng.integers(0, len(p))) :] = b"\xff" * 3
        payloads[i] = bytes(p)
    args = _batch_inputs(payloads, np.arange(len(payloads)), np.arange(len(payloads)))
    for carry in (False, True):
        batch = decode_batch(*args, carry_extra=carry)
        assert batch.n_slow < len(payloads) // 3
        prev = None
        seq = []
        for i, p in enumerate(payloads):
            h, s, e = decode_readout(p, i, i, previous_extra=prev if carry else None)
            assert batch.status[i] == s and batch.extra[i] == e, (i, p.hex())
            seq.append(h)
            prev = e
        assert np.array_equal(batch.hits, np.concatenate(seq))


def test_long_readout_and_empty_batch():
    hit = bytes.fromhex("e05042030620d701")
    payload = (hit + b"\xbc") * 300
    args = _batch_inputs([payload, b""], [1, 2], [3, 4])
    batch = decode_batch(*args)
    hits, status, extra = decode_readout(payload, 1, 3)
    assert len(hits) == 300 and status == 0 and extra is None
    assert batch.n_slow == 1  # only the empty readout
    assert np.array_equal(batch.hits, hits)
    assert batch.status[1] & STATUS_REFERENCE_RAISES
    empty = decode_batch(*_batch_inputs([], [], []))
    assert len(empty.hits) == 0 and len(empty.status) == 0 and empty.extra == []


# --------------------------------------------------------------------------- fast walk internals

from flyprep.apx import decode as apx_decode  # noqa: E402  (module internals)


def _idle_run_by_bytes(words: np.ndarray) -> list[int]:
    """Leading 0xbc bytes of each little-endian word, counted byte by byte."""
    out = []
    for w in words.tolist():
        b = int(w).to_bytes(8, "little")
        out.append(next((k for k in range(8) if b[k] != 0xBC), 8))
    return out


def _words_with_idle_runs(seed: int) -> np.ndarray:
    """Random little-endian words with 0..8 leading idle bytes (all 8: all idle)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (3000, 8), dtype=np.uint8)
    for k in range(9):
        raw[k * 300 : (k + 1) * 300, :k] = 0xBC
    raw[2700:, :7] = 0xBC  # only the top byte may differ (lowest set bit up to 2**63)
    raw[2700:, 7] = np.arange(300) % 256
    return raw.view("<u8").ravel()


@pytest.mark.parametrize("variant", ["_idle_run_popcount", "_idle_run_frexp"])
def test_idle_run_counts_leading_idle_bytes(variant: str):
    if variant == "_idle_run_popcount" and not hasattr(np, "bitwise_count"):
        pytest.skip("numpy < 2.0")
    words = _words_with_idle_runs(3)
    got = getattr(apx_decode, variant)(words ^ apx_decode._IDLE_WORD)
    assert got.tolist() == _idle_run_by_bytes(words)


def test_fast_path_long_idle_runs_and_buffer_end():
    """Idle runs of 0-40 bytes (several all-idle words in a row) and readouts ending at
    the very end of the buffer give the per-readout walk's hits."""
    hit = bytes.fromhex("e05042030620d701")
    payloads = []
    for lead in (0, 1, 7, 8, 9, 16, 23, 40):
        for gap in (0, 5, 8, 17, 33):
            for tail in (1, 7, 8, 15, 24):
                payloads.append(b"\xbc" * lead + hit + b"\xbc" * gap + hit + b"\xbc" * tail)
    payloads.append(b"\xbc" * 30)  # all idle: slow path
    payloads.append(hit + b"\xbc" * 9)  # the last readout ends at the buffer's end
    args = _batch_inputs(payloads, np.arange(len(payloads)), np.arange(len(payloads)))
    batch = decode_batch(*args)
    assert batch.n_slow == 1
    seq = []
    for i, p in enumerate(payloads):
        h, s, e = decode_readout(p, i, i)
        assert batch.status[i] == s and batch.extra[i] == e
        seq.append(h)
    assert np.array_equal(batch.hits, np.concatenate(seq))

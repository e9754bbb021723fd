"""Tests of flyprep.apx.decode against the reference's golden decode (fixture.jsonl)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from flyprep.apx.decode import (
    HIT_DTYPE,
    HIT_SIZE,
    STATUS_EXTRA_OTHER,
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


def test_fixture_has_no_reference_errors(records):
    """Every fixture readout is decoded by the reference (so the comparisons above cover all
    of them); payloads the reference raises on are tested with hand-made payloads below."""
    assert [r["readout_id"] for r in records if r["error"] is not None] == []


_NO_START = STATUS_REFERENCE_RAISES | STATUS_ORPHANS_NOT_USED


@pytest.mark.parametrize(
    "hexdata, expected_status",
    [("", STATUS_REFERENCE_RAISES), ("bc", STATUS_REFERENCE_RAISES),
     ("bcbcffbcff", STATUS_REFERENCE_RAISES), ("ffff", STATUS_REFERENCE_RAISES),
     ("d701bcbc", _NO_START), ("0102030405060708090a0b", _NO_START)],
)
def test_reference_raising_payloads_flagged(hexdata, expected_status):
    """Empty, all-idle and no-start-byte payloads: the reference raises, we flag."""
    hits, status, extra = decode_readout(bytes.fromhex(hexdata), 1, 2)
    assert status == expected_status and extra is None
    assert hits.dtype == HIT_DTYPE and len(hits) == 0
    batch = decode_batch(*_batch_inputs([bytes.fromhex(hexdata)], [1], [2]))
    assert batch.status[0] == status and len(batch.hits) == 0 and batch.extra == [None]


@pytest.mark.parametrize(
    "hexdata, expected_status, expected_extra",
    [
        # a good hit, then 2 junk bytes: fewer than 9 bytes left, kept as extra bytes
        ("bcbce05042030620d701bc0102", STATUS_EXTRA_OTHER, "0102"),
        # a good hit, then junk with no start byte: dropped, the reference raises
        ("bcbce05042030620d701bc0102030405060708090a", STATUS_REFERENCE_RAISES, None),
        # a good hit, junk, then a start byte with a short window after the drop
        ("bcbce05042030620d701bc0102030405060708090ae050",
         STATUS_REFERENCE_RAISES | STATUS_EXTRA_START, "e050"),
    ],
)
def test_recoverable_hits_before_junk_kept(hexdata, expected_status, expected_extra):
    hits, status, extra = decode_readout(bytes.fromhex(hexdata), 1, 2)
    assert status == expected_status
    assert (extra.hex() if extra is not None else None) == expected_extra
    assert len(hits) == 1
    h = hits[0]
    assert (h["row"], h["column"], h["tot_us"], h["readout_id"], h["timestamp"]) == (1, 9, 31.05, 1, 2)
    batch = decode_batch(*_batch_inputs([bytes.fromhex(hexdata)], [1], [2]))
    assert batch.status[0] == status and batch.extra[0] == extra
    assert np.array_equal(batch.hits, hits)


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


def _split_decode(payloads: list[bytes], cuts: list[int]):
    """decode_batch with carry_extra over payloads[cuts[k]:cuts[k+1]], chained by previous_extra."""
    hits, status, extra, prev = [], [], [], None
    for a, b in zip(cuts[:-1], cuts[1:]):
        part = payloads[a:b]
        dec = decode_batch(*_batch_inputs(part, np.arange(a, b), np.arange(a, b) * 3),
                           carry_extra=True, previous_extra=prev)
        if part:
            prev = dec.extra[-1]
        hits.append(dec.hits)
        status.append(dec.status)
        extra.extend(dec.extra)
        assert np.array_equal(dec.hit_index, np.repeat(np.arange(len(part)), np.bincount(dec.hit_index, minlength=len(part))))
    return np.concatenate(hits), np.concatenate(status), extra


def test_carry_extra_across_random_batch_splits_equals_one_batch(records):
    rng = np.random.default_rng(11)
    payloads = [bytes.fromhex(r["data"]) for r in records[-40:]]
    payloads += _random_clean_readouts(rng, 300)
    for i in range(0, len(payloads), 3):  # cut many readouts so hits split across readouts
        p = payloads[i]
        payloads[i] = p[: int(rng.integers(0, len(p) + 1))]
        if i + 1 < len(payloads) and rng.random() < 0.7:
            payloads[i + 1] = p[len(payloads[i]) :] + payloads[i + 1]
    args = _batch_inputs(payloads, np.arange(len(payloads)), np.arange(len(payloads)) * 3)
    whole = decode_batch(*args, carry_extra=True)
    assert np.count_nonzero(whole.status & STATUS_ORPHANS_MATCHED) > 10
    for trial in range(20):
        k = int(rng.integers(1, 30))
        cuts = sorted({0, len(payloads), *rng.integers(0, len(payloads) + 1, k).tolist()})
        if trial == 0:
            cuts = list(range(len(payloads) + 1))  # one readout per batch
        elif trial == 1:
            cuts = [0, 0, 5, 5, len(payloads)]  # empty batches keep the carried bytes
        hits, status, extra = _split_decode(payloads, cuts)
        assert np.array_equal(hits, whole.hits), cuts
        assert np.array_equal(status, whole.status), cuts
        assert extra == whole.extra, cuts


def test_previous_extra_needs_carry_extra():
    args = _batch_inputs([b"\xd7\x01\xbc"], [0], [0])
    with pytest.raises(ValueError):
        decode_batch(*args, previous_extra=b"\xe0\x50\x42\x03\x06\x20")
    dec = decode_batch(*args, carry_extra=True, previous_extra=b"\xe0\x50\x42\x03\x06\x20")
    assert dec.status[0] & STATUS_ORPHANS_MATCHED and len(dec.hits) == 1
    assert dec.hits[0]["column"] == 9 and dec.hits[0]["tot_us"] == 31.05


def _split_pair(hit: bytes, split: int) -> list[bytes]:
    """Two readouts with ``hit`` split after ``split`` bytes, a good hit after it."""
    good = bytes.fromhex("e05041130620d701")
    return [b"\xbc\xbc" + hit[:split], hit[split:] + b"\xbc" + good + b"\xbc"]


def test_carry_extra_split_hit_tail_starting_with_idle_byte_is_dropped_not_misjoined():
    hit = bytearray(bytes.fromhex("e05042030620d701"))
    hit[5] = 0xBC  # the tail after a 5+3 split begins with a data byte equal to the idle byte
    hit = bytes(hit)
    whole, _, _ = decode_readout(hit + b"\xbc", 0, 0)
    assert len(whole) == 1
    pair = _split_pair(hit, 5)
    _h0, s0, extra0 = decode_readout(pair[0], 0, 0)
    assert extra0 == hit[:5] and s0 == STATUS_EXTRA_START
    hits, status, extra = decode_readout(pair[1], 1, 0, previous_extra=extra0)
    # the orphan run starts after a skipped 0xbc: where the hit tail begins is unknown
    assert status == STATUS_ORPHANS_DROPPED and extra is None
    assert len(hits) == 1 and hits[0]["column"] == 10  # only the good hit after it
    batch = decode_batch(*_batch_inputs(pair, [0, 1], [0, 0]), carry_extra=True)
    assert list(batch.status) == [STATUS_EXTRA_START, STATUS_ORPHANS_DROPPED]
    assert np.array_equal(batch.hits, hits)
    # split one byte later, the 0xbc ends the first part: the join is exact
    pair = _split_pair(hit, 6)
    _h0, _s0, extra0 = decode_readout(pair[0], 0, 0)
    assert extra0 == hit[:6]
    hits, status, _ = decode_readout(pair[1], 1, 0, previous_extra=extra0)
    assert status == STATUS_ORPHANS_MATCHED and len(hits) == 2
    fields = [n for n in HIT_DTYPE.names if n not in ("readout_id", "timestamp", "decoding_order")]
    assert all(hits[0][n] == whole[0][n] for n in fields)


@pytest.mark.parametrize("value", [0xBC, 0xFF, 0x00, 0x42])
def test_carry_extra_never_flags_a_wrong_join_as_matched(value: int):
    base = bytes.fromhex("e05042030620d701")
    fields = [n for n in HIT_DTYPE.names if n not in ("readout_id", "timestamp", "decoding_order")]
    for pos in range(1, HIT_SIZE):
        hit = bytearray(base)
        hit[pos] = value
        hit = bytes(hit)
        whole, _, _ = decode_readout(hit + b"\xbc", 0, 0)
        for split in range(1, HIT_SIZE):
            pair = _split_pair(hit, split)
            _h, _s, extra0 = decode_readout(pair[0], 0, 0)
            if extra0 != hit[:split]:
                continue
            hits, status, _ = decode_readout(pair[1], 1, 0, previous_extra=extra0)
            if status & STATUS_ORPHANS_MATCHED:
                assert all(hits[0][n] == whole[0][n] for n in fields), (pos, split)
                assert len(hits) == 2 and hits[1]["column"] == 10
            elif pair[1].lstrip(b"\xbc\xff")[:1] not in (b"", b"\xe0"):
                # orphan bytes present and not joined: flagged as dropped
                # (a tail made only of idle bytes is not seen as orphans at all)
                assert status & STATUS_ORPHANS_DROPPED, (pos, split)
                assert len(hits) == 1 and hits[0]["column"] == 10

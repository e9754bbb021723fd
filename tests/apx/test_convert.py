"""Decoded hits to CSV / HDF5 / .npz, against the reference's CSV export of the fixture."""

from __future__ import annotations

import csv
import io
import shutil
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest

from flyprep.apx.convert import (CSV_COLUMNS, StreamDecoder, convert_file, default_output,
                                 format_csv_rows, hits_to_csv, hits_to_hdf5, hits_to_npz,
                                 read_hits_hdf5, read_hits_npz)
from flyprep.apx.decode import HIT_DTYPE, decode_batch
from flyprep.apx.format import (PREFIX_SIZE, ApxFormatError, ApxTruncatedError, ReadoutBatch,
                                open_apx)
from flyprep.errors import InputError, OutputError

DATA = Path(__file__).resolve().parents[1] / "data" / "apx"
FIXTURE = DATA / "fixture.apx"
REFERENCE_CSV = DATA / "fixture.csv"


@pytest.fixture(scope="module")
def decoded():
    """The fixture's header, all its readouts and their decoded hits (reference settings)."""
    with open_apx(FIXTURE) as reader:
        batch = reader.read_all()
        header = reader.header
    rec = batch.records
    dec = decode_batch(batch.payload, rec["offset"], rec["length"], rec["readout_id"],
                       rec["timestamp"])
    return header, batch, dec.hits


def parse_csv(text: str) -> tuple[str, list[str], list[list[str]]]:
    lines = text.splitlines()
    rows = list(csv.reader(io.StringIO("\n".join(lines[1:]))))
    return lines[0], rows[0], rows[1:]


def record_offsets(raw: bytes) -> list[int]:
    pos, out = 10 + struct.unpack_from("<I", raw, 6)[0], []
    while pos < len(raw):
        out.append(pos)
        pos += PREFIX_SIZE + struct.unpack_from("<I", raw, pos + 15)[0]
    return out


def test_csv_equals_reference_field_by_field_and_byte_for_byte(tmp_path: Path, decoded) -> None:
    header, _, hits = decoded
    out = tmp_path / "fixture.csv"
    hits_to_csv(hits, header, out)
    got_first, got_cols, got_rows = parse_csv(out.read_text())
    ref_first, ref_cols, ref_rows = parse_csv(REFERENCE_CSV.read_text())
    assert got_first == ref_first
    assert got_cols == ref_cols == list(CSV_COLUMNS)
    assert len(got_rows) == len(ref_rows) == 5040
    for i, (got, ref) in enumerate(zip(got_rows, ref_rows)):
        assert got == ref, f"row {i}"
    assert out.read_bytes() == REFERENCE_CSV.read_bytes()


@pytest.mark.parametrize("batch_records", [3, 97, 1 << 16])
def test_convert_file_csv_in_batches_is_byte_identical(tmp_path: Path, batch_records: int) -> None:
    summary = convert_file(FIXTURE, tmp_path / "out.csv", "csv", batch_records=batch_records)
    assert (tmp_path / "out.csv").read_bytes() == REFERENCE_CSV.read_bytes()
    assert (summary.readouts, summary.hits, summary.truncation) == (2010, 5040, None)
    assert summary.flagged == 5  # the edge-case readouts with status bits
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]  # no temporary left


def test_csv_rows_format_like_python_for_any_values() -> None:
    rng = np.random.default_rng(7)
    hits = np.zeros(3000, HIT_DTYPE)
    for name in CSV_COLUMNS[:-1]:
        dt = HIT_DTYPE[name]
        hits[name] = rng.integers(0, np.iinfo(dt).max, len(hits), dtype=dt, endpoint=True)
    hits[0][CSV_COLUMNS[0]] = 0
    hits["timestamp"][:3] = [0, 9, 2**64 - 1]
    hits["tot_us"] = rng.integers(0, 2**18, len(hits)) / 20.0
    hits["tot_us"][:9] = [np.nan, -0.0, 1e300, 0.1 + 0.2, -3.5, 1e-7, np.inf, 0.0, 6553.55]
    expected = "".join(",".join(str(v) for v in row[:-1]) + "," + repr(row[-1]) + "\n"
                       for row in hits.tolist())
    assert format_csv_rows(hits) == expected.encode("ascii")
    assert format_csv_rows(hits[:0]) == b""


def test_empty_hits_give_the_two_header_lines(tmp_path: Path, decoded) -> None:
    header = decoded[0]
    hits_to_csv(np.empty(0, HIT_DTYPE), header, tmp_path / "e.csv")
    assert tmp_path.joinpath("e.csv").read_bytes().splitlines() == \
        REFERENCE_CSV.read_bytes().splitlines()[:2]


def test_hdf5_table_and_header_attribute(tmp_path: Path, decoded) -> None:
    header, _, hits = decoded
    one = tmp_path / "one.h5"
    hits_to_hdf5(hits, header, one)
    streamed = tmp_path / "streamed.h5"
    convert_file(FIXTURE, streamed, "hdf5", batch_records=300)
    for path in (one, streamed):
        with h5py.File(path, "r") as f:
            ds = f["hits"]
            assert ds.dtype == HIT_DTYPE
            assert ds.maxshape == (None,) and ds.chunks is not None
            assert ds.compression == "gzip"
            assert np.array_equal(ds[()], hits)
            assert ds.attrs["header"] == header.to_bytes().decode("ascii")
            assert ds.attrs["readout_uid"] == 4000
        got, got_header = read_hits_hdf5(path)
        assert np.array_equal(got, hits) and got_header == header


def test_npz_round_trip(tmp_path: Path, decoded) -> None:
    header, _, hits = decoded
    hits_to_npz(hits, header, tmp_path / "h.npz")
    got, got_header = read_hits_npz(tmp_path / "h.npz")
    assert got.dtype == HIT_DTYPE and np.array_equal(got, hits)
    assert got_header == header
    with np.load(tmp_path / "h.npz", allow_pickle=False) as z:  # no pickle needed
        assert sorted(z.files) == ["header", "hits"]
    convert_file(FIXTURE, tmp_path / "c.npz", "npz", batch_records=500)
    assert np.array_equal(read_hits_npz(tmp_path / "c.npz")[0], hits)


def test_carried_extra_bytes_cross_batch_boundaries(tmp_path: Path, decoded) -> None:
    _, batch, plain = decoded
    rec = batch.records
    carried = decode_batch(batch.payload, rec["offset"], rec["length"], rec["readout_id"],
                           rec["timestamp"], carry_extra=True)
    whole = carried.hits
    assert len(whole) > len(plain)  # the fixture has hits only carrying recovers
    for step in (1, 7, 1001):
        decoder = StreamDecoder(carry_extra=True)
        parts = [decoder.decode(ReadoutBatch.from_readouts(list(batch)[i : i + step]))
                 for i in range(0, len(batch), step)]
        assert np.array_equal(np.concatenate([p.hits for p in parts]), whole)
        assert np.array_equal(np.concatenate([p.status for p in parts]), carried.status)
        assert [e for p in parts for e in p.extra] == carried.extra
    convert_file(FIXTURE, tmp_path / "c.npz", "npz", carry_extra=True, batch_records=13)
    assert np.array_equal(read_hits_npz(tmp_path / "c.npz")[0], whole)


def test_default_output_is_next_to_the_input() -> None:
    assert default_output("/d/run.apx", "csv") == Path("/d/run.csv")
    assert default_output("/d/run.apx", "hdf5") == Path("/d/run.h5")
    assert default_output("/d/run.apx", "npz") == Path("/d/run.npz")
    with pytest.raises(ValueError):
        default_output("/d/run.apx", "xlsx")


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    out.write_text("keep me")
    with pytest.raises(OutputError, match="already exists"):
        convert_file(FIXTURE, out, "csv")
    assert out.read_text() == "keep me"
    convert_file(FIXTURE, out, "csv", overwrite=True)
    assert out.read_bytes() == REFERENCE_CSV.read_bytes()


def test_corrupt_input_names_offset_and_leaves_no_output(tmp_path: Path) -> None:
    raw = bytearray(FIXTURE.read_bytes())
    bad_at = record_offsets(bytes(raw))[1500]
    raw[bad_at] ^= 0xFF  # break one record magic
    src = tmp_path / "bad.apx"
    src.write_bytes(bytes(raw))
    for fmt in ("csv", "hdf5", "npz"):
        with pytest.raises(ApxFormatError) as info:
            convert_file(src, None, fmt, batch_records=100)
        assert info.value.offset == bad_at
        assert str(src) in str(info.value) and f"offset {bad_at}" in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.apx"]


def test_truncated_input_is_an_error_unless_allowed(tmp_path: Path) -> None:
    raw = FIXTURE.read_bytes()
    last = record_offsets(raw)[-1]
    src = tmp_path / "cut.apx"
    src.write_bytes(raw[: last + 5])  # inside the last record's prefix
    with pytest.raises(ApxTruncatedError) as info:
        convert_file(src, tmp_path / "cut.csv", "csv")
    assert info.value.offset == last
    assert not (tmp_path / "cut.csv").exists()
    summary = convert_file(src, tmp_path / "cut.csv", "csv", allow_truncated=True)
    assert summary.readouts == 2009
    assert summary.truncation is not None and summary.truncation.offset == last
    assert summary.truncation.what == "record prefix" and summary.truncation.present == 5
    reference = REFERENCE_CSV.read_bytes().splitlines(keepends=True)
    assert tmp_path.joinpath("cut.csv").read_bytes() == b"".join(reference[:-1])


def test_missing_input_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        convert_file(tmp_path / "nope.apx", tmp_path / "x.csv", "csv")
    assert not (tmp_path / "x.csv").exists()


def test_unwritable_output_is_an_output_error(tmp_path: Path) -> None:
    shutil.copy(FIXTURE, tmp_path / "f.apx")
    with pytest.raises(OutputError):
        convert_file(tmp_path / "f.apx", tmp_path / "no" / "such" / "dir.csv", "csv")

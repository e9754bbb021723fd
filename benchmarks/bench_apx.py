"""Throughput of flyprep's AstroPix ``.apx`` reading, hit decoding and conversion.

Writes (untimed) a realistic AstroPix4 file of ``--readouts`` readouts with 1-4 hits each
(about 2.5 on average, like the DAQ and the realistic part of ``fixture.apx``): every
payload is built like the DAQ's, two leading idle bytes 0xbc, 8-byte hits whose first byte
is a start byte (top three bits 111, chip id bit-reversed), 0/2/6 idle bytes between hits
and 6/8/12 after the last one (the fixture's own mix), trailing 0xff stripped. Hits are
encoded by inverting the decoding of ``shared/formats/apx.md`` (fields packed into a 64-bit
word, big-endian bytes, bits reversed inside each byte), with random valid fields: chip 0
mostly, row/column 0-15, a 17-bit Gray-coded start time and a time over threshold of
1-400 us, wrapping past 2**17 as real hits do. The encoder is first checked against every
hit of the fixture. ``--source fixture`` instead cycles the fixture's 2,000 realistic
readouts under new readout ids and timestamps.

Then it times each step once untimed (warm-up) and ``--repeat`` times (every run is
printed; the table gives the median and the best, rates and goals use the median):

- read: every record into :class:`ReadoutBatch` es (records/s, MB/s of file);
- read + decode: the same plus :func:`decode_batch` on every batch and the concatenation of
  the hits (hits/s, goal >= 4.5 M hits/s; the reference does ~45 k);
- decode only: :func:`decode_batch` on the batches already in memory, to split the above;
- conversion: the decoded hits to CSV and to HDF5 (seconds, goal < 1 s each; the reference
  takes ~400 s), and the whole file -> file conversion with ``convert_file``.

Untimed checks: the decoded hits are exactly the generated ones (every field, readout id,
timestamp and decoding order), every readout has status 0, the CSV has one line per hit
with the first and last formatted as the reference does, and the HDF5 table read back is
identical to the decoded hits.

The file is freshly written, so reads come from the page cache: these are CPU figures.
Other processes skew them; the load average is printed.

    python3 benchmarks/bench_apx.py [--readouts 100000] [--dir DIR] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import h5py
import numpy as np

from flyprep.apx.decode import HIT_DTYPE, decode_batch
from flyprep.apx.format import ApxHeader, ReadoutBatch, RECORD_DTYPE, open_apx

from flyprep.apx.convert import convert_file, hits_to_csv, hits_to_hdf5

HITS_PER_S_GOAL = 4.5e6  #: read + decode
CONVERT_S_GOAL = 1.0  #: each conversion
REFERENCE = {"read": "0.2-0.3 s", "decode": "~45 k hits/s", "convert": "~400 s"}

FIXTURE_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "apx"
FIXTURE_REALISTIC = 2000  #: the first readouts of fixture.apx are realistic DAQ readouts

IDLE = 0xBC
GRAY_WRAP = 1 << 17
#: byte -> the same byte with its bit order reversed
BITREV = np.array([int(f"{i:08b}"[::-1], 2) for i in range(256)], dtype=np.uint8)
#: the hit fields the encoder sets (the rest of HIT_DTYPE is derived or host-side)
WORD_FIELDS = ("chip_id", "payload", "row", "column", "ts_neg1", "ts_coarse1", "ts_fine1",
               "ts_tdc1", "ts_neg2", "ts_coarse2", "ts_fine2", "ts_tdc2")
#: (shift, width) of each field in the bit-reversed big-endian 64-bit word (apx.md)
WORD_LAYOUT = {"chip_id": (59, 5), "payload": (56, 3), "row": (51, 5), "column": (46, 5),
               "ts_neg1": (45, 1), "ts_coarse1": (31, 14), "ts_fine1": (28, 3),
               "ts_tdc1": (23, 5), "ts_neg2": (22, 1), "ts_coarse2": (8, 14),
               "ts_fine2": (5, 3), "ts_tdc2": (0, 5)}
#: the fixture's idle runs: between two hits, and after the last hit of a readout
GAP_CHOICES, GAP_P = np.array([0, 2, 6]), np.array([0.19, 0.49, 0.32])
TRAIL_CHOICES, TRAIL_P = np.array([6, 8, 12]), np.array([0.19, 0.50, 0.31])
LEAD_IDLE = 2
T0_NS = 1753255536707629800
READOUT_PERIOD_NS = 77_000_000


# --------------------------------------------------------------------------- encoding


def encode_hits(hits: np.ndarray) -> np.ndarray:
    """The 8 wire bytes of each hit (``(n, 8)`` uint8) from its word fields."""
    w = np.zeros(len(hits), dtype=np.uint64)
    for name, (shift, width) in WORD_LAYOUT.items():
        v = hits[name].astype(np.uint64)
        if np.any(v >> np.uint64(width)):
            raise ValueError(f"{name} does not fit {width} bits")
        w |= v << np.uint64(shift)
    return BITREV[w.astype(">u8").view(np.uint8).reshape(-1, 8)]


def gray_encode(b: np.ndarray) -> np.ndarray:
    """Binary -> Gray code."""
    return b ^ (b >> 1)


def gray_decode(g: np.ndarray) -> np.ndarray:
    """Gray code -> binary (up to 32 bits)."""
    b = g.astype(np.uint32)
    for s in (1, 2, 4, 8, 16):
        b = b ^ (b >> s)
    return b


def derive_fields(hits: np.ndarray) -> None:
    """Fill ts_dec1/ts_dec2/tot_us from the coarse and fine fields, as apx.md says."""
    d1 = gray_decode((hits["ts_coarse1"].astype(np.uint32) << 3) | hits["ts_fine1"])
    d2 = gray_decode((hits["ts_coarse2"].astype(np.uint32) << 3) | hits["ts_fine2"])
    d2 = np.where(d2 < d1, d2 + GRAY_WRAP, d2)
    hits["ts_dec1"], hits["ts_dec2"] = d1, d2
    hits["tot_us"] = (d2.astype(np.int64) - d1.astype(np.int64)) / 20.0


def random_hits(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` hits with random valid word fields (host-side fields left zero)."""
    hits = np.zeros(n, dtype=HIT_DTYPE)
    hits["chip_id"] = np.where(rng.random(n) < 0.9, 0, rng.integers(1, 4, n))
    hits["payload"] = 7
    hits["row"] = rng.integers(0, 16, n)
    hits["column"] = rng.integers(0, 16, n)
    hits["ts_neg1"] = rng.integers(0, 2, n)
    hits["ts_neg2"] = rng.integers(0, 2, n)
    dec1 = rng.integers(0, GRAY_WRAP, n, dtype=np.uint32)
    dec2 = (dec1 + rng.integers(20, 8000, n, dtype=np.uint32)) % GRAY_WRAP  # 1-400 us
    g1, g2 = gray_encode(dec1), gray_encode(dec2)
    hits["ts_coarse1"], hits["ts_fine1"] = g1 >> 3, g1 & 7
    hits["ts_coarse2"], hits["ts_fine2"] = g2 >> 3, g2 & 7
    derive_fields(hits)
    return hits


def check_encoder(fixture_jsonl: Path) -> int:
    """Encode every realistic fixture hit; its bytes must be the reference's. Returns count."""
    rows = read_fixture_rows(fixture_jsonl)
    fields = [h[1] for r in rows for h in r["hits"]]
    raw = b"".join(bytes.fromhex(h[0]) for r in rows for h in r["hits"])
    hits = np.zeros(len(fields), dtype=HIT_DTYPE)
    for name in WORD_FIELDS:
        hits[name] = [f[name] for f in fields]
    wire = encode_hits(hits)
    want = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 8)
    if not np.array_equal(BITREV[wire], want):
        raise SystemExit("encoder self-check failed: encoded fixture hits differ from the reference")
    derive_fields(hits)
    for name in ("ts_dec1", "ts_dec2"):
        if hits[name].tolist() != [f[name] for f in fields]:
            raise SystemExit(f"encoder self-check failed on {name}")
    if not np.allclose(hits["tot_us"], [f["tot_us"] for f in fields]):
        raise SystemExit("encoder self-check failed on tot_us")
    return len(fields)


# --------------------------------------------------------------------------- test file


@dataclass
class Generated:
    """A test file and the hits its decode must give."""

    path: Path
    header: ApxHeader
    n_readouts: int
    expected: np.ndarray  #: HIT_DTYPE, in file order
    payload_bytes: int
    file_bytes: int
    write_s: float


def layout_payloads(
    rng: np.random.Generator, wire: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated DAQ-like payloads holding ``wire`` hits, ``counts`` per readout.

    Returns ``(payload, offsets, lengths)``. Each readout: 2 idle bytes, then each hit
    followed by an idle run (0/2/6 bytes between hits, 6/8/12 after the last one).
    """
    n_read, n_hits = len(counts), len(wire)
    first = np.zeros(n_read + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    owner = np.repeat(np.arange(n_read), counts)
    is_last = np.zeros(n_hits, dtype=bool)
    is_last[first[1:][counts > 0] - 1] = True
    gaps = np.where(is_last, rng.choice(TRAIL_CHOICES, n_hits, p=TRAIL_P),
                    rng.choice(GAP_CHOICES, n_hits, p=GAP_P))
    # units in file order: readout r's lead is unit r + first[r], its hit g is unit g + r + 1
    sizes = np.empty(n_read + n_hits, dtype=np.int64)
    lead_unit = np.arange(n_read) + first[:-1]
    hit_unit = np.arange(n_hits) + owner + 1
    sizes[lead_unit] = LEAD_IDLE
    sizes[hit_unit] = 8 + gaps
    starts = np.cumsum(sizes) - sizes
    payload = np.full(int(sizes.sum()), IDLE, dtype=np.uint8)
    payload[starts[hit_unit][:, None] + np.arange(8)] = wire
    offsets = starts[lead_unit]
    lengths = np.diff(np.append(offsets, payload.size))
    # the DAQ strips trailing 0xff padding (these payloads end with idle bytes anyway)
    assert not np.any(payload[offsets + lengths - 1] == 0xFF)
    return payload, offsets, lengths


def fixture_source(n_read: int, jsonl: Path, apx: Path) -> tuple[ReadoutBatch, np.ndarray]:
    """The fixture's realistic readouts cycled to ``n_read`` with new ids and timestamps."""
    rows = read_fixture_rows(jsonl)
    with open_apx(apx, "r") as reader:
        fix = ReadoutBatch.concat(reader.batches())
    reps = -(-n_read // FIXTURE_REALISTIC)
    idx = np.tile(np.arange(FIXTURE_REALISTIC), reps)[:n_read]
    recs = fix.records[:FIXTURE_REALISTIC]
    lengths = recs["length"][idx]
    gather = np.repeat(recs["offset"][idx] - (np.cumsum(lengths) - lengths), lengths)
    payload = fix.payload[gather + np.arange(int(lengths.sum()))]
    records = np.empty(n_read, RECORD_DTYPE)
    records["length"] = lengths
    records["offset"] = np.cumsum(lengths) - lengths
    per = np.array([len(r["hits"]) for r in rows])
    return ReadoutBatch(records, payload), np.repeat(np.arange(n_read), per[idx])


def generate(directory: Path, n_read: int, source: str, seed: int) -> Generated:
    """Write the test file (the write is timed for information only)."""
    rng = np.random.default_rng(seed)
    if source == "fixture":
        batch, owner = fixture_source(n_read, FIXTURE_DIR / "fixture.jsonl",
                                      FIXTURE_DIR / "fixture.apx")
        expected_hits = None
    else:
        counts = rng.integers(1, 5, n_read)  # 1-4 hits, mean 2.5
        expected_hits = random_hits(rng, int(counts.sum()))
        first = np.cumsum(counts) - counts
        expected_hits["decoding_order"] = np.arange(len(expected_hits)) - np.repeat(first, counts)
        payload, offsets, lengths = layout_payloads(rng, encode_hits(expected_hits), counts)
        records = np.empty(n_read, RECORD_DTYPE)
        records["offset"], records["length"] = offsets, lengths
        batch = ReadoutBatch(records, payload)
        owner = np.repeat(np.arange(n_read), counts)
    ids = np.arange(n_read, dtype=np.uint32)
    ts = (T0_NS + ids.astype(np.uint64) * np.uint64(READOUT_PERIOD_NS)
          + rng.integers(0, 1_000_000, n_read).astype(np.uint64))
    batch.records["readout_id"] = ids
    batch.records["timestamp"] = ts
    if expected_hits is None:
        expected_hits = fixture_expected(n_read)
    expected_hits["readout_id"] = ids[owner]
    expected_hits["timestamp"] = ts[owner]
    header = ApxHeader(4000, {
        "configuration": {"chip": "astropix4", "rows": 16, "columns": 16,
                          "thresholds_mv": [100, 100, 100, 100], "injection": False},
        "args": {"name": "bench_apx", "readouts": n_read, "source": source, "seed": seed},
    })
    path = directory / f"bench_{source}_{n_read}.apx"
    t0 = time.perf_counter()
    with open_apx(path, "w", header=header) as writer:
        writer.write_batch(batch)
    write_s = time.perf_counter() - t0
    return Generated(path, header, n_read, expected_hits, int(batch.payload.size),
                     path.stat().st_size, write_s)


def fixture_expected(n_read: int) -> np.ndarray:
    """The hits the cycled fixture readouts decode to (host fields still to be set)."""
    rows = read_fixture_rows(FIXTURE_DIR / "fixture.jsonl")
    fields = [h[1] for r in rows for h in r["hits"]]
    one = np.zeros(len(fields), dtype=HIT_DTYPE)
    for name in HIT_DTYPE.names:
        if name not in ("readout_id", "timestamp"):
            one[name] = [f[name] for f in fields]
    per = np.array([len(r["hits"]) for r in rows])
    reps, rest = divmod(n_read, FIXTURE_REALISTIC)
    return np.concatenate([one] * reps + [one[: int(per[:rest].sum())]])


_FIXTURE_ROWS: dict[Path, list[dict]] = {}


def read_fixture_rows(jsonl: Path) -> list[dict]:
    """The reference's decode of the fixture's realistic readouts (cached)."""
    if jsonl not in _FIXTURE_ROWS:
        with open(jsonl, encoding="utf-8") as f:
            lines = f.readlines()[1 : 1 + FIXTURE_REALISTIC]
        _FIXTURE_ROWS[jsonl] = [json.loads(line) for line in lines]
    return _FIXTURE_ROWS[jsonl]


# --------------------------------------------------------------------------- timed steps


def concat_hits(parts: list[np.ndarray]) -> np.ndarray:
    """One hits array from the per-batch ones.

    Copied as raw records: ``np.concatenate`` on the packed (unaligned) HIT_DTYPE copies
    field by field, ~40x slower (15 ms instead of 0.4 ms for 250k hits).
    """
    if not parts:
        return np.empty(0, HIT_DTYPE)
    raw = f"V{HIT_DTYPE.itemsize}"
    return np.concatenate([p.view(raw) for p in parts]).view(HIT_DTYPE)


def read_records(path: Path, batch_records: int) -> tuple[int, int]:
    """Read every record into batches; return (records, payload bytes)."""
    n = size = 0
    with open_apx(path, "r") as reader:
        for batch in reader.batches(batch_records):
            n += len(batch)
            size += batch.payload.size
    return n, size


@dataclass
class Decoded:
    """Everything decoded from a file."""

    hits: np.ndarray
    status: np.ndarray
    n_slow: int


def decode_batches(batches: Iterable[ReadoutBatch], carry_extra: bool) -> Decoded:
    """decode_batch on each batch, hits concatenated; with ``carry_extra`` the last
    readout's extra bytes of each batch are passed on to the next batch."""
    hits, status, slow = [], [], 0
    prev: Optional[bytes] = None
    for b in batches:
        d = decode_batch(b.payload, b.records["offset"], b.records["length"],
                         b.readout_id, b.timestamp, carry_extra=carry_extra,
                         previous_extra=prev)
        if carry_extra and len(b):
            prev = d.extra[-1]
        hits.append(d.hits)
        status.append(d.status)
        slow += d.n_slow
    if not hits:
        return Decoded(np.empty(0, HIT_DTYPE), np.empty(0, np.uint8), 0)
    return Decoded(concat_hits(hits), np.concatenate(status), slow)


def read_and_decode(path: Path, batch_records: int, carry_extra: bool) -> Decoded:
    """Read every batch and decode it as it comes (carrying extra bytes across batches
    with ``carry_extra``)."""
    with open_apx(path, "r") as reader:
        return decode_batches(reader.batches(batch_records), carry_extra)


def timed(fn: Callable[[], Any], repeat: int, label: str,
          setup: Optional[Callable[[], None]] = None) -> tuple[list[float], Any]:
    """Run ``fn`` once untimed (warm-up), then ``repeat`` times (``setup`` before each,
    untimed); print and return the times and the last result."""
    times, result = [], None
    if setup is not None:
        setup()
    fn()
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    print(f"  {label:<28}" + " ".join(f"{t:8.3f}" for t in times) + "  s")
    return times, result


# --------------------------------------------------------------------------- checks


def check_hits(got: Decoded, gen: Generated) -> None:
    """The decoded hits must be exactly the generated ones, all on the fast path."""
    want = gen.expected
    if len(got.hits) != len(want):
        raise SystemExit(f"decoded {len(got.hits)} hits, generated {len(want)}")
    for name in HIT_DTYPE.names:
        a, b = got.hits[name], want[name]
        ok = np.allclose(a, b, rtol=0, atol=1e-9) if a.dtype.kind == "f" else np.array_equal(a, b)
        if not ok:
            bad = int(np.flatnonzero(a != b)[0])
            raise SystemExit(f"hit {bad}: {name} decoded {a[bad]!r}, generated {b[bad]!r}")
    if got.status.any():
        raise SystemExit(f"{int(np.count_nonzero(got.status))} readouts with status != 0")


def csv_line(hit: np.void) -> bytes:
    """A hit's CSV line as the reference writes it (decimal integers, repr of tot_us)."""
    values = [repr(float(hit[name])) if name == "tot_us" else str(int(hit[name]))
              for name in HIT_DTYPE.names]
    return (",".join(values) + "\n").encode("ascii")


def check_csv(path: Path, hits: np.ndarray) -> str:
    """A ``#`` header line, the column names, then one line per hit; first and last lines
    as the reference formats them."""
    with open(path, "rb") as f:
        text = f.read()
    lines = text.split(b"\n")
    if lines[-1] != b"":
        raise SystemExit(f"CSV {path.name}: does not end with a newline")
    lines = lines[:-1]
    if not lines[0].startswith(b"#{") or lines[1] != ",".join(HIT_DTYPE.names).encode():
        raise SystemExit(f"CSV {path.name}: unexpected first lines {lines[:2]!r}")
    data = lines[2:]
    if len(data) != len(hits):
        raise SystemExit(f"CSV {path.name}: {len(data)} data lines, {len(hits)} hits")
    for i in (0, len(hits) - 1):
        if data[i] + b"\n" != csv_line(hits[i]):
            raise SystemExit(f"CSV {path.name}: line of hit {i} is {data[i]!r}, "
                             f"expected {csv_line(hits[i])!r}")
    return f"{len(lines)} lines, first and last hit lines as the reference formats them"


def check_hdf5(path: Path, hits: np.ndarray) -> str:
    """Some dataset must hold exactly the hits (read back and compared)."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset) and obj.dtype.names and obj.shape == (len(hits),):
            back = obj[()]
            same = all(np.array_equal(back[n], hits[n]) for n in HIT_DTYPE.names)
            found.append(f"/{name} {obj.shape} compound, "
                         f"{'identical to the decoded hits' if same else 'DIFFERENT'}")
            if not same:
                raise SystemExit(f"HDF5 {path.name}: /{name} differs from the decoded hits")

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    if not found:
        raise SystemExit(f"HDF5 {path.name}: no compound dataset of {len(hits)} hits")
    return "; ".join(found)


# --------------------------------------------------------------------------- conversions


def conversion_calls(gen: Generated, out: Path) -> list[tuple[str, Callable[[np.ndarray], Any], Path, str]]:
    """(label, call on the hits, output path, kind) for every conversion timed."""
    calls = []
    for kind, fn in (("csv", hits_to_csv), ("hdf5", hits_to_hdf5)):
        dst = out / f"hits.{'csv' if kind == 'csv' else 'h5'}"
        calls.append((f"hits -> {kind.upper()}",
                      lambda hits, fn=fn, dst=dst: fn(hits, gen.header, dst), dst, kind))
    for kind in ("csv", "hdf5"):
        dst = out / f"file.{'csv' if kind == 'csv' else 'h5'}"
        calls.append((f"apx file -> {kind.upper()}",
                      lambda _hits, dst=dst, kind=kind: convert_file(gen.path, dst, kind),
                      dst, kind))
    return calls


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    """One line of the summary table."""

    step: str
    seconds: float
    best: float
    rate: str
    goal: str = "-"
    met: str = ""


def print_table(rows: list[Row]) -> None:
    """The summary: median and best time, the rate at the median, goal, goal met."""
    head = f"{'step':<26}{'median s':>9}{'best s':>8}  {'rate (at median)':<34}{'goal':<16}{'met':<4}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r.step:<26}{r.seconds:9.3f}{r.best:8.3f}  {r.rate:<34}{r.goal:<16}{r.met:<4}")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readouts", type=int, default=100_000, help="readouts in the file")
    p.add_argument("--dir", type=Path, default=None,
                   help="scratch directory (default: a new temporary one, removed at the end)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each step")
    p.add_argument("--source", choices=("synthetic", "fixture"), default="synthetic",
                   help="fresh random readouts, or the fixture's realistic ones cycled")
    p.add_argument("--batch-records", type=int, default=65536,
                   help="records per batch when reading (ApxReader.batches)")
    p.add_argument("--carry-extra", action="store_true",
                   help="decode with carry_extra=True (hits split across readouts)")
    p.add_argument("--seed", type=int, default=20250723)
    p.add_argument("--keep", action="store_true", help="keep the files written")
    args = p.parse_args(argv)
    if args.readouts < 1 or args.repeat < 1 or args.batch_records < 1:
        p.error("--readouts, --repeat and --batch-records must be >= 1")
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    own_dir = args.dir is None
    out = Path(tempfile.mkdtemp(prefix="bench_apx_")) if own_dir else args.dir
    out.mkdir(parents=True, exist_ok=True)
    try:
        run(args, out)
    finally:
        if own_dir and not args.keep:
            shutil.rmtree(out, ignore_errors=True)


def run(args: argparse.Namespace, out: Path) -> None:
    print(f"python {platform.python_version()}, numpy {np.__version__}, h5py {h5py.version.version}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"scratch {out}")
    n_fixture_hits = check_encoder(FIXTURE_DIR / "fixture.jsonl")
    print(f"encoder self-check: {n_fixture_hits} fixture hits re-encoded byte-identical")

    gen = generate(out, args.readouts, args.source, args.seed)
    n_hits = len(gen.expected)
    mb = gen.file_bytes / 1e6
    print(f"file {gen.path.name}: {gen.n_readouts} readouts, {n_hits} hits "
          f"({n_hits / gen.n_readouts:.2f}/readout), payload {gen.payload_bytes / gen.n_readouts:.1f} "
          f"B/readout, {mb:.2f} MB, written in {gen.write_s:.3f} s (untimed setup)")

    print(f"\ntimes of {args.repeat} runs:")
    rows: list[Row] = []
    t_read, (n_rec, _) = timed(lambda: read_records(gen.path, args.batch_records), args.repeat, "read records")
    if n_rec != gen.n_readouts:
        raise SystemExit(f"read {n_rec} records, wrote {gen.n_readouts}")
    s = statistics.median(t_read)
    rows.append(Row("read records", s, min(t_read), f"{n_rec / s / 1e6:.2f} M rec/s, {mb / s:.0f} MB/s",
                    f"ref {REFERENCE['read']}"))

    t_rd, decoded = timed(lambda: read_and_decode(gen.path, args.batch_records, args.carry_extra),
                          args.repeat, "read + decode")
    check_hits(decoded, gen)
    s = statistics.median(t_rd)
    rate = n_hits / s
    rows.append(Row("read + decode", s, min(t_rd), f"{rate / 1e6:.2f} M hits/s ({n_rec / s / 1e6:.2f} M rec/s)",
                    f">= {HITS_PER_S_GOAL / 1e6:.1f} M hits/s", "yes" if rate >= HITS_PER_S_GOAL else "NO"))

    with open_apx(gen.path, "r") as reader:
        batches = list(reader.batches(args.batch_records))
    t_dec, dec_only = timed(lambda: decode_batches(batches, args.carry_extra), args.repeat,
                            "decode only (in memory)")
    check_hits(dec_only, gen)
    s = statistics.median(t_dec)
    rows.append(Row("decode only (in memory)", s, min(t_dec), f"{n_hits / s / 1e6:.2f} M hits/s", "", ""))

    for label, call, dst, kind in conversion_calls(gen, out):
        t_conv, _ = timed(lambda call=call: call(decoded.hits), args.repeat, label,
                          setup=lambda dst=dst: dst.unlink(missing_ok=True))
        detail = check_csv(dst, decoded.hits) if kind == "csv" else check_hdf5(dst, decoded.hits)
        s = statistics.median(t_conv)
        size = dst.stat().st_size / 1e6
        rows.append(Row(label, s, min(t_conv), f"{n_hits / s / 1e6:.2f} M hits/s, {size:.1f} MB",
                        f"< {CONVERT_S_GOAL:g} s", "yes" if s < CONVERT_S_GOAL else "NO"))
        print(f"    {dst.name}: {detail}")

    print_table(rows)
    print(f"\nchecks: {n_hits} hits decoded = generated (every field), status 0 and "
          f"{decoded.n_slow} readouts on the slow path; reference (2-core machine): read "
          f"{REFERENCE['read']}, decode {REFERENCE['decode']}, conversions {REFERENCE['convert']}")


if __name__ == "__main__":
    sys.exit(main())

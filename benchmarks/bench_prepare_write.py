"""Throughput of flyprep's prepare-and-write path against the disk's raw write+fsync speed.

Runs :func:`flyprep.pipeline.run_scan`, the code path of ``flyprep prepare`` after input
reading (FrameBook -> Scan/ChunkPreparer -> a writer thread with PtydWriter, link mode), on
raw frames held in memory: a pool of distinct synthetic far-field patterns (:class:`flyprep.sim.example.ExampleScan`,
Poisson noise) is generated once, untimed, and cycled through so that thousands of frames
need no more RAM than the pool.

For each case it prints frames/s, the output bandwidth (data + weights bytes as prepared,
and bytes on disk), the time preparation alone takes (no writing), and the machine's raw
sequential write+fsync bandwidth for exactly the bytes flyprep put on disk: the same chunk
files and as many master publications as flyprep made (``os.write``, ``fsync``, rename,
directory ``fsync`` per publication), measured in the same run. Each case starts with an untimed warm-up of both, then alternates ``--repeat``
flyprep runs with as many raw runs and reports medians (every run is printed too): on a VM
the first pass through fresh page cache or freshly freed blocks is several times slower
than later ones. Other processes skew the numbers; the load average is printed.

    python3 benchmarks/bench_prepare_write.py [--frames 2000] [--dir DIR] [--cases all]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from flyprep.config import PrepareConfig, parse_config
from flyprep.sim.example import ExampleScan
from flyprep.pipeline import PART_BYTES, ChunkPreparer, ReadyFrame, run_scan
from flyprep.ptyd import open_ptyd
from flyprep.ptyd.verify import verify
from flyprep.pipeline.frame_book import FrameBook, Scan

MB = 1e6
#: Uncompressed flyprep must reach this fraction of the raw write+fsync bandwidth.
RAW_FRACTION_GOAL = 0.85
#: bitshuffle-LZ4 must reach this many frames/s on the 256x256 output.
LZ4_FPS_GOAL = 3000.0


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: raw frames in, ROI crop out, one compression."""

    name: str
    raw_side: int
    raw_dtype: str
    roi: int
    compression: str

    @property
    def goal(self) -> str:
        """The target for this case, as printed."""
        if self.compression == "none":
            return f">= {RAW_FRACTION_GOAL:.0%} of raw"
        if self.roi == 256:
            return f">= {LZ4_FPS_GOAL:,.0f} frames/s"
        return "-"


CASES: dict[str, Case] = {c.name: c for c in (
    Case("256-int32-none", 512, "int32", 256, "none"),
    Case("256-int32-lz4", 512, "int32", 256, "bitshuffle-lz4"),
    Case("512-uint16-none", 1024, "uint16", 512, "none"),
    Case("512-uint16-lz4", 1024, "uint16", 512, "bitshuffle-lz4"),
)}

def make_pool(case: Case, size: int, seed: int = 0) -> np.ndarray:
    """``size`` distinct raw frames of the case: Poisson far-field speckle, ~8e6 photons
    each, bright centre with decaying tails; counts above the dtype's range saturate."""
    example = ExampleScan(num_frames=size, frame_side=case.raw_side, photons=1e7,
                          seed=seed, dtype="int64")
    frames = example.frames(0, size)
    limit = np.iinfo(case.raw_dtype).max
    return np.minimum(frames, limit).astype(case.raw_dtype)


@dataclass(frozen=True)
class RunResult:
    """What one flyprep run did and how long it took."""

    seconds: float
    logical_bytes: int
    chunk_files: tuple[bytes, ...]  # contents of the chunk files, in order
    master: bytes  # contents of the final master
    publications: int  # masters flyprep published (its generation counter)
    reference: tuple[np.ndarray, np.ndarray]  # prepared first chunk (data, weights)


def case_config(case: Case, chunk_frames: int) -> PrepareConfig:
    """The configuration ``flyprep prepare --shape ROI --compression C`` would build."""
    return parse_config({"prep": {"shape": case.roi},
                         "output": {"chunk_frames": chunk_frames, "compression": case.compression},
                         "geometry": {"energy": 6.2, "distance": 7.0, "psize": 75e-6},
                         "scan": {"label": case.name}})


def scan_positions(num_frames: int) -> np.ndarray:
    """A line scan with 50 nm steps, (y, x) in metres."""
    return np.stack([np.arange(num_frames) * 50e-9, np.zeros(num_frames)], 1)


def frames_from_pool(pool: np.ndarray, num_frames: int) -> Iterator[ReadyFrame]:
    """Frames in index order, cycling through the pool, as a scan directory would give them."""
    for i in range(num_frames):
        yield ReadyFrame(i, pool[i % len(pool)], f"/data/scan_000001/frame_{i:06d}.h5")


#: run_scan's part_bytes (``--part-bytes``): chunks written in parts while they fill.
part_bytes_option = PART_BYTES


def run_flyprep(case: Case, pool: np.ndarray, *, num_frames: int, chunk_frames: int,
                out_dir: Path) -> RunResult:
    """Prepare and write ``num_frames`` frames (cycling ``pool``) with ``run_scan``."""
    output = out_dir / f"{case.name}.ptyd"
    positions = scan_positions(num_frames)
    config = case_config(case, chunk_frames)
    os.sync()
    summary = run_scan(frames_from_pool(pool, num_frames), num_frames=num_frames,
                       positions=positions, config=config, output=output,
                       part_bytes=part_bytes_option)
    chunk_files = sorted(out_dir.glob(f"{output.name}.chunk*"))
    first = np.stack([pool[i % len(pool)] for i in range(min(chunk_frames, num_frames))])
    reference = prepare_only(case, first, chunk_frames=chunk_frames)
    check_output(output, reference)
    generation = open_ptyd(output).provenance["generation"]
    return RunResult(summary.seconds, summary.bytes_written,
                     tuple(p.read_bytes() for p in chunk_files), output.read_bytes(),
                     generation, reference)


def prepare_only(case: Case, frames: np.ndarray, *, chunk_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Book and preparation of ``frames`` as one chunk, without writing: (data, weights)."""
    config = case_config(case, chunk_frames)
    book = FrameBook(num_frames=len(frames), chunk_frames=chunk_frames, buffer_chunks=1,
                     positions=scan_positions(len(frames)))
    for i, frame in enumerate(frames):
        book.add(i, frame)
    chunk = Scan(book, ChunkPreparer(config.prep, chunk_frames=chunk_frames)).auto()
    return chunk.data.copy(), chunk.weights.copy()


def time_writer_alone(case: Case, reference: tuple[np.ndarray, np.ndarray], *, num_frames: int,
                      chunk_frames: int, out_dir: Path) -> float:
    """Seconds the writer alone takes (no preparation running beside it) to store the
    scan: chunks prepared and compressed beforehand, written one after another."""
    from flyprep.prep.chunk import PreparedChunk
    from flyprep.ptyd import PtydWriter, ScanMeta

    data, weights = reference
    side = data.shape[-1]
    meta = ScanMeta(num_frames=num_frames, shape=(side, side), center=(side / 2, side / 2),
                    psize=(75e-6, 75e-6), energy=6.2, distance=7.0)
    writer = PtydWriter(out_dir / "alone.ptyd", meta=meta, chunk_frames=chunk_frames,
                        compression=case.compression)
    encoded = []
    for key, start in enumerate(range(0, num_frames, chunk_frames)):
        n = min(chunk_frames, num_frames - start)
        encoded.append(writer.encode(PreparedChunk(
            key=key, frame_start=start, data=data[:n], weights=weights[:n],
            positions=scan_positions(num_frames)[start:start + n], missing=np.zeros(n, bool))))
    os.sync()
    t0 = time.perf_counter()
    for chunk in encoded:
        writer.write_chunk(chunk)
    writer.close()
    return time.perf_counter() - t0


def time_preparation(case: Case, pool: np.ndarray, *, num_frames: int, chunk_frames: int) -> float:
    """Seconds that book + preparation alone take for the whole scan (no writing)."""
    config = case_config(case, chunk_frames)
    book = FrameBook(num_frames=num_frames, chunk_frames=chunk_frames, buffer_chunks=1,
                     positions=scan_positions(num_frames))
    scan = Scan(book, ChunkPreparer(config.prep, chunk_frames=chunk_frames))
    t0 = time.perf_counter()
    for item in frames_from_pool(pool, num_frames):
        if not book.accepts(item.index):
            scan.auto()
        book.add(item.index, item.data, source=item.source)
    book.end()
    while book.next_key < book.n_chunks:
        scan.auto()
    return time.perf_counter() - t0


def check_output(output: Path, reference: tuple[np.ndarray, np.ndarray]) -> None:
    """Refuse to report numbers for a file that is not a valid, correct ``.ptyd``."""
    errors = [f for f in verify(output) if f.level == "error"]
    if errors:
        sys.exit(f"{output}: verify failed: {errors}")
    with h5py.File(output, "r") as f:
        chunk = f["chunks/0"]
        if not (np.array_equal(chunk["data"][()], reference[0])
                and np.array_equal(chunk["weights"][()], reference[1])):
            sys.exit(f"{output}: chunk 0 differs from the preparation of its raw frames")


def _write_all(fd: int, buffer: bytes) -> None:
    """``os.write`` until every byte of ``buffer`` is written."""
    view = memoryview(buffer).cast("B")
    while view:
        view = view[os.write(fd, view):]


def run_raw(result: RunResult, *, out_dir: Path) -> float:
    """Seconds to write exactly flyprep's bytes with plain ``os.write``: every chunk file
    fsynced and renamed into place, and the master as many times as flyprep published it
    (spread over the chunks), each fsynced, renamed and followed by a directory fsync."""
    n = len(result.chunk_files)
    publish_after = {round((k + 1) * n / result.publications) - 1
                     for k in range(result.publications)}
    os.sync()
    t0 = time.perf_counter()
    for key, content in enumerate(result.chunk_files):
        write_durably(out_dir / f"raw.{key:05d}", content)
        if key in publish_after:
            write_durably(out_dir / "raw.master", result.master)
            dfd = os.open(out_dir, os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
    return time.perf_counter() - t0


def write_durably(path: Path, payload: bytes) -> None:
    """Write to a temporary name, fsync, rename into place."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def clear(directory: Path) -> None:
    """Remove every file the previous run left in ``directory``."""
    for path in directory.iterdir():
        path.unlink()


@dataclass(frozen=True)
class Row:
    """One line of the final table."""

    case: Case
    fps: float
    logical_mbs: float
    disk_mbs: float
    disk_ratio: float
    raw_disk_mbs: float
    prep_fps: float

    @property
    def vs_raw(self) -> float:
        """flyprep's on-disk bandwidth over the raw write+fsync bandwidth of the same bytes."""
        return self.disk_mbs / self.raw_disk_mbs

    @property
    def met(self) -> str:
        """Whether the case's goal is met ('-' when it has none)."""
        if self.case.compression == "none":
            return "yes" if self.vs_raw >= RAW_FRACTION_GOAL else "NO"
        if self.case.roi == 256:
            return "yes" if self.fps >= LZ4_FPS_GOAL else "NO"
        return "-"


def bench_case(case: Case, *, num_frames: int, chunk_frames: int, pool_size: int,
               repeat: int, out_dir: Path) -> Row:
    """Generate the pool, then after an untimed warm-up run of each alternate ``repeat``
    flyprep runs with ``repeat`` raw write+fsync runs; print medians and every run."""
    t0 = time.perf_counter()
    pool = make_pool(case, pool_size)
    print(f"\n== {case.name}: {num_frames} frames {case.raw_side}x{case.raw_side} "
          f"{case.raw_dtype} -> {case.roi}x{case.roi}, chunks of {chunk_frames}, "
          f"{case.compression} (pool of {pool_size} frames, {pool.nbytes / MB:.0f} MB, "
          f"generated in {time.perf_counter() - t0:.1f} s, untimed); "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    kwargs: dict[str, Any] = {"num_frames": num_frames, "chunk_frames": chunk_frames}
    warm_up = run_flyprep(case, pool, out_dir=out_dir, **kwargs)  # page cache, plugins
    clear(out_dir)
    run_raw(warm_up, out_dir=out_dir)
    clear(out_dir)
    runs: list[RunResult] = []
    raw_seconds: list[float] = []
    for _ in range(repeat):
        runs.append(run_flyprep(case, pool, out_dir=out_dir, **kwargs))
        clear(out_dir)
        raw_seconds.append(run_raw(runs[-1], out_dir=out_dir))
        clear(out_dir)
    prep_s = float(np.median([time_preparation(case, pool, **kwargs) for _ in range(3)]))
    alone = []
    for _ in range(3):
        alone.append(time_writer_alone(case, runs[0].reference, out_dir=out_dir, **kwargs))
        clear(out_dir)
    alone_s = float(np.median(alone))

    result = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
    disk = sum(map(len, result.chunk_files)) + len(result.master) * result.publications
    raw_s = float(np.median(raw_seconds))
    row = Row(case=case, fps=num_frames / result.seconds,
              logical_mbs=result.logical_bytes / MB / result.seconds,
              disk_mbs=disk / MB / result.seconds,
              disk_ratio=sum(map(len, result.chunk_files)) / result.logical_bytes,
              raw_disk_mbs=disk / MB / raw_s, prep_fps=num_frames / prep_s)
    each_fps = " ".join(f"{num_frames / r.seconds:.0f}" for r in runs)
    each_raw = " ".join(f"{disk / MB / s:.0f}" for s in raw_seconds)
    print(f"flyprep   {result.seconds:7.2f} s  {row.fps:8.0f} frames/s  "
          f"{row.logical_mbs:7.0f} MB/s prepared ({result.logical_bytes / MB:.0f} MB)  "
          f"{row.disk_mbs:7.0f} MB/s to disk ({disk / MB:.0f} MB incl. {result.publications} "
          f"masters)   "
          f"[runs: {each_fps} frames/s]")
    print(f"raw       {raw_s:7.2f} s  {num_frames / raw_s:8.0f} frames/s  "
          f"{row.raw_disk_mbs:7.0f} MB/s write+fsync+rename of the same files   "
          f"[runs: {each_raw} MB/s]")
    print(f"prep only {prep_s:7.2f} s  {row.prep_fps:8.0f} frames/s  (book + preparation, no writing)")
    print(f"writer    {alone_s:7.2f} s  {num_frames / alone_s:8.0f} frames/s  "
          f"(writer alone, chunks prepared and compressed beforehand; publishes every chunk)")
    print(f"flyprep/raw {row.vs_raw:.3f}   goal: {case.goal} -> {row.met}")
    return row


def print_table(rows: list[Row]) -> None:
    """The compact summary of every case."""
    head = (f"{'case':<17}{'frames/s':>9}{'prep f/s':>9}{'MB/s prep':>10}{'MB/s disk':>10}"
            f"{'disk/prep':>10}{'raw MB/s':>9}{'fp/raw':>7}  {'goal':<22}{'met':>4}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r.case.name:<17}{r.fps:9.0f}{r.prep_fps:9.0f}{r.logical_mbs:10.0f}"
              f"{r.disk_mbs:10.0f}{r.disk_ratio:10.1%}{r.raw_disk_mbs:9.0f}{r.vs_raw:7.3f}  "
              f"{r.case.goal:<22}{r.met:>4}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames per case")
    parser.add_argument("--chunk-frames", type=int, default=100, help="frames per chunk file")
    parser.add_argument("--part-bytes", type=int, default=PART_BYTES,
                        help="write each chunk in parts of this size while it fills "
                             f"(default {PART_BYTES}; 0: whole chunks)")
    parser.add_argument("--pool", type=int, default=100, help="distinct raw frames generated")
    parser.add_argument("--repeat", type=int, default=5,
                        help="timed runs of flyprep and of the raw baseline per case (median)")
    parser.add_argument("--dir", type=Path, default=None,
                        help="parent directory of the scratch directory "
                             "(default: the system temp directory, /tmp)")
    parser.add_argument("--cases", default="all",
                        help=f"comma-separated subset of: {', '.join(CASES)} (default: all)")
    args = parser.parse_args(argv)
    names = list(CASES) if args.cases == "all" else [c.strip() for c in args.cases.split(",")]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    if args.dir is not None and not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is not a directory")
    if min(args.frames, args.chunk_frames, args.pool, args.repeat) < 1:
        parser.error("--frames, --chunk-frames, --pool and --repeat must be positive")
    args.cases = [CASES[n] for n in names]
    return args


def plugin_build() -> str:
    """The SIMD/threading options hdf5plugin (bitshuffle-LZ4) was built with."""
    try:
        import hdf5plugin
    except ImportError:
        return "no hdf5plugin"
    build = hdf5plugin.get_config().build_config
    return (f"hdf5plugin {hdf5plugin.version} (avx2={build.avx2}, openmp={build.openmp}, "
            f"native={build.native})")


def main(argv: list[str] | None = None) -> None:
    """Run the selected cases in a scratch directory that is removed at the end."""
    global part_bytes_option
    args = parse_args(argv)
    part_bytes_option = args.part_bytes
    out_dir = Path(tempfile.mkdtemp(prefix="flyprep-bench-", dir=args.dir)).absolute()
    free = shutil.disk_usage(out_dir).free
    print(f"scratch {out_dir} ({free / 1e9:.0f} GB free), h5py {h5py.version.version}, "
          f"HDF5 {h5py.version.hdf5_version}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"{plugin_build()}; chunks written in parts of {part_bytes_option} bytes")
    try:
        rows = [bench_case(case, num_frames=args.frames, chunk_frames=args.chunk_frames,
                           pool_size=args.pool, repeat=args.repeat, out_dir=out_dir)
                for case in args.cases]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    print_table(rows)


if __name__ == "__main__":
    main()

"""Throughput of flyprep's prepare-and-write path against the disk's raw write+fsync speed.

Runs the code path ``prepare_scan`` wires (FrameBook -> Scan/ChunkPreparer -> PtydWriter,
link mode) on raw frames held in memory: a pool of distinct synthetic far-field patterns
(:class:`flyprep.example.ExampleScan`, Poisson noise) is generated once, untimed, and
cycled through so that thousands of frames need no more RAM than the pool.

For each case it prints frames/s, the output bandwidth (data + weights bytes as written
uncompressed, and bytes on disk), a per-stage time breakdown, and the machine's raw
sequential write+fsync bandwidth for the same bytes in the same per-chunk file sizes
(``os.write`` of numpy buffers, one ``fsync`` per file), measured in the same run.
Each case starts with an untimed warm-up run of both, then alternates ``--repeat`` flyprep
runs with as many raw runs and reports medians (every run is printed too): on a VM whose
free memory goes back to the host, or whose disk is an image file on the host, the first
pass through fresh page cache or freshly freed blocks is several times slower than later
ones. Other processes on the machine skew the numbers; the load average is printed.

    python3 benchmarks/bench_prepare_write.py [--frames 2000] [--dir DIR] [--cases all]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator
from unittest import mock

import h5py
import numpy as np

from flyprep.config import GeometryConfig, PrepConfig
from flyprep.example import ExampleScan
from flyprep.pipeline import ChunkPreparer, scan_meta
from flyprep.ptyd import writer as writer_module
from flyprep.ptyd.safefile import GuardedFile
from flyprep.ptyd.verify import verify
from flyprep.ptyd.writer import PtydWriter
from flyprep.scan import FrameBook, Scan

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

#: Stages in print order; every one is exclusive time (nested stages are subtracted).
STAGES = (
    ("book.add", "FrameBook.add of every frame"),
    ("scan.release", "Scan.auto / FrameBook.release, outside preparation"),
    ("prepare", "ChunkPreparer: crop, orientation, cast, weights"),
    ("writer.datasets", "HDF5/h5py in create_dataset (chunking, filters), no I/O"),
    ("writer.file_write", "GuardedFile.write: HDF5's writes to the OS (chunk + master)"),
    ("writer.chunk_file", "rest of the writer: checks, file open/close, attrs, rename"),
    ("writer.fsync_chunk", "fsync of each chunk file"),
    ("writer.master", "master rebuild (h5py), no I/O"),
    ("writer.fsync_master", "fsync of each master"),
    ("writer.fsync_dir", "directory fsync after each rename"),
)


@dataclass
class _Open:
    """A stage being timed and the time its nested stages took so far."""

    name: str
    nested: float = 0.0


@dataclass
class StageTimer:
    """Exclusive wall time per named stage: time spent in a nested stage counts only there."""

    totals: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _stack: list[_Open] = field(default_factory=list)

    @property
    def current(self) -> str | None:
        """Name of the innermost open stage."""
        return self._stack[-1].name if self._stack else None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the body under ``name``."""
        entry = _Open(name)
        self._stack.append(entry)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            self._stack.pop()
            self.totals[name] += elapsed - entry.nested
            if self._stack:
                self._stack[-1].nested += elapsed

    def wrap(self, name: str | Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` timed under ``name`` (or under ``name(*args)`` when it is callable)."""
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.stage(name(*args) if callable(name) else name):
                return fn(*args, **kwargs)
        return timed


@contextlib.contextmanager
def instrument_writer(timer: StageTimer, out_dir: Path) -> Iterator[None]:
    """Time the writer's internals by wrapping its functions (the library is untouched).
    Wrapping ``GuardedFile.write`` costs ~1 us per HDF5 write call."""
    def fsync_stage(target: GuardedFile | Path) -> str:
        if Path(getattr(target, "path", target)) == out_dir:
            return "writer.fsync_dir"
        return "writer.fsync_master" if timer.current == "writer.master" else "writer.fsync_chunk"

    patches = (
        (writer_module, "write_chunk_group", "writer.datasets"),
        (writer_module, "fsync_path", fsync_stage),
        (GuardedFile, "fsync", fsync_stage),
        (GuardedFile, "write", "writer.file_write"),
        (PtydWriter, "_publish_master", "writer.master"),
    )
    with contextlib.ExitStack() as stack:
        for owner, attr, name in patches:
            wrapped = timer.wrap(name, getattr(owner, attr))
            stack.enter_context(mock.patch.object(owner, attr, wrapped))
        yield


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
    disk_bytes: int
    stages: dict[str, float]
    reference: tuple[np.ndarray, np.ndarray]  # prepared first chunk (data, weights)


def run_flyprep(case: Case, pool: np.ndarray, *, num_frames: int, chunk_frames: int,
                out_dir: Path) -> RunResult:
    """Feed ``num_frames`` frames (cycling ``pool``) through book, preparer and writer."""
    output = out_dir / f"{case.name}.ptyd"
    sources = [f"/data/scan_000001/frame_{i:06d}.h5" for i in range(num_frames)]
    positions = np.stack([np.arange(num_frames) * 50e-9, np.zeros(num_frames)], 1)
    prep_config = PrepConfig(shape=case.roi)
    params = {"prep": prep_config.model_dump(mode="json"), "compression": case.compression}
    timer = StageTimer()
    logical = 0
    os.sync()
    with instrument_writer(timer, out_dir):
        t0 = time.perf_counter()
        book = FrameBook(num_frames=num_frames, chunk_frames=chunk_frames, buffer_chunks=1,
                         positions=positions)
        preparer = ChunkPreparer(prep_config, chunk_frames=chunk_frames)
        scan = Scan(book, timer.wrap("prepare", preparer))
        writer: PtydWriter | None = None
        for key in range(book.n_chunks):
            start = key * chunk_frames
            stop = min(start + chunk_frames, num_frames)
            with timer.stage("book.add"):
                for i in range(start, stop):
                    book.add(i, pool[i % len(pool)], source=sources[i])
            with timer.stage("scan.release"):
                chunk = scan.auto()
            with timer.stage("writer.chunk_file"):
                if writer is None:
                    meta = scan_meta(preparer.preparation, num_frames=num_frames,
                                     geometry=GeometryConfig(), label=case.name)
                    writer = PtydWriter(output, meta=meta, chunk_frames=chunk_frames,
                                        compression=case.compression, params=params)
                writer.write_chunk(chunk)
            logical += chunk.data.nbytes + chunk.weights.nbytes
        with timer.stage("writer.chunk_file"):
            writer.close("complete")
        seconds = time.perf_counter() - t0

    disk = sum(p.stat().st_size for p in out_dir.iterdir())
    first = np.stack([pool[i % len(pool)] for i in range(min(chunk_frames, num_frames))])
    reference = preparer.preparation.apply(first)
    check_output(output, reference)
    return RunResult(seconds, logical, disk, dict(timer.totals), reference)


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


def _write_all(fd: int, buffer: np.ndarray) -> None:
    """``os.write`` until every byte of ``buffer`` is written."""
    view = memoryview(buffer).cast("B")
    while view:
        view = view[os.write(fd, view):]


def run_raw(reference: tuple[np.ndarray, np.ndarray], *, num_frames: int, chunk_frames: int,
            out_dir: Path) -> float:
    """Seconds to write the same bytes as plain files, one per chunk, each fsynced."""
    data, weights = reference
    os.sync()
    t0 = time.perf_counter()
    for key, start in enumerate(range(0, num_frames, chunk_frames)):
        n = min(chunk_frames, num_frames - start)
        fd = os.open(out_dir / f"raw.{key:05d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data[:n])
            _write_all(fd, weights[:n])
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - t0


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
    raw_mbs: float

    @property
    def vs_raw(self) -> float:
        """flyprep's bandwidth (uncompressed bytes) over the raw write+fsync bandwidth."""
        return self.logical_mbs / self.raw_mbs

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
    flyprep runs with ``repeat`` raw write+fsync runs; print the medians and the median
    flyprep run's stage breakdown."""
    t0 = time.perf_counter()
    pool = make_pool(case, pool_size)
    print(f"\n== {case.name}: {num_frames} frames {case.raw_side}x{case.raw_side} "
          f"{case.raw_dtype} -> {case.roi}x{case.roi}, chunks of {chunk_frames}, "
          f"{case.compression} (pool of {pool_size} frames, {pool.nbytes / MB:.0f} MB, "
          f"generated in {time.perf_counter() - t0:.1f} s, untimed); "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    kwargs: dict[str, Any] = {"num_frames": num_frames, "chunk_frames": chunk_frames,
                              "out_dir": out_dir}
    warm_up = run_flyprep(case, pool, **kwargs)  # page cache, HDF5 filter loading
    clear(out_dir)
    run_raw(warm_up.reference, **kwargs)  # the first raw pass is reliably the slowest
    clear(out_dir)
    runs: list[RunResult] = []
    raw_seconds: list[float] = []
    for _ in range(repeat):
        runs.append(run_flyprep(case, pool, **kwargs))
        clear(out_dir)
        raw_seconds.append(run_raw(runs[-1].reference, **kwargs))
        clear(out_dir)

    result = sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]
    raw_s = float(np.median(raw_seconds))
    row = Row(case=case, fps=num_frames / result.seconds,
              logical_mbs=result.logical_bytes / MB / result.seconds,
              disk_mbs=result.disk_bytes / MB / result.seconds,
              disk_ratio=result.disk_bytes / result.logical_bytes,
              raw_mbs=result.logical_bytes / MB / raw_s)
    each_fps = " ".join(f"{num_frames / r.seconds:.0f}" for r in runs)
    each_raw = " ".join(f"{result.logical_bytes / MB / s:.0f}" for s in raw_seconds)
    print(f"flyprep   {result.seconds:7.2f} s  {row.fps:8.0f} frames/s  "
          f"{row.logical_mbs:7.0f} MB/s uncompressed ({result.logical_bytes / MB:.0f} MB)  "
          f"{row.disk_mbs:7.0f} MB/s on disk ({result.disk_bytes / MB:.0f} MB, "
          f"{row.disk_ratio:.1%})   [runs: {each_fps} frames/s]")
    print(f"raw       {raw_s:7.2f} s  {num_frames / raw_s:8.0f} frames/s  "
          f"{row.raw_mbs:7.0f} MB/s write+fsync of the same bytes   [runs: {each_raw} MB/s]")
    print(f"flyprep/raw {row.vs_raw:.3f}   goal: {case.goal} -> {row.met}")
    print(f"  {'stage (median run)':<20}{'s':>8}{'%':>7}{'us/frame':>10}")
    for name, what in STAGES:
        s = result.stages.get(name, 0.0)
        print(f"  {name:<20}{s:8.3f}{s / result.seconds:7.1%}"
              f"{s / num_frames * 1e6:10.1f}  {what}")
    rest = result.seconds - sum(result.stages.values())
    print(f"  {'(untracked)':<20}{rest:8.3f}{rest / result.seconds:7.1%}"
          f"{rest / num_frames * 1e6:10.1f}  loop overhead")
    return row


def print_table(rows: list[Row]) -> None:
    """The compact summary of every case."""
    head = (f"{'case':<17}{'frames/s':>9}{'MB/s unc':>10}{'MB/s disk':>10}{'disk/unc':>9}"
            f"{'raw MB/s':>9}{'fp/raw':>7}  {'goal':<22}{'met':>4}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r.case.name:<17}{r.fps:9.0f}{r.logical_mbs:10.0f}{r.disk_mbs:10.0f}"
              f"{r.disk_ratio:9.1%}{r.raw_mbs:9.0f}{r.vs_raw:7.3f}  {r.case.goal:<22}{r.met:>4}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames per case")
    parser.add_argument("--chunk-frames", type=int, default=100, help="frames per chunk file")
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
    args = parse_args(argv)
    out_dir = Path(tempfile.mkdtemp(prefix="flyprep-bench-", dir=args.dir)).absolute()
    free = shutil.disk_usage(out_dir).free
    print(f"scratch {out_dir} ({free / 1e9:.0f} GB free), h5py {h5py.version.version}, "
          f"HDF5 {h5py.version.hdf5_version}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"{plugin_build()}")
    try:
        rows = [bench_case(case, num_frames=args.frames, chunk_frames=args.chunk_frames,
                           pool_size=args.pool, repeat=args.repeat, out_dir=out_dir)
                for case in args.cases]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    print_table(rows)


if __name__ == "__main__":
    main()

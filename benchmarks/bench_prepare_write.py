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
directory ``fsync`` per publication), measured in the same run.

Whole-process cases (skipped with ``--no-command``): the same frames (the pool cycled, the
same ``--frames``) are written beforehand, untimed, as two scan directories in the scratch
directory: PtyPy's tutorial layout (``geometry.txt``, ``positions.txt`` naming each frame,
one ``ccd/frame_%06d.npy`` per frame) and HDF5 stack files of ``--chunk-frames`` frames in
``/entry/data/data``, chunked one frame per HDF5 chunk, uncompressed (as an Eiger writes
them), with a ``y x`` ``positions.txt``. Every file is then read once, so that the frames
sit in the page cache, and synced. The real command, ``python -m flyprep.cli prepare DIR -o
OUT --shape ROI --compression C --chunk-frames N --label CASE --no-progress`` (geometry from
``geometry.txt`` for ``.npy``, from ``--energy --distance --psize`` for HDF5), runs as a
child process importing the same flyprep as the benchmark; it is timed from just before the
process is spawned to its exit, so Python start-up, imports, discovery of the scan, reading
the files (from the page cache) and writing the output with its fsyncs are all included.
Same preparation and output config as the in-memory case, but the command writes chunks in
parts of its default size whatever ``--part-bytes`` says. Each command's output is checked
(return code, ``verify``, chunk 0 against the preparation of its raw frames) and removed,
untimed. Goal: each command at least ``COMMAND_FRACTION_GOAL`` (75 %) of the in-memory
frames/s measured in the same run.

Each case starts with an untimed warm-up of each kind of run, then alternates ``--repeat``
rounds of one in-memory flyprep run, one raw run and (unless ``--no-command``) one run of the
command on the ``.npy`` directory and one on the HDF5 directory, ``sync`` before each, and
reports medians (every run is printed too): on a VM the first pass through fresh page cache
or freshly freed blocks is several times slower than later ones. Other processes skew the
numbers; the load average is printed.

    python3 benchmarks/bench_prepare_write.py [--frames 2000] [--dir DIR] [--cases all]
                                              [--no-command]
"""

from __future__ import annotations

import argparse
import os
import shutil
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

import flyprep
from flyprep.config import PrepareConfig, parse_config
from flyprep.sim.example import ExampleScan
from flyprep.pipeline import PART_BYTES, ChunkPreparer, ReadyFrame, run_scan
from flyprep.ptyd import open_ptyd
from flyprep.ptyd.verify import verify
from flyprep.pipeline.frame_book import FrameBook, Scan
from flyprep.sources import discover
from flyprep.sources.scan_dir import parse_geometry

MB = 1e6
#: Uncompressed flyprep must reach this fraction of the raw write+fsync bandwidth.
RAW_FRACTION_GOAL = 0.85
#: bitshuffle-LZ4 must reach this many frames/s on the 256x256 output.
LZ4_FPS_GOAL = 3000.0
#: The whole ``flyprep prepare`` command must reach this fraction of the in-memory frames/s.
COMMAND_FRACTION_GOAL = 0.75
#: The geometry of every case (keV, metres, metres), as geometry.txt and options give it.
GEOMETRY = {"energy": 6.2, "distance": 7.0, "psize": 75e-6}
#: Where the HDF5 stack files hold their frames.
H5_DATASET = "/entry/data/data"


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
                         "geometry": dict(GEOMETRY),
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


def pool_frames(pool: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Frames ``[start, stop)`` of the scan (the pool cycled), as one C-ordered array."""
    return pool[np.arange(start, stop) % len(pool)]


def write_positions(path: Path, positions: np.ndarray, names: list[str] | None = None) -> None:
    """``y x`` per line in metres (exact float text), each after its frame file when named."""
    lines = [f"{y!r} {x!r}" for y, x in positions.tolist()]
    if names is not None:
        lines = [f"{name} {line}" for name, line in zip(names, lines)]
    path.write_text("\n".join(lines) + "\n")


def write_npy_scan(root: Path, pool: np.ndarray, *, num_frames: int) -> None:
    """PtyPy's tutorial layout: ``geometry.txt``, ``positions.txt`` naming each frame file,
    and one ``ccd/frame_%06d.npy`` per frame."""
    (root / "ccd").mkdir(parents=True)
    (root / "geometry.txt").write_text("".join(f"{k} {v!r}\n" for k, v in GEOMETRY.items()))
    names = [f"ccd/frame_{i:06d}.npy" for i in range(num_frames)]
    for i, name in enumerate(names):
        np.save(root / name, pool[i % len(pool)])
    write_positions(root / "positions.txt", scan_positions(num_frames), names)


def write_h5_scan(root: Path, pool: np.ndarray, *, num_frames: int, chunk_frames: int) -> None:
    """HDF5 stack files ``scan_data_%06d.h5`` (numbered from 1) of ``chunk_frames`` frames
    in :data:`H5_DATASET`, one frame per HDF5 chunk, uncompressed; ``y x`` positions.txt."""
    root.mkdir(parents=True)
    for k, start in enumerate(range(0, num_frames, chunk_frames), 1):
        block = pool_frames(pool, start, min(start + chunk_frames, num_frames))
        with h5py.File(root / f"scan_data_{k:06d}.h5", "w") as f:
            f.create_dataset(H5_DATASET, data=block, chunks=(1, *block.shape[1:]))
    write_positions(root / "positions.txt", scan_positions(num_frames))


def check_scan(root: Path, *, layout: str, num_frames: int) -> None:
    """Refuse to time a scan directory that does not discover as intended."""
    source = discover(root)
    if source.layout != layout or len(source.frames) != num_frames:
        sys.exit(f"{root}: discovered as {source.layout} with {len(source.frames)} frames, "
                 f"expected {layout} with {num_frames}")
    if layout == "ptypy" and parse_geometry(root / "geometry.txt") != GEOMETRY:
        sys.exit(f"{root / 'geometry.txt'}: reads as {parse_geometry(root / 'geometry.txt')}")


def read_all(root: Path) -> tuple[int, int]:
    """Read every file under ``root`` once (into the page cache): (files, bytes)."""
    buffer = bytearray(8 << 20)
    files = total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
        files += 1
    return files, total


def available_memory() -> int | None:
    """Bytes of memory available for new data (``MemAvailable``), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class Command:
    """One whole-process case: ``flyprep prepare`` on one scan directory."""

    layout: str  # "npy" or "h5", as printed
    argv: tuple[str, ...]
    output: Path

    def run(self, reference: tuple[np.ndarray, np.ndarray], *, cwd: Path) -> tuple[float, float]:
        """Seconds from spawning the command to its exit, and the seconds of its run
        alone (from its summary line: first frame pushed to the master complete); checks
        its output (untimed)."""
        env = child_env()
        os.sync()
        t0 = time.perf_counter()
        proc = subprocess.run(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, cwd=cwd)
        seconds = time.perf_counter() - t0
        out = proc.stdout.decode(errors="replace")
        if proc.returncode != 0:
            sys.exit(f"{' '.join(self.argv)}: exit code {proc.returncode}\n{out[-2000:]}"
                     f"{proc.stderr.decode(errors='replace')[-4000:]}")
        check_output(self.output, reference)
        found = re.search(r" missing, ([0-9.]+) s \(", out)
        if found is None:
            sys.exit(f"{' '.join(self.argv)}: no summary line in its output:\n{out[-2000:]}")
        return seconds, float(found.group(1))


def child_env() -> dict[str, str]:
    """This environment with the imported flyprep's parent directory first on PYTHONPATH,
    so that the command runs the flyprep this benchmark measures."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(flyprep.__file__).parents[1]), env.get("PYTHONPATH")) if p)
    return env


def byte_compile() -> None:
    """Compile the measured flyprep's modules to ``.pyc`` as ``pip install`` does: with
    ``PYTHONDONTWRITEBYTECODE`` set (as on some build machines) every command would compile
    them from source again."""
    import compileall

    if not compileall.compile_dir(Path(flyprep.__file__).parent, quiet=1):
        sys.exit("byte-compiling flyprep failed")


def check_child_flyprep(cwd: Path) -> None:
    """Refuse to time commands that would import another flyprep than this one."""
    proc = subprocess.run([sys.executable, "-c", "import flyprep; print(flyprep.__file__)"],
                          capture_output=True, text=True, env=child_env(), cwd=cwd)
    if proc.returncode != 0 or Path(proc.stdout.strip()) != Path(flyprep.__file__):
        sys.exit(f"the command would import flyprep from {proc.stdout.strip()!r} "
                 f"({proc.stderr.strip()}), not {flyprep.__file__}")


def make_commands(case: Case, pool: np.ndarray, *, num_frames: int, chunk_frames: int,
                  scan_root: Path, out_dir: Path) -> list[Command]:
    """Untimed: write the case's frames as an ``.npy`` and an HDF5 scan directory under
    ``scan_root``, check both, read every file once and sync; the two commands on them."""
    t0 = time.perf_counter()
    npy_dir, h5_dir = scan_root / "npy", scan_root / "h5"
    write_npy_scan(npy_dir, pool, num_frames=num_frames)
    write_h5_scan(h5_dir, pool, num_frames=num_frames, chunk_frames=chunk_frames)
    check_scan(npy_dir, layout="ptypy", num_frames=num_frames)
    check_scan(h5_dir, layout="hdf5", num_frames=num_frames)
    (npy_files, npy_bytes), (h5_files, h5_bytes) = read_all(npy_dir), read_all(h5_dir)
    os.sync()
    print(f"scan dirs {npy_files} files, {npy_bytes / MB:.0f} MB (.npy) and {h5_files} files, "
          f"{h5_bytes / MB:.0f} MB (HDF5) written, read once and synced in "
          f"{time.perf_counter() - t0:.1f} s (untimed)")
    available = available_memory()
    if available is not None and npy_bytes + h5_bytes > 0.8 * available:
        print(f"WARNING: the scan files ({(npy_bytes + h5_bytes) / MB:.0f} MB) may not all "
              f"stay in the page cache ({available / MB:.0f} MB available)")
    base = ["--shape", str(case.roi), "--compression", case.compression,
            "--chunk-frames", str(chunk_frames), "--label", case.name, "--no-progress"]
    geometry = ["--energy", repr(GEOMETRY["energy"]), "--distance", repr(GEOMETRY["distance"]),
                "--psize", repr(GEOMETRY["psize"])]
    return [Command(layout, (sys.executable, "-m", "flyprep.cli", "prepare", str(scan_dir),
                             "-o", str(out_dir / f"{case.name}-{layout}.ptyd"), *base, *extra),
                    out_dir / f"{case.name}-{layout}.ptyd")
            for layout, scan_dir, extra in (("npy", npy_dir, []), ("h5", h5_dir, geometry))]


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
    cmd_fps: dict[str, float]  # whole command's frames/s by layout ("npy", "h5"); {}: skipped

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

    def vs_mem(self, layout: str) -> float | None:
        """The whole command's frames/s on ``layout`` over the in-memory frames/s."""
        fps = self.cmd_fps.get(layout)
        return None if fps is None else fps / self.fps

    @property
    def cmd_met(self) -> str:
        """Whether both commands reach the goal ('-' when they were skipped)."""
        ratios = [self.vs_mem(layout) for layout in ("npy", "h5")]
        if any(r is None for r in ratios):
            return "-"
        return "yes" if min(r for r in ratios if r is not None) >= COMMAND_FRACTION_GOAL else "NO"


def bench_case(case: Case, *, num_frames: int, chunk_frames: int, pool_size: int,
               repeat: int, out_dir: Path, scan_root: Path | None) -> Row:
    """Generate the pool (and, with ``scan_root``, the scan directories the commands
    read), then after an untimed warm-up of each alternate ``repeat`` rounds of a flyprep
    run, a raw write+fsync run and each command; print medians and every run."""
    t0 = time.perf_counter()
    pool = make_pool(case, pool_size)
    print(f"\n== {case.name}: {num_frames} frames {case.raw_side}x{case.raw_side} "
          f"{case.raw_dtype} -> {case.roi}x{case.roi}, chunks of {chunk_frames}, "
          f"{case.compression} (pool of {pool_size} frames, {pool.nbytes / MB:.0f} MB, "
          f"generated in {time.perf_counter() - t0:.1f} s, untimed); "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    kwargs: dict[str, Any] = {"num_frames": num_frames, "chunk_frames": chunk_frames}
    commands = [] if scan_root is None else make_commands(
        case, pool, scan_root=scan_root, out_dir=out_dir, **kwargs)
    warm_up = run_flyprep(case, pool, out_dir=out_dir, **kwargs)  # page cache, plugins
    clear(out_dir)
    run_raw(warm_up, out_dir=out_dir)
    clear(out_dir)
    for command in commands:
        command.run(warm_up.reference, cwd=out_dir)
        clear(out_dir)
    runs: list[RunResult] = []
    raw_seconds: list[float] = []
    cmd_seconds: dict[str, list[tuple[float, float]]] = {c.layout: [] for c in commands}
    for _ in range(repeat):
        runs.append(run_flyprep(case, pool, out_dir=out_dir, **kwargs))
        clear(out_dir)
        raw_seconds.append(run_raw(runs[-1], out_dir=out_dir))
        clear(out_dir)
        for command in commands:
            cmd_seconds[command.layout].append(command.run(warm_up.reference, cwd=out_dir))
            clear(out_dir)
    if scan_root is not None:
        shutil.rmtree(scan_root)
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
              raw_disk_mbs=disk / MB / raw_s, prep_fps=num_frames / prep_s,
              cmd_fps={k: num_frames / float(np.median([w for w, _ in v]))
                       for k, v in cmd_seconds.items()})
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
    if commands:
        print_commands(row, cmd_seconds, num_frames=num_frames)
    return row


def print_commands(row: Row, cmd_seconds: dict[str, list[tuple[float, float]]], *,
                   num_frames: int) -> None:
    """The whole-command lines of a case: medians, every run, ratios to in-memory, and
    the command's own run (its summary line) apart from its start-up and exit."""
    for layout, times in cmd_seconds.items():
        each = " ".join(f"{num_frames / s:.0f}" for s, _ in times)
        median_s = float(np.median([s for s, _ in times]))
        run_s = float(np.median([r for _, r in times]))
        rest_s = float(np.median([s - r for s, r in times]))
        print(f"cmd {layout:<5} {median_s:7.2f} s  {row.cmd_fps[layout]:8.0f} frames/s  "
              f"{row.vs_mem(layout):7.3f} of in-memory  (flyprep prepare on "
              f"{'.npy' if layout == 'npy' else 'HDF5'} files in the page cache, process "
              f"start to exit)   [runs: {each} frames/s]")
        mem_s = num_frames / row.fps
        print(f"          its run {run_s:.2f} s ({num_frames / run_s:.0f} frames/s, "
              f"{num_frames / run_s / row.fps:.3f} of in-memory); start-up, listing and "
              f"exit {rest_s:.2f} s: with a run at the in-memory rate the command would be "
              f"at most {mem_s / (mem_s + rest_s):.3f} of it")
    ratios = "  ".join(f"{layout}/mem {row.vs_mem(layout):.3f}" for layout in cmd_seconds)
    print(f"{ratios}   goal: >= {COMMAND_FRACTION_GOAL:.0%} of in-memory -> {row.cmd_met}")


def print_table(rows: list[Row]) -> None:
    """The compact summary of every case; the command columns' ``met`` is the whole-command
    goal (both commands >= COMMAND_FRACTION_GOAL of the in-memory frames/s)."""
    head = (f"{'case':<17}{'frames/s':>9}{'prep f/s':>9}{'MB/s prep':>10}{'MB/s disk':>10}"
            f"{'disk/prep':>10}{'raw MB/s':>9}{'fp/raw':>7}  {'goal':<22}{'met':>4}"
            f"{'cmd npy f/s':>13}{'npy/mem':>8}{'cmd h5 f/s':>12}{'h5/mem':>7}{'met':>4}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r.case.name:<17}{r.fps:9.0f}{r.prep_fps:9.0f}{r.logical_mbs:10.0f}"
              f"{r.disk_mbs:10.0f}{r.disk_ratio:10.1%}{r.raw_disk_mbs:9.0f}{r.vs_raw:7.3f}  "
              f"{r.case.goal:<22}{r.met:>4}{_number(r.cmd_fps.get('npy'), 13, '.0f')}"
              f"{_number(r.vs_mem('npy'), 8, '.3f')}{_number(r.cmd_fps.get('h5'), 12, '.0f')}"
              f"{_number(r.vs_mem('h5'), 7, '.3f')}{r.cmd_met:>4}")
    if any(r.cmd_fps for r in rows):
        print(f"cmd: the whole flyprep prepare process on files in the page cache; "
              f"goal >= {COMMAND_FRACTION_GOAL:.0%} of in-memory frames/s")


def _number(value: float | None, width: int, spec: str) -> str:
    """``value`` right-aligned in ``width`` columns, '-' when there is none."""
    return f"{'-' if value is None else format(value, spec):>{width}}"


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
    parser.add_argument("--no-command", action="store_true",
                        help="skip the whole-process cases (flyprep prepare on .npy and HDF5 "
                             "scan directories)")
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
    scratch = Path(tempfile.mkdtemp(prefix="flyprep-bench-", dir=args.dir)).absolute()
    out_dir = scratch / "out"
    out_dir.mkdir()
    free = shutil.disk_usage(scratch).free
    print(f"scratch {scratch} ({free / 1e9:.0f} GB free), h5py {h5py.version.version}, "
          f"HDF5 {h5py.version.hdf5_version}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"{plugin_build()}; chunks written in parts of {part_bytes_option} bytes"
          + ("" if args.no_command or part_bytes_option == PART_BYTES else
             f" (the commands: of their default {PART_BYTES})"))
    try:
        if not args.no_command:
            byte_compile()
            check_child_flyprep(out_dir)
            print(f"commands: {sys.executable} -m flyprep.cli prepare, flyprep from "
                  f"{Path(flyprep.__file__).parent}")
        rows = [bench_case(case, num_frames=args.frames, chunk_frames=args.chunk_frames,
                           pool_size=args.pool, repeat=args.repeat, out_dir=out_dir,
                           scan_root=None if args.no_command else scratch / "scans" / case.name)
                for case in args.cases]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(rows)


if __name__ == "__main__":
    main()

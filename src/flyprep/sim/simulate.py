"""``flyprep simulate DIR``: write a scan *while it is being measured*, with the habits of
real detector and DAQ writers, so a watcher (the daemon) can be tested against them.

What lands in ``DIR``, in order:

1. ``flyprep-scan.toml`` (the scan description: ``label``, ``num_frames``, ``[geometry]``
   ``energy``/``distance``/``psize``), written to a temporary name and renamed into place.
2. The layout's fixed files: ``geometry.txt`` for the PtyPy layout (written first, plain).
3. One frame per ``1 / rate_hz`` seconds, scheduled from the start time (no drift):

   * **PtyPy layout** (``ccd/diffraction_NNNN.npy``): most frames are written under the
     temporary name ``ccd/.diffraction_NNNN.npy.part`` (:data:`TEMP_PREFIX` +
     name + :data:`TEMP_SUFFIX`; it matches neither ``*.npy`` nor a ``diffraction_*`` glob)
     and then renamed into place with :func:`os.replace`. A seeded fraction
     (``partial_fraction``) is instead written *in place* in ``partial_pieces`` pieces with
     short pauses between them, so a reader reacting to "created" sees a truncated ``.npy``
     file; only the close after the last write means the frame is complete. After each
     frame its line ``ccd/diffraction_NNNN.npy <y> <x>`` is appended to ``positions.txt``
     and flushed.
   * **HDF5 layout** (``scan_data_NNNNNN.h5``, ``/entry/data/data``): stack files of
     ``frames_per_file`` frames, each opened when its first frame comes, grown by one frame
     per frame (and flushed), and closed after its last frame: a stack is complete only
     once closed. ``positions.txt`` gets one ``y x`` line per frame, flushed.

   The frames are exactly those of :class:`flyprep.example.ExampleScan` with the same
   ``num_frames``, ``frame_side`` and ``seed``; so are the positions.
4. Optionally (``apx=True``) an AstroPix ``.apx`` file (:data:`APX_NAME`) written alongside:
   ``readouts_per_frame`` AstroPix4 readouts per frame period, through a buffer whose bytes
   reach the disk in pieces of 4-8 KiB (``apx_piece``) cut anywhere (mid-header,
   mid-prefix, mid-payload), the way the DAQ's unflushed buffered file does. Readouts are
   synthesised AstroPix4 hits, or the payloads of an existing file (``apx_source``) cycled
   with new ids and timestamps. The rest of the buffer is written when the scan ends.
5. Optionally (``end_marker=True``) the empty file :data:`END_MARKER`, after everything
   else is closed. A scan stopped early (``stop_event``) gets no end marker.

:func:`simulate_scan` is a plain function of picklable arguments: run it directly, in a
:class:`threading.Thread` or in a :class:`multiprocessing.Process`; ``stop_event`` may be
a ``threading.Event`` or a ``multiprocessing.Event``.
"""

from __future__ import annotations

import io
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from ..errors import ConfigError, OutputError
from .example import ExampleGeometry, ExampleScan

SCAN_TOML = "flyprep-scan.toml"
END_MARKER = "flyprep-scan.done"  # the daemon's default end marker (config watch.end_marker)
APX_NAME = "astropix.apx"
TEMP_PREFIX = "."
TEMP_SUFFIX = ".part"
HDF5_DATASET = "/entry/data/data"
LAYOUTS = ("ptypy", "hdf5")
DEFAULT_GEOMETRY = ExampleGeometry()


class StopEvent(Protocol):
    """What ``stop_event`` must offer (``threading.Event`` and ``multiprocessing.Event`` do)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


@dataclass(frozen=True)
class SimulationResult:
    """What one simulated scan left on disk."""

    root: Path
    layout: str
    num_frames: int  # planned
    frames_written: int
    elapsed_s: float
    stopped: bool  # True if ``stop_event`` ended the scan early
    temp_renames: int  # PtyPy frames written under a temporary name, then renamed
    partial_frames: tuple[int, ...]  # PtyPy frames written in place in pieces
    apx_path: Path | None = None
    apx_records: int = 0
    apx_pieces: int = 0  # separate writes+flushes that put the .apx bytes on disk
    files: tuple[Path, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------- AstroPix


def _reverse_bits(byte: int) -> int:
    return int(f"{byte:08b}"[::-1], 2)


_REVERSED = bytes(_reverse_bits(b) for b in range(256))


def encode_hit(chip: int, row: int, column: int, dec1: int, tot_ticks: int) -> bytes:
    """The 8 wire bytes of one AstroPix4 hit (``/work/shared/formats/apx.md``): ``dec1`` is
    the first 17-bit timestamp, ``tot_ticks`` the time over threshold in 20 MHz ticks."""
    dec2 = (dec1 + tot_ticks) % (1 << 17)
    g1, g2 = dec1 ^ (dec1 >> 1), dec2 ^ (dec2 >> 1)
    w = ((chip & 31) << 59 | 7 << 56 | (row & 31) << 51 | (column & 31) << 46
         | (g1 >> 3) << 31 | (g1 & 7) << 28 | (g2 >> 3) << 8 | (g2 & 7) << 5)
    return w.to_bytes(8, "big").translate(_REVERSED)


def synth_payload(rng: random.Random) -> bytes:
    """A realistic AstroPix4 readout: idle bytes (0xbc) around 1-3 hits, padding stripped."""
    parts = [b"\xbc" * rng.randint(1, 3)]
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        parts.append(encode_hit(rng.randrange(2), rng.randrange(32), rng.randrange(32),
                                rng.randrange(1 << 17), rng.randint(20, 2000)))
        parts.append(b"\xbc" * rng.randint(2, 8))
    return b"".join(parts)


class _Payloads:
    """Endless readout payloads: an existing file's, cycled, or synthesised ones."""

    def __init__(self, source: Path | None, rng: random.Random, limit: int = 2000) -> None:
        self._rng = rng
        self._cycle: list[bytes] = []
        if source is not None:
            from ..apx.format import open_apx

            with open_apx(source) as reader:
                for batch in reader.batches(max_records=limit):
                    self._cycle = [r.payload for r in batch][:limit]
                    break
            if not self._cycle:
                raise ConfigError(f"apx_source {source}: no readouts to cycle")
        self._i = 0

    def __next__(self) -> bytes:
        if self._cycle:
            payload = self._cycle[self._i % len(self._cycle)]
            self._i += 1
            return payload
        return synth_payload(self._rng)


class ChoppyWriter:
    """Bytes reach the file in pieces of ``piece`` = (lo, hi) bytes cut anywhere, as through
    a buffered file that is never flushed on purpose; :meth:`close` writes the rest."""

    def __init__(self, path: Path, rng: random.Random, piece: tuple[int, int] = (4096, 8192),
                 on_piece: Callable[[int], None] | None = None) -> None:
        self._file: BinaryIO = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in close()
        self._rng = rng
        self._piece = piece
        self._buf = bytearray()
        self._next = rng.randint(*piece)
        self._on_piece = on_piece
        self.pieces = 0
        self.written = 0

    def write(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= self._next:
            self._emit(self._next)
            self._next = self._rng.randint(*self._piece)

    def _emit(self, n: int) -> None:
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        self._file.write(chunk)
        self.pieces += 1
        self.written += len(chunk)
        if self._on_piece is not None:
            self._on_piece(self.written)

    def close(self) -> None:
        if self._buf:
            self._emit(len(self._buf))
        self._file.close()


# --------------------------------------------------------------------------- simulator


class Simulator:
    """One simulated scan in ``root``; :meth:`run` writes it (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str], *, layout: str = "ptypy",
                 num_frames: int = 200, frame_side: int = 256, rate_hz: float = 10.0,
                 seed: int = 0, label: str | None = None, frames_per_file: int = 100,
                 partial_fraction: float = 0.2, partial_pieces: int = 3,
                 partial_pause_s: float = 0.002, apx: bool = False,
                 readouts_per_frame: int = 20, apx_source: str | os.PathLike[str] | None = None,
                 apx_piece: tuple[int, int] = (4096, 8192), end_marker: bool = True,
                 geometry: ExampleGeometry = DEFAULT_GEOMETRY,
                 stop_event: StopEvent | None = None,
                 on_frame: Callable[[int], None] | None = None) -> None:
        if layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if num_frames < 1:
            raise ConfigError(f"num_frames must be at least 1, got {num_frames}")
        if frame_side < 8:
            raise ConfigError(f"frame_side must be at least 8, got {frame_side}")
        if rate_hz < 0:
            raise ConfigError(f"rate_hz must be >= 0 (0: as fast as possible), got {rate_hz}")
        if frames_per_file < 1:
            raise ConfigError(f"frames_per_file must be at least 1, got {frames_per_file}")
        if not 0.0 <= partial_fraction <= 1.0:
            raise ConfigError(f"partial_fraction must be in [0, 1], got {partial_fraction}")
        if partial_pieces < 2:
            raise ConfigError(f"partial_pieces must be at least 2, got {partial_pieces}")
        if readouts_per_frame < 0:
            raise ConfigError(f"readouts_per_frame must be >= 0, got {readouts_per_frame}")
        lo, hi = apx_piece
        if not 1 <= lo <= hi:
            raise ConfigError(f"apx_piece must be (lo, hi) with 1 <= lo <= hi, got {apx_piece}")
        self.root = Path(root)
        self.layout = layout
        self.num_frames = num_frames
        self.frame_side = frame_side
        self.rate_hz = float(rate_hz)
        self.seed = seed
        self.label = label or self.root.name or "scan"
        self.frames_per_file = frames_per_file
        self.partial_fraction = partial_fraction
        self.partial_pieces = partial_pieces
        self.partial_pause_s = partial_pause_s
        self.apx = apx
        self.readouts_per_frame = readouts_per_frame
        self.apx_source = None if apx_source is None else Path(apx_source)
        self.apx_piece = (lo, hi)
        self.end_marker = end_marker
        self.geometry = geometry
        self.stop_event = stop_event
        self.on_frame = on_frame

    # ---- helpers

    def _stopped(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()

    def _sleep_until(self, deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay <= 0:
            return
        if self.stop_event is not None:
            self.stop_event.wait(delay)
        else:
            time.sleep(delay)

    def _write_atomic_text(self, name: str, text: str) -> Path:
        path = self.root / name
        tmp = path.with_name(TEMP_PREFIX + path.name + TEMP_SUFFIX)
        tmp.write_text(text)
        os.replace(tmp, path)
        return path

    def scan_toml(self) -> str:
        """The text of ``flyprep-scan.toml``."""
        g = self.geometry
        label = self.label.replace("\\", "\\\\").replace('"', '\\"')
        return (f'label = "{label}"\nnum_frames = {self.num_frames}\n\n[geometry]\n'
                f"energy = {g.energy!r}\ndistance = {g.distance!r}\npsize = {g.psize!r}\n")

    # ---- run

    def run(self) -> SimulationResult:
        """Write the scan, pacing frames at ``rate_hz``; returns what was written."""
        root = self.root
        if root.exists() and any(root.iterdir()):
            raise OutputError(f"{root}: directory is not empty; simulate into a new directory")
        root.mkdir(parents=True, exist_ok=True)
        rng = random.Random(self.seed)
        scan = ExampleScan(num_frames=self.num_frames, frame_side=self.frame_side, seed=self.seed)
        files: list[Path] = [self._write_atomic_text(SCAN_TOML, self.scan_toml())]
        apx_writer: ChoppyWriter | None = None
        payloads: _Payloads | None = None
        apx_path: Path | None = None
        if self.apx:
            from ..apx.format import ApxHeader

            payloads = _Payloads(self.apx_source, random.Random(self.seed + 1))
            apx_path = root / APX_NAME
            apx_writer = ChoppyWriter(apx_path, random.Random(self.seed + 2), self.apx_piece)
            header = ApxHeader(4000, {"creator": "flyprep simulate",
                                      "configuration": {"label": self.label},
                                      "args": {"seed": self.seed, "rate_hz": self.rate_hz}})
            apx_writer.write(header.preamble_bytes())
        frames = _PtypyFrames(self, rng) if self.layout == "ptypy" else _Hdf5Frames(self)
        apx_records = 0
        written = 0
        t0 = time.monotonic()
        period = 1.0 / self.rate_hz if self.rate_hz > 0 else 0.0
        try:
            files.extend(frames.start())
            for i in range(self.num_frames):
                if self._stopped():
                    break
                self._sleep_until(t0 + i * period)
                if self._stopped():
                    break
                frame = scan.frames(i, i + 1)[0]
                frames.write(i, frame, scan.positions[i])
                written += 1
                if apx_writer is not None and payloads is not None:
                    for _ in range(self.readouts_per_frame):
                        payload = next(payloads)
                        apx_writer.write(_record(apx_records, time.time_ns(), payload))
                        apx_records += 1
                if self.on_frame is not None:
                    self.on_frame(i)
        finally:
            files.extend(frames.close())
            if apx_writer is not None and apx_path is not None:
                apx_writer.close()
                files.append(apx_path)
        stopped = written < self.num_frames
        if self.end_marker and not stopped:
            (root / END_MARKER).touch()
            files.append(root / END_MARKER)
        return SimulationResult(
            root=root, layout=self.layout, num_frames=self.num_frames, frames_written=written,
            elapsed_s=time.monotonic() - t0, stopped=stopped,
            temp_renames=getattr(frames, "temp_renames", 0),
            partial_frames=tuple(getattr(frames, "partial_frames", ())),
            apx_path=apx_path, apx_records=apx_records,
            apx_pieces=apx_writer.pieces if apx_writer is not None else 0,
            files=tuple(dict.fromkeys(files)))


def _record(readout_id: int, timestamp: int, payload: bytes) -> bytes:
    """One record's exact bytes as the DAQ writes them (its readout counter wraps at
    2**32, as the hardware's)."""
    from ..apx.format import record_bytes

    return record_bytes(readout_id % (1 << 32), timestamp, payload)


class _PtypyFrames:
    """PtyPy tutorial layout: geometry first, .npy frames via temp+rename or in pieces."""

    def __init__(self, sim: Simulator, rng: random.Random) -> None:
        self.sim = sim
        self.rng = rng
        self.temp_renames = 0
        self.partial_frames: list[int] = []
        self._positions: io.TextIOWrapper | None = None

    def start(self) -> list[Path]:
        root, g = self.sim.root, self.sim.geometry
        (root / "geometry.txt").write_text(
            f"distance {g.distance:.6e}\nenergy {g.energy:.6e}\n"
            f"psize {g.psize:.6e}\nshape {min(g.shape, self.sim.frame_side)}\n")
        (root / "ccd").mkdir(exist_ok=True)
        self._positions = open(root / "positions.txt", "w")  # noqa: SIM115 - closed in close()
        return [root / "geometry.txt", root / "positions.txt"]

    def write(self, i: int, frame: np.ndarray, pos: np.ndarray) -> None:
        name = f"ccd/diffraction_{i:04d}.npy"
        path = self.sim.root / name
        buf = io.BytesIO()
        np.save(buf, frame)
        data = buf.getvalue()
        if self.rng.random() < self.sim.partial_fraction:
            self.partial_frames.append(i)
            cuts = sorted(self.rng.sample(range(1, len(data)), self.sim.partial_pieces - 1))
            with open(path, "wb", buffering=0) as f:
                for k, (a, b) in enumerate(zip([0, *cuts], [*cuts, len(data)])):
                    if k:
                        time.sleep(self.sim.partial_pause_s)
                    f.write(data[a:b])
        else:
            tmp = path.with_name(TEMP_PREFIX + path.name + TEMP_SUFFIX)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            self.temp_renames += 1
        assert self._positions is not None
        self._positions.write(f"{name} {pos[0]:.6e} {pos[1]:.6e}\n")
        self._positions.flush()

    def close(self) -> list[Path]:
        if self._positions is not None:
            self._positions.close()
        return []


class _Hdf5Frames:
    """HDF5 layout: stack files grown frame by frame, each complete once closed."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self._file: Any = None
        self._files: list[Path] = []
        self._positions: io.TextIOWrapper | None = None

    def start(self) -> list[Path]:
        self._positions = open(self.sim.root / "positions.txt", "w")  # noqa: SIM115
        return [self.sim.root / "positions.txt"]

    def write(self, i: int, frame: np.ndarray, pos: np.ndarray) -> None:
        import h5py

        per = self.sim.frames_per_file
        slot = i % per
        if slot == 0:
            self._close_file()
            path = self.sim.root / f"scan_data_{i // per + 1:06d}.h5"
            self._file = h5py.File(path, "w")
            n = self.sim.frame_side
            self._file.create_dataset(HDF5_DATASET, shape=(0, n, n), maxshape=(None, n, n),
                                      chunks=(1, n, n), dtype=frame.dtype)
            self._files.append(path)
        dset = self._file[HDF5_DATASET]
        dset.resize(slot + 1, axis=0)
        dset[slot] = frame
        self._file.flush()
        if slot == per - 1:
            self._close_file()
        assert self._positions is not None
        self._positions.write(f"{pos[0]:.6e} {pos[1]:.6e}\n")
        self._positions.flush()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> list[Path]:
        self._close_file()
        if self._positions is not None:
            self._positions.close()
        return list(self._files)


def simulate_scan(root: str | os.PathLike[str], *, layout: str = "ptypy", num_frames: int = 200,
                  frame_side: int = 256, rate_hz: float = 10.0, seed: int = 0,
                  stop_event: StopEvent | None = None, end_marker: bool = True,
                  apx: bool = False, **options: Any) -> SimulationResult:
    """Write a simulated scan into ``root`` (new or empty); see :class:`Simulator` for the
    other ``options`` (``label``, ``frames_per_file``, ``partial_fraction``,
    ``partial_pieces``, ``partial_pause_s``, ``readouts_per_frame``, ``apx_source``,
    ``apx_piece``, ``geometry``, ``on_frame``)."""
    return Simulator(root, layout=layout, num_frames=num_frames, frame_side=frame_side,
                     rate_hz=rate_hz, seed=seed, stop_event=stop_event, end_marker=end_marker,
                     apx=apx, **options).run()

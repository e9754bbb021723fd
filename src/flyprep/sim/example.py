"""A synthetic but realistic ptychography scan: far-field patterns of a probe scanning an
object along a spiral, with Poisson noise, written in either input layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import h5py
import numpy as np

Layout = Literal["ptypy", "hdf5"]


@dataclass(frozen=True)
class ExampleGeometry:
    """Geometry of the example scan, in PtyPy's units (keV, metres)."""

    energy: float = 6.2
    distance: float = 7.0
    psize: float = 172e-6
    shape: int = 128


class ExampleScan:
    """Generates diffraction frames of a fixed random object, one chunk at a time."""

    def __init__(self, *, num_frames: int = 200, frame_side: int = 256, photons: float = 1e8,
                 seed: int = 0, dtype: str = "int32") -> None:
        self.num_frames = num_frames
        self.frame_side = frame_side
        self.dtype = np.dtype(dtype)
        rng = np.random.default_rng(seed)
        n = frame_side
        yy, xx = np.indices((n, n)) - n / 2
        probe = ((yy**2 + xx**2) < (n / 6) ** 2).astype(np.complex128)
        probe *= np.sqrt(photons / np.abs(probe).sum() ** 1)
        self.probe = probe
        # Spiral positions in pixels, then metres with a 50 nm object pixel.
        k = np.arange(num_frames)
        r = 3.0 * np.sqrt(k)
        phi = k * 2.399963  # golden angle
        self.pixel_positions = np.stack([r * np.sin(phi), r * np.cos(phi)], 1)
        self.positions = self.pixel_positions * 50e-9
        extent = int(np.ceil(np.abs(self.pixel_positions).max())) * 2 + n + 2
        phase = rng.standard_normal((extent // 4 + 1, extent // 4 + 1))
        phase = np.kron(phase, np.ones((4, 4)))[:extent, :extent]
        self.obj = np.exp(0.5j * phase) * (0.8 + 0.2 * rng.random((extent, extent)))
        self._rng = rng
        self._origin = extent // 2 - n // 2

    def frames(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as an (n, side, side) array."""
        n = self.frame_side
        out = np.empty((stop - start, n, n), self.dtype)
        for j, i in enumerate(range(start, stop)):
            py, px = np.round(self.pixel_positions[i]).astype(int) + self._origin
            exit_wave = self.probe * self.obj[py:py + n, px:px + n]
            intensity = np.abs(np.fft.fftshift(np.fft.fft2(exit_wave, norm="ortho"))) ** 2
            out[j] = self._rng.poisson(intensity)
        return out

    def iter_chunks(self, chunk: int = 50) -> Iterator[tuple[int, np.ndarray]]:
        """``(first index, frames)`` blocks covering the whole scan."""
        for start in range(0, self.num_frames, chunk):
            yield start, self.frames(start, min(start + chunk, self.num_frames))


def write_example(root: str | Path, *, layout: Layout = "ptypy", num_frames: int = 200,
                  frame_side: int = 256, geometry: ExampleGeometry = ExampleGeometry(),
                  seed: int = 0) -> Path:
    """Write a finished example scan into ``root`` (created) and return it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    scan = ExampleScan(num_frames=num_frames, frame_side=frame_side, seed=seed)
    if layout == "ptypy":
        (root / "ccd").mkdir(exist_ok=True)
        (root / "geometry.txt").write_text(
            f"distance {geometry.distance:.6e}\nenergy {geometry.energy:.6e}\n"
            f"psize {geometry.psize:.6e}\nshape {min(geometry.shape, frame_side)}\n")
        lines = []
        for start, block in scan.iter_chunks():
            for j, frame in enumerate(block):
                name = f"ccd/diffraction_{start + j:04d}.npy"
                np.save(root / name, frame)
                y, x = scan.positions[start + j]
                lines.append(f"{name} {y:.6e} {x:.6e}")
        (root / "positions.txt").write_text("\n".join(lines) + "\n")
    else:
        per_file = 100
        for start in range(0, num_frames, per_file):
            stop = min(start + per_file, num_frames)
            with h5py.File(root / f"scan_data_{start // per_file + 1:06d}.h5", "w") as f:
                f.create_dataset("/entry/data/data", data=scan.frames(start, stop),
                                 chunks=(1, frame_side, frame_side))
        np.savetxt(root / "positions.txt", scan.positions, fmt="%.6e")
    return root

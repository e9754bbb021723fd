"""How chunk datasets are stored: filters, and frames written straight into HDF5 chunks.

Stacks are stored one frame per HDF5 chunk ``(1, H, W)``, which is how PtyPy reads them.
Frames are handed to HDF5 as finished chunks (``write_direct_chunk``), bypassing its
filter pipeline: uncompressed frames as they are, bitshuffle-LZ4 frames compressed by the
``bitshuffle`` package (several times faster than the same filter run inside HDF5), and
weights deflated once per distinct mask, since nearly every frame shares the same one.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import h5py
import numpy as np

from ..errors import OutputError

COMPRESSIONS = ("none", "gzip", "lzf", "bitshuffle-lz4")
WEIGHTS_DEFLATE_LEVEL = 1
_BSHUF_BLOCK_BYTES = 8192  # bitshuffle's default block: 8 KiB of elements


class DataStorage:
    """Writes ``data`` stacks with one compression; built once per writer."""

    def __init__(self, compression: str, level: int = 4) -> None:
        if compression not in COMPRESSIONS:
            raise OutputError(f"unknown compression {compression!r}; expected one of {COMPRESSIONS}")
        self.compression = compression
        self.level = level
        self.filters: dict[str, Any] = {}
        self._bitshuffle = None
        if compression == "gzip":
            self.filters = {"compression": "gzip", "compression_opts": level}
        elif compression == "lzf":
            self.filters = {"compression": "lzf"}
        elif compression == "bitshuffle-lz4":
            try:
                import hdf5plugin
            except ImportError as exc:
                raise OutputError("compression 'bitshuffle-lz4' needs hdf5plugin: "
                                  "pip install 'flyprep[compression]'") from exc
            self.filters = dict(hdf5plugin.Bitshuffle(cname="lz4"))
            try:
                import bitshuffle
            except ImportError:  # HDF5 runs the filter itself: correct, slower
                bitshuffle = None
            self._bitshuffle = bitshuffle

    def encode(self, frames: np.ndarray, skip: np.ndarray | None = None) -> list[Any] | None:
        """Each frame as a finished HDF5 chunk (None for frames in ``skip``, which are left
        unwritten and read back as zeros), or None when HDF5's own filter must run (gzip,
        lzf, bitshuffle without the ``bitshuffle`` package). CPU only: safe to call from
        another thread than the one writing the file."""
        if self.compression in ("gzip", "lzf") or (
                self.compression == "bitshuffle-lz4" and self._bitshuffle is None):
            return None
        frames = np.ascontiguousarray(frames)
        n, h, w = frames.shape
        keep = np.ones(n, bool) if skip is None else ~np.asarray(skip, bool)
        if self._bitshuffle is None:
            return [frames[i] if keep[i] else None for i in range(n)]
        block = _BSHUF_BLOCK_BYTES // frames.itemsize
        header = struct.pack(">QI", h * w * frames.itemsize, block * frames.itemsize)
        compress = self._bitshuffle.compress_lz4
        return [header + compress(frames[i], block).tobytes() if keep[i] else None
                for i in range(n)]

    def create(self, group: h5py.Group, name: str, shape: tuple[int, int, int],
               dtype: np.dtype) -> h5py.Dataset:
        """An empty ``group[name]`` stack of ``shape`` (n, H, W), one frame per HDF5 chunk:
        frames never written read back as zeros."""
        return group.create_dataset(name, shape=shape, dtype=dtype,
                                    chunks=(1, *shape[1:]), **self.filters)

    def write_frames(self, dset: h5py.Dataset, start: int, frames: np.ndarray,
                     encoded: list[Any] | None = None) -> None:
        """Store ``frames`` (m, H, W) as frames ``[start, start + m)`` of ``dset``, from
        ``encoded`` when given (the result of :meth:`encode`), else encoding here."""
        if encoded is None:
            encoded = self.encode(frames)
        if encoded is None:
            dset[start:start + frames.shape[0]] = frames
            return
        write = dset.id.write_direct_chunk
        for i, payload in enumerate(encoded):
            if payload is not None:
                write((start + i, 0, 0), payload)

    def write(self, group: h5py.Group, name: str, frames: np.ndarray,
              encoded: list[Any] | None = None) -> h5py.Dataset:
        """Create ``group[name]`` holding ``frames`` (n, H, W), from ``encoded`` when given
        (the result of :meth:`encode`), else encoding here."""
        dset = self.create(group, name, frames.shape, frames.dtype)
        self.write_frames(dset, 0, frames, encoded)
        return dset


def encode_weights(weights: np.ndarray, skip: np.ndarray | None = None) -> list[bytes | None]:
    """Each frame's mask deflated (zlib, as HDF5's deflate filter stores it), compressing
    each distinct mask of the chunk once: nearly every frame shares the same one. Frames
    in ``skip`` (all False) get None: left unwritten, they read back as False."""
    n = weights.shape[0]
    flat = np.ascontiguousarray(weights).reshape(n, -1)
    keep = np.ones(n, bool) if skip is None else ~np.asarray(skip, bool)
    ref = int(np.argmax(keep)) if keep.any() else 0
    like_ref = (flat == flat[ref]).all(axis=1)
    first = zlib.compress(flat[ref].tobytes(), WEIGHTS_DEFLATE_LEVEL)
    others: dict[bytes, bytes] = {}
    out: list[bytes | None] = []
    for i in range(n):
        if not keep[i]:
            out.append(None)
            continue
        if like_ref[i]:
            out.append(first)
            continue
        raw = flat[i].tobytes()
        payload = others.get(raw)
        if payload is None:
            payload = others[raw] = zlib.compress(raw, WEIGHTS_DEFLATE_LEVEL)
        out.append(payload)
    return out


def write_weights(group: h5py.Group, weights: np.ndarray,
                  encoded: list[bytes | None] | None = None) -> h5py.Dataset:
    """Create ``group['weights']`` (bool, deflate: every HDF5 reads it) from the masks'
    :func:`encode_weights` payloads."""
    payloads = encode_weights(weights) if encoded is None else encoded
    dset = group.create_dataset("weights", shape=weights.shape, dtype=bool,
                                chunks=(1, *weights.shape[1:]),
                                compression="gzip", compression_opts=WEIGHTS_DEFLATE_LEVEL)
    write = dset.id.write_direct_chunk
    for i, payload in enumerate(payloads):
        if payload is not None:
            write((i, 0, 0), payload)
    return dset

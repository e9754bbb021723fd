"""A positions file that is still being written: read what is complete, again and again.

The acquisition appends one line per frame (``y x``, or PtyPy's ``<frame file> y x``) or
grows an HDF5 dataset of shape (n, 2). :class:`GrowingPositions` reads only what was
added since its last read, never a line without its newline, and starts over if the file
is replaced or shrinks. Errors are :class:`InputError` naming the file and the line.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np

from ..errors import InputError


class GrowingPositions:
    """Positions of a running scan, in metres (y, x), from a file that grows.

    ``positions`` is the (n, 2) table known so far; ``names`` the frame file names when
    the file names them (PtyPy's tutorial layout), else None. :meth:`refresh` reads the
    lines added since the last call.
    """

    def __init__(self, path: str | os.PathLike[str], *, units: float = 1.0,
                 dataset: str | None = None) -> None:
        self.path = Path(path)
        self.units = units
        self.dataset = dataset or "positions"
        self._rows: list[tuple[float, float]] = []
        self._names: list[str] | None = None
        self._offset = 0
        self._lineno = 0
        self._identity: tuple[int, int] | None = None
        self._hdf5: bool | None = None
        self._buf = np.empty((0, 2))
        self._table = self._buf[:0]
        self._h5_state: tuple[int, int] | None = None

    @property
    def positions(self) -> np.ndarray:
        """The (n, 2) positions read so far (metres)."""
        return self._table

    @property
    def names(self) -> list[str] | None:
        """Frame file names in line order, when the file names its frames."""
        return self._names

    def __len__(self) -> int:
        return self._table.shape[0]

    def refresh(self) -> int:
        """Read what was appended since the last call; returns the number of new rows.
        A file that does not exist yet has no rows."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise InputError(self.path, f"cannot stat positions file: {exc}") from None
        if self._hdf5 is None:
            if st.st_size < len(_HDF5_SIGNATURE) and self._may_become_hdf5():
                return 0
            self._hdf5 = st.st_size >= len(_HDF5_SIGNATURE) and h5py.is_hdf5(self.path)
        if self._hdf5:
            return self._refresh_hdf5(st)
        identity = (st.st_dev, st.st_ino)
        if self._identity is not None and (identity != self._identity or st.st_size < self._offset):
            self._restart()
        self._identity = identity
        if st.st_size == self._offset:
            return 0
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(st.st_size - self._offset)
        except OSError as exc:
            raise InputError(self.path, f"unreadable positions file: {exc}") from None
        end = data.rfind(b"\n")
        if end < 0:
            return 0
        before = len(self._rows)
        n_names = None if self._names is None else len(self._names)
        lineno = self._lineno
        try:
            self._parse(data[: end + 1])
        except InputError:
            # Keep nothing of a piece with a bad line: a later refresh reads it again.
            del self._rows[before:]
            if n_names is None:
                self._names = None
            else:
                del self._names[n_names:]
            self._lineno = lineno
            raise
        self._offset += end + 1
        new = np.asarray(self._rows[before:], np.float64).reshape(-1, 2) * self.units
        del self._rows[before:]  # kept only until committed: the table holds them
        self._append(new)
        return new.shape[0]

    def _append(self, rows: np.ndarray) -> None:
        """Add rows to the table; storage grows by doubling (amortised, no re-copy of the
        whole table per line)."""
        n = self._table.shape[0]
        if n + rows.shape[0] > self._buf.shape[0]:
            grown = np.empty((max(2 * self._buf.shape[0], n + rows.shape[0], 64), 2))
            grown[:n] = self._buf[:n]
            self._buf = grown
        self._buf[n:n + rows.shape[0]] = rows
        self._table = self._buf[:n + rows.shape[0]]

    def _restart(self) -> None:
        self._rows.clear()
        self._names = None
        self._offset = 0
        self._lineno = 0
        self._table = self._buf[:0]

    def _may_become_hdf5(self) -> bool:
        """True while a file too short to tell could still be the start of an HDF5 file."""
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_HDF5_SIGNATURE))
        except OSError:
            return True
        return _HDF5_SIGNATURE.startswith(head)

    def _parse(self, data: bytes) -> None:
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise InputError(self.path, f"not text after byte {self._offset}: {exc}") from None
        for raw in text.splitlines():
            self._lineno += 1
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if self._names is None and not self._rows and not self._table.shape[0]:
                self._names = [] if len(parts) == 3 and not _is_number(parts[0]) else None
            want = 3 if self._names is not None else 2
            if len(parts) != want:
                shape = "'<frame file> <y> <x>'" if want == 3 else "'<y> <x>'"
                raise InputError(self.path, f"line {self._lineno}: expected {shape}, got {line!r}")
            try:
                y, x = float(parts[-2]), float(parts[-1])
            except ValueError:
                raise InputError(self.path, f"line {self._lineno}: positions must be numbers, "
                                            f"got {line!r}") from None
            if not (math.isfinite(y) and math.isfinite(x)):
                raise InputError(self.path, f"line {self._lineno}: positions must be finite, "
                                            f"got {line!r}")
            if self._names is not None:
                self._names.append(parts[0])
            self._rows.append((y, x))

    def _refresh_hdf5(self, st: os.stat_result) -> int:
        state = (st.st_size, st.st_mtime_ns)
        if state == self._h5_state:
            return 0
        try:
            with h5py.File(self.path, "r") as f:
                if self.dataset not in f:
                    return 0
                arr = np.asarray(f[self.dataset][()], np.float64)
        except OSError:
            return 0  # being written: try again at the next refresh
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise InputError(self.path, f"dataset {self.dataset!r} has shape {arr.shape}, "
                                        "expected (n, 2)")
        good = np.isfinite(arr).all(axis=1)
        n = int(np.argmin(good)) if not good.all() else arr.shape[0]  # rows before a gap
        before = self._table.shape[0]
        self._table = arr[:n] * self.units
        self._h5_state = state
        return self._table.shape[0] - before


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

"""Decoded AstroPix4 hits to CSV, HDF5 or ``.npz``, and whole ``.apx`` file conversion.

- :func:`format_csv_rows`: hits as CSV lines, byte for byte as the reference writes them
  (integers in decimal, ``tot_us`` as Python's shortest round-trip ``repr``), built with
  numpy digit arithmetic: no Python work per hit.
- :func:`hits_to_csv`, :func:`hits_to_hdf5`, :func:`hits_to_npz`: one array of hits
  (:data:`~flyprep.apx.decode.HIT_DTYPE`) to a file; :func:`read_hits_hdf5` and
  :func:`read_hits_npz` read them back with the header.
- :class:`StreamDecoder`: decodes batch after batch, optionally carrying each readout's
  extra bytes to the next readout across batch boundaries.
- :func:`convert_file`: an ``.apx`` file read in batches, decoded and appended to the
  output, so memory stays bounded for CSV and HDF5 (``.npz`` holds all hits at once).

Every output is written under a temporary name beside the destination and renamed into
place only when complete; a failed conversion leaves nothing behind.

The CSV is what the reference exports: a first line ``#`` followed by the header JSON as
it is in the ``.apx`` file, a line of column names, then one line per hit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional

import numpy as np

from ..errors import InputError, OutputError
from .decode import HIT_DTYPE, DecodedBatch, decode_batch
from .format import (PREFIX_SIZE, ApxHeader, ApxReader, ApxTruncatedError, PathLike,
                     ReadoutBatch, Truncation)

#: Output formats and their default file extensions.
FORMATS = {"csv": ".csv", "hdf5": ".h5", "npz": ".npz"}
#: The CSV's column names, in order (the reference's).
CSV_COLUMNS: tuple[str, ...] = tuple(HIT_DTYPE.names)
#: Name of the hits table in HDF5 and ``.npz`` files, and of the header attribute/entry.
HITS_NAME = "hits"
HEADER_NAME = "header"
#: HIT_DTYPE records as opaque bytes: copies and concatenations of the packed structured
#: dtype go field by field and are many times slower than of these
_HIT_VOID = np.dtype(f"V{HIT_DTYPE.itemsize}")

_PAD = 0  # filler byte in the row matrix, dropped before writing
_COMMA, _NEWLINE, _DOT, _ZERO = ord(","), ord("\n"), ord("."), ord("0")
# tot_us = k / 20 exactly for every decoded hit: its repr is k // 20, ".", then one of
# these fractions (k % 20 * 5 hundredths with a trailing zero dropped)
_FRACTIONS = np.array(
    [[_ZERO + (5 * i) // 10, _ZERO + (5 * i) % 10 if (5 * i) % 10 else _PAD] for i in range(20)],
    dtype=np.uint8,
)
_FAST_TOT_MAX = 1e9  # below this, k / 20 has no shorter repr than its own 2-decimal form
_DIGITS4 = np.frombuffer("".join(f"{i:04d}" for i in range(10000)).encode("ascii"),
                         dtype=np.uint8).reshape(10000, 4)
_POW10 = np.array([10**k for k in range(20)], dtype=np.uint64)
_SMALL_WIDTH = 5  # values below 10**5 are looked up whole, already padded
_small_table: list[np.ndarray] = []


# --------------------------------------------------------------------------- CSV text


def csv_preamble(header: ApxHeader) -> bytes:
    """The CSV's first two lines: ``#`` + header JSON, then the column names."""
    return b"#" + header.to_bytes() + b"\n" + ",".join(CSV_COLUMNS).encode("ascii") + b"\n"


def _small_digits() -> np.ndarray:
    """(100000, 5) table: each value right-aligned in decimal, pad bytes in front."""
    if not _small_table:
        n = 10**_SMALL_WIDTH
        values = np.arange(n)
        tab = np.concatenate([_DIGITS4[values // 10000][:, 3:], _DIGITS4[values % 10000]], axis=1)
        lead = np.arange(n)[:, None] < _POW10[_SMALL_WIDTH - 1 : 0 : -1].astype(np.int64)
        tab[:, :-1][lead] = _PAD
        _small_table.append(tab)
    return _small_table[0]


def _put_digits(out: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` right-aligned in decimal into the uint8 columns ``out`` (n, w).

    ``w`` must be enough for the largest value; leading positions get the pad byte.
    """
    width = out.shape[1]
    if width <= _SMALL_WIDTH:
        out[:] = _small_digits()[values.astype(np.intp), _SMALL_WIDTH - width :]
        return
    groups = -(-width // 4)
    block = np.empty((len(values), groups * 4), dtype=np.uint8)
    v = values.astype(np.uint64)
    for g in range(groups - 1, 0, -1):
        block[:, 4 * g : 4 * g + 4] = _DIGITS4[(v % np.uint64(10000)).astype(np.intp)]
        v //= np.uint64(10000)
    block[:, :4] = _DIGITS4[v.astype(np.intp)]
    block = block[:, groups * 4 - width :]
    lead = values.astype(np.uint64)[:, None] < _POW10[width - 1 : 0 : -1]
    np.copyto(block[:, :-1], _PAD, where=lead)
    out[:] = block


def _width(values: np.ndarray) -> int:
    """Digits needed for the largest value of a non-negative integer array."""
    return len(str(int(values.max()))) if values.size else 1


def format_csv_rows(hits: np.ndarray) -> bytes:
    """The CSV lines of ``hits`` (:data:`HIT_DTYPE`), each ending in ``\\n``.

    Integers are written in decimal, ``tot_us`` as ``repr(float)`` does. Each row is laid
    out in a fixed-width uint8 matrix (digits right-aligned, pad bytes in front), and the
    pad bytes are dropped at the end.
    """
    if hits.dtype != HIT_DTYPE:
        raise TypeError(f"hits must have dtype HIT_DTYPE, not {hits.dtype}")
    n = len(hits)
    if n == 0:
        return b""
    int_cols = CSV_COLUMNS[:-1]
    widths = [_width(hits[name]) for name in int_cols]
    tot = hits["tot_us"]
    with np.errstate(over="ignore", invalid="ignore"):
        k = np.rint(tot * 20.0)
        fast = (k / 20.0 == tot) & (tot >= 0) & (tot < _FAST_TOT_MAX) & ~np.signbit(tot)
    k_int = np.where(fast, k, 0).astype(np.uint64)
    whole = k_int // np.uint64(20)
    tot_width = _width(whole) + 3  # digits, ".", two fraction places
    slow = np.flatnonzero(~fast)
    slow_text = np.array([repr(float(x)) for x in tot[slow]], dtype="S")
    tot_width = max(tot_width, slow_text.dtype.itemsize)

    row_width = sum(widths) + len(widths) + tot_width + 1
    rows = np.empty((n, row_width), dtype=np.uint8)
    col = 0
    for name, w in zip(int_cols, widths):
        _put_digits(rows[:, col : col + w], hits[name])
        rows[:, col + w] = _COMMA
        col += w + 1
    tot_cols = rows[:, col : col + tot_width]
    whole_width = tot_width - 3
    _put_digits(tot_cols[:, :whole_width], whole)
    tot_cols[:, whole_width] = _DOT
    tot_cols[:, whole_width + 1 :] = _FRACTIONS[(k_int % np.uint64(20)).astype(np.intp)]
    if slow.size:  # anything not k / 20 (never produced by the decoder): Python's repr
        tot_cols[slow] = _PAD
        text = slow_text.view(np.uint8).reshape(slow.size, slow_text.dtype.itemsize)
        tot_cols[slow, : text.shape[1]] = text
    rows[:, -1] = _NEWLINE
    return rows.tobytes().translate(None, bytes([_PAD]))


# --------------------------------------------------------------------------- writers


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.part")


class HitWriter:
    """Base of the writers: hits appended batch by batch, published on :meth:`close`.

    The file is written under a temporary name beside ``path`` and renamed to ``path``
    when closed without error; :meth:`abort` (or an exception inside a ``with`` block)
    removes it. An existing ``path`` is an :class:`~flyprep.errors.OutputError` unless
    ``overwrite``.
    """

    def __init__(self, path: PathLike, header: ApxHeader, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.header = header
        self.hits_written = 0
        if self.path.exists() and not overwrite:
            raise OutputError(f"{self.path}: already exists (overwrite, --overwrite, replaces it)")
        self._tmp = _temporary_name(self.path)
        self._closed = False
        try:
            self._open(self._tmp)
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write: {exc}") from exc

    def _open(self, tmp: Path) -> None:
        raise NotImplementedError

    def _write(self, hits: np.ndarray) -> None:
        raise NotImplementedError

    def _finish(self) -> None:
        raise NotImplementedError

    def _discard(self) -> None:
        """Close whatever is open, ignoring errors (before the temporary file is removed)."""

    def write(self, hits: np.ndarray) -> None:
        """Append ``hits`` (:data:`HIT_DTYPE`)."""
        if hits.dtype != HIT_DTYPE:
            raise TypeError(f"hits must have dtype HIT_DTYPE, not {hits.dtype}")
        if len(hits):
            try:
                self._write(hits)
            except OSError as exc:
                raise OutputError(f"{self.path}: cannot write: {exc}") from exc
            self.hits_written += len(hits)

    def close(self) -> None:
        """Finish the file and rename it into place."""
        if self._closed:
            return
        try:
            self._finish()
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise OutputError(f"{self.path}: cannot write: {exc}") from exc
        self._closed = True

    def abort(self) -> None:
        """Give up: close and remove the temporary file; ``path`` is left untouched."""
        if self._closed:
            return
        self._closed = True
        self._discard()
        try:
            self._tmp.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "HitWriter":
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class CsvHitWriter(HitWriter):
    """The reference's CSV: ``#`` + header JSON, column names, one line per hit."""

    def _open(self, tmp: Path) -> None:
        self._file: BinaryIO = open(tmp, "wb")
        self._file.write(csv_preamble(self.header))

    def _write(self, hits: np.ndarray) -> None:
        self._file.write(format_csv_rows(hits))

    def _finish(self) -> None:
        self._file.close()

    def _discard(self) -> None:
        self._file.close()


class Hdf5HitWriter(HitWriter):
    """An HDF5 file with one resizable, chunked, gzip-compressed compound dataset ``hits``.

    The header JSON text is the dataset's ``header`` attribute; its ``readout_uid`` is
    also an attribute of its own.
    """

    chunk_hits = 1 << 16

    def _open(self, tmp: Path) -> None:
        import h5py

        self._file = h5py.File(tmp, "w")
        self._ds = self._file.create_dataset(
            HITS_NAME, shape=(0,), maxshape=(None,), dtype=HIT_DTYPE,
            chunks=(self.chunk_hits,), compression="gzip", compression_opts=4, shuffle=True,
        )
        self._ds.attrs[HEADER_NAME] = self.header.to_bytes().decode("ascii")
        self._ds.attrs["readout_uid"] = self.header.readout_uid

    def _write(self, hits: np.ndarray) -> None:
        n = self._ds.shape[0]
        self._ds.resize((n + len(hits),))
        self._ds[n:] = hits

    def _finish(self) -> None:
        self._file.close()

    def _discard(self) -> None:
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - already failing; the file is removed next
            pass


class NpzHitWriter(HitWriter):
    """A ``.npz`` with ``hits`` (structured array) and ``header`` (0-d string array).

    The hits are kept in memory until :meth:`close`; no pickle is needed to load it.
    """

    def _open(self, tmp: Path) -> None:
        self._parts: list[np.ndarray] = []
        tmp.touch()

    def _write(self, hits: np.ndarray) -> None:
        # copied as opaque records: much faster than field by field for the packed dtype
        self._parts.append(np.ascontiguousarray(hits).view(_HIT_VOID).copy())

    def _finish(self) -> None:
        hits = np.concatenate(self._parts).view(HIT_DTYPE) if self._parts else np.empty(0, HIT_DTYPE)
        self._parts = []
        with open(self._tmp, "wb") as f:  # a file object: savez would add ".npz" to a name
            np.savez(f, **{HITS_NAME: hits,
                           HEADER_NAME: np.array(self.header.to_bytes().decode("ascii"))})

    def _discard(self) -> None:
        self._parts = []


WRITERS: dict[str, type[HitWriter]] = {"csv": CsvHitWriter, "hdf5": Hdf5HitWriter,
                                       "npz": NpzHitWriter}


def open_hit_writer(path: PathLike, fmt: str, header: ApxHeader, *,
                    overwrite: bool = False) -> HitWriter:
    """A :class:`HitWriter` for ``fmt`` (``"csv"``, ``"hdf5"`` or ``"npz"``)."""
    try:
        cls = WRITERS[fmt]
    except KeyError:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}") from None
    return cls(path, header, overwrite=overwrite)


def hits_to_csv(hits: np.ndarray, header: ApxHeader, path: PathLike, *,
                overwrite: bool = True) -> None:
    """Write ``hits`` as the reference's CSV export."""
    with CsvHitWriter(path, header, overwrite=overwrite) as w:
        w.write(hits)


def hits_to_hdf5(hits: np.ndarray, header: ApxHeader, path: PathLike, *,
                 overwrite: bool = True) -> None:
    """Write ``hits`` as the ``hits`` table of a new HDF5 file (header as an attribute)."""
    with Hdf5HitWriter(path, header, overwrite=overwrite) as w:
        w.write(hits)


def hits_to_npz(hits: np.ndarray, header: ApxHeader, path: PathLike, *,
                overwrite: bool = True) -> None:
    """Write ``hits`` and the header text to a ``.npz``."""
    with NpzHitWriter(path, header, overwrite=overwrite) as w:
        w.write(hits)


def read_hits_hdf5(path: PathLike) -> tuple[np.ndarray, ApxHeader]:
    """The ``hits`` table and the header of an HDF5 file written by :func:`hits_to_hdf5`."""
    import h5py

    with h5py.File(path, "r") as f:
        ds = f[HITS_NAME]
        return ds[()], ApxHeader.from_bytes(str(ds.attrs[HEADER_NAME]).encode("utf-8"), path)


def read_hits_npz(path: PathLike) -> tuple[np.ndarray, ApxHeader]:
    """The hits and the header of a ``.npz`` written by :func:`hits_to_npz`."""
    with np.load(path, allow_pickle=False) as z:
        return z[HITS_NAME], ApxHeader.from_bytes(str(z[HEADER_NAME][()]).encode("utf-8"), path)


# --------------------------------------------------------------------------- decoding


class StreamDecoder:
    """Decodes batch after batch of one file, in order.

    With ``carry_extra`` each readout's trailing extra bytes go to the next readout, also
    across batches: the last readout's extra bytes of one batch are passed as
    ``previous_extra`` to :func:`~flyprep.apx.decode.decode_batch` for the next batch.
    """

    def __init__(self, *, carry_extra: bool = False) -> None:
        self.carry_extra = carry_extra
        self._extra: Optional[bytes] = None

    def decode(self, batch: ReadoutBatch) -> DecodedBatch:
        """The hits, status and extra bytes of ``batch``'s readouts."""
        rec = batch.records
        dec = decode_batch(batch.payload, rec["offset"], rec["length"], rec["readout_id"],
                           rec["timestamp"], carry_extra=self.carry_extra,
                           previous_extra=self._extra)
        if self.carry_extra and len(batch):
            self._extra = dec.extra[-1]
        return dec


# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class ConvertSummary:
    """What :func:`convert_file` did."""

    source: str
    output: str
    fmt: str
    readouts: int
    hits: int
    #: readouts with any status bit set (orphans, extra bytes, dropped bytes, ...)
    flagged: int
    seconds: float
    #: the incomplete last record that was left out (only with ``allow_truncated``)
    truncation: Optional[Truncation] = None


def default_output(src: PathLike, fmt: str) -> Path:
    """The output file next to ``src``: same name, the format's extension."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return Path(src).with_suffix(FORMATS[fmt])


def open_input(src: PathLike) -> ApxReader:
    """``src`` opened for reading; an :class:`~flyprep.errors.InputError` if it cannot be."""
    try:
        return ApxReader(src)
    except OSError as exc:
        raise InputError(src, f"offset 0: cannot read: {exc.strerror or exc}") from exc


def iter_decoded(src: PathLike, *, batch_records: int = 1 << 16, carry_extra: bool = False
                 ) -> Iterator[tuple[ApxHeader, ReadoutBatch, DecodedBatch]]:
    """``(header, batch, decoded)`` for each batch of ``src``, in file order.

    Raises :class:`~flyprep.apx.format.ApxFormatError` (naming the file and offset) when
    it reaches bad bytes, after yielding the batches before them.
    """
    decoder = StreamDecoder(carry_extra=carry_extra)
    with open_input(src) as reader:
        for batch in reader.batches(max_records=batch_records):
            yield reader.header, batch, decoder.decode(batch)


def convert_file(
    src: PathLike,
    dst: Optional[PathLike],
    fmt: str,
    *,
    overwrite: bool = False,
    carry_extra: bool = False,
    allow_truncated: bool = False,
    batch_records: int = 1 << 16,
    on_batch: Optional[Callable[[int, int], None]] = None,
) -> ConvertSummary:
    """Decode every readout of the ``.apx`` file ``src`` and write the hits to ``dst``.

    ``dst`` None means :func:`default_output`. Reads ``batch_records`` readouts at a time
    and appends their hits, so CSV and HDF5 conversions use bounded memory.
    ``on_batch(readouts, hits)`` is called after each batch with the running totals.
    A file ending inside a record is an error unless ``allow_truncated``, which converts
    the complete records and reports the truncation in the summary.
    """
    t0 = time.perf_counter()
    out = default_output(src, fmt) if dst is None else Path(dst)
    readouts = hits = flagged = 0
    truncation: Optional[Truncation] = None
    with open_input(src) as reader:
        with open_hit_writer(out, fmt, reader.header, overwrite=overwrite) as writer:
            decoder = StreamDecoder(carry_extra=carry_extra)
            batches = reader.batches(max_records=batch_records)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except ApxTruncatedError as exc:
                    if not allow_truncated:
                        raise
                    present = os.path.getsize(reader.path) - exc.offset
                    what = "record" if present >= PREFIX_SIZE else "record prefix"
                    truncation = Truncation(exc.offset, what, present, exc.missing)
                    break
                dec = decoder.decode(batch)
                writer.write(dec.hits)
                readouts += len(batch)
                hits += len(dec.hits)
                flagged += int(np.count_nonzero(dec.status))
                if on_batch is not None:
                    on_batch(readouts, hits)
    return ConvertSummary(os.fspath(src), os.fspath(out), fmt, readouts, hits, flagged,
                          time.perf_counter() - t0, truncation)

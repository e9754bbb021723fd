"""Reading and writing AstroPix ``.apx`` files (the layout is in ``docs/apx-format.md``).

A file is the magic ``b"%APXDF"``, a uint32 LE header length ``N``, ``N`` bytes of JSON
header, then readout records back to back (no count, no footer)::

    3 bytes b"\\xfe\\xdc\\xba" | uint32 readout_id | uint64 timestamp (ns) | uint32 L | L bytes

What is here:

- :class:`ApxHeader`: the JSON header, serialised exactly like the reference writer, so a
  read-then-write round trip is byte-identical.
- :class:`Readout`: one record, a ``(readout_id, timestamp, payload)`` named tuple.
- :class:`ReadoutBatch`: many records as one packed numpy structured array plus one
  ``uint8`` array of concatenated payloads; parsed without per-record Python objects.
- :class:`ApxStreamParser`: the incremental parser (feed bytes, take complete records),
  shared by the file reader and by :class:`flyprep.apx.tail.ApxTailer`.
- :func:`open_apx`: an :class:`ApxReader` (``mode="r"``) or an :class:`ApxWriter`
  (``mode="w"``).

Every malformed input raises an :class:`ApxFormatError` (an
:class:`~flyprep.errors.InputError`) naming the file and the byte offset of the problem;
a file that ends inside a record raises :class:`ApxTruncatedError`, which also says how
many bytes are missing. A declared header or record length is checked against the file
size (or a maximum) before anything is allocated for it.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterable, Iterator, NamedTuple, Optional, Union

import numpy as np

from ..errors import InputError

PathLike = Union[str, "os.PathLike[str]"]

#: File magic at offset 0.
FILE_MAGIC = b"%APXDF"
#: Bytes before the JSON header: magic plus uint32 header length.
PREAMBLE_SIZE = len(FILE_MAGIC) + 4
#: Magic opening every record.
RECORD_MAGIC = b"\xfe\xdc\xba"
#: Bytes of a record before its payload: magic, readout_id, timestamp, length.
PREFIX_SIZE = len(RECORD_MAGIC) + 4 + 8 + 4
#: One record's fixed prefix.
_PREFIX = struct.Struct("<3sIQI")
_U32 = struct.Struct("<I")
_MAX_U32 = 2**32 - 1
_MAX_U64 = 2**64 - 1

#: dtype of :attr:`ReadoutBatch.records` (packed, 28 bytes per record).
RECORD_DTYPE = np.dtype(
    [("readout_id", "<u4"), ("timestamp", "<u8"), ("offset", "<i8"), ("length", "<i8")]
)

_MAGIC_ARR = np.frombuffer(RECORD_MAGIC, dtype=np.uint8)
_PREFIX_COLS = np.arange(PREFIX_SIZE, dtype=np.int64)


class ApxFormatError(InputError):
    """An ``.apx`` file breaks the format; ``offset`` is the byte offset of the problem."""

    def __init__(self, path: PathLike, offset: int, reason: str) -> None:
        self.offset = int(offset)
        super().__init__(path, f"offset {self.offset}: {reason}")


class ApxTruncatedError(ApxFormatError):
    """The file ends inside the preamble, the header or a record.

    ``offset`` is where the incomplete item starts, ``missing`` how many bytes it lacks.
    """

    def __init__(self, path: PathLike, offset: int, missing: int, reason: str) -> None:
        self.missing = int(missing)
        super().__init__(path, offset, reason)


@dataclass(frozen=True)
class Truncation:
    """An incomplete item at the end of a file: where it starts and what it lacks."""

    offset: int
    #: what was cut: ``"preamble"``, ``"header"``, ``"record prefix"`` or ``"record"``
    what: str
    present: int
    missing: int

    def describe(self) -> str:
        """One sentence for an error message."""
        return (
            f"file ends inside a {self.what}: {self.present} of "
            f"{self.present + self.missing} bytes present, {self.missing} bytes missing"
        )

    def error(self, path: PathLike) -> ApxTruncatedError:
        """The :class:`ApxTruncatedError` reporting this truncation for ``path``."""
        return ApxTruncatedError(path, self.offset, self.missing, self.describe())


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class ApxHeader:
    """The JSON header: the readout uid (4000 = AstroPix4) and everything else as a dict."""

    readout_uid: int
    content: dict = field(default_factory=dict)
    #: The header text exactly as read from a file (None for a header built in code), so
    #: that a header another writer formatted differently still round-trips byte for byte.
    raw: Optional[bytes] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.readout_uid, bool) or not isinstance(self.readout_uid, int):
            raise TypeError(f"readout_uid must be an int, not {self.readout_uid!r}")
        if "readout_uid" in self.content:
            raise ValueError("content must not repeat 'readout_uid'")

    def to_bytes(self) -> bytes:
        """The header text: as read, or as the reference writes it (``readout_uid``
        first, ASCII)."""
        if self.raw is not None:
            return self.raw
        return json.dumps({"readout_uid": self.readout_uid, **self.content}).encode("ascii")

    @classmethod
    def from_bytes(cls, data: bytes, path: PathLike = "<bytes>", offset: int = 0) -> "ApxHeader":
        """Parse header text; :class:`ApxFormatError` at ``offset`` if it is not usable."""
        try:
            obj = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ApxFormatError(
                path, offset, f"header ({len(data)} bytes) is not valid UTF-8 JSON: {exc}"
            ) from None
        if not isinstance(obj, dict):
            raise ApxFormatError(
                path, offset, f"header is JSON {type(obj).__name__}, not an object"
            )
        uid = obj.pop("readout_uid", None)
        if isinstance(uid, bool) or not isinstance(uid, int):
            raise ApxFormatError(
                path, offset, f"header has no integer 'readout_uid' (found {uid!r})"
            )
        return cls(uid, obj, bytes(data))

    def preamble_bytes(self) -> bytes:
        """Magic, header length and header: the first bytes of a file with this header."""
        text = self.to_bytes()
        return FILE_MAGIC + _U32.pack(len(text)) + text


# --------------------------------------------------------------------------- records


class Readout(NamedTuple):
    """One record: host readout id, host timestamp (ns since the epoch), raw payload."""

    readout_id: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True, eq=False)
class ReadoutBatch:
    """Many records: ``records`` (:data:`RECORD_DTYPE`) and their concatenated ``payload``.

    Record ``i``'s payload is ``payload[records["offset"][i]:][:records["length"][i]]``.
    """

    records: np.ndarray
    payload: np.ndarray

    def __post_init__(self) -> None:
        if self.records.dtype != RECORD_DTYPE or self.records.ndim != 1:
            raise TypeError(f"records must be a 1-d array of {RECORD_DTYPE}")
        if self.payload.dtype != np.uint8 or self.payload.ndim != 1:
            raise TypeError("payload must be a 1-d uint8 array")

    @classmethod
    def empty(cls) -> "ReadoutBatch":
        """A batch with no records."""
        return cls(np.empty(0, RECORD_DTYPE), np.empty(0, np.uint8))

    @classmethod
    def from_readouts(cls, readouts: Iterable[Readout | tuple]) -> "ReadoutBatch":
        """A batch from ``(readout_id, timestamp, payload)`` tuples (convenience, not fast)."""
        items = [(int(r[0]), int(r[1]), bytes(r[2])) for r in readouts]
        records = np.empty(len(items), RECORD_DTYPE)
        lengths = np.array([len(p) for _, _, p in items], dtype=np.int64)
        records["readout_id"] = [i for i, _, _ in items]
        records["timestamp"] = [t for _, t, _ in items]
        records["length"] = lengths
        records["offset"] = np.cumsum(lengths) - lengths
        payload = np.frombuffer(b"".join(p for _, _, p in items), dtype=np.uint8).copy()
        return cls(records, payload)

    @classmethod
    def concat(cls, batches: Iterable["ReadoutBatch"]) -> "ReadoutBatch":
        """One batch holding the records of ``batches`` in order."""
        parts = [b for b in batches if len(b)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        shifts = np.cumsum([0] + [b.payload.size for b in parts[:-1]])
        records = np.concatenate([b.records for b in parts])
        sizes = [len(b) for b in parts]
        records["offset"] += np.repeat(shifts, sizes)
        return cls(records, np.concatenate([b.payload for b in parts]))

    def __len__(self) -> int:
        return int(self.records.shape[0])

    def __iter__(self) -> Iterator[Readout]:
        ids = self.records["readout_id"].tolist()
        tss = self.records["timestamp"].tolist()
        offs = self.records["offset"].tolist()
        lens = self.records["length"].tolist()
        buf = self.payload.tobytes()
        for rid, ts, off, n in zip(ids, tss, offs, lens):
            yield Readout(rid, ts, buf[off : off + n])

    def __getitem__(self, i: int) -> Readout:
        rec = self.records[i]
        return Readout(int(rec["readout_id"]), int(rec["timestamp"]), self.payload_of(i))

    def payload_of(self, i: int) -> bytes:
        """The payload bytes of record ``i``."""
        rec = self.records[i]
        off = int(rec["offset"])
        return self.payload[off : off + int(rec["length"])].tobytes()

    @property
    def readout_id(self) -> np.ndarray:
        """The readout ids (a view)."""
        return self.records["readout_id"]

    @property
    def timestamp(self) -> np.ndarray:
        """The timestamps in ns (a view)."""
        return self.records["timestamp"]

    def is_contiguous(self) -> bool:
        """True if the payloads lie back to back in ``payload`` in record order."""
        lens = self.records["length"]
        offs = self.records["offset"]
        if int(lens.sum()) != self.payload.size:
            return False
        return bool(np.array_equal(offs, np.cumsum(lens) - lens))

    def to_bytes(self) -> bytes:
        """The records serialised exactly as they appear in an ``.apx`` file."""
        n = len(self)
        if n == 0:
            return b""
        lens = self.records["length"].astype(np.int64)
        if np.any(lens < 0) or np.any(lens > _MAX_U32):
            raise ValueError("record lengths must fit a uint32")
        if self.is_contiguous():
            payload = self.payload
        else:
            offs = self.records["offset"]
            payload = np.concatenate(
                [self.payload[o : o + k] for o, k in zip(offs.tolist(), lens.tolist())]
                + [np.empty(0, np.uint8)]
            )
            if payload.size != int(lens.sum()):
                raise ValueError("record offset/length point outside the payload array")
        sizes = lens + PREFIX_SIZE
        starts = np.cumsum(sizes) - sizes
        out = np.empty(int(sizes.sum()), dtype=np.uint8)
        prefix = np.empty((n, PREFIX_SIZE), dtype=np.uint8)
        prefix[:, 0:3] = _MAGIC_ARR
        prefix[:, 3:7] = self.records["readout_id"].astype("<u4").view(np.uint8).reshape(n, 4)
        prefix[:, 7:15] = self.records["timestamp"].astype("<u8").view(np.uint8).reshape(n, 8)
        prefix[:, 15:19] = lens.astype("<u4").view(np.uint8).reshape(n, 4)
        prefix_pos = starts[:, None] + _PREFIX_COLS
        mask = np.ones(out.size, dtype=bool)
        mask[prefix_pos] = False
        out[prefix_pos] = prefix
        out[mask] = payload
        return out.tobytes()


# --------------------------------------------------------------------------- parsing

#: Most bytes scanned per step of the vectorised record search: bounds the work wasted on
#: records beyond ``max_records`` (they are found again by the next take()).
_SCAN_WINDOW = 1 << 20
#: Smallest scan window, and the bytes per wanted record it starts from: a take() of few
#: records scans little (the window doubles if the records are longer).
_MIN_SCAN_WINDOW = 4 << 10
_SCAN_BYTES_PER_RECORD = 64
#: Below this many records the per-record Python walk is cheaper than the numpy set-up.
_MIN_VECTOR_RECORDS = 16
#: False record magics inside payloads repaired per window before giving up on numpy.
_MAX_REPAIRS = 16


def _u32_at(arr: np.ndarray) -> np.ndarray:
    """Unaligned little-endian uint32 at every byte offset of ``arr`` (a view, no copy)."""
    return np.ndarray((max(arr.size - 3, 0),), dtype="<u4", buffer=arr, strides=(1,))


def _u64_at(arr: np.ndarray) -> np.ndarray:
    """Unaligned little-endian uint64 at every byte offset of ``arr`` (a view, no copy)."""
    return np.ndarray((max(arr.size - 7, 0),), dtype="<u8", buffer=arr, strides=(1,))


def _walk_python(
    buf: bytes, pos: int, max_records: int, max_length: int
) -> tuple[list[int], list[int], int]:
    """The per-record walk behind :func:`_walk` (see there); the fallback of the numpy one."""
    unpack = _U32.unpack_from
    starts_with = buf.startswith
    n = len(buf)
    limit = n - PREFIX_SIZE
    starts: list[int] = []
    lengths: list[int] = []
    while pos <= limit and len(starts) < max_records:
        length = unpack(buf, pos + 15)[0]
        end = pos + PREFIX_SIZE + length
        if length > max_length or end > n or not starts_with(RECORD_MAGIC, pos):
            break
        starts.append(pos)
        lengths.append(length)
        pos = end
    return starts, lengths, pos


def _chain(
    arr: np.ndarray, u32: np.ndarray, pos: int, hi: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The chain of records starting at ``pos`` whose starts lie in ``[pos, hi]``.

    Every ``b"\\xfe\\xdc\\xba"`` in the range is a candidate record start; record ``i``
    is followed by the one at ``start + 19 + length``, so the chain holds while that is the
    next candidate. A magic-like sequence inside a payload (or a prefix) breaks the chain
    once: the candidates inside that record are dropped and the check goes on from there.
    The chain ends at the first record whose successor is not a candidate: beyond ``hi``
    (the caller goes on from there) or bad bytes (the caller's checks report them).

    Returns ``(starts, lengths, complete)``, empty if ``pos`` itself is not a candidate.
    After :data:`_MAX_REPAIRS` repairs (pathological payloads) it returns the records
    verified so far with ``complete`` False: the caller walks on from there in Python.
    """
    cand = np.flatnonzero(arr[pos : hi + 1] == RECORD_MAGIC[0])
    cand += pos
    cand = cand[(arr[cand + 1] == RECORD_MAGIC[1]) & (arr[cand + 2] == RECORD_MAGIC[2])]
    if cand.size == 0 or cand[0] != pos:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, True
    lens = u32[cand + 15].astype(np.int64)
    nxt = cand + PREFIX_SIZE + lens
    first = 0  # the records before index `first` are known to chain
    for _ in range(_MAX_REPAIRS):
        brk = np.flatnonzero(nxt[first:-1] != cand[first + 1 :])
        if brk.size == 0:
            return cand, lens, True
        i = first + int(brk[0])
        j = int(np.searchsorted(cand, nxt[i]))
        if j == cand.size or cand[j] != nxt[i]:
            # record i's successor is not a candidate: the chain ends with it
            return cand[: i + 1], lens[: i + 1], True
        # cand[i + 1:j] lie inside record i: false magics, drop them
        cand = np.concatenate([cand[: i + 1], cand[j:]])
        lens = np.concatenate([lens[: i + 1], lens[j:]])
        nxt = np.concatenate([nxt[: i + 1], nxt[j:]])
        first = i
    return cand[: first + 1], lens[: first + 1], False


def _walk(
    buf: bytes, pos: int, max_records: int, max_length: Optional[int]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Record starts and payload lengths of the complete records in ``buf`` from ``pos``.

    Stops at the first record that has a wrong magic, is incomplete, is longer than
    ``max_length``, or after ``max_records``; returns ``(starts, lengths, stop)`` with
    ``stop`` the position where it stopped (the caller checks what is there).

    The records are found with whole-array operations (:func:`_chain`), a window of
    :data:`_SCAN_WINDOW` bytes at a time at most (less when few records are wanted),
    instead of one Python step per record.
    """
    cap = _MAX_U32 if max_length is None else max_length
    n = len(buf)
    limit = n - PREFIX_SIZE  # the last position where a whole prefix fits
    if max_records < _MIN_VECTOR_RECORDS or limit < pos:
        starts, lengths, stop = _walk_python(buf, pos, max_records, cap)
        return np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64), stop
    arr = np.frombuffer(buf, dtype=np.uint8)
    u32 = _u32_at(arr)
    starts_l: list[np.ndarray] = []
    lengths_l: list[np.ndarray] = []
    count = 0
    # scan about as far as the records still wanted reach (not a whole _SCAN_WINDOW for
    # a few records); the window doubles while the chain runs past it
    window = min(_SCAN_WINDOW, max(_MIN_SCAN_WINDOW, max_records * _SCAN_BYTES_PER_RECORD))
    while count < max_records and pos <= limit:
        hi = min(limit, pos + window)
        st, lens, complete = _chain(arr, u32, pos, hi)
        # cut at the first record too long or incomplete, and at max_records
        bad = (lens > cap) | (st + PREFIX_SIZE + lens > n)
        k = int(np.argmax(bad)) if bad.any() else st.size
        k = min(k, max_records - count)
        if k:
            starts_l.append(st[:k])
            lengths_l.append(lens[:k])
            count += k
            pos = int(st[k - 1]) + PREFIX_SIZE + int(lens[k - 1])
        if k < st.size:
            break  # cut: the caller checks what is at `pos`
        if not complete:  # too many false magics: walk on record by record
            starts, lengths, pos = _walk_python(buf, pos, max_records - count, cap)
            starts_l.append(np.array(starts, dtype=np.int64))
            lengths_l.append(np.array(lengths, dtype=np.int64))
            break
        if pos <= hi:
            break  # the chain ended inside the window: the caller checks `pos`
        window = min(_SCAN_WINDOW, 2 * window)
    if not starts_l:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, pos
    if len(starts_l) == 1:
        return starts_l[0], lengths_l[0], pos
    return np.concatenate(starts_l), np.concatenate(lengths_l), pos


class ApxStreamParser:
    """Incremental ``.apx`` parser: :meth:`feed` bytes in file order, :meth:`take` records.

    Keeps only the bytes not yet consumed (at most one incomplete record plus what was
    fed since). Checks are made as soon as the bytes allow: a wrong file or record magic,
    a header or record length above ``max_header_length``/``max_record_length`` or (when
    ``file_size`` is known) beyond the end of the file raises at once instead of waiting.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        max_header_length: Optional[int] = None,
        max_record_length: Optional[int] = None,
        file_size: Optional[int] = None,
    ) -> None:
        self.path = os.fspath(path)
        self.max_header_length = max_header_length
        self.max_record_length = max_record_length
        self.file_size = file_size
        self.header: Optional[ApxHeader] = None
        #: file offset of the first record (known once the header is complete)
        self.data_offset: Optional[int] = None
        self._buf = b""
        self._pos = 0  # index in _buf of the first unconsumed byte
        self._base = 0  # file offset of _buf[0]

    @property
    def offset(self) -> int:
        """File offset of the first byte not yet consumed."""
        return self._base + self._pos

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet consumed."""
        return len(self._buf) - self._pos

    @property
    def fed(self) -> int:
        """File offset just past the last byte fed."""
        return self._base + len(self._buf)

    def feed(self, data: bytes) -> None:
        """Append the next bytes of the file; parses the header once it is complete."""
        if data:
            if self._pos:
                self._base += self._pos
                self._buf = self._buf[self._pos :] + bytes(data)
                self._pos = 0
            else:
                self._buf += bytes(data)
        if self.header is None:
            self._try_header()

    def _try_header(self) -> None:
        buf = self._buf
        have = len(buf)
        got_magic = buf[: len(FILE_MAGIC)]
        if got_magic != FILE_MAGIC[: len(got_magic)]:
            raise ApxFormatError(
                self.path,
                0,
                f"not an .apx file: expected magic {FILE_MAGIC!r}, found {got_magic!r}",
            )
        if have < PREAMBLE_SIZE:
            return
        (hlen,) = _U32.unpack_from(buf, len(FILE_MAGIC))
        if self.file_size is not None and PREAMBLE_SIZE + hlen > self.file_size:
            remain = self.file_size - PREAMBLE_SIZE
            raise ApxTruncatedError(
                self.path,
                len(FILE_MAGIC),
                hlen - remain,
                f"header length {hlen} is larger than the rest of the file ({remain} bytes "
                f"after the preamble): corrupt length or truncated header, "
                f"{hlen - remain} bytes missing",
            )
        if self.max_header_length is not None and hlen > self.max_header_length:
            raise ApxFormatError(
                self.path,
                len(FILE_MAGIC),
                f"header length {hlen} is larger than the allowed {self.max_header_length} bytes",
            )
        if have < PREAMBLE_SIZE + hlen:
            return
        self.header = ApxHeader.from_bytes(
            buf[PREAMBLE_SIZE : PREAMBLE_SIZE + hlen], self.path, PREAMBLE_SIZE
        )
        self._pos = PREAMBLE_SIZE + hlen
        self.data_offset = self._pos

    def skip_to(self, offset: int) -> None:
        """Go on at file offset ``offset`` (a record boundary past the header, as an
        earlier reader left it): bytes before it are dropped unparsed."""
        if self.header is None or self.data_offset is None or offset < self.offset:
            raise ValueError(f"cannot skip to {offset}: header not read or offset behind "
                             f"{self.offset}")
        if offset <= self.fed:
            self._pos = offset - self._base
        else:
            self._buf, self._pos, self._base = b"", 0, offset

    def take(self, max_records: Optional[int] = None) -> ReadoutBatch:
        """The complete records buffered so far (at most ``max_records``), consumed.

        Raises :class:`ApxFormatError` at the first record with a wrong magic or an
        impossible length; an incomplete last record stays buffered.
        """
        if self.header is None:
            return ReadoutBatch.empty()
        buf = self._buf
        start = self._pos
        cap = len(buf) if max_records is None else max(0, int(max_records))
        # every record found has the right magic: a wrong one stops the walk and is
        # reported by _check_stop() once the good records before it are delivered
        st, lens, stop = _walk(buf, start, cap, self.max_record_length)
        n = st.size
        if not n:
            self._check_stop(stop)
            return ReadoutBatch.empty()
        arr = np.frombuffer(buf, dtype=np.uint8)
        records = np.empty(n, RECORD_DTYPE)
        records["readout_id"] = _u32_at(arr)[st + 3]
        records["timestamp"] = _u64_at(arr)[st + 7]
        records["length"] = lens
        records["offset"] = np.cumsum(lens) - lens
        # the records lie back to back in buf[start:stop]: keep the payload bytes, i.e.
        # repeat (False, True) by (prefix size, payload length) for every record
        runs = np.empty(2 * n, dtype=np.int64)
        runs[0::2] = PREFIX_SIZE
        runs[1::2] = lens
        is_payload = np.zeros(2 * n, dtype=bool)
        is_payload[1::2] = True
        keep = np.repeat(is_payload, runs)
        payload = arr[start:stop][keep]
        self._pos = stop
        return ReadoutBatch(records, payload)

    def check(self) -> None:
        """Raise :class:`ApxFormatError` if the bytes buffered after the records taken are
        already known to be bad (wrong magic, impossible length); cheap, consumes nothing.
        """
        if self.header is not None:
            self._check_stop(self._pos)

    def _raise_magic(self, pos: int) -> None:
        found = self._buf[pos : pos + len(RECORD_MAGIC)]
        raise ApxFormatError(
            self.path,
            self._base + pos,
            f"expected record magic {RECORD_MAGIC.hex()}, found {found.hex()} "
            "(garbage between records or a corrupt length before it)",
        )

    def _check_stop(self, pos: int) -> None:
        """Validate what is buffered at ``pos`` where the walk stopped (if anything)."""
        buf = self._buf
        have = len(buf) - pos
        if have <= 0:
            return
        got = buf[pos : pos + len(RECORD_MAGIC)]
        if got != RECORD_MAGIC[: len(got)]:
            self._raise_magic(pos)
        if have < PREFIX_SIZE:
            return
        (length,) = _U32.unpack_from(buf, pos + 15)
        off = self._base + pos
        if self.max_record_length is not None and length > self.max_record_length:
            raise ApxFormatError(
                self.path,
                off,
                f"record declares a payload of {length} bytes, more than the allowed "
                f"{self.max_record_length}",
            )
        if self.file_size is not None and off + PREFIX_SIZE + length > self.file_size:
            remain = self.file_size - off - PREFIX_SIZE
            missing = length - remain
            raise ApxTruncatedError(
                self.path,
                off,
                missing,
                f"record declares a payload of {length} bytes but only {remain} remain in "
                f"the file ({self.file_size} bytes): truncated last record or corrupt "
                f"length, {missing} bytes missing",
            )

    def truncation(self) -> Optional[Truncation]:
        """What is incomplete if no more bytes will come (call after :meth:`take`)."""
        have = self.buffered
        off = self.offset
        if self.header is None:
            if len(self._buf) < PREAMBLE_SIZE:
                return Truncation(0, "preamble", len(self._buf), PREAMBLE_SIZE - len(self._buf))
            (hlen,) = _U32.unpack_from(self._buf, len(FILE_MAGIC))
            present = len(self._buf) - len(FILE_MAGIC)
            return Truncation(len(FILE_MAGIC), "header", present, 4 + hlen - present)
        if have == 0:
            return None
        if have < PREFIX_SIZE:
            return Truncation(off, "record prefix", have, PREFIX_SIZE - have)
        (length,) = _U32.unpack_from(self._buf, self._pos + 15)
        need = PREFIX_SIZE + length
        if have >= need:  # complete records still buffered: not a truncation
            return None
        return Truncation(off, "record", have, need - have)


# --------------------------------------------------------------------------- files


class ApxReader:
    """A complete ``.apx`` file opened for reading: ``header``, records, batches."""

    #: bytes read from the file at a time
    read_size = 4 << 20

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self._file: BinaryIO = open(self.path, "rb")
        try:
            size = os.fstat(self._file.fileno()).st_size
            parser = ApxStreamParser(self.path, file_size=size)
            parser.feed(self._file.read(PREAMBLE_SIZE))
            if parser.header is None and parser.buffered >= PREAMBLE_SIZE:
                # the parser has checked the declared length against the file size
                (hlen,) = _U32.unpack_from(parser._buf, len(FILE_MAGIC))
                parser.feed(self._file.read(hlen))
            if parser.header is None:
                trunc = parser.truncation()
                assert trunc is not None
                raise trunc.error(self.path)
        except BaseException:
            self._file.close()
            raise
        self.header: ApxHeader = parser.header
        self.data_offset: int = parser.offset

    def batches(self, max_records: int = 65536) -> Iterator[ReadoutBatch]:
        """The records as batches of at most ``max_records``, in file order.

        Raises :class:`ApxFormatError`/:class:`ApxTruncatedError` when reaching bad bytes
        (the batches before them are yielded first).
        """
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        f = self._file
        size = os.fstat(f.fileno()).st_size
        f.seek(self.data_offset)
        parser = ApxStreamParser(self.path, file_size=size)
        parser.header, parser.data_offset = self.header, self.data_offset
        parser._base = self.data_offset
        done = False
        while True:
            while not done and parser.buffered < self.read_size:
                chunk = self._read_chunk(parser)
                if not chunk:
                    done = True
                    break
                parser.feed(chunk)
            batch = parser.take(max_records)
            if len(batch):
                yield batch
                continue
            if done:
                trunc = parser.truncation()
                if trunc is not None:
                    raise trunc.error(self.path)
                return
            # nothing complete in a full buffer: one record longer than read_size
            chunk = self._read_chunk(parser)
            if not chunk:
                done = True
            else:
                parser.feed(chunk)

    def _read_chunk(self, parser: "ApxStreamParser") -> bytes:
        """The next ``read_size`` bytes; an ``OSError`` becomes an :class:`ApxFormatError`
        naming the file and the offset of the failed read."""
        try:
            return self._file.read(self.read_size)
        except OSError as exc:
            raise ApxFormatError(
                self.path, parser.fed, f"cannot read: {exc.strerror or exc}"
            ) from None

    def __iter__(self) -> Iterator[Readout]:
        for batch in self.batches():
            yield from batch

    def read_all(self) -> ReadoutBatch:
        """Every record in one batch."""
        return ReadoutBatch.concat(self.batches(max_records=1 << 62))

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __enter__(self) -> "ApxReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def record_bytes(readout_id: int, timestamp: int, payload: bytes) -> bytes:
    """One record's exact bytes, as the DAQ writes them; ValueError for a field that does
    not fit."""
    if not 0 <= readout_id <= _MAX_U32:
        raise ValueError(f"readout_id {readout_id} does not fit a uint32")
    if not 0 <= timestamp <= _MAX_U64:
        raise ValueError(f"timestamp {timestamp} does not fit a uint64")
    payload = bytes(payload)
    if len(payload) > _MAX_U32:
        raise ValueError("payload longer than 4 GiB")
    return _PREFIX.pack(RECORD_MAGIC, readout_id, timestamp, len(payload)) + payload


class ApxWriter:
    """A new ``.apx`` file: the header is written at once, then records as they come."""

    def __init__(self, path: PathLike, header: ApxHeader) -> None:
        if not isinstance(header, ApxHeader):
            raise TypeError("header must be an ApxHeader")
        self.path = os.fspath(path)
        self.header = header
        self._file: BinaryIO = open(self.path, "wb")
        self._file.write(header.preamble_bytes())

    def write(self, readout_id: int, timestamp: int, payload: bytes) -> None:
        """Append one record."""
        self._file.write(record_bytes(readout_id, timestamp, payload))

    def write_batch(self, batch: ReadoutBatch) -> None:
        """Append every record of ``batch`` in order."""
        self._file.write(batch.to_bytes())

    def flush(self) -> None:
        """Push buffered bytes to the operating system."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()

    def __enter__(self) -> "ApxWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_apx(
    path: PathLike, mode: str = "r", header: Optional[ApxHeader] = None
) -> Union[ApxReader, ApxWriter]:
    """Open ``path`` for reading (``"r"``, an :class:`ApxReader`) or writing (``"w"``).

    Writing needs ``header`` and replaces an existing file.
    """
    if mode == "r":
        if header is not None:
            raise ValueError("header is only used with mode='w'")
        return ApxReader(path)
    if mode == "w":
        if header is None:
            raise ValueError("mode='w' needs a header")
        return ApxWriter(path, header)
    raise ValueError(f"mode must be 'r' or 'w', not {mode!r}")

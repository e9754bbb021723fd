"""AstroPix4 hit decoding: one readout at a time, or a whole batch vectorised with numpy.

The walk over a payload follows the reference implementation's rules (including its
quirks) as described in ``docs/apx-format.md``; results are bit-identical to the
reference wherever the reference does not raise.  Where the reference raises (empty or
all-idle payloads, no start byte, short windows after a drop, ...) this module never
raises: it returns whatever hits it can recover and sets :data:`STATUS_REFERENCE_RAISES`.

Each hit is 8 wire bytes.  The bit order of every byte is reversed, the 8 bytes are read
as a big-endian 64-bit word and the fields are cut out of that word.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = [
    "HIT_DTYPE",
    "IDLE_BYTE",
    "PADDING_BYTE",
    "HIT_SIZE",
    "STATUS_ORPHANS_MATCHED",
    "STATUS_ORPHANS_DROPPED",
    "STATUS_ORPHANS_NOT_USED",
    "STATUS_EXTRA_START",
    "STATUS_EXTRA_OTHER",
    "STATUS_TRUNCATED_HIT",
    "STATUS_REFERENCE_RAISES",
    "DecodedBatch",
    "gray_to_binary",
    "decode_words",
    "decode_readout",
    "decode_batch",
]

#: One decoded hit; the reference CSV's columns, in its order and with its dtypes.
HIT_DTYPE = np.dtype(
    [
        ("chip_id", "u1"),
        ("payload", "u1"),
        ("readout_id", "u4"),
        ("timestamp", "u8"),
        ("decoding_order", "u1"),
        ("row", "u1"),
        ("column", "u1"),
        ("ts_neg1", "u1"),
        ("ts_coarse1", "u2"),
        ("ts_fine1", "u1"),
        ("ts_tdc1", "u1"),
        ("ts_neg2", "u1"),
        ("ts_coarse2", "u2"),
        ("ts_fine2", "u1"),
        ("ts_tdc2", "u1"),
        ("ts_dec1", "u4"),
        ("ts_dec2", "u4"),
        ("tot_us", "f8"),
    ]
)

IDLE_BYTE = 0xBC  #: idle byte sent by the chip between hits
PADDING_BYTE = 0xFF  #: padding byte at the end of a readout buffer
HIT_SIZE = 8  #: bytes per hit

# Status bits: 0x01..0x20 are the reference's own, 0x40 is flyprep's.
STATUS_ORPHANS_MATCHED = 0x01  #: leading orphan bytes were joined to the previous extra bytes
STATUS_ORPHANS_DROPPED = 0x02  #: leading orphan bytes could not be joined and were dropped
STATUS_ORPHANS_NOT_USED = 0x04  #: leading orphan bytes present, no previous extra bytes given
STATUS_EXTRA_START = 0x08  #: trailing extra bytes begin with a start byte
STATUS_EXTRA_OTHER = 0x10  #: trailing extra bytes begin with something else
STATUS_TRUNCATED_HIT = 0x20  #: a truncated hit was dropped (window re-read at an inner start)
STATUS_REFERENCE_RAISES = 0x40  #: the reference would have raised on this payload

_GRAY_WRAP = 1 << 17  # the timestamps are 17-bit Gray codes
_CLOCK_MHZ = 20.0

#: 256-entry table: byte -> the same byte with its bit order reversed.
_BITREV = np.array([int(f"{i:08b}"[::-1], 2) for i in range(256)], dtype=np.uint8)
_BITREV_BYTES = bytes(_BITREV.tolist())

#: 256-entry table: is the byte a hit start byte (top bits 111, not 0xff).
_IS_START = np.array([(i & 0xE0) == 0xE0 and i != PADDING_BYTE for i in range(256)], dtype=bool)


def _is_start(byte: int) -> bool:
    """True if ``byte`` can begin a hit (top three bits set, not the padding byte)."""
    return (byte & 0xE0) == 0xE0 and byte != PADDING_BYTE


@dataclass
class DecodedBatch:
    """What :func:`decode_batch` returns.

    ``hits``: all hits of the batch (``HIT_DTYPE``), readout by readout in batch order;
    ``status``: per-readout status bits (uint8); ``extra``: per-readout trailing extra
    bytes (``None`` when there are none); ``hit_index``: batch index of the readout each
    hit came from (int64); ``n_slow``: how many readouts took the per-readout slow path.
    """

    hits: np.ndarray
    status: np.ndarray
    extra: list[Optional[bytes]]
    hit_index: np.ndarray
    n_slow: int


def gray_to_binary(gray: np.ndarray) -> np.ndarray:
    """Convert Gray-coded integers (up to 32 bits, unsigned array) to binary."""
    b = np.array(gray, dtype=np.uint32, copy=True)
    b ^= b >> 1
    b ^= b >> 2
    b ^= b >> 4
    b ^= b >> 8
    b ^= b >> 16
    return b


def decode_words(words: np.ndarray, out: np.ndarray) -> None:
    """Fill the hit fields of ``out`` (``HIT_DTYPE``) from bit-reversed 64-bit words.

    ``words`` are native uint64 values of the 8 bit-reversed bytes read big-endian.
    ``readout_id``, ``timestamp`` and ``decoding_order`` are left to the caller.
    """
    w = np.asarray(words, dtype=np.uint64)
    hi = (w >> np.uint64(32)).astype(np.uint32)  # bits 32..63
    lo = w.astype(np.uint32)  # bits 0..31 (truncating cast keeps the low 32 bits)
    out["chip_id"] = hi >> 27
    out["payload"] = (hi >> 24) & 7
    out["row"] = (hi >> 19) & 31
    out["column"] = (hi >> 14) & 31
    out["ts_neg1"] = (hi >> 13) & 1
    coarse1 = ((hi & 0x1FFF) << 1) | (lo >> 31)
    fine1 = (lo >> 28) & 7
    coarse2 = (lo >> 8) & 0x3FFF
    fine2 = (lo >> 5) & 7
    out["ts_coarse1"] = coarse1
    out["ts_fine1"] = fine1
    out["ts_tdc1"] = (lo >> 23) & 31
    out["ts_neg2"] = (lo >> 22) & 1
    out["ts_coarse2"] = coarse2
    out["ts_fine2"] = fine2
    out["ts_tdc2"] = lo & 31
    dec1 = gray_to_binary((coarse1 << 3) | fine1)
    dec2 = gray_to_binary((coarse2 << 3) | fine2)
    dec2 = np.where(dec2 < dec1, dec2 + np.uint32(_GRAY_WRAP), dec2)
    out["ts_dec1"] = dec1
    out["ts_dec2"] = dec2
    out["tot_us"] = (dec2.astype(np.int64) - dec1.astype(np.int64)) / _CLOCK_MHZ


_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_S1, _S2, _S4 = np.uint64(1), np.uint64(2), np.uint64(4)
_ONE = np.uint64(1)
_IDLE_WORD = np.uint64(int.from_bytes(bytes([IDLE_BYTE]) * HIT_SIZE, "little"))


def _padded_words(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(padded, w64)``: ``buf`` followed by 8 idle bytes, and its 8-byte windows.

    ``w64[q]`` is the little-endian uint64 of ``padded[q:q + 8]`` for every ``q`` in
    ``0..len(buf)`` (an unaligned strided view, no copy), so the first byte of a window is
    its lowest byte. The idle padding makes loads near the end safe and never a hit.
    """
    padded = np.empty(len(buf) + HIT_SIZE, dtype=np.uint8)
    padded[: len(buf)] = buf
    padded[len(buf) :] = IDLE_BYTE
    w64 = np.ndarray((len(buf) + 1,), dtype="<u8", buffer=padded, strides=(1,))
    return padded, w64


def _idle_run_popcount(x: np.ndarray) -> np.ndarray:
    """Leading idle bytes (0..8) of the windows whose XOR with the idle word is ``x``.

    The lowest non-zero byte of ``x`` is the first non-idle byte; the count of trailing
    zero bits is the popcount of (lowest set bit - 1), which is 64 when ``x`` is 0.
    Needs numpy >= 2.0 (``np.bitwise_count``).
    """
    return (np.bitwise_count((x & (~x + _ONE)) - _ONE) >> 3).astype(np.int64)


def _idle_run_frexp(x: np.ndarray) -> np.ndarray:
    """:func:`_idle_run_popcount` for numpy < 2.0 (no ``np.bitwise_count``).

    The lowest set bit is a power of two, so exact as a float64, and its exponent is the
    count of trailing zero bits (``frexp(2**k)`` is ``(0.5, k + 1)``).
    """
    low = (x & (~x + _ONE)).astype(np.float64)
    trailing_zeros = np.frexp(low)[1].astype(np.int64) - 1
    return np.where(x == 0, HIT_SIZE, trailing_zeros >> 3)


_idle_run = _idle_run_popcount if hasattr(np, "bitwise_count") else _idle_run_frexp


def _gather_words(w64: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """The bit-reversed big-endian 64-bit words of the 8-byte windows at ``pos``.

    ``w64`` is the window view of :func:`_padded_words`.
    """
    x = w64[pos]  # wire bytes, first byte lowest
    # reverse the bits inside every byte, then make the first byte the most significant
    x = ((x >> _S1) & _M1) | ((x & _M1) << _S1)
    x = ((x >> _S2) & _M2) | ((x & _M2) << _S2)
    x = ((x >> _S4) & _M4) | ((x & _M4) << _S4)
    return x.byteswap()


def _decode_windows(windows: list[bytes], readout_id: int, timestamp: int) -> np.ndarray:
    """Decode a list of 8-byte wire windows of one readout into a ``HIT_DTYPE`` array."""
    hits = np.zeros(len(windows), dtype=HIT_DTYPE)
    if not windows:
        return hits
    raw = b"".join(windows).translate(_BITREV_BYTES)
    words = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
    decode_words(words, hits)
    hits["readout_id"] = readout_id
    hits["timestamp"] = timestamp
    hits["decoding_order"] = np.arange(len(windows))
    return hits


def _joins(payload: bytes, orphans_at: int, previous_extra: bytes) -> bool:
    """True if the leading orphan bytes (found at ``orphans_at``) complete ``previous_extra``.

    Conservative: the orphans must start at offset 0 (a hit tail may begin with a data
    byte equal to 0xbc or 0xff, so after skipped idle bytes the split point is unknown),
    ``previous_extra`` must be 1-7 bytes beginning with a start byte, and the ``need``
    payload bytes completing the hit must be followed by idle/padding bytes up to a start
    byte or the end of the payload.
    """
    need = HIT_SIZE - len(previous_extra)
    if orphans_at != 0 or not 0 < need < HIT_SIZE or need > len(payload):
        return False
    if not _is_start(previous_extra[0]):
        return False
    after = need
    while after < len(payload) and payload[after] in (IDLE_BYTE, PADDING_BYTE):
        after += 1
    return after == len(payload) or _is_start(payload[after])


def _walk(payload: bytes, previous_extra: Optional[bytes]) -> tuple[list[bytes], int, Optional[bytes]]:
    """Walk one payload like the reference; return (8-byte windows, status, extra bytes)."""
    n = len(payload)
    windows: list[bytes] = []
    status = 0
    extra: Optional[bytes] = None
    cursor = 0

    # 1. Leading idle/padding, then possibly orphan bytes (tail of a hit begun earlier).
    while cursor < n and payload[cursor] in (IDLE_BYTE, PADDING_BYTE):
        cursor += 1
    if cursor >= n:  # empty or all idle/padding: the reference raises
        return windows, STATUS_REFERENCE_RAISES, None
    if not _is_start(payload[cursor]):
        end = cursor
        while end < n and not _is_start(payload[end]):
            end += 1
        if end >= n:  # no start byte at all: the reference raises
            status |= STATUS_REFERENCE_RAISES
        if previous_extra is None:
            status |= STATUS_ORPHANS_NOT_USED
            cursor = end
        elif _joins(payload, cursor, previous_extra):
            need = HIT_SIZE - len(previous_extra)
            windows.append(previous_extra + payload[:need])
            status |= STATUS_ORPHANS_MATCHED
            cursor = need
        else:
            status |= STATUS_ORPHANS_DROPPED
            cursor = end
    elif previous_extra is not None and len(previous_extra) == HIT_SIZE and _is_start(previous_extra[0]):
        # flyprep extension: a whole hit held back by the `cursor + 8 >= len` quirk.
        windows.append(previous_extra)
        status |= STATUS_ORPHANS_MATCHED

    # 2.-5. The main loop.
    while True:
        while cursor < n and payload[cursor] in (IDLE_BYTE, PADDING_BYTE):
            cursor += 1
        if cursor + HIT_SIZE >= n:  # the reference's quirk: `>=`, not `>`
            if cursor < n:
                extra = payload[cursor:]
                status |= STATUS_EXTRA_START if _is_start(extra[0]) else STATUS_EXTRA_OTHER
            break
        if not _is_start(payload[cursor]):
            # 3. drop bytes until a start byte
            while cursor < n and not _is_start(payload[cursor]):
                cursor += 1
            if cursor >= n:  # nothing left to decode: the reference raises here
                status |= STATUS_REFERENCE_RAISES
                break
            if cursor + HIT_SIZE > n:  # short window after the drop
                extra = payload[cursor:]
                status |= STATUS_REFERENCE_RAISES | STATUS_EXTRA_START
                break
        window = payload[cursor : cursor + HIT_SIZE]
        # 4. an inner byte that looks like a start byte may mean a truncated hit
        inner = next((k for k in range(1, HIT_SIZE) if _is_start(window[k])), None)
        if inner is not None:
            after = cursor + HIT_SIZE
            while after < n and payload[after] == IDLE_BYTE:
                after += 1
            if after < n and not _is_start(payload[after]):
                status |= STATUS_TRUNCATED_HIT
                cursor += inner
                if cursor + HIT_SIZE > n:  # the re-read window is short
                    extra = payload[cursor:]
                    status |= STATUS_REFERENCE_RAISES | STATUS_EXTRA_START
                    break
                window = payload[cursor : cursor + HIT_SIZE]
        # 5. decode, advance, skip idle
        windows.append(window)
        cursor += HIT_SIZE
        while cursor < n and payload[cursor] == IDLE_BYTE:
            cursor += 1
    return windows, status, extra


def decode_readout(
    payload: bytes,
    readout_id: int,
    timestamp: int,
    *,
    previous_extra: Optional[bytes] = None,
) -> tuple[np.ndarray, int, Optional[bytes]]:
    """Decode one readout's payload; return ``(hits, status, extra)``.

    ``hits`` is a ``HIT_DTYPE`` array, ``status`` the status bits, ``extra`` the trailing
    bytes not decoded (``None`` if none).  ``previous_extra`` (the previous readout's
    extra bytes) lets leading orphan bytes be joined into the hit they complete.
    Never raises on a payload; see :data:`STATUS_REFERENCE_RAISES`.
    """
    payload = bytes(payload)
    windows, status, extra = _walk(payload, None if previous_extra is None else bytes(previous_extra))
    return _decode_windows(windows, readout_id, timestamp), status, extra


def _compact(payload: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (buffer, starts) with the readouts laid out back to back in ``buffer``."""
    total = int(lengths.sum())
    starts = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    if len(lengths) and np.array_equal(offsets, offsets[0] + starts):
        o = int(offsets[0])
        return payload[o : o + total], starts
    idx = np.repeat(offsets - starts, lengths) + np.arange(total, dtype=np.int64)
    return payload[idx], starts


def _fast_walk(
    padded: np.ndarray, w64: np.ndarray, starts: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Walk all readouts at once, one hit per step, in the common case only.

    ``padded`` and ``w64`` come from :func:`_padded_words` of the compacted buffer.
    A readout stays on the fast path while its walk meets only: idle bytes (0xbc) between
    hits, and a start byte at each hit position with at least one byte after the window
    (the reference's quirk).  Then the reference's walk gives the same hits: the byte
    after each window's idle run is a start byte or the end, so an inner start-like byte
    never triggers the truncation rule.  Anything else (padding, orphans, junk, extra
    bytes, no hit at all) sends the readout to the slow path.

    Returns ``(fast, pos, rid, order)``: per-readout bool mask and, for every hit found,
    its buffer position, batch readout index and decoding order (hits of readouts that
    left the fast path are included; filter them with ``fast[rid]``).
    """

    def next_non_idle(q: np.ndarray, e: np.ndarray) -> np.ndarray:
        """First non-idle position >= q, or e if that is beyond e.

        Looks 8 bytes at a time; only windows that are idle throughout (rare: runs of 8
        or more idle bytes) need another step.
        """
        x = w64[q] ^ _IDLE_WORD
        q = q + _idle_run(x)
        again = np.flatnonzero((x == 0) & (q < e))
        while again.size:
            x = w64[q[again]] ^ _IDLE_WORD
            q[again] += _idle_run(x)
            again = again[(x == 0) & (q[again] < e[again])]
        return np.minimum(q, e)

    fast = np.ones(len(lengths), dtype=bool)
    act = np.arange(len(lengths))
    e = starts + lengths
    c = next_non_idle(starts, e)
    fast[c >= e] = False  # empty or all idle: the reference raises -> slow path
    pos_l: list[np.ndarray] = []
    rid_l: list[np.ndarray] = []
    ord_l: list[np.ndarray] = []
    k = 0
    while act.size:
        # a clean hit here: a start byte with at least one byte after its window
        # (c <= len(buf) always, and the padding byte there is not a start byte)
        ok = c + HIT_SIZE < e
        ok &= _IS_START[padded[c]]
        # c == e means the readout ended cleanly; anything else not ok goes slow
        bad = ~ok
        bad &= c < e
        if bad.any():
            fast[act[bad]] = False
        keep = np.flatnonzero(ok)
        act, c, e = act[keep], c[keep], e[keep]
        pos_l.append(c)
        rid_l.append(act)
        ord_l.append(np.full(len(c), k, dtype=np.int32))
        c = next_non_idle(c + HIT_SIZE, e)
        k += 1
    if pos_l:
        return fast, np.concatenate(pos_l), np.concatenate(rid_l), np.concatenate(ord_l)
    z = np.zeros(0, dtype=np.int64)
    return fast, z, z, np.zeros(0, dtype=np.int32)


def decode_batch(
    payload: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    readout_ids: np.ndarray,
    timestamps: np.ndarray,
    *,
    carry_extra: bool = False,
    previous_extra: Optional[bytes] = None,
) -> DecodedBatch:
    """Decode many readouts at once; results equal :func:`decode_readout` per readout.

    ``payload`` is a uint8 array holding the payloads; readout ``i`` is
    ``payload[offsets[i]:offsets[i] + lengths[i]]``.  Readouts made only of idle bytes
    and whole hits (the common case) are decoded together with numpy; the others are
    walked one by one like :func:`decode_readout`.  With ``carry_extra=True`` each
    readout's extra bytes are handed to the next readout as ``previous_extra``, so hits
    split across two readouts are recovered; ``previous_extra`` is then the extra bytes
    of the readout before the batch's first one (e.g. ``extra[-1]`` of the previous
    batch), so that carrying also works across batches.
    """
    if previous_extra is not None and not carry_extra:
        raise ValueError("previous_extra needs carry_extra=True")
    payload = np.ascontiguousarray(payload, dtype=np.uint8)
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    readout_ids = np.asarray(readout_ids)
    timestamps = np.asarray(timestamps)
    n_read = len(lengths)
    buf, starts = _compact(payload, offsets, lengths)
    padded, w64 = _padded_words(buf)
    fast, pos, rid, order = _fast_walk(padded, w64, starts, lengths)

    # slow path, in batch order (carried extra bytes may pull the next readout in)
    status = np.zeros(n_read, dtype=np.uint8)
    extra: list[Optional[bytes]] = [None] * n_read
    slow: dict[int, list[bytes]] = {}
    if previous_extra is not None and n_read:
        previous_extra = bytes(previous_extra)
        fast[0] = False  # its result may change with the carried bytes
    queue = sorted(np.flatnonzero(~fast).tolist(), reverse=True)  # pop() gives the smallest
    while queue:
        i = queue.pop()
        if not carry_extra:
            prev = None
        else:
            prev = extra[i - 1] if i > 0 else previous_extra
        s = int(starts[i])
        windows, st, ex = _walk(buf[s : s + int(lengths[i])].tobytes(), prev)
        status[i] = st
        extra[i] = ex
        slow[i] = windows
        if carry_extra and ex is not None and i + 1 < n_read and fast[i + 1]:
            fast[i + 1] = False  # its result may change with the carried bytes
            queue.append(i + 1)

    # where every hit goes: readouts in batch order, hits in decoding order
    keep = fast[rid]
    if not keep.all():
        pos, rid, order = pos[keep], rid[keep], order[keep]
    counts = np.bincount(rid, minlength=n_read)
    for i, w in slow.items():
        counts[i] = len(w)
    first = np.zeros(n_read + 1, dtype=np.int64)
    np.cumsum(counts, out=first[1:])
    n_hits = int(first[-1])
    words = np.empty(n_hits, dtype=np.uint64)
    hit_index = np.empty(n_hits, dtype=np.int64)
    dec_order = np.empty(n_hits, dtype=np.int32)
    dst = first[rid] + order
    words[dst] = _gather_words(w64, pos)
    hit_index[dst] = rid
    dec_order[dst] = order
    for i, w in slow.items():
        if w:
            a, b = first[i], first[i + 1]
            words[a:b] = np.frombuffer(b"".join(w).translate(_BITREV_BYTES), dtype=">u8")
            hit_index[a:b] = i
            dec_order[a:b] = np.arange(len(w))
    hits = np.empty(n_hits, dtype=HIT_DTYPE)
    decode_words(words, hits)
    hits["readout_id"] = readout_ids[hit_index]
    hits["timestamp"] = timestamps[hit_index]
    hits["decoding_order"] = dec_order.astype(np.uint8)  # u1 wraps past 255, like the reference's dtype
    return DecodedBatch(hits, status, extra, hit_index, len(slow))

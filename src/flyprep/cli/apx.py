"""The ``flyprep apx`` verbs: ``dump``, ``hits``, ``convert`` and ``tail``.

:func:`add_apx_commands` declares them on the ``apx`` sub-parser, :func:`run_apx` runs
the one chosen. Errors are raised as :class:`~flyprep.errors.FlyprepError` subclasses
and turned into exit codes by :func:`flyprep.cli.main` (bad input, named with its file and
byte offset: 2; output not writable or already there: 3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..apx.convert import (CSV_COLUMNS, FORMATS, StreamDecoder, convert_file, csv_preamble,
                           format_csv_rows, iter_decoded, open_input)
from ..apx.decode import HIT_DTYPE
from ..apx.format import PREAMBLE_SIZE, ReadoutBatch
from ..errors import InputError
from . import daemon_address
from .exit_codes import ExitCode
from .registry import summary

_FORMAT_BY_SUFFIX = {".csv": "csv", ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
                     ".npz": "npz"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``apx`` and its verbs; returns its parser."""
    parser = subparsers.add_parser("apx", help=summary("apx"))
    add_apx_commands(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the ``flyprep apx`` verb chosen."""
    return run_apx(args)


def add_apx_commands(parser: argparse.ArgumentParser) -> None:
    """Add the ``apx`` sub-commands to ``parser`` (the ``flyprep apx`` parser)."""
    sub = parser.add_subparsers(dest="apx_command", required=True, metavar="COMMAND")

    listen = sub.add_parser("listen", help="live readout and hit rates of a running daemon's "
                                           ".apx stream, a line a second, until Ctrl-C")
    daemon_address.add_options(listen, "apx")
    listen.add_argument("--seconds", type=float, default=None,
                        help="stop after this many seconds (default: until Ctrl-C)")

    dump = sub.add_parser("dump", help="print the header and the raw readouts of an .apx file")
    dump.add_argument("file", type=Path)
    dump.add_argument("--jsonl", action="store_true",
                      help="one JSON object per line: the header, then "
                           "{readout_id, timestamp, data (hex)} per readout")
    dump.add_argument("--limit", type=int, default=None, metavar="N",
                      help="stop after N readouts")

    hits = sub.add_parser("hits", help="decode the AstroPix4 hits and print them "
                                       "(the reference's CSV, or an aligned table)")
    hits.add_argument("file", type=Path)
    hits.add_argument("--table", action="store_true", help="aligned columns instead of CSV")
    hits.add_argument("--limit", type=int, default=None, metavar="N",
                      help="stop after N hits")
    _carry_option(hits)

    conv = sub.add_parser("convert", help="decode an .apx file into a CSV, HDF5 or .npz file")
    conv.add_argument("file", type=Path)
    conv.add_argument("--to", dest="fmt", choices=list(FORMATS),
                      help="output format (default: from the -o suffix)")
    conv.add_argument("-o", "--output", type=Path, default=None,
                      help="output file (default: next to the input, e.g. run.apx -> run.csv)")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output")
    conv.add_argument("--allow-truncated", action="store_true",
                      help="convert the complete records of a file that ends inside a record")
    _carry_option(conv)

    tail = sub.add_parser("tail", help="follow a growing .apx file, counting readouts and hits")
    tail.add_argument("file", type=Path)
    tail.add_argument("--timeout-s", type=float, default=None, metavar="S",
                      help="stop once the file has not grown for S seconds (default: follow "
                           "until Ctrl-C); a file then ending inside a record exits 2")
    tail.add_argument("--interval-s", type=float, default=1.0, metavar="S",
                      help="seconds between status lines when not on a terminal (default 1)")
    _carry_option(tail)


def _carry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--carry-extra", action="store_true",
                        help="pass each readout's trailing bytes to the next readout to "
                             "recover split hits (the reference does not)")


def run_listen(args: argparse.Namespace) -> int:
    """``flyprep apx listen``: readouts/s and hits/s of each file on the daemon's ``.apx``
    stream, one line a second."""
    from ..daemon.bus import BusError, Subscriber

    address = daemon_address.resolve(args, "apx")
    if address is None:
        return ExitCode.INPUT
    endpoint = address.endpoint
    try:
        sub = Subscriber(endpoint, keys=address.keys,
                         topics=(b"apx.records", b"apx.readouts"))
    except BusError as exc:
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return ExitCode.INPUT
    print(f"flyprep: .apx stream of {endpoint} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    start = time.monotonic()
    end = None if args.seconds is None else start + args.seconds
    counts: dict[str, list[int]] = {}  # file -> [readouts, hits] this second
    totals: dict[str, list[int]] = {}
    next_line = start + 1.0
    try:
        while end is None or time.monotonic() < end:
            frames = sub.receive_frames(max(0.001, next_line - time.monotonic()))
            if frames is None and sub.refused() is not None:
                print(f"flyprep: error: {sub.refused()}", file=sys.stderr)
                return ExitCode.FAILED
            if frames is not None:
                body = json.loads(frames[1].bytes)
                name = body.get("file") or body.get("path") or "?"
                mine = counts.setdefault(name, [0, 0])
                if body["kind"] == "apx.records":
                    mine[0] += int(body["count"])
                elif body.get("n_hits") is not None:
                    mine[1] += int(body["n_hits"])
            if time.monotonic() >= next_line:
                for name, (readouts, hits) in sorted(counts.items()):
                    total = totals.setdefault(name, [0, 0])
                    total[0] += readouts
                    total[1] += hits
                    print(f"{Path(name).name}: {readouts:,} readouts/s, {hits:,} hits/s "
                          f"({total[0]:,} readouts, {total[1]:,} hits so far)", flush=True)
                counts = {name: [0, 0] for name in counts}
                next_line += 1.0
    finally:
        sub.close()
    return ExitCode.OK


def run_apx(args: argparse.Namespace) -> int:
    """Run the ``flyprep apx`` sub-command chosen in ``args``."""
    if args.apx_command == "dump":
        return run_dump(args.file, jsonl=args.jsonl, limit=args.limit)
    if args.apx_command == "hits":
        return run_hits(args.file, table=args.table, limit=args.limit,
                        carry_extra=args.carry_extra)
    if args.apx_command == "convert":
        return run_convert(args.file, fmt=args.fmt, output=args.output,
                           overwrite=args.overwrite, allow_truncated=args.allow_truncated,
                           carry_extra=args.carry_extra)
    if args.apx_command == "listen":
        return run_listen(args)
    if args.apx_command == "tail":
        return run_tail(args.file, timeout_s=args.timeout_s, interval_s=args.interval_s,
                        carry_extra=args.carry_extra)
    raise AssertionError(f"unknown apx command {args.apx_command!r}")  # pragma: no cover


# --------------------------------------------------------------------------- output


@contextmanager
def _stdout_pipe() -> Iterator[None]:
    """Stop quietly when the reader of stdout goes away (``flyprep apx hits F | head``)."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        try:  # keep the interpreter from failing again when it flushes stdout at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass


def _write_bytes(data: bytes) -> None:
    """Write ASCII ``data`` to stdout, through its binary buffer when it has one."""
    stream = sys.stdout
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(data.decode("ascii"))
        return
    stream.flush()
    buffer.write(data)
    buffer.flush()


def _limited(total: int, limit: Optional[int]) -> int:
    """How many of ``total`` items may still be printed (``limit`` None: all)."""
    return total if limit is None else max(0, min(total, limit))


# --------------------------------------------------------------------------- dump


def _dump_lines(batch: ReadoutBatch, n: int, jsonl: bool) -> str:
    """Lines for the first ``n`` readouts of ``batch``."""
    rec = batch.records[:n]
    hexed = batch.payload.tobytes().hex()
    ids = rec["readout_id"].tolist()
    stamps = rec["timestamp"].tolist()
    offs = rec["offset"].tolist()
    lens = rec["length"].tolist()
    lines = []
    for rid, ts, off, length in zip(ids, stamps, offs, lens):
        data = hexed[2 * off : 2 * (off + length)]
        if jsonl:
            lines.append(json.dumps({"readout_id": rid, "timestamp": ts, "data": data}))
        else:
            lines.append(f"{rid:>10} {ts:>19} {length:>6}  {data}")
    return "".join(line + "\n" for line in lines)


def run_dump(path: Path, *, jsonl: bool = False, limit: Optional[int] = None) -> int:
    """``flyprep apx dump``: the header, then one line per readout."""
    with _stdout_pipe(), open_input(path) as reader:
        header = reader.header
        if jsonl:
            sys.stdout.write(json.dumps({"header": {"readout_uid": header.readout_uid,
                                                    **header.content}}) + "\n")
        else:
            sys.stdout.write(f"file: {path}\nheader ({reader.data_offset - PREAMBLE_SIZE} bytes): "
                             f"{header.to_bytes().decode('ascii')}\n"
                             f"{'readout_id':>10} {'timestamp (ns)':>19} {'length':>6}  data\n")
        left = limit
        count = 0
        for batch in reader.batches():
            n = _limited(len(batch), left)
            sys.stdout.write(_dump_lines(batch, n, jsonl))
            count += n
            if left is not None:
                left -= n
                if left <= 0:
                    break
        if not jsonl:
            sys.stdout.write(f"{count} readouts\n")
    return ExitCode.OK


# --------------------------------------------------------------------------- hits


def _table_widths() -> list[int]:
    widths = []
    for name in CSV_COLUMNS:
        dt = HIT_DTYPE[name]
        digits = len(str(np.iinfo(dt).max)) if dt.kind == "u" else 9
        widths.append(max(len(name), digits))
    return widths


def _table_text(csv_rows: bytes, widths: list[int]) -> str:
    """CSV lines as right-aligned columns (for people; not on a hot path)."""
    out = []
    for line in csv_rows.decode("ascii").splitlines():
        out.append(" ".join(f.rjust(w) for f, w in zip(line.split(","), widths)))
    return "".join(line + "\n" for line in out)


def run_hits(path: Path, *, table: bool = False, limit: Optional[int] = None,
             carry_extra: bool = False) -> int:
    """``flyprep apx hits``: every decoded hit, as the reference's CSV or a table."""
    widths = _table_widths()
    readouts = hits = flagged = 0
    with _stdout_pipe():
        left = limit
        started = False
        for header, batch, dec in iter_decoded(path, carry_extra=carry_extra):
            if not started:
                if table:
                    sys.stdout.write(f"# {header.to_bytes().decode('ascii')}\n"
                                     + " ".join(c.rjust(w) for c, w in zip(CSV_COLUMNS, widths))
                                     + "\n")
                else:
                    _write_bytes(csv_preamble(header))
                started = True
            n = _limited(len(dec.hits), left)
            shown = len(batch) if n == len(dec.hits) else int(dec.hit_index[n - 1]) + 1 if n else 0
            readouts += shown
            flagged += int(np.count_nonzero(dec.status[:shown]))
            rows = format_csv_rows(dec.hits[:n])
            if table:
                sys.stdout.write(_table_text(rows, widths))
            else:
                _write_bytes(rows)
            hits += n
            if left is not None:
                left -= n
                if left <= 0:
                    break
        if not started:  # a file with a header and no readouts
            with open_input(path) as reader:
                _write_bytes(csv_preamble(reader.header))
    print(f"{path}: {hits} hits from {readouts} readouts ({flagged} readouts flagged)",
          file=sys.stderr)
    return ExitCode.OK


# --------------------------------------------------------------------------- convert


def run_convert(path: Path, *, fmt: Optional[str], output: Optional[Path],
                overwrite: bool = False, allow_truncated: bool = False,
                carry_extra: bool = False) -> int:
    """``flyprep apx convert``: the decoded hits of ``path`` into a CSV, HDF5 or .npz file."""
    if fmt is None:
        if output is None or output.suffix.lower() not in _FORMAT_BY_SUFFIX:
            raise InputError(output if output is not None else path,
                             "cannot tell the output format: give --to csv|hdf5|npz")
        fmt = _FORMAT_BY_SUFFIX[output.suffix.lower()]
    summary = convert_file(path, output, fmt, overwrite=overwrite, carry_extra=carry_extra,
                           allow_truncated=allow_truncated)
    rate = summary.hits / summary.seconds if summary.seconds > 0 else 0.0
    print(f"wrote {summary.output}: {summary.hits} hits from {summary.readouts} readouts "
          f"({summary.flagged} readouts flagged) in {summary.seconds:.2f} s "
          f"({rate:,.0f} hits/s)")
    if summary.truncation is not None:
        print(f"flyprep: warning: {path}: offset {summary.truncation.offset}: "
              f"{summary.truncation.describe()}; the incomplete record was left out",
              file=sys.stderr)
    return ExitCode.OK


# --------------------------------------------------------------------------- tail


class _TailCounts:
    """Running totals of ``flyprep apx tail``, and the hit rate over the last seconds."""

    window_s = 5.0

    def __init__(self, path: Path) -> None:
        self.path = path
        self.readouts = 0
        self.hits = 0
        self.flagged = 0
        self.offset = 0
        self._history: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])

    def add(self, batch: ReadoutBatch, decoder: StreamDecoder) -> None:
        """Decode ``batch`` and count its readouts and hits."""
        if len(batch):
            dec = decoder.decode(batch)
            self.readouts += len(batch)
            self.hits += len(dec.hits)
            self.flagged += int(np.count_nonzero(dec.status))
        now = time.monotonic()
        self._history.append((now, self.hits))
        while len(self._history) > 2 and now - self._history[1][0] >= self.window_s:
            self._history.popleft()

    @property
    def key(self) -> tuple[int, int, int]:
        """What a new status line is printed for (the rate alone is not news)."""
        return self.readouts, self.hits, self.offset

    def line(self, *, rate: bool = True) -> str:
        """The counts, as one line."""
        text = (f"{self.path}: {self.readouts} readouts, {self.hits} hits, "
                f"{self.flagged} flagged, {self.offset} bytes")
        (t0, h0), (t1, h1) = self._history[0], self._history[-1]
        if rate and t1 > t0:
            text += f" ({(h1 - h0) / (t1 - t0):,.0f} hits/s)"
        return text


@contextmanager
def _status_display(interval_s: float) -> Iterator[Callable[[tuple, str], None]]:
    """Yields ``show(key, line)``: a rich live line on a terminal; elsewhere a plain line
    when ``key`` changed and at least ``interval_s`` has passed since the last one."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        with Live(Text(""), console=Console(highlight=False), refresh_per_second=8,
                  transient=True) as live:
            yield lambda key, line: live.update(Text(line))
        return
    last: dict = {"key": None, "at": float("-inf")}

    def show(key: tuple, line: str) -> None:
        now = time.monotonic()
        if key != last["key"] and now - last["at"] >= interval_s:
            print(line, flush=True)
            last["key"], last["at"] = key, now

    yield show


def run_tail(path: Path, *, timeout_s: Optional[float] = None, interval_s: float = 1.0,
             carry_extra: bool = False, poll_interval_s: float = 0.05) -> int:
    """``flyprep apx tail``: follow ``path`` as it grows, showing readout and hit counts.

    Ends on Ctrl-C (exit 0) or when the file has not grown for ``timeout_s``; a file then
    ending inside a record raises :class:`~flyprep.apx.format.ApxTruncatedError`.
    """
    from ..apx.tail import ApxTailer

    counts = _TailCounts(path)
    decoder = StreamDecoder(carry_extra=carry_extra)
    with ApxTailer(path, poll_interval_s=poll_interval_s) as tailer:
        seen, grew_at = -1, time.monotonic()
        reason = "interrupted"
        try:
            with _status_display(interval_s) as show:
                while True:
                    before = tailer.bytes_read
                    counts.add(tailer.poll(), decoder)
                    counts.offset = tailer.offset
                    behind = tailer.bytes_read - before >= tailer.max_poll_bytes
                    now = time.monotonic()
                    if tailer.bytes_read != seen:
                        seen, grew_at = tailer.bytes_read, now
                    show(counts.key, counts.line() if tailer.bytes_read
                         else f"{path}: waiting for the file")
                    if timeout_s is not None and now - grew_at >= timeout_s:
                        reason = f"no growth for {timeout_s:g} s"
                        break
                    if not behind:  # catching up on a backlog: read on at once
                        time.sleep(poll_interval_s)
        except KeyboardInterrupt:
            pass
        if reason == "interrupted":
            pending = tailer.pending
            note = f"; {pending} bytes of an incomplete record pending" if pending else ""
            print(f"{counts.line(rate=False)}; stopped: interrupted{note}", flush=True)
            return ExitCode.OK
        end = tailer.finish()
        counts.add(end.batch, decoder)
        counts.offset = tailer.offset
        print(f"{counts.line(rate=False)}; stopped: {reason}", flush=True)
        end.raise_for_truncation()
    return ExitCode.OK

"""``flyprep prepare``: a finished scan directory into a ``.ptyd``, with a progress bar.
Options carry PtyPy's parameter names; command-line options win over the ``--config``
file, which wins over the defaults."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

from ..config import PrepareConfig, load_toml, merge, parse_config
from .exit_codes import ExitCode
from .registry import summary


def _pair_or_name(text: str) -> Any:
    if text in ("fftshift", "geometric", "fft"):
        return text
    parts = text.replace(",", " ").split()
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected fftshift, geometric, fft or 'y,x', got {text!r}")
    try:
        return (float(parts[0]), float(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(f"centre must be two numbers, got {text!r}") from None


def _orientation(text: str) -> Any:
    if "," in text:
        flags = [p.strip().lower() in ("1", "true", "yes") for p in text.split(",")]
        if len(flags) != 3:
            raise argparse.ArgumentTypeError("orientation tuple needs 3 entries: transpose,flipud,fliplr")
        return tuple(flags)
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"orientation must be 0-7 or t,u,l, got {text!r}") from None


def _psize(text: str) -> Any:
    parts = text.replace(",", " ").split()
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"pixel size must be a number or 'y,x', got {text!r}") from None
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"pixel size must be a number or 'y,x', got {text!r}")
    return values[0] if len(values) == 1 else tuple(values)


# (flag, section, key, argparse kwargs): PtyPy's parameter names on the command line.
PREPARE_OPTIONS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("--shape", "prep", "shape", {"type": int, "help": "square ROI side in raw pixels"}),
    ("--center", "prep", "center", {"type": _pair_or_name, "help": "fftshift | geometric | fft | y,x"}),
    ("--auto-center", "prep", "auto_center", {"action": "store_const", "const": True,
                                               "help": "centre of mass of the first chunk"}),
    ("--orientation", "prep", "orientation", {"type": _orientation, "help": "0-7 or transpose,flipud,fliplr"}),
    ("--rebin", "prep", "rebin", {"type": int, "help": "1-32"}),
    ("--rebin-mode", "prep", "rebin_mode", {"choices": ["mean", "sum"]}),
    ("--dark", "prep", "dark", {"help": "dark map: .npy or file.h5::/dataset"}),
    ("--flat", "prep", "flat", {"help": "flat field map: .npy or file.h5::/dataset"}),
    ("--bad-pixels", "prep", "bad_pixels", {"help": "map whose nonzero pixels are ignored"}),
    ("--saturation", "prep", "saturation", {"type": float, "help": "raw value at which a pixel is ignored"}),
    ("--dtype", "prep", "dtype", {"help": "output dtype: auto, int32, uint32, uint16, float32, float64"}),
    ("--chunk-frames", "output", "chunk_frames", {"type": int, "help": "frames per chunk (default 100)"}),
    ("--save", "output", "save", {"choices": ["link", "append"]}),
    ("--chunk-format", "output", "chunk_format", {"help": "default .chunk%%05d"}),
    ("--compression", "output", "compression", {"help": "none, gzip, lzf, bitshuffle-lz4"}),
    ("--num-frames", "scan", "num_frames", {"type": int, "help": "planned frames (default: all found)"}),
    ("--label", "scan", "label", {}),
    ("--energy", "geometry", "energy", {"type": float, "help": "keV"}),
    ("--distance", "geometry", "distance", {"type": float, "help": "metres"}),
    ("--psize", "geometry", "psize", {"type": _psize, "help": "raw pixel size, metres"}),
    ("--layout", "input", "layout", {"choices": ["auto", "ptypy", "hdf5"]}),
    ("--dataset", "input", "dataset", {"help": "frames dataset in HDF5 files (default /entry/data/data)"}),
    ("--pattern", "input", "frame_glob", {"help": "HDF5 frame file glob (default *.h5)"}),
    ("--positions", "input", "positions", {"help": "positions file (text or HDF5)"}),
    ("--positions-dataset", "input", "positions_dataset", {}),
]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``prepare``; returns its parser."""
    prep = subparsers.add_parser("prepare", help=summary("prepare"))
    prep.add_argument("scan_dir", type=Path)
    prep.add_argument("-o", "--output", type=Path, required=True, help="output .ptyd")
    prep.add_argument("--config", type=Path, help="TOML config; command-line options win")
    existing = prep.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace an existing output")
    existing.add_argument("--resume", action="store_true",
                          help="go on with an output an interrupted run left: its whole "
                               "chunks are kept when this configuration made them")
    prep.add_argument("--allow-missing", action="store_true",
                      help="fill unreadable or absent frames as missing instead of failing")
    prep.add_argument("--no-progress", action="store_true")
    for flag, _section, key, kwargs in PREPARE_OPTIONS:
        prep.add_argument(flag, dest=f"opt_{key}", default=None, **kwargs)

    return prep


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """Defaults, then the TOML file, then command-line options."""
    data: dict[str, Any] = load_toml(args.config) if args.config else {}
    flags: dict[str, dict[str, Any]] = {}
    for _flag, section, key, _kw in PREPARE_OPTIONS:
        value = getattr(args, f"opt_{key}")
        if value is not None:
            flags.setdefault(section, {})[key] = value
    source = str(args.config) if args.config else "command line"
    return parse_config(merge(data, flags), source=source)


def run(args: argparse.Namespace) -> int:
    """Run ``flyprep prepare`` from parsed arguments."""
    config = config_from_args(args)
    return run_prepare(args.scan_dir, args.output, config, overwrite=args.overwrite,
                       resume=args.resume, allow_missing=args.allow_missing,
                       progress=not args.no_progress)


def run_prepare(scan_dir: Path, output: Path, config: PrepareConfig, *, overwrite: bool,
                allow_missing: bool, progress: bool, resume: bool = False) -> int:
    """``flyprep prepare``: a finished scan directory into a ``.ptyd``."""
    from ..errors import FlyprepError
    from ..events import ChunkWritten, Event
    from ..pipeline import prepare_scan
    from ..sources import discover

    inp = config.input
    source = discover(scan_dir, layout=inp.layout, dataset=inp.dataset, pattern=inp.frame_glob,
                      positions=inp.positions, positions_dataset=inp.positions_dataset,
                      units=inp.positions_units)
    total = config.scan.num_frames or len(source.frames)
    with _progress(total, progress, f"preparing {source.root.name}") as advance:
        class ChunkProgress:
            """Advances the bar by each chunk the writer reports stored."""

            def emit(self, event: Event) -> None:
                if isinstance(event, ChunkWritten):
                    advance(event.n_frames)

        try:
            summary = prepare_scan(source, config, output, overwrite=overwrite, resume=resume,
                                   allow_missing=allow_missing, events=ChunkProgress())
        except (FlyprepError, KeyboardInterrupt):
            _say_what_was_left(output)
            raise
    print_summary(summary)
    return ExitCode.OK


def _say_what_was_left(output: Path) -> None:
    """After a failed run: tell the user about the partial output, if one was published."""
    from ..errors import PtydError
    from ..ptyd import open_ptyd
    from .terminal import console

    try:
        ptyd = open_ptyd(output)
    except PtydError:
        return
    if ptyd.state == "aborted":
        kept = ptyd.meta.num_frames - len(ptyd.provenance.get("missing_indices", []))
        console.print(f"flyprep: note: {output} keeps the {kept} frames prepared before the "
                      f"error; it is marked aborted with the rest filled as missing (zero "
                      f"weights). Rerun with --overwrite to replace it.", markup=False,
                      soft_wrap=True)
    elif ptyd.state == "acquiring":
        frames = sum(c.n_frames for c in ptyd.chunks)
        console.print(f"flyprep: note: {output} keeps its first {frames} frames in whole "
                      f"chunks; rerun with --resume to go on from there.", markup=False,
                      soft_wrap=True)


def _progress(total: int, enabled: bool, label: str) -> Any:
    """The progress bar (rich) on a terminal; elsewhere nothing, and rich is not loaded
    (a script running ``flyprep prepare`` does not wait for it)."""
    if enabled and sys.stderr.isatty():
        from .terminal import frame_progress

        return frame_progress(total, enabled, label)
    return contextlib.nullcontext(lambda n: None)


def print_summary(summary: Any) -> None:
    """One paragraph a person reads after a run (a PrepareSummary)."""
    mb = summary.bytes_written / 1e6
    print(f"wrote {summary.output}: {summary.frames} frames in {summary.chunks} chunks, "
          f"{summary.frames_missing} missing, {summary.seconds:.2f} s "
          f"({summary.frames_per_s:.0f} frames/s, {mb / summary.seconds:.0f} MB/s prepared)",
          flush=True)



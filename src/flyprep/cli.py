"""The ``flyprep`` command line. Exit codes: 0 success, 1 verification failed, 2 bad input
or configuration, 3 output could not be written, 130 interrupted."""

from __future__ import annotations

import argparse
from importlib import import_module
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .config import PrepareConfig, load_toml, merge, parse_config
from .errors import ConfigError, FlyprepError, InputError, OutputError, PtydError

EXIT_OK, EXIT_VERIFY, EXIT_INPUT, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="flyprep", description=__doc__.split(".")[0])
    parser.add_argument("--version", action="version", version=f"flyprep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="prepare a finished scan directory into a .ptyd")
    prep.add_argument("scan_dir", type=Path)
    prep.add_argument("-o", "--output", type=Path, required=True, help="output .ptyd")
    prep.add_argument("--config", type=Path, help="TOML config; command-line options win")
    prep.add_argument("--overwrite", action="store_true", help="replace an existing output")
    prep.add_argument("--allow-missing", action="store_true",
                      help="fill unreadable or absent frames as missing instead of failing")
    prep.add_argument("--no-progress", action="store_true")
    for flag, _section, key, kwargs in PREPARE_OPTIONS:
        prep.add_argument(flag, dest=f"opt_{key}", default=None, **kwargs)

    insp = sub.add_parser("inspect", help="print the tree, meta and chunks of a .ptyd")
    insp.add_argument("file", type=Path)
    ver = sub.add_parser("verify", help="check a .ptyd against every rule of the format")
    ver.add_argument("file", type=Path)


    ex = sub.add_parser("example", help="write a synthetic finished scan directory")
    ex.add_argument("dir", type=Path)
    ex.add_argument("--layout", choices=["ptypy", "hdf5"], default="ptypy")
    ex.add_argument("--frames", type=int, default=200)
    ex.add_argument("--side", type=int, default=256, help="raw frame side in pixels")

    from .apx.commands import add_apx_commands

    add_apx_commands(sub.add_parser("apx", help="AstroPix .apx files: dump, decode hits, "
                                               "convert, follow a growing file"))
    for module in _EXTENSIONS.values():
        import_module(module).add_parser(sub)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flyprep`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("flyprep: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (ConfigError, InputError, PtydError) as exc:
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OutputError as exc:
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return EXIT_OUTPUT
    except FlyprepError as exc:  # pragma: no cover - every subclass is listed above
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return EXIT_INPUT


def cmd_prepare(args: argparse.Namespace) -> int:
    from .commands import run_prepare

    config = config_from_args(args)
    return run_prepare(args.scan_dir, args.output, config, overwrite=args.overwrite,
                       allow_missing=args.allow_missing, progress=not args.no_progress)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .commands import run_inspect

    return run_inspect(args.file)


def cmd_verify(args: argparse.Namespace) -> int:
    from .commands import run_verify

    return run_verify(args.file)


def cmd_example(args: argparse.Namespace) -> int:
    from .example import write_example

    root = write_example(args.dir, layout=args.layout, num_frames=args.frames, frame_side=args.side)
    print(f"wrote a {args.frames}-frame example scan ({args.layout} layout) to {root}")
    return EXIT_OK


def cmd_apx(args: argparse.Namespace) -> int:
    from .apx.commands import run_apx

    return run_apx(args)


COMMANDS = {"prepare": cmd_prepare, "inspect": cmd_inspect, "verify": cmd_verify,
            "example": cmd_example, "apx": cmd_apx}

#: Modules that bring their own sub-command: ``add_parser(subparsers)`` registers it and
#: ``run(args) -> int`` runs it.
_EXTENSIONS = {"simulate": "flyprep.simulate", "check-config": "flyprep.config_command",
               "status": "flyprep.status_command", "run": "flyprep.run_command", "demo": "flyprep.demo",
               "end-scan": "flyprep.end_scan_command"}
for _name, _module in _EXTENSIONS.items():
    COMMANDS[_name] = lambda args, _module=_module: import_module(_module).run(args)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

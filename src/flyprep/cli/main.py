"""The ``flyprep`` command line: every command in one registry, one set of exit codes
(:class:`~flyprep.cli.exit_codes.ExitCode`: 0 done, 1 the answer is no, 2 bad input or
configuration, 3 output or service not set up, 130 interrupted)."""

from __future__ import annotations

import argparse
import gc
import os
import re
import textwrap
import sys
from importlib import import_module
from typing import Sequence

from ..errors import ConfigError, FlyprepError, InputError, OutputError, PtydError
from .exit_codes import EXIT_CODES_HELP, ExitCode
from .registry import COMMANDS


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with every command of :data:`~.registry.COMMANDS`. Given the
    command line ``argv``, only the command it names is built whole (its module imported);
    the others are listed with their summary, so that ``flyprep --help`` and each command
    start without loading the rest."""
    parser = argparse.ArgumentParser(
        prog="flyprep", description="flyprep: ptychography scans prepared while they are "
                                    "measured, and the tools around it")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="show the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    named = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    for name, (module_name, summary) in COMMANDS.items():
        if named is not None and name != named:
            sub.add_parser(name, help=summary)
            continue
        module = import_module(module_name)
        command = module.add_parser(sub)
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.description = command.description or _plain(module.__doc__)
        command.epilog = EXIT_CODES_HELP
    return parser


class _Version(argparse.Action):
    """``--version``: the installed version, looked up only when asked (the lookup costs
    more than the rest of a command's start)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from .. import __version__

        print(f"flyprep {__version__}")
        parser.exit()


def _plain(doc: str | None) -> str | None:
    """A module docstring's first paragraph as plain text (no reST markup)."""
    if not doc:
        return None
    text = doc.strip().split("\n\n")[0]
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], text)
    return textwrap.fill(" ".join(text.replace("``", "").split()), 88)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flyprep`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        return int(import_module(COMMANDS[args.command][0]).run(args))
    except KeyboardInterrupt:
        print("flyprep: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.OK
    except (ConfigError, InputError, PtydError) as exc:
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return ExitCode.INPUT
    except OutputError as exc:
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return ExitCode.OUTPUT
    except FlyprepError as exc:  # pragma: no cover - every subclass is listed above
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return ExitCode.INPUT


def console() -> int:
    """The ``flyprep`` console script (and ``python -m flyprep.cli``): :func:`main`, then
    a quick exit."""
    code = main()
    # The command is done: its files are closed and fsynced, its output flushed. The
    # collector's last pass over every object still alive (pydantic's schemas, numpy's
    # and h5py's types) took 80-100 ms of each command's exit; frozen, it is skipped.
    gc.freeze()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console())

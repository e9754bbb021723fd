"""The ``flyprep`` command line: every command in one registry, one set of exit codes
(:class:`~flyprep.cli.exit_codes.ExitCode`: 0 done, 1 the answer is no, 2 bad input or
configuration, 3 output or service not set up, 130 interrupted)."""

from __future__ import annotations

import argparse
import os
import re
import textwrap
import sys
from importlib import import_module
from typing import Sequence

from .. import __version__
from ..errors import ConfigError, FlyprepError, InputError, OutputError, PtydError
from .exit_codes import EXIT_CODES_HELP, ExitCode

#: Every command and the module that declares it (``add_parser(subparsers)``) and runs it
#: (``run(args) -> int``); modules import what a command needs inside ``run``, so that
#: building the parser stays cheap.
COMMANDS: dict[str, str] = {
    "prepare": "flyprep.cli.prepare",
    "inspect": "flyprep.cli.inspect",
    "verify": "flyprep.cli.verify",
    "export-usid": "flyprep.cli.export_usid",
    "run": "flyprep.cli.run",
    "status": "flyprep.cli.status",
    "events": "flyprep.cli.events",
    "end-scan": "flyprep.cli.end_scan",
    "check-config": "flyprep.cli.check_config",
    "keys": "flyprep.cli.keys",
    "apx": "flyprep.cli.apx",
    "simulate": "flyprep.cli.simulate",
    "example": "flyprep.cli.example",
    "demo": "flyprep.cli.demo",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="flyprep", description="flyprep: ptychography scans prepared while they are "
                                    "measured, and the tools around it")
    parser.add_argument("--version", action="version", version=f"flyprep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS.values():
        module = import_module(name)
        command = module.add_parser(sub)
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.description = command.description or _plain(module.__doc__)
        command.epilog = EXIT_CODES_HELP
    return parser


def _plain(doc: str | None) -> str | None:
    """A module docstring's first paragraph as plain text (no reST markup)."""
    if not doc:
        return None
    text = doc.strip().split("\n\n")[0]
    text = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], text)
    return textwrap.fill(" ".join(text.replace("``", "").split()), 88)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flyprep`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(import_module(COMMANDS[args.command]).run(args))
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

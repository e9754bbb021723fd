"""The ``flyprep`` command line: one registry of commands (:data:`flyprep.cli.registry.COMMANDS`)
and one set of exit codes (:class:`flyprep.cli.exit_codes.ExitCode`)."""

from .main import main

__all__ = ["main"]

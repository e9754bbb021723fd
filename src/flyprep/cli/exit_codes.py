"""The exit codes of every ``flyprep`` command, in one place."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """What a ``flyprep`` command's exit status means."""

    #: Done as asked.
    OK = 0
    #: The command ran and the answer is no: a file breaks a rule of the format, the daemon
    #: cannot be reached or refused the request, the demo found a problem.
    FAILED = 1
    #: Bad input: a file, the configuration, an option or an endpoint (argparse's usage
    #: errors are 2 as well).
    INPUT = 2
    #: The output or the service could not be set up: a file not writable or already
    #: there, a socket that cannot be bound.
    OUTPUT = 3
    #: Interrupted (Ctrl-C).
    INTERRUPTED = 130


#: What every command's ``--help`` ends with.
EXIT_CODES_HELP = """exit codes:
  0    done
  1    the answer is no (verify found an error, the daemon cannot be reached or refused)
  2    bad input, configuration, option or endpoint
  3    the output or the service could not be set up
  130  interrupted (Ctrl-C)"""

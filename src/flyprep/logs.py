"""How flyprep's processes log: one line per record on stderr."""

from __future__ import annotations

import logging
import os
import sys
import warnings


def configure_logging(level: str) -> None:
    """One line per record on stderr at ``level`` (a name: ``INFO``); journald adds
    the time under systemd."""
    fmt = ("%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM")
           else "%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.basicConfig(level=getattr(logging, level), format=fmt, stream=sys.stderr)
    # watchdog's inotify emitter warns when it adds the watch of a new directory twice;
    # harmless (the second replaces the first), and alarming in a service's journal.
    warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning,
                            module="watchdog")

"""How flyprep's processes log: one line per record on stderr, as text or JSON.

Under systemd (stderr is the journal's stream, ``$JOURNAL_STREAM``), each line starts with
its syslog priority (``<3>`` for an error, sd-daemon(3)), so that ``journalctl -p err``
filters; the journal adds the time, and a traceback stays on the record's one line. JSON
lines (``log.format = "json"``) hold ``time`` (UTC, ISO 8601), ``level``, ``logger``,
``message`` and, for an error with a traceback, ``exception``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import warnings
from typing import Literal

#: Python's levels as syslog priorities (sd-daemon(3) prefixes).
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
            logging.DEBUG: 7}


def priority(levelno: int) -> int:
    """The syslog priority of a Python level (the nearest one at or above it)."""
    for level in sorted(PRIORITY, reverse=True):
        if levelno >= level:
            return PRIORITY[level]
    return 7


def under_journald(stream: object = None) -> bool:
    """True when ``stream`` (stderr) is the journal's (``$JOURNAL_STREAM`` names it)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in expected:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())  # type: ignore[attr-defined]
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message``; the time first unless the journal adds it; with
    ``journald``, the priority prefix and the record on one line."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s" if journald
                         else "%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journald:
            return f"<{priority(record.levelno)}>" + text.replace("\n", " | ")
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (with the priority prefix under journald)."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        body = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int(record.msecs):03d}Z",
                "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        line = json.dumps(body, ensure_ascii=False)
        return f"<{priority(record.levelno)}>{line}" if self.journald else line


def configure_logging(level: str, fmt: Literal["text", "json"] = "text") -> None:
    """Log records at ``level`` (a name: ``INFO``) and above to stderr, one line each, as
    ``fmt``; replaces what an earlier call configured (the daemon reconfigures once its
    config is read), and leaves other handlers alone."""
    journald = under_journald()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(journald) if fmt == "json" else TextFormatter(journald))
    handler.set_name("flyprep")
    root = logging.getLogger()
    for old in root.handlers[:]:
        if old.get_name() == "flyprep":
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    # watchdog's inotify emitter warns when it adds the watch of a new directory twice;
    # harmless (the second replaces the first), and alarming in a service's journal.
    warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning,
                            module="watchdog")

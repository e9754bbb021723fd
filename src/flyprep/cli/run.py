"""``flyprep run --config FILE``: the long-running service.

SIGTERM or SIGINT asks for a clean stop: running scans write their whole chunks and stay
resumable, sockets close, exit code 0. A second signal exits at once (the output is
crash-safe either way: the next start reconciles it). SIGHUP reads the configuration
again: a bad one is refused (logged) and the running one kept; new settings apply to
scans that start afterwards, and what needs a restart (endpoints, the watcher) is said.
Under systemd (``Type=notify``) the daemon reports ``READY=1`` once its sockets are bound
and its watcher runs, ``RELOADING=1`` then ``READY=1`` around a reload, ``STOPPING=1``
when it begins to stop, a one-line ``STATUS=``, and ``WATCHDOG=1`` pings while no scan is
stuck (``WatchdogSec=``; ``limits.stall_s``).

Exit codes: 0 stopped cleanly, 2 bad configuration, CURVE keys included (not retried by
the systemd unit),
3 could not start (an endpoint in use, a watched root missing: e.g. a network mount not
there yet; retried), 130/143 forced stop by a second signal.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FlyprepError
from ..logs import configure_logging
from .exit_codes import ExitCode
from .registry import summary


log = logging.getLogger("flyprep")


#: The interpreter's thread switch interval in the daemon (Python's default is 5 ms).
SWITCH_INTERVAL_S = 0.001
#: glibc's malloc arenas at most (its default: 8 per core). Each scan's threads would
#: otherwise grow arenas of their own, and the daemon's memory with each new scan thread
#: for a long while (the soak: +48 % in 5 min, flat with 2). $MALLOC_ARENA_MAX overrides.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # malloc.h


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas (before threads start); False where that cannot be done
    (not glibc) or ``$MALLOC_ARENA_MAX`` already says how many."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``run`` on an ``add_subparsers()`` object; returns its parser."""
    parser = subparsers.add_parser("run", help=summary("run"))
    parser.add_argument("--config", "-c", type=Path, required=True, help="daemon TOML config")
    parser.add_argument("--log-level", default=os.environ.get("FLYPREP_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log level (default INFO, or $FLYPREP_LOG_LEVEL)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Load the config, start the daemon, serve until a signal; see the module doc."""
    configure_logging(args.log_level)
    limit_malloc_arenas()
    from ..config import load_daemon_config
    from ..daemon.service import Daemon
    from ..daemon.systemd import Notifier

    def load() -> Any:
        return load_daemon_config(args.config, require_roots=False)

    try:
        config = load()
    except ConfigError as exc:
        print(f"flyprep: error: {exc}", file=sys.stderr)
        return ExitCode.INPUT
    configure_logging(args.log_level, config.log.format)
    notifier = Notifier()
    daemon = Daemon(config, notifier=notifier, loader=load)
    # Threads hand the interpreter lock over every 1 ms instead of 5: the publishers and
    # the thread answering relayed control commands (snapshot, end_scan, ...) get their
    # turn within milliseconds while preparation threads compute.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    signals = {"count": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            os.write(2, b"flyprep: second signal, exiting now\n")
            os._exit(128 + signum)
        daemon.should_exit.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: daemon.request_reload())
    try:
        daemon.startup()
    except ConfigError as exc:  # e.g. a CURVE key the config names: not worth retrying
        print(f"flyprep: error: could not start: {exc}", file=sys.stderr)
        return ExitCode.INPUT
    except (FlyprepError, OSError) as exc:
        print(f"flyprep: error: could not start: {exc}", file=sys.stderr)
        return ExitCode.OUTPUT
    notifier.send("READY=1", f"STATUS={daemon.status_line()}")
    metrics = daemon.endpoints["metrics"]
    print(f"flyprep: ready; events {daemon.endpoints['events']}, control "
          f"{daemon.endpoints['control']}{f', metrics {metrics}' if metrics else ''}",
          file=sys.stderr, flush=True)
    try:
        daemon.main_loop()
    finally:
        notifier.send("STOPPING=1", "STATUS=stopping: scans write their whole chunks")
        log.info("stopping: running scans write their whole chunks and stay resumable")
        daemon.shutdown()
    if daemon.failure is not None:
        print(f"flyprep: error: {daemon.failure}", file=sys.stderr)
        return ExitCode.OUTPUT
    log.info("stopped")
    return ExitCode.OK

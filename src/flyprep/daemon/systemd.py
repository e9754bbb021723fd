"""Telling systemd how the service is: ``READY=1``, ``RELOADING=1``, ``STOPPING=1``,
a one-line ``STATUS=``, and ``WATCHDOG=1`` pings (sd_notify(3), with no library: one
datagram on ``$NOTIFY_SOCKET``).

The watchdog interval is systemd's ``WatchdogSec=``, given in ``$WATCHDOG_USEC`` (and
``$WATCHDOG_PID``, the process meant). The daemon pings at half of it, and only while it
is healthy: a scan or writer thread stuck beyond ``limits.stall_s`` stops the pings, and
systemd restarts the service (the next start resumes every scan).
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """sd_notify for this process; every call does nothing without ``$NOTIFY_SOCKET``."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        #: Seconds between watchdog pings (half of WatchdogSec), None: no watchdog.
        self.watchdog_interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 \
            and mine else None
        self._last_ping = float("-inf")
        self._status = ""
        self._warned = False

    @property
    def active(self) -> bool:
        """True under systemd (a notify socket was given)."""
        return bool(self.address)

    def send(self, *states: str) -> bool:
        """Send ``states`` (``"READY=1"``, ...) in one datagram; False if not sent."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(states).encode())
        except OSError as exc:
            if not self._warned:  # once: the journal must not fill with it
                log.warning("systemd notify failed: %s", exc)
                self._warned = True
            return False
        return True

    def status(self, line: str) -> None:
        """``STATUS=line``, sent only when it changed."""
        line = line.replace("\n", " ")
        if line != self._status:
            self._status = line
            self.send(f"STATUS={line}")

    def watchdog(self, healthy: bool, now: float | None = None) -> bool:
        """Ping the watchdog if one is set, ``healthy``, and half its interval passed;
        True if a ping was sent."""
        if self.watchdog_interval_s is None or not healthy:
            return False
        now = time.monotonic() if now is None else now
        if now - self._last_ping < self.watchdog_interval_s:
            return False
        self._last_ping = now
        return self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """``RELOADING=1`` (with the monotonic time newer systemd versions ask for)."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

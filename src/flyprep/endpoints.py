"""Endpoint syntax and locality, shared by the configuration and the daemon's sockets
(and light enough for the control process, which loads neither pydantic nor numpy)."""

from __future__ import annotations

import ipaddress
import re

TCP_ENDPOINT = re.compile(r"^tcp://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.*-]+):(?P<port>\*|[0-9]+)$")


def check_endpoint(value: str) -> str:
    """Accept ``tcp://HOST:PORT`` (port 1-65535 or ``*``) or ``ipc://PATH``; else ValueError."""
    if value.startswith("ipc://"):
        if not value[len("ipc://"):].strip():
            raise ValueError("ipc:// endpoint needs a path")
        return value
    match = TCP_ENDPOINT.match(value)
    if match is None:
        raise ValueError("expected tcp://HOST:PORT or ipc://PATH")
    port = match["port"]
    if port != "*" and not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return value


def is_local_endpoint(value: str) -> bool:
    """True for ``ipc://`` and for tcp on a loopback address (127.0.0.0/8, ::1, localhost)."""
    if value.startswith("ipc://"):
        return True
    match = TCP_ENDPOINT.match(value)
    if match is None:
        return False
    host = match["host"].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", interface or host names: may be reachable from outside
        return False

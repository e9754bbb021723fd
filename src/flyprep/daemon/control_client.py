"""The control socket's client: one request, its reply envelope, never a hang.

Light on purpose (pyzmq and the standard library; the CURVE helpers only when keys are
given), so that ``flyprep status`` and scripts start at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import zmq

from ..errors import FlyprepError

if TYPE_CHECKING:
    from .curve import ClientKeys, Handshake


class BusError(FlyprepError):
    """A socket could not be bound or connected, or a control request failed in transport."""


class ControlTimeout(BusError):
    """No reply from the control server in time (daemon not running, or stuck)."""


def _wait_reply(sock: zmq.Socket, handshake: Handshake | None, timeout_ms: int,
                endpoint: str, keys: ClientKeys | None) -> bool:
    """True once a reply is there, False after ``timeout_ms``; BusError as soon as the
    daemon turns the handshake down (a refused key is told at once, not at the timeout)."""
    if handshake is None:
        return bool(sock.poll(timeout_ms, zmq.POLLIN))
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        step = min(50, max(1, int((deadline - time.monotonic()) * 1000)))
        if sock.poll(step, zmq.POLLIN):
            return True
        refused = handshake.failure(endpoint, keys)
        if refused is not None:
            raise BusError(refused)
        if time.monotonic() >= deadline:
            return False


def request(endpoint: str, command: str, *, params: Mapping[str, Any] | None = None,
            timeout_s: float = 2.0, context: zmq.Context | None = None,
            keys: ClientKeys | None = None) -> dict[str, Any]:
    """Send one control request; the reply envelope ``{"ok": ..., "result"|"error": ...}``.

    Raises :class:`ControlTimeout` when nothing answers within ``timeout_s`` and
    :class:`BusError` for an endpoint that cannot be connected or a reply that is not JSON.
    A nack (``ok`` false) is returned, not raised. ``keys``: this client's CURVE keys
    (used on tcp); a daemon that refuses them gives a BusError that says so.
    """
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    timeout_ms = max(1, int(timeout_s * 1000))
    sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
    handshake = None
    try:
        if keys is not None:
            keys.apply(sock, endpoint)
        if endpoint.startswith("tcp://"):
            from .curve import Handshake

            handshake = Handshake(sock)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            raise BusError(f"cannot connect to {endpoint}: {exc}") from exc
        body = {**(params or {}), "command": command}
        try:
            sock.send(json.dumps(body).encode())
        except zmq.Again:
            raise ControlTimeout(f"no flyprep daemon at {endpoint}: request {command!r} not "
                                 f"accepted within {timeout_s:g} s") from None
        if not _wait_reply(sock, handshake, timeout_ms, endpoint, keys):
            raise ControlTimeout(f"no reply from {endpoint} to {command!r} within {timeout_s:g} s: "
                                 f"is the flyprep daemon running there?")
        raw = sock.recv()
    finally:
        if handshake is not None:
            handshake.close()
        sock.close(linger=0)
    try:
        reply = json.loads(raw)
    except ValueError as exc:
        raise BusError(f"reply from {endpoint} is not JSON: {exc}") from exc
    if not isinstance(reply, dict) or "ok" not in reply:
        raise BusError(f"reply from {endpoint} is not an ack/nack envelope: {raw[:200]!r}")
    return reply

"""Receiving and sending on a ZeroMQ socket that poll() found ready, without letting go
of Python's interpreter lock.

pyzmq releases the lock around every socket call, which is right for calls that may
block. A control request, though, is three frames in and three out, all ready at once;
while the daemon drains a scan, other threads take the lock at each release and the
control thread waits a switch interval or more to get it back, six times per request
(README, control round trips). Here the same libzmq that pyzmq loaded is called through
``ctypes.PyDLL``, which keeps the lock, with ``ZMQ_DONTWAIT``: the calls never block.
:func:`held_io` returns None where that library cannot be found; callers then use pyzmq.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

import zmq

_MSG_BYTES = 64  # sizeof(zmq_msg_t)
_EINTR = 4


@dataclass(frozen=True)
class Frame:
    """One received frame: its bytes, whether more follow, the peer's ZAP User-Id."""

    data: bytes
    more: bool
    user_id: str | None


class HeldIO:
    """Non-blocking recv/send of one socket through libzmq, the interpreter lock held."""

    def __init__(self, lib: ctypes.PyDLL, sock: zmq.Socket) -> None:
        self._lib = lib
        self._handle = ctypes.c_void_p(sock.underlying)
        self._msg = (ctypes.c_ubyte * _MSG_BYTES)()

    def recv(self) -> Frame | None:
        """The next frame, None when there is none now."""
        lib, msg = self._lib, self._msg
        lib.zmq_msg_init(msg)
        try:
            while lib.zmq_msg_recv(msg, self._handle, zmq.DONTWAIT) < 0:
                if lib.zmq_errno() != _EINTR:  # a signal: try again, as pyzmq does
                    return None
            data = ctypes.string_at(lib.zmq_msg_data(msg), lib.zmq_msg_size(msg))
            user = lib.zmq_msg_gets(msg, b"User-Id")
            return Frame(data, bool(lib.zmq_msg_more(msg)),
                         None if user is None else user.decode(errors="replace"))
        finally:
            lib.zmq_msg_close(msg)

    def recv_message(self) -> tuple[list[bytes], str | None] | None:
        """The next whole message (its frames and the sender's User-Id), None when there is
        none now. ZeroMQ delivers a message's frames together: once the first is in, all
        are."""
        first = self.recv()
        if first is None:
            return None
        frames, last = [first.data], first
        while last.more:
            frame = self.recv()
            if frame is None:  # pragma: no cover - cannot happen (atomic delivery)
                break
            frames.append(frame.data)
            last = frame
        return frames, last.user_id

    def send(self, frames: list[bytes]) -> bool:
        """Send ``frames`` as one message; False when it cannot be sent now."""
        lib, last = self._lib, len(frames) - 1
        for i, frame in enumerate(frames):
            flags = zmq.DONTWAIT | (0 if i == last else zmq.SNDMORE)
            while lib.zmq_send(self._handle, frame, len(frame), flags) < 0:
                if lib.zmq_errno() != _EINTR:
                    return False
        return True


def _loaded_libzmq() -> str | None:
    """The path of the libzmq this process loaded (pyzmq's), from /proc/self/maps; None
    unless exactly one is mapped (with two, which one pyzmq's sockets belong to is not
    known, and a socket must only be handed to its own library)."""
    try:
        with open("/proc/self/maps") as maps:
            found = {line.rsplit(None, 1)[-1] for line in maps
                     if "libzmq" in os.path.basename(line.rsplit(None, 1)[-1])
                     and ".so" in line}
    except OSError:
        return None
    return found.pop() if len(found) == 1 else None


def held_io(sock: zmq.Socket) -> HeldIO | None:
    """A :class:`HeldIO` for ``sock``, or None when the library cannot be used here."""
    path = _loaded_libzmq()
    if path is None:
        return None
    try:
        lib = ctypes.PyDLL(path)
    except OSError:
        return None
    major, minor, patch = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    lib.zmq_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
    if (major.value, minor.value, patch.value) != zmq.zmq_version_info():
        return None  # not the library pyzmq was built with
    lib.zmq_msg_init.argtypes = [ctypes.c_void_p]
    lib.zmq_msg_recv.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    lib.zmq_msg_data.argtypes = [ctypes.c_void_p]
    lib.zmq_msg_data.restype = ctypes.c_void_p
    lib.zmq_msg_size.argtypes = [ctypes.c_void_p]
    lib.zmq_msg_size.restype = ctypes.c_size_t
    lib.zmq_msg_more.argtypes = [ctypes.c_void_p]
    lib.zmq_msg_gets.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.zmq_msg_gets.restype = ctypes.c_char_p
    lib.zmq_msg_close.argtypes = [ctypes.c_void_p]
    lib.zmq_send.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    return HeldIO(lib, sock)

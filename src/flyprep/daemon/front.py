"""The control socket, served by a process of its own.

Python runs one thread at a time. While the daemon drains a scan, its preparing and
writing threads hold the interpreter lock most of the time, so a control server in the
same process waits for the lock before it can answer (README, control round trips). Here
the control socket belongs to a small child process, which loads neither numpy nor
h5py and has a lock of its own:

* ``ping``, ``version`` and ``status`` are answered there at once. ``status`` is the
  document the daemon pushes every :data:`STATUS_PUSH_S` while clients ask for it
  (:data:`ASKED_S` after each request), every :data:`IDLE_PUSH_S` otherwise, and right
  after a command changed something; its ``as_of`` field says when it was taken. A
  ``status`` asked after a quiet spell, or when the document is older than
  :data:`FRESH_S`, is answered after a fresh push (:meth:`Front.stale`).
* The other commands (``scan``, ``snapshot``, ``apx_header``, ``end_scan``,
  ``abort_scan``, ``reset_stats``) are checked there (JSON, size, who may change a scan)
  and relayed to the daemon over a PAIR socket in a private directory; their replies go
  back to their clients, while ``ping`` and ``status`` are answered meanwhile.

Data flows one way: the daemon pushes its state, the control process never asks for it.

Lifecycle: the daemon (:class:`ControlProcess`, a worker thread) starts the child
(:data:`LAUNCHER`, in a session of its own) with its settings on stdin and keeps stdin open; the child prints ``ready ENDPOINT`` or
``failed REASON`` on stdout. The child ignores SIGINT and SIGTERM (it keeps answering
while the daemon stops, state ``stopping``) and exits when its stdin ends, that is when
the daemon closes it or dies, even by SIGKILL. If the child dies, the daemon says so
and exits non-zero (:attr:`Worker.thread_error`).
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from ..logs import configure_logging
from ..workers import Call, Worker
from .control import BusError, Commands, ControlServer, Handler, IpcAccess, Relay
from .curve import Guard

log = logging.getLogger(__name__)

#: The daemon pushes its status to the control process this often while clients ask for
#: it (:data:`ASKED_S`), and every :data:`IDLE_PUSH_S` otherwise.
STATUS_PUSH_S = 0.1
IDLE_PUSH_S = 1.0
#: A status older than this (nobody asked lately) is answered after a fresh push.
FRESH_S = 0.25
#: A status request keeps the fast pushes going this long.
ASKED_S = 5.0
#: Relayed requests answered per turn of the daemon's side at most (then it pushes the
#: status and looks at its stop flag: a flood of them cannot starve either).
RELAYED_BATCH = 16
#: How the control process is started: signals ignored before anything is imported (a
#: stop or a Ctrl-C during its start must not kill it), the working directory taken out of
#: the import path (python -c puts it first: a stray zmq.py there must not be run).
LAUNCHER = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); import sys; del sys.path[0]; "
            "from flyprep.daemon.front import main; sys.exit(main())")
#: The control process must say it is ready (its socket bound) within this.
READY_TIMEOUT_S = 30.0
#: Commands the control process answers itself.
LOCAL = ("ping", "version", "status")


class ControlProcess(Worker):
    """The daemon's side of the control process: starts it, answers the commands it
    relays (``handlers``, run on this worker's thread), pushes ``status()`` to it.

    ``settings``: what the child needs to serve the socket (see :func:`settings`).
    """

    def __init__(self, settings: dict[str, Any], handlers: Mapping[str, Handler],
                 status: Callable[[], dict[str, Any]]) -> None:
        super().__init__("control")
        self._settings = settings
        self._commands = Commands({**handlers, "refresh": lambda params: {"pushed": True}})
        self._mutating = frozenset(settings["mutating"])
        self._status = status
        self.endpoint: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reset_pending = False
        self._open = threading.Event()
        self._asked_until = 0.0  # fast status pushes until then
        self._next_push = 0.0
        #: The status document pushed last (what ``status`` answers now), None before.
        self.last_status: dict[str, Any] | None = None

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> ControlProcess:
        """Start it and wait until its socket is bound; BusError if it cannot be."""
        self.launch()
        self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        try:
            Worker.wait_ready(self, timeout_s)
        except TimeoutError as exc:
            raise BusError(f"the control process did not start within {timeout_s:g} s") from exc

    def open(self) -> None:
        """The daemon has started: push its status (the control process answers from
        then on)."""
        self._open.set()

    def close(self, *, timeout_s: float = 5.0) -> bool:
        """Stop the process and the thread. Idempotent. False if either did not stop in
        time (the process is then killed)."""
        return self.stop_and_join(timeout_s)

    def reset_stats(self) -> None:
        """The control process's counters back to 0 (before the next reply it gets)."""
        self._reset_pending = True

    @property
    def pid(self) -> int | None:
        """The control process's pid, while it runs."""
        return None if self._proc is None else self._proc.pid

    # ---- the thread

    def loop(self) -> None:
        home = tempfile.mkdtemp(prefix="flyprep-control-")  # mode 0700: ours alone
        ctx = zmq.Context()
        link = ctx.socket(zmq.PAIR)
        link.setsockopt(zmq.LINGER, 0)
        try:
            try:
                link.bind(f"ipc://{home}/link")
            except zmq.ZMQError as exc:
                raise BusError(f"cannot bind the control link in {home}: {exc} (a shorter "
                               f"$TMPDIR helps)") from exc
            self._proc = self._spawn(f"ipc://{home}/link")
            self.endpoint = self._await_ready(self._proc)
            self.mark_ready()
            self._serve(link, self._proc)
        finally:
            link.close(linger=0)
            ctx.term()
            if self._proc is not None:
                self._end(self._proc)
            shutil.rmtree(home, ignore_errors=True)

    def _spawn(self, link: str) -> subprocess.Popen[bytes]:
        spec = {**self._settings, "link": link,
                "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel())}
        spec.setdefault("log_format", "text")
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, start_new_session=True)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(spec).encode() + b"\n")
        proc.stdin.flush()
        return proc

    def _await_ready(self, proc: subprocess.Popen[bytes]) -> str:
        """The endpoint the child bound; BusError with its reason if it could not."""
        assert proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if self.stopping:
                raise BusError("the daemon stopped before its control process was ready")
            if left <= 0:
                raise BusError(f"the control process did not start within "
                               f"{READY_TIMEOUT_S:g} s")
            if select.select([proc.stdout], [], [], min(left, 0.1))[0]:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
        word, _, rest = line.decode(errors="replace").strip().partition(" ")
        if word == "ready":
            return rest
        if word == "failed":
            raise BusError(rest)
        try:
            code: int | str = proc.wait(5)
        except subprocess.TimeoutExpired:
            code = f"none: it said {line[:200]!r}"
        raise BusError(f"the control process ended (exit code {code}) before it was ready")

    def _serve(self, link: zmq.Socket, proc: subprocess.Popen[bytes]) -> None:
        self._next_push = time.monotonic()
        while not self.stopping:
            wait_ms = max(1, int((self._next_push - time.monotonic()) * 1000))
            if link.poll(wait_ms if self._open.is_set() else 10, zmq.POLLIN):
                self._answer(link)
            now = time.monotonic()
            if self._open.is_set() and now >= self._next_push:
                fast = now < self._asked_until
                self._next_push = now + (STATUS_PUSH_S if fast else IDLE_PUSH_S)
                self._push_status(link)
            code = proc.poll()
            if code is not None:
                raise BusError(f"the control process ended (exit code {code})")

    def _answer(self, link: zmq.Socket) -> None:
        for _ in range(RELAYED_BATCH):
            try:
                frames = link.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            if frames[0] == b"asked":
                now = time.monotonic()
                if now >= self._asked_until:  # slow pushes until now: one at once
                    self._next_push = now
                self._asked_until = now + ASKED_S
                continue
            if len(frames) != 3 or frames[0] != b"request":
                log.error("control link: an unexpected message of %d frames", len(frames))
                continue
            reply = self._commands.answer(frames[2])
            assert reply is not None
            if reply.get("command") in self._mutating or reply.get("command") == "refresh":
                self._push_status(link)  # the client that asked sees it at once
            if self._reset_pending:
                self._reset_pending = False
                _send(link, [b"reset", b""])
            _send(link, [b"reply", frames[1], b"1" if reply["ok"] else b"0",
                         json.dumps(reply).encode()])

    def _push_status(self, link: zmq.Socket) -> None:
        try:
            status = self._status()
            body = json.dumps(status).encode()
            self.last_status = status
        except Exception:  # noqa: BLE001 - the next push may succeed; logged
            log.exception("control: the status could not be made")
            return
        _send(link, [b"status", body])

    @staticmethod
    def _end(proc: subprocess.Popen[bytes]) -> None:
        """Close its stdin (it exits), kill it if it does not."""
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            proc.wait(2.0)
        except subprocess.TimeoutExpired:
            log.warning("control process %d did not stop; killed", proc.pid)
            proc.kill()
            proc.wait()


def _send(link: zmq.Socket, frames: list[bytes]) -> None:
    """Never blocks: a control process gone or not reading loses the message (its end is
    seen by the poll of the process)."""
    try:
        link.send_multipart(frames, flags=zmq.NOBLOCK)
    except zmq.Again:
        log.warning("control link: a %s message was not taken", frames[0].decode())


def settings(*, endpoint: str, allow_remote: bool, max_request_bytes: int,
             ipc_access: IpcAccess, curve_server_key: str | None, curve_clients: str | None,
             curve_readers: str | None, mutating: Sequence[str], relayed: Sequence[str],
             version: dict[str, Any], log_format: str = "text") -> dict[str, Any]:
    """What the control process needs (JSON): the socket, who may use it, the commands
    it relays, the ``version`` it answers."""
    return {"endpoint": endpoint, "allow_remote": allow_remote,
            "max_request_bytes": max_request_bytes,
            "ipc_mode": ipc_access.mode, "ipc_group": ipc_access.group,
            "curve": {"server_key": curve_server_key, "clients": curve_clients,
                      "readers": curve_readers},
            "mutating": list(mutating), "relayed": list(relayed), "version": version,
            "log_format": log_format}


# ---------------------------------------------------------------------------- the child


class Front:
    """The control process's own answers: ``version``, and ``status`` as last pushed.
    ``tell``: sends a message to the daemon (a status request asks for fast pushes)."""

    def __init__(self, version: dict[str, Any]) -> None:
        self._version = version
        self._status: dict[str, Any] | None = None
        self._pushed_at = float("-inf")
        self._answered_at = float("-inf")  # the last status answered
        self.server: ControlServer | None = None
        self._told_at = float("-inf")

    def on_push(self, kind: bytes, body: bytes) -> None:
        if kind == b"status":
            self._status = json.loads(body)
            self._pushed_at = time.monotonic()
        elif kind == b"reset" and self.server is not None:
            self.server.reset_stats()

    def stale(self, command: str) -> bool:
        """True for a ``status`` asked after a quiet spell (none answered for
        :data:`ASKED_S`), or while the pushed document is older than :data:`FRESH_S`: it
        is answered after a fresh push, not from the old one."""
        now = time.monotonic()
        return command == "status" and (now - self._answered_at > ASKED_S
                                        or now - self._pushed_at > FRESH_S)

    def version(self, params: dict[str, Any]) -> dict[str, Any]:
        _no_params(params)
        return self._version

    def status(self, params: dict[str, Any]) -> dict[str, Any]:
        _no_params(params)
        if self._status is None:
            raise ValueError("the daemon is starting; ask again")
        assert self.server is not None
        now = self._answered_at = time.monotonic()
        if now - self._told_at > 1.0:  # fast pushes while asked: at most a message a second
            self._told_at = now
            self.server.tell([b"asked", b""])
        return {**self._status, "control": self.server.status()}


def _no_params(params: dict[str, Any]) -> None:
    if params:  # pydantic is loaded only for a bad request: the process starts fast
        from .requests import NoParams, parse

        parse(NoParams, params)


def _serve(spec: dict[str, Any]) -> int:
    curve = spec["curve"]
    front = Front(spec["version"])
    try:
        guard = Guard.from_settings(server_key=curve["server_key"],
                                    clients=curve["clients"], readers=curve["readers"])
        guard.start()
        server = ControlServer(
            spec["endpoint"], {"status": front.status, "version": front.version},
            allow_remote=spec["allow_remote"], max_request_bytes=spec["max_request_bytes"],
            ipc_access=IpcAccess(spec["ipc_mode"], spec["ipc_group"]), guard=guard,
            mutating=spec["mutating"],
            relay=Relay(spec["link"], frozenset(spec["relayed"]), front.on_push, front.stale))
        front.server = server
        server.start()
    except Exception as exc:  # noqa: BLE001 - told to the daemon, which exits with it
        _say(f"failed {exc}")
        return 1
    if not _say(f"ready {server.endpoint}"):
        server.close(timeout_s=2.0)
        guard.close()
        return 0  # the daemon stopped before it was ready: nothing to tell
    ended = threading.Event()

    def await_eof() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        ended.set()

    Call("stdin", await_eof).start()
    code = 0
    while not ended.wait(0.5):
        if not server.alive:
            log.critical("the control server stopped: %r", server.thread_error)
            code = 3
            break
    server.close(timeout_s=2.0)
    guard.close()
    shutil.rmtree(os.path.dirname(spec["link"][len("ipc://"):]), ignore_errors=True)
    return code


def _say(line: str) -> bool:
    """One line to the daemon on stdout; False if it is gone."""
    try:
        print(line, flush=True)
    except (BrokenPipeError, OSError):
        return False
    return True


def main() -> int:
    """The control process: settings from the first line of stdin; see the module doc."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when this ends
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (the launcher did so already)
    spec = json.loads(sys.stdin.buffer.readline())
    configure_logging(spec["log_level"], spec["log_format"])
    return _serve(spec)


if __name__ == "__main__":
    sys.exit(main())

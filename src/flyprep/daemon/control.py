"""The control socket's server side: requests in, ack/nack envelopes out.

* :class:`Commands` is the logic (pyzmq's pattern: a logic class and a thin thread
  driver): one raw request in, its reply envelope ``{"ok": true, "result": ...}`` /
  ``{"ok": false, "error": ...}`` out, never an exception; it counts requests, errors
  and refused changes.
* :func:`~.control_client.request` (:mod:`.control_client`) is the client.
* :class:`ControlServer` is the driver: a thread owning a ROUTER socket (several clients
  at once, none can jam it). With a :class:`Relay` it hands some commands on, over a
  PAIR socket, to the process that can answer them, and sends their replies back when
  they come, answering the others meanwhile.

This module loads neither numpy nor pydantic: the daemon's control process
(:mod:`.front`) imports it and starts in a fraction of a second.
"""

from __future__ import annotations

import collections
import grp
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from ..endpoints import check_endpoint as endpoint_syntax
from ..endpoints import is_local_endpoint
from ..errors import ConfigError
from ..workers import Worker
from .control_client import BusError
from .curve import Guard

log = logging.getLogger(__name__)

DEFAULT_CONTROL_ENDPOINT = "tcp://127.0.0.1:5571"

Handler = Callable[[dict[str, Any]], Any]
#: Control requests answered per wake-up of the control thread at most.
CONTROL_BATCH = 64
#: What a server sends for fresh state before it answers a command from it (:class:`Relay`).
REFRESH = b'{"command": "refresh"}'
#: Relayed requests waiting for their reply at most; more get a nack at once.
MAX_RELAYED = 1024
#: A relayed request's reply is awaited this long (its client has given up long before).
RELAY_TIMEOUT_S = 120.0


def check_endpoint(endpoint: str, *, allow_remote: bool = False) -> str:
    """``endpoint`` if it is safe to bind, else ConfigError.

    ``ipc://path`` and ``inproc://name`` are fine; ``tcp://host:port`` only on a loopback
    address (``127.x.x.x``, ``::1``, ``localhost``) unless ``allow_remote``: ``*``,
    ``0.0.0.0``, interface names and other addresses expose the daemon to the network.
    The port is a number 1-65535 or ``*`` (a random free port).
    """
    if endpoint.startswith("inproc://") and len(endpoint) > len("inproc://"):
        return endpoint
    try:
        endpoint_syntax(endpoint)
    except ValueError as exc:
        raise ConfigError(f"endpoint {endpoint!r}: {exc}") from None
    if not allow_remote and not is_local_endpoint(endpoint):
        raise ConfigError(f"endpoint {endpoint!r}: not a loopback address; binding it "
                          f"exposes the daemon to the network (set allow_remote to permit it)")
    return endpoint


@dataclass(frozen=True)
class IpcAccess:
    """Who may connect to an ipc socket of the daemon: the socket file's mode and group
    (the file system is the authentication of ipc peers)."""

    mode: int = 0o660
    group: str | None = None


def bind(sock: zmq.Socket, endpoint: str, access: IpcAccess | None = None,
         guard: Guard | None = None) -> str:
    """Bind ``sock`` (CURVE server on tcp when ``guard`` says so; an ipc socket file
    given ``access``); the endpoint bound, random port resolved. BusError if it cannot."""
    if guard is not None:
        guard.secure(sock, endpoint)
    if endpoint.startswith("ipc://@"):
        raise BusError(f"{endpoint}: an abstract ipc socket has no file, so anyone on the "
                       "machine could connect; use an ipc path")
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        raise BusError(f"cannot bind {endpoint}: {exc}") from exc
    if endpoint.startswith("ipc://") and access is not None:
        path = endpoint[len("ipc://"):]
        try:
            os.chmod(path, access.mode)
            if access.group is not None:
                os.chown(path, -1, grp.getgrnam(access.group).gr_gid)
        except (OSError, KeyError) as exc:
            sock.close(linger=0)
            raise BusError(f"{endpoint}: cannot give the socket mode {access.mode:o}"
                           f"{'' if access.group is None else ' and group ' + access.group}: "
                           f"{exc}") from exc
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) else str(last)


def envelope(command: Any, *, ok: bool, result: Any = None, error: str = "") -> dict[str, Any]:
    """A reply: ``{"ok": true, "command", "result"}`` or ``{"ok": false, "command", "error"}``."""
    if ok:
        return {"ok": True, "command": command, "result": result}
    return {"ok": False, "command": command, "error": error}


class Commands:
    """What the control socket answers: a table of handlers, and the rules around them.

    ``handlers`` maps a command name to ``handler(params) -> JSON data`` (``params``: the
    request without its ``"command"``). ``mutating``: the commands that change a scan,
    run only when the ``refusal`` given with a request says nothing against it.
    ``relayed``: commands known here but answered elsewhere (see :meth:`answer`).
    """

    def __init__(self, handlers: Mapping[str, Handler], *, mutating: Sequence[str] = (),
                 relayed: Sequence[str] = (), max_errors_kept: int = 20) -> None:
        self.handlers = dict(handlers)
        self.mutating = frozenset(mutating)
        self.relayed = frozenset(relayed)
        self._lock = threading.Lock()
        self._requests = 0
        self._errors: collections.deque[str] = collections.deque(maxlen=max_errors_kept)
        self._n_errors = 0
        self._refused = 0  # commands that change a scan, from peers not authorised

    @property
    def known(self) -> list[str]:
        """Every command, sorted."""
        return sorted({*self.handlers, *self.relayed})

    def answer(self, message: bytes, *, refusal: Callable[[], str | None] | None = None,
               relay: Callable[[str, bytes], None] | None = None,
               defer: Callable[[str, bytes], bool] | None = None) -> dict[str, Any] | None:
        """The reply envelope for one raw request; never raises.

        ``refusal``: asked before a command that changes a scan runs; a reason refuses
        it (None: the sender is trusted). ``relay``: called with a relayed command and
        the request, which is then answered elsewhere: None is returned (see
        :meth:`relayed_reply`). ``defer``: asked before a command answered here runs; True
        means it is answered later (None is returned; :meth:`answer` it again then)."""
        command: Any = None
        try:
            try:
                request = json.loads(message)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"request is not JSON: {exc}") from None
            if not isinstance(request, dict) or not isinstance(request.get("command"), str):
                raise ValueError('request must be a JSON object with a string "command"')
            command = request["command"]
            handler = self.handlers.get(command)
            if command in self.relayed and relay is not None:
                handler = None
            elif handler is None:
                raise ValueError(f"unknown command {command!r}; known: {', '.join(self.known)}")
            if command in self.mutating and refusal is not None:
                why = refusal()
                if why is not None:
                    with self._lock:
                        self._refused += 1
                    raise ValueError(f"{command} refused: {why}")
            if handler is None:
                assert relay is not None
                relay(command, message)
                return None
            if defer is not None and defer(command, message):
                return None
            params = {k: v for k, v in request.items() if k != "command"}
            try:
                result = handler(params)
            except Exception as exc:
                raise ValueError(f"{command} failed: {type(exc).__name__}: {exc}") from exc
            json.dumps(result)  # not serialisable -> a nack now, not a dead socket later
            reply = envelope(command, ok=True, result=result)
        except RecursionError:
            reply = self.failed(command, "request is not JSON: nested too deeply")
        except Exception as exc:  # noqa: BLE001 - every failure is a nack, never a dead thread
            reply = self.failed(command, str(exc))
            log.warning("control request failed: %s", exc)
        with self._lock:
            self._requests += 1
        return reply

    def failed(self, command: Any, error: str, *, count_request: bool = False) -> dict[str, Any]:
        """A nack, counted as an error."""
        with self._lock:
            self._n_errors += 1
            self._errors.append(error)
            if count_request:
                self._requests += 1
        return envelope(command, ok=False, error=error)

    def relayed_reply(self, ok: bool, error: str = "") -> None:
        """Count the reply a relayed request got."""
        with self._lock:
            self._requests += 1
            if not ok:
                self._n_errors += 1
                self._errors.append(error)

    def reset(self) -> None:
        """Requests and errors back to 0."""
        with self._lock:
            self._requests = self._n_errors = self._refused = 0
            self._errors.clear()

    def stats(self) -> dict[str, Any]:
        """Requests answered, errors (count and the latest messages), refused changes."""
        with self._lock:
            return {"requests": self._requests, "errors": self._n_errors,
                    "refused": self._refused, "recent_errors": list(self._errors)}


@dataclass(frozen=True)
class Relay:
    """Where a :class:`ControlServer` hands on the commands it cannot answer itself.

    The server connects a PAIR socket to ``link``. It sends ``[b"request", token,
    request]`` and receives ``[b"reply", token, ok, reply_envelope]``; any other message
    ``[kind, body]`` is given to ``on_push`` on the server's thread. Requests are read
    only once the first such message came (until then they wait in the socket)."""

    link: str
    commands: frozenset[str]
    on_push: Callable[[bytes, bytes], None]
    #: True for a command answered here from pushed state that is too old now: the server
    #: sends ``{"command": "refresh"}`` first and answers once its reply (after the
    #: fresh push) is back
    stale: Callable[[str], bool] = lambda command: False


@dataclass
class _Waiting:
    route: list[bytes]  # the peer's identity and envelope delimiter
    command: str
    since: float
    deferred: bytes | None = None  # a request answered here once a refresh is back


class ControlServer(Worker):
    """Answers control requests on a ROUTER socket owned by a background thread.

    ``handlers`` as in :class:`Commands`; ``ping`` is built in unless given. Commands
    in ``mutating`` may come only from peers ``guard.may_change`` accepts (over tcp: an
    authorised CURVE key; without a guard, the rules of a guard without CURVE).
    ``relay``: commands answered by another process (:class:`Relay`).
    """

    def __init__(self, endpoint: str = DEFAULT_CONTROL_ENDPOINT, handlers: Mapping[str, Handler] | None = None,
                 *, allow_remote: bool = False, context: zmq.Context | None = None,
                 max_errors_kept: int = 20, max_request_bytes: int = 1 << 20,
                 ipc_access: IpcAccess | None = IpcAccess(), guard: Guard | None = None,
                 mutating: Sequence[str] = (), relay: Relay | None = None) -> None:
        super().__init__("control")
        self.guard = guard
        self._gatekeeper = guard if guard is not None else Guard()
        if guard is not None:
            context = guard.context
        self.requested_endpoint = check_endpoint(endpoint, allow_remote=allow_remote)
        self.endpoint: str | None = None
        table: dict[str, Handler] = {"ping": lambda params: {"pong": True, "time": time.time()}}
        table.update(handlers or {})
        self.relay = relay
        self.commands = Commands(table, mutating=mutating, max_errors_kept=max_errors_kept,
                                 relayed=relay.commands if relay else ())
        self._ctx = context
        self._own_ctx = context is None
        self._pipe: zmq.Socket | None = None
        self._pipe_name = f"inproc://flyprep-control-{id(self):x}"
        #: ZMQ_MAXMSGSIZE: a peer sending a larger request is disconnected, unread
        self.max_request_bytes = max_request_bytes
        self.ipc_access = ipc_access
        self._closed = False
        self._tokens = itertools.count()
        self._waiting: dict[bytes, _Waiting] = {}  # relayed, by token (control thread only)
        self._link: zmq.Socket | None = None  # the relay's socket (control thread only)

    @property
    def mutating(self) -> frozenset[str]:
        return self.commands.mutating

    def start(self, timeout_s: float = 5.0) -> ControlServer:
        """Start the thread and bind; BusError if the endpoint cannot be bound."""
        if self.started:
            return self
        if self._ctx is None:
            self._ctx = zmq.Context()
        self._pipe = self._ctx.socket(zmq.PAIR)
        self._pipe.setsockopt(zmq.LINGER, 0)
        self._pipe.bind(self._pipe_name)
        try:
            Worker.start(self, ready_timeout_s=timeout_s)
        except TimeoutError as exc:  # pragma: no cover
            raise BusError(f"control server did not start within {timeout_s} s") from exc
        except BaseException:
            self._shutdown()
            raise
        return self

    def close(self, *, timeout_s: float = 5.0) -> bool:
        """Stop the thread and close the sockets. Idempotent. False when the thread did
        not stop in time (its socket is then left open)."""
        if self._closed:
            return not self.alive
        self._closed = True
        if not self.stop_and_join(timeout_s):  # pragma: no cover
            log.warning("control server thread did not stop within %s s", timeout_s)
            return False
        self._shutdown()
        return True

    def wake(self) -> None:
        if self.alive and self._pipe is not None:
            self._pipe.send(b"stop")

    def _shutdown(self) -> None:
        if self._pipe is not None:
            self._pipe.close(linger=0)
            self._pipe = None
        if self._own_ctx and self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset_stats(self) -> None:
        """Requests and errors back to 0."""
        self.commands.reset()

    def status(self) -> dict[str, Any]:
        """Requests answered, errors (count and the latest messages), refused changes,
        endpoint, and the process that serves it."""
        return {"endpoint": self.endpoint, "pid": os.getpid(), **self.commands.stats()}

    def tell(self, frames: list[bytes]) -> None:
        """Send ``frames`` to the relay's process (from a handler: the control thread
        only); dropped if it is not reading."""
        if self._link is not None:
            try:
                self._link.send_multipart(frames, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass

    def handle(self, message: bytes, *,
               refusal: Callable[[], str | None] | None = None) -> dict[str, Any]:
        """The reply envelope for one raw request answered here; never raises (the
        logic, without sockets; a relayed command is unknown here)."""
        reply = self.commands.answer(message, refusal=refusal)
        assert reply is not None
        return reply

    # ---- the thread

    def _answer_all(self, sock: zmq.Socket, link: zmq.Socket | None) -> None:
        """Answer the requests waiting on the ROUTER socket (a bounded batch: a flood
        cannot keep the thread from seeing that it should stop)."""
        for _ in range(CONTROL_BATCH):
            try:
                received = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._answer([frame.bytes for frame in received], _user_id(received[-1]),
                         lambda out: self._send(sock, out), link)

    @staticmethod
    def _send(sock: zmq.Socket, frames: list[bytes]) -> None:
        try:
            sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # the peer is gone or not reading: its loss
            log.warning("control reply not sent: %s", exc)

    def _answer(self, frames: list[bytes], user: str | None,
                send: Callable[[list[bytes]], None], link: zmq.Socket | None) -> None:
        """Reply to one message of the ROUTER socket: ``[peer, b"", request]`` from a REQ
        client (``[peer, request]`` from a DEALER is taken too); any other shape gets a
        nack. ``user``: the sender's ZAP User-Id (its CURVE key), if any."""
        peer, rest = frames[0], frames[1:]
        route = [peer, *([b""] if rest[:1] == [b""] else [])]
        body = rest[len(route) - 1:]
        if len(body) != 1:
            reply = self.commands.failed(None, f"expected one request frame, got {len(body)}",
                                         count_request=True)
            send([*route, json.dumps(reply).encode()])
            return
        assert self.endpoint is not None
        endpoint = self.endpoint

        def relay(command: str, message: bytes) -> None:
            if link is None or len(self._waiting) >= MAX_RELAYED:
                raise ValueError(f"{command}: the daemon is busy ({MAX_RELAYED} commands "
                                 f"waiting for it); try again")
            token = b"%d" % next(self._tokens)
            try:
                link.send_multipart([b"request", token, message], flags=zmq.NOBLOCK)
            except zmq.Again:
                raise ValueError(f"{command}: the daemon is not taking commands now "
                                 f"(stopping, or busy); try again") from None
            self._waiting[token] = _Waiting(route, command, time.monotonic())

        def defer(command: str, message: bytes) -> bool:
            if self.relay is None or link is None or not self.relay.stale(command) or \
                    len(self._waiting) >= MAX_RELAYED:
                return False
            token = b"%d" % next(self._tokens)
            try:
                link.send_multipart([b"request", token, REFRESH], flags=zmq.NOBLOCK)
            except zmq.Again:
                return False  # answered from what is there
            self._waiting[token] = _Waiting(route, command, time.monotonic(), message)
            return True

        reply = self.commands.answer(body[0], relay=relay, defer=defer,
                                     refusal=lambda: self._gatekeeper.may_change(endpoint, user))
        if reply is not None:
            send([*route, json.dumps(reply).encode()])

    def _from_link(self, link: zmq.Socket, send: Callable[[list[bytes]], None]) -> bool:
        """Relayed replies back to their peers; pushed messages to ``relay.on_push``.
        True if something was pushed."""
        assert self.relay is not None
        pushed = False
        for _ in range(CONTROL_BATCH):
            try:
                frames = link.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return pushed
            if frames[0] == b"reply" and len(frames) == 4:
                waiting = self._waiting.pop(frames[1], None)
                ok = frames[2] == b"1"
                if waiting is None:
                    continue  # given up on (RELAY_TIMEOUT_S)
                if waiting.deferred is not None:  # the push came first: answered here now
                    send([*waiting.route, json.dumps(self.commands.answer(
                        waiting.deferred)).encode()])
                    continue
                self.commands.relayed_reply(ok, "" if ok else _error_of(frames[3]))
                send([*waiting.route, frames[3]])
            elif len(frames) == 2:
                self.relay.on_push(frames[0], frames[1])
                pushed = True
            else:
                log.error("control: a message of %d frames on the relay link, ignored",
                          len(frames))
        return pushed

    def _give_up(self, send: Callable[[list[bytes]], None], *, older_than: float | None,
                 why: str) -> None:
        """Nack the relayed requests waiting since before ``older_than`` (None: all)."""
        for token in [t for t, w in self._waiting.items()
                      if older_than is None or w.since < older_than]:
            waiting = self._waiting.pop(token)
            if waiting.deferred is not None:  # answered from what is there
                send([*waiting.route, json.dumps(self.commands.answer(
                    waiting.deferred)).encode()])
                continue
            reply = self.commands.failed(waiting.command, f"{waiting.command}: {why}",
                                         count_request=True)
            send([*waiting.route, json.dumps(reply).encode()])

    def loop(self) -> None:
        assert self._ctx is not None
        pipe = self._ctx.socket(zmq.PAIR)
        pipe.setsockopt(zmq.LINGER, 0)
        pipe.connect(self._pipe_name)
        rep = self._ctx.socket(zmq.ROUTER)  # several clients at once, none can jam it
        link: zmq.Socket | None = None
        try:
            rep.setsockopt(zmq.LINGER, 0)
            rep.setsockopt(zmq.MAXMSGSIZE, self.max_request_bytes)
            rep.setsockopt(zmq.ROUTER_MANDATORY, 0)
            if self.relay is not None:
                link = self._ctx.socket(zmq.PAIR)
                link.setsockopt(zmq.LINGER, 0)
                link.connect(self.relay.link)
                self._link = link
            self.endpoint = bind(rep, self.requested_endpoint, self.ipc_access, self.guard)
        except BaseException:  # handed to start()
            rep.close(linger=0)
            pipe.close(linger=0)
            if link is not None:
                link.close(linger=0)
            raise
        self.mark_ready()
        poller = zmq.Poller()
        poller.register(pipe, zmq.POLLIN)
        serving = link is None
        if serving:
            poller.register(rep, zmq.POLLIN)
        else:  # requests are read once the first push came
            poller.register(link, zmq.POLLIN)
        send = lambda out: self._send(rep, out)  # noqa: E731
        stale_check = time.monotonic()
        try:
            while True:
                ready = dict(poller.poll(1000 if self._waiting else None))
                if pipe in ready:
                    pipe.recv()
                    break
                if rep in ready:
                    try:
                        self._answer_all(rep, link)
                    except Exception:  # noqa: BLE001 - logged; the server goes on serving
                        log.exception("control: a request could not be answered")
                if link is not None and link in ready:
                    try:
                        if self._from_link(link, send) and not serving:
                            poller.register(rep, zmq.POLLIN)
                            serving = True
                    except Exception:  # noqa: BLE001
                        log.exception("control: a message of the relay link was lost")
                if self._waiting and time.monotonic() - stale_check > 1.0:
                    stale_check = time.monotonic()
                    self._give_up(send, older_than=stale_check - RELAY_TIMEOUT_S,
                                  why=f"no answer from the daemon within {RELAY_TIMEOUT_S:g} s")
            self._give_up(send, older_than=None, why="the control server is stopping")
        finally:
            self._link = None
            rep.close(linger=0)
            pipe.close(linger=0)
            if link is not None:
                link.close(linger=0)


def _error_of(reply: bytes) -> str:
    try:
        return str(json.loads(reply).get("error", ""))
    except (ValueError, AttributeError):
        return "a reply that is not an envelope"


def _user_id(frame: zmq.Frame) -> str | None:
    """The ZAP User-Id of a received frame's sender (its CURVE key), None without one."""
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return user if isinstance(user, str) else None

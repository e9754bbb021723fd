"""Who may talk to the daemon: ZeroMQ CURVE keys on tcp, the socket file on ipc.

The daemon's side is a :class:`Guard`: it owns the ZeroMQ context of the daemon's
sockets and, when ``bus.curve_server_key`` is set, pyzmq's own
:class:`~zmq.auth.thread.ThreadAuthenticator` on it. Its tcp sockets are then CURVE
servers: a peer must know the server's public key and hold a key the config authorises
(``bus.curve_clients``) or lets read (``bus.curve_readers``). :meth:`Guard.may_change`
says whether the sender of a control request may change a scan (end, abort, reset):
over ipc anyone who could open the socket file (its mode and group are the config's);
over tcp only an authorised CURVE key, never a peer without CURVE.

The clients' side is :class:`ClientKeys` (the server's public key and the user's own
pair), applied to every socket a client connects to a tcp endpoint.

Key files are pyzmq's (``zmq.auth.create_certificates``): ``NAME.key`` holds the public
key, ``NAME.key_secret`` both; ``flyprep keys NAME`` writes a pair.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from ..errors import ConfigError

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

    from ..config import BusConfig

log = logging.getLogger(__name__)

#: ``bus.curve_readers`` value: any client that knows the server's key may read.
ANY_READER = "any"


def is_tcp(endpoint: str) -> bool:
    """True for a ``tcp://`` endpoint (the only ones CURVE is applied to)."""
    return endpoint.startswith("tcp://")


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair in z85 (40 characters each); ``secret`` None for a public key file."""

    public: bytes
    secret: bytes | None
    path: Path


def load_key(path: str | os.PathLike[str], *, secret: bool) -> KeyPair:
    """The key in ``path`` (a pyzmq certificate file). With ``secret``, the file must
    hold a secret key and must not be readable by group or others. ConfigError naming
    the file otherwise."""
    path = Path(path).expanduser()
    try:
        import zmq.auth  # only where keys are used: commands without CURVE start faster

        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        what = "secret" if secret else "public"
        raise ConfigError(f"{path}: cannot read a CURVE {what} key: {exc} (flyprep keys "
                          f"NAME writes a pair)") from None
    if secret:
        if secret_key is None:
            raise ConfigError(f"{path}: holds no secret key (use the .key_secret file)")
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"{path}: a secret key readable by others (mode {mode:04o}); "
                              f"chmod 600 it")
    return KeyPair(public, secret_key if secret else None, path)


def secret_beside(public_file: str | os.PathLike[str]) -> Path:
    """The secret key file pyzmq writes beside a public one: ``NAME.key_secret``."""
    return Path(str(Path(public_file).expanduser()) + "_secret")


class KeyDirectory:
    """The public keys (``*.key``) in a directory, read again whenever a key file is
    added, removed or changed (replaced or rewritten in place): no restart needed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._stamp: frozenset[tuple[str, int, int, int]] | None = None
        self._keys: frozenset[bytes] = frozenset()
        self.keys()  # a missing directory is an error now, at start

    def keys(self) -> frozenset[bytes]:
        """The z85 public keys it holds now."""
        try:
            with os.scandir(self.path) as entries:
                stamp = frozenset(
                    (e.name, st.st_ino, st.st_mtime_ns, st.st_size)
                    for e in entries if e.name.endswith(".key")
                    for st in (e.stat(),))
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the CURVE key directory: "
                              f"{exc.strerror}") from None
        with self._lock:
            if stamp != self._stamp:
                try:
                    import zmq.auth

                    self._keys = frozenset(zmq.auth.load_certificates(self.path))
                except (OSError, ValueError) as exc:
                    raise ConfigError(f"{self.path}: cannot read the CURVE keys: "
                                      f"{exc}") from None
                self._stamp = stamp
            return self._keys

    def __contains__(self, key: object) -> bool:
        return key in self.keys()


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to reach a CURVE daemon: the server's public key, its own pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    def apply(self, sock: zmq.Socket, endpoint: str) -> None:
        """Make ``sock`` a CURVE client when ``endpoint`` is tcp (ipc needs no keys)."""
        if is_tcp(endpoint):
            sock.curve_serverkey = self.server_public
            sock.curve_publickey = self.public
            sock.curve_secretkey = self.secret


def client_keys(bus: BusConfig, *, key_file: str | os.PathLike[str] | None = None
                ) -> ClientKeys | None:
    """The keys a client of the daemon configured by ``bus`` uses, None without CURVE.
    ``key_file``: the user's secret key file, else ``FLYPREP_CLIENT_KEY``, else
    ``bus.curve_client_key``. ConfigError naming the file when a key cannot be read."""
    if bus.curve_server_key is None:
        return None
    server = load_key(bus.curve_server_key, secret=False)
    own = key_file or os.environ.get("FLYPREP_CLIENT_KEY") or bus.curve_client_key
    pair = load_key(own, secret=True)
    assert pair.secret is not None
    return ClientKeys(server.public, pair.public, pair.secret)


class _Callback:
    """pyzmq's credentials provider: a key may connect when authorised or a reader."""

    def __init__(self, authorised: KeyDirectory | None, readers: KeyDirectory | None) -> None:
        self.authorised, self.readers = authorised, readers

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            allowed = any(d is not None and key in d for d in (self.authorised, self.readers))
        except ConfigError as exc:  # a directory gone: nobody in, said once per attempt
            log.error("CURVE: %s", exc)
            return False
        if not allowed:
            log.warning("CURVE: refused a client key that is not authorised: %s",
                        key.decode(errors="replace"))
        return allowed


class Guard:
    """The daemon's sockets' security: their context, CURVE on tcp, and who may change
    a scan. ``server`` None: no CURVE (then tcp endpoints must be loopback, and nothing
    over tcp may change a scan)."""

    def __init__(self, *, server: KeyPair | None = None,
                 authorised: KeyDirectory | None = None,
                 readers: KeyDirectory | str | None = None) -> None:
        if server is not None and server.secret is None:
            raise ConfigError(f"{server.path}: the server needs its secret key")
        self.server = server
        self.authorised = authorised
        self.readers = readers
        self._context: zmq.Context | None = None
        self._auth: ThreadAuthenticator | None = None

    @classmethod
    def from_config(cls, bus: BusConfig) -> Guard:
        """The guard ``bus`` describes; ConfigError naming the file when a key or key
        directory cannot be read, or a secret key is readable by others."""
        return cls.from_settings(server_key=bus.curve_server_key, clients=bus.curve_clients,
                                 readers=bus.curve_readers)

    @classmethod
    def from_settings(cls, *, server_key: str | os.PathLike[str] | None,
                      clients: str | os.PathLike[str] | None,
                      readers: str | os.PathLike[str] | None) -> Guard:
        """The guard of these ``bus.curve_*`` settings (see :meth:`from_config`)."""
        if server_key is None:
            return cls()
        public = load_key(server_key, secret=False)
        pair = load_key(secret_beside(server_key), secret=True)
        if pair.public != public.public:
            raise ConfigError(f"{pair.path}: not the secret of {public.path} (the public "
                              f"keys differ)")
        authorised = KeyDirectory(clients) if clients else None
        reader_keys: KeyDirectory | str | None = None
        if readers == ANY_READER:
            reader_keys = ANY_READER
        elif readers:
            reader_keys = KeyDirectory(readers)
        return cls(server=pair, authorised=authorised, readers=reader_keys)

    @property
    def curve(self) -> bool:
        """True when tcp peers must authenticate with CURVE."""
        return self.server is not None

    @property
    def context(self) -> zmq.Context:
        """The context every socket of the daemon is made in (the authenticator's)."""
        if self._context is None:
            self._context = zmq.Context()
        return self._context

    def start(self) -> Guard:
        """Start pyzmq's authenticator (with CURVE); before any socket binds."""
        if self.server is not None and self._auth is None:
            import zmq.auth
            from zmq.auth.thread import ThreadAuthenticator  # asyncio: only when needed

            self._auth = ThreadAuthenticator(self.context, log=logging.getLogger(
                "flyprep.daemon.curve.zap"))
            self._auth.start()
            if self.readers == ANY_READER:
                self._auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
            else:
                readers = self.readers if isinstance(self.readers, KeyDirectory) else None
                self._auth.configure_curve_callback(
                    domain="*", credentials_provider=_Callback(self.authorised, readers))
        return self

    def secure(self, sock: zmq.Socket, endpoint: str) -> None:
        """Make ``sock`` a CURVE server when ``endpoint`` is tcp and CURVE is configured."""
        if self.server is not None and is_tcp(endpoint):
            sock.curve_server = True
            sock.curve_publickey = self.server.public
            sock.curve_secretkey = self.server.secret

    def may_change(self, endpoint: str, user_id: str | None) -> str | None:
        """None when a peer of the socket bound to ``endpoint`` whose ZAP ``User-Id`` (the
        z85 CURVE key; None without one) is ``user_id`` may change a scan; else why not."""
        if not is_tcp(endpoint):
            return None  # ipc: the socket file's mode and group decided who connects
        if self.server is None:
            return ("over tcp without CURVE nobody may change a scan: the daemon's config "
                    "needs bus.curve_server_key and bus.curve_clients (flyprep keys), or "
                    "an ipc control endpoint")
        if self.authorised is None:
            return ("the daemon's config names no authorised clients (bus.curve_clients): "
                    "over tcp nobody may change a scan")
        key = None if user_id is None else user_id.encode()
        try:
            if key in self.authorised:
                return None
        except ConfigError as exc:
            log.error("CURVE: %s", exc)
            return (f"the daemon cannot read its authorised keys now ({exc}); nothing may "
                    f"change a scan over tcp until it can")
        return ("this client's CURVE key is not authorised to change a scan (it may "
                "query and subscribe): add its .key file to the daemon's "
                "bus.curve_clients directory")

    def close(self) -> None:
        """Stop the authenticator and end the context (after every socket closed)."""
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._context is not None:
            self._context.term()
            self._context = None


#: What a client's socket monitor reports when the daemon turned its handshake down.
_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL


class Handshake:
    """Watches a client socket's handshakes (ZeroMQ's socket monitor), so that a daemon
    which refuses this client is told apart from a daemon that is not there."""

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock
        self._monitor: zmq.Socket | None = sock.get_monitor_socket(_HANDSHAKE_FAILED)
        self._reason: str | None = None

    def failure(self, endpoint: str, keys: ClientKeys | None) -> str | None:
        """Why the daemon refused this client, if it ever did (what arrived so far)."""
        from zmq.utils.monitor import recv_monitor_message

        reason = self._reason
        while self._monitor is not None and self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                reason = (f"{endpoint} refused this client's CURVE key: the daemon's "
                          f"bus.curve_clients (or curve_readers) must hold its public key")
            elif keys is None:
                reason = (f"{endpoint} wants CURVE keys: give the daemon's config (--config), "
                          f"whose bus.curve_server_key names its key")
            else:
                reason = (f"{endpoint}: the security handshake failed: the daemon does not "
                          f"use CURVE or has another key than {keys_hint(keys)}")
        self._reason = reason
        return reason

    def close(self) -> None:
        """Stop monitoring (before the socket closes)."""
        if self._monitor is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)
            self._monitor = None


def keys_hint(keys: ClientKeys) -> str:
    """The server key a client expects, shortened for a message."""
    return f"server key {keys.server_public[:8].decode(errors='replace')}..."

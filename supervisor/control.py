"""The control endpoint: a ZeroMQ ROUTER serving `audiogw ctl`, one task per request.

ipc endpoints live in a folder only the owner can enter; a tcp endpoint
requires CURVE both ways: encryption, the client authenticating the server, and
a ZAP handler admitting only clients whose public key is in
``supervisor.curve_authorized_clients`` (a refused client gets no reply at all).
"""
from __future__ import annotations

import asyncio
import errno
import glob
import logging
import os
import socket
import stat
import struct
import time
from collections import Counter
from typing import TYPE_CHECKING

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from audiogw.shared.config import Config, ConfigError
from audiogw.shared.messages import MessageError, Reply, decode_request, encode_reply
from audiogw.supervisor.commands import CommandRefused, dispatch

if TYPE_CHECKING:
    from audiogw.supervisor.daemon import Supervisor

log = logging.getLogger("audiogw.supervisor.control")


def prepare_ipc_folder(endpoint: str) -> None:
    """Create the ipc socket's folder owner-only (0700) so no other user can reach the control socket."""
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        folder = os.path.dirname(endpoint[len("ipc://"):])
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)


class EndpointInUse(Exception):
    """The control endpoint belongs to another (running) process: this supervisor must not start."""


PROBE_TIMEOUT = 0.5  # seconds to connect to an existing ipc socket before calling it stale


def _peer_pid(probe: socket.socket) -> int | None:
    try:
        pid, _uid, _gid = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except (OSError, AttributeError):
        return None
    return pid or None


def claim_endpoint(endpoint: str) -> None:
    """Make sure binding ``endpoint`` takes it from no one; raise EndpointInUse (one line) if it would.

    libzmq unlinks an existing ipc socket file on bind, so a second supervisor
    would silently take the first one's endpoint: a file a process still accepts
    on is refused; a stale one (nobody listening) is removed. A tcp port is tried
    with a plain bind (as libzmq binds it: SO_REUSEADDR).
    """
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if path.startswith("@") or not os.path.lexists(path):
            return
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise EndpointInUse(f"control endpoint {endpoint}: {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            try:
                os.unlink(path)  # stale: no process listens on it
            except FileNotFoundError:
                pass
            except OSError as error:
                raise EndpointInUse(f"control endpoint {endpoint}: cannot remove the stale socket file: "
                                    f"{error.strerror or error}") from None
            return
        except OSError as error:  # a timeout (a full backlog) or no permission: someone else's
            raise EndpointInUse(f"control endpoint {endpoint} is not usable: {error.strerror or error}") from None
        else:
            pid = _peer_pid(probe)
            raise EndpointInUse(f"control endpoint {endpoint} is in use by a running supervisor"
                                f"{f' (pid {pid})' if pid else ''}")
        finally:
            probe.close()
    elif endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        host = host.strip("[]")
        host = "" if host in ("*", "") else host
        try:
            infos = socket.getaddrinfo(host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (OSError, ValueError):
            return  # an interface name, say: libzmq's bind decides (its error is caught in ControlServer)
        family, kind, proto, _name, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise EndpointInUse(f"control endpoint {endpoint} is in use (address already in use)") from None
                raise EndpointInUse(f"control endpoint {endpoint} cannot be bound: "
                                    f"{error.strerror or error}") from None


SERVER_KEY = "supervisor.curve_server_secret_key"
CLIENTS_KEY = "supervisor.curve_authorized_clients"
# One client key's refusals are logged at most this often (seconds); at most
# REFUSAL_LOG_KEYS keys are remembered (then forgotten all at once).
REFUSAL_LOG_INTERVAL = 60.0
REFUSAL_LOG_KEYS = 1024


# Why a control request was refused: too few/many frames, a bad or refused command,
# a command that failed, a tcp client whose key is not authorized (it gets no reply).
CONTROL_REFUSAL_REASONS = ("malformed", "bad_request", "internal_error", "unauthorized")


def _is_z85_key(key: bytes) -> bool:
    return len(key) == 40 and all(byte in z85.Z85CHARS for byte in key)


def _unreadable(path: str, error: Exception) -> str:
    """pyzmq's and open()'s messages mostly name the file already; name it exactly once."""
    text = str(error)
    return f"cannot read certificate: {text}" if path in text else f"cannot read certificate {path}: {text}"


def load_server_keypair(path: str, file: str | None) -> tuple[bytes, bytes]:
    """The server's (public, secret) Z85 keys from its secret certificate, or a ConfigError saying why not."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise ConfigError(file, SERVER_KEY, _unreadable(path, error)) from None
    if secret is None:
        raise ConfigError(file, SERVER_KEY, f"{path} holds no secret-key (give the .key_secret file, not the .key)")
    if not (_is_z85_key(public) and _is_z85_key(secret)):
        raise ConfigError(file, SERVER_KEY, f"{path}: keys must be 40 Z85 characters")
    return public, secret


def load_authorized_keys(folder: str, file: str | None) -> set[bytes]:
    """The Z85 public keys of the folder's ``*.key`` files (pyzmq's convention), each one checked."""
    if not os.path.isdir(folder):
        raise ConfigError(file, CLIENTS_KEY, f"{folder} is not a folder (or cannot be reached)")
    keys: set[bytes] = set()
    for path in sorted(glob.glob(os.path.join(folder, "*.key"))):
        try:
            public, _secret = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as error:
            raise ConfigError(file, CLIENTS_KEY, _unreadable(path, error)) from None
        if not _is_z85_key(public):
            raise ConfigError(file, CLIENTS_KEY, f"{path}: public-key must be 40 Z85 characters")
        keys.add(public)
    return keys


def check_control_keys(config: Config) -> None:
    """Read the CURVE certificates a tcp:// control needs, so a bad one stops the start with a clear reason."""
    settings = config.supervisor
    if settings.control.startswith("tcp://"):
        load_server_keypair(settings.curve_server_secret_key or "", config.path)
        load_authorized_keys(settings.curve_authorized_clients or "", config.path)


class ClientAuthenticator(AsyncioAuthenticator):
    """ZAP handler of the control socket: only CURVE clients whose public key is in ``folder``.

    It is its own CURVE credentials provider (pyzmq's public
    ``configure_curve_callback`` hook): :meth:`callback` decides each handshake
    from the key set this class loads. The folder is re-read when its ``*.key``
    files change (checked at each handshake; ctl connects once per request), so
    adding or revoking a client needs no restart. A folder that cannot be read
    refuses everyone until fixed.
    """

    def __init__(self, context: zmq.Context, folder: str, file: str | None) -> None:
        super().__init__(context, log=logging.getLogger("audiogw.supervisor.control.zap"))
        self.folder = folder
        self.file = file
        self._peer = "?"
        self._seen: tuple[tuple[str, int, int, int], ...] | None = None
        self._keys: frozenset[bytes] | None = None  # Z85 public keys; None: no usable list, admit nobody
        self._logged: dict[str, float] = {}  # refused public key -> when it was last logged
        self.refused = 0  # tcp clients refused (every attempt, logged or not)
        self.configure_curve_callback(domain="*", credentials_provider=self)

    def _signature(self) -> tuple[tuple[str, int, int, int], ...]:
        """Changes whenever a ``*.key`` file is added, removed or rewritten (one stat per file)."""
        entries = []
        for path in sorted(glob.glob(os.path.join(self.folder, "*.key"))):
            try:
                info = os.stat(path)
            except OSError:
                continue
            entries.append((path, info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(entries)

    def refresh(self) -> None:
        """(Re)load the folder if it changed; on any error, admit nobody rather than a stale list."""
        signature = self._signature()
        if signature == self._seen:
            return
        self._seen = signature
        self._keys = None  # from here a failure admits nobody
        try:
            keys = load_authorized_keys(self.folder, self.file)
        except ConfigError as error:
            log.error("control: %s; refusing every tcp client until it is fixed", error)
            return
        self._keys = frozenset(keys)
        if keys:
            log.info("control: %d authorized client key(s) in %s", len(keys), self.folder)
        else:
            log.warning("control: no client *.key certificate in %s: every tcp request is refused", self.folder)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        self._peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"  # the address, for the log
        await super().handle_zap_message(msg)

    def callback(self, domain: str, client_key: bytes) -> bool:
        """pyzmq's CURVE credentials hook: admit ``client_key`` (Z85) or count and log its refusal.

        It never raises: the ZAP loop must not die, or no client gets in.
        """
        try:
            self.refresh()
        except Exception:
            self._keys = None
            self._seen = None  # so the next handshake tries again
            log.exception("control: could not re-read %s; refusing every tcp client", self.folder)
        if self._keys is not None and client_key in self._keys:
            return True
        self.refused += 1
        try:
            self._log_refusal(client_key.decode("ascii", "replace"))
        except Exception:
            log.exception("control: could not log a refused tcp client")
        return False

    def _log_refusal(self, public_key: str) -> None:
        """Name every refused key, but a client retrying with the same key only once per interval."""
        now = time.monotonic()
        if now - self._logged.get(public_key, -REFUSAL_LOG_INTERVAL) < REFUSAL_LOG_INTERVAL:
            return
        if len(self._logged) >= REFUSAL_LOG_KEYS:
            self._logged.clear()
        self._logged[public_key] = now
        if self._keys is None:
            log.warning("control: refused a tcp client from %s (public key %s): no usable list of authorized "
                        "clients in %s (see the error above)", self._peer, public_key, self.folder)
            return
        log.warning(
            "control: refused a tcp client from %s: public key %s is not authorized (Unknown key); "
            "to allow it, put its .key certificate in %s",
            self._peer, public_key, self.folder,
        )


class ControlServer:
    def __init__(self, supervisor: "Supervisor", context: zmq.asyncio.Context) -> None:
        self.supervisor = supervisor
        config = supervisor.config
        settings = config.supervisor
        self.endpoint = settings.control
        self.authenticator: ClientAuthenticator | None = None
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if self.endpoint.startswith("tcp://"):
            public, secret = load_server_keypair(settings.curve_server_secret_key or "", config.path)
            load_authorized_keys(settings.curve_authorized_clients or "", config.path)
            # ZAP first: a CURVE socket bound while no handler listens admits every client.
            self.authenticator = ClientAuthenticator(context, settings.curve_authorized_clients or "", config.path)
            self.authenticator.start()
            self.authenticator.refresh()
            self.socket.curve_secretkey = secret
            self.socket.curve_publickey = public
            self.socket.curve_server = True
        else:
            prepare_ipc_folder(self.endpoint)
        try:
            claim_endpoint(self.endpoint)  # libzmq would silently take an ipc endpoint another process serves
            self.socket.bind(self.endpoint)
        except (EndpointInUse, zmq.ZMQError) as error:
            self.socket.close(linger=0)
            if self.authenticator is not None:
                self.authenticator.stop()
            if isinstance(error, EndpointInUse):
                raise
            if error.errno == errno.EADDRINUSE:
                raise EndpointInUse(f"control endpoint {self.endpoint} is in use (address already in use)") from None
            raise EndpointInUse(f"control endpoint {self.endpoint} cannot be bound: {error}") from None
        self._tasks: set[asyncio.Task] = set()
        self.requests = 0
        self.refused: Counter[str] = Counter()  # by reason: see refusals()

    async def serve(self) -> None:
        while True:
            frames = await self.socket.recv_multipart()
            if len(frames) != 2:
                self.refused["malformed"] += 1
                log.warning("control: refused a message of %d frames (expected identity + body)", len(frames))
                if frames:
                    await self._reply(frames[0], Reply.failure(None, "expected exactly one message frame"))
                continue
            task = asyncio.get_running_loop().create_task(self._handle(frames[0], frames[1]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, identity: bytes, raw: bytes) -> None:
        self.requests += 1
        request_id: str | None = None
        try:
            try:
                request = decode_request(raw)
            except MessageError as error:
                request_id = error.request_id
                raise
            request_id = request.id
            reply = Reply.success(request_id, await dispatch(self.supervisor, request.command, request.args))
        except (MessageError, CommandRefused) as error:
            self.refused["bad_request"] += 1
            log.warning("control: refused: %s", error)
            reply = Reply.failure(request_id, str(error))
        except Exception as error:  # a bug in one command must not take the supervisor down
            self.refused["internal_error"] += 1
            log.exception("control: command failed")
            reply = Reply.failure(request_id, f"internal error: {error}")
        await self._reply(identity, reply)

    def refusals(self) -> dict[str, int]:
        """Requests refused since start, by reason, every reason present (for /metrics)."""
        counts = {reason: self.refused[reason] for reason in CONTROL_REFUSAL_REASONS if reason != "unauthorized"}
        counts["unauthorized"] = self.authenticator.refused if self.authenticator is not None else 0
        return counts

    async def _reply(self, identity: bytes, reply: Reply) -> None:
        try:
            await self.socket.send_multipart([identity, encode_reply(reply)])
        except zmq.ZMQError as error:
            log.warning("control: could not reply: %s", error)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.socket.close(linger=100)
        if self.authenticator is not None:  # after the socket: never a listening socket without ZAP
            self.authenticator.stop()

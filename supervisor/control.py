"""The control endpoint: a ZeroMQ ROUTER serving `audiogw ctl`, one task per request.

A flood cannot bend it: at most ``MAX_IN_FLIGHT`` requests are handled at once
(``MAX_IN_FLIGHT_PER_PEER`` from one client connection), the excess is refused
at once with "busy"; the socket is read in batches of ``READ_BATCH`` messages,
yielding to the event loop between batches so the worker bus (heartbeats) is
never starved by control traffic.

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
from typing import TYPE_CHECKING, Any, Callable

import zmq
import zmq.asyncio
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

from audiogw.shared.config import Config, ConfigError
from audiogw.shared.messages import MessageError, Reply, decode_request, encode_reply
from audiogw.shared.stats_schema import CONTROL_REFUSAL_REASONS
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
# Refusal warnings: the first from each peer is written in full (at most
# REFUSAL_LOG_BURST of them per REFUSAL_LOG_INTERVAL seconds); every other refusal
# is added up into one summary line per interval. A peer is "new" again after
# REFUSAL_PEER_MEMORY seconds; at most REFUSAL_LOG_KEYS peers are remembered.
REFUSAL_LOG_INTERVAL = 10.0
REFUSAL_LOG_BURST = 5
REFUSAL_PEER_MEMORY = 60.0
REFUSAL_LOG_KEYS = 1024

# Control requests handled at once (every client together / from one connection);
# past either bound a request is refused at once with "busy".
MAX_IN_FLIGHT = 32
MAX_IN_FLIGHT_PER_PEER = 4
# Messages taken off the control socket before yielding to the event loop once.
READ_BATCH = 16

# CURVE handshakes that fail before the ZAP handler sees a key (no CURVE key, the
# wrong server key, garbage): seen only by a socket monitor. A handshake the ZAP
# handler refused (EVENT_HANDSHAKE_FAILED_AUTH) is already counted as unauthorized.
HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
_HANDSHAKE_HINTS = {
    zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH: "mechanism mismatch: the client has no CURVE key",
    zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: "cryptographic error: the client has the wrong server public key",
}


def handshake_failure_reason(event: int, value: int) -> str:
    """What a failed handshake most likely means, for a person."""
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        return "the connection failed before the handshake ended"
    hint = _HANDSHAKE_HINTS.get(value)
    if hint is not None:
        return hint
    return f"protocol error {value:#x}"


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


def _request_id(raw: bytes) -> str | None:
    """The id of a request refused before dispatch, so its client recognises the answer."""
    try:
        return decode_request(raw).id
    except MessageError as error:
        return error.request_id


class RefusalLog:
    """Refusal warnings an operator can read during a flood: the first from each peer, then sums.

    "969 refused in 5 s" becomes a handful of lines: each new peer's first refusal
    in full (at most ``burst`` per interval), every other one counted by reason
    into one summary line per ``interval``, written when the interval ends.
    """

    def __init__(self, logger: logging.Logger, *, interval: float = REFUSAL_LOG_INTERVAL,
                 burst: int = REFUSAL_LOG_BURST, memory: float = REFUSAL_PEER_MEMORY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logger
        self.interval = interval
        self.burst = burst
        self.memory = memory
        self.clock = clock
        self._seen: dict[str, float] = {}  # peer -> when its refusal was last written in full
        self._window_start: float | None = None
        self._written = 0  # full lines in this window
        self._suppressed: Counter[str] = Counter()  # by reason, in this window
        self._flush_timer: asyncio.TimerHandle | None = None

    def refused(self, reason: str, peer: str, message: str, *args: Any) -> None:
        """Log (or count for the next summary) one refusal of ``peer`` for ``reason``."""
        now = self.clock()
        self.flush(now)
        if self._window_start is None:
            self._window_start = now
        last = self._seen.get(peer)
        if (last is None or now - last >= self.memory) and self._written < self.burst:
            if len(self._seen) >= REFUSAL_LOG_KEYS:
                self._seen.clear()
            self._seen[peer] = now
            self._written += 1
            self.log.warning(message, *args, extra={"event": "control_refused", "reason": reason, "peer": peer})
            return
        self._suppressed[reason] += 1
        self._schedule_flush(now)

    def flush(self, now: float | None = None, *, force: bool = False) -> None:
        """Write the summary of the window that ended (or of this one, with ``force``), then start anew."""
        now = self.clock() if now is None else now
        start = self._window_start
        if start is None or (not force and now - start < self.interval):
            return
        if self._suppressed:
            total = sum(self._suppressed.values())
            by_reason = ", ".join(f"{reason}: {count}" for reason, count in sorted(self._suppressed.items()))
            self.log.warning("control: %d more refused in %.0f s (%s)", total, max(now - start, 0.0), by_reason,
                             extra={"event": "control_refused_summary", "refused": dict(self._suppressed),
                                    "seconds": round(now - start, 3)})
        self._suppressed.clear()
        self._written = 0
        self._window_start = None
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None

    def _schedule_flush(self, now: float) -> None:
        """The summary of a flood that stopped is still written when its interval ends."""
        if self._flush_timer is not None or self._window_start is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a unit test): the next refusal or flush(force=True) writes it
        delay = max(0.0, self._window_start + self.interval - now)
        self._flush_timer = loop.call_later(delay, self._timer_flush)

    def _timer_flush(self) -> None:
        self._flush_timer = None
        self.flush(force=True)


class ClientAuthenticator(AsyncioAuthenticator):
    """ZAP handler of the control socket: only CURVE clients whose public key is in ``folder``.

    It is its own CURVE credentials provider (pyzmq's public
    ``configure_curve_callback`` hook): :meth:`callback` decides each handshake
    from the key set this class loads. The folder is re-read when its ``*.key``
    files change (checked at each handshake; ctl connects once per request), so
    adding or revoking a client needs no restart. A folder that cannot be read
    refuses everyone until fixed.
    """

    def __init__(self, context: zmq.Context, folder: str, file: str | None,
                 refusal_log: RefusalLog | None = None) -> None:
        super().__init__(context, log=logging.getLogger("audiogw.supervisor.control.zap"))
        self.folder = folder
        self.file = file
        self._peer = "?"
        self._seen: tuple[tuple[str, int, int, int], ...] | None = None
        self._keys: frozenset[bytes] | None = None  # Z85 public keys; None: no usable list, admit nobody
        self.refusal_log = refusal_log or RefusalLog(log)
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
        """Name a refused key the first time; a flood of them is summed up (see RefusalLog)."""
        if self._keys is None:
            self.refusal_log.refused(
                "unauthorized", public_key,
                "control: refused a tcp client from %s (public key %s): no usable list of authorized "
                "clients in %s (see the error above)", self._peer, public_key, self.folder)
            return
        self.refusal_log.refused(
            "unauthorized", public_key,
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
        self.monitor: zmq.asyncio.Socket | None = None  # tcp only: failed CURVE handshakes
        self.refusal_log = RefusalLog(log)
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if self.endpoint.startswith("tcp://"):
            public, secret = load_server_keypair(settings.curve_server_secret_key or "", config.path)
            load_authorized_keys(settings.curve_authorized_clients or "", config.path)
            # ZAP first: a CURVE socket bound while no handler listens admits every client.
            self.authenticator = ClientAuthenticator(context, settings.curve_authorized_clients or "", config.path,
                                                     self.refusal_log)
            self.authenticator.start()
            self.authenticator.refresh()
            self.socket.curve_secretkey = secret
            self.socket.curve_publickey = public
            self.socket.curve_server = True
            self.monitor = self.socket.get_monitor_socket(HANDSHAKE_FAILURES)
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
        self._in_flight: Counter[bytes] = Counter()  # client connection (ROUTER identity) -> requests in flight
        self.requests = 0
        self.refused: Counter[str] = Counter()  # by reason: see refusals()

    async def serve(self) -> None:
        """Read requests, at most READ_BATCH before the event loop runs its other callbacks (the bus)."""
        if self.monitor is not None:
            task = asyncio.get_running_loop().create_task(self._watch_handshakes(self.monitor), name="control-monitor")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        read = 0
        while True:
            frames = await self.socket.recv_multipart()
            read += 1
            if read >= READ_BATCH:
                read = 0
                # recv of a queued message completes without yielding: give heartbeats their turn.
                await asyncio.sleep(0)
            if len(frames) != 2:
                self.refused["malformed"] += 1
                self.refusal_log.refused("malformed", frames[0].hex() if frames else "?",
                                         "control: refused a message of %d frames (expected identity + body)",
                                         len(frames))
                if frames:
                    await self._reply(frames[0], Reply.failure(None, "expected exactly one message frame"))
                continue
            identity = frames[0]
            if len(self._tasks) >= MAX_IN_FLIGHT or self._in_flight[identity] >= MAX_IN_FLIGHT_PER_PEER:
                await self._refuse_busy(identity, frames[1])
                continue
            self._in_flight[identity] += 1
            task = asyncio.get_running_loop().create_task(self._handle(identity, frames[1]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _task, identity=identity: self._done(identity))

    async def _watch_handshakes(self, monitor: zmq.asyncio.Socket) -> None:
        """Count and log (rate-limited) every tcp client whose CURVE handshake failed."""
        while True:
            try:
                event = parse_monitor_message(await monitor.recv_multipart())
            except asyncio.CancelledError:
                raise
            except zmq.ZMQError:
                return  # the socket is closing
            except Exception:
                log.exception("control: unreadable socket monitor event")
                continue
            if not event["event"] & HANDSHAKE_FAILURES:
                continue
            self.refused["handshake_failed"] += 1
            endpoint = event["endpoint"].decode("utf-8", "replace")
            reason = handshake_failure_reason(int(event["event"]), int(event["value"]))
            self.refusal_log.refused(
                "handshake_failed", f"handshake:{reason}",
                "control: refused a tcp client on %s: CURVE handshake failed (%s); it gets no reply",
                endpoint, reason)

    def _done(self, identity: bytes) -> None:
        self._in_flight[identity] -= 1
        if self._in_flight[identity] <= 0:
            del self._in_flight[identity]

    async def _refuse_busy(self, identity: bytes, raw: bytes) -> None:
        """Answer at once, without decoding or dispatching: a flood costs one reply per request."""
        self.refused["busy"] += 1
        in_flight, mine = len(self._tasks), self._in_flight[identity]
        self.refusal_log.refused("busy", identity.hex(),
                                 "control: refused a request: busy (%d in flight, %d from this client)",
                                 in_flight, mine)
        await self._reply(identity, Reply.failure(
            _request_id(raw), f"busy: {in_flight} control requests in flight ({mine} from this client); "
                              "try again shortly"))

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
            # Each ctl request is a new connection: the burst limit, not the peer, bounds a flood of these.
            self.refusal_log.refused("bad_request", identity.hex(), "control: refused: %s", error)
            reply = Reply.failure(request_id, str(error))
        except Exception as error:  # a bug in one command must not take the supervisor down
            self.refused["internal_error"] += 1
            log.exception("control: command failed")
            reply = Reply.failure(request_id, f"internal error: {error}")
        await self._reply(identity, reply)

    def refusals(self) -> dict[str, int]:
        """Requests refused since start, by reason, every reason present (for /metrics)."""
        counts = {reason: self.refused[reason] for reason in CONTROL_REFUSAL_REASONS}
        counts["unauthorized"] = self.authenticator.refused if self.authenticator is not None else 0
        return counts

    async def _reply(self, identity: bytes, reply: Reply) -> None:
        try:
            await self.socket.send_multipart([identity, encode_reply(reply)])
        except zmq.ZMQError as error:
            log.warning("control: could not reply: %s", error)

    def close(self) -> None:
        self.refusal_log.flush(force=True)
        for task in self._tasks:
            task.cancel()
        if self.monitor is not None:
            self.socket.disable_monitor()
            self.monitor.close(linger=0)
        self.socket.close(linger=100)
        if self.authenticator is not None:  # after the socket: never a listening socket without ZAP
            self.authenticator.stop()

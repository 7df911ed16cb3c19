"""One AMI connection for the supervisor: login, events, actions by ActionID, reconnect.

Why our own and not a library: panoramisk (the asyncio AMI client on PyPI) was last
released in 2021; its reconnect is a fixed 2 s retry (its older releases
``time.sleep(2)`` inside ``connection_lost``, blocking the loop), a refused login only
leaves ``authenticated = False`` behind, and pending actions are not failed when the
connection drops. What audiogw needs is small: this module and the pure wire format
in ``supervisor/ami_protocol.py``.

- :meth:`AmiClient.start` runs a task that connects, logs in (the secret is read from
  ``secret_file`` at each attempt, so fixing the file is enough), follows events and,
  when the connection drops or is refused, tries again after a growing delay
  (``BACKOFF_INITIAL`` doubling to ``BACKOFF_MAX``). A refused login is logged as an
  ERROR with Asterisk's message and kept in :attr:`state` / :attr:`reason`
  (``login_failed``); it is retried at ``BACKOFF_MAX``.
- :meth:`AmiClient.action` sends one action and returns its response; it never waits
  for a connection: while not logged in it raises :class:`AmiUnavailable` at once with
  the reason, and an action in flight when the connection drops fails with it too.
- Events go to the ``on_event`` callback (called on the loop, never awaited), and a
  ``Ping`` every ``KEEPALIVE`` s finds a peer that vanished without closing.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import stat
import time
from collections.abc import Callable, Iterable, Mapping

from audiogw.shared.logs import register_secret
from audiogw.supervisor.ami_protocol import AmiMessage, AmiParser, AmiProtocolError, format_action

__all__ = ["AmiClient", "AmiUnavailable", "AmiError", "read_secret", "ASTERISK_EVENT_CLASSES"]

log = logging.getLogger("audiogw.supervisor.ami")

BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 30.0
CONNECT_TIMEOUT = 5.0
LOGIN_TIMEOUT = 5.0
ACTION_TIMEOUT = 5.0
KEEPALIVE = 20.0
# A session shorter than this does not reset the backoff: a peer that accepts and drops at
# once (a proxy, a manager.conf that refuses the address) is retried less and less often.
STABLE_SESSION = 10.0
# The event classes the supervisor needs: call (DialBegin/DialState/DialEnd, Hangup,
# OriginateResponse) and user (the dialplan's UserEvent AudiogwLeg).
ASTERISK_EVENT_CLASSES = "call,user"

State = str  # "connecting" | "connected" | "login_failed" | "down" | "stopped"


class AmiUnavailable(RuntimeError):
    """No logged-in AMI connection (or it dropped while the action waited): the reason says why."""


class AmiError(RuntimeError):
    """Asterisk answered the action with ``Response: Error``; ``message`` is its ``Message``."""

    def __init__(self, action: str, message: AmiMessage) -> None:
        self.response = message
        super().__init__(f"{action}: {message.get('Message') or 'error'}")


def read_secret(path: str) -> str:
    """The AMI secret from ``path`` (first line, stripped). Refuses a file others may read
    (group or world permission bits): the secret gives control of the PBX."""
    info = os.stat(path)
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); "
                              f"chmod 600 it")
    with open(path, encoding="utf-8") as handle:
        secret = handle.readline().strip()
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


class AmiClient:
    """A supervised AMI connection (see the module docstring)."""

    def __init__(self, host: str, port: int, username: str, secret_file: str | None, *,
                 on_event: Callable[[AmiMessage], None] | None = None,
                 on_state: Callable[[str], None] | None = None,
                 events: str = ASTERISK_EVENT_CLASSES,
                 backoff_initial: float = BACKOFF_INITIAL, backoff_max: float = BACKOFF_MAX,
                 keepalive: float = KEEPALIVE) -> None:
        self.host, self.port, self.username, self.secret_file = host, port, username, secret_file
        self.on_event = on_event
        self.on_state = on_state
        self.events = events
        self.backoff_initial, self.backoff_max, self.keepalive = backoff_initial, backoff_max, keepalive
        self.state: State = "connecting"
        self.reason = "not connected yet"
        self.banner = ""
        self.connects = 0  # successful logins (a reconnect counts)
        self._ids = itertools.count(1)
        self._pending: dict[str, tuple[str, asyncio.Future[AmiMessage]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task | None = None
        self.connected_since: float | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        return self.state == "connected"

    # -- life -----------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ami")

    async def close(self) -> None:
        self._set_state("stopped", "closed")
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._drop("the AMI client is closed")

    def _set_state(self, state: State, reason: str) -> None:
        changed = state != self.state
        self.state, self.reason = state, reason
        if changed and self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                log.exception("ami: state callback failed")

    async def _run(self) -> None:
        delay = self.backoff_initial
        while True:
            refused_login = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except _LoginRefused as error:
                refused_login = True
                if self.state != "login_failed" or self.reason != str(error):
                    log.error("ami %s: login as %r refused: %s (retry every %.0f s)", self.address,
                              self.username, error, self.backoff_max,
                              extra={"event": "ami_login_failed", "reason": str(error)})
                self._set_state("login_failed", f"login refused: {error}")
            except (OSError, AmiProtocolError, asyncio.IncompleteReadError, TimeoutError, ValueError) as error:
                reason = _describe(error)
                if self.state != "down" or self.reason != reason:
                    log.warning("ami %s: %s; retrying in %.1f s", self.address, reason, delay,
                                extra={"event": "ami_down", "reason": reason})
                self._set_state("down", reason)
            finally:
                self._drop(f"AMI connection lost ({self.reason})")
                if self.connected_since is not None and time.monotonic() - self.connected_since >= STABLE_SESSION:
                    delay = self.backoff_initial  # it served a while: this is a new outage, retry soon
                self.connected_since = None
            if self.state == "connected":
                self._set_state("down", "Asterisk closed the connection")
            wait = self.backoff_max if refused_login else delay
            delay = min(self.backoff_max, max(delay * 2, self.backoff_initial))
            await asyncio.sleep(wait)

    async def _session(self) -> None:
        if self.state != "login_failed":
            self._set_state("connecting", self.reason)
        secret = read_secret(self.secret_file) if self.secret_file else ""
        register_secret(secret)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), CONNECT_TIMEOUT)
        self._writer = writer
        parser = AmiParser()
        reading = asyncio.get_running_loop().create_task(self._read(reader, parser))
        try:
            login_id = self._next_id()
            future = self._expect(login_id, "Login")
            writer.write(format_action("Login", login_id, {
                "Username": self.username, "Secret": secret, "Events": self.events}))
            done, _ = await asyncio.wait({future, reading}, timeout=LOGIN_TIMEOUT,
                                         return_when=asyncio.FIRST_COMPLETED)
            if future in done:
                response = future.result()
            elif reading in done:
                reading.result()  # raises what ended the read
                raise ConnectionError("Asterisk closed the connection during login")
            else:
                raise TimeoutError(f"no answer to Login within {LOGIN_TIMEOUT:g} s")
            if not response.ok:
                raise _LoginRefused(response.get("Message") or "refused")
            self.banner = parser.banner or ""
            self.connects += 1
            log.info("ami %s: logged in as %r (%s)", self.address, self.username, self.banner,
                     extra={"event": "ami_connected"})
            self._set_state("connected", "")
            self.connected_since = time.monotonic()
            while True:
                try:
                    await asyncio.wait_for(asyncio.shield(reading), self.keepalive)
                except TimeoutError:
                    await self.action("Ping", timeout=ACTION_TIMEOUT)
                    continue
                reading.result()
                raise ConnectionError("Asterisk closed the connection")
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            self._writer = None
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, parser: AmiParser) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            for message in parser.feed(data):
                self._dispatch(message)

    def _dispatch(self, message: AmiMessage) -> None:
        if message.is_event:
            if self.on_event is not None:
                try:
                    self.on_event(message)
                except Exception:
                    log.exception("ami: handling event %s failed", message.event)
            return
        entry = self._pending.pop(message.action_id, None)
        if entry is not None and not entry[1].done():
            entry[1].set_result(message)

    def _drop(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for action, future in pending.values():
            if not future.done():
                future.set_exception(AmiUnavailable(f"{action}: {reason}"))

    # -- actions --------------------------------------------------------------
    def _next_id(self) -> str:
        return f"audiogw-{os.getpid()}-{next(self._ids)}"

    def _expect(self, action_id: str, action: str) -> asyncio.Future[AmiMessage]:
        future: asyncio.Future[AmiMessage] = asyncio.get_running_loop().create_future()
        self._pending[action_id] = (action, future)
        return future

    def send(self, action: str, fields: Mapping[str, str] | Iterable[tuple[str, str]] = (), *,
             action_id: str | None = None) -> asyncio.Future[AmiMessage]:
        """Write ``action`` now and return the future of its response (raises AmiUnavailable
        at once when not logged in). ``action_id``: the caller's own (to match later events)."""
        writer = self._writer
        if self.state != "connected" or writer is None:
            raise AmiUnavailable(f"AMI {self.address} is {self.state}: {self.reason}")
        action_id = action_id or self._next_id()
        data = format_action(action, action_id, fields)  # ValueError before anything is pending
        future = self._expect(action_id, action)
        writer.write(data)
        return future

    def new_action_id(self) -> str:
        return self._next_id()

    async def action(self, action: str, fields: Mapping[str, str] | Iterable[tuple[str, str]] = (), *,
                     timeout: float = ACTION_TIMEOUT, action_id: str | None = None) -> AmiMessage:
        """Send one action and return its (successful) response; AmiError when Asterisk refuses it,
        AmiUnavailable when there is no connection, TimeoutError after ``timeout``."""
        action_id = action_id or self._next_id()
        future = self.send(action, fields, action_id=action_id)
        try:
            response = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._pending.pop(action_id, None)
            raise TimeoutError(f"{action}: no answer from Asterisk within {timeout:g} s") from None
        if not response.ok:
            raise AmiError(action, response)
        return response


class _LoginRefused(Exception):
    pass


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is Asterisk running, with AMI enabled on this port?)"
    if isinstance(error, PermissionError):
        return f"secret_file: {error}"
    if isinstance(error, FileNotFoundError):
        return f"secret_file {error.filename}: no such file"
    if isinstance(error, OSError):
        return error.strerror or str(error) or type(error).__name__
    if isinstance(error, asyncio.IncompleteReadError):
        return "connection closed"
    return str(error) or type(error).__name__

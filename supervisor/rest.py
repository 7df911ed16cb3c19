"""The Twilio REST subset: ``POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``.

Agents written for Twilio hang a call up through Twilio's API (Pipecat's serializer
with ``auto_hang_up``): form ``Status=completed``, HTTP basic auth
``account_sid:auth_token``. Pointed at audiogw's HTTP server (``supervisor.metrics``),
that request hangs up every leg of the conversation whose UUID is the CallSid's 32
hex digits (``CA`` + ``uuid.hex``): the supervisor sends ``HangupLeg(leg=None)`` to the
worker holding it (``supervisor/calls.py``).

Answers, Twilio-like (JSON, with Twilio's error ``code``):
200 the call resource (``status: completed``); 400 a body that is not a form, or a
``Status`` other than ``completed``; 401 missing or wrong credentials (with
``WWW-Authenticate``); 403 REST disabled (no ``[agent] auth_token`` configured: nothing
can be authenticated, and saying so beats a puzzling 404); 404 another account, a
CallSid that is not one, or no such conversation (Pipecat reads 404 as "already ended");
405 another method; 413 a body over 64 KiB.

:func:`handle` is pure (the hangup is a callable), tested without a server; the HTTP
thread calls it with a hangup that runs on the supervisor's event loop
(:func:`on_loop`).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hmac
import logging
import re
import threading
import uuid as uuid_module
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs

import orjson

from audiogw.shared.logs import register_secret
from audiogw.shared.twilio_ids import call_sid_for, uuid_for_call_sid

__all__ = ["PREFIX", "MAX_BODY", "RestReply", "RestApi", "handle", "call_sid", "on_loop"]

log = logging.getLogger("audiogw.supervisor.rest")

PREFIX = "/2010-04-01/"
MAX_BODY = 64 * 1024
REALM = 'Basic realm="Twilio API"'
_CALL_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Calls/(?P<call>[^/]+)\.json$")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


def call_sid(call_uuid: str) -> str:
    """The Twilio CallSid of a conversation: ``CA`` + its UUID's 32 hex digits."""
    return call_sid_for(uuid_module.UUID(call_uuid))


@dataclass(frozen=True)
class RestReply:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()
    reason: str = ""  # for the log and the counter: why it was refused ("" when served)

    @property
    def status_line(self) -> str:
        return f"{self.status} {_REASONS.get(self.status, '')}".rstrip()

    def encoded(self) -> bytes:
        return orjson.dumps(self.body)


def _error(status: int, code: int, message: str, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> RestReply:
    body = {"code": code, "message": message, "more_info": "", "status": status}
    return RestReply(status, body, headers, reason)


def _credentials(authorization: str) -> tuple[str, str] | None:
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def handle(method: str, path: str, authorization: str, body: bytes, *, account_sid: str,
           auth_token: str | None, hangup: Callable[[str], bool]) -> RestReply:
    """Answer one request (see the module docstring); ``hangup(uuid)`` is True when a
    conversation with that UUID was found and told to hang up."""
    match = _CALL_PATH.match(path)
    if match is None:
        return _error(404, 20404, f"The requested resource {path} was not found", "not_found")
    if auth_token is None:
        return _error(403, 20403, "The REST API is disabled: set [agent] auth_token (and account_sid) "
                                  "in audiogw's config", "disabled")
    if method != "POST":
        return _error(405, 20004, f"Method {method} not allowed", "method", (("Allow", "POST"),))
    credentials = _credentials(authorization) if authorization else None
    if credentials is None or not (_same(credentials[0], account_sid) and _same(credentials[1], auth_token)):
        return _error(401, 20003, "Authenticate", "unauthorized" if credentials else "no_credentials",
                      (("WWW-Authenticate", REALM),))
    account, sid = match["account"], match["call"]
    if not _same(account, account_sid):
        return _error(404, 20404, f"The requested resource {path} was not found", "unknown_account")
    conversation = uuid_for_call_sid(sid[:2] + sid[2:].lower())  # Twilio's hex is case-blind here
    if conversation is None:
        return _error(404, 20404, f"The requested resource {path} was not found", "bad_call_sid")
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                        max_num_fields=100)
    except (UnicodeDecodeError, ValueError) as error:
        return _error(400, 20001, f"Bad form body: {error}", "bad_form")
    status = form.get("Status", [""])
    if len(status) != 1 or status[0] != "completed":
        return _error(400, 21218, f"Invalid Status {status!r}: only 'completed' is supported", "bad_status")
    call_uuid = str(conversation)
    if not hangup(call_uuid):
        return _error(404, 20404, f"The requested resource {path} was not found", "unknown_call")
    sid = call_sid_for(conversation)
    return RestReply(200, {
        "sid": sid, "account_sid": account_sid, "status": "completed", "api_version": "2010-04-01",
        "date_updated": formatdate(usegmt=True), "uri": f"/2010-04-01/Accounts/{account_sid}/Calls/{sid}.json",
    })


def on_loop(loop: asyncio.AbstractEventLoop, function: Callable[[str], bool], timeout: float = 5.0) -> Callable[[str], bool]:
    """``function`` run on ``loop`` (which owns the registry) from another thread; waits at most ``timeout``."""

    def call(argument: str) -> bool:
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(function(argument))
            except BaseException as error:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(error)

        loop.call_soon_threadsafe(run)
        return future.result(timeout)

    return call


class RestApi:
    """The REST subset as the HTTP thread serves it: the config read at each request
    (``auth_token`` reloads live), counts by status code, refusals logged (rate-limited)."""

    def __init__(self, settings: Callable[[], Any], hangup: Callable[[str], bool]) -> None:
        self.settings = settings  # -> the [agent] settings in force
        self.hangup = hangup
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self._logged: dict[str, float] = {}
        self._registered: str | None = None

    def serve(self, method: str, path: str, authorization: str, body: bytes, peer: str = "") -> RestReply:
        agent = self.settings()
        if agent.auth_token and agent.auth_token != self._registered:
            register_secret(agent.auth_token)  # never in a log line, whoever writes it
            self._registered = agent.auth_token
        try:
            reply = handle(method, path, authorization, body, account_sid=agent.account_sid,
                           auth_token=agent.auth_token, hangup=self.hangup)
        except (TimeoutError, concurrent.futures.TimeoutError):
            reply = _error(503, 20503, "The gateway is busy; try again", "busy")
        with self._lock:
            self.requests[str(reply.status)] += 1
        if reply.status == 200:
            log.info("rest: %s %s from %s: hung up", method, path, peer, extra={"event": "rest_hangup", "path": path})
        else:
            self._log_refusal(reply, method, path, peer)
        return reply

    def too_large(self) -> RestReply:
        reply = _error(413, 20413, f"Body over {MAX_BODY} bytes", "too_large")
        with self._lock:
            self.requests["413"] += 1
        return reply

    def _log_refusal(self, reply: RestReply, method: str, path: str, peer: str) -> None:
        import time

        now = time.monotonic()
        key = f"{peer}/{reply.reason}"
        with self._lock:
            if now - self._logged.get(key, -1e9) < 10.0:
                return  # one line per peer and reason every 10 s: a flood costs no disk
            if len(self._logged) > 1024:
                self._logged.clear()
            self._logged[key] = now
        log.warning("rest: %s %s from %s refused %d (%s): %s", method, path, peer, reply.status, reply.reason,
                    reply.body.get("message", ""), extra={"event": "rest_refused", "reason": reply.reason})

    def figures(self) -> dict[str, Any]:
        with self._lock:
            return {"rest_requests": dict(self.requests)}

"""The worker's call-control link to its supervisor (shared/messages.py CallRequest / CallEvent).

A ZeroMQ DEALER (identity ``EXT:PID``, as on the bus) connected to the
supervisor's calls ROUTER (``WorkerSpec.calls_endpoint``). Requests go out
without blocking: a supervisor that does not read loses them (counted
``app_counters["calls_dropped"]``, logged, the caller is told), the audio
clock never waits. Events (:class:`DialStatus`, :class:`HangupLeg`) come back
on the same socket and are dispatched at once to whoever registered their
conversation's UUID; a malformed one is refused with a logged, counted reason.
One message per call event, never per frame.
"""
from __future__ import annotations

import asyncio
import logging
import os
import uuid as uuid_module
from collections import Counter
from typing import Callable

import zmq
import zmq.asyncio

from audiogw.shared.messages import (
    CallEvent, CallRequest, MessageError, decode_call_event, encode_call_message,
)
from audiogw.worker.zmq_nowait import send_nowait

log = logging.getLogger("audiogw.worker.calls")

SEND_HIGH_WATER = 100  # queued requests before new ones are dropped (a few per call, never per frame)
REFUSALS_LOGGED = 5

EventHandler = Callable[[CallEvent], None]


class CallLink:
    """Call control for one worker: ``send`` requests, ``register`` a conversation's UUID for its events."""

    def __init__(self, endpoint: str, extension: str, counters: Counter | None = None) -> None:
        self.endpoint = endpoint
        self.extension = extension
        self.counters: Counter = counters if counters is not None else Counter()
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 200)
        self._socket.setsockopt(zmq.SNDHWM, SEND_HIGH_WATER)
        self._socket.setsockopt(zmq.IDENTITY, f"{extension}:{os.getpid()}".encode())
        self._socket.connect(endpoint)
        self._handlers: dict[uuid_module.UUID, EventHandler] = {}
        self._task: asyncio.Task | None = None
        self._refusals = 0

    def start(self) -> None:
        """Follow the supervisor's events on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="calls-link")

    def send(self, request: CallRequest) -> bool:
        """Queue one request without blocking; False (logged, counted) if the supervisor is not reading."""
        error = send_nowait(self._socket, encode_call_message(request))
        if error is None:
            return True
        self.counters["calls_dropped"] += 1
        if isinstance(error, zmq.Again):
            self._refused(f"call request {type(request).__name__} uuid={request.uuid} dropped: "
                          "the supervisor is not reading the calls socket")
        else:
            self._refused(f"call request {type(request).__name__} uuid={request.uuid} not sent: {error}")
        return False

    def register(self, call_uuid: uuid_module.UUID, handler: EventHandler) -> None:
        """Events for ``call_uuid`` go to ``handler`` (cheap, non-blocking: it runs on the audio loop)."""
        self._handlers[call_uuid] = handler

    def unregister(self, call_uuid: uuid_module.UUID, handler: EventHandler) -> None:
        if self._handlers.get(call_uuid) == handler:  # a bound method: equal, never the same object
            del self._handlers[call_uuid]

    async def _listen(self) -> None:
        socket = self._socket
        while True:
            raw = await socket.recv()
            self.dispatch(raw)

    def dispatch(self, raw: bytes) -> None:
        """One event from the supervisor, validated and handed to its conversation."""
        try:
            event = decode_call_event(raw)
        except MessageError as error:
            self.counters["calls_bad_events"] += 1
            self._refused(f"call event refused: {error}")
            return
        if event.extension != self.extension:
            self.counters["calls_bad_events"] += 1
            self._refused(f"call event for extension {event.extension!r} refused: this worker serves "
                          f"{self.extension!r}")
            return
        handler = self._handlers.get(uuid_module.UUID(event.uuid))
        if handler is None:
            self.counters["calls_unknown_uuid"] += 1
            log.info("extension=%s call event %s for uuid=%s: no such conversation here (ended?)",
                     self.extension, type(event).__name__, event.uuid)
            return
        try:
            handler(event)
        except Exception:
            log.exception("extension=%s call event %s uuid=%s: handler failed", self.extension,
                          type(event).__name__, event.uuid)

    def _refused(self, message: str) -> None:
        self._refusals += 1
        if self._refusals <= REFUSALS_LOGGED:
            log.warning("extension=%s %s%s", self.extension, message,
                        " (further ones are only counted)" if self._refusals == REFUSALS_LOGGED else "")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._socket.close(linger=200)
        self._context.term()


__all__ = ["CallLink", "EventHandler"]

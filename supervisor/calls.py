"""Call control: the workers' calls socket, the conversation registry, and AMI.

Workers connect a DEALER (identity ``EXT:PID``) to the supervisor's ROUTER at
``ipc://STATE/run/calls.sock`` and send :data:`~audiogw.shared.messages.CallRequest`
messages; the supervisor answers with :data:`~audiogw.shared.messages.CallEvent`
messages to the same identity. The socket is watched with ``loop.add_reader``, so a
request is handled the moment it arrives (the heartbeat bus stays batched).

- ``LegStarted`` / ``LegEnded``: the registry ``uuid -> {leg: worker identity}`` the
  REST hangup uses (:meth:`CallControl.hangup_conversation`).
- ``Dial``: AMI ``Originate`` of ``Local/<UUID>@audiogw-ID-resident`` (which dials the
  extension's ``resident`` option, passed as ``AUDIOGW_RESIDENT``) into
  ``<UUID>@audiogw-ID-retorno``. Its progress comes from Asterisk's own events on the
  two halves of that Local channel (their ids are set by the Originate's ``ChannelId``
  / ``OtherChannelId``): ``DialBegin``/``DialState`` -> ``ringing``, ``DialEnd`` ->
  ``answered`` / ``busy`` / ``no_answer`` / ``failed``, ``OriginateResponse`` failure ->
  ``failed`` (after ``ORIGINATE_SETTLE``, unless Dial()'s own events decide first), the
  ``Hangup`` of the originated channel -> ``hangup``. Each status goes to the worker that
  asked, as a ``DialStatus``. No AMI, AMI down, a refused Originate, no outcome in time:
  ``failed`` with the reason, never a hang.
- The conversation's last ``LegEnded`` (or a REST hangup) while the resident still rings
  hangs the ringing resident up: nobody is left to talk to.
- ``SendDtmf`` / ``HangupRemote``: AMI ``PlayDTMF`` / ``Hangup`` on that leg's channel,
  learned from the dialplan's ``UserEvent(AudiogwLeg, Uuid: ..., Leg: ...)``; a resident
  still ringing is hung up through the originated channel's id.

A bad message (undecodable, another extension's, an unknown extension) is refused:
logged (rate-limited), counted by reason (``audiogw_calls_refused_total``); it costs
only that message.
"""
from __future__ import annotations

import asyncio
import logging
import re
import uuid as uuid_module
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from audiogw.shared.messages import (
    CallEvent, Dial, DialStatus, HangupLeg, HangupRemote, LegEnded, LegStarted, MessageError, SendDtmf,
    decode_call_request, encode_call_message,
)
from audiogw.supervisor.ami import AmiClient, AmiError, AmiUnavailable
from audiogw.supervisor.ami_protocol import AmiMessage
from audiogw.supervisor.control import RefusalLog

if TYPE_CHECKING:
    from audiogw.supervisor.daemon import Supervisor

__all__ = ["CallControl", "PendingDial", "REFUSAL_REASONS", "ami_client_for"]

log = logging.getLogger("audiogw.supervisor.calls")

_EVENTS, _POLLIN, _RCVMORE, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.RCVMORE), int(zmq.NOBLOCK)
READ_BATCH = 64  # messages taken per wake-up before yielding to the loop once
MAX_CONVERSATIONS = 100_000  # registry bound: a worker flooding LegStarted cannot grow it forever
ORIGINATE_MARGIN = 5.0  # the Originate waits this much longer than Dial(), so Dial's NOANSWER wins
GUARD_MARGIN = 15.0  # no final status this long after the dial's timeout: failed
ORIGINATE_SETTLE = 0.5  # seconds a failed OriginateResponse waits for Dial()'s own outcome (see on_ami_event)
FORGET_AFTER = 30.0  # an answered dial whose conversation has no leg left is forgotten this much later
DTMF_DURATION_MS = 250
DTMF_PAUSE = 0.5  # a 'w' in the digits
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
REFUSAL_REASONS = ("malformed", "wrong_extension", "unknown_extension", "registry_full", "no_channel",
                   "ami_error", "undeliverable")
# Dial()'s DIALSTATUS -> the SPEC's status (anything else: failed, with DIALSTATUS as the reason).
_DIAL_END = {"BUSY": "busy", "NOANSWER": "no_answer", "CANCEL": "hangup"}
# OriginateResponse Reason (Asterisk's control frame codes) when Dial() never said.
_ORIGINATE_REASONS = {0: "cannot create the channel (no such extension or context?)", 1: "hung up",
                      3: "rang with no answer", 5: "busy", 8: "congestion"}


def ami_client_for(config: Any, on_event=None, on_state=None) -> AmiClient | None:
    """The AMI client the ``[asterisk]`` table asks for (None without ``manager``)."""
    settings = getattr(config, "asterisk", None)
    if settings is None or settings.manager is None:
        return None
    host, port = settings.manager
    return AmiClient(host, port, settings.username, settings.secret_file, on_event=on_event, on_state=on_state)


@dataclass
class PendingDial:
    """One Originate in progress and what has been reported of it."""

    uuid: str
    extension: str
    identity: bytes
    channel_id: str  # Local;1: rings, then runs the retorno context
    other_id: str  # Local;2: runs Dial(${AUDIOGW_RESIDENT})
    action_id: str = ""
    sent: list[str] = field(default_factory=list)
    peers: int = 0  # Dial() destinations still ringing
    answered: bool = False
    final: bool = False
    cancelled: bool = False  # audiogw hung it up while ringing (HangupRemote, REST, the visitor left)
    guard: asyncio.TimerHandle | None = None  # no outcome in time; or a failed OriginateResponse held (settle)


class CallControl:
    """The calls ROUTER, the registry and the AMI side of call control (event loop only)."""

    def __init__(self, supervisor: "Supervisor", context: zmq.Context, endpoint: str,
                 ami: AmiClient | None = None) -> None:
        self.supervisor = supervisor
        self.endpoint = endpoint
        self.socket = zmq.Socket(context, zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an event to a gone worker fails, not vanishes
        self.socket.bind(endpoint)
        self.ami = ami
        if ami is not None:
            ami.on_event = self.on_ami_event
            ami.on_state = self.on_ami_state
        self.legs: dict[str, dict[str, bytes]] = {}  # uuid -> {leg: worker identity}
        self.extension_of: dict[str, str] = {}  # uuid -> extension
        self.channels: dict[tuple[str, str], str] = {}  # (uuid, leg) -> Asterisk channel name
        self.leg_of_channel: dict[str, tuple[str, str]] = {}
        self.dials: dict[str, PendingDial] = {}  # uuid -> dial in progress
        self.dial_by_id: dict[str, PendingDial] = {}  # channel uniqueid / ActionID -> dial
        self.refused: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.refusal_log = RefusalLog(log)
        self._tasks: set[asyncio.Task] = set()
        self._watched = False

    # -- life -----------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.socket.FD, self._read)
        self._watched = True
        if self.ami is not None:
            self.ami.start()
        log.info("calls: listening on %s; AMI %s", self.endpoint,
                 self.ami.address if self.ami is not None else "not configured ([asterisk] manager unset)")
        self._read()  # anything queued before the reader was added

    async def close(self) -> None:
        if self._watched:
            asyncio.get_running_loop().remove_reader(self.socket.FD)
            self._watched = False
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.ami is not None:
            await self.ami.close()
        for dial in list(self.dials.values()):
            self._forget(dial)
        self.socket.close(linger=0)

    def figures(self) -> dict[str, Any]:
        """The supervisor figures of call control (stats_schema SUPERVISOR_FIGURES), for /metrics."""
        figures: dict[str, Any] = {"dial_outcomes": dict(self.outcomes), "calls_refused": dict(self.refused)}
        if self.ami is not None:
            figures["ami_connected"] = 1 if self.ami.connected else 0
        return figures

    def health(self) -> dict[str, str] | None:
        """/healthz detail while AMI is configured but not logged in (None otherwise)."""
        if self.ami is None or self.ami.connected:
            return None
        return {"address": self.ami.address, "state": self.ami.state, "reason": self.ami.reason}

    # -- the socket ------------------------------------------------------------
    def _read(self) -> None:
        sock = self.socket
        taken = 0
        try:
            while sock.getsockopt(_EVENTS) & _POLLIN:
                parts = [sock.recv(_NOBLOCK)]
                while sock.getsockopt(_RCVMORE):
                    parts.append(sock.recv(_NOBLOCK))
                if len(parts) != 2:
                    self._refuse("malformed", parts[0], "%d frames, expected identity and body", len(parts))
                else:
                    try:
                        self.handle(parts[0], parts[1])
                    except Exception:
                        log.exception("calls: handling a request failed")
                taken += 1
                if taken >= READ_BATCH:  # let the loop breathe; the rest is read at once after
                    asyncio.get_running_loop().call_soon(self._read)
                    return
        except zmq.ZMQError as error:
            log.warning("calls: read failed: %s", error)

    def _refuse(self, reason: str, identity: bytes, message: str, *args: Any) -> None:
        self.refused[reason] += 1
        peer = identity.decode("utf-8", "replace")
        self.refusal_log.refused(reason, peer, "calls: refused from %s (%s): " + message, peer, reason, *args)

    def send(self, identity: bytes, event: CallEvent) -> bool:
        """One event to one worker; False (counted, the identity forgotten) when it is gone."""
        # A ZeroMQ socket's FD is edge-triggered and a send processes its pending commands: a
        # request that arrived meanwhile may then never wake the reader. Look again right after.
        asyncio.get_running_loop().call_soon(self._read)
        try:
            self.socket.send_multipart([identity, encode_call_message(event)], _NOBLOCK)
            return True
        except zmq.ZMQError as error:
            self.refused["undeliverable"] += 1
            log.info("calls: %s for %s not delivered to %s: %s", type(event).__name__, event.uuid,
                     identity.decode("utf-8", "replace"), error)
            if error.errno == zmq.EHOSTUNREACH:
                self._forget_identity(identity)
            return False

    # -- requests ----------------------------------------------------------------
    def handle(self, identity: bytes, raw: bytes) -> None:
        try:
            message = decode_call_request(raw)
        except MessageError as error:
            self._refuse("malformed", identity, "%s", error)
            return
        owner = identity.split(b":", 1)[0].decode("utf-8", "replace")
        if message.extension != owner:
            self._refuse("wrong_extension", identity, "message for extension %s from a worker of %s",
                         message.extension, owner)
            return
        if message.extension not in self.supervisor.extensions:
            self._refuse("unknown_extension", identity, "extension %s is not served here", message.extension)
            return
        if isinstance(message, LegStarted):
            if message.uuid not in self.legs and len(self.legs) >= MAX_CONVERSATIONS:
                self._refuse("registry_full", identity, "%d conversations registered", len(self.legs))
                return
            self.legs.setdefault(message.uuid, {})[message.leg] = identity
            self.extension_of[message.uuid] = message.extension
        elif isinstance(message, LegEnded):
            legs = self.legs.get(message.uuid)
            if legs is not None and legs.get(message.leg) == identity:
                del legs[message.leg]
                if not legs:
                    del self.legs[message.uuid]
                    self.extension_of.pop(message.uuid, None)
                    self._cancel_ringing(message.uuid, "the conversation's last leg ended")
        elif isinstance(message, Dial):
            self._in_task(self._dial(identity, message))
        elif isinstance(message, SendDtmf):
            self._in_task(self._send_dtmf(identity, message))
        elif isinstance(message, HangupRemote):
            self._in_task(self._hangup_remote(identity, message))

    def _in_task(self, work) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("calls: task failed: %s", task.exception(), exc_info=task.exception())

    # -- dial ------------------------------------------------------------------
    def _status(self, dial: PendingDial, status: str, reason: str = "") -> None:
        if status in dial.sent and status == "ringing":
            return
        if status == "answered" and "ringing" not in dial.sent:
            # Asterisk's event streams are not ordered with each other: OriginateResponse may overtake
            # DialBegin. A resident who answered was rung: the agent always sees ringing first.
            self._status(dial, "ringing")
        dial.sent.append(status)
        self.outcomes[status] += 1
        log.info("calls: dial %s extension=%s: %s%s", dial.uuid, dial.extension, status,
                 f" ({reason})" if reason else "",
                 extra={"event": "dial_status", "uuid": dial.uuid, "extension": dial.extension, "status": status,
                        "reason": reason})
        self.send(dial.identity, DialStatus(extension=dial.extension, uuid=dial.uuid, status=status, reason=reason))
        if status == "answered":
            dial.answered = True
            if dial.guard is not None:
                dial.guard.cancel()
                dial.guard = None
        elif status != "ringing":
            dial.final = True
            self._forget(dial)

    def _fail_at_once(self, identity: bytes, message: Dial, reason: str) -> None:
        self.outcomes["failed"] += 1
        log.warning("calls: dial %s extension=%s: failed (%s)", message.uuid, message.extension, reason,
                    extra={"event": "dial_status", "uuid": message.uuid, "extension": message.extension,
                           "status": "failed", "reason": reason})
        self.send(identity, DialStatus(extension=message.extension, uuid=message.uuid, status="failed", reason=reason))

    def _forget(self, dial: PendingDial) -> None:
        if dial.guard is not None:
            dial.guard.cancel()
            dial.guard = None
        if self.dials.get(dial.uuid) is dial:
            del self.dials[dial.uuid]
        for key in (dial.channel_id, dial.other_id, dial.action_id):
            if self.dial_by_id.get(key) is dial:
                del self.dial_by_id[key]

    async def _dial(self, identity: bytes, message: Dial) -> None:
        runtime = self.supervisor.extensions.get(message.extension)
        resident = str(runtime.config.options.get("resident", "")) if runtime is not None else ""
        if self.ami is None:
            return self._fail_at_once(identity, message, "no [asterisk] manager configured")
        if not resident:
            return self._fail_at_once(identity, message, f"extension {message.extension} has no resident option "
                                                         "(the resident's dial string)")
        if message.uuid in self.dials:
            return self._fail_at_once(identity, message, "a dial for this conversation is already in progress")
        if not self.ami.connected:
            return self._fail_at_once(identity, message, f"AMI {self.ami.address} is {self.ami.state}: "
                                                         f"{self.ami.reason}")
        context = f"audiogw-{message.extension}"
        dial = PendingDial(message.uuid, message.extension, identity,
                           channel_id=str(uuid_module.uuid4()), other_id=str(uuid_module.uuid4()),
                           action_id=self.ami.new_action_id())
        self.dials[dial.uuid] = dial
        for key in (dial.channel_id, dial.other_id, dial.action_id):
            self.dial_by_id[key] = dial
        timeout = message.timeout
        fields = [
            ("Channel", f"Local/{message.uuid}@{context}-resident"),
            ("Context", f"{context}-retorno"), ("Exten", message.uuid), ("Priority", "1"),
            ("Timeout", str(int((timeout + ORIGINATE_MARGIN) * 1000))),
            ("CallerID", f'"audiogw {message.extension}" <{message.extension}>'),
            ("Async", "true"), ("ChannelId", dial.channel_id), ("OtherChannelId", dial.other_id),
            ("Variable", f"AUDIOGW_RESIDENT={resident}"),
            ("Variable", f"AUDIOGW_DIAL_TIMEOUT={max(1, round(timeout))}"),
            ("Variable", f"AUDIOGW_UUID={message.uuid}"),
        ]
        try:
            await self.ami.action("Originate", fields, action_id=dial.action_id)
        except (AmiUnavailable, AmiError, TimeoutError, ValueError) as error:
            if not dial.final:
                self._status(dial, "failed", f"originate: {error}")
            return
        if not dial.final and not dial.answered:
            dial.guard = asyncio.get_running_loop().call_later(timeout + ORIGINATE_MARGIN + GUARD_MARGIN,
                                                               self._guard, dial)

    def _settle(self, dial: PendingDial, status: str, reason: str) -> None:
        dial.guard = None
        if not dial.final and not dial.answered:
            self._status(dial, status, reason)

    def _guard(self, dial: PendingDial) -> None:
        dial.guard = None
        if not dial.final and not dial.answered:
            self._status(dial, "failed", "no outcome from Asterisk in time")

    # -- AMI events ---------------------------------------------------------------
    def on_ami_state(self, state: str) -> None:
        if state == "connected":
            return
        for dial in list(self.dials.values()):
            if not dial.final and not dial.answered:
                self._status(dial, "failed", f"AMI connection lost ({self.ami.reason if self.ami else state})")
            else:
                self._forget(dial)  # its hang-up can no longer be seen; the worker sees its leg close
        self.channels.clear()
        self.leg_of_channel.clear()

    def on_ami_event(self, event: AmiMessage) -> None:
        name = event.event
        if name == "UserEvent":
            if event.get("UserEvent") == "AudiogwLeg":
                self._on_leg_event(event)
            return
        if name == "Hangup":
            self._on_hangup(event)
            return
        if name == "OriginateResponse":
            dial = self.dial_by_id.get(event.action_id) or self.dial_by_id.get(event.get("Uniqueid"))
            if dial is None or dial.final:
                return
            if dial.cancelled and event.get("Response").lower() != "success":
                self._status(dial, "hangup", "cancelled")
                return
            if event.get("Response").lower() == "success":
                if not dial.answered:
                    self._status(dial, "answered")
                return
            try:
                code = int(event.get("Reason") or 0)
            except ValueError:
                code = 0
            if code == 5:
                outcome = ("busy", "")
            elif code == 3:
                outcome = ("no_answer", "")
            else:
                outcome = ("failed", f"originate failed: {_ORIGINATE_REASONS.get(code, f'reason {code}')}")
            # Asterisk sends OriginateResponse straight from the originating thread, while Dial()'s events
            # come through Stasis: a busy resident's OriginateResponse (Reason 0) can overtake its DialEnd
            # BUSY. Dial()'s word, if it comes within ORIGINATE_SETTLE, decides; else this one.
            if dial.guard is not None:
                dial.guard.cancel()
            dial.guard = asyncio.get_running_loop().call_later(ORIGINATE_SETTLE, self._settle, dial, *outcome)
            return
        if name not in ("DialBegin", "DialState", "DialEnd"):
            return
        dial = self.dial_by_id.get(event.get("Uniqueid"))
        if dial is None or dial.final or dial.answered:
            return
        status = event.get("DialStatus").upper()
        if name == "DialBegin":
            dial.peers += 1
            self._status(dial, "ringing")
        elif name == "DialState":
            if status in ("RINGING", "PROGRESS", "PROCEEDING"):
                self._status(dial, "ringing")
        else:
            dial.peers -= 1
            if status == "ANSWER":
                self._status(dial, "answered")
            elif dial.peers <= 0:
                mapped = "hangup" if dial.cancelled else _DIAL_END.get(status)
                if mapped is None:
                    self._status(dial, "failed", f"Dial: {status or 'no DIALSTATUS'}")
                else:
                    self._status(dial, mapped, "cancelled" if status == "CANCEL" or dial.cancelled else "")

    def _on_leg_event(self, event: AmiMessage) -> None:
        call_uuid, leg, channel = event.get("Uuid").lower(), event.get("Leg"), event.get("Channel")
        if event.get("Extension") not in self.supervisor.extensions:
            return  # another gateway's extension on the same PBX
        if not _UUID.match(call_uuid) or leg not in ("ia", "retorno") or not channel:
            log.debug("calls: ignored UserEvent AudiogwLeg %s", event.as_dict())
            return
        if len(self.channels) >= MAX_CONVERSATIONS * 2:
            self.channels.clear()
            self.leg_of_channel.clear()
        self.channels[(call_uuid, leg)] = channel
        self.leg_of_channel[channel] = (call_uuid, leg)

    def _on_hangup(self, event: AmiMessage) -> None:
        channel = event.get("Channel")
        key = self.leg_of_channel.pop(channel, None)
        if key is not None and self.channels.get(key) == channel:
            del self.channels[key]
        dial = self.dial_by_id.get(event.get("Uniqueid"))
        if dial is None or event.get("Uniqueid") != dial.channel_id:
            return
        if dial.final:
            self._forget(dial)
            return
        cause = "cancelled" if dial.cancelled else event.get("Cause-txt") or event.get("Cause")
        self._status(dial, "hangup", cause if not dial.answered else "")

    # -- DTMF and remote hang-up ------------------------------------------------
    def _channel(self, identity: bytes, call_uuid: str, leg: str, what: str) -> str | None:
        channel = self.channels.get((call_uuid, leg))
        if channel is None:
            self._refuse("no_channel", identity, "%s: no Asterisk channel known for %s leg %s "
                         "(the dialplan's UserEvent AudiogwLeg, and AMI, are needed)", what, call_uuid, leg)
        return channel

    async def _send_dtmf(self, identity: bytes, message: SendDtmf) -> None:
        if self.ami is None:
            self._refuse("no_channel", identity, "send_dtmf: no [asterisk] manager configured")
            return
        channel = self._channel(identity, message.uuid, message.leg, "send_dtmf")
        if channel is None:
            return
        for digit in message.digits:
            if digit in "wW":
                await asyncio.sleep(DTMF_PAUSE)
                continue
            try:
                await self.ami.action("PlayDTMF", {"Channel": channel, "Digit": digit.upper(),
                                                   "Duration": str(DTMF_DURATION_MS)},
                                      timeout=5.0 + DTMF_DURATION_MS / 1000)
            except (AmiUnavailable, AmiError, TimeoutError) as error:
                self._refuse("ami_error", identity, "send_dtmf %s to %s: %s", message.digits, channel, error)
                return

    async def _hangup_remote(self, identity: bytes, message: HangupRemote) -> None:
        if self.ami is None:
            self._refuse("no_channel", identity, "hangup_remote: no [asterisk] manager configured")
            return
        channel = self.channels.get((message.uuid, message.leg))
        if channel is None and message.leg == "retorno" and (dial := self.dials.get(message.uuid)) is not None:
            channel = dial.channel_id  # still ringing: the originated channel, by its uniqueid
            dial.cancelled = True
        if channel is None:
            self._channel(identity, message.uuid, message.leg, "hangup_remote")  # refuses, says why
            return
        await self._ami_hangup(identity, channel)

    async def _ami_hangup(self, identity: bytes, channel: str) -> None:
        try:
            await self.ami.action("Hangup", {"Channel": channel, "Cause": "16"})
        except (AmiUnavailable, AmiError, TimeoutError) as error:
            self._refuse("ami_error", identity, "hangup of %s: %s", channel, error)

    # -- REST hang-up -------------------------------------------------------------
    def hangup_conversation(self, call_uuid: str) -> bool:
        """HangupLeg(leg=None) to every worker holding a leg of ``call_uuid`` (a Twilio-style REST
        hangup), and a resident still ringing is hung up through AMI. False: no such conversation."""
        legs = self.legs.get(call_uuid)
        extension = self.extension_of.get(call_uuid)
        delivered = False
        if legs and extension is not None:
            for identity in set(legs.values()):
                delivered |= self.send(identity, HangupLeg(extension=extension, uuid=call_uuid, leg=None))
        if call_uuid in self.dials and self.ami is not None and self.ami.connected:
            delivered |= not self.dials[call_uuid].answered
            self._cancel_ringing(call_uuid, "REST hangup")
        return delivered

    def _cancel_ringing(self, call_uuid: str, why: str) -> None:
        """Hang up a resident still ringing for a conversation that is over (nobody to talk to)."""
        dial = self.dials.get(call_uuid)
        if dial is not None and dial.answered:
            # Its Hangup event (and the "hangup" status) normally follows within moments; should it
            # never come (an eventfilter without Hangup), the dial is not kept for ever.
            if dial.guard is None:
                dial.guard = asyncio.get_running_loop().call_later(FORGET_AFTER, self._forget, dial)
            return
        if dial is None or dial.final or self.ami is None or not self.ami.connected:
            return
        log.info("calls: dial %s extension=%s: %s, hanging up the resident still ringing", call_uuid,
                 dial.extension, why)
        dial.cancelled = True
        self._in_task(self._ami_hangup(dial.identity, dial.channel_id))

    def _forget_identity(self, identity: bytes) -> None:
        for call_uuid in [u for u, legs in self.legs.items() if identity in legs.values()]:
            legs = self.legs[call_uuid]
            for leg in [leg for leg, who in legs.items() if who == identity]:
                del legs[leg]
            if not legs:
                del self.legs[call_uuid]
                self.extension_of.pop(call_uuid, None)

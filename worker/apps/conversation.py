"""Conversations: the legs of one UUID in this worker (the visitor's ia, the resident's retorno).

One place pairs the legs and bridges them, for the ``bridge`` app (always
bridged) and the ``agent`` app (bridged when the agent says ``audiogw.bridge``):

- a bridge is :meth:`Leg.relay_to` both ways: each leg's inbound audio is copied
  to the other's *live source*, which the other mixes on its tick with what its
  own app plays (worker/mixer.py), held to ``audiosocket.max_latency_ms``. The
  legs' own inbound route (``receive`` for the agent's stream, discard for the
  bridge app) is untouched, so the agent keeps hearing both legs;
- a second leg of the same kind replaces the first (hung up
  ``replaced_by_new_leg``); a bridged conversation bridges a partner that
  arrives later, and a leg whose partner left hears only its own app again;
- with call control (``AppContext.calls``, worker/calls.py) each leg is
  announced (``LegStarted`` / ``LegEnded``), the conversation's UUID is
  registered for the supervisor's events (``DialStatus`` goes to the legs'
  listeners, ``HangupLeg`` hangs up that leg or all), and the agent's
  ``audiogw.dial`` / ``audiogw.hangup`` / ``audiogw.send_dtmf`` become
  ``Dial`` / ``HangupRemote`` / ``SendDtmf`` requests (:meth:`Conversation.control`).

Nothing here touches audio per frame; every call is non-blocking.
"""
from __future__ import annotations

import logging
import uuid as uuid_module
from typing import TYPE_CHECKING, Callable

from audiogw.shared.audiosocket import LEG_KINDS, other_leg
from audiogw.shared.media_streams import AgentBridge, AgentDial, AgentHangup, AgentSendDtmf
from audiogw.shared.messages import (
    CallEvent, Dial, DialStatus, HangupLeg, HangupRemote, LegEnded, LegStarted, SendDtmf,
)

if TYPE_CHECKING:
    from audiogw.worker.apps.base import AppContext
    from audiogw.worker.calls import CallLink
    from audiogw.worker.leg import Leg

log = logging.getLogger("audiogw.worker.conversation")

NO_CALL_CONTROL = "no call control (worker run without a supervisor)"
CALLS_NOT_READ = "call control not reachable (the supervisor is not reading the calls socket)"

# A leg's listener for the dial's progress: (status, leg, reason).
DialListener = Callable[[str, str, str], None]
CallControl = AgentDial | AgentBridge | AgentHangup | AgentSendDtmf


class Refused(Exception):
    """An agent's call-control event that cannot be carried out; ``reason`` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Conversation:
    """The legs of one UUID, whether they hear each other, and who hears how the dial goes."""

    def __init__(self, owner: "Conversations", call_uuid: uuid_module.UUID) -> None:
        self.owner = owner
        self.uuid = call_uuid
        self.legs: dict[str, "Leg"] = {}
        self.bridged = False
        self.listeners: dict[str, DialListener] = {}
        # How a leg is hung up when the agent or the supervisor asks (default: at once). The agent
        # app's legs play out what the agent already said first (its goodbye is heard).
        self.hangups: dict[str, Callable[[str], None]] = {}

    @property
    def calls(self) -> "CallLink | None":
        return self.owner.context.calls

    def live_leg(self, kind: str) -> "Leg | None":
        leg = self.legs.get(kind)
        return leg if leg is not None and not leg.closed.is_set() else None

    # -- bridging ---------------------------------------------------------------
    def bridge(self) -> None:
        """Visitor and resident hear each other (now, or once both are here)."""
        self.bridged = True
        self._apply()

    def unbridge(self) -> None:
        self.bridged = False
        self._apply()

    def _apply(self) -> None:
        ia, retorno = self.live_leg("ia"), self.live_leg("retorno")
        if self.bridged and ia is not None and retorno is not None:
            ia.relay_to(retorno)
            retorno.relay_to(ia)
            return
        for leg in (ia, retorno):
            if leg is not None:
                leg.relay_to(None)

    # -- the agent's call control ------------------------------------------------
    def control(self, message: CallControl) -> None:
        """Carry out one of the agent's ``audiogw.*`` events; :class:`Refused` says why not."""
        if isinstance(message, AgentBridge):
            self.bridge() if message.bridge else self.unbridge()
            log.info("%s %s", self._prefix(), "bridged" if message.bridge else "unbridged")
            return
        calls = self.calls
        extension = self.owner.context.extension
        if isinstance(message, AgentDial):
            if calls is None:
                self.dial_status("failed", "retorno", NO_CALL_CONTROL)
            elif not calls.send(Dial(extension=extension, uuid=str(self.uuid), timeout=message.timeout)):
                self.dial_status("failed", "retorno", CALLS_NOT_READ)
            else:
                log.info("%s dial requested timeout=%gs", self._prefix(), message.timeout)
            return
        if isinstance(message, AgentHangup):
            leg = self.live_leg(message.leg)
            if leg is not None:
                log.info("%s agent hangs up leg=%s", self._prefix(), message.leg)
                self._hang_up(leg, "agent_hangup")
                return
            if calls is None:
                raise Refused("no_such_leg", f"hangup: leg {message.leg} is not connected ({NO_CALL_CONTROL})")
            if not calls.send(HangupRemote(extension=extension, uuid=str(self.uuid), leg=message.leg)):
                raise Refused("calls_unreachable", f"hangup of leg {message.leg}: {CALLS_NOT_READ}")
            return
        if isinstance(message, AgentSendDtmf):
            if calls is None:
                raise Refused("no_call_control", f"send_dtmf {message.digits!r}: {NO_CALL_CONTROL}")
            if not calls.send(SendDtmf(extension=extension, uuid=str(self.uuid), leg=message.leg,
                                       digits=message.digits)):
                raise Refused("calls_unreachable", f"send_dtmf {message.digits!r}: {CALLS_NOT_READ}")
            return
        raise TypeError(f"not a call-control event: {message!r}")

    def dial_status(self, status: str, leg: str = "retorno", reason: str = "") -> None:
        """Tell every listening leg (the ia stream, and the retorno one if open) how the dial goes."""
        log.info("%s dial_status %s leg=%s%s", self._prefix(), status, leg, f" reason={reason}" if reason else "")
        for kind in LEG_KINDS:
            listener = self.listeners.get(kind)
            if listener is not None:
                listener(status, leg, reason)

    # -- the supervisor's events -------------------------------------------------
    def on_event(self, event: CallEvent) -> None:
        if isinstance(event, DialStatus):
            self.dial_status(event.status, event.leg, event.reason)
        elif isinstance(event, HangupLeg):
            kinds = LEG_KINDS if event.leg is None else (event.leg,)
            for kind in kinds:
                leg = self.live_leg(kind)
                if leg is not None:
                    log.info("%s hangup leg=%s reason=%s (call control)", self._prefix(), kind, event.reason)
                    self._hang_up(leg, event.reason or "hangup_leg")

    def _hang_up(self, leg: "Leg", reason: str) -> None:
        hang_up = self.hangups.get(leg.kind)
        if hang_up is None:
            leg.hangup(reason)
        else:
            hang_up(reason)

    def _prefix(self) -> str:
        return f"extension={self.owner.context.extension} uuid={self.uuid}"


class Conversations:
    """Every conversation of one app in this worker, by UUID."""

    def __init__(self, context: "AppContext") -> None:
        self.context = context
        self._by_uuid: dict[uuid_module.UUID, Conversation] = {}

    def __len__(self) -> int:
        return len(self._by_uuid)

    def get(self, call_uuid: uuid_module.UUID) -> Conversation | None:
        return self._by_uuid.get(call_uuid)

    def join(self, leg: "Leg") -> Conversation:
        """``leg`` joins its UUID's conversation (replacing a previous leg of its kind)."""
        conversation = self._by_uuid.get(leg.uuid)
        calls = self.context.calls
        if conversation is None:
            conversation = self._by_uuid[leg.uuid] = Conversation(self, leg.uuid)
            if calls is not None:
                calls.register(leg.uuid, conversation.on_event)
        previous = conversation.legs.get(leg.kind)
        conversation.legs[leg.kind] = leg
        if previous is not None and previous is not leg:
            previous.hangup("replaced_by_new_leg")
        conversation._apply()
        if calls is not None:
            calls.send(LegStarted(extension=self.context.extension, uuid=str(leg.uuid), leg=leg.kind))
        return conversation

    def leave(self, leg: "Leg") -> None:
        """``leg`` ended: its partner stops hearing it; the last leg out ends the conversation."""
        conversation = self._by_uuid.get(leg.uuid)
        if conversation is None or conversation.legs.get(leg.kind) is not leg:
            return  # replaced meanwhile: the new leg is the one announced
        del conversation.legs[leg.kind]
        partner = conversation.legs.get(other_leg(leg.kind))
        leg.relay_to(None)
        if partner is not None:
            partner.relay_to(None)
        calls = self.context.calls
        if calls is not None:
            calls.send(LegEnded(extension=self.context.extension, uuid=str(leg.uuid), leg=leg.kind))
        if not conversation.legs:
            del self._by_uuid[leg.uuid]
            if calls is not None:
                calls.unregister(leg.uuid, conversation.on_event)

    def close(self) -> None:
        """The worker stops: every leg still here is announced ended now (the apps' own
        clean-up may come after the call link has closed)."""
        calls = self.context.calls
        conversations, self._by_uuid = self._by_uuid, {}
        for conversation in conversations.values():
            if calls is None:
                continue
            for kind in conversation.legs:
                calls.send(LegEnded(extension=self.context.extension, uuid=str(conversation.uuid), leg=kind))
            calls.unregister(conversation.uuid, conversation.on_event)


__all__ = ["Conversation", "Conversations", "Refused", "NO_CALL_CONTROL", "CALLS_NOT_READ", "DialListener"]

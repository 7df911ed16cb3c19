"""Twilio-shaped identities for the agent protocol, without numpy (the supervisor's REST side uses them too).

Agents built for Twilio (Pipecat's runner and TwilioFrameSerializer) take the
``callSid`` and ``streamSid`` of the ``start`` message as they are and send the
call's hang-up to ``/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json``, so
the ids must have Twilio's shape: two letters and 32 hex digits. A leg's
``callSid`` is its AudioSocket UUID (``CA`` + ``uuid.hex``), so both legs of a
conversation share it and the gateway finds the UUID again from a REST request.
"""
from __future__ import annotations

import re
import secrets
import uuid

_CALL_SID = re.compile(r"CA[0-9a-f]{32}")


def make_sid(prefix: str = "MZ") -> str:
    """A fresh Twilio-shaped id: ``prefix`` and 32 random hex digits (``MZ``: a stream)."""
    return prefix + secrets.token_hex(16)


def call_sid_for(call_uuid: uuid.UUID) -> str:
    """The ``callSid`` of a leg: ``CA`` and the UUID's 32 hex digits."""
    return "CA" + call_uuid.hex


def uuid_for_call_sid(call_sid: str) -> uuid.UUID | None:
    """The UUID a ``callSid`` names, or None if it is not one of ours (wrong shape)."""
    if not _CALL_SID.fullmatch(call_sid):
        return None
    return uuid.UUID(hex=call_sid[2:])


__all__ = ["make_sid", "call_sid_for", "uuid_for_call_sid"]

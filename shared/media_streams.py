"""The Twilio Media Streams WebSocket protocol: pure builders and parsers, no I/O.

The ``agent`` app streams each call leg to a voice agent in Twilio's message
format so that agents built for Twilio (e.g. Pipecat's TwilioFrameSerializer)
plug in unchanged. Gateway → agent: ``connected``, ``start``, ``media``,
``dtmf``, ``mark`` (an agent's mark echoed when playback reaches it), ``stop``;
agent → gateway: ``media``, ``mark``, ``clear``. audiogw's own call-control events
(``audiogw.dial``, ``audiogw.bridge``, ``audiogw.unbridge``, ``audiogw.hangup``,
``audiogw.send_dtmf`` from the agent; ``audiogw.dial_status`` to it) follow the
same shape, the body under the name without its prefix: ``{"event": "audiogw.dial",
"streamSid": ..., "dial": {"timeout": 30}}``. Builders return the JSON as
UTF-8 ``bytes``; send them as WebSocket *text* frames (websockets:
``send(data, text=True)``), because Twilio agents read text frames only.
As Twilio does, ``sequenceNumber``, ``chunk`` and ``timestamp`` are strings.

Audio encodings (``mediaFormat``):
- ``audio/x-mulaw`` at 8000 Hz: G.711 µ-law, one byte per sample (Twilio's own).
- ``audio/L16`` at 8000, 16000 or 24000 Hz: 16-bit signed samples in
  **big-endian** (network) order, as RFC 3551 §4.5.11 defines L16. AudioSocket
  slin is little-endian, so :meth:`StreamFormat.to_wire` / ``from_wire`` swap.
Payloads are base64 without headers, mono.

Every malformed agent message raises :class:`MediaStreamsError` with a short
machine ``reason`` (a metric label) and a human message; nothing else escapes.
"""
from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy
import orjson

from .media_format import ENCODINGS, RATES, format_problem
from .messages import DIAL_STATUSES, Dial, DtmfDigits
from .mulaw import decode_mulaw, encode_mulaw
from .twilio_ids import call_sid_for, make_sid

MAX_MESSAGE_BYTES = 1 << 20
MAX_MARK_NAME = 256
DTMF_DIGITS = frozenset("0123456789*#ABCD")
LEG_NAMES = ("ia", "retorno")
# Seconds an agent may give the resident to answer: shared/messages.py Dial declares the bound.
_DIAL_TIMEOUT = next(field for field in msgspec.inspect.type_info(Dial).fields if field.name == "timeout")
DIAL_TIMEOUT_LIMIT: float = _DIAL_TIMEOUT.type.le
DIAL_TIMEOUT_DEFAULT: float = _DIAL_TIMEOUT.default
DIAL_STATUS_EVENT = "audiogw.dial_status"
PROTOCOL = "Call"
VERSION = "1.0.0"


class MediaStreamsError(ValueError):
    """A message or format that breaks the protocol; ``reason`` is a stable metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """The audio encoding of one stream; both directions use the same format."""

    encoding: str = "mulaw"
    rate: int = 8000

    def __post_init__(self) -> None:
        problem = format_problem(self.encoding, self.rate)
        if problem is not None:
            raise MediaStreamsError("bad_format", problem[1])

    @property
    def mime(self) -> str:
        return ENCODINGS[self.encoding]

    @property
    def bytes_per_sample(self) -> int:
        return 1 if self.encoding == "mulaw" else 2

    def media_format(self) -> dict[str, Any]:
        """The ``mediaFormat`` object of the start message."""
        return {"encoding": self.mime, "sampleRate": self.rate, "channels": 1}

    @classmethod
    def from_media_format(cls, media_format: object) -> StreamFormat:
        """The format a start message announces; refuses anything but mono µ-law/L16."""
        if not isinstance(media_format, dict):
            raise MediaStreamsError("bad_format", "mediaFormat is not an object")
        mime = media_format.get("encoding")
        encoding = next((name for name, value in ENCODINGS.items() if value == mime), None)
        if encoding is None:
            raise MediaStreamsError("bad_format", f"mediaFormat encoding {mime!r} is not supported")
        channels = media_format.get("channels", 1)
        if channels != 1:
            raise MediaStreamsError("bad_format", f"mediaFormat has {channels!r} channels, only mono is supported")
        return cls(encoding, media_format.get("sampleRate"))  # type: ignore[arg-type]

    def to_wire(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Wire payload for int16 little-endian PCM already at this format's rate."""
        if len(pcm) % 2:
            raise MediaStreamsError("odd_length", f"PCM of {len(pcm)} bytes is not whole 16-bit samples")
        samples = numpy.frombuffer(pcm, dtype="<i2")
        if self.encoding == "mulaw":
            return encode_mulaw(samples)
        return samples.astype(">i2").tobytes()

    def from_wire(self, payload: bytes | bytearray | memoryview) -> numpy.ndarray:
        """int16 samples (native order) for a wire payload."""
        if self.encoding == "mulaw":
            return decode_mulaw(payload)
        if len(payload) % 2:
            raise MediaStreamsError("odd_length", f"L16 payload of {len(payload)} bytes is not whole samples")
        return numpy.frombuffer(payload, dtype=">i2").astype(numpy.int16)

    def samples_in(self, payload_length: int) -> int:
        """Samples carried by a wire payload of this many bytes."""
        return payload_length // self.bytes_per_sample


def _dumps(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


def _b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode("ascii")


# ---- gateway -> agent -------------------------------------------------------

def connected_message() -> bytes:
    return _dumps({"event": "connected", "protocol": PROTOCOL, "version": VERSION})


def start_message(
    sequence_number: int,
    stream_sid: str,
    call_sid: str,
    stream_format: StreamFormat,
    account_sid: str = "",
    custom_parameters: Mapping[str, str] | None = None,
    tracks: tuple[str, ...] = ("inbound",),
) -> bytes:
    parameters = dict(custom_parameters or {})
    for key, value in parameters.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise MediaStreamsError("bad_parameters", f"custom parameter {key!r}={value!r} is not text=text")
    return _dumps({
        "event": "start",
        "sequenceNumber": str(sequence_number),
        "start": {
            "streamSid": stream_sid,
            "accountSid": account_sid,
            "callSid": call_sid,
            "tracks": list(tracks),
            "customParameters": parameters,
            "mediaFormat": stream_format.media_format(),
        },
        "streamSid": stream_sid,
    })


def media_message(
    sequence_number: int, stream_sid: str, chunk: int, timestamp_ms: int, payload: bytes, track: str = "inbound"
) -> bytes:
    return _dumps({
        "event": "media",
        "sequenceNumber": str(sequence_number),
        "media": {"track": track, "chunk": str(chunk), "timestamp": str(timestamp_ms), "payload": _b64(payload)},
        "streamSid": stream_sid,
    })


def dtmf_message(sequence_number: int, stream_sid: str, digit: str) -> bytes:
    if digit not in DTMF_DIGITS:
        raise MediaStreamsError("bad_dtmf", f"DTMF digit {digit!r} is not 0-9, *, #, A-D")
    return _dumps({
        "event": "dtmf",
        "streamSid": stream_sid,
        "sequenceNumber": str(sequence_number),
        "dtmf": {"track": "inbound_track", "digit": digit},
    })


def mark_message(sequence_number: int, stream_sid: str, name: str) -> bytes:
    return _dumps({
        "event": "mark", "sequenceNumber": str(sequence_number), "streamSid": stream_sid, "mark": {"name": name},
    })


def stop_message(sequence_number: int, stream_sid: str, call_sid: str, account_sid: str = "") -> bytes:
    return _dumps({
        "event": "stop",
        "sequenceNumber": str(sequence_number),
        "streamSid": stream_sid,
        "stop": {"accountSid": account_sid, "callSid": call_sid},
    })


@dataclass(slots=True)
class StreamSession:
    """Builds one stream's gateway → agent messages with Twilio's numbering.

    ``sequenceNumber`` counts every message after ``connected`` from 1; media
    ``chunk`` counts media messages from 1; a chunk's ``timestamp`` is the
    stream time of its first sample in ms, from the samples sent so far (not
    the wall clock, so it stays exact when the gateway catches up after a stall).

    Identities have Twilio's shape (:mod:`audiogw.shared.twilio_ids`): a new
    ``streamSid`` (``MZ`` + 32 hex) per stream, the leg's ``callSid`` (``CA`` +
    its UUID's hex, see :meth:`for_leg`), the configured ``accountSid``.
    """

    stream_format: StreamFormat
    stream_sid: str = field(default_factory=make_sid)
    call_sid: str = field(default_factory=lambda: make_sid("CA"))
    account_sid: str = ""
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    sequence_number: int = 0  # of the last message built
    chunk: int = 0  # of the last media message built
    samples_sent: int = 0

    @classmethod
    def for_leg(cls, stream_format: StreamFormat, call_uuid: uuid.UUID, account_sid: str = "",
                custom_parameters: Mapping[str, str] | None = None) -> StreamSession:
        """A new stream for a call leg: what Pipecat's runner needs to build its Twilio
        serializer (``streamSid``, ``callSid``) and to address its REST hang-up (``accountSid``)."""
        return cls(stream_format, call_sid=call_sid_for(call_uuid), account_sid=account_sid,
                   custom_parameters=dict(custom_parameters or {}))

    @property
    def timestamp_ms(self) -> int:
        """Stream time of the next sample to be sent, in whole ms."""
        return self.samples_sent * 1000 // self.stream_format.rate

    def _next(self) -> int:
        self.sequence_number += 1
        return self.sequence_number

    def connected(self) -> bytes:
        return connected_message()

    def start(self) -> bytes:
        return start_message(
            self._next(), self.stream_sid, self.call_sid, self.stream_format,
            self.account_sid, self.custom_parameters,
        )

    def media(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """A media message for int16 little-endian PCM at the stream's rate."""
        payload = self.stream_format.to_wire(pcm)
        timestamp = self.timestamp_ms
        self.chunk += 1
        self.samples_sent += len(pcm) // 2
        return media_message(self._next(), self.stream_sid, self.chunk, timestamp, payload)

    def dtmf(self, digit: str) -> bytes:
        if digit not in DTMF_DIGITS:  # before numbering, so a refusal leaves no gap
            raise MediaStreamsError("bad_dtmf", f"DTMF digit {digit!r} is not 0-9, *, #, A-D")
        return dtmf_message(self._next(), self.stream_sid, digit)

    def mark(self, name: str) -> bytes:
        return mark_message(self._next(), self.stream_sid, name)

    def stop(self) -> bytes:
        return stop_message(self._next(), self.stream_sid, self.call_sid, self.account_sid)

    def custom(self, event: str, body: Mapping[str, Any]) -> bytes:
        """A gateway extension event (e.g. ``barge_in``), numbered like the standard ones;
        Twilio-built agents ignore events they do not know."""
        return _dumps({"event": event, "sequenceNumber": str(self._next()), "streamSid": self.stream_sid,
                       event: dict(body)})

    def dial_status(self, status: str, leg: str = "retorno", reason: str = "") -> bytes:
        """``audiogw.dial_status``: how the agent's ``audiogw.dial`` goes (``reason`` says why it failed)."""
        if status not in DIAL_STATUSES:
            raise MediaStreamsError("bad_dial_status", f"dial status {status!r} is not one of {DIAL_STATUSES}")
        body: dict[str, str] = {"status": status, "leg": leg}
        if reason:
            body["reason"] = reason
        return _dumps({"event": DIAL_STATUS_EVENT, "sequenceNumber": str(self._next()),
                       "streamSid": self.stream_sid, "dial_status": body})


# ---- agent -> gateway -------------------------------------------------------

def agent_media_message(stream_sid: str, payload: bytes) -> bytes:
    return _dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": _b64(payload)}})


def agent_mark_message(stream_sid: str, name: str) -> bytes:
    return _dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def agent_clear_message(stream_sid: str) -> bytes:
    return _dumps({"event": "clear", "streamSid": stream_sid})


def agent_dial_message(stream_sid: str, timeout: float = DIAL_TIMEOUT_DEFAULT) -> bytes:
    return _dumps({"event": "audiogw.dial", "streamSid": stream_sid, "dial": {"timeout": timeout}})


def agent_bridge_message(stream_sid: str, bridge: bool = True) -> bytes:
    """``audiogw.bridge`` (``bridge=False``: ``audiogw.unbridge``)."""
    return _dumps({"event": "audiogw.bridge" if bridge else "audiogw.unbridge", "streamSid": stream_sid})


def agent_hangup_message(stream_sid: str, leg: str) -> bytes:
    return _dumps({"event": "audiogw.hangup", "streamSid": stream_sid, "hangup": {"leg": leg}})


def agent_send_dtmf_message(stream_sid: str, leg: str, digits: str) -> bytes:
    return _dumps({"event": "audiogw.send_dtmf", "streamSid": stream_sid,
                   "send_dtmf": {"leg": leg, "digits": digits}})


@dataclass(frozen=True, slots=True)
class AgentMedia:
    """Audio to play: ``payload`` is the raw wire payload (µ-law or big-endian L16)."""

    payload: bytes
    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class AgentMark:
    """Echo ``name`` back once the audio queued before it has played."""

    name: str
    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class AgentClear:
    """Drop the audio queued so far (the caller barged in)."""

    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class AgentDial:
    """``audiogw.dial``: ring the resident; ``timeout`` seconds to answer."""

    timeout: float = DIAL_TIMEOUT_DEFAULT
    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class AgentBridge:
    """``audiogw.bridge`` (``bridge``) / ``audiogw.unbridge`` (not ``bridge``)."""

    bridge: bool = True
    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class AgentHangup:
    """``audiogw.hangup``: hang up ``leg`` ("ia" or "retorno")."""

    leg: str
    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class AgentSendDtmf:
    """``audiogw.send_dtmf``: ``digits`` towards ``leg``'s caller."""

    leg: str
    digits: str
    stream_sid: str | None = None


AgentMessage = AgentMedia | AgentMark | AgentClear | AgentDial | AgentBridge | AgentHangup | AgentSendDtmf
AGENT_EVENTS = ("media", "mark", "clear", "audiogw.dial", "audiogw.bridge", "audiogw.unbridge",
                "audiogw.hangup", "audiogw.send_dtmf")


def parse_agent_message(
    text: str | bytes,
    stream_format: StreamFormat | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> AgentMessage:
    """One agent → gateway message, validated.

    With ``stream_format`` an L16 payload of odd length is refused. ``connected``,
    ``start``, ``dtmf`` and ``stop`` are gateway events: from an agent they are
    refused as ``unknown_event`` rather than silently ignored. audiogw's events
    are refused with their own reasons (``bad_dial``, ``bad_leg``, ``bad_digits``).
    """
    message = _load(text, max_bytes)
    event = _text_field(message, "event")
    stream_sid = _stream_sid(message)
    if event == "media":
        payload = _payload(_object_field(message, "media"))
        if stream_format is not None and stream_format.bytes_per_sample == 2 and len(payload) % 2:
            raise MediaStreamsError("odd_length", f"L16 payload of {len(payload)} bytes is not whole samples")
        return AgentMedia(payload, stream_sid)
    if event == "mark":
        return AgentMark(_mark_name(message), stream_sid)
    if event == "clear":
        return AgentClear(stream_sid)
    if event == "audiogw.dial":
        return AgentDial(_dial_timeout(message), stream_sid)
    if event == "audiogw.bridge" or event == "audiogw.unbridge":
        return AgentBridge(event == "audiogw.bridge", stream_sid)
    if event == "audiogw.hangup":
        return AgentHangup(_leg(message, "hangup"), stream_sid)
    if event == "audiogw.send_dtmf":
        body = _object_field(message, "send_dtmf")
        digits = body.get("digits")
        try:
            msgspec.convert(digits, DtmfDigits)
        except msgspec.ValidationError:
            raise MediaStreamsError(
                "bad_digits", f"send_dtmf.digits {str(digits)[:40]!r} is not 1 to 32 of 0-9, *, #, A-D, w") from None
        return AgentSendDtmf(_leg(message, "send_dtmf"), digits, stream_sid)
    raise MediaStreamsError("unknown_event", f"event {event[:40]!r} is not one of {', '.join(AGENT_EVENTS)}")


# ---- gateway -> agent, parsed (for agents and tests) ------------------------

@dataclass(frozen=True, slots=True)
class GatewayConnected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class GatewayStart:
    stream_sid: str
    call_sid: str
    account_sid: str
    stream_format: StreamFormat
    custom_parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GatewayMedia:
    payload: bytes
    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayDtmf:
    digit: str
    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayMark:
    name: str
    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayStop:
    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayBargeIn:
    """audiogw's extension event: the caller spoke over the agent and playback was cleared."""

    stream_sid: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayDialStatus:
    """audiogw's ``audiogw.dial_status``: how the agent's ``audiogw.dial`` goes."""

    status: str
    leg: str = "retorno"
    reason: str = ""
    stream_sid: str | None = None


GatewayMessage = (GatewayConnected | GatewayStart | GatewayMedia | GatewayDtmf | GatewayMark | GatewayStop
                  | GatewayBargeIn | GatewayDialStatus)


def parse_gateway_message(
    text: str | bytes,
    stream_format: StreamFormat | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> GatewayMessage:
    """One gateway → agent message, validated (what an agent such as the demo reads)."""
    message = _load(text, max_bytes)
    event = _text_field(message, "event")
    stream_sid = _stream_sid(message)
    if event == "media":
        payload = _payload(_object_field(message, "media"))
        if stream_format is not None and stream_format.bytes_per_sample == 2 and len(payload) % 2:
            raise MediaStreamsError("odd_length", f"L16 payload of {len(payload)} bytes is not whole samples")
        return GatewayMedia(payload, stream_sid)
    if event == "dtmf":
        digit = _text_field(_object_field(message, "dtmf"), "digit")
        if digit not in DTMF_DIGITS:
            raise MediaStreamsError("bad_dtmf", f"DTMF digit {digit[:8]!r} is not 0-9, *, #, A-D")
        return GatewayDtmf(digit, stream_sid)
    if event == "mark":
        return GatewayMark(_mark_name(message), stream_sid)
    if event == "start":
        start = _object_field(message, "start")
        parameters = start.get("customParameters", {})
        if not isinstance(parameters, dict):
            raise MediaStreamsError("bad_field", "start.customParameters is not an object")
        return GatewayStart(
            stream_sid=_text_field(start, "streamSid"),
            call_sid=_text_field(start, "callSid"),
            account_sid=_text_field(start, "accountSid") if "accountSid" in start else "",
            stream_format=StreamFormat.from_media_format(_object_field(start, "mediaFormat")),
            custom_parameters=parameters,
        )
    if event == "stop":
        return GatewayStop(stream_sid)
    if event == "connected":
        return GatewayConnected(_text_field(message, "protocol"), _text_field(message, "version"))
    if event == "barge_in":
        return GatewayBargeIn(stream_sid)
    if event == DIAL_STATUS_EVENT:
        body = _object_field(message, "dial_status")
        status = _text_field(body, "status")
        if status not in DIAL_STATUSES:
            raise MediaStreamsError("bad_dial_status", f"dial status {status[:20]!r} is not one of {DIAL_STATUSES}")
        leg = body.get("leg", "retorno")
        if leg not in LEG_NAMES:
            raise MediaStreamsError("bad_leg", f"dial_status.leg {str(leg)[:20]!r} is not 'ia' or 'retorno'")
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise MediaStreamsError("bad_field", "dial_status.reason is not a string")
        return GatewayDialStatus(status, leg, reason, stream_sid)
    raise MediaStreamsError("unknown_event", f"event {event[:40]!r} is not a gateway event")


# ---- field helpers ----------------------------------------------------------

def _dial_timeout(message: dict[str, Any]) -> float:
    body = message.get("dial", {})
    if not isinstance(body, dict):
        raise MediaStreamsError("bad_dial", "'dial' is not an object")
    timeout = body.get("timeout", DIAL_TIMEOUT_DEFAULT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= DIAL_TIMEOUT_LIMIT:
        raise MediaStreamsError("bad_dial", f"dial.timeout {str(timeout)[:20]!r} is not a number of seconds in "
                                            f"(0, {DIAL_TIMEOUT_LIMIT:g}]")
    return float(timeout)


def _leg(message: dict[str, Any], name: str) -> str:
    leg = _object_field(message, name).get("leg")
    if leg not in LEG_NAMES:
        raise MediaStreamsError("bad_leg", f"{name}.leg {str(leg)[:20]!r} is not 'ia' or 'retorno'")
    return leg


def _load(text: str | bytes, max_bytes: int) -> dict[str, Any]:
    # len() of a str counts characters: a non-ASCII message may be up to 4x
    # larger in bytes, which the limit tolerates (it bounds work, not exactly).
    if len(text) > max_bytes:
        raise MediaStreamsError("too_large", f"message of {len(text)} bytes is over the {max_bytes}-byte limit")
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise MediaStreamsError("bad_json", f"message is not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise MediaStreamsError("not_an_object", f"message is a JSON {type(message).__name__}, not an object")
    return message


def _field(container: dict[str, Any], name: str) -> Any:
    if name not in container:
        raise MediaStreamsError("missing_field", f"message has no {name!r}")
    return container[name]


def _text_field(container: dict[str, Any], name: str) -> str:
    value = _field(container, name)
    if not isinstance(value, str):
        raise MediaStreamsError("bad_field", f"{name!r} is a {type(value).__name__}, not a string")
    return value


def _object_field(container: dict[str, Any], name: str) -> dict[str, Any]:
    value = _field(container, name)
    if not isinstance(value, dict):
        raise MediaStreamsError("bad_field", f"{name!r} is a {type(value).__name__}, not an object")
    return value


def _stream_sid(message: dict[str, Any]) -> str | None:
    value = message.get("streamSid")
    if value is not None and not isinstance(value, str):
        raise MediaStreamsError("bad_field", f"'streamSid' is a {type(value).__name__}, not a string")
    return value


def _payload(media: dict[str, Any]) -> bytes:
    encoded = _text_field(media, "payload")
    try:
        payload = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise MediaStreamsError("bad_base64", "media payload is not valid base64") from None
    if not payload:
        raise MediaStreamsError("empty_media", "media payload is empty")
    return payload


def _mark_name(message: dict[str, Any]) -> str:
    mark = message.get("mark")
    name = mark.get("name") if isinstance(mark, dict) else None
    if not isinstance(name, str) or not name or len(name) > MAX_MARK_NAME:
        raise MediaStreamsError("bad_mark", f"mark needs a name of 1 to {MAX_MARK_NAME} characters")
    return name


__all__ = [
    "MAX_MESSAGE_BYTES", "MAX_MARK_NAME", "DTMF_DIGITS", "ENCODINGS", "RATES",
    "MediaStreamsError", "StreamFormat", "StreamSession",
    "make_sid", "connected_message", "start_message", "media_message", "dtmf_message", "mark_message",
    "stop_message", "agent_media_message", "agent_mark_message", "agent_clear_message",
    "AgentMedia", "AgentMark", "AgentClear", "AgentDial", "AgentBridge", "AgentHangup", "AgentSendDtmf",
    "AgentMessage", "AGENT_EVENTS", "parse_agent_message", "agent_dial_message", "agent_bridge_message",
    "agent_hangup_message", "agent_send_dtmf_message", "DIAL_STATUS_EVENT", "LEG_NAMES",
    "GatewayConnected", "GatewayStart", "GatewayMedia", "GatewayDtmf", "GatewayMark", "GatewayStop",
    "GatewayDialStatus", "GatewayMessage", "parse_gateway_message",
]

"""AudioSocket wire codec: pure functions and classes, no I/O.

A frame is 1 byte kind + 2-byte big-endian payload length + payload (SPEC.md).
Every malformed input raises :class:`AudioSocketError` with a short machine
``reason`` (used as a metric label) and a human message; nothing else escapes.
"""
from __future__ import annotations

import enum
import struct
import uuid as uuid_module
from typing import NamedTuple

HEADER_SIZE = 3
# The one declaration of the frame period: Asterisk sends (and plays) one frame every 20 ms.
FRAME_MS = 20
FRAME_PERIOD = FRAME_MS / 1000
# The two legs of an extension: the visitor's (answered by the agent) and the resident's.
LEG_KINDS: tuple[str, ...] = ("ia", "retorno")


def other_leg(kind: str) -> str:
    """The leg a bridge pairs with ``kind``."""
    first, second = LEG_KINDS
    return second if kind == first else first

_HEADER = struct.Struct(">BH")


class Kind(enum.IntEnum):
    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    SLIN_8K = 0x10
    SLIN_12K = 0x11
    SLIN_16K = 0x12
    SLIN_24K = 0x13
    SLIN_32K = 0x14
    SLIN_44K = 0x15
    SLIN_48K = 0x16
    SLIN_96K = 0x17
    SLIN_192K = 0x18
    ERROR = 0xFF


AUDIO_RATES: dict[int, int] = {
    Kind.SLIN_8K: 8000,
    Kind.SLIN_12K: 12000,
    Kind.SLIN_16K: 16000,
    Kind.SLIN_24K: 24000,
    Kind.SLIN_32K: 32000,
    Kind.SLIN_44K: 44100,
    Kind.SLIN_48K: 48000,
    Kind.SLIN_96K: 96000,
    Kind.SLIN_192K: 192000,
}
KIND_FOR_RATE: dict[int, Kind] = {rate: Kind(kind) for kind, rate in AUDIO_RATES.items()}

# Asterisk sends 20 ms frames, but a channel with another ptime may send up to
# 60 ms; anything beyond 100 ms of audio in one frame is refused as oversized.
MAX_AUDIO_MS = 100

ERROR_CALLER_HUNGUP = 0x01
ERROR_FRAME_FORWARDING = 0x02
ERROR_MEMORY = 0x04


class AudioSocketError(ValueError):
    """A frame that breaks the protocol; ``reason`` is a stable metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def is_audio(kind: int) -> bool:
    return kind in AUDIO_RATES


def frame_bytes(rate: int, ms: int = FRAME_MS) -> int:
    """Bytes of 16-bit mono PCM in ``ms`` milliseconds at ``rate`` Hz."""
    return rate * ms // 1000 * 2


def max_payload(kind: int) -> int:
    """Largest payload a frame of this kind may carry."""
    if kind == Kind.HANGUP:
        return 0
    if kind == Kind.UUID:
        return 16
    if kind == Kind.DTMF:
        return 1
    if kind == Kind.ERROR:
        return 1
    if kind in AUDIO_RATES:
        return min(frame_bytes(AUDIO_RATES[kind], MAX_AUDIO_MS), 0xFFFF)
    raise AudioSocketError("unknown_kind", f"unknown frame kind 0x{kind:02x}")


class Frame(NamedTuple):
    """One decoded frame. A named tuple: it is built for every inbound frame, and a
    frozen dataclass costs several times more to create."""

    kind: int
    payload: bytes = b""

    @property
    def rate(self) -> int:
        return AUDIO_RATES[self.kind]


def check_payload(kind: int, payload_length: int) -> None:
    """Refuse a header whose length is impossible for its kind (before reading the payload)."""
    limit = max_payload(kind)
    if kind == Kind.UUID and payload_length != 16:
        raise AudioSocketError("bad_uuid", f"UUID frame carries {payload_length} bytes, not 16")
    if kind == Kind.DTMF and payload_length != 1:
        raise AudioSocketError("bad_dtmf", f"DTMF frame carries {payload_length} bytes, not 1")
    if payload_length > limit:
        raise AudioSocketError(
            "oversized", f"frame kind 0x{kind:02x} carries {payload_length} bytes, limit {limit}"
        )
    if kind in AUDIO_RATES:
        if payload_length == 0:
            raise AudioSocketError("empty_audio", "audio frame with an empty payload")
        if payload_length % 2:
            raise AudioSocketError(
                "odd_payload", f"audio frame of {payload_length} bytes is not whole 16-bit samples"
            )


def _check_dtmf(payload: bytes) -> None:
    if payload not in DTMF_DIGITS:
        raise AudioSocketError("bad_dtmf", f"DTMF payload {payload!r} is not a digit 0-9, *, #, A-D")


DTMF_DIGITS = frozenset(bytes([c]) for c in b"0123456789*#ABCD")
_AUDIO_LIMITS = {kind: max_payload(kind) for kind in AUDIO_RATES}


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole frames back.

    ``limit`` bounds the frames one call decodes, so a peer that floods a leg
    costs its worker a bounded amount of work per call: what is left waits in
    the buffer (``backlog`` is then true) until the next ``feed``, which may be
    ``feed(b"")``. After an error the stream has lost framing, so the decoder
    refuses further input: the caller must close the leg.
    """

    __slots__ = ("_buffer", "_failed", "backlog")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._failed = False
        self.backlog = False  # the last feed stopped at its limit with whole frames possibly left

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a frame (or, with ``backlog``, for the next feed)."""
        return len(self._buffer)

    def feed(self, data: bytes, limit: int = 0) -> list[Frame]:
        """Whole frames in ``data`` (and what was held before); at most ``limit`` of them if it is set."""
        if self._failed:
            raise AudioSocketError("after_error", "decoder already failed; close the connection")
        buffer = self._buffer
        if not buffer and len(data) > HEADER_SIZE:
            # The common case: exactly one valid audio frame, as Asterisk writes them.
            kind, length = _HEADER.unpack_from(data, 0)
            audio_limit = _AUDIO_LIMITS.get(kind)
            if audio_limit is not None and len(data) == HEADER_SIZE + length and 0 < length <= audio_limit \
                    and not length & 1:
                self.backlog = False
                return [Frame(kind, data[HEADER_SIZE:])]
        if data:
            buffer += data
        frames: list[Frame] = []
        offset = 0
        end = len(buffer)
        self.backlog = False
        try:
            while end - offset >= HEADER_SIZE:
                if limit and len(frames) >= limit:
                    self.backlog = True
                    break
                kind, length = _HEADER.unpack_from(buffer, offset)
                check_payload(kind, length)
                start = offset + HEADER_SIZE
                if end - start < length:
                    break
                payload = bytes(buffer[start : start + length])
                if kind == Kind.DTMF:
                    _check_dtmf(payload)
                frames.append(Frame(kind, payload))
                offset = start + length
        except AudioSocketError:
            self._failed = True
            raise
        if offset:
            del buffer[:offset]
        return frames


def encode_header(kind: int, payload_length: int) -> bytes:
    return _HEADER.pack(kind, payload_length)


def encode_audio(payload: bytes, rate: int = 8000) -> bytes:
    """An outbound audio frame, header and payload in one bytes object (one write)."""
    kind = KIND_FOR_RATE.get(rate)
    if kind is None:
        raise AudioSocketError("bad_rate", f"no AudioSocket kind for {rate} Hz")
    check_payload(kind, len(payload))
    return _HEADER.pack(kind, len(payload)) + payload


HANGUP_FRAME = b"\x00\x00\x00"


def encode_to_asterisk(kind: int, payload: bytes = b"") -> bytes:
    """Encode a frame the gateway may send: hangup or non-empty audio only.

    Asterisk ends the call on any other kind (UUID, DTMF, error) or on an empty
    audio payload, so those are refused here rather than on the wire.
    """
    if kind == Kind.HANGUP:
        if payload:
            raise AudioSocketError("oversized", "hangup frame carries no payload")
        return HANGUP_FRAME
    if kind not in AUDIO_RATES:
        raise AudioSocketError(
            "forbidden_kind", f"kind 0x{kind:02x} must never be sent to Asterisk"
        )
    check_payload(kind, len(payload))
    return _HEADER.pack(kind, len(payload)) + payload


def encode_from_asterisk(kind: int, payload: bytes = b"") -> bytes:
    """Encode a frame as Asterisk sends it (for the softphone and tests)."""
    try:
        kind = Kind(kind)
    except ValueError:
        raise AudioSocketError("unknown_kind", f"unknown frame kind 0x{kind:02x}") from None
    check_payload(kind, len(payload))
    if kind == Kind.DTMF:
        _check_dtmf(payload)
    return _HEADER.pack(kind, len(payload)) + payload


def encode_uuid(value: uuid_module.UUID | str) -> bytes:
    if not isinstance(value, uuid_module.UUID):
        value = uuid_module.UUID(str(value))
    return encode_from_asterisk(Kind.UUID, value.bytes)


def encode_dtmf(digit: str) -> bytes:
    return encode_from_asterisk(Kind.DTMF, digit.encode("ascii", "replace"))


def decode_uuid(payload: bytes) -> uuid_module.UUID:
    if len(payload) != 16:
        raise AudioSocketError("bad_uuid", f"UUID payload of {len(payload)} bytes, not 16")
    return uuid_module.UUID(bytes=payload)


def describe_error(payload: bytes) -> str:
    """Human text for an 0xff error frame's optional code byte."""
    if not payload:
        return "error (no code)"
    code = payload[0]
    parts = []
    if code & ERROR_CALLER_HUNGUP:
        parts.append("caller hung up")
    if code & ERROR_FRAME_FORWARDING:
        parts.append("frame forwarding")
    if code & ERROR_MEMORY:
        parts.append("memory")
    return f"error 0x{code:02x} ({', '.join(parts) or 'unknown'})"

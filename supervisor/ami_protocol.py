"""Asterisk Manager Interface (AMI) wire format: a pure parser and formatter, no socket.

AMI is text over TCP: the server first sends one banner line (``Asterisk Call
Manager/9.0.0``), then every message is ``Key: Value`` lines ended by an empty
line (CRLF; a lone LF is accepted too). A message is a response (``Response:``,
with the ``ActionID`` of the action it answers) or an event (``Event:``). An
action is written the same way.

Kept apart from the connection (``supervisor/ami.py``) so every corner of the
format (split reads, a banner, a message too long, a value that would inject a
line) is tested without Asterisk.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

__all__ = ["AmiMessage", "AmiParser", "AmiProtocolError", "format_action", "MAX_MESSAGE_BYTES"]

# A message larger than this is a broken or hostile peer (Asterisk's largest events are a few KiB).
MAX_MESSAGE_BYTES = 256 * 1024
BANNER_PREFIX = "Asterisk Call Manager/"


class AmiProtocolError(ValueError):
    """What the peer sent is not AMI (the connection is closed and opened again)."""


@dataclass(frozen=True, slots=True)
class AmiMessage:
    """One AMI message: its header lines in order (a key may repeat, e.g. ``ChanVariable``)."""

    headers: tuple[tuple[str, str], ...]

    def get(self, key: str, default: str = "") -> str:
        """The first value of ``key`` (compared case-insensitively, as Asterisk does)."""
        lowered = key.lower()
        for name, value in self.headers:
            if name.lower() == lowered:
                return value
        return default

    def __getitem__(self, key: str) -> str:
        return self.get(key)

    def __contains__(self, key: object) -> bool:
        lowered = str(key).lower()
        return any(name.lower() == lowered for name, _ in self.headers)

    @property
    def event(self) -> str:
        """The event name ("" for a response)."""
        return self.get("Event")

    @property
    def response(self) -> str:
        """``Success``, ``Error``, ``Follows``, ``Goodbye``... ("" for an event)."""
        return self.get("Response")

    @property
    def action_id(self) -> str:
        return self.get("ActionID")

    @property
    def is_event(self) -> bool:
        return "Event" in self

    @property
    def ok(self) -> bool:
        return self.response.lower() in ("success", "follows", "goodbye")

    def as_dict(self) -> dict[str, str]:
        """First value of every key (for logs and tests)."""
        result: dict[str, str] = {}
        for name, value in self.headers:
            result.setdefault(name, value)
        return result


class AmiParser:
    """Incremental: ``feed(bytes)`` returns the whole messages the bytes completed.

    The banner is taken from the first line (:attr:`banner`); a first line that is not
    AMI's banner, a header line without ``:`` or a message over ``max_bytes`` raise
    :class:`AmiProtocolError`. Bytes are decoded as UTF-8 with replacement: a channel
    name with odd bytes costs that name, never the connection.
    """

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES, expect_banner: bool = True) -> None:
        self.max_bytes = max_bytes
        self.banner: str | None = None if expect_banner else ""
        self._buffer = bytearray()
        self._lines: list[tuple[str, str]] = []
        self._message_bytes = 0

    def feed(self, data: bytes) -> list[AmiMessage]:
        self._buffer += data
        return list(self._messages())

    def _messages(self) -> Iterator[AmiMessage]:
        buffer = self._buffer
        start = 0
        try:
            while True:
                end = buffer.find(b"\n", start)
                if end < 0:
                    if self._message_bytes + len(buffer) - start > self.max_bytes:
                        raise AmiProtocolError(f"message longer than {self.max_bytes} bytes")
                    return
                raw = bytes(buffer[start:end])
                self._message_bytes += end + 1 - start
                start = end + 1
                line = raw.rstrip(b"\r").decode("utf-8", "replace")
                if self.banner is None:
                    if not line.startswith(BANNER_PREFIX):
                        raise AmiProtocolError(f"not an AMI server (first line {line[:80]!r})")
                    self.banner = line
                    self._message_bytes = 0
                    continue
                if not line:
                    if self._lines:
                        yield AmiMessage(tuple(self._lines))
                    self._lines = []
                    self._message_bytes = 0
                    continue
                if self._message_bytes > self.max_bytes:
                    raise AmiProtocolError(f"message longer than {self.max_bytes} bytes")
                name, sep, value = line.partition(":")
                if not sep or not name.strip():
                    # Command output of old servers ("--END COMMAND--") is not used here: refuse.
                    raise AmiProtocolError(f"header line without 'Key:' ({line[:80]!r})")
                self._lines.append((name.strip(), value.strip()))
        finally:
            del buffer[:start]


def _clean(text: str, what: str) -> str:
    if "\r" in text or "\n" in text:
        raise ValueError(f"AMI {what} {text[:40]!r} contains a line break")
    return text


def format_action(action: str, action_id: str,
                  fields: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> bytes:
    """The bytes of one action; ``fields`` as a mapping, or pairs when a key repeats (``Variable``).

    A line break in any name or value is refused (ValueError): it would let a value
    (a dial string, a channel name) add a header or a whole action of its own.
    """
    items = fields.items() if isinstance(fields, Mapping) else fields
    lines = [f"Action: {_clean(action, 'action')}", f"ActionID: {_clean(action_id, 'ActionID')}"]
    for name, value in items:
        name = _clean(str(name), "header name")
        if not name or ":" in name:
            raise ValueError(f"AMI header name {name!r} is empty or has a ':'")
        lines.append(f"{name}: {_clean(str(value), 'value of ' + name)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

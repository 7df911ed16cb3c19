"""Messages between supervisor, workers and `audiogw ctl`, as JSON over ZeroMQ.

Worker <-> supervisor ("worker bus", DEALER -> ROUTER):
  worker:     {"type": "ready"|"heartbeat"|"stopping", "extension", "pid", "seq", "time", "stats"}
  supervisor: {"type": "drain", "seconds": S} | {"type": "stop"}
ctl -> supervisor (REQ-like DEALER -> ROUTER, multipart [id, body]):
  request: {"id": str, "command": str, "args": {...}}
  reply:   {"id": str, "ok": true, "result": ...} | {"id": str, "ok": false, "error": str}
Every inbound message is parsed by :func:`decode` and refused with MessageError
when it is not a JSON object of the expected shape.
"""
from __future__ import annotations

from typing import Any

import orjson

MAX_MESSAGE_BYTES = 1 << 20


class MessageError(ValueError):
    """A message that is not JSON, not an object, or lacks a required field."""


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


def decode(raw: bytes, *, required: tuple[str, ...] = ()) -> dict[str, Any]:
    if len(raw) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise MessageError(f"not JSON: {error}") from None
    if not isinstance(message, dict):
        raise MessageError(f"expected a JSON object, got {type(message).__name__}")
    for field in required:
        if field not in message:
            raise MessageError(f"missing field {field!r}")
    return message

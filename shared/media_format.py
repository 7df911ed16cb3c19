"""The Media Streams audio formats (encoding -> rates), without numpy.

The ``agent`` app's options are checked against this table by the supervisor,
which must not import the audio stack; :mod:`audiogw.shared.media_streams`
builds its :class:`~audiogw.shared.media_streams.StreamFormat` on it.
"""
from __future__ import annotations

ENCODINGS: dict[str, str] = {"mulaw": "audio/x-mulaw", "l16": "audio/L16"}
RATES: dict[str, tuple[int, ...]] = {"mulaw": (8000,), "l16": (8000, 16000, 24000)}


def format_problem(encoding: object, rate: object) -> tuple[str, str] | None:
    """``(field, reason)`` if ``encoding`` at ``rate`` Hz is not a stream format, else None."""
    if encoding not in RATES:
        return "encoding", f"encoding {encoding!r} is not one of {', '.join(sorted(RATES))}"
    allowed = RATES[encoding]  # type: ignore[index]
    if type(rate) is not int or rate not in allowed:
        return "rate", f"{encoding} runs at {', '.join(map(str, allowed))} Hz, not {rate!r}"
    return None


__all__ = ["ENCODINGS", "RATES", "format_problem"]

"""G.711 µ-law with numpy lookup tables, bit-exact with the ITU/Sun reference.

Twilio Media Streams carry telephony audio as 8 kHz µ-law. ``audioop`` did this
in C but is gone in Python 3.13, so both directions are table lookups here:
a 256-entry decode table and a 65536-entry encode table indexed by the
sample's uint16 bit pattern. Both tables are built once, at import, from the
reference algorithm (Sun's g711.c, which ``audioop.lin2ulaw``/``ulaw2lin``
implement): encoding works on the top 14 bits, so it is many-to-one and
``decode(encode(x))`` is within one quantisation step of ``x``, not equal.
"""
from __future__ import annotations

import numpy

_BIAS = 0x84  # 132: added before the segment search, in 16-bit units
_CLIP = 8159  # largest magnitude in the 14-bit domain
_SEGMENT_ENDS = numpy.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=numpy.int32)


def _build_encode_table() -> numpy.ndarray:
    """µ-law byte for every int16 value, indexed by the value's uint16 bit pattern."""
    values = numpy.arange(65536, dtype=numpy.uint16).view(numpy.int16).astype(numpy.int32)
    shifted = values >> 2  # arithmetic shift: -1 stays -1, as in the C reference
    negative = shifted < 0
    magnitude = numpy.minimum(numpy.where(negative, -shifted, shifted), _CLIP) + (_BIAS >> 2)
    segment = numpy.searchsorted(_SEGMENT_ENDS, magnitude, side="left").astype(numpy.int32)
    # The clipped, biased magnitude can reach 8192, one past the last segment
    # end: the reference then returns the largest code (0x7F ^ mask).
    in_range = segment < 8
    segment_clamped = numpy.minimum(segment, 7)
    code = (segment_clamped << 4) | ((magnitude >> (segment_clamped + 1)) & 0x0F)
    code = numpy.where(in_range, code, 0x7F)
    mask = numpy.where(negative, 0x7F, 0xFF)
    return (code ^ mask).astype(numpy.uint8)


def _build_decode_table() -> numpy.ndarray:
    """int16 sample for every µ-law byte."""
    complement = ~numpy.arange(256, dtype=numpy.int32) & 0xFF
    magnitude = (((complement & 0x0F) << 3) + _BIAS) << ((complement & 0x70) >> 4)
    return numpy.where(complement & 0x80, _BIAS - magnitude, magnitude - _BIAS).astype(numpy.int16)


_ENCODE_TABLE = _build_encode_table()
_DECODE_TABLE = _build_decode_table()
_ENCODE_TABLE.flags.writeable = False
_DECODE_TABLE.flags.writeable = False


def encode_mulaw(samples: numpy.ndarray) -> bytes:
    """µ-law bytes for int16 samples (one byte per sample)."""
    samples = numpy.asarray(samples)
    if samples.dtype.kind != "i" or samples.dtype.itemsize != 2:
        raise TypeError(f"encode_mulaw expects int16 samples, not {samples.dtype}")
    # Non-native byte order must become native before its bits index the table.
    native = samples.astype(numpy.int16, copy=False)
    return _ENCODE_TABLE[native.view(numpy.uint16)].tobytes()


def decode_mulaw(data: bytes | bytearray | memoryview) -> numpy.ndarray:
    """int16 samples for µ-law bytes (one sample per byte)."""
    return _DECODE_TABLE[numpy.frombuffer(data, dtype=numpy.uint8)]


__all__ = ["encode_mulaw", "decode_mulaw"]

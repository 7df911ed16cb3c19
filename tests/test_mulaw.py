"""G.711 µ-law: bit-exact with audioop (the Sun/ITU reference) and round trips within one step."""
from __future__ import annotations

import warnings

import numpy
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from audiogw.shared.mulaw import decode_mulaw, encode_mulaw

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop
    except ImportError:  # removed in Python 3.13
        audioop = None

needs_audioop = pytest.mark.skipif(audioop is None, reason="audioop (the C reference) is gone in Python 3.13+")
ALL_INT16 = numpy.arange(-32768, 32768, dtype=numpy.int16)
ALL_BYTES = bytes(range(256))


@needs_audioop
def test_encode_matches_audioop_for_every_int16_value():
    assert encode_mulaw(ALL_INT16) == audioop.lin2ulaw(ALL_INT16.astype("<i2").tobytes(), 2)


@needs_audioop
def test_decode_matches_audioop_for_every_byte():
    assert decode_mulaw(ALL_BYTES).astype("<i2").tobytes() == audioop.ulaw2lin(ALL_BYTES, 2)


@pytest.mark.parametrize(
    ("sample", "code"),
    [
        (0, 0xFF),        # zero is the all-ones code word
        (-1, 0x7E),       # smallest negative step (0x7F, negative zero, is never produced)
        (32767, 0x80),    # positive full scale: segment 7, step 15
        (-32768, 0x00),   # negative full scale
        (1000, 0xCE),
        (-1000, 0x4E),
    ],
)
def test_known_code_words(sample, code):
    assert encode_mulaw(numpy.array([sample], dtype=numpy.int16)) == bytes([code])


@pytest.mark.parametrize(("code", "sample"), [(0xFF, 0), (0x7F, 0), (0x80, 32124), (0x00, -32124), (0xCE, 988)])
def test_known_decoded_values(code, sample):
    assert decode_mulaw(bytes([code]))[0] == sample


def test_decoded_values_are_symmetric_and_monotonic():
    decoded = decode_mulaw(ALL_BYTES).astype(numpy.int32)
    positive = decoded[0x80:]  # 0x80..0xff run from the largest positive value down to zero
    assert numpy.all(numpy.diff(positive) < 0)
    assert numpy.array_equal(decoded[:0x80], -positive)


def test_every_code_round_trips_exactly():
    """A decoded value is a reconstruction level, so it encodes to the same code (except -0)."""
    codes = numpy.frombuffer(ALL_BYTES, dtype=numpy.uint8)
    again = numpy.frombuffer(encode_mulaw(decode_mulaw(ALL_BYTES)), dtype=numpy.uint8)
    differs = codes[again != codes]
    assert differs.tolist() == [0x7F]  # negative zero decodes to 0, which encodes as +0


def test_encode_accepts_big_endian_input_and_refuses_other_types():
    assert encode_mulaw(ALL_INT16.astype(">i2")) == encode_mulaw(ALL_INT16)
    with pytest.raises(TypeError):
        encode_mulaw(ALL_INT16.astype(numpy.int32))
    with pytest.raises(TypeError):
        encode_mulaw(ALL_INT16.astype(numpy.float32))


def test_empty_input_gives_empty_output():
    assert encode_mulaw(numpy.empty(0, dtype=numpy.int16)) == b""
    assert decode_mulaw(b"").size == 0


@given(arrays(numpy.int16, st.integers(0, 400)))
def test_round_trip_error_is_within_half_a_quantisation_step(samples):
    encoded = encode_mulaw(samples)
    assert len(encoded) == len(samples)
    decoded_int16 = decode_mulaw(encoded)
    assert decoded_int16.dtype == numpy.int16
    decoded = decoded_int16.astype(numpy.int32)
    original = samples.astype(numpy.int32)
    # The step size doubles every segment: 8 units up to 2^8 in magnitude, 16 up to 2^9, ...
    # so the error bound is relative (about 1/32 of the magnitude) plus the smallest step.
    magnitude = numpy.abs(original)
    bound = numpy.maximum(magnitude / 32.0, 8.0) + 8.0
    assert numpy.all(numpy.abs(decoded - original) <= bound)

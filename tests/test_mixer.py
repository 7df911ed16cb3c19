"""worker/mixer.py: two int16 frames into one, never clipping, a lone source untouched (pure, hypothesis)."""
from __future__ import annotations

import numpy
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from audiogw.worker.mixer import Mixer

SIZES = st.sampled_from([160, 320, 480])
INT16 = st.integers(min_value=-32768, max_value=32767)


def frames(size: int, count: int):
    return st.lists(arrays(numpy.int16, size, elements=INT16), min_size=count, max_size=count)


@given(data=st.data(), size=SIZES)
def test_a_lone_source_passes_unchanged(data, size) -> None:
    mixer = Mixer(size)
    for frame in data.draw(frames(size, 3)):
        out = mixer.mix(frame, None)
        assert out.dtype == numpy.int16 and out.shape == frame.shape
        assert numpy.array_equal(out, frame)
        assert mixer.mix(frame, numpy.zeros(size, numpy.int16)).tobytes() == frame.tobytes()


@settings(max_examples=200)
@given(data=st.data(), size=SIZES, count=st.integers(min_value=1, max_value=6))
def test_no_sample_ever_wraps_and_the_output_is_as_long_as_the_input(data, size, count) -> None:
    mixer = Mixer(size)
    for first, second in zip(data.draw(frames(size, count)), data.draw(frames(size, count))):
        out = mixer.mix(first, second)
        assert out.shape == (size,) and out.dtype == numpy.int16
        total = first.astype(numpy.int64) + second.astype(numpy.int64)
        # No wrap-around: every output sample has the sign of the true sum (or is 0) and is no louder.
        assert numpy.all(out.astype(numpy.int64) * total >= 0)
        assert numpy.all(numpy.abs(out.astype(numpy.int64)) <= numpy.abs(total))
        assert 0.0 < mixer.gain <= 1.0


def test_a_sum_within_range_is_exact_and_a_loud_sum_is_scaled_not_clipped() -> None:
    size = 160
    quiet = numpy.full(size, 1000, numpy.int16)
    mixer = Mixer(size)
    assert numpy.array_equal(mixer.mix(quiet, quiet), numpy.full(size, 2000))
    loud = numpy.full(size, 30000, numpy.int16)
    out = mixer.mix(loud, loud).copy()
    # Without a limiter the sum wraps (int16) or saturates at 32767 on every sample (clip):
    assert out.max() <= 32767 and out.min() > 0
    assert numpy.count_nonzero(out == 32767) <= 1, "a flat top is a hard clip"
    assert numpy.all(numpy.diff(out.astype(numpy.int32)) <= 0), "the gain ramps down smoothly within the frame"
    assert mixer.gain < 1.0


def test_the_gain_never_steps_at_a_frame_boundary_and_recovers_slowly() -> None:
    size = 160
    mixer = Mixer(size)
    loud = numpy.full(size, 30000, numpy.int16)
    mixer.mix(loud, loud)
    low = mixer.gain
    steady = numpy.full(size, 10000, numpy.int16)
    out = mixer.mix(steady, None).copy()
    # The first sample continues from the previous frame's gain (no jump to 1).
    assert abs(out[0] - round(10000 * low)) <= 10000 * 0.03
    assert mixer.gain < 1.0
    for _ in range(200):
        mixer.mix(steady, None)
    assert mixer.gain == 1.0
    assert numpy.array_equal(mixer.mix(steady, None), steady), "back at unity: unchanged again"


def test_frames_of_another_length_are_refused() -> None:
    with pytest.raises(ValueError):
        Mixer(160).mix(numpy.zeros(159, numpy.int16))

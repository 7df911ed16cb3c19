"""The streaming resampler keeps its filter state across chunks: chunked == whole."""
from __future__ import annotations

import numpy
import pytest

from audiogw.shared.resample import StreamResampler
from audiogw.shared.wav import tone


def test_equal_rates_pass_through_untouched():
    samples = tone(440, 0.1, 8000)
    assert StreamResampler(8000, 8000)(samples) is samples
    assert StreamResampler(8000, 8000).flush().size == 0


@pytest.mark.parametrize("in_rate,out_rate", [(8000, 16000), (16000, 8000), (24000, 8000)])
def test_chunked_conversion_equals_one_shot(in_rate, out_rate):
    samples = tone(440, 1.0, in_rate)
    whole = StreamResampler(in_rate, out_rate)
    expected = numpy.concatenate([whole(samples), whole.flush()])
    chunked = StreamResampler(in_rate, out_rate)
    sizes = [37, 160, 1, 999, 4000]
    parts, offset = [], 0
    while offset < samples.size:
        size = sizes[len(parts) % len(sizes)]
        parts.append(chunked(samples[offset : offset + size]))
        offset += size
    parts.append(chunked.flush())
    result = numpy.concatenate(parts)
    assert result.dtype == numpy.int16
    assert abs(result.size - samples.size * out_rate / in_rate) <= 2
    # Same samples as one-shot conversion, give or take int16 rounding at chunk edges.
    assert result.size == expected.size
    assert numpy.abs(result.astype(int) - expected.astype(int)).max() <= 2
    # A tone stays a tone: the RMS level survives the conversion (no clicks, no silence).
    middle = result[result.size // 4 : 3 * result.size // 4].astype(float)
    source = samples.astype(float)
    assert numpy.sqrt(numpy.mean(middle ** 2)) == pytest.approx(numpy.sqrt(numpy.mean(source ** 2)), rel=0.05)


def test_stream_answers_each_frame_at_once():
    """No block buffering: every 20 ms in gives ~20 ms out (soxr's stream held ~120 ms)."""
    stream = StreamResampler(8000, 16000)
    sizes = [stream(tone(440, 0.02, 8000)).size for _ in range(10)]
    assert min(sizes) >= 280 and sum(sizes) >= 10 * 320 - 40

"""Streaming sample-rate conversion: soxr's band-limited resampler, its state kept across chunks.

Audio arrives in 20 ms frames or agent chunks of any size; converting each chunk
on its own would click at every boundary, so one :class:`StreamResampler`
lives as long as the stream. Equal rates pass through untouched.
"""
from __future__ import annotations

import numpy
import soxr


class StreamResampler:
    __slots__ = ("in_rate", "out_rate", "_stream")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16") if in_rate != out_rate else None

    @property
    def resampling(self) -> bool:
        """False when the rates are equal and audio passes through."""
        return self._stream is not None

    def __call__(self, samples: numpy.ndarray) -> numpy.ndarray:
        """int16 samples at ``in_rate`` -> int16 samples at ``out_rate`` (possibly fewer, held in the filter)."""
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples)

    def flush(self) -> numpy.ndarray:
        """What the filter still holds, at the end of a stream or an utterance."""
        if self._stream is None:
            return numpy.empty(0, dtype=numpy.int16)
        return self._stream.resample_chunk(numpy.empty(0, dtype=numpy.int16), last=True)

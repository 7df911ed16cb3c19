"""Streaming sample-rate conversion for live audio: a polyphase FIR in numpy, state kept across chunks.

Audio arrives in 20 ms frames or agent chunks of any size; converting each chunk
on its own would click at every boundary, so one :class:`StreamResampler`
lives as long as the stream. Equal rates pass through untouched.

Why not soxr's stream here (prompts are still converted with soxr, in one go):
its filters work in blocks, and a stream of 20 ms chunks came out ~120 ms late,
in bursts. A paced agent reply then underran between bursts, and a voice relayed
between legs at two rates carried that delay. This filter answers every chunk at
once, 2 ms behind (half its length), and costs ~20 µs per 20 ms frame.
"""
from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy
from numpy.lib.stride_tricks import sliding_window_view

TAPS_PER_INPUT = 32  # filter length in input samples at the lower rate: ~1 kHz transition at 8 kHz
KAISER_BETA = 8.0  # ~80 dB stopband
FEW_PHASES = 8  # up to this many phases, one correlation each; beyond (44.1 kHz ratios), a gather


@lru_cache(maxsize=32)
def _phases(up: int, down: int) -> numpy.ndarray:
    """The low-pass filter for ``up``/``down``, split into ``up`` phases, each reversed for a dot product."""
    length = TAPS_PER_INPUT * max(up, down) + 1  # odd: its centre falls on a sample
    cutoff = 0.5 / max(up, down)  # cycles per sample of the up-sampled stream
    centre = (length - 1) / 2
    taps = 2 * cutoff * numpy.sinc(2 * cutoff * (numpy.arange(length) - centre)) * numpy.kaiser(length, KAISER_BETA)
    taps *= up / taps.sum()  # zero-stuffing by `up` divides the level by `up`
    per_phase = -(-length // up)
    padded = numpy.zeros(per_phase * up)
    padded[:length] = taps
    return numpy.ascontiguousarray(padded.reshape(per_phase, up).T[:, ::-1])


class StreamResampler:
    __slots__ = ("in_rate", "out_rate", "_up", "_down", "_phases", "_delay", "_buffer", "_base", "_received",
                 "_emitted")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        common = gcd(in_rate, out_rate)
        self._up = out_rate // common
        self._down = in_rate // common
        self._phases = _phases(self._up, self._down) if in_rate != out_rate else None
        taps = 0 if self._phases is None else self._phases.shape[1]
        self._delay = TAPS_PER_INPUT * max(self._up, self._down) // 2  # centre of the filter, up-sampled
        self._buffer = numpy.zeros(taps, dtype=numpy.float64)  # input history; zeros before the stream
        self._base = -taps  # input index of _buffer[0]
        self._received = 0  # input samples so far
        self._emitted = 0  # output samples so far

    @property
    def resampling(self) -> bool:
        """False when the rates are equal and audio passes through."""
        return self._phases is not None

    def __call__(self, samples: numpy.ndarray) -> numpy.ndarray:
        """int16 samples at ``in_rate`` -> int16 samples at ``out_rate`` (the last ~2 ms wait for more input)."""
        if self._phases is None:
            return samples
        return self._convert(samples, self._received + samples.size)

    def flush(self) -> numpy.ndarray:
        """What the filter still holds, at the end of a stream or an utterance; the stream starts afresh."""
        if self._phases is None:
            return numpy.empty(0, dtype=numpy.int16)
        received = self._received
        padding = numpy.zeros(self._phases.shape[1], dtype=numpy.int16)
        out = self._convert(padding, received + padding.size, total=-(-received * self._up // self._down))
        self.__init__(self.in_rate, self.out_rate)
        return out

    def _convert(self, samples: numpy.ndarray, available: int, total: int | None = None) -> numpy.ndarray:
        up, down, phases = self._up, self._down, self._phases
        taps = phases.shape[1]
        buffer = numpy.concatenate((self._buffer, samples.astype(numpy.float64)))
        self._received += samples.size if total is None else 0
        # Output j sits at up-sampled position j*down + delay; it needs input up to that // up.
        last = (available * up - 1 - self._delay) // down
        if total is not None:
            last = min(last, total - 1)
        first = self._emitted
        if last < first:
            out = numpy.empty(0, dtype=numpy.int16)
        else:
            count = last + 1 - first
            if up <= FEW_PHASES:
                # Outputs k, k+up, k+2up ... share a phase and their windows step by `down`
                # inputs: one correlation per phase, sliced, all in C.
                values = numpy.empty(count)
                for offset in range(min(up, count)):
                    position = (first + offset) * down + self._delay
                    low = position // up - self._base - taps + 1
                    outputs = len(range(offset, count, up))
                    span = buffer[low : low + (outputs - 1) * down + taps]
                    values[offset::up] = numpy.correlate(span, phases[position % up], "valid")[::down]
            else:
                positions = numpy.arange(first, last + 1) * down + self._delay
                starts = positions // up - self._base - taps + 1  # where each output's input window begins
                windows = sliding_window_view(buffer, taps)[starts]
                values = numpy.einsum("ij,ij->i", windows, phases[positions % up])
            out = numpy.clip(numpy.rint(values), -32768, 32767).astype(numpy.int16)
            self._emitted = last + 1
        if total is None:
            keep = buffer[-taps:] if buffer.size >= taps else buffer
            self._base += buffer.size - keep.size
            self._buffer = keep.copy()
        return out

"""Pacing statistics of audio frame arrival times: pure numpy, no I/O.

Asterisk plays each frame the moment it arrives, so what a caller hears is the
spacing of arrivals. These numbers summarise how far that spacing strays from
the 20 ms frame period; benchmarks and ``audiogw call`` report them, so they
are computed one way, here, and tested against series with known answers.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy

FRAME_PERIOD = 0.020
GAP_THRESHOLD = 0.040


@dataclass(frozen=True)
class PacingStats:
    """Summary of one or many calls' arrival intervals (times in ms, duration in s)."""

    frames: int
    duration: float
    p50_deviation_ms: float
    p99_deviation_ms: float
    max_deviation_ms: float
    max_gap_ms: float
    gaps_over_40ms: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain Python numbers, ready for JSON."""
        return asdict(self)


def _summarise(
    intervals: numpy.ndarray, frames: int, duration: float, period: float, gap_threshold: float
) -> PacingStats:
    if intervals.size == 0:
        return PacingStats(frames, duration, 0.0, 0.0, 0.0, 0.0, 0)
    deviation_ms = numpy.abs(intervals - period) * 1000.0
    p50, p99 = numpy.percentile(deviation_ms, [50.0, 99.0])
    return PacingStats(
        frames=frames,
        duration=float(duration),
        p50_deviation_ms=float(p50),
        p99_deviation_ms=float(p99),
        max_deviation_ms=float(deviation_ms.max()),
        max_gap_ms=float(intervals.max() * 1000.0),
        gaps_over_40ms=int(numpy.count_nonzero(intervals > gap_threshold)),
    )


def pacing_stats(
    arrivals_seconds: numpy.ndarray | Sequence[float],
    period: float = FRAME_PERIOD,
    gap_threshold: float = GAP_THRESHOLD,
) -> PacingStats:
    """Pacing of one call from its frame arrival times (seconds, in arrival order).

    Deviation is ``|interval - period|`` between consecutive arrivals; a gap is
    an interval longer than ``gap_threshold`` (the field keeps its 40 ms name
    whatever threshold is passed). Fewer than two arrivals give zeros.
    """
    arrivals = numpy.asarray(arrivals_seconds, dtype=numpy.float64).ravel()
    intervals = numpy.diff(arrivals) if arrivals.size >= 2 else numpy.empty(0, dtype=numpy.float64)
    duration = float(arrivals[-1] - arrivals[0]) if arrivals.size >= 2 else 0.0
    return _summarise(intervals, int(arrivals.size), duration, period, gap_threshold)


def pacing_stats_many(
    calls: Iterable[numpy.ndarray | Sequence[float]],
    period: float = FRAME_PERIOD,
    gap_threshold: float = GAP_THRESHOLD,
) -> PacingStats:
    """Pacing of many calls pooled: intervals are taken within each call, never across calls.

    Percentiles are over all pooled intervals (not an average of per-call
    percentiles); ``frames`` and ``duration`` are summed over the calls.
    """
    pooled: list[numpy.ndarray] = []
    frames = 0
    duration = 0.0
    for arrivals_seconds in calls:
        arrivals = numpy.asarray(arrivals_seconds, dtype=numpy.float64).ravel()
        frames += int(arrivals.size)
        if arrivals.size >= 2:
            duration += float(arrivals[-1] - arrivals[0])
            pooled.append(numpy.diff(arrivals))
    intervals = numpy.concatenate(pooled) if pooled else numpy.empty(0, dtype=numpy.float64)
    return _summarise(intervals, frames, duration, period, gap_threshold)

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

from audiogw.shared.audiosocket import FRAME_PERIOD

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


def window_arrivals(arrivals_seconds: numpy.ndarray | Sequence[float], start: float, seconds: float) -> numpy.ndarray:
    """The arrivals inside ``[start, start + seconds]``, sorted.

    A call that hangs up ``seconds`` after its UUID frame should get
    ``seconds / period`` frames in that window (one more or less, from where
    the edges fall between two ticks); frames outside it are not the
    gateway's pacing of the call (they raced the hangup).
    """
    arrivals = numpy.sort(numpy.asarray(arrivals_seconds, dtype=numpy.float64).ravel())
    low = numpy.searchsorted(arrivals, start, side="left")
    high = numpy.searchsorted(arrivals, start + seconds, side="right")
    return arrivals[low:high]


def pooled_intervals(calls: Iterable[numpy.ndarray | Sequence[float]]) -> numpy.ndarray:
    """Every inter-arrival interval (seconds) of every call, taken within each call, never across calls."""
    pooled = [numpy.diff(numpy.asarray(arrivals, dtype=numpy.float64).ravel()) for arrivals in calls]
    pooled = [intervals for intervals in pooled if intervals.size]
    return numpy.concatenate(pooled) if pooled else numpy.empty(0, dtype=numpy.float64)


@dataclass(frozen=True)
class GapTimeline:
    """When the large intervals happened, relative to ``origin`` (seconds; intervals in ms).

    ``bin_starts``/``max_interval_ms``: the largest interval ending in each bin
    (NaN where no interval ended), the line a timeline plot draws.
    ``gap_starts``/``gap_ms``: every interval over the gap threshold, placed
    at the arrival that *opened* it (when the silence began), sorted by time.
    """

    bin_seconds: float
    bin_starts: numpy.ndarray
    max_interval_ms: numpy.ndarray
    gap_starts: numpy.ndarray
    gap_ms: numpy.ndarray


def gap_timeline(
    calls: Iterable[numpy.ndarray | Sequence[float]],
    origin: float,
    duration: float,
    bin_seconds: float = 0.1,
    gap_threshold: float = GAP_THRESHOLD,
) -> GapTimeline:
    """The gap timeline of many calls over ``[origin, origin + duration)``; intervals outside are left out."""
    if not bin_seconds > 0 or not duration > 0:
        raise ValueError(f"bin_seconds and duration must be positive, not {bin_seconds} and {duration}")
    bins = int(numpy.ceil(duration / bin_seconds - 1e-9))
    maxima = numpy.full(bins, -numpy.inf)
    gap_starts: list[numpy.ndarray] = []
    gap_sizes: list[numpy.ndarray] = []
    for arrivals_seconds in calls:
        arrivals = numpy.asarray(arrivals_seconds, dtype=numpy.float64).ravel()
        if arrivals.size < 2:
            continue
        intervals = numpy.diff(arrivals)
        ends = arrivals[1:] - origin
        index = numpy.floor(ends / bin_seconds).astype(numpy.int64)
        inside = (index >= 0) & (index < bins)
        numpy.maximum.at(maxima, index[inside], intervals[inside] * 1000.0)
        over = intervals > gap_threshold
        starts = arrivals[:-1][over] - origin
        kept = (starts >= 0) & (starts < duration)
        gap_starts.append(starts[kept])
        gap_sizes.append(intervals[over][kept] * 1000.0)
    maxima[numpy.isinf(maxima)] = numpy.nan
    starts_all = numpy.concatenate(gap_starts) if gap_starts else numpy.empty(0)
    sizes_all = numpy.concatenate(gap_sizes) if gap_sizes else numpy.empty(0)
    order = numpy.argsort(starts_all, kind="stable")
    return GapTimeline(
        bin_seconds=float(bin_seconds),
        bin_starts=numpy.arange(bins) * bin_seconds,
        max_interval_ms=maxima,
        gap_starts=starts_all[order],
        gap_ms=sizes_all[order],
    )


def interval_cdf(intervals_seconds: numpy.ndarray | Sequence[float], points: int = 400) -> tuple[numpy.ndarray, numpy.ndarray]:
    """(interval ms, fraction of intervals <= it) at ``points`` levels, dense in the tail.

    Half the levels cover the body evenly, half crowd towards 1 on a log scale,
    so a plot of ``1 - cdf`` shows the rare long intervals that matter. Empty
    input gives two empty arrays.
    """
    intervals = numpy.asarray(intervals_seconds, dtype=numpy.float64).ravel()
    if intervals.size == 0:
        return numpy.empty(0), numpy.empty(0)
    half = max(1, points // 2)
    tail_floor = max(1.0 / intervals.size, 1e-9)
    levels = numpy.concatenate([
        numpy.linspace(0.0, 0.99, half, endpoint=False),
        1.0 - numpy.geomspace(0.01, tail_floor, half) if tail_floor < 0.01 else numpy.empty(0),
        [1.0],
    ])
    levels = numpy.unique(numpy.clip(levels, 0.0, 1.0))
    values_ms = numpy.quantile(intervals, levels, method="inverted_cdf") * 1000.0
    return values_ms, levels

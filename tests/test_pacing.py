"""Pacing statistics against synthetic arrival series whose answers are known by hand."""
from __future__ import annotations

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiogw.shared.pacing import PacingStats, pacing_stats, pacing_stats_many

EPOCH = 1_795_000_000.0  # kernel timestamps are CLOCK_REALTIME seconds: test at that magnitude
# A float64 near EPOCH resolves ~0.24 us, so "exact" answers are checked to 1 us.
TOLERANCE_MS = 0.001


def perfect(count: int, start: float = EPOCH) -> numpy.ndarray:
    return start + numpy.arange(count) * 0.020


def test_perfect_20ms_series_has_no_deviation_and_no_gaps():
    stats = pacing_stats(perfect(500))
    assert stats.frames == 500
    assert stats.duration == pytest.approx(499 * 0.020, abs=1e-6)
    assert stats.p50_deviation_ms == pytest.approx(0.0, abs=TOLERANCE_MS)
    assert stats.p99_deviation_ms == pytest.approx(0.0, abs=TOLERANCE_MS)
    assert stats.max_deviation_ms == pytest.approx(0.0, abs=TOLERANCE_MS)
    assert stats.max_gap_ms == pytest.approx(20.0, abs=TOLERANCE_MS)
    assert stats.gaps_over_40ms == 0


def test_one_60ms_gap_is_the_largest_gap_and_the_only_one_over_40ms():
    arrivals = perfect(100)
    arrivals[50:] += 0.040  # frame 50 arrives 60 ms after frame 49
    stats = pacing_stats(arrivals)
    assert stats.max_gap_ms == pytest.approx(60.0, abs=TOLERANCE_MS)
    assert stats.gaps_over_40ms == 1
    assert stats.max_deviation_ms == pytest.approx(40.0, abs=TOLERANCE_MS)
    assert stats.p50_deviation_ms == pytest.approx(0.0, abs=TOLERANCE_MS)


def test_alternating_plus_minus_1ms_jitter_has_1ms_median_deviation():
    intervals = numpy.tile([0.021, 0.019], 200)
    arrivals = EPOCH + numpy.concatenate([[0.0], numpy.cumsum(intervals)])
    stats = pacing_stats(arrivals)
    assert stats.frames == 401
    assert stats.p50_deviation_ms == pytest.approx(1.0, abs=TOLERANCE_MS)
    assert stats.p99_deviation_ms == pytest.approx(1.0, abs=TOLERANCE_MS)
    assert stats.max_deviation_ms == pytest.approx(1.0, abs=TOLERANCE_MS)
    assert stats.max_gap_ms == pytest.approx(21.0, abs=TOLERANCE_MS)
    assert stats.gaps_over_40ms == 0


def test_a_burst_counts_as_deviation_not_as_a_gap():
    # Two frames back to back (interval 0) then a 40 ms hole: the choppy pattern
    # of a sender that caught up in a burst. 40 ms is not *over* 40 ms.
    intervals = [0.020, 0.0, 0.040, 0.020]
    arrivals = numpy.concatenate([[0.0], numpy.cumsum(intervals)])
    stats = pacing_stats(arrivals)
    assert stats.max_deviation_ms == pytest.approx(20.0)
    assert stats.max_gap_ms == pytest.approx(40.0)
    assert stats.gaps_over_40ms == 0


def test_p99_picks_out_the_rare_outliers():
    # 1000 intervals: 980 perfect, 20 at 25 ms (2 %): p99 is 5 ms, p50 is 0.
    intervals = numpy.full(1000, 0.020)
    intervals[::50] = 0.025
    arrivals = numpy.concatenate([[0.0], numpy.cumsum(intervals)])
    stats = pacing_stats(arrivals)
    assert stats.p50_deviation_ms == pytest.approx(0.0, abs=TOLERANCE_MS)
    assert stats.p99_deviation_ms == pytest.approx(5.0, abs=TOLERANCE_MS)
    assert stats.max_gap_ms == pytest.approx(25.0, abs=TOLERANCE_MS)


def test_percentiles_follow_numpy_linear_interpolation():
    arrivals = numpy.concatenate([[0.0], numpy.cumsum([0.020, 0.022, 0.024, 0.026])])
    stats = pacing_stats(arrivals)
    assert stats.p50_deviation_ms == pytest.approx(3.0)  # between 2 and 4
    assert stats.p99_deviation_ms == pytest.approx(numpy.percentile([0, 2, 4, 6], 99))


def test_custom_period_and_gap_threshold():
    arrivals = numpy.arange(0, 1.0, 0.010)  # a 10 ms sender, perfect
    stats = pacing_stats(arrivals, period=0.010, gap_threshold=0.015)
    assert stats.max_deviation_ms == pytest.approx(0.0, abs=TOLERANCE_MS)
    assert stats.gaps_over_40ms == 0


@pytest.mark.parametrize("arrivals", [[], [EPOCH], numpy.array([EPOCH])])
def test_fewer_than_two_arrivals_give_zeros_with_the_frame_count(arrivals):
    stats = pacing_stats(arrivals)
    assert stats == PacingStats(len(arrivals), 0.0, 0.0, 0.0, 0.0, 0.0, 0)


def test_to_dict_is_plain_python_numbers():
    stats = pacing_stats(perfect(10))
    record = stats.to_dict()
    assert set(record) == {
        "frames", "duration", "p50_deviation_ms", "p99_deviation_ms",
        "max_deviation_ms", "max_gap_ms", "gaps_over_40ms",
    }
    assert all(type(value) in (int, float) for value in record.values())
    assert type(record["frames"]) is int and type(record["gaps_over_40ms"]) is int


def test_many_calls_pool_intervals_within_calls_never_across_them():
    first = perfect(50, EPOCH)
    second = perfect(50, EPOCH + 3600.0)  # an hour later: not a gap of any call
    second[25:] += 0.040
    stats = pacing_stats_many([first, second])
    assert stats.frames == 100
    assert stats.duration == pytest.approx(49 * 0.020 * 2 + 0.040, abs=1e-6)
    assert stats.max_gap_ms == pytest.approx(60.0, abs=TOLERANCE_MS)
    assert stats.gaps_over_40ms == 1


def test_many_calls_percentiles_are_over_pooled_intervals():
    jittery = numpy.concatenate([[0.0], numpy.cumsum(numpy.full(100, 0.022))])  # 100 intervals, 2 ms off
    steady = perfect(301, 0.0)  # 300 intervals, 0 ms off
    stats = pacing_stats_many([jittery, steady])
    # 400 intervals, a quarter at 2 ms: the pooled median is 0, p99 is 2.
    assert stats.p50_deviation_ms == pytest.approx(0.0, abs=TOLERANCE_MS)
    assert stats.p99_deviation_ms == pytest.approx(2.0, abs=TOLERANCE_MS)
    assert stats.frames == 402


def test_many_calls_skip_short_calls_but_count_their_frames():
    stats = pacing_stats_many([[], [EPOCH], perfect(3)])
    assert stats.frames == 4
    assert stats.max_gap_ms == pytest.approx(20.0, abs=TOLERANCE_MS)
    assert pacing_stats_many([]) == PacingStats(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)


def test_many_calls_of_one_equals_one_call():
    arrivals = perfect(200)
    arrivals[100:] += 0.013
    assert pacing_stats_many([arrivals]) == pacing_stats(arrivals)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=0.2, allow_nan=False), min_size=1, max_size=300))
def test_invariants_hold_for_any_interval_series(intervals):
    arrivals = EPOCH + numpy.concatenate([[0.0], numpy.cumsum(intervals)])
    stats = pacing_stats(arrivals)
    assert stats.frames == len(intervals) + 1
    assert 0.0 <= stats.p50_deviation_ms <= stats.p99_deviation_ms + 1e-9
    assert stats.p99_deviation_ms <= stats.max_deviation_ms + 1e-9
    assert stats.max_gap_ms == pytest.approx(max(intervals) * 1000.0, abs=TOLERANCE_MS)
    expected_gaps = sum(1 for interval in intervals if interval > 0.040 + 1e-6)
    borderline = sum(1 for interval in intervals if abs(interval - 0.040) <= 1e-6)
    assert expected_gaps <= stats.gaps_over_40ms <= expected_gaps + borderline

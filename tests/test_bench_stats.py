"""The bench's own statistics against synthetic arrival series whose figures are known by hand.

If these hold, a number in the bench report means what its column says:
frames are windowed per call, intervals never cross calls, a 300 ms stall is
one gap of 320 ms placed where the silence began, and capacity stops at the
first step that did not hold.
"""
from __future__ import annotations

import math

import numpy
import pytest

from audiogw.bench.load import CallRecord, load_outcomes, save_records
from audiogw.bench.scenarios import BenchSettings, capacity_steps, plan_calls, spread_seconds
from audiogw.bench.stats import (
    CallOutcome,
    capacity_held,
    capacity_verdict,
    expected_frames,
    group_summary,
    after_resume,
    isolation_checks,
    median_round,
    resume_instants,
    round_figures,
    resource_summary,
    split_groups,
)
from audiogw.client.softphone import CallResult
from audiogw.shared.pacing import gap_timeline, interval_cdf, pooled_intervals, window_arrivals

EPOCH = 1_795_000_000.0  # CLOCK_REALTIME magnitude, like kernel timestamps
US = 1e-6  # float64 near EPOCH resolves ~0.24 us


def ticks(start: float, count: int, period: float = 0.020) -> numpy.ndarray:
    return start + numpy.arange(count) * period


def stalled_call(start: float, stall_at: float, stall: float, seconds: float = 2.0) -> numpy.ndarray:
    """A worker's frames for one call, arriving 0.5 ms after each 20 ms tick, none during a stall.

    The ticker re-anchors after a stall (no burst), so the frames that would
    have gone out during it are simply missing: the silence lasts the stall
    plus one period. Arrivals sit 0.5 ms off the window edges so float
    rounding cannot move a frame in or out of a window.
    """
    arrivals = ticks(start + 0.0195, int(round(seconds / 0.020)))
    return arrivals[~((arrivals > start + stall_at) & (arrivals < start + stall_at + stall))]


# --------------------------------------------------------------------------
# shared/pacing.py additions
# --------------------------------------------------------------------------
def test_window_keeps_only_the_calls_own_frames_edges_included_and_sorts():
    arrivals = numpy.array([EPOCH + 2.5, EPOCH - 0.01, EPOCH, EPOCH + 1.0, EPOCH + 2.0, EPOCH + 2.0001])
    inside = window_arrivals(arrivals, EPOCH, 2.0)
    assert inside.tolist() == [EPOCH, EPOCH + 1.0, EPOCH + 2.0]
    assert window_arrivals([], EPOCH, 2.0).size == 0


def test_pooled_intervals_never_join_two_calls():
    intervals = pooled_intervals([ticks(EPOCH, 3), ticks(EPOCH + 3600.0, 2), [EPOCH]])
    assert intervals.size == 3
    assert numpy.allclose(intervals, 0.020, atol=US)


def test_gap_timeline_places_a_300ms_silence_where_it_began():
    # Frames every 20 ms for 3 s from 5 ms past EPOCH; the ones between 1.005 and 1.305 s are missing.
    quiet = ticks(EPOCH + 0.005, 150)
    stalled = quiet[(quiet <= EPOCH + 1.005 + US) | (quiet >= EPOCH + 1.305 - US)]
    timeline = gap_timeline([stalled], origin=EPOCH, duration=3.0, bin_seconds=0.1)

    assert timeline.gap_starts.tolist() == pytest.approx([1.005], abs=US)
    assert timeline.gap_ms.tolist() == pytest.approx([300.0], abs=0.001)
    assert timeline.bin_starts.size == 30
    # The 300 ms interval ends at 1.305 s: bin 13 holds it, every other bin holds 20 ms.
    assert timeline.max_interval_ms[13] == pytest.approx(300.0, abs=0.001)
    others = numpy.delete(timeline.max_interval_ms, [0, 11, 12, 13])
    assert numpy.allclose(others, 20.0, atol=0.001)
    # Bins 11 and 12 (1.1-1.3 s): no interval ended there. Bin 0 holds the intervals ending at 0.025 s on.
    assert math.isnan(timeline.max_interval_ms[11]) and math.isnan(timeline.max_interval_ms[12])
    assert timeline.max_interval_ms[0] == pytest.approx(20.0, abs=0.001)


def test_gap_timeline_pools_calls_and_leaves_out_what_falls_outside():
    first = ticks(EPOCH, 10)
    second = ticks(EPOCH, 10)
    second[5:] += 0.100  # a 120 ms gap opening at 0.08 s
    late = ticks(EPOCH + 10.0, 10)
    late[5:] += 0.100  # a gap after the timeline's end: not shown
    timeline = gap_timeline([first, second, late], origin=EPOCH, duration=1.0, bin_seconds=0.05)
    assert timeline.gap_starts.tolist() == pytest.approx([0.08], abs=US)
    assert timeline.gap_ms.tolist() == pytest.approx([120.0], abs=0.001)
    assert numpy.nanmax(timeline.max_interval_ms) == pytest.approx(120.0, abs=0.001)


def test_gap_timeline_refuses_a_zero_bin():
    with pytest.raises(ValueError):
        gap_timeline([], origin=EPOCH, duration=1.0, bin_seconds=0.0)


def test_interval_cdf_of_99_steady_intervals_and_one_gap():
    intervals = numpy.full(100, 0.020)
    intervals[50] = 0.300
    values, levels = interval_cdf(intervals)
    assert levels[0] == 0.0 and levels[-1] == 1.0
    assert numpy.all(numpy.diff(levels) > 0) and numpy.all(numpy.diff(values) >= 0)
    assert values[-1] == pytest.approx(300.0)
    assert values[levels <= 0.99] == pytest.approx(20.0)  # 99 of 100 intervals are 20 ms
    empty_values, empty_levels = interval_cdf([])
    assert empty_values.size == 0 and empty_levels.size == 0


# --------------------------------------------------------------------------
# Group figures
# --------------------------------------------------------------------------
def test_expected_frames_is_one_per_20ms():
    assert expected_frames(2.0) == 100
    assert expected_frames(20.0) == 1000


def test_group_summary_of_known_calls():
    seconds = 2.0
    start = EPOCH
    steady = CallOutcome("1202", "ia", uuid_sent=start,
                         arrivals=numpy.concatenate([ticks(start + 0.0195, 100), [start + 2.015, start + 2.035]]))
    stalled = CallOutcome("1202", "retorno", uuid_sent=start, arrivals=stalled_call(start, stall_at=1.0, stall=0.300))
    refused = CallOutcome("1202", "ia", refused=True, failure="connect: Connection refused")
    broken = CallOutcome("1202", "ia", uuid_sent=start, arrivals=ticks(start + 0.0195, 50),
                         failure="call ended by closed: no error given")
    summary = group_summary([steady, stalled, refused, broken], seconds)

    assert summary["calls"] == 4
    assert summary["completed"] == 2
    assert summary["refused"] == 1
    assert summary["failed"] == 1
    assert summary["failure_reasons"] == {"call ended by closed: no error given": 1,
                                          "connect: Connection refused": 1}
    assert summary["frames_expected"] == 400
    # steady: 100 in the window (the 2 after the hangup are not counted); stalled: 100 - 15 lost; broken: 50.
    assert stalled.windowed(seconds).size == 85
    assert summary["frames_received"] == 100 + 85 + 50
    assert summary["calls_within_1_frame"] == 1
    assert summary["gaps_over_40ms"] == 1
    assert summary["max_gap_ms"] == pytest.approx(320.0, abs=0.001)
    assert summary["p50_deviation_ms"] == pytest.approx(0.0, abs=0.001)
    # 99 + 84 + 49 = 232 intervals, one at 300 ms off: below the top 1 %, so p99 stays ~0.
    assert summary["p99_deviation_ms"] == pytest.approx(0.0, abs=0.01)
    assert summary["max_deviation_ms"] == pytest.approx(300.0, abs=0.001)


def test_group_summary_p99_sees_a_stall_that_is_over_one_percent_of_intervals():
    once = [CallOutcome("1201", "ia", uuid_sent=EPOCH, arrivals=stalled_call(EPOCH, 1.0, 0.300, seconds=20.0))]
    # One gap among ~985 intervals is 0.1 %: p99 ignores it...
    assert group_summary(once, 20.0)["p99_deviation_ms"] < 1.0
    assert group_summary(once, 20.0)["gaps_over_40ms"] == 1
    # ...a stall every second (19 gaps, 2 %) does not.
    arrivals = ticks(EPOCH + 0.0195, 1000)
    for second in range(1, 20):
        silent = (arrivals > EPOCH + second) & (arrivals < EPOCH + second + 0.3)
        arrivals = arrivals[~silent]
    summary = group_summary([CallOutcome("1201", "ia", uuid_sent=EPOCH, arrivals=arrivals)], 20.0)
    assert summary["gaps_over_40ms"] == 19
    assert summary["p99_deviation_ms"] > 200.0
    assert summary["max_gap_ms"] == pytest.approx(320.0, abs=0.001)


def test_merged_frames_count_frames_sharing_one_kernel_timestamp():
    arrivals = ticks(EPOCH + 0.0195, 100)
    # The client read late: frames 50 and 51 came out of one merged segment, stamped when 51 arrived.
    arrivals[50] = arrivals[51] = arrivals[51] + 0.0003
    arrivals[80] = arrivals[81] = arrivals[82]
    summary = group_summary([CallOutcome("1201", "ia", uuid_sent=EPOCH, arrivals=arrivals)], 2.0)
    assert summary["merged_frames"] == 3
    assert summary["gaps_over_40ms"] == 2  # 49 -> 50/51 (40.3 ms) and 79 -> 80/81/82 (60 ms)
    assert summary["max_gap_ms"] == pytest.approx(60.0, abs=0.001)
    assert group_summary([CallOutcome("1201", "ia", uuid_sent=EPOCH, arrivals=ticks(EPOCH + 0.0195, 100))],
                         2.0)["merged_frames"] == 0


def test_empty_group_gives_zeros():
    summary = group_summary([], 2.0)
    assert summary["calls"] == summary["frames_expected"] == summary["frames_received"] == 0
    assert summary["p99_deviation_ms"] == 0.0 and summary["gaps_over_40ms"] == 0


def test_split_groups_by_extension():
    calls = [CallOutcome("1201", "ia"), CallOutcome("1202", "ia"), CallOutcome("1201", "retorno")]
    groups = split_groups(calls, "1201")
    assert [call.leg for call in groups["target"]] == ["ia", "retorno"]
    assert [call.extension for call in groups["others"]] == ["1202"]


# --------------------------------------------------------------------------
# Capacity, resources, checks
# --------------------------------------------------------------------------
def step(calls: int, p99: float, gaps: int = 0, completed: int | None = None) -> dict:
    summary = {"calls": calls, "completed": calls if completed is None else completed,
               "p99_deviation_ms": p99, "gaps_over_40ms": gaps, "max_gap_ms": 60.0 if gaps else 22.0}
    summary["held"] = capacity_held(summary)
    return summary


def test_capacity_holds_only_with_every_call_p99_within_2ms_and_no_gap():
    assert step(100, 2.0)["held"]
    assert not step(100, 2.01)["held"]
    assert not step(100, 0.5, gaps=1)["held"]
    assert not step(100, 0.5, completed=99)["held"]
    assert not capacity_held({"calls": 0, "completed": 0, "p99_deviation_ms": 0.0, "gaps_over_40ms": 0})


def test_capacity_verdict_is_the_last_step_before_the_first_miss():
    verdict = capacity_verdict([step(100, 0.8), step(200, 1.4), step(300, 2.6, gaps=3), step(400, 1.0)])
    assert verdict["last_held_calls"] == 200
    assert verdict["limit"].startswith("300 calls:")
    assert "p99 2.600 ms > 2 ms" in verdict["limit"] and "3 gaps over 40 ms" in verdict["limit"]
    assert capacity_verdict([step(100, 3.0)])["last_held_calls"] is None
    everything = capacity_verdict([step(100, 1.0), step(200, 1.0)])
    assert everything["last_held_calls"] == 200 and "above the largest step" in everything["limit"]


def test_capacity_steps_round_up_to_whole_calls_per_extension():
    settings = BenchSettings(extensions=20, capacity_start=100, capacity_step=150, capacity_max=500)
    assert capacity_steps(settings) == [100, 260, 400]
    assert capacity_steps(BenchSettings(extensions=3, capacity_start=1, capacity_step=1, capacity_max=4)) == [3, 6]


def test_resource_summary_sums_per_label():
    cpu = {1: 1.0, 2: 0.5, 3: 0.25, 4: 2.0}
    rss = {1: 10 * 2**20, 2: 20 * 2**20, 3: 30 * 2**20, 4: 5 * 2**20}
    uss = {1: 2**20, 2: 2 * 2**20}
    labels = {1: "target", 2: "others", 3: "others", 4: "load"}
    totals = resource_summary(cpu, rss, uss, labels, wall_seconds=10.0)
    assert totals["target"] == {"processes": 1, "cpu_percent": pytest.approx(10.0), "rss_mb": 10.0, "uss_mb": 1.0}
    assert totals["others"]["processes"] == 2
    assert totals["others"]["cpu_percent"] == pytest.approx(7.5)
    assert totals["others"]["rss_mb"] == 50.0 and totals["others"]["uss_mb"] == 2.0
    assert totals["load"]["cpu_percent"] == pytest.approx(20.0)


def scenario(others_p99: float, others_gaps: int = 0, target_gaps: int = 0, **extra) -> dict:
    group = {"p99_deviation_ms": others_p99, "gaps_over_40ms": others_gaps, "max_gap_ms": 25.0}
    return {"groups": {"others": group, "target": {"gaps_over_40ms": target_gaps}}, **extra}


def test_isolation_checks_compare_the_stalled_run_with_the_quiet_one():
    checks = isolation_checks({
        "per-extension": scenario(1.0),
        "per-extension-stall": scenario(1.19, target_gaps=20),
        "baseline-single-loop-stall": scenario(290.0, others_gaps=380),
        "crash": scenario(1.0, crash={"serves_again_ms": 21.0}),
    })
    results = [check["pass"] for check in checks]
    assert len(checks) == 6
    assert results == [True, True, True, None, True, True]
    assert "1.19x" in checks[0]["measured"]
    missed = isolation_checks({"per-extension": scenario(1.0), "per-extension-stall": scenario(1.3, others_gaps=2),
                               "crash": scenario(1.0, others_gaps=1, crash={"serves_again_ms": None})})
    assert [check["pass"] for check in missed] == [False, False, False, False, False]
    assert missed[-1]["measured"] == "never"
    assert isolation_checks({}) == []


def test_sigstop_scenario_is_judged_like_the_sleep_stall_and_beside_it():
    checks = isolation_checks({
        "per-extension": scenario(1.0),
        "per-extension-stall": scenario(1.1, target_gaps=20),
        "per-extension-sigstop": scenario(2.4, target_gaps=15),
    })
    assert [check["check"].split(":")[0] for check in checks] == [
        "per-extension + stall"] * 3 + ["per-extension + SIGSTOP"] * 3
    assert [check["pass"] for check in checks] == [True, True, True, False, True, True]
    assert "2.400 ms vs 1.000 ms = 2.40x" == checks[3]["measured"]
    # Alone (no quiet run): only the gaps and the stall showing, no ratio.
    alone = isolation_checks({"per-extension-sigstop": scenario(1.0, others_gaps=1, target_gaps=0)})
    assert [(check["measured"], check["pass"]) for check in alone] == [(1, False), ("0", False)]


def paced(start: float, frames: int, late: dict[int, float] | None = None) -> numpy.ndarray:
    """Arrivals every 20 ms from ``start``; ``late`` moves frame i by that many seconds."""
    arrivals = start + 0.0195 + numpy.arange(frames) * 0.02
    for index, delay in (late or {}).items():
        arrivals[index] += delay
    return arrivals


def test_resume_instants_are_where_the_stalled_calls_audio_came_back():
    epoch = 1_795_000_000.0
    stalled = []
    for shift in (0.0, 0.004):  # two calls of the stalled worker, one resume each time
        arrivals = paced(epoch + shift, 100)
        arrivals = numpy.concatenate([arrivals[:20], arrivals[35:60] , arrivals[75:]])  # 300 ms silent, twice
        stalled.append(CallOutcome("1201", "ia", uuid_sent=epoch, arrivals=arrivals))
    instants = resume_instants(stalled, 2.0)
    assert instants.size == 2
    assert instants[0] == pytest.approx(epoch + 0.0195 + 35 * 0.02)
    assert instants[1] == pytest.approx(epoch + 0.0195 + 75 * 0.02)
    assert resume_instants([CallOutcome("1201", "ia", uuid_sent=epoch, arrivals=paced(epoch, 100))], 2.0).size == 0


def test_after_resume_separates_harm_right_after_a_resume_from_noise_elsewhere():
    epoch = 1_795_000_000.0
    resumes = [epoch + 0.5, epoch + 1.5]
    # Frame 26 arrives at ~0.54 s (just after the first resume) 4 ms late; frame 80 (1.62 s, elsewhere) 3 ms late.
    harmed = CallOutcome("1202", "ia", uuid_sent=epoch, arrivals=paced(epoch, 100, {26: 0.004, 80: 0.003}))
    quiet = CallOutcome("1203", "ia", uuid_sent=epoch, arrivals=paced(epoch, 100))
    figures = after_resume([harmed, quiet], resumes, 2.0)
    assert figures["resumes"] == 2
    # Per call, the intervals ending in [0.5, 0.55) and [1.5, 1.55): 3 + 2 or so; all 198 intervals are counted once.
    assert figures["intervals_after_resume"] + figures["intervals_elsewhere"] == 2 * 99
    after = figures["disturbed_after_resume_percent"] * figures["intervals_after_resume"] / 100.0
    elsewhere = figures["disturbed_elsewhere_percent"] * figures["intervals_elsewhere"] / 100.0
    assert round(after) == 1 and round(elsewhere) == 3  # frame 26: its interval ends in the window, the next not
    none = after_resume([quiet], [], 2.0)
    assert none["intervals_after_resume"] == 0 and none["disturbed_after_resume_percent"] is None
    assert none["disturbed_elsewhere_percent"] == 0.0


def rounds_of(*others_p99: float, others_gaps: int = 0, target_gaps: int = 5) -> list[dict]:
    return [round_figures(scenario(value, others_gaps=others_gaps, target_gaps=target_gaps)) for value in others_p99]


def test_median_round_is_the_middle_run_by_others_p99():
    runs = [scenario(value) for value in (0.9, 0.5, 0.7)]
    assert median_round(runs) == 2
    assert median_round([scenario(0.6), scenario(0.4)]) == 1  # even count: the lower middle
    assert median_round([scenario(1.0)]) == 0


def test_isolation_checks_judge_repeated_rounds_on_their_medians():
    # One noisy quiet round (0.45) would make the first-round ratio 0.75 / 0.45 = 1.67x; the medians say 1.07x.
    quiet = scenario(0.70, rounds=rounds_of(0.45, 0.70, 0.72))
    stalled = scenario(0.75, target_gaps=150, rounds=rounds_of(0.75, 0.66, 0.80, target_gaps=150))
    ratio, gaps, real = isolation_checks({"per-extension": quiet, "per-extension-stall": stalled})
    assert ratio["pass"] is True and "0.750 ms vs 0.700 ms = 1.07x" == ratio["measured"]
    assert "median of 3 alternating rounds" in ratio["check"]
    assert gaps["measured"] == 0 and gaps["pass"] is True
    assert real["measured"] == "150, 150, 150" and real["pass"] is True

    # Gaps count in every round, and the stall must show in every round.
    stalled = scenario(0.75, rounds=rounds_of(0.75, 0.66) + [round_figures(scenario(0.8, others_gaps=3))])
    ratio, gaps, real = isolation_checks({"per-extension": quiet, "per-extension-stall": stalled})
    assert gaps["measured"] == 3 and gaps["pass"] is False
    assert real["measured"] == "5, 5, 0" and real["pass"] is False


# --------------------------------------------------------------------------
# Plans and the load client's result files
# --------------------------------------------------------------------------
def test_plan_interleaves_extensions_and_alternates_legs():
    ports = {"1201": {"ia": 1000, "retorno": 1001}, "1202": {"ia": 1002, "retorno": 1003}}
    plan = plan_calls(ports, 2, "split")
    assert [(call.extension, call.leg, call.port) for call in plan] == [
        ("1201", "ia", 1000), ("1202", "ia", 1002), ("1201", "retorno", 1001), ("1202", "retorno", 1003)]
    assert [call.offset for call in plan] == [0.0, 0.25, 0.5, 0.75]
    assert {call.leg for call in plan_calls(ports, 3, "ia")} == {"ia"}
    assert spread_seconds(400) == pytest.approx(1.0) and spread_seconds(4) == 0.2 and spread_seconds(10_000) == 2.0


def test_records_survive_the_trip_between_processes(tmp_path):
    result = CallResult(call_uuid=None, frames_sent=99, frames_received=3, late_sends=0,
                        arrivals=ticks(EPOCH, 3), recorded=None, hung_up_by="client", error=None,
                        connect_time=0.001, duration=2.0, late_reads=2)
    records = [CallRecord(0, "ia", result=result, uuid_sent=EPOCH, extension="1201"),
               CallRecord(1, "retorno", extension="1202", refused=True, failure="connect: Connection refused")]
    save_records(tmp_path / "out.npz", records)
    outcomes = load_outcomes(tmp_path / "out.npz")
    assert [(outcome.extension, outcome.leg, outcome.refused, outcome.failure) for outcome in outcomes] == [
        ("1201", "ia", False, None), ("1202", "retorno", True, "connect: Connection refused")]
    assert outcomes[0].arrivals.tolist() == ticks(EPOCH, 3).tolist()
    assert outcomes[0].uuid_sent == EPOCH and outcomes[0].late_reads == 2 and outcomes[0].frames_sent == 99
    assert outcomes[1].arrivals.size == 0 and outcomes[1].uuid_sent is None

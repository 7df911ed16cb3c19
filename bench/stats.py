"""The benchmark's figures from what the load client saw: pure functions, no I/O.

Every number in the bench report comes from here, from plain call outcomes
(kernel arrival times and what happened to each call), so tests can feed a
synthetic series with known gaps and check the figures by hand.
"""
from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy

from audiogw.shared.pacing import FRAME_PERIOD, GAP_THRESHOLD, pacing_stats_many, window_arrivals

P99_LIMIT_MS = 2.0  # capacity: the p99 deviation a call count must stay within
STALL_P99_RATIO_LIMIT = 1.2  # isolation: others' p99 with a stall vs without
RECOVERY_LIMIT_MS = 500.0  # crash: kill -9 until a fresh call gets audio


@dataclass
class CallOutcome:
    """One call as the load client saw it (times are CLOCK_REALTIME seconds)."""

    extension: str
    leg: str
    uuid_sent: float | None = None  # None: the UUID frame never went out
    arrivals: numpy.ndarray = field(default_factory=lambda: numpy.empty(0))
    frames_sent: int = 0
    late_reads: int = 0
    refused: bool = False  # the connection itself failed
    failure: str | None = None  # None: the call ran its length and the client hung up

    def windowed(self, seconds: float) -> numpy.ndarray:
        """Arrivals inside [UUID sent, UUID sent + seconds]: the frames the call should have got."""
        if self.uuid_sent is None:
            return numpy.empty(0)
        return window_arrivals(self.arrivals, self.uuid_sent, seconds)


def expected_frames(seconds: float, period: float = FRAME_PERIOD) -> int:
    """Frames a call of ``seconds`` should receive: one per tick from the UUID to the hangup."""
    return int(round(seconds / period))


def group_summary(calls: Sequence[CallOutcome], seconds: float) -> dict[str, Any]:
    """Figures for one group of calls (e.g. the stalled extension, or all the others).

    Every placed call counts towards the frames expected; a call that failed
    midway (a crashed worker) still contributes the frames and intervals it
    got before it broke, so the loss shows as frames missing, not as a call
    quietly left out. Percentiles are over all intervals pooled within calls.
    """
    windows = [call.windowed(seconds) for call in calls]
    pacing = pacing_stats_many(windows, FRAME_PERIOD, GAP_THRESHOLD)
    per_call = expected_frames(seconds)
    failures = Counter(call.failure for call in calls if call.failure is not None)
    received = sum(int(window.size) for window in windows)
    return {
        "calls": len(calls),
        "completed": sum(1 for call in calls if call.failure is None),
        "failed": sum(1 for call in calls if call.failure is not None and not call.refused),
        "refused": sum(1 for call in calls if call.refused),
        "failure_reasons": dict(sorted(failures.items())),
        "frames_expected": per_call * len(calls),
        "frames_received": received,
        "calls_within_1_frame": sum(1 for window in windows if abs(int(window.size) - per_call) <= 1),
        "p50_deviation_ms": pacing.p50_deviation_ms,
        "p99_deviation_ms": pacing.p99_deviation_ms,
        "max_deviation_ms": pacing.max_deviation_ms,
        "max_gap_ms": pacing.max_gap_ms,
        "gaps_over_40ms": pacing.gaps_over_40ms,
        "calls_with_late_reads": sum(1 for call in calls if call.late_reads > 0),
        "late_reads": sum(call.late_reads for call in calls),
        "merged_frames": merged_frames(windows),
    }


RESUME_WINDOW_SECONDS = 0.05  # "right after the stalled worker resumed": its catch-up runs here
RESUME_DEVIATION_MS = 2.0  # an interval this far off 20 ms counts as disturbed


def resume_instants(calls: Iterable[CallOutcome], seconds: float, min_gap: float = 0.2) -> numpy.ndarray:
    """When a stalled extension's audio came back: the first arrival after each gap over ``min_gap``.

    One instant per stall (arrivals of its calls within 0.1 s of each other
    are one resume), sorted.
    """
    ends: list[float] = []
    for call in calls:
        arrivals = call.windowed(seconds)
        if arrivals.size > 1:
            ends.extend(arrivals[1:][numpy.diff(arrivals) > min_gap].tolist())
    instants: list[float] = []
    for moment in sorted(ends):
        if not instants or moment - instants[-1] > 0.1:
            instants.append(moment)
    return numpy.array(instants)


def after_resume(calls: Sequence[CallOutcome], resumes: Sequence[float] | numpy.ndarray, seconds: float,
                 window: float = RESUME_WINDOW_SECONDS, deviation_ms: float = RESUME_DEVIATION_MS,
                 ) -> dict[str, Any]:
    """Share of ``calls``' intervals off by more than ``deviation_ms``, right after a resume vs the rest.

    A resumed worker's catch-up (it reads its backlog, its clock re-anchors)
    happens in the first few ms after it runs again. If it delays its
    neighbours, their disturbed intervals pile up in ``window`` after each
    resume; disturbance from the rest of the machine falls anywhere. This
    comparison holds on a host whose noise moves p99 between runs more than
    the stall does. An interval belongs to the moment its second frame arrived.
    """
    resumes = numpy.sort(numpy.asarray(resumes, dtype=float))
    inside = [0, 0]  # disturbed, all
    outside = [0, 0]
    for call in calls:
        arrivals = call.windowed(seconds)
        if arrivals.size < 2:
            continue
        ends = arrivals[1:]
        disturbed = numpy.abs(numpy.diff(arrivals) - FRAME_PERIOD) * 1000.0 > deviation_ms
        if resumes.size:
            last = numpy.searchsorted(resumes, ends, side="right") - 1
            near = (last >= 0) & (ends - resumes[numpy.clip(last, 0, None)] < window)
        else:
            near = numpy.zeros(ends.shape, dtype=bool)
        inside[0] += int(numpy.count_nonzero(disturbed & near))
        inside[1] += int(numpy.count_nonzero(near))
        outside[0] += int(numpy.count_nonzero(disturbed & ~near))
        outside[1] += int(numpy.count_nonzero(~near))
    share = (lambda counts: 100.0 * counts[0] / counts[1] if counts[1] else None)
    return {"resumes": int(resumes.size), "window_ms": window * 1000.0, "deviation_ms": deviation_ms,
            "intervals_after_resume": inside[1], "disturbed_after_resume_percent": share(inside),
            "intervals_elsewhere": outside[1], "disturbed_elsewhere_percent": share(outside)}


def merged_frames(calls: Iterable[numpy.ndarray]) -> int:
    """Frames that share the previous frame's kernel timestamp exactly (to the nanosecond).

    The gateway writes every frame on its own; two frames only share a
    timestamp when the kernel merged them in the client's receive queue,
    which happens when the client read late. So this counts the client's
    own lag (each one shows as a 0 ms interval next to a ~40 ms one), which
    ``late_reads`` misses when the reader was less than a period behind the
    newest frame.
    """
    return sum(int(numpy.count_nonzero(numpy.diff(arrivals) == 0.0)) for arrivals in calls)


def split_groups(calls: Iterable[CallOutcome], target_extension: str) -> dict[str, list[CallOutcome]]:
    """{'target': the calls of the stalled/crashed extension, 'others': everyone else's}."""
    groups: dict[str, list[CallOutcome]] = {"target": [], "others": []}
    for call in calls:
        groups["target" if call.extension == target_extension else "others"].append(call)
    return groups


def capacity_held(summary: Mapping[str, Any], p99_limit_ms: float = P99_LIMIT_MS) -> bool:
    """A call count holds when every call completed, p99 <= the limit and no interval passed 40 ms."""
    return (
        summary["calls"] > 0
        and summary["completed"] == summary["calls"]
        and summary["p99_deviation_ms"] <= p99_limit_ms
        and summary["gaps_over_40ms"] == 0
    )


def capacity_verdict(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The last call count that held before the first that did not (steps in rising order).

    ``limit`` says why the ramp stopped: the first failing step's reason, or
    that the largest step tried still held (the real limit is higher).
    """
    last_held: int | None = None
    limit = "every step held: the limit is above the largest step tried"
    for step in steps:
        if step["held"]:
            last_held = step["calls"]
            continue
        reasons = []
        if step["completed"] < step["calls"]:
            reasons.append(f"{step['calls'] - step['completed']} calls failed or were refused")
        if step["p99_deviation_ms"] > P99_LIMIT_MS:
            reasons.append(f"p99 {step['p99_deviation_ms']:.3f} ms > {P99_LIMIT_MS:g} ms")
        if step["gaps_over_40ms"]:
            reasons.append(f"{step['gaps_over_40ms']} gaps over 40 ms (largest {step['max_gap_ms']:.1f} ms)")
        limit = f"{step['calls']} calls: " + "; ".join(reasons or ["did not hold"])
        break
    return {"last_held_calls": last_held, "limit": limit}


def resource_summary(cpu_seconds: Mapping[int, float], rss_bytes: Mapping[int, int],
                     uss_bytes: Mapping[int, int], labels: Mapping[int, str], wall_seconds: float,
                     ) -> dict[str, dict[str, float | int]]:
    """CPU (% of one core over ``wall_seconds``) and memory (MB) per label, from per-process samples.

    ``labels`` maps each pid to the group it belongs to (e.g. 'target',
    'others', 'supervisor', 'load'); pids without a label are left out.
    """
    totals: dict[str, dict[str, float | int]] = {}
    for pid, label in labels.items():
        entry = totals.setdefault(label, {"processes": 0, "cpu_percent": 0.0, "rss_mb": 0.0, "uss_mb": 0.0})
        entry["processes"] += 1
        if wall_seconds > 0:
            entry["cpu_percent"] += 100.0 * cpu_seconds.get(pid, 0.0) / wall_seconds
        entry["rss_mb"] += rss_bytes.get(pid, 0) / 2**20
        entry["uss_mb"] += uss_bytes.get(pid, 0) / 2**20
    return totals


def round_figures(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What the isolation checks need from one round of a repeated scenario."""
    others = summary["groups"]["others"]
    figures = {"others_p99_deviation_ms": others["p99_deviation_ms"], "others_gaps_over_40ms": others["gaps_over_40ms"],
               "others_max_gap_ms": others["max_gap_ms"],
               "target_gaps_over_40ms": summary["groups"]["target"]["gaps_over_40ms"]}
    resumed = summary.get("after_resume")
    if resumed:
        figures["others_disturbed_after_resume_percent"] = resumed["disturbed_after_resume_percent"]
        figures["others_disturbed_elsewhere_percent"] = resumed["disturbed_elsewhere_percent"]
    return figures


def median_round(summaries: Sequence[Mapping[str, Any]]) -> int:
    """Index of the round whose others' p99 is the median (the lower one of an even count).

    Between two runs of the same scenario this machine drifts by about +-20 % in
    p99, as much as the stall effect being judged; the report shows this round
    and the checks compare the median rounds.
    """
    values = [summary["groups"]["others"]["p99_deviation_ms"] for summary in summaries]
    return values.index(statistics.median_low(values))


def _rounds(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return summary.get("rounds") or [round_figures(summary)]


def _check(name: str, measured: Any, target: str, passed: bool | None) -> dict[str, Any]:
    return {"check": name, "measured": measured, "target": target, "pass": passed}


# The stalled isolation scenarios, each judged against "per-extension": (name, label in the checks).
STALLED_SCENARIOS: tuple[tuple[str, str], ...] = (
    ("per-extension-stall", "stall"),  # the app calls time.sleep on its loop
    ("per-extension-sigstop", "SIGSTOP"),  # the benchmark freezes the whole worker process
)


def _stall_checks(label: str, stalled: Mapping[str, Any], quiet: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Others' p99 (median rounds) vs the quiet run, others' gaps (every round), the stall showing (every round)."""
    checks: list[dict[str, Any]] = []
    rounds = _rounds(stalled)
    if quiet is not None:
        quiet_rounds = _rounds(quiet)
        base = statistics.median_low(entry["others_p99_deviation_ms"] for entry in quiet_rounds)
        value = statistics.median_low(entry["others_p99_deviation_ms"] for entry in rounds)
        ratio = value / base if base > 0 else float("inf")
        several = len(rounds) > 1 or len(quiet_rounds) > 1
        checks.append(_check(
            f"per-extension + {label}: others' p99 vs the same run without the stall"
            + (f" (median of {len(rounds)} alternating rounds each)" if several else ""),
            f"{value:.3f} ms vs {base:.3f} ms = {ratio:.2f}x",
            f"<= {STALL_P99_RATIO_LIMIT:g}x", ratio <= STALL_P99_RATIO_LIMIT))
    gaps = sum(entry["others_gaps_over_40ms"] for entry in rounds)
    checks.append(_check(f"per-extension + {label}: others' gaps over 40 ms"
                         + (f" (all {len(rounds)} rounds)" if len(rounds) > 1 else ""), gaps, "0", gaps == 0))
    stall_gaps = [entry["target_gaps_over_40ms"] for entry in rounds]
    checks.append(_check(f"per-extension + {label}: the stalled extension's gaps over 40 ms (the stall is real)",
                         ", ".join(str(count) for count in stall_gaps), "> 0", min(stall_gaps) > 0))
    return checks


def isolation_checks(scenarios: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Measured vs target for the scenarios present (by name); absent scenarios add no check.

    ``pass`` is None where the target is "reported", not a threshold.
    A scenario that ran several rounds (``summary["rounds"]``, see
    :func:`round_figures`) is judged on the median round's p99, on the gaps
    of every round added up, and on the stall showing in every round.
    """
    checks: list[dict[str, Any]] = []
    quiet = scenarios.get("per-extension")
    for name, label in STALLED_SCENARIOS:
        stalled = scenarios.get(name)
        if stalled is not None:
            checks += _stall_checks(label, stalled, quiet)
    single_stalled = scenarios.get("baseline-single-loop-stall")
    if single_stalled is not None:
        others = single_stalled["groups"]["others"]
        checks.append(_check("single loop + stall: others' gaps over 40 ms (the damage the design avoids)",
                             f"{others['gaps_over_40ms']} (largest {others['max_gap_ms']:.1f} ms)",
                             "reported", None))
    crash = scenarios.get("crash")
    if crash is not None:
        others = crash["groups"]["others"]
        checks.append(_check("crash: others' gaps over 40 ms", others["gaps_over_40ms"], "0",
                             others["gaps_over_40ms"] == 0))
        recovery = crash.get("crash", {}).get("serves_again_ms")
        checks.append(_check(
            "crash: kill -9 until the crashed extension serves a new call",
            "never" if recovery is None else f"{recovery:.1f} ms",
            f"<= {RECOVERY_LIMIT_MS:g} ms", recovery is not None and recovery <= RECOVERY_LIMIT_MS))
    return checks

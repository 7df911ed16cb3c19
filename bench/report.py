"""The benchmark report: a Markdown table, JSON, and PNG plots in a results folder.

Plots need matplotlib (the ``.[bench]`` extra); it is imported only here and
only when plotting, with the Agg backend, so a machine without it still gets
the table and the JSON, and the report says the plots were skipped.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audiogw.bench.scenarios import ScenarioResult
from audiogw.shared.pacing import gap_timeline, interval_cdf, pooled_intervals

CDF_PLOT = "interval_cdf.png"
TIMELINE_PLOT = "gap_timeline.png"


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(check: dict[str, Any]) -> str:
    return {True: "**pass**", False: "**MISS**", None: "reported"}[check["pass"]]


def markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown: settings, the per-scenario table, capacity, checks, plots."""
    settings = report["settings"]
    lines = [
        "# audiogw bench",
        "",
        f"`{report['command']}` — {report['machine']['cpus']} CPUs, load average before the run "
        f"{report['machine']['load_average_before']}, kernel receive timestamps: "
        f"{report['machine']['kernel_timestamps']}; finished in {report['duration_seconds']:.0f} s.",
        "",
        f"{settings['extensions']} extensions × {settings['calls_per_extension']} calls × {settings['seconds']:g} s "
        f"(calls alternate ia/retorno; echo app; 440 Hz tone both ways; load client on this machine, "
        f"≤ {settings['calls_per_load_process']} calls per load process). Stall: "
        f"`time.sleep({settings['stall_seconds']:g})` on the stalled "
        f"extension's event loop, after each asyncio sleep of {settings['stall_every']:g} s. SIGSTOP: the benchmark stops the frozen "
        f"extension's whole worker process and sends SIGCONT {settings['stall_seconds']:g} s later, one stop "
        f"starting every {settings['stall_every']:g} s. Deviation = |inter-frame interval − 20 ms| from kernel arrival times "
        "(SO_TIMESTAMPNS), pooled over the group's calls. Scheduling: "
        + (f"the workers' clocks (`audiosocket.realtime_priority`) and the load client under SCHED_RR "
           f"{settings['realtime_priority']}, as `asterisk -p` runs Asterisk."
           if settings.get("realtime_priority") else "every process at normal priority (SCHED_OTHER), "
           "`--normal-priority`."),
        "",
    ]
    scenarios = report["scenarios"]
    if scenarios:
        lines += [
            "| scenario | group | calls ok / placed | frames received / expected | p50 dev ms | p99 dev ms "
            "| largest gap ms | gaps > 40 ms | refused | gateway CPU % (group) | gateway memory MB, RSS sum (USS sum) |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for scenario in scenarios:
            resources = scenario["resources"]
            gateway = resources.get("gateway", {})
            for key in ("target", "others"):
                group = scenario["groups"][key]
                own = resources.get(key)
                cpu = f"{gateway.get('cpu_percent', 0.0):.0f}"
                if own is not None:
                    cpu += f" ({own['cpu_percent']:.0f})"
                lines.append(
                    f"| {scenario['name']} | {group['label']} | {group['completed']} / {group['calls']} "
                    f"| {group['frames_received']} / {group['frames_expected']} "
                    f"| {group['p50_deviation_ms']:.3f} | {group['p99_deviation_ms']:.3f} "
                    f"| {group['max_gap_ms']:.1f} | {group['gaps_over_40ms']} | {group['refused']} "
                    f"| {cpu} | {gateway.get('rss_mb', 0.0):.0f} ({gateway.get('uss_mb', 0.0):.0f}) |"
                )
        lines += [
            "",
            "Gateway CPU is % of one core over the run, all gateway processes (in brackets: that group's own "
            "worker processes, where it has its own); memory is the largest RSS of each gateway process, summed "
            "(forked workers share pages, so the USS sum, taken at the end, is the memory they really add). "
            "Load client CPU: "
            + ", ".join(f"{scenario['name']} {scenario['resources'].get('load', {}).get('cpu_percent', 0.0):.0f} %"
                        for scenario in scenarios)
            + ". The load client's own lag — frames that reached it merged under one kernel timestamp "
            "(each shows as a 0 ms interval beside a ~40 ms one, counted above as a gap) / calls with a read more "
            "than 20 ms late: "
            + ", ".join(f"{scenario['name']} "
                        f"{scenario['groups']['target']['merged_frames'] + scenario['groups']['others']['merged_frames']}"
                        f" / {scenario['groups']['target']['calls_with_late_reads'] + scenario['groups']['others']['calls_with_late_reads']}"
                        for scenario in scenarios) + ".",
            "",
        ]
        lines += [
            "The machine itself — CPU used outside this benchmark's processes (% of one core; kernel interrupt "
            "work such as loopback TCP, also left out, is in report.json), and how late an "
            "idle probe process sleeping 5 ms in a loop woke up (when it wakes late, everything on the machine was "
            "held up, whatever the design): "
            + ", ".join(f"{scenario['name']} {_number(scenario['resources'].get('machine', {}).get('outside_bench_percent'), 0)} %, "
                        f"woke ≤ {_number(scenario['machine']['max_late_ms'], 1)} ms late "
                        f"({scenario['machine']['late_over_20ms']} times > 20 ms)" for scenario in scenarios) + ".",
            "",
        ]
        for scenario in scenarios:
            crash = scenario.get("crash")
            if crash:
                lines.append(
                    f"crash: worker pid {crash.get('killed_pid')} killed at {_number(crash.get('killed_at_s'), 2)} s; "
                    f"a new call got audio {_number(crash.get('serves_again_ms'), 1)} ms after the kill "
                    f"({crash.get('refused', 0)} connections refused meanwhile); its calls in progress "
                    f"ended: {scenario['groups']['target']['failure_reasons'] or 'none'}."
                )
                lines.append("")
        for scenario in scenarios:
            freeze = scenario.get("freeze")
            if freeze:
                lengths = freeze.get("stopped_ms") or []
                lines.append(
                    f"{scenario['name']}: worker pid {freeze.get('pid')} stopped {freeze.get('stops', 0)} times, "
                    + (f"{min(lengths):.1f}-{max(lengths):.1f} ms each (SIGSTOP to SIGCONT, as this benchmark "
                       f"timed it)" if lengths else "never")
                    + (f"; {freeze['error']}" if freeze.get("error") else "")
                    + (f"; the pid changed to {freeze['new_pid']} (restarted)"
                       if freeze.get("new_pid") not in (None, freeze.get("pid")) else "") + "."
                )
                lines.append("")
        resumed = [scenario for scenario in scenarios if scenario.get("after_resume")]
        if resumed:
            first = resumed[0]["after_resume"]
            lines.append(
                f"After the resume — the other extensions' intervals more than {first['deviation_ms']:g} ms off "
                f"20 ms, in the {first['window_ms']:g} ms after each time the stalled worker ran again (its catch-up) "
                "vs the rest of the run; the machine's own noise falls anywhere, harm done by the resumed worker "
                "piles up in that window: "
                + "; ".join(
                    f"{scenario['name']} {_number(scenario['after_resume']['disturbed_after_resume_percent'], 2)} % "
                    f"of {scenario['after_resume']['intervals_after_resume']} vs "
                    f"{_number(scenario['after_resume']['disturbed_elsewhere_percent'], 2)} % of "
                    f"{scenario['after_resume']['intervals_elsewhere']} ({scenario['after_resume']['resumes']} resumes)"
                    + (" per round: " + ", ".join(
                        f"{_number(entry.get('others_disturbed_after_resume_percent'), 2)} vs "
                        f"{_number(entry.get('others_disturbed_elsewhere_percent'), 2)} %"
                        for entry in scenario["rounds"]) if len(scenario.get("rounds") or []) > 1 else "")
                    for scenario in resumed) + "."
            )
            lines.append("")
        repeated = [scenario for scenario in scenarios if len(scenario.get("rounds") or []) > 1]
        if repeated:
            lines.append(
                "Rounds — these ran alternately, one after the other, because this machine's p99 drifts between "
                "two runs of the same scenario about as much as the 20 % being judged; the table shows each "
                "one's median round (by the others' p99) and the check compares those. Others' p99 per round: "
                + "; ".join(f"{scenario['name']} "
                            + ", ".join(f"{entry['others_p99_deviation_ms']:.3f}" for entry in scenario["rounds"])
                            + " ms (gaps > 40 ms: "
                            + ", ".join(str(entry["others_gaps_over_40ms"]) for entry in scenario["rounds"]) + ")"
                            for scenario in repeated) + "."
            )
            lines.append("")
    capacity = report.get("capacity")
    if capacity:
        lines += [
            f"**Capacity** — {capacity['extensions']} extensions, ia legs, echo, tone both ways, "
            f"{capacity['seconds']:g} s per step; a step holds when every call completes, p99 ≤ 2 ms and no "
            f"interval passes 40 ms. Last count that held: **{_number(capacity['last_held_calls'])}** "
            f"(stopped: {capacity['limit']}).",
            "",
            "| calls | completed | p50 dev ms | p99 dev ms | largest gap ms | gaps > 40 ms "
            "| client lag: merged frames / calls with late reads | workers' own largest send gap ms "
            "| gateway CPU % | load CPU % (processes) "
            "| machine: CPU % outside the bench; probe woke late, max ms (> 20 ms) | held |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for step in capacity["steps"]:
            lines.append(
                f"| {step['calls']} | {step['completed']} | {step['p50_deviation_ms']:.3f} "
                f"| {step['p99_deviation_ms']:.3f} | {step['max_gap_ms']:.1f} | {step['gaps_over_40ms']} "
                f"| {step['merged_frames']} / {step['calls_with_late_reads']} "
                f"| {_number(step.get('worker_max_send_gap_ms'), 1)} | {step['gateway_cpu_percent']:.0f} "
                f"| {step['load_cpu_percent']:.0f} ({step['load_processes']}) "
                f"| {_number(step['machine_outside_bench_percent'], 0)}; {_number(step['machine_max_late_ms'], 1)} "
                f"({step['machine_late_over_20ms']}) "
                f"| {'yes' if step['held'] else 'no'} |"
            )
        lines.append("")
    if report["checks"]:
        lines += ["| check | measured | target | result |", "|---|---|---|---|"]
        for check in report["checks"]:
            lines.append(f"| {check['check']} | {_number(check['measured'])} | {check['target']} | {_cell(check)} |")
        lines.append("")
    plots = report.get("plots", {})
    if plots.get("files"):
        lines += [f"![{name}]({name})" for name in plots["files"]]
    else:
        lines.append(f"Plots skipped: {plots.get('skipped', 'not requested')}.")
    return "\n".join(lines) + "\n"


def write_report(folder: Path, report: dict[str, Any], results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """Write the plots (if matplotlib is there), report.md and report.json; return the plot status."""
    folder.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plots(folder, results)
    (folder / "report.md").write_text(markdown(report))
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=float))
    return report["plots"]


def write_plots(folder: Path, results: Sequence[ScenarioResult]) -> dict[str, Any]:
    """The interval CDF per scenario and the gap timeline of the fault scenarios."""
    with_calls = [result for result in results if result.outcomes]
    if not with_calls:
        return {"files": [], "skipped": "no scenario with calls"}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        return {"files": [], "skipped": "matplotlib is not installed (pip install 'audiogw[bench]')"}
    files = [_cdf_plot(pyplot, folder, with_calls)]
    faulted = [result for result in with_calls if result.summary.get("stall") or result.summary.get("crash")]
    if faulted:
        files.append(_timeline_plot(pyplot, folder, faulted))
    return {"files": files}


def _group_windows(result: ScenarioResult, key: str) -> list:
    seconds = result.summary["seconds"]
    target = result.summary["target_extension"]
    return [outcome.windowed(seconds) for outcome in result.outcomes
            if (outcome.extension == target) == (key == "target")]


def _cdf_plot(pyplot: Any, folder: Path, results: Sequence[ScenarioResult]) -> str:
    figure, (body, tail) = pyplot.subplots(1, 2, figsize=(13, 5))
    colors = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
    for number, result in enumerate(results):
        color = colors[number % len(colors)]
        for key, style in (("others", "-"), ("target", ":")):
            values, levels = interval_cdf(pooled_intervals(_group_windows(result, key)))
            if values.size == 0:
                continue
            label = f"{result.summary['name']}: {result.summary['groups'][key]['label']}"
            body.plot(values, levels, style, color=color, label=label)
            tail.step(values, 1.0 - levels + 1e-12, style, color=color, where="post", label=label)
    body.set(xlim=(10, 45), xlabel="inter-frame interval (ms)", ylabel="fraction of intervals ≤ x",
             title="Inter-frame interval CDF (body; solid: the other extensions)")
    body.axvline(20, color="grey", linewidth=0.8)
    body.axvline(40, color="red", linewidth=0.8, linestyle="--")
    tail.set(xscale="log", yscale="log", xlabel="inter-frame interval (ms)", ylabel="fraction of intervals > x",
             title="Tail (1 − CDF); dotted: the stalled/crashed extension", ylim=(1e-6, 1.5))
    ticks = [value for value in (10, 20, 40, 100, 200, 400, 1000, 2000, 5000)
             if value <= max(40.0, tail.get_xlim()[1])]
    tail.set_xticks(ticks, [str(value) for value in ticks])
    tail.minorticks_off()
    tail.axvline(40, color="red", linewidth=0.8, linestyle="--")
    tail.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(folder / CDF_PLOT, dpi=110)
    pyplot.close(figure)
    return CDF_PLOT


def _timeline_plot(pyplot: Any, folder: Path, results: Sequence[ScenarioResult]) -> str:
    figure, axes = pyplot.subplots(len(results), 1, figsize=(12, 3.2 * len(results)), sharex=True, squeeze=False)
    for axis, result in zip(axes[:, 0], results):
        for key, color in (("target", "tab:red"), ("others", "tab:blue")):
            timeline = gap_timeline(_group_windows(result, key), result.origin, result.duration)
            axis.step(timeline.bin_starts, timeline.max_interval_ms, where="post", color=color, linewidth=0.9,
                      label=f"{result.summary['groups'][key]['label']}: largest interval ending in each 100 ms")
            if timeline.gap_ms.size:
                # Each gap as a bar from the last frame before the silence to the first after it.
                axis.hlines(timeline.gap_ms, timeline.gap_starts, timeline.gap_starts + timeline.gap_ms / 1000.0,
                            color=color, linewidth=3, alpha=0.6,
                            label=f"{result.summary['groups'][key]['label']}: gaps > 40 ms ({timeline.gap_ms.size})")
        held_up = [(at, late_ms) for at, late_ms in result.summary.get("machine", {}).get("events", []) if late_ms > 20.0]
        for number, (at, late_ms) in enumerate(held_up):
            axis.axvspan(at, at + late_ms / 1000.0, color="grey", alpha=0.3, linewidth=0,
                         label="machine held up (idle probe woke > 20 ms late)" if number == 0 else None)
        freeze = result.summary.get("freeze") or {}
        for number, at in enumerate(freeze.get("stops_at_s", [])):
            axis.axvspan(at, at + result.summary["stall"]["seconds"], color="tab:red", alpha=0.12, linewidth=0,
                         label="worker stopped (SIGSTOP to SIGCONT)" if number == 0 else None)
        crash = result.summary.get("crash") or {}
        if crash.get("killed_at_s") is not None:
            axis.axvline(crash["killed_at_s"], color="black", linestyle=":", label="kill -9")
        axis.axhline(40, color="grey", linestyle="--", linewidth=0.8)
        axis.set(yscale="log", ylabel="interval (ms)", title=result.summary["name"], ylim=(10, 2000))
        axis.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("seconds since the calls began")
    figure.tight_layout()
    figure.savefig(folder / TIMELINE_PLOT, dpi=110)
    pyplot.close(figure)
    return TIMELINE_PLOT

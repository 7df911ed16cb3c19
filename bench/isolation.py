"""`audiogw bench`: isolation and capacity, per-extension workers side by side with one shared loop.

One invocation runs every scenario back to back on this machine, so the
figures are comparable: the single-loop baseline and the real supervisor,
each with and without a stalled extension, a worker killed mid-run, and a
capacity ramp. Each call is a load-client call that behaves like Asterisk;
every frame's arrival is a kernel receive timestamp. Results go to a folder
(report.md, report.json, PNG plots); the Markdown table is printed too.

    audiogw bench [--quick] [--results DIR] [--scenarios NAME,...] [--json]
    python -m audiogw.bench.isolation ...      (the same command)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from audiogw.bench.report import markdown, write_report
from audiogw.bench.scenarios import (
    ALL_SCENARIOS,
    CAPACITY,
    SCENARIOS,
    STALL_GROUP,
    BenchError,
    BenchSettings,
    ScenarioResult,
    run_capacity,
    run_scenario,
)
from audiogw.bench.stats import isolation_checks, median_round, round_figures
from audiogw.client.softphone import kernel_timestamps_supported

ASTERISK_REALTIME_PRIORITY = 10  # what `asterisk -p` asks for (SCHED_RR)
CAPACITY_TARGET_CALLS = 400
CAPACITY_TARGET_EXTENSIONS = 20
QUICK_LIMIT_SECONDS = 60.0
FULL_LIMIT_SECONDS = 600.0

# Option name -> (full run default, --quick default)
MODE_DEFAULTS: dict[str, tuple[Any, Any]] = {
    "extensions": (20, 4),
    "calls_per_extension": (10, 2),
    "seconds": (20.0, 3.0),
    "capacity_start": (100, 16),
    "capacity_step": (100, 16),
    "capacity_max": (1000, 48),
    "capacity_seconds": (10.0, 2.0),
    "stall_rounds": (3, 1),
}


def _scenario_names(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    if value is None:
        return ALL_SCENARIOS
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in ALL_SCENARIOS]
    if unknown or not names:
        raise click.BadParameter(f"unknown scenario(s) {', '.join(unknown) or '(none given)'}; "
                                 f"choose from {', '.join(ALL_SCENARIOS)}")
    return tuple(name for name in ALL_SCENARIOS if name in names)  # always in the documented order


def _command_line(ctx: click.Context) -> str:
    """The command as the user gave it (options at their defaults left out)."""
    words = ["audiogw", "bench"]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is not click.core.ParameterSource.COMMANDLINE:
            continue
        flag = param.opts[0]
        value = ctx.params[param.name]
        if isinstance(param, click.Option) and param.is_flag:
            words.append(flag)
        elif param.name == "scenarios":
            words += [flag, ",".join(value)]
        else:
            words += [flag, str(value)]
    return " ".join(words)


def _checks(report: dict[str, Any], settings: BenchSettings, quick: bool) -> list[dict[str, Any]]:
    by_name = {scenario["name"]: scenario for scenario in report["scenarios"]}
    checks = isolation_checks(by_name)
    capacity = report.get("capacity")
    if capacity:
        held = capacity["last_held_calls"]
        full_size = settings.extensions == CAPACITY_TARGET_EXTENSIONS and settings.capacity_max >= CAPACITY_TARGET_CALLS
        checks.append({
            "check": f"capacity: concurrent calls held across {settings.extensions} extensions "
                     "(p99 <= 2 ms, no gap over 40 ms, load client on this machine)",
            "measured": "none held" if held is None else held,
            "target": f">= {CAPACITY_TARGET_CALLS} across {CAPACITY_TARGET_EXTENSIONS} extensions",
            "pass": (held is not None and held >= CAPACITY_TARGET_CALLS) if full_size and not quick else None,
        })
    return checks


@click.command("bench")
@click.option("--quick", is_flag=True, help="Smoke run: 4 extensions x 2 calls x 3 s, a short capacity ramp (< 60 s).")
@click.option("--extensions", type=click.IntRange(2, 200), default=None,
              help="Extensions served (default 20; --quick 4). The first one is stalled/frozen/crashed.")
@click.option("--calls-per-extension", type=click.IntRange(1, 100), default=None,
              help="Concurrent calls per extension in the isolation scenarios (default 10; --quick 2).")
@click.option("--seconds", type=click.FloatRange(1.0, 600.0), default=None,
              help="Length of each call in the isolation scenarios (default 20; --quick 3).")
@click.option("--scenarios", callback=_scenario_names, default=None, metavar="NAME[,NAME...]",
              help=f"Run only these, in the usual order: {', '.join(ALL_SCENARIOS)}.")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("bench-results"), show_default=True, help="Folder for report.md, report.json and the plots.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of the Markdown table.")
@click.option("--capacity-start", type=click.IntRange(1), default=None, help="First capacity step, total calls (default 100).")
@click.option("--capacity-step", type=click.IntRange(1), default=None, help="Calls added per capacity step (default 100).")
@click.option("--capacity-max", type=click.IntRange(1), default=None, help="Largest capacity step tried (default 1000).")
@click.option("--capacity-seconds", type=click.FloatRange(1.0, 600.0), default=None,
              help="Length of each capacity step's calls (default 10).")
@click.option("--stall-rounds", type=click.IntRange(1, 9), default=None,
              help="Run per-extension and the stall scenarios selected (per-extension-stall, "
                   "per-extension-sigstop) this many times, alternately, and compare their median rounds "
                   "(default 3; --quick 1): p99 drifts between runs as much as the 20 %% being judged.")
@click.option("--normal-priority", "normal_priority", is_flag=True,
              help=f"Run the workers (audiosocket.realtime_priority = 0) and the load client at normal priority. "
                   f"By default both run under SCHED_RR {ASTERISK_REALTIME_PRIORITY}: the workers as the default "
                   "config has them, the load client as `asterisk -p` runs Asterisk, so the instrument is not "
                   "starved by what it measures (needs root or CAP_SYS_NICE).")
@click.option("--calls-per-load-process", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Calls one load-client process drives; more calls start more load processes.")
@click.pass_context
def bench_command(ctx: click.Context, quick: bool, scenarios: tuple[str, ...], results_dir: Path, as_json: bool,
                  normal_priority: bool, calls_per_load_process: int, **sizes: Any) -> None:
    """Prove isolation and capacity: per-extension workers vs one shared event loop, in one run."""
    began = time.monotonic()
    for name, (full, smoke) in MODE_DEFAULTS.items():
        if sizes[name] is None:
            sizes[name] = smoke if quick else full
    settings = BenchSettings(calls_per_load_process=calls_per_load_process,
                             realtime_priority=0 if normal_priority else ASTERISK_REALTIME_PRIORITY, **sizes)
    load_before = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    workdir = Path(tempfile.mkdtemp(prefix="audiogw-bench-"))

    def progress(line: str) -> None:
        click.echo(line, err=True)

    results: list[ScenarioResult] = []
    report: dict[str, Any] = {
        "command": _command_line(ctx),
        "settings": {**settings.__dict__, "quick": quick, "scenarios": list(scenarios)},
        "machine": {"cpus": os.cpu_count(), "load_average_before": load_before,
                    "kernel_timestamps": kernel_timestamps_supported(), "python": sys.version.split()[0]},
        "scenarios": [],
        "capacity": None,
    }

    def isolation(name: str, label: str) -> ScenarioResult:
        progress(f"bench: {label} ...")
        result = run_scenario(SCENARIOS[name], settings, workdir)
        others = result.summary["groups"]["others"]
        target = result.summary["groups"]["target"]
        freeze = result.summary.get("freeze")
        stops = ""
        if freeze:
            lengths = freeze.get("stopped_ms") or [0.0]
            stops = f"; {freeze['stops']} stops of {min(lengths):.0f}-{max(lengths):.0f} ms"
        progress(f"  {target['label']}: p99 {target['p99_deviation_ms']:.3f} ms, gaps>40ms "
                 f"{target['gaps_over_40ms']}; others: p99 {others['p99_deviation_ms']:.3f} ms, "
                 f"gaps>40ms {others['gaps_over_40ms']}; client lag (merged frames) "
                 f"{target['merged_frames'] + others['merged_frames']}{stops} ({result.summary['wall_seconds']:.1f} s)")
        return result

    # The fault-free run and the stalled runs selected, alternately, when there is something to compare.
    group = [name for name in STALL_GROUP if name in scenarios]
    paired = settings.stall_rounds > 1 and STALL_GROUP[0] in group and len(group) > 1
    try:
        for name in scenarios:
            if name == CAPACITY:
                progress(f"bench: {name} ...")
                result = run_capacity(settings, workdir, progress)
                report["capacity"] = result.summary
                results.append(result)
            elif paired and name in group:
                if name != group[0]:
                    continue  # already run, alternating with the rest of its group
                rounds: dict[str, list[ScenarioResult]] = {member: [] for member in group}
                for number in range(1, settings.stall_rounds + 1):
                    for member in group:
                        label = f"{member} (round {number}/{settings.stall_rounds})"
                        rounds[member].append(isolation(member, label))
                for member in group:
                    runs = rounds[member]
                    result = runs[median_round([run.summary for run in runs])]
                    result.summary["rounds"] = [round_figures(run.summary) for run in runs]
                    report["scenarios"].append(result.summary)
                    results.append(result)
            else:
                result = isolation(name, name)
                report["scenarios"].append(result.summary)
                results.append(result)
    except BenchError as error:
        click.echo(f"audiogw bench: the run broke: {error}\n(logs kept in {workdir})", err=True)
        sys.exit(1)
    report["duration_seconds"] = time.monotonic() - began
    report["checks"] = _checks(report, settings, quick)
    limit = QUICK_LIMIT_SECONDS if quick else FULL_LIMIT_SECONDS
    complete = set(scenarios) == set(ALL_SCENARIOS)
    report["checks"].append({
        "check": f"{'bench --quick' if quick else 'full bench'} run time" + ("" if complete else " (subset of scenarios)"),
        "measured": f"{report['duration_seconds']:.1f} s", "target": f"< {limit:g} s",
        "pass": report["duration_seconds"] < limit if complete else None,
    })
    plots = write_report(results_dir, report, results)
    shutil.rmtree(workdir, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=float))
    else:
        click.echo(markdown(report))
    progress(f"bench: report in {results_dir}/report.md"
             + (f", plots: {', '.join(plots['files'])}" if plots.get("files") else f"; plots skipped: {plots.get('skipped')}"))


if __name__ == "__main__":
    bench_command(prog_name="audiogw bench")

"""Benchmark one real worker process under many concurrent calls.

    python -m audiogw.bench.worker [--calls 200] [--seconds 20] [--app echo] [--json]

It starts ONE worker (``python -m audiogw.worker``, app echo by default, its
log in a temporary file, the two ports parsed from the ``serving`` lines),
then places N concurrent calls from this one process (the softphone, on
uvloop), their starts spread evenly over ``--spread`` seconds. Calls alternate
between the ia and the retorno port (``--legs split``, the default) so both
``serve_forever()`` tasks carry load, or all go to ia (``--legs ia``). Each
call sends a 440 Hz tone for S seconds, so with echo frames flow both ways.

What is measured is when the worker's frames *arrived*, from the kernel's
receive timestamps (SO_TIMESTAMPNS), so the client's own event-loop lag does
not show up as worker jitter, except where the client read so late that the
kernel merged frames (``late_reads``; reported separately, and the pacing is
also given without those calls).

"Expected" frames per call: the worker sends one frame per 20 ms tick from the
tick after it receives the UUID frame until it receives the hangup. The client
sends the hangup S seconds after the UUID (the softphone's schedule), so a
worker that keeps the clock delivers S/0.02 frames in the window
[UUID sent, UUID sent + S] (kernel arrival time, CLOCK_REALTIME). Only frames
that arrived inside that window are counted; one frame more or less comes
from where the window's edges fall between two ticks, hence the +-1 target.

The run prints real numbers whatever they are, and PASS/FAIL against the
targets (p99 deviation <= 2 ms, no gap > 40 ms, every call within +-1 of the
expected frames). Exit status: 0 when the run completed (PASS or FAIL), 1 when
the run itself broke (worker did not start or died, no call completed, crash).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import psutil
import uvloop

from audiogw.bench.load import CallRecord, PlannedCall, run_calls
from audiogw.client.softphone import kernel_timestamps_supported
from audiogw.shared.audiosocket import LEG_KINDS
from audiogw.shared.pacing import FRAME_PERIOD, GAP_THRESHOLD, PacingStats, pacing_stats_many, window_arrivals
from audiogw.shared.records import LegRecord, read_leg_records, read_ready

STARTUP_EXCLUDED = 0.2  # seconds at the start of each call left out of the second set of figures
TARGET_P99_MS = 2.0
TARGET_GAPS = 0
TARGET_FRAME_TOLERANCE = 1
EXTENSION = "1201"


# --------------------------------------------------------------------------
# Calls (the shared load client, bench/load.py)
# --------------------------------------------------------------------------
async def _run_calls(host: str, ports: dict[str, int], calls: int, seconds: float, spread: float,
                     legs: str) -> list[CallRecord]:
    plan = []
    for index in range(calls):
        leg = LEG_KINDS[0] if legs == "ia" else LEG_KINDS[index % 2]
        offset = spread * index / calls if calls > 1 else 0.0
        plan.append(PlannedCall(index, EXTENSION, leg, ports[leg], offset))
    return await run_calls(host, plan, seconds)


# --------------------------------------------------------------------------
# The worker process and its resource use
# --------------------------------------------------------------------------
class BenchError(RuntimeError):
    """The run itself broke (exit status 1)."""


@dataclass
class Worker:
    process: subprocess.Popen
    log_path: Path
    ports: dict[str, int]
    records_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def leg_records(self) -> list[LegRecord]:
        """The legs that ended so far, as the worker recorded them (its --leg-records file)."""
        return read_leg_records(self.records_path)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_worker(app: str, workdir: Path, timeout: float = 15.0, options: tuple[str, ...] = ()) -> Worker:
    """One worker process on free ports; ``options`` are ``KEY=VALUE`` app options."""
    log_path = workdir / "worker.log"
    ready_path = workdir / "worker.ready.json"
    command = [sys.executable, "-m", "audiogw.worker", "--extension", EXTENSION,
               "--ia-port", "0", "--retorno-port", "0", "--app", app,
               "--ready-file", str(ready_path), "--leg-records", str(workdir / "worker.legs.jsonl")]
    for option in options:
        command += ["--option", option]
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log_file, cwd=workdir)
    worker = Worker(process, log_path, {}, workdir / "worker.legs.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = read_ready(ready_path)
        if ready is not None:
            worker.ports = dict(ready.ports)
            return worker
        if process.poll() is not None:
            raise BenchError(f"worker exited with status {process.returncode} before serving:\n{worker.log()[-3000:]}")
        time.sleep(0.02)
    worker.stop()
    raise BenchError(f"worker did not serve both legs within {timeout:g} s:\n{worker.log()[-3000:]}")


class ResourceSampler(threading.Thread):
    """psutil samples of the worker (and of this client) every ``interval`` seconds."""

    def __init__(self, worker_pid: int, interval: float = 0.5) -> None:
        super().__init__(name="bench-sampler", daemon=True)
        self.interval = interval
        self.worker = psutil.Process(worker_pid)
        self.client = psutil.Process(os.getpid())
        self.stop_event = threading.Event()
        self.worker_cpu: list[float] = []
        self.worker_rss: list[int] = []
        self.client_cpu: list[float] = []
        self.rss_before = self.worker.memory_info().rss
        self.cpu_times_before = self._cpu_seconds(self.worker)
        self.started_at = time.monotonic()
        self.cpu_seconds = 0.0
        self.wall_seconds = 0.0

    @staticmethod
    def _cpu_seconds(process: psutil.Process) -> float:
        times = process.cpu_times()
        return times.user + times.system

    def run(self) -> None:
        self.worker.cpu_percent(None)
        self.client.cpu_percent(None)
        while not self.stop_event.wait(self.interval):
            try:
                self.worker_cpu.append(self.worker.cpu_percent(None))
                self.worker_rss.append(self.worker.memory_info().rss)
                self.client_cpu.append(self.client.cpu_percent(None))
            except psutil.Error:
                return

    def finish(self) -> None:
        self.stop_event.set()
        self.join(5)
        try:
            self.cpu_seconds = self._cpu_seconds(self.worker) - self.cpu_times_before
        except psutil.Error:
            pass
        self.wall_seconds = time.monotonic() - self.started_at


# --------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------
def _spread(values: list[float] | list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _pacing(arrays: list[numpy.ndarray]) -> dict[str, Any]:
    stats: PacingStats = pacing_stats_many(arrays, FRAME_PERIOD, GAP_THRESHOLD)
    result = stats.to_dict()
    result["calls"] = len(arrays)
    return result


def worker_legs(legs: list[LegRecord]) -> dict[str, Any]:
    """The worker's own view of its legs, from its leg records."""
    if not legs:
        return {"legs_logged": 0}
    return {
        "legs_logged": len(legs),
        "frames_out_per_leg": _spread([leg.frames_sent for leg in legs]),
        "underruns_total": sum(leg.underruns for leg in legs),
        "late_frames_total": sum(leg.late_frames for leg in legs),
        "max_send_gap_ms": _spread([leg.max_send_gap_ms for leg in legs]),
        "end_reasons": dict(sorted(Counter(leg.reason for leg in legs).items())),
    }


def analyse(records: list[CallRecord], seconds: float, sampler: ResourceSampler | None,
            worker_records: list[LegRecord], config: dict[str, Any]) -> dict[str, Any]:
    expected = int(round(seconds / FRAME_PERIOD))
    completed = [record for record in records if record.failure is None and record.result is not None]
    completed_ids = {id(record) for record in completed}
    failed = [record for record in records if id(record) not in completed_ids]
    in_window: list[numpy.ndarray] = []
    after_startup: list[numpy.ndarray] = []
    counts: list[int] = []
    outside: list[int] = []
    hangup_late_ms: list[float] = []
    late_read_calls: list[int] = []  # indices into completed
    for position, record in enumerate(completed):
        result = record.result
        start = record.uuid_sent
        end = start + seconds
        inside = window_arrivals(result.arrivals, start, seconds)
        in_window.append(inside)
        after_startup.append(inside[inside >= start + STARTUP_EXCLUDED])
        counts.append(int(inside.size))
        outside.append(int(result.arrivals.size - inside.size))
        if record.hangup_sent is not None:
            hangup_late_ms.append((record.hangup_sent - end) * 1000.0)
        if result.late_reads > 0:
            late_read_calls.append(position)
    within = sum(1 for count in counts if abs(count - expected) <= TARGET_FRAME_TOLERANCE)
    lagged = set(late_read_calls)
    clean = [index for index in range(len(completed)) if index not in lagged]
    pacing = {
        "whole_call": _pacing(in_window),
        "after_first_0.2s": _pacing(after_startup),
        "whole_call_without_late_read_calls": _pacing([in_window[i] for i in clean]),
        "after_first_0.2s_without_late_read_calls": _pacing([after_startup[i] for i in clean]),
    }
    official = pacing["whole_call"]
    checks = {
        "p99_deviation_ms": {"value": official["p99_deviation_ms"], "target": f"<= {TARGET_P99_MS:g}",
                             "pass": official["p99_deviation_ms"] <= TARGET_P99_MS},
        "gaps_over_40ms": {"value": official["gaps_over_40ms"], "target": f"== {TARGET_GAPS}",
                           "pass": official["gaps_over_40ms"] == TARGET_GAPS},
        "calls_within_1_of_expected": {"value": f"{within}/{len(records)}", "target": f"all {len(records)}",
                                       "pass": within == len(records) and not failed},
    }
    verdict = "PASS" if all(check["pass"] for check in checks.values()) else "FAIL"
    worker_section: dict[str, Any] = worker_legs(worker_records)
    client_section: dict[str, Any] = {
        "calls_with_late_reads": len(late_read_calls),
        "late_reads_total": sum(record.result.late_reads for record in completed),
        "late_reads_max_per_call": max((record.result.late_reads for record in completed), default=0),
        "user_timestamps_total": sum(record.result.user_timestamps for record in completed),
        "late_sends_total": sum(record.result.late_sends for record in completed),
        "frames_sent_per_call": _spread([record.result.frames_sent for record in completed]),
        "hangup_late_ms": _spread(hangup_late_ms),
    }
    if sampler is not None:
        worker_section.update({
            "pid": sampler.worker.pid,
            "cpu_percent_mean": (100.0 * sampler.cpu_seconds / sampler.wall_seconds) if sampler.wall_seconds else 0.0,
            "cpu_percent_max_sample": max(sampler.worker_cpu, default=0.0),
            "cpu_seconds": sampler.cpu_seconds,
            "rss_mb_before_calls": sampler.rss_before / 2**20,
            "rss_mb_max": max(sampler.worker_rss, default=sampler.rss_before) / 2**20,
            "samples": len(sampler.worker_cpu),
        })
        client_section["cpu_percent_mean_sample"] = statistics.fmean(sampler.client_cpu) if sampler.client_cpu else 0.0
        client_section["cpu_percent_max_sample"] = max(sampler.client_cpu, default=0.0)
    failures: dict[str, int] = {}
    for record in failed:
        failures[record.failure or "unknown"] = failures.get(record.failure or "unknown", 0) + 1
    return {
        "config": config,
        "calls": {"placed": len(records), "completed": len(completed), "failed": len(failed),
                  "failure_reasons": failures,
                  "by_leg": {leg: sum(1 for record in completed if record.leg == leg) for leg in LEG_KINDS}},
        "frames": {
            "expected_per_call": expected,
            "expected_means": (
                f"the worker sends one frame per 20 ms tick from the UUID until the hangup; the client hangs "
                f"up {seconds:g} s after writing the UUID, so {expected} frames (= {seconds:g} s / 0.02 s) should "
                f"arrive (kernel receive time) in [UUID written, UUID written + {seconds:g} s]; only those are "
                f"counted, +-1 for where the window edges fall between ticks"
            ),
            "received_in_window": _spread(counts),
            "calls_within_1": within,
            "received_outside_window": _spread(outside),
        },
        "pacing": pacing,
        "client": client_section,
        "worker": worker_section,
        "checks": checks,
        "verdict": verdict,
    }


# --------------------------------------------------------------------------
# Text report
# --------------------------------------------------------------------------
def _fmt_spread(values: dict[str, float], unit: str = "", digits: int = 0) -> str:
    return " / ".join(f"{values[key]:.{digits}f}{unit}" for key in ("min", "median", "max"))


def format_report(report: dict[str, Any]) -> str:
    config = report["config"]
    calls = report["calls"]
    frames = report["frames"]
    client = report["client"]
    worker = report["worker"]
    lines = [
        f"audiogw worker benchmark: {config['calls']} calls x {config['seconds']:g} s, app={config['app']}, "
        f"legs={config['legs']} ({'alternating ia/retorno' if config['legs'] == 'split' else 'all on ia'}), "
        f"starts spread over {config['spread']:g} s",
        f"  worker pid {config['worker_pid']} on 127.0.0.1 ia:{config['ports']['ia']} retorno:{config['ports']['retorno']}; "
        f"client: this process, uvloop; {config['cpus']} CPUs; kernel timestamps: {config['kernel_timestamps']}",
        "",
        f"calls: {calls['completed']} completed, {calls['failed']} failed "
        f"(completed on ia {calls['by_leg']['ia']}, retorno {calls['by_leg']['retorno']})",
    ]
    for reason, count in calls["failure_reasons"].items():
        lines.append(f"  failed x{count}: {reason}")
    lines += [
        "",
        f"frames per call: expected {frames['expected_per_call']}",
        f"  'expected' = {frames['expected_means']}",
        f"  received in window min/median/max: {_fmt_spread(frames['received_in_window'])}; "
        f"calls within +-1 of expected: {frames['calls_within_1']}/{calls['placed']}",
        f"  received outside the window (after the nominal hangup) min/median/max: "
        f"{_fmt_spread(frames['received_outside_window'])}",
        "",
        "outbound pacing (worker -> client, kernel arrival times, pooled over calls via pacing_stats_many;",
        "deviation = |inter-arrival interval - 20 ms|):",
        f"  {'figures':<48} {'calls':>5} {'intervals':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'largest gap ms':>14} {'gaps>40ms':>9}",
    ]
    labels = {
        "whole_call": "whole call, all calls  [verdict uses this]",
        "after_first_0.2s": "first 0.2 s of each call excluded",
        "whole_call_without_late_read_calls": "whole call, calls with client late_reads excluded",
        "after_first_0.2s_without_late_read_calls": "first 0.2 s excl., late_reads calls excluded",
    }
    for key, label in labels.items():
        stats = report["pacing"][key]
        intervals = max(0, stats["frames"] - stats["calls"])
        lines.append(
            f"  {label:<48} {stats['calls']:>5} {intervals:>9} {stats['p50_deviation_ms']:>8.3f} "
            f"{stats['p99_deviation_ms']:>8.3f} {stats['max_deviation_ms']:>8.3f} {stats['max_gap_ms']:>14.3f} "
            f"{stats['gaps_over_40ms']:>9}"
        )
    lines += [
        "",
        f"client side (this process's own lag, not the worker's): calls with late_reads > 0: "
        f"{client['calls_with_late_reads']} (late reads total {client['late_reads_total']}, max per call "
        f"{client['late_reads_max_per_call']}); frames without kernel timestamp: {client['user_timestamps_total']}",
        f"  client send clock re-anchors (late_sends): {client['late_sends_total']}; frames sent per call "
        f"min/median/max: {_fmt_spread(client['frames_sent_per_call'])}",
        f"  hangup written after its schedule, ms min/median/max: {_fmt_spread(client['hangup_late_ms'], digits=2)}",
    ]
    if "cpu_percent_mean_sample" in client:
        lines.append(f"  client CPU%: mean {client['cpu_percent_mean_sample']:.1f}, max sample "
                     f"{client['cpu_percent_max_sample']:.1f}")
    lines.append("")
    if "cpu_percent_mean" in worker:
        lines.append(
            f"worker resources (psutil, pid {worker['pid']}, {worker['samples']} samples during the calls): "
            f"CPU% mean {worker['cpu_percent_mean']:.1f} (max sample {worker['cpu_percent_max_sample']:.1f}), "
            f"CPU time {worker['cpu_seconds']:.2f} s; RSS {worker['rss_mb_before_calls']:.1f} MB before calls, "
            f"max {worker['rss_mb_max']:.1f} MB"
        )
    if worker.get("legs_logged"):
        lines.append(
            f"worker's own view (its leg records, {worker['legs_logged']} legs): frames_out per leg "
            f"min/median/max {_fmt_spread(worker['frames_out_per_leg'])}; max send gap per leg ms min/median/max "
            f"{_fmt_spread(worker['max_send_gap_ms'], digits=1)}; late frames (>20 ms after deadline) "
            f"{worker['late_frames_total']}; underruns {worker['underruns_total']}; end reasons {worker['end_reasons']}"
        )
    else:
        lines.append("worker's own view: no leg records from the worker")
    lines += ["", "targets:"]
    for name, check in report["checks"].items():
        value = check["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(f"  {name:<28} {shown:>10}  target {check['target']:<8} "
                     f"{'PASS' if check['pass'] else 'FAIL'}")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------
def run_benchmark(calls: int = 200, seconds: float = 20.0, app: str = "echo", legs: str = "split",
                  spread: float = 1.0, host: str = "127.0.0.1") -> dict[str, Any]:
    """Start a worker, run the calls, stop the worker; return the report (BenchError if the run broke)."""
    with tempfile.TemporaryDirectory(prefix="audiogw-bench-") as directory:
        workdir = Path(directory)
        worker = start_worker(app, workdir)
        sampler: ResourceSampler | None = None
        try:
            sampler = ResourceSampler(worker.process.pid)
            sampler.start()
            records = uvloop.run(_run_calls(host, worker.ports, calls, seconds, spread, legs))
            sampler.finish()
            died = worker.process.poll()
        finally:
            if sampler is not None and sampler.is_alive():
                sampler.finish()
            status = worker.stop()  # a stopped worker has written every leg's record
        log_text = worker.log()
        if died is not None:
            raise BenchError(f"worker exited with status {died} during the run:\n{log_text[-3000:]}")
        config = {
            "calls": calls, "seconds": seconds, "app": app, "legs": legs, "spread": spread, "host": host,
            "ports": worker.ports, "worker_pid": worker.process.pid, "worker_exit_status": status,
            "cpus": os.cpu_count(), "kernel_timestamps": kernel_timestamps_supported(),
        }
        report = analyse(records, seconds, sampler, worker.leg_records(), config)
        if report["calls"]["completed"] == 0:
            raise BenchError(f"no call completed: {report['calls']['failure_reasons']}\n{log_text[-3000:]}")
        return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audiogw.bench.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="concurrent calls (default 200)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each call (default 20)")
    parser.add_argument("--app", default="echo", help="worker app (default echo)")
    parser.add_argument("--legs", choices=("split", "ia"), default="split",
                        help="split: alternate ia/retorno ports (default); ia: all calls on ia")
    parser.add_argument("--spread", type=float, default=1.0, help="seconds over which call starts are spread")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.calls < 1 or not args.seconds > 0 or args.spread < 0:
        parser.error("--calls must be >= 1, --seconds > 0, --spread >= 0")
    try:
        report = run_benchmark(args.calls, args.seconds, args.app, args.legs, args.spread)
    except BenchError as error:
        print(f"benchmark broke: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001
        print(f"benchmark broke: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, default=float))
    else:
        print(format_report(report))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's scenarios: start a gateway, drive the load, inject the fault, collect outcomes.

All the I/O of ``audiogw bench`` lives here; the figures come from
``stats`` (pure) and the report from ``report``. Load runs in
separate processes (``load``), started with subprocess, which share one
start time so a scenario's calls line up on one timeline.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiogw.bench.gateway import (
    ExtensionPlan,
    Gateway,
    GatewayError,
    SingleLoopGateway,
    SupervisorGateway,
)
from audiogw.bench.load import PlannedCall, load_outcomes, write_plan
from audiogw.bench.resources import ResourceSampler, SchedulingProbe
from audiogw.bench.stats import (
    CallOutcome,
    after_resume,
    capacity_held,
    capacity_verdict,
    group_summary,
    resource_summary,
    resume_instants,
    split_groups,
)
from audiogw.bench.supervisor import first_frame_after
from audiogw.bench.worker import worker_legs
from audiogw.shared.audiosocket import LEG_KINDS
from audiogw.shared.net import free_port_block
from audiogw.shared.records import LegRecord

# The benchmark-only app that blocks its own loop (time.sleep), by reference: production
# supervisors do not know it by name.
STALL_APP = "audiogw.bench.stall_app:StallApp"


@dataclass(frozen=True)
class ScenarioSpec:
    name: str
    gateway: str  # "single-loop" | "supervisor"
    stall: bool  # the first extension's app blocks its loop (time.sleep)
    crash: bool
    description: str
    # The benchmark freezes the first extension's whole worker process (SIGSTOP, then
    # SIGCONT): every thread stops, as when the host pauses it, not just its event loop.
    sigstop: bool = False


SCENARIOS: dict[str, ScenarioSpec] = {spec.name: spec for spec in (
    ScenarioSpec("baseline-single-loop", "single-loop", False, False,
                 "every extension on one event loop in one process (the design audiogw replaces)"),
    ScenarioSpec("baseline-single-loop-stall", "single-loop", True, False,
                 "the same, one extension's app blocks the loop"),
    ScenarioSpec("per-extension", "supervisor", False, False,
                 "the real supervisor, one worker process per extension"),
    ScenarioSpec("per-extension-stall", "supervisor", True, False,
                 "the same, one extension's app blocks its own loop"),
    ScenarioSpec("per-extension-sigstop", "supervisor", False, False,
                 "the same, the benchmark freezes one extension's worker process (SIGSTOP, SIGCONT)",
                 sigstop=True),
    ScenarioSpec("crash", "supervisor", False, True,
                 "the real supervisor, one worker killed with SIGKILL mid-run"),
)}
CAPACITY = "capacity"
ALL_SCENARIOS: tuple[str, ...] = (*SCENARIOS, CAPACITY)
# The run without a fault first, then the stalled runs whose others' p99 is compared
# with it: with stall_rounds > 1 the ones selected run alternately.
STALL_GROUP: tuple[str, ...] = ("per-extension", "per-extension-stall", "per-extension-sigstop")


@dataclass(frozen=True)
class BenchSettings:
    extensions: int = 20
    calls_per_extension: int = 10
    seconds: float = 20.0
    stall_seconds: float = 0.3
    stall_every: float = 1.0
    calls_per_load_process: int = 100
    capacity_start: int = 100
    capacity_step: int = 100
    capacity_max: int = 1000
    capacity_seconds: float = 10.0
    stall_rounds: int = 1  # times the STALL_GROUP scenarios run, alternately
    # SCHED_RR priority of the workers' clocks and of the load client, as `asterisk -p`
    # runs Asterisk; 0: everything at normal priority.
    realtime_priority: int = 0
    host: str = "127.0.0.1"

    def extension_ids(self) -> list[str]:
        return [str(1201 + index) for index in range(self.extensions)]


@dataclass
class ScenarioResult:
    """A scenario's JSON-able summary, plus the raw outcomes the plots need."""

    summary: dict[str, Any]
    outcomes: list[CallOutcome] = field(default_factory=list)
    origin: float = 0.0  # CLOCK_REALTIME of the common start
    duration: float = 0.0  # seconds from origin to the last planned hangup


class BenchError(RuntimeError):
    """The benchmark itself broke (a gateway or load process failed), not a bad figure."""


def spread_seconds(calls: int) -> float:
    """How long call starts are spread over: 2.5 ms per call, 0.2-2 s (no connect storm)."""
    return min(2.0, max(0.2, calls * 0.0025))


def plan_calls(ports: dict[str, dict[str, int]], calls_per_extension: int, legs: str) -> list[PlannedCall]:
    """Calls interleaved across extensions, start offsets in units of one spread (scaled later).

    ``legs``: 'split' alternates ia/retorno within each extension; 'ia' puts every call on ia.
    """
    plan: list[PlannedCall] = []
    extensions = list(ports)
    total = calls_per_extension * len(extensions)
    for round_index in range(calls_per_extension):
        for extension in extensions:
            index = len(plan)
            leg = LEG_KINDS[0] if legs == "ia" else LEG_KINDS[round_index % 2]
            plan.append(PlannedCall(index, extension, leg, ports[extension][leg], index / total if total else 0.0))
    return plan


# --------------------------------------------------------------------------
# Load processes
# --------------------------------------------------------------------------
@dataclass
class LoadRun:
    outcomes: list[CallOutcome]
    start_at: float
    sampler: ResourceSampler
    load_processes: int
    during: dict[str, Any]
    machine: dict[str, Any]


def run_load(gateway: Gateway, plan: list[PlannedCall], seconds: float, workdir: Path, settings: BenchSettings,
             target: str, during: Callable[[float], dict[str, Any]] | None = None) -> LoadRun:
    """Run ``plan`` from ceil(calls / calls_per_load_process) load processes; sample resources meanwhile.

    Calls are dealt round-robin to the processes, so every extension's calls
    share every load process alike and one lagging process cannot bias one
    group. ``during(start_at)`` runs in this thread while the calls are up
    (the crash injection) and returns figures for the report.
    """
    spread = spread_seconds(len(plan))
    plan = [PlannedCall(call.index, call.extension, call.leg, call.port, call.offset * spread) for call in plan]
    count = max(1, math.ceil(len(plan) / settings.calls_per_load_process))
    processes: list[tuple[subprocess.Popen, Path, Path]] = []
    probe: SchedulingProbe | None = None
    sampler: ResourceSampler | None = None
    try:
        for number in range(count):
            part = plan[number::count]
            plan_path = workdir / f"load-{number}.json"
            out_path = workdir / f"load-{number}.npz"
            write_plan(plan_path, settings.host, seconds, part)
            with open(workdir / f"load-{number}.log", "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "audiogw.bench.load", "--plan", str(plan_path), "--out", str(out_path)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=workdir,
                )
            processes.append((process, out_path, workdir / f"load-{number}.log"))
        for process, _, log_path in processes:
            if process.stdout.readline().strip() != b"ready":
                raise BenchError(f"load process {process.pid} did not start:\n{log_path.read_text(errors='replace')[-2000:]}")
            if settings.realtime_priority:
                try:  # once imported (a real-time import would hold up the gateway); it drops it to save
                    os.sched_setscheduler(process.pid, os.SCHED_RR, os.sched_param(settings.realtime_priority))
                except OSError as error:
                    raise BenchError(f"the load client cannot run under SCHED_RR {settings.realtime_priority} "
                                     f"({error.strerror}): run as root or give CAP_SYS_NICE") from None
        load_pids = [process.pid for process, _, _ in processes]
        probe = SchedulingProbe()
        bench_pids = {os.getpid(): "bench", probe.process.pid: "bench", **{pid: "load" for pid in load_pids}}
        sampler = ResourceSampler(lambda: {**gateway.labels(target), **bench_pids})
        sampler.start()
        start_at = time.time() + 0.2
        for process, _, _ in processes:
            process.stdin.write(f"{start_at!r}\n".encode())
            process.stdin.close()
        extra = during(start_at + spread) if during is not None else {}
        deadline = time.monotonic() + spread + seconds + 60.0
        for process, _, log_path in processes:
            try:
                status = process.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError(f"load process {process.pid} did not finish") from None
            if status != 0:
                raise BenchError(f"load process {process.pid} exited {status}:\n{log_path.read_text(errors='replace')[-2000:]}")
        machine = probe.finish()
        sampler.finish()
    finally:
        if sampler is not None:
            sampler.stop_event.set()  # a no-op after finish(); stops the thread when the run broke
        if probe is not None and probe.process.poll() is None:
            probe.process.kill()
            probe.process.wait()
        for process, _, _ in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
    outcomes = [outcome for _, out_path, _ in processes for outcome in load_outcomes(out_path)]
    machine["events"] = [[at - start_at, late_ms] for at, late_ms in machine["events"]]
    return LoadRun(outcomes, start_at, sampler, count, extra, machine)


def _resources(sampler: ResourceSampler) -> dict[str, Any]:
    cpu = sampler.cpu_seconds()
    by_label = resource_summary(cpu, sampler.max_rss, sampler.uss, sampler.labels, sampler.wall_seconds)
    gateway_labels = {pid: "gateway" for pid, label in sampler.labels.items() if label not in ("load", "bench")}
    by_label.update(resource_summary(cpu, sampler.max_rss, sampler.uss, gateway_labels, sampler.wall_seconds))
    by_label["wall_seconds"] = sampler.wall_seconds
    if sampler.wall_seconds > 0:
        # Everything the machine did meanwhile, and the part no process of this benchmark did.
        busy = 100.0 * sampler.machine_busy_seconds / sampler.wall_seconds
        interrupts = 100.0 * sampler.machine_interrupt_seconds / sampler.wall_seconds
        ours = 100.0 * sum(cpu.values()) / sampler.wall_seconds
        by_label["machine"] = {"cpu_busy_percent": busy, "interrupt_percent": interrupts,
                               "steal_percent": 100.0 * sampler.machine_steal_seconds / sampler.wall_seconds,
                               "outside_bench_percent": max(0.0, busy - interrupts - ours)}
    return by_label


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------
def _gateway(kind: str, folder: Path, extensions: list[ExtensionPlan], settings: BenchSettings) -> Gateway:
    base = free_port_block(2 * len(extensions) + 10)
    gateway_class = SingleLoopGateway if kind == "single-loop" else SupervisorGateway
    return gateway_class(folder, extensions, base, settings.realtime_priority)


def _crash(gateway: SupervisorGateway, target: str, at: float) -> dict[str, Any]:
    """Wait until ``at`` (CLOCK_REALTIME), SIGKILL the target's worker, time a fresh call's first frame."""
    time.sleep(max(0.0, at - time.time()))
    pid = gateway.worker_pid(target)
    if not pid:
        return {"killed_pid": None, "serves_again_ms": None, "refused": 0, "error": "no worker pid"}
    killed_wall = time.time()
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    probe_start = time.monotonic()
    elapsed, refused = first_frame_after(gateway.ports[target]["ia"], 5.0)
    return {
        "killed_pid": pid,
        "killed_at": killed_wall,
        "serves_again_ms": None if elapsed is None else (probe_start - killed_at + elapsed) * 1000.0,
        "refused": refused,
        "new_pid": gateway.worker_pid(target),
    }


def _process_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` ('T': stopped), '' when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def _freeze(gateway: SupervisorGateway, target: str, first_at: float, until: float,
            settings: BenchSettings) -> dict[str, Any]:
    """SIGSTOP the target's worker, SIGCONT it ``stall_seconds`` later, every ``stall_every`` s.

    From ``first_at`` until ``until`` (CLOCK_REALTIME), as long as a whole stop
    fits. The worker is never left stopped: SIGCONT goes out in ``finally``.
    Returns when each stop began (realtime seconds) and how long each really
    lasted, as this process timed it (a late wake-up here makes a stop longer).
    """
    pid = gateway.worker_pid(target)
    if not pid:
        return {"pid": None, "error": "no worker pid", "stops_at": [], "stopped_ms": []}
    wall_offset = time.time() - time.monotonic()
    stops_at: list[float] = []
    stopped_ms: list[float] = []
    confirm_ms: list[float] = []
    stopped = False
    number = 0
    try:
        while True:
            begin = first_at - wall_offset + number * settings.stall_every
            if begin + settings.stall_seconds > until - wall_offset:
                break
            time.sleep(max(0.0, begin - time.monotonic()))
            os.kill(pid, signal.SIGSTOP)
            stopped_at = time.monotonic()
            stopped = True
            while (state := _process_state(pid)) not in ("T", "") and time.monotonic() - stopped_at < 0.05:
                time.sleep(0.0005)
            if state == "T":  # the kernel really stopped it (signals are delivered asynchronously)
                confirm_ms.append((time.monotonic() - stopped_at) * 1000.0)
            time.sleep(max(0.0, stopped_at + settings.stall_seconds - time.monotonic()))
            os.kill(pid, signal.SIGCONT)
            stopped = False
            stopped_ms.append((time.monotonic() - stopped_at) * 1000.0)
            stops_at.append(stopped_at + wall_offset)
            number += 1
    except ProcessLookupError:
        stopped = False
        return {"pid": pid, "error": "the worker went away", "stops_at": stops_at, "stopped_ms": stopped_ms}
    finally:
        if stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    return {"pid": pid, "stops_at": stops_at, "stopped_ms": stopped_ms, "stops_seen": len(confirm_ms),
            "stop_seen_ms_max": max(confirm_ms, default=None), "new_pid": gateway.worker_pid(target)}


def run_scenario(spec: ScenarioSpec, settings: BenchSettings, workdir: Path) -> ScenarioResult:
    """One isolation scenario: N extensions x K calls, the first extension is the stalled/crashed one."""
    ids = settings.extension_ids()
    target = ids[0]
    extensions = [ExtensionPlan(extension) for extension in ids]
    if spec.stall:
        extensions[0] = ExtensionPlan(target, STALL_APP, {"stall_seconds": settings.stall_seconds,
                                                         "stall_every": settings.stall_every})
    folder = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=workdir))
    gateway = _gateway(spec.gateway, folder, extensions, settings)
    began = time.monotonic()
    try:
        gateway.start()
        plan = plan_calls(gateway.ports, settings.calls_per_extension, "split")
        def crash_midway(calls_up: float) -> dict[str, Any]:
            return _crash(gateway, target, calls_up + settings.seconds / 2)

        def freeze_while_up(calls_up: float) -> dict[str, Any]:
            # calls_up - spread: the first call's start; stop while every call of the run is up.
            return _freeze(gateway, target, calls_up, calls_up - spread_seconds(len(plan)) + settings.seconds,
                           settings)

        during = crash_midway if spec.crash else freeze_while_up if spec.sigstop else None
        load = run_load(gateway, plan, settings.seconds, folder, settings, target, during)
        if not gateway.alive():
            raise BenchError(f"{gateway.kind} died during {spec.name}:\n{gateway.log()[-3000:]}")
    except GatewayError as error:
        raise BenchError(str(error)) from None
    finally:
        gateway.stop()
    groups = split_groups(load.outcomes, target)
    role = "stalled" if spec.stall else "frozen" if spec.sigstop else "crashed" if spec.crash else "first"
    summary: dict[str, Any] = {
        "name": spec.name,
        "description": spec.description,
        "gateway": spec.gateway,
        "target_extension": target,
        "stall": ({"extension": target, "seconds": settings.stall_seconds, "every": settings.stall_every,
                   "kind": "sigstop" if spec.sigstop else "time.sleep"}
                  if spec.stall or spec.sigstop else None),
        "extensions": settings.extensions,
        "calls_per_extension": settings.calls_per_extension,
        "seconds": settings.seconds,
        "load_processes": load.load_processes,
        "groups": {
            "target": {"label": f"{role} extension {target}", **group_summary(groups["target"], settings.seconds)},
            "others": {"label": f"other {len(ids) - 1} extensions", **group_summary(groups["others"], settings.seconds)},
        },
        "resources": _resources(load.sampler),
        "machine": load.machine,
        "wall_seconds": time.monotonic() - began,
    }
    if spec.crash:
        crash = dict(load.during)
        if crash.get("killed_at"):
            crash["killed_at_s"] = crash.pop("killed_at") - load.start_at
        summary["crash"] = crash
    if spec.sigstop:
        freeze = dict(load.during)
        stops = freeze.pop("stops_at", [])
        freeze["stops_at_s"] = [at - load.start_at for at in stops]
        freeze["stops"] = len(stops)
        summary["freeze"] = freeze
    if spec.stall or spec.sigstop:
        # SIGCONT times where the benchmark sent them; for time.sleep, where the stalled calls' audio came back.
        resumes = ([at + length / 1000.0 for at, length in zip(stops, summary["freeze"]["stopped_ms"])]
                   if spec.sigstop else resume_instants(groups["target"], settings.seconds))
        summary["after_resume"] = after_resume(groups["others"], resumes, settings.seconds)
    duration = spread_seconds(len(plan)) + settings.seconds + 0.2
    return ScenarioResult(summary, load.outcomes, load.start_at, duration)


def capacity_steps(settings: BenchSettings) -> list[int]:
    """Total call counts to try, rounded up to a whole number of calls per extension."""
    steps: list[int] = []
    count = settings.capacity_start
    while count <= settings.capacity_max:
        per_extension = max(1, math.ceil(count / settings.extensions))
        total = per_extension * settings.extensions
        if not steps or total > steps[-1]:
            steps.append(total)
        count += settings.capacity_step
    return steps


def _worker_max_send_gap(records: list[LegRecord]) -> float | None:
    """Largest gap between two writes of one leg, over these legs' records."""
    gaps = worker_legs(records).get("max_send_gap_ms")
    return gaps["max"] if gaps else None


def run_capacity(settings: BenchSettings, workdir: Path, log: Callable[[str], None] = lambda line: None,
                 ) -> ScenarioResult:
    """Raise the call count (ia legs, echo, tone both ways) until a step does not hold; one supervisor throughout."""
    ids = settings.extension_ids()
    folder = Path(tempfile.mkdtemp(prefix="capacity-", dir=workdir))
    gateway = _gateway("supervisor", folder, [ExtensionPlan(extension) for extension in ids], settings)
    steps: list[dict[str, Any]] = []
    began = time.monotonic()
    try:
        gateway.start()
        for total in capacity_steps(settings):
            plan = plan_calls(gateway.ports, total // settings.extensions, "ia")
            legs_before = {(record.uuid, record.leg) for record in gateway.leg_records()}
            load = run_load(gateway, plan, settings.capacity_seconds, folder, settings, target="")
            if not gateway.alive():
                raise BenchError(f"supervisor died during capacity at {total} calls:\n{gateway.log()[-3000:]}")
            summary = group_summary(load.outcomes, settings.capacity_seconds)
            resources = _resources(load.sampler)
            step = {"calls": total, "calls_per_extension": total // settings.extensions,
                    "load_processes": load.load_processes, **summary,
                    "gateway_cpu_percent": resources.get("gateway", {}).get("cpu_percent", 0.0),
                    "gateway_rss_mb": resources.get("gateway", {}).get("rss_mb", 0.0),
                    "load_cpu_percent": resources.get("load", {}).get("cpu_percent", 0.0),
                    "machine_outside_bench_percent": resources.get("machine", {}).get("outside_bench_percent"),
                    "machine_max_late_ms": load.machine["max_late_ms"],
                    "machine_late_over_20ms": load.machine["late_over_20ms"],
                    # The workers' own view (their leg records: time between their own
                    # writes), which the load client's lag cannot touch.
                    "worker_max_send_gap_ms": _worker_max_send_gap(
                        [record for record in gateway.leg_records() if (record.uuid, record.leg) not in legs_before])}
            step["held"] = capacity_held(step)
            steps.append(step)
            log(f"  capacity {total} calls: p99 {step['p99_deviation_ms']:.3f} ms, gaps>40ms {step['gaps_over_40ms']}, "
                f"completed {step['completed']}/{total}, client lag (merged frames) {step['merged_frames']}, gateway CPU {step['gateway_cpu_percent']:.0f} %, "
                f"load CPU {step['load_cpu_percent']:.0f} %, workers' own largest send gap "
                f"{step['worker_max_send_gap_ms'] if step['worker_max_send_gap_ms'] is not None else '?'} ms "
                f"-> {'held' if step['held'] else 'did not hold'}")
            if not step["held"]:
                break
            time.sleep(0.5)  # let the last hangups settle before the next step
    except GatewayError as error:
        raise BenchError(str(error)) from None
    finally:
        gateway.stop()
    summary = {"name": CAPACITY, "description": "the real supervisor, call count raised until a step does not hold",
               "extensions": settings.extensions, "seconds": settings.capacity_seconds, "legs": "ia",
               "steps": steps, **capacity_verdict(steps), "wall_seconds": time.monotonic() - began}
    return ScenarioResult(summary)

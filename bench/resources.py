"""CPU and memory of the processes a benchmark runs, sampled with psutil in a thread.

Processes come and go during a run (a killed worker and its replacement), so
the sampler asks a callable for the current pid -> label map at every sample
and keeps, per pid, the CPU time used while it was watched and its largest
RSS. The figures are summed per label afterwards (``stats.resource_summary``).
"""
from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _busy(times: Any) -> float:
    """Seconds the CPUs ran anything (guest time is inside user time; steal is the hypervisor's, not ours)."""
    return (times.user + getattr(times, "nice", 0.0) + times.system + getattr(times, "irq", 0.0)
            + getattr(times, "softirq", 0.0))


def _interrupts(times: Any) -> float:
    return getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)


class ResourceSampler(threading.Thread):
    """Samples every ``interval`` seconds until :meth:`finish`; never raises for vanished processes."""

    def __init__(self, labeller: Callable[[], dict[int, str]], interval: float = 0.5) -> None:
        super().__init__(name="bench-resources", daemon=True)
        self.labeller = labeller
        self.interval = interval
        self.stop_event = threading.Event()
        self.started_wall = time.time()
        self.started_at = time.monotonic()
        self.wall_seconds = 0.0
        self.labels: dict[int, str] = {}
        self.first_cpu: dict[int, float] = {}
        self.last_cpu: dict[int, float] = {}
        self.max_rss: dict[int, int] = {}
        self.uss: dict[int, int] = {}
        self._processes: dict[int, psutil.Process] = {}
        self.machine_busy_seconds = 0.0  # every process on the machine, all cores
        self.machine_interrupt_seconds = 0.0  # irq + softirq (loopback TCP lands here), in no process's times
        self.machine_steal_seconds = 0.0  # CPU the hypervisor gave to someone else
        self._machine_before = psutil.cpu_times()
        self.sample()  # the baseline: CPU already used before the run does not count

    def sample(self) -> None:
        try:
            current = self.labeller()
        except Exception:  # noqa: BLE001 - a failed lookup skips one sample, not the run
            return
        for pid, label in current.items():
            process = self._processes.get(pid)
            try:
                if process is None:
                    process = self._processes[pid] = psutil.Process(pid)
                    # A process born during the run: all its CPU time is the run's.
                    born_during = process.create_time() >= self.started_wall
                    self.first_cpu[pid] = 0.0 if born_during else _cpu_seconds(process)
                cpu = _cpu_seconds(process)
                rss = process.memory_info().rss
            except psutil.Error:
                continue
            self.labels[pid] = label
            self.last_cpu[pid] = cpu
            self.max_rss[pid] = max(rss, self.max_rss.get(pid, 0))

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()

    def finish(self, measure_uss: bool = True) -> None:
        """Stop sampling; take the last sample and (optionally) each live process's USS."""
        self.stop_event.set()
        if self.is_alive():
            self.join(5)
        self.sample()
        self.wall_seconds = time.monotonic() - self.started_at
        after = psutil.cpu_times()
        self.machine_busy_seconds = _busy(after) - _busy(self._machine_before)
        self.machine_interrupt_seconds = _interrupts(after) - _interrupts(self._machine_before)
        self.machine_steal_seconds = getattr(after, "steal", 0.0) - getattr(self._machine_before, "steal", 0.0)
        if measure_uss:
            for pid, process in self._processes.items():
                try:
                    if process.is_running():
                        self.uss[pid] = process.memory_full_info().uss
                except psutil.Error:
                    pass

    def cpu_seconds(self) -> dict[int, float]:
        """CPU seconds each watched process used while watched."""
        return {pid: self.last_cpu[pid] - self.first_cpu.get(pid, 0.0) for pid in self.last_cpu}


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants alive now."""
    try:
        root = psutil.Process(root_pid)
        return [root_pid] + [child.pid for child in root.children(recursive=True)]
    except psutil.Error:
        return []


# --------------------------------------------------------------------------
# Scheduling probe: how late does an idle process wake up on this machine?
# --------------------------------------------------------------------------
PROBE_PERIOD = 0.005
PROBE_REPORT_MS = 10.0


def run_probe(period: float = PROBE_PERIOD) -> dict[str, Any]:
    """Sleep ``period`` in a loop until stdin closes; return how late the wake-ups came.

    A process that does nothing but sleep should wake on time. When it does
    not, the machine itself (hypervisor, kernel, other tenants) held
    everything up, and any gap the bench saw at that moment is not the
    gateway's doing. The bench runs this alongside every scenario.
    """
    wakeups = 0
    late: list[float] = []
    events: list[list[float]] = []
    stdin = sys.stdin.fileno()
    while True:
        began = time.monotonic()
        readable, _, _ = select.select([stdin], [], [], period)
        if readable and not os.read(stdin, 4096):
            break
        lateness_ms = (time.monotonic() - began - period) * 1000.0
        wakeups += 1
        if lateness_ms > 1.0:
            late.append(lateness_ms)
        if lateness_ms > PROBE_REPORT_MS:
            events.append([time.time() - lateness_ms / 1000.0 - period, lateness_ms])
    return {"wakeups": wakeups, "max_late_ms": max(late, default=0.0),
            "late_over_10ms": sum(1 for value in late if value > 10.0),
            "late_over_20ms": sum(1 for value in late if value > 20.0), "events": events}


class SchedulingProbe:
    """The probe as a subprocess (exec, never fork): start it, then :meth:`finish` for its figures."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "audiogw.bench.resources", "--probe"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def finish(self) -> dict[str, Any]:
        try:
            out, _ = self.process.communicate(b"", timeout=10)
            return json.loads(out)
        except (subprocess.TimeoutExpired, ValueError):
            self.process.kill()
            self.process.wait()
            return {"wakeups": 0, "max_late_ms": None, "late_over_10ms": None, "late_over_20ms": None, "events": []}


if __name__ == "__main__" and sys.argv[1:] == ["--probe"]:
    print(json.dumps(run_probe()), flush=True)

"""`audiogw bench-asterisk`: audiogw's clock beside a real Asterisk, against Asterisk's own.

One run starts a private Asterisk (``client/asterisk.py``) and, per mode, a real
supervisor on the *default* config plus the extensions the run needs (``MODES``:
as this user, as an unprivileged user, or with real-time turned off), then:

- **relay N** (N = 1, 100, 200): N audiogw ``playback`` calls and, at the same
  time, N calls of Asterisk's own ``Milliwatt()``, each relayed by Asterisk's
  ``AudioSocket()`` app to a timestamping receiver (``bench_asterisk_receiver``,
  kernel receive timestamps). Each call is a Local channel pair::

      Local/UUID@bench-gw-EXT/n   ;2 Answer(), AudioSocket(UUID, audiogw ia port)
      Local/UUID@bench-mw/n       ;2 Answer(), Milliwatt()
      ;1 (both) -> UUID@bench-recv: AudioSocket(UUID, receiver)

  Reported per source: p99 deviation of the inter-arrival from 20 ms, gaps
  over 40 ms, frames received vs expected (and, for audiogw, vs what the
  workers say they sent), the p99 ratio audiogw / Milliwatt, and the CPU (and
  run-queue wait) of the workers, Asterisk and the receivers over the window.
- **echo N** (N = 200): Asterisk's Milliwatt on ;1, audiogw ``echo`` on ;2;
  the workers' frames sent / received (``ctl status``) and each call's largest
  send gap as the worker logs it at leg end (``max_send_gap_ms=``).

Asterisk and the supervisor each start in a session of their own, as two
services would (so the kernel's autogroup scheduling treats them as two, as it
does on a real host); the report says which autogroup each process was in.

    audiogw bench-asterisk [--quick] [--modes default,unprivileged,normal] [--results DIR]
    python -m audiogw.bench.asterisk ...      (the same command)
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy
import psutil

from audiogw.bench.asterisk_ami import Ami
from audiogw.bench.asterisk_receiver import load as load_receiver
from audiogw.bench.gateway import LEG_RECORDS_FOLDER
from audiogw.bench.resources import SchedulingProbe, process_tree
from audiogw.client.asterisk import AsteriskError, PrivateAsterisk, find_asterisk
from audiogw.client.ctl import request
from audiogw.shared.net import free_port_block
from audiogw.shared.pacing import FRAME_PERIOD, GAP_THRESHOLD, pacing_stats_many, window_arrivals
from audiogw.shared.records import LegRecord, read_leg_records_folder
from audiogw.shared.wav import tone, write_wav

REALTIME_PRIORITY = 10  # as `asterisk -p`
RECEIVER_PRIORITY = REALTIME_PRIORITY + 1  # the instrument reads before anything it measures
# How the gateway runs. default: the default config, as the invoking user (real-time where
# permitted: for root, or a service user with the shipped unit's LimitRTPRIO=10, since the
# kernel's rule is CAP_SYS_NICE or RLIMIT_RTPRIO); unprivileged: an unprivileged user's
# scheduling rights (no CAP_SYS_NICE, RLIMIT_RTPRIO 0: real-time refused, so normal priority,
# each worker in its own autogroup); normal: realtime_priority = 0 (the default before
# 2026-12-01, for comparison). The uid stays: the right to real-time is exactly the capability
# and the limit (and a Python installed under a 0700 home can't run as another user).
MODES = ("default", "unprivileged", "normal")
AS_USER = {"unprivileged": ["prlimit", "--rtprio=0:0", "setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice"]}
AMI_USER, AMI_SECRET = "bench", "bench"
P99_RATIO_TARGET = 1.05
ECHO_SENT_TARGET = 0.99
ECHO_GAP_TARGET_MS = 25.0
QUICK_LIMIT_SECONDS = 60.0
FULL_LIMIT_SECONDS = 600.0


@dataclass(frozen=True)
class Settings:
    relay_calls: tuple[int, ...] = (1, 100, 200)
    echo_calls: int = 200
    seconds: float = 20.0  # measurement window of each scenario
    settle: float = 1.5  # after the last originate, before the window opens
    playback_extensions: int = 10
    echo_extensions: int = 10
    calls_per_receiver: int = 100
    originate_spacing: float = 0.005  # seconds between two originates (no connect storm)
    # The receivers are the instrument: a receiver that reads late merges frames under one
    # kernel timestamp (a 0 ms interval beside a long one) and its figures mean nothing. So
    # they run SCHED_RR one above the workers' priority by default (--receiver-normal: not).
    receiver_realtime: bool = True
    asterisk_realtime: bool = False


QUICK = Settings(relay_calls=(2,), echo_calls=2, seconds=2.0, settle=1.0, playback_extensions=2, echo_extensions=2)


class BenchError(RuntimeError):
    """The benchmark itself broke (a process failed to start, calls never came up)."""


# --------------------------------------------------------------------------
# The gateway: a real supervisor, default config plus the bench's extensions
# --------------------------------------------------------------------------
def write_config(folder: Path, base_port: int, settings: Settings, wav: Path,
                 realtime_priority: int | None) -> tuple[Path, dict[str, int]]:
    """A config that leaves every default alone but the addresses a private run needs.

    ``control``, ``metrics`` and ``state_dir`` point into ``folder`` (the defaults
    would collide with a supervisor already running on this host), the ports are
    a free block, and ``realtime_priority`` (None: the default) is set only when given.
    """
    extensions = [(f"13{index + 1:02d}", "playback") for index in range(settings.playback_extensions)]
    extensions += [(f"14{index + 1:02d}", "echo") for index in range(settings.echo_extensions)]
    lines = ["[supervisor]", f'control = "ipc://{folder}/run/control.sock"', 'metrics = "127.0.0.1:0"',
             f'state_dir = "{folder}/state"', f'leg_records = "{folder}/{LEG_RECORDS_FOLDER}"', "[audiosocket]",
             f"port_range = [{base_port}, {base_port + 2 * len(extensions) - 1}]"]
    if realtime_priority is not None:
        lines.append(f"realtime_priority = {realtime_priority}")
    ports = {}
    for index, (ext, app) in enumerate(extensions):
        ports[ext] = base_port + 2 * index
        lines += ["[[extension]]", f'id = "{ext}"', f'app = "{app}"', f"ia_port = {base_port + 2 * index}",
                  f"retorno_port = {base_port + 2 * index + 1}"]
        if app == "playback":
            lines.append(f'options = {{ file = "{wav}", loop = true }}')
    (folder / "run").mkdir(parents=True, exist_ok=True)
    path = folder / "audiogw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, ports


class Supervisor:
    """``audiogw-supervisor start`` in a session of its own (as a service runs), logs to a file."""

    def __init__(self, folder: Path, config: Path, as_user: list[str] | None = None) -> None:
        self.folder = folder
        self.config = config
        self.as_user = as_user or []
        self.endpoint = f"ipc://{folder}/run/control.sock"
        self.log_path = folder / "supervisor.log"
        self.process: subprocess.Popen | None = None

    def start(self, extensions: int, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.as_user, sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start",
                 "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.folder, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise BenchError(f"supervisor exited {self.process.returncode}:\n{self.log()[-3000:]}")
            try:
                rows = self.call("list", timeout=1.0)
                if len(rows) == extensions and all(row["state"] == "running" for row in rows):
                    return
            except Exception:  # noqa: BLE001 - not answering yet
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"supervisor not serving within {timeout:g} s:\n{self.log()[-3000:]}")
            time.sleep(0.1)

    def call(self, command: str, timeout: float = 5.0) -> Any:
        return request(self.endpoint, command, {}, timeout=timeout)

    def workers(self) -> dict[int, str]:
        """pid -> extension of every running worker."""
        return {row["pid"]: row["id"] for row in self.call("list") if row.get("pid")}

    def counters(self) -> dict[str, dict[str, int]]:
        """extension -> frames_received / frames_sent (over every incarnation), from ``ctl status``."""
        return {row["id"]: {"frames_received": row["frames_received"], "frames_sent": row["frames_sent"]}
                for row in self.call("status")}

    def restarts(self) -> dict[str, int]:
        """extension -> worker restarts so far, from ``ctl status``."""
        return {row["id"]: row["restarts"] for row in self.call("status")}

    def settled_counters(self, interval: float = 1.2, attempts: int = 4) -> dict[str, dict[str, int]]:
        """Counters once they stop moving: workers report them with their heartbeat (default every 1 s)."""
        previous = self.counters()
        for _ in range(attempts):
            time.sleep(interval)
            current = self.counters()
            if current == previous:
                break
            previous = current
        return previous

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            for pid in reversed(process_tree(self.process.pid)):
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            self.process.wait()


# --------------------------------------------------------------------------
# Asterisk
# --------------------------------------------------------------------------
def dialplan(receiver_port: int, ports: dict[str, int], limit_seconds: float) -> str:
    """Contexts for both sources, audiogw's per extension, and the receiver."""
    pattern = "_[0-9a-f]."
    limit = int(limit_seconds)
    lines = ["[general]", "[globals]", "", "[bench-recv]",
             f"exten => {pattern},1,Set(TIMEOUT(absolute)={limit})",
             f" same => n,AudioSocket(${{EXTEN}},127.0.0.1:{receiver_port})", " same => n,Hangup()", "",
             "[bench-mw]", f"exten => {pattern},1,Set(TIMEOUT(absolute)={limit})", " same => n,Answer()",
             " same => n,Milliwatt()", " same => n,Hangup()", "",
             "[bench-mw-src]", f"exten => {pattern},1,Set(TIMEOUT(absolute)={limit})",
             " same => n,Milliwatt()", " same => n,Hangup()", ""]
    for ext, port in ports.items():
        lines += [f"[bench-gw-{ext}]", f"exten => {pattern},1,Set(TIMEOUT(absolute)={limit})",
                  " same => n,Answer()", f" same => n,AudioSocket(${{EXTEN}},127.0.0.1:{port})",
                  " same => n,Hangup()", ""]
    return "\n".join(lines) + "\n"


MANAGER_CONF = ("[general]\nenabled = yes\nport = {ami_port}\nbindaddr = 127.0.0.1\n\n"
                f"[{AMI_USER}]\nsecret = {AMI_SECRET}\nread = all\nwrite = all\n")


def make_realtime(pid: int, priority: int) -> None:
    """SCHED_RR for every thread of ``pid`` (what ``asterisk -p`` does at start; new threads inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setscheduler(int(tid), os.SCHED_RR, os.sched_param(priority))
        except OSError:
            pass


def hang_up_all(asterisk: PrivateAsterisk, timeout: float = 30.0) -> bool:
    """Hang every call up; False if channels are still up after ``timeout`` (a starved Asterisk is slow to answer its CLI)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            asterisk.cli("channel request hangup all", timeout=max(1.0, deadline - time.monotonic()))
            return asterisk.wait_no_channels(max(1.0, deadline - time.monotonic()))
        except AsteriskError:
            time.sleep(0.5)
    return False


# --------------------------------------------------------------------------
# Receivers
# --------------------------------------------------------------------------
class Receivers:
    """``count`` receiver processes sharing ``port``."""

    def __init__(self, folder: Path, port: int, count: int, realtime: bool) -> None:
        self.outs = [folder / f"receiver-{index}.npz" for index in range(count)]
        command = [sys.executable, "-m", "audiogw.bench.asterisk_receiver", "--port", str(port)]
        if realtime:
            command += ["--realtime-priority", str(RECEIVER_PRIORITY)]
        self.processes = [subprocess.Popen(command + ["--out", str(out)], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, start_new_session=True) for out in self.outs]
        for process in self.processes:
            line = process.stdout.readline()
            if line.strip() != b"ready":
                self.finish()
                raise BenchError(f"receiver did not start (said {line!r})")

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def finish(self) -> list[dict[str, Any]]:
        """Close every call, collect every receiver's calls."""
        for process in self.processes:
            try:
                process.stdin.close()
            except OSError:
                pass
        calls: list[dict[str, Any]] = []
        for process, out in zip(self.processes, self.outs):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
            if out.exists():
                calls += load_receiver(out)
        return calls


# --------------------------------------------------------------------------
# CPU and run-queue wait over the window
# --------------------------------------------------------------------------
def _schedstat(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds waiting for one) summed over the threads alive now."""
    run = wait = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as handle:
                fields = handle.read().split()
            run += int(fields[0])
            wait += int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    return run / 1e9, wait / 1e9


def snapshot(groups: dict[str, list[int]]) -> dict[str, dict[int, tuple[float, float, float]]]:
    """group -> pid -> (psutil CPU seconds, schedstat run, schedstat wait)."""
    result: dict[str, dict[int, tuple[float, float, float]]] = {}
    for group, pids in groups.items():
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
            except psutil.Error:
                continue
            run, wait = _schedstat(pid)
            result.setdefault(group, {})[pid] = (times.user + times.system, run, wait)
    return result


def cpu_summary(before: dict, after: dict, wall: float) -> dict[str, dict[str, float]]:
    """Per group: CPU % of one core (psutil) and ms per second spent waiting for a CPU (schedstat)."""
    summary = {}
    for group, pids in after.items():
        cpu = wait = 0.0
        for pid, (cpu_after, _run, wait_after) in pids.items():
            cpu_before, _, wait_before = before.get(group, {}).get(pid, (cpu_after, 0.0, wait_after))
            cpu += cpu_after - cpu_before
            wait += max(0.0, wait_after - wait_before)
        summary[group] = {"processes": len(pids), "cpu_percent": 100.0 * cpu / wall,
                          "runqueue_wait_ms_per_s": 1000.0 * wait / wall}
    return summary


def machine_busy() -> float:
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)


def scheduling_of(pid: int) -> dict[str, Any]:
    """Policy, RR priority and autogroup of one process (the autogroup decides CFS shares)."""
    info: dict[str, Any] = {"pid": pid}
    try:
        policy = os.sched_getscheduler(pid)
        info["policy"] = {os.SCHED_OTHER: "other", os.SCHED_RR: "rr", os.SCHED_FIFO: "fifo"}.get(policy, str(policy))
        info["rtprio"] = os.sched_getparam(pid).sched_priority
        info["session"] = os.getsid(pid)
    except OSError:
        pass
    try:
        info["autogroup"] = Path(f"/proc/{pid}/autogroup").read_text().strip()
    except OSError:
        info["autogroup"] = None
    return info


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------
def source_summary(calls: list[dict[str, Any]], planned: int, start: float, seconds: float) -> dict[str, Any]:
    """Pacing of one source's calls inside the common window [start, start + seconds]."""
    windows = [window_arrivals(call["arrivals"], start, seconds) for call in calls]
    pacing = pacing_stats_many(windows, FRAME_PERIOD, GAP_THRESHOLD)
    per_call = int(round(seconds / FRAME_PERIOD))
    return {
        "calls_planned": planned,
        "calls_connected": len(calls),
        "frames_expected_in_window": per_call * planned,
        "frames_received_in_window": int(sum(window.size for window in windows)),
        "frames_received_total": int(sum(call["arrivals"].size for call in calls)),
        "p50_deviation_ms": pacing.p50_deviation_ms,
        "p99_deviation_ms": pacing.p99_deviation_ms,
        "max_gap_ms": pacing.max_gap_ms,
        "gaps_over_40ms": pacing.gaps_over_40ms,
        # receiver lag: frames the kernel merged under one timestamp because the receiver read late
        "merged_frames": int(sum(numpy.count_nonzero(numpy.diff(window) == 0.0) for window in windows)),
        "late_reads": int(sum(call["late_reads"] for call in calls)),
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"min": ordered[0], "median": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "max": ordered[-1]}


# --------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------
@dataclass
class Run:
    """What the scenarios of one mode share."""

    asterisk: PrivateAsterisk
    supervisor: Supervisor
    settings: Settings
    folder: Path
    receiver_port: int
    playback: list[str]
    echo: list[str]
    progress: Any = print
    restarts_before: dict[str, int] = field(default_factory=dict)  # ctl status restarts at the scenario's start
    groups: dict[str, list[int]] = field(default_factory=dict)


def _originate_all(run: Run, plan: list[tuple[str, str, str]]) -> list[str]:
    """``plan``: (channel, context, exten); spaced so Asterisk never sees a connect storm."""
    ami = Ami(run.asterisk.ami_port, AMI_USER, AMI_SECRET)
    try:
        began = time.monotonic()
        for index, (channel, context, exten) in enumerate(plan):
            wait = began + index * run.settings.originate_spacing - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            ami.originate(channel, context, exten)
        return ami.replies()
    finally:
        ami.close()


def _window(run: Run, groups: dict[str, list[int]]) -> dict[str, Any]:
    """Sleep through the measurement window, measuring CPU, run-queue wait and the host's wake-up lateness."""
    probe = SchedulingProbe()
    start = time.time()
    began = time.monotonic()
    busy_before = machine_busy()
    before = snapshot(groups)
    time.sleep(run.settings.seconds)
    after = snapshot(groups)
    wall = time.monotonic() - began
    busy = machine_busy() - busy_before
    host = probe.finish()
    host.pop("events", None)
    cpu = cpu_summary(before, after, wall)
    ours = sum(group["cpu_percent"] for group in cpu.values())
    return {"start": start, "wall": wall, "cpu": cpu, "machine_cpu_percent": 100.0 * busy / wall,
            # everything else on the host: kernel (loopback softirq), the bench itself, other users' loads
            "rest_of_host_cpu_percent": 100.0 * busy / wall - ours, "host_wakeups": host}


def _groups(run: Run, extra: dict[str, list[int]]) -> dict[str, list[int]]:
    workers = run.supervisor.workers()
    playback = [pid for pid, ext in workers.items() if ext in run.playback]
    echo = [pid for pid, ext in workers.items() if ext in run.echo]
    supervisor = [pid for pid in process_tree(run.supervisor.process.pid) if pid not in workers]
    return {"workers_playback": playback, "workers_echo": echo, "supervisor": supervisor,
            "asterisk": [run.asterisk.process.pid], **extra}


def _wait_legs(run: Run, uuids: set[str], timeout: float = 30.0) -> list[dict[str, Any]]:
    """The leg records of this scenario's calls (a worker killed mid-call records none for its legs)."""
    began = time.monotonic()
    while True:
        # with a worker killed its legs never record: give the others a few seconds, not the whole timeout
        limit = 8.0 if _restarts(run) else timeout
        extensions = set(run.playback) | set(run.echo)
        legs = [leg for leg in read_leg_records_folder(run.supervisor.folder / LEG_RECORDS_FOLDER)
                if leg.uuid in uuids and leg.extension in extensions]
        if len(legs) >= len(uuids) or time.monotonic() - began > limit:
            return legs
        time.sleep(0.2)


def _restarts(run: Run) -> dict[str, int]:
    """Workers the supervisor restarted during this scenario (killed when hung, or crashed), by extension, from ``ctl status``."""
    now = run.supervisor.restarts()
    return {extension: count - run.restarts_before.get(extension, 0)
            for extension, count in sorted(now.items()) if count > run.restarts_before.get(extension, 0)}


def _legs_summary(legs: list[LegRecord], calls: int) -> dict[str, Any]:
    return {"legs_logged": len(legs), "legs_expected": calls,
            "frames_in": sum(leg.frames_received for leg in legs), "frames_out": sum(leg.frames_sent for leg in legs),
            "max_send_gap_ms": _spread([leg.max_send_gap_ms for leg in legs]),
            "end_reasons": dict(sorted(Counter(leg.reason for leg in legs).items()))}


def relay(run: Run, calls: int) -> dict[str, Any]:
    """N audiogw playback calls beside N Milliwatt calls, both relayed by Asterisk to the receivers."""
    settings = run.settings
    run.restarts_before = run.supervisor.restarts()
    before = run.supervisor.counters()
    count = max(1, -(-2 * calls // settings.calls_per_receiver))
    receivers = Receivers(run.folder, run.receiver_port, count, settings.receiver_realtime)
    sources: dict[str, str] = {}
    plan = []
    for index in range(calls):
        gw, mw = str(uuid.uuid4()), str(uuid.uuid4())
        sources[gw], sources[mw] = "audiogw", "milliwatt"
        ext = run.playback[index % len(run.playback)]
        plan.append((f"Local/{gw}@bench-gw-{ext}/n", "bench-recv", gw))
        plan.append((f"Local/{mw}@bench-mw/n", "bench-recv", mw))
    errors = _originate_all(run, plan)
    time.sleep(settings.settle)
    window = _window(run, _groups(run, {"receivers": receivers.pids}))
    drained = hang_up_all(run.asterisk)
    received = receivers.finish()
    legs = _wait_legs(run, {key for key, value in sources.items() if value == "audiogw"})
    after = run.supervisor.settled_counters()
    by_source: dict[str, list[dict[str, Any]]] = {"audiogw": [], "milliwatt": []}
    unknown = 0
    for call in received:
        source = sources.get(call["uuid"] or "")
        if source is None:
            unknown += 1
        else:
            by_source[source].append(call)
    summary = {name: source_summary(items, calls, window["start"], settings.seconds)
               for name, items in by_source.items()}
    workers = _legs_summary(legs, calls)
    summary["audiogw"]["frames_sent_by_workers"] = workers["frames_out"]  # by the legs that logged their end
    summary["audiogw"]["frames_sent_status_delta"] = sum(after[ext]["frames_sent"] - before[ext]["frames_sent"]
                                                         for ext in run.playback)
    gw, mw = summary["audiogw"]["p99_deviation_ms"], summary["milliwatt"]["p99_deviation_ms"]
    return {
        "scenario": "relay", "calls": calls, "sources": summary,
        "p99_ratio": gw / mw if mw > 0 else None,
        "worker_max_send_gap_ms": workers["max_send_gap_ms"], "worker_legs": workers,
        "worker_restarts": _restarts(run),
        "window": {key: value for key, value in window.items() if key != "start"},
        "receivers": count, "originate_errors": errors[:5], "originate_error_count": len(errors),
        "unknown_calls": unknown, "asterisk_drained": drained,
    }


def echo(run: Run, calls: int) -> dict[str, Any]:
    """N calls of Asterisk's Milliwatt into audiogw echo: what the workers sent back, and their own send gaps."""
    settings = run.settings
    run.restarts_before = run.supervisor.restarts()
    before = run.supervisor.counters()
    plan = []
    uuids = set()
    for index in range(calls):
        call_id = str(uuid.uuid4())
        uuids.add(call_id)
        ext = run.echo[index % len(run.echo)]
        plan.append((f"Local/{call_id}@bench-gw-{ext}/n", "bench-mw-src", call_id))
    errors = _originate_all(run, plan)
    time.sleep(settings.settle)
    window = _window(run, _groups(run, {}))
    drained = hang_up_all(run.asterisk)
    legs = _wait_legs(run, uuids)
    after = run.supervisor.settled_counters()
    workers = _legs_summary(legs, calls)
    # Per call, from the workers' own leg-end lines; a killed worker's legs are missing
    # there, so the status counters (every incarnation, via heartbeats) are kept beside them.
    received, sent = workers["frames_in"], workers["frames_out"]
    return {
        "scenario": "echo", "calls": calls, "legs_logged": len(legs),
        "frames_received_by_workers": received, "frames_sent_by_workers": sent,
        "sent_over_received": sent / received if received else None,
        "status_delta": {"frames_received": sum(after[ext]["frames_received"] - before[ext]["frames_received"]
                                                for ext in run.echo),
                         "frames_sent": sum(after[ext]["frames_sent"] - before[ext]["frames_sent"] for ext in run.echo)},
        "frames_expected_per_call": int(round(settings.seconds / FRAME_PERIOD)),
        "worker_max_send_gap_ms": workers["max_send_gap_ms"],
        "leg_end_reasons": workers["end_reasons"], "worker_restarts": _restarts(run),
        "window": {key: value for key, value in window.items() if key != "start"},
        "originate_errors": errors[:5], "originate_error_count": len(errors), "asterisk_drained": drained,
    }


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------
def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent.parent, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def code_version() -> dict[str, Any]:
    """The commit, and the uncommitted changes under the product's folders (they ran too)."""
    changed = [line[3:] for line in _git("status", "--porcelain", "--", "worker", "supervisor", "shared").splitlines()]
    diff = _git("diff", "HEAD", "--", "worker", "supervisor", "shared")
    import hashlib

    return {"head": _git("rev-parse", "HEAD"), "uncommitted_product_files": changed,
            "uncommitted_diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff else None}


def run_mode(mode: str, asterisk: PrivateAsterisk, settings: Settings, folder: Path, base_port: int,
             receiver_port: int, wav: Path, progress: Any) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    config, ports = write_config(folder, base_port, settings, wav, realtime_priority=0 if mode == "normal" else None)
    supervisor = Supervisor(folder, config, AS_USER.get(mode))
    began = time.monotonic()
    supervisor.start(len(ports))
    result: dict[str, Any] = {"mode": mode, "scenarios": []}
    try:
        workers = supervisor.workers()
        policies = {os.sched_getscheduler(pid) for pid in workers}
        granted = mode == "default" and os.geteuid() == 0
        expected = os.SCHED_RR if granted else os.SCHED_OTHER
        if policies != {expected}:
            raise BenchError(f"mode {mode}: workers' scheduling policies are {sorted(policies)}, not what the mode "
                             "means; the run would be mislabelled")
        schedule = {"supervisor": scheduling_of(supervisor.process.pid),
                    "workers": [scheduling_of(pid) for pid in list(workers)[:3]],
                    "worker_autogroups": sorted({str(scheduling_of(pid).get("autogroup")) for pid in workers}),
                    "asterisk": scheduling_of(asterisk.process.pid), "bench": scheduling_of(os.getpid())}
        result["scheduling"] = schedule
        run = Run(asterisk, supervisor, settings, folder, receiver_port,
                  playback=[ext for ext in ports if ext.startswith("13")],
                  echo=[ext for ext in ports if ext.startswith("14")], progress=progress)
        for calls in settings.relay_calls:
            progress(f"bench-asterisk [{mode}]: relay {calls} + {calls} calls ...")
            scenario = relay(run, calls)
            result["scenarios"].append(scenario)
            gw, mw = scenario["sources"]["audiogw"], scenario["sources"]["milliwatt"]
            progress(f"  audiogw p99 {gw['p99_deviation_ms']:.2f} ms gaps {gw['gaps_over_40ms']}; milliwatt p99 "
                     f"{mw['p99_deviation_ms']:.2f} ms gaps {mw['gaps_over_40ms']}; ratio {_fmt(scenario['p99_ratio'])}")
        if settings.echo_calls:
            progress(f"bench-asterisk [{mode}]: echo {settings.echo_calls} calls ...")
            scenario = echo(run, settings.echo_calls)
            result["scenarios"].append(scenario)
            gap = scenario["worker_max_send_gap_ms"] or {}
            progress(f"  sent/received {_fmt(scenario['sent_over_received'], 4)}; worker max send gap median "
                     f"{_fmt(gap.get('median'), 1)} ms")
    finally:
        supervisor.stop()
        result["seconds"] = time.monotonic() - began
        errors = [line for line in supervisor.log().splitlines() if " ERROR " in line or "Traceback" in line]
        result["supervisor_errors"] = errors[:10]
    return result


def _fmt(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, for the default-config mode (real-time is reported beside it)."""
    found = []
    for mode in report["modes"]:
        label = mode["mode"]
        for scenario in mode["scenarios"]:
            if scenario["scenario"] == "relay" and scenario["calls"] >= 100:
                gw, mw = scenario["sources"]["audiogw"], scenario["sources"]["milliwatt"]
                ratio = scenario["p99_ratio"]
                found.append({"mode": label, "check": f"relay {scenario['calls']}+{scenario['calls']}: p99 audiogw / milliwatt",
                              "measured": _fmt(ratio), "target": f"<= {P99_RATIO_TARGET}",
                              "pass": ratio is not None and ratio <= P99_RATIO_TARGET})
                found.append({"mode": label, "check": f"relay {scenario['calls']}+{scenario['calls']}: gaps > 40 ms, audiogw vs milliwatt",
                              "measured": f"{gw['gaps_over_40ms']} vs {mw['gaps_over_40ms']}", "target": "audiogw <= milliwatt",
                              "pass": gw["gaps_over_40ms"] <= mw["gaps_over_40ms"]})
            if scenario["scenario"] == "echo" and scenario["calls"] >= 200:
                ratio = scenario["sent_over_received"]
                gap = (scenario["worker_max_send_gap_ms"] or {}).get("median")
                found.append({"mode": label, "check": f"echo {scenario['calls']}: frames sent back / received",
                              "measured": _fmt(ratio, 4), "target": f">= {ECHO_SENT_TARGET}",
                              "pass": ratio is not None and ratio >= ECHO_SENT_TARGET})
                found.append({"mode": label, "check": f"echo {scenario['calls']}: workers' own largest send gap, median per call",
                              "measured": f"{_fmt(gap, 1)} ms", "target": f"<= {ECHO_GAP_TARGET_MS:g} ms",
                              "pass": gap is not None and gap <= ECHO_GAP_TARGET_MS})
    return found


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# audiogw beside Asterisk ({report['asterisk_version']})", "",
             f"`{report['command']}` — commit `{report['code']['head'][:12]}`"
             + (f" + uncommitted changes in {len(report['code']['uncommitted_product_files'])} product files"
                if report["code"]["uncommitted_product_files"] else "")
             + f", {report['duration_seconds']:.0f} s, autogroup "
             f"{'on' if report['machine']['sched_autogroup_enabled'] == '1' else 'off'}, "
             f"{report['machine']['cpus']} CPUs, window {report['settings']['seconds']:g} s per scenario.", "",
             "## Relayed through Asterisk: audiogw playback beside Asterisk's own Milliwatt", "",
             "| mode | calls | source | p99 dev (ms) | max gap (ms) | gaps > 40 ms | frames recv / expected "
             "(window) | sent by workers / recv (whole calls) | receiver lag (merged) | p99 ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in report["modes"]:
        for scenario in mode["scenarios"]:
            if scenario["scenario"] != "relay":
                continue
            for name in ("audiogw", "milliwatt"):
                source = scenario["sources"][name]
                sent = (f"{source['frames_sent_by_workers']} / {source['frames_received_total']}"
                        if name == "audiogw" else "–")
                lines.append(f"| {mode['mode']} | {scenario['calls']}+{scenario['calls']} | {name} | "
                             f"{source['p99_deviation_ms']:.2f} | {source['max_gap_ms']:.1f} | {source['gaps_over_40ms']} | "
                             f"{source['frames_received_in_window']} / {source['frames_expected_in_window']} | {sent} | "
                             f"{source['merged_frames']} | {_fmt(scenario['p99_ratio']) if name == 'audiogw' else ''} |")
    lines += ["", "## Echo: Asterisk's Milliwatt into audiogw echo", "",
              "| mode | calls | frames sent / received by workers | ratio | workers' own largest send gap per call: "
              "median / p90 / max (ms) | legs logged |", "|---|---|---|---|---|---|"]
    for mode in report["modes"]:
        for scenario in mode["scenarios"]:
            if scenario["scenario"] != "echo":
                continue
            gap = scenario["worker_max_send_gap_ms"] or {}
            lines.append(f"| {mode['mode']} | {scenario['calls']} | {scenario['frames_sent_by_workers']} / "
                         f"{scenario['frames_received_by_workers']} | {_fmt(scenario['sent_over_received'], 4)} | "
                         f"{_fmt(gap.get('median'), 1)} / {_fmt(gap.get('p90'), 1)} / {_fmt(gap.get('max'), 1)} | "
                         f"{scenario['legs_logged']} / {scenario['calls']} |")
    lines += ["", "## CPU over each window (% of one core) and run-queue wait (ms per s)", "",
              "| mode | scenario | workers | Asterisk | receivers | supervisor | machine (rest) | workers' wait | "
              "Asterisk's wait | host wake-ups > 20 ms late | worker restarts (hung or crashed) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in report["modes"]:
        for scenario in mode["scenarios"]:
            cpu = scenario["window"]["cpu"]
            workers_key = "workers_playback" if scenario["scenario"] == "relay" else "workers_echo"
            worker = cpu.get(workers_key, {})

            def pct(group: str) -> str:
                return _fmt(cpu.get(group, {}).get("cpu_percent"), 0) if group in cpu else "–"

            lines.append(f"| {mode['mode']} | {scenario['scenario']} {scenario['calls']} | {pct(workers_key)} | "
                         f"{pct('asterisk')} | {pct('receivers')} | {pct('supervisor')} | "
                         f"{scenario['window']['machine_cpu_percent']:.0f} "
                         f"({scenario['window']['rest_of_host_cpu_percent']:.0f}) | "
                         f"{_fmt(worker.get('runqueue_wait_ms_per_s'), 0)} | "
                         f"{_fmt(cpu.get('asterisk', {}).get('runqueue_wait_ms_per_s'), 0)} | "
                         f"{scenario['window']['host_wakeups'].get('late_over_20ms')} | {sum(scenario['worker_restarts'].values())} |")
    lines += ["", "## Targets (issue 11)", "", "| mode | check | measured | target | pass |", "|---|---|---|---|---|"]
    for check in report["checks"]:
        verdict = "–" if check["pass"] is None else ("yes" if check["pass"] else "**no**")
        lines.append(f"| {check['mode']} | {check['check']} | {check['measured']} | {check['target']} | {verdict} |")
    lines += ["", "p99 dev: 99th percentile of |inter-arrival - 20 ms| at the receiver (kernel timestamps), pooled "
              "over the calls, inside the common window. Receiver lag: frames that share a kernel timestamp "
              "because the receiver read late (should be 0). Frames sent by workers: the legs' own leg-end "
              "counts (a killed worker logs none). Wait: time runnable but not running (schedstat), summed "
              "over the group's threads. machine (rest): all CPU busy on the host (the part outside the "
              "groups listed: kernel, other users)."]
    lines += ["", "Scheduling: " + "; ".join(
        f"{mode['mode']}: workers {mode['scheduling']['workers'][0].get('policy') if mode['scheduling']['workers'] else '?'} "
        f"in {', '.join(mode['scheduling']['worker_autogroups'])}, Asterisk "
        f"{mode['scheduling']['asterisk'].get('policy')} in {mode['scheduling']['asterisk'].get('autogroup')}"
        for mode in report["modes"] if "scheduling" in mode), ""]
    return "\n".join(lines)


def bench_asterisk(settings: Settings, modes: tuple[str, ...], quick: bool, command: str,
                   progress: Any = print) -> dict[str, Any]:
    """The whole run; returns the report (raises BenchError / AsteriskError if it cannot run)."""
    binary = find_asterisk()
    if binary is None:
        raise BenchError("no Asterisk found: set AUDIOGW_ASTERISK or run `bash ../shared/asterisk/build.sh`")
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="audiogw-bench-asterisk-"))
    extensions = settings.playback_extensions + settings.echo_extensions
    base_port = free_port_block(2 * extensions + 1)
    receiver_port = base_port + 2 * extensions
    ports = {f"13{index + 1:02d}": base_port + 2 * index for index in range(settings.playback_extensions)}
    ports.update({f"14{index + 1:02d}": base_port + 2 * (settings.playback_extensions + index)
                  for index in range(settings.echo_extensions)})
    wav = workdir / "tone.wav"
    write_wav(wav, tone(440.0, 1.0), 8000)
    report: dict[str, Any] = {
        "command": command, "settings": {**asdict(settings), "quick": quick, "modes": list(modes)},
        "code": code_version(),
        "machine": {"cpus": os.cpu_count(), "load_average_before": os.getloadavg(),
                    "sched_autogroup_enabled": Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
                    if Path("/proc/sys/kernel/sched_autogroup_enabled").exists() else None,
                    "euid": os.geteuid()},
        "asterisk_binary": binary, "modes": [],
    }
    limit = settings.seconds + settings.settle + 60
    asterisk = PrivateAsterisk(binary, workdir / "asterisk", dialplan(receiver_port, ports, limit), MANAGER_CONF)
    asterisk.start()
    try:
        if settings.asterisk_realtime:
            make_realtime(asterisk.process.pid, REALTIME_PRIORITY)
        report["asterisk_version"] = asterisk.cli("core show version").strip().split(" built")[0]
        for mode in modes:
            report["modes"].append(run_mode(mode, asterisk, settings, workdir / mode, base_port, receiver_port,
                                            wav, progress))
    finally:
        report["asterisk_errors"] = asterisk.errors()[:10]
        asterisk.stop()
    report["duration_seconds"] = time.monotonic() - began
    report["checks"] = checks(report)
    limit_s = (QUICK_LIMIT_SECONDS if quick else FULL_LIMIT_SECONDS) * len(modes)  # per mode
    report["checks"].append({"mode": ",".join(modes), "check": "run time", "measured": f"{report['duration_seconds']:.0f} s",
                             "target": f"< {limit_s:g} s ({len(modes)} modes)", "pass": report["duration_seconds"] < limit_s})
    report["workdir"] = str(workdir)
    return report


def _modes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    if not names or any(name not in MODES for name in names):
        raise click.BadParameter(f"choose from {', '.join(MODES)}")
    return names


def _calls(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        counts = tuple(int(item) for item in value.split(",") if item.strip())
    except ValueError:
        raise click.BadParameter("a comma-separated list of call counts, e.g. 1,100,200") from None
    if not counts or min(counts) < 1:
        raise click.BadParameter("call counts must be >= 1")
    return counts


@click.command("bench-asterisk")
@click.option("--quick", is_flag=True, help="Smoke run: 2+2 relayed and 2 echo calls, 2 s windows (< 60 s).")
@click.option("--modes", callback=_modes, default="default,unprivileged,normal", show_default=True,
              help="default: the default config as this user (real-time where permitted); unprivileged: "
                   "an unprivileged user's rights (real-time refused); normal: realtime_priority = 0.")
@click.option("--relay-calls", callback=_calls, default=None, help="Relay scenario sizes, N audiogw + N Milliwatt (default 1,100,200).")
@click.option("--echo-calls", type=click.IntRange(0), default=None, help="Echo calls (default 200; 0: skip).")
@click.option("--seconds", type=click.FloatRange(1.0, 600.0), default=None, help="Measurement window per scenario (default 20).")
@click.option("--extensions", type=click.IntRange(1, 50), default=None,
              help="audiogw extensions (workers) per app, playback and echo (default 10).")
@click.option("--receiver-normal", is_flag=True,
              help=f"Run the timestamping receivers at normal priority (default: SCHED_RR {REALTIME_PRIORITY + 1}, "
                   "so they never read late).")
@click.option("--asterisk-realtime", is_flag=True, help="Run Asterisk under SCHED_RR 10, as `asterisk -p`.")
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write report.json and report.md here (default: print only).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of Markdown.")
def bench_asterisk_command(quick: bool, modes: tuple[str, ...], relay_calls: tuple[int, ...] | None,
                           echo_calls: int | None, seconds: float | None, extensions: int | None,
                           receiver_normal: bool, asterisk_realtime: bool, results_dir: Path | None,
                           as_json: bool) -> None:
    """Benchmark audiogw against Asterisk itself: relayed pacing vs Milliwatt, and echo capacity."""
    base = QUICK if quick else Settings()
    changes: dict[str, Any] = {"receiver_realtime": not receiver_normal, "asterisk_realtime": asterisk_realtime}
    if relay_calls is not None:
        changes["relay_calls"] = relay_calls
    if echo_calls is not None:
        changes["echo_calls"] = echo_calls
    if seconds is not None:
        changes["seconds"] = seconds
    if extensions is not None:
        changes["playback_extensions"] = changes["echo_extensions"] = extensions
    settings = Settings(**{**asdict(base), **changes})
    words = sys.argv[1:]
    if words[:1] == ["bench-asterisk"]:
        words = words[1:]
    command = " ".join(["audiogw", "bench-asterisk", *words])
    try:
        report = bench_asterisk(settings, modes, quick, command.strip(), lambda line: click.echo(line, err=True))
    except (BenchError, AsteriskError) as error:
        click.echo(f"audiogw bench-asterisk: {error}", err=True)
        sys.exit(1)
    text = markdown(report)
    if results_dir is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        (results_dir / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
        (results_dir / "report.md").write_text(text)
    click.echo(json.dumps(report, indent=2, default=float) if as_json else text)


if __name__ == "__main__":
    bench_asterisk_command(prog_name="audiogw bench-asterisk")

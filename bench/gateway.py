"""The gateways the benchmark measures, started as real processes on one temporary config.

- :class:`SupervisorGateway`: ``audiogw-supervisor start`` (one worker per extension).
- :class:`SingleLoopGateway`: ``python -m audiogw.bench.baseline`` (every
  extension on one event loop), from the very same config file.

Both are started with ``subprocess`` (fork + exec), never by forking this
process.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiogw.bench.resources import process_tree
from audiogw.client.ctl import request
from audiogw.shared.audiosocket import LEG_KINDS
from audiogw.shared.records import LegRecord, read_leg_records_folder


# Where a bench config's workers write their leg records (supervisor.leg_records), in its folder.
LEG_RECORDS_FOLDER = "legs"


class GatewayError(RuntimeError):
    """A gateway did not start or died; the message carries the end of its log."""


@dataclass(frozen=True)
class ExtensionPlan:
    """One extension of a bench config: its id and app (with options)."""

    id: str
    app: str = "echo"
    options: dict[str, Any] = field(default_factory=dict)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_bench_config(folder: Path, extensions: list[ExtensionPlan], base_port: int,
                       realtime_priority: int = 0) -> Path:
    """A supervisor config (SPEC.md format) with consecutive port pairs from ``base_port``."""
    lines = [
        "[supervisor]",
        'control = "ipc://run/control.sock"',
        'metrics = "127.0.0.1:0"',
        'state_dir = "state"',
        f'leg_records = "{LEG_RECORDS_FOLDER}"',
        "drain_seconds = 1.0",
        "backoff_initial = 0.0",
        "[audiosocket]",
        'bind = "127.0.0.1"',
        f"port_range = [{base_port}, {base_port + 2 * len(extensions) + 9}]",
        f"realtime_priority = {realtime_priority}",
    ]
    for index, extension in enumerate(extensions):
        lines += ["[[extension]]", f'id = "{extension.id}"', f'app = "{extension.app}"',
                  f"ia_port = {base_port + 2 * index}", f"retorno_port = {base_port + 2 * index + 1}"]
        if extension.options:
            options = ", ".join(f"{key} = {_toml_value(value)}" for key, value in extension.options.items())
            lines.append(f"options = {{ {options} }}")
    path = folder / "audiogw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Gateway:
    """A gateway process serving ``extensions`` on 127.0.0.1."""

    kind = ""

    def __init__(self, folder: Path, extensions: list[ExtensionPlan], base_port: int,
                 realtime_priority: int = 0) -> None:
        self.folder = folder
        self.extensions = extensions
        self.realtime_priority = realtime_priority
        self.config_path = write_bench_config(folder, extensions, base_port, realtime_priority)
        self.ports = {extension.id: {kind: base_port + 2 * index + offset for offset, kind in enumerate(LEG_KINDS)}
                      for index, extension in enumerate(extensions)}
        self.log_path = folder / f"{self.kind}.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log,
                                            stdin=subprocess.DEVNULL, cwd=self.folder)
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise GatewayError(f"{self.kind} exited with status {self.process.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise GatewayError(f"{self.kind} not serving every extension within {timeout:g} s:\n{self.log()[-3000:]}")
            time.sleep(0.05)
        if self.realtime_priority:
            self._check_realtime()

    def _check_realtime(self) -> None:
        """Every audio clock really runs under SCHED_RR: a run must not be labelled real-time by mistake."""
        for pid in self.clock_pids():
            try:
                policy = os.sched_getscheduler(pid)
            except OSError:
                continue  # gone meanwhile: the run itself will say so
            if policy != os.SCHED_RR:
                self.stop()
                raise GatewayError(f"{self.kind}: realtime_priority {self.realtime_priority} was refused "
                                   f"(pid {pid} is not under SCHED_RR; run as root or give CAP_SYS_NICE):\n"
                                   f"{self.log()[-2000:]}")

    def clock_pids(self) -> list[int]:
        """The processes whose main thread runs an audio clock."""
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def labels(self, target: str) -> dict[int, str]:
        """pid -> 'target' | 'others' | a process role, for the resource sampler."""
        raise NotImplementedError

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def leg_records(self) -> list[LegRecord]:
        """The legs that ended so far, as their workers recorded them (supervisor.leg_records)."""
        return read_leg_records_folder(self.folder / LEG_RECORDS_FOLDER)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                for pid in reversed(process_tree(self.process.pid)):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


class SupervisorGateway(Gateway):
    """The real supervisor: one worker process per extension."""

    kind = "supervisor"

    def __init__(self, folder: Path, extensions: list[ExtensionPlan], base_port: int,
                 realtime_priority: int = 0) -> None:
        super().__init__(folder, extensions, base_port, realtime_priority)
        self._workers: dict[int, str] = {}  # pid -> extension, from `ctl list`
        self._not_workers: set[int] = set()

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.folder}/run/control.sock"

    def command(self) -> list[str]:
        return [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()",
                "start", "--config", str(self.config_path)]

    def rows(self, timeout: float = 2.0) -> list[dict[str, Any]]:
        return request(self.endpoint, "list", {}, timeout=timeout)

    def ready(self) -> bool:
        try:
            rows = self.rows(timeout=1.0)
        except Exception:  # noqa: BLE001 - not answering yet
            return False
        return len(rows) == len(self.extensions) and all(row["state"] == "running" for row in rows)

    def clock_pids(self) -> list[int]:
        return [row["pid"] for row in self.rows() if row["pid"]]

    def worker_pid(self, extension: str) -> int | None:
        for row in self.rows():
            if row["id"] == extension:
                return row["pid"]
        return None

    def labels(self, target: str) -> dict[int, str]:
        if self.process is None:
            return {}
        tree = process_tree(self.process.pid)
        if any(pid not in self._workers and pid not in self._not_workers for pid in tree[1:]):
            self._workers = {row["pid"]: row["id"] for row in self.rows(timeout=1.0) if row["pid"]}
            self._not_workers = {pid for pid in tree[1:] if pid not in self._workers}
        labels = {}
        for pid in tree:
            extension = self._workers.get(pid)
            labels[pid] = "supervisor" if extension is None else ("target" if extension == target else "others")
        return labels


class SingleLoopGateway(Gateway):
    """Every extension in one process, on one event loop (the baseline)."""

    kind = "single-loop"

    def __init__(self, folder: Path, extensions: list[ExtensionPlan], base_port: int,
                 realtime_priority: int = 0) -> None:
        super().__init__(folder, extensions, base_port, realtime_priority)
        self._ready = False

    def clock_pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None else []

    def command(self) -> list[str]:
        return [sys.executable, "-m", "audiogw.bench.baseline", "--config", str(self.config_path)]

    def ready(self) -> bool:
        if not self._ready and self.process is not None and self.process.poll() is None:
            # The host prints one line, "ready", once every port serves.
            readable, _, _ = select.select([self.process.stdout], [], [], 0.05)
            if readable:
                self._ready = self.process.stdout.readline().strip() == b"ready"
        return self._ready

    def labels(self, target: str) -> dict[int, str]:
        return {self.process.pid: "single-loop"} if self.alive() else {}

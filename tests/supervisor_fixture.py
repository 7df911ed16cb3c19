"""A real supervisor process on free ports, for the supervisor's fault tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from audiogw.client.ctl import request
from audiogw.shared.net import free_port_block
from conftest import wait_for

METRICS_OFFSET = 19  # the metrics server's port, from the base of the test's 20-port block


@dataclass
class SupervisorProcess:
    folder: Path
    config_path: Path
    base_port: int
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.folder}/run/control.sock"

    def start(self) -> "SupervisorProcess":
        log = open(self.folder / "supervisor.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start", "--config", str(self.config_path)],
            stdout=log, stderr=log, cwd=self.folder,
        )
        wait_for(lambda: self.running_states(), 15, what="supervisor to serve every extension")
        return self

    def log(self) -> str:
        return (self.folder / "supervisor.log").read_text(errors="replace")

    def ctl(self, command: str, args: dict | None = None, timeout: float = 10.0):
        return request(self.endpoint, command, args or {}, timeout=timeout)

    def running_states(self):
        if self.process.poll() is not None:
            raise AssertionError(f"supervisor exited {self.process.returncode}:\n{self.log()}")
        try:
            rows = self.ctl("list", timeout=1.0)
        except Exception:
            return None
        return rows if rows and all(row["state"] == "running" for row in rows) else None

    @property
    def metrics_url(self) -> str:
        """Where write_config put the metrics server: the last port of the test's block."""
        return f"http://127.0.0.1:{self.base_port + METRICS_OFFSET}/metrics"

    def scrape(self) -> dict:
        """/metrics parsed, by family name."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            body = response.read().decode()
        return {family.name: family for family in text_string_to_metric_families(body)}

    def pids(self) -> dict[str, int]:
        return {row["id"]: row["pid"] for row in self.ctl("list")}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def write_config(folder: Path, base_port: int, extensions: int = 2, app: str | None = None) -> Path:
    """A config on the 20 ports from ``base_port`` (free_port_block(20)): extensions' first, metrics on the last."""
    lines = [
        "[supervisor]",
        'control = "ipc://run/control.sock"',
        f'metrics = "127.0.0.1:{base_port + METRICS_OFFSET}"',
        'state_dir = "state"',
        "heartbeat_interval = 0.2",
        "heartbeat_timeout = 1.0",
        "drain_seconds = 1.0",
        "[audiosocket]",
        'bind = "127.0.0.1"',
        f"port_range = [{base_port}, {base_port + METRICS_OFFSET - 1}]",
    ]
    for index in range(extensions):
        lines += ["[[extension]]", f'id = "{1201 + index}"',
                  f"ia_port = {base_port + 2 * index}", f"retorno_port = {base_port + 2 * index + 1}"]
        if app is not None:
            lines.append(f'app = "{app}"')
    path = folder / "audiogw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def supervisor_process(tmp_path: Path):
    """A started supervisor on the two-extension test config; for ``pytest.fixture(name=...)(supervisor_process)``."""
    base = free_port_block(20)
    process = SupervisorProcess(tmp_path, write_config(tmp_path, base), base)
    process.start()
    yield process
    process.stop()
    if process.process is not None:
        kill_tree(process.process.pid)


def children_of(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def kill_tree(pid: int) -> None:
    for child in children_of(pid):
        try:
            child.kill()
        except psutil.Error:
            pass
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass

"""Real ``[cluster]`` supervisors on loopback addresses (127.0.0.2, .3, ...), for the cluster tests and
``bench/cluster.py``: each node is a supervisor process in its own session (``kill -9`` of its
process group takes the whole node: supervisor, zygote, workers), its AudioSocket ports and its
HTTP server bound to the node's own address (Linux routes all of 127/8 to lo).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audiogw.client.ctl import request

METRICS_OFFSET = 39  # the HTTP port, the last of a node block of 40 ports (the same on every node's address)


@dataclass
class ClusterNode:
    name: str
    address: str  # 127.0.0.N: audiosocket.bind, supervisor.metrics, cluster.advertise
    folder: Path
    base_port: int
    etcd: list[str]
    lease_ttl: int = 3
    process: subprocess.Popen | None = None

    @property
    def http(self) -> str:
        return f"{self.address}:{self.base_port + METRICS_OFFSET}"

    @property
    def endpoint(self) -> str:
        return f"ipc://{self.folder}/run/control.sock"

    def write_config(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        lines = [
            "[supervisor]", 'control = "ipc://run/control.sock"', f'metrics = "{self.http}"', 'state_dir = "state"',
            "heartbeat_interval = 0.2", "heartbeat_timeout = 1.0", "drain_seconds = 1.0",
            "[audiosocket]", f'bind = "{self.address}"',
            f"port_range = [{self.base_port}, {self.base_port + METRICS_OFFSET - 1}]",
            "[cluster]", "etcd = [" + ", ".join(json.dumps(url) for url in self.etcd) + "]",
            f'name = "{self.name}"', f"lease_ttl = {self.lease_ttl}",
        ]
        path = self.folder / "audiogw.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, wait: float = 20.0) -> "ClusterNode":
        config = self.write_config()
        with open(self.folder / "supervisor.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start", "--config",
                 str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=self.folder,
                start_new_session=True)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            self.check_alive()
            health = self.cluster_health()
            if health is not None and health.get("etcd_connected"):
                return self
            time.sleep(0.05)
        raise AssertionError(f"node {self.name} not connected to etcd within {wait} s:\n{self.log()[-3000:]}")

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"node {self.name} exited {self.process.returncode}:\n{self.log()[-3000:]}")

    def log(self) -> str:
        path = self.folder / "supervisor.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def ctl(self, command: str, args: dict | None = None, timeout: float = 10.0) -> Any:
        return request(self.endpoint, command, args or {}, timeout=timeout)

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, Any]:
        """(HTTP status, decoded JSON body) of ``GET path`` on this node's HTTP server."""
        try:
            with urllib.request.urlopen(f"http://{self.http}{path}", timeout=timeout) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            body = error.read()
            try:
                return error.code, json.loads(body)
            except ValueError:
                return error.code, body.decode(errors="replace")

    def cluster_health(self) -> dict | None:
        try:
            _status, body = self.get("/healthz", timeout=1.0)
        except OSError:
            return None
        return body.get("cluster") if isinstance(body, dict) else None

    def route(self, extension_id: str) -> dict | None:
        status, body = self.get(f"/route/{extension_id}")
        return body if status == 200 else None

    def local(self) -> dict[str, dict]:
        """What this node's own supervisor runs: extension id -> its status row (ctl status)."""
        return {row["id"]: row for row in self.ctl("status", timeout=3.0)}

    def kill(self) -> None:
        """kill -9 of the node's process group: supervisor, zygote and workers at once, no lease revoke."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()
        try:  # anything of its group left behind (a worker mid-drain)
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def make_nodes(root: Path, etcd: list[str], base_port: int, count: int = 3, lease_ttl: int = 3) -> list[ClusterNode]:
    """``count`` nodes gw1.. on 127.0.0.2.. sharing one port block (ports are unique cluster-wide)."""
    return [ClusterNode(f"gw{index + 1}", f"127.0.0.{index + 2}", root / f"gw{index + 1}", base_port, etcd, lease_ttl)
            for index in range(count)]

"""A real etcd cluster (``EtcdCluster``: members on 127.0.0.1, killed, stopped, restarted) and real ``[cluster]`` supervisors on loopback addresses (127.0.0.2, .3, ...), for the cluster tests and
``bench/cluster.py``: each node is a supervisor process in its own session (``kill -9`` of its
process group takes the whole node: supervisor, zygote, workers), its AudioSocket ports and its
HTTP server bound to the node's own address (Linux routes all of 127/8 to lo).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audiogw.client.ctl import request
from audiogw.shared.net import free_port_block

HOST = "127.0.0.1"
START_TIMEOUT = 20.0  # seconds for a fresh cluster to elect its first leader (a loaded 2-core VM)

def _post(url: str, body: dict, timeout: float = 1.0) -> dict:
    """One call to a member's v3 JSON gateway (the stdlib: the fixture needs no client)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen | None = None
    starts: int = 0

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def status(self) -> dict | None:
        """Its ``/v3/maintenance/status`` (member id, leader id, raft term), None when it does not answer."""
        try:
            return _post(f"{self.client_url}/v3/maintenance/status", {})
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class EtcdCluster:
    """The members, and what a test does to them: find the leader, kill, stop, start."""

    binary: str
    members: list[EtcdMember]
    token: str
    _stopped: list[EtcdMember] = field(default_factory=list)

    @property
    def client_urls(self) -> list[str]:
        """Every member's client URL: what ``[cluster] etcd`` lists."""
        return [member.client_url for member in self.members]

    def initial_cluster(self) -> str:
        return ",".join(f"{member.name}={member.peer_url}" for member in self.members)

    def start(self, member: EtcdMember) -> None:
        """Start (or restart, on its data: ``existing``) one member."""
        assert not member.running, f"{member.name} is already running"
        member.data_dir.mkdir(mode=0o700, exist_ok=True)
        command = [
            self.binary,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", self.initial_cluster(),
            "--initial-cluster-token", self.token,
            "--initial-cluster-state", "existing" if member.starts else "new",
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]
        log = open(member.log_path, "ab")
        try:
            member.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                              start_new_session=True)
        finally:
            log.close()
        member.starts += 1

    def leader(self) -> EtcdMember | None:
        """The member that every running member names as leader, or None (no agreement yet)."""
        named = set()
        by_id = {}
        for member in self.members:
            if not member.running:
                continue
            status = member.status()
            if status is None or not status.get("leader"):
                return None
            by_id[status["header"]["member_id"]] = member
            named.add(status["leader"])
        if len(named) != 1:
            return None
        return by_id.get(named.pop())

    def wait_leader(self, timeout: float = START_TIMEOUT, *, other_than: EtcdMember | None = None) -> EtcdMember:
        """The leader once the running members agree on one (``other_than``: a new one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.leader()
            if leader is not None and leader is not other_than:
                return leader
            for member in self.members:
                if member.process is not None and member.process.poll() is not None and member not in self._stopped:
                    raise AssertionError(f"etcd member {member.name} exited with {member.process.returncode}:\n"
                                         f"{member.log()[-3000:]}")
            time.sleep(0.05)
        logs = "\n".join(f"--- {member.name}\n{member.log()[-2000:]}" for member in self.members)
        raise AssertionError(f"no etcd leader within {timeout}s:\n{logs}")

    def kill(self, member: EtcdMember) -> None:
        """SIGKILL: the member vanishes mid-whatever (its data stays for a restart)."""
        self._end(member, signal.SIGKILL)

    def stop(self, member: EtcdMember) -> None:
        """SIGTERM: a clean stop (a leader hands over its leadership first)."""
        self._end(member, signal.SIGTERM)

    def _end(self, member: EtcdMember, signum: int) -> None:
        if not member.running:
            return
        self._stopped.append(member)
        assert member.process is not None
        member.process.send_signal(signum)
        try:
            member.process.wait(10)
        except subprocess.TimeoutExpired:
            member.process.kill()
            member.process.wait()

    def restart(self, member: EtcdMember) -> None:
        """Start a stopped or killed member again on its data (it rejoins the cluster)."""
        if member in self._stopped:
            self._stopped.remove(member)
        self.start(member)

    def stop_all(self) -> None:
        for member in self.members:
            self._end(member, signal.SIGTERM)


def start_cluster(tmp_path: Path, size: int = 3, binary: str = "etcd") -> EtcdCluster:
    """``size`` members on free loopback ports, each with its data folder in ``tmp_path``; waits for a leader."""
    base = free_port_block(2 * size, HOST)
    root = tmp_path / "etcd"
    root.mkdir(mode=0o700, exist_ok=True)
    members = [EtcdMember(f"etcd{index}", base + 2 * index, base + 2 * index + 1, root / f"etcd{index}.data",
                          root / f"etcd{index}.log") for index in range(size)]
    cluster = EtcdCluster(binary, members, token=f"audiogw-test-{os.getpid()}-{base}")
    try:
        for member in members:
            cluster.start(member)
        cluster.wait_leader()
    except BaseException:
        cluster.stop_all()
        raise
    return cluster


def listening(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts a TCP connection on ``host:port`` now (a node's listener for an extension)."""
    with socket.socket() as probe:
        probe.settimeout(timeout)
        return probe.connect_ex((host, port)) == 0


METRICS_OFFSET = 39  # the HTTP port, the last of a node block of 40 ports (the same on every node's address)


@dataclass
class ClusterNode:
    name: str
    address: str  # 127.0.0.N: audiosocket.bind, supervisor.metrics, cluster.advertise
    folder: Path
    base_port: int
    etcd: list[str]
    lease_ttl: int = 3
    drain_seconds: float = 1.0
    extra_config: str = ""  # more TOML after the [cluster] table (tests: an [[extension]] of the file)
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
            "heartbeat_interval = 0.2", "heartbeat_timeout = 1.0", f"drain_seconds = {self.drain_seconds}",
            "[audiosocket]", f'bind = "{self.address}"',
            f"port_range = [{self.base_port}, {self.base_port + METRICS_OFFSET - 1}]",
            "[cluster]", "etcd = [" + ", ".join(json.dumps(url) for url in self.etcd) + "]",
            f'name = "{self.name}"', f"lease_ttl = {self.lease_ttl}",
        ]
        path = self.folder / "audiogw.toml"
        path.write_text("\n".join(lines) + "\n" + self.extra_config)
        return path

    def start(self, wait: float = 20.0, *, connected: bool = True) -> "ClusterNode":
        """Start the supervisor; return once it reaches etcd (``connected=False``: once its HTTP answers)."""
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
            if health is not None and (health.get("etcd_connected") or not connected):
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

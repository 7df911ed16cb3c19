"""A real 3-member etcd cluster on loopback, for the cluster tests (issue #15).

Each member is an ``etcd`` process (Debian's ``etcd-server``, 3.4) on 127.0.0.1 with
free client and peer ports and its own data folder under the test's ``tmp_path``;
the fixture returns once the cluster has elected a leader. A test can kill (SIGKILL)
or stop (SIGTERM) any member, the leader included, and start it again on its data.

No ``etcd`` binary: the tests skip and say how to get one, except with
``AUDIOGW_REQUIRE_ETCD=1`` (CI), where that is a failure. Use it with
``from etcd_fixture import etcd_cluster  # noqa: F401`` in a test module.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from audiogw.shared.net import free_port_block

REQUIRE_ENV = "AUDIOGW_REQUIRE_ETCD"
BINARY_ENV = "AUDIOGW_ETCD"  # an etcd binary elsewhere than on PATH
HOW_TO_GET_ONE = f"no etcd binary: `apt-get install etcd-server` (Debian), or set {BINARY_ENV}=/path/to/etcd"
HOST = "127.0.0.1"
START_TIMEOUT = 20.0  # seconds for a fresh cluster to elect its first leader (a loaded 2-core VM)


def find_etcd() -> str | None:
    """``$AUDIOGW_ETCD`` if it is an executable, else ``etcd`` on PATH."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("etcd")


def require_etcd() -> str:
    """The etcd binary; skip without one (a failure when ``AUDIOGW_REQUIRE_ETCD=1``)."""
    binary = find_etcd()
    if binary is None:
        configured = os.environ.get(BINARY_ENV)
        reason = f"{BINARY_ENV}={configured} is not an executable file" if configured else HOW_TO_GET_ONE
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


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


def start_cluster(tmp_path: Path, size: int = 3) -> EtcdCluster:
    """``size`` members on free loopback ports, each with its data folder in ``tmp_path``; waits for a leader."""
    binary = require_etcd()
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


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A started 3-member etcd cluster with a leader; every member is stopped at teardown."""
    cluster = start_cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop_all()

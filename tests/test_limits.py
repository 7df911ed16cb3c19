"""File descriptors never run out into a crash; a control endpoint cannot be taken over (issue #13)."""
from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from audiogw.client.ctl import ctl_group
from audiogw.shared.net import free_port_block
from audiogw.supervisor import limits
from audiogw.supervisor.control import EndpointInUse, claim_endpoint
from conftest import wait_for
from supervisor_fixture import SupervisorProcess, kill_tree, write_config
from test_control_auth import TcpSupervisorProcess, make_keys, write_tcp_config

LOW_LIMIT = 128  # the hard limit the supervisor starts under
LOW_SOFT = 64  # its soft limit then: raised to LOW_LIMIT at start
SUPERVISOR = [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start", "--config"]


def _low_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_SOFT, LOW_LIMIT))


class LimitedSupervisor(SupervisorProcess):
    """The fixture's supervisor, started with a low soft and hard RLIMIT_NOFILE."""

    def start(self) -> "LimitedSupervisor":
        log = open(self.folder / "supervisor.log", "ab")
        self.process = subprocess.Popen([*SUPERVISOR, str(self.config_path)], stdout=log, stderr=log,
                                        cwd=self.folder, preexec_fn=_low_limit)
        wait_for(lambda: self.running_states(), 15, what="supervisor to serve every extension")
        return self


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _settled_fds(pid: int) -> int:
    """The count once a ctl client's connection is closed on the supervisor's side too."""
    counts = [_fds(pid)]
    while len(counts) < 3 or len(set(counts[-3:])) > 1:
        time.sleep(0.05)
        counts.append(_fds(pid))
    return counts[-1]


def _serves(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


def test_fd_shortage_names_the_reserve_limit_and_use():
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    in_use = limits.fds_in_use()
    assert limits.fd_shortage(needed=0, reserve=0) is None
    reason = limits.fd_shortage(needed=0, reserve=soft)  # no room left for this reserve
    assert reason is not None
    assert f"fewer than {soft} file descriptors free (limit {soft}, in use" in reason
    assert abs(int(reason.split("in use ")[1].split(")")[0]) - in_use) <= 1


def test_add_extension_is_refused_before_the_fd_limit_and_nothing_breaks(tmp_path):
    base = free_port_block(20)
    supervisor = LimitedSupervisor(tmp_path, write_config(tmp_path, base, extensions=1), base).start()
    try:
        assert f"soft limit {LOW_LIMIT} (raised from {LOW_SOFT});" in supervisor.log()
        pid = supervisor.process.pid
        ports = iter(range(base + 2, base + 19))  # the file's extension has base, base + 1
        added: list[dict] = []
        refusal = None
        for index in range(8):  # ~5 fit: (128 - ~30 at start - the reserve) / ~5 each
            before = _settled_fds(pid)
            ia_port, retorno_port = next(ports), next(ports)
            result = CliRunner().invoke(ctl_group, [
                "--endpoint", supervisor.endpoint, "--timeout", "10", "add-extension", str(1300 + index),
                "--ia-port", str(ia_port), "--retorno-port", str(retorno_port)])
            if result.exit_code != 0:
                refusal = result
                break
            added.append({"id": str(1300 + index), "ia_port": ia_port})
            cost = _settled_fds(pid) - before
            assert 0 < cost <= limits.FDS_PER_EXTENSION, f"one extension took {cost} descriptors"
        assert refusal is not None, "never refused under a limit of 128"
        assert added, "refused before any extension could be added: the reserve leaves no room at all"
        assert refusal.exit_code == 1, refusal.output
        assert f"would leave fewer than {limits.FD_RESERVE} file descriptors free (limit {LOW_LIMIT}" \
            in refusal.stderr
        assert "Traceback" not in refusal.stderr
        assert supervisor.process.poll() is None
        assert _fds(pid) < LOW_LIMIT - limits.FD_RESERVE + limits.FDS_PER_EXTENSION
        rows = {row["id"]: row for row in supervisor.ctl("list")}
        assert str(1300 + len(added)) not in rows, "the refused extension is not half-created"
        assert set(rows) == {"1201", *(entry["id"] for entry in added)}
        assert all(row["state"] == "running" for row in rows.values()), rows
        for row in rows.values():
            assert _serves(row["ia_port"])
        # Removing one makes room again.
        supervisor.ctl("remove-extension", {"id": added[-1]["id"], "drain": 0})
        wait_for(lambda: limits.FDS_PER_EXTENSION + limits.FD_RESERVE <= LOW_LIMIT - _fds(pid), 10,
                 what="the removed extension's descriptors to be closed")
        assert "Too many open files" not in supervisor.log()
    finally:
        supervisor.stop()
        kill_tree(supervisor.process.pid)


def _second_supervisor(tmp_path: Path, control: str, base: int) -> subprocess.CompletedProcess:
    """A supervisor with its own state dir and ports, on the given control endpoint."""
    folder = tmp_path / "second"
    folder.mkdir()
    path = write_config(folder, base, extensions=1)
    text = path.read_text().replace('control = "ipc://run/control.sock"', f'control = "{control}"')
    path.write_text(text)
    return subprocess.run([*SUPERVISOR, str(path)], capture_output=True, text=True, timeout=30, cwd=folder)


def test_second_supervisor_on_a_served_ipc_endpoint_refuses_to_start(tmp_path):
    base = free_port_block(20)
    first = SupervisorProcess(tmp_path, write_config(tmp_path, base), base).start()
    try:
        completed = _second_supervisor(tmp_path, first.endpoint, free_port_block(20))
        assert completed.returncode == 2, completed
        assert completed.stderr.strip().splitlines() == [
            f"error: control endpoint {first.endpoint} is in use by a running "
            f"supervisor (pid {first.process.pid})"], completed.stderr
        assert "Traceback" not in completed.stderr
        assert {row["id"] for row in first.ctl("list", timeout=3)} == {"1201", "1202"}  # still reachable
    finally:
        first.stop()
        kill_tree(first.process.pid)


def test_a_stale_ipc_socket_file_is_removed_and_reused(tmp_path):
    (tmp_path / "run").mkdir(mode=0o700)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "run" / "control.sock"))
    stale.close()  # the file stays; nobody listens
    base = free_port_block(20)
    supervisor = SupervisorProcess(tmp_path, write_config(tmp_path, base), base).start()
    try:
        assert {row["id"] for row in supervisor.ctl("list", timeout=3)} == {"1201", "1202"}
    finally:
        supervisor.stop()
        kill_tree(supervisor.process.pid)


def test_claim_endpoint_in_process(tmp_path):
    path = tmp_path / "c.sock"
    claim_endpoint(f"ipc://{path}")  # nothing there
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        with pytest.raises(EndpointInUse, match=f"pid {os.getpid()}"):
            claim_endpoint(f"ipc://{path}")
    assert path.exists()
    claim_endpoint(f"ipc://{path}")  # stale now: removed
    assert not path.exists()
    other = tmp_path / "not-a-socket"
    other.write_text("mine")
    with pytest.raises(EndpointInUse, match="is not a socket"):
        claim_endpoint(f"ipc://{other}")
    assert other.read_text() == "mine"
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with pytest.raises(EndpointInUse, match="in use"):
            claim_endpoint(f"tcp://127.0.0.1:{server.getsockname()[1]}")


def test_second_supervisor_on_a_served_tcp_port_is_one_line_exit_2(tmp_path):
    base = free_port_block(21)
    first = TcpSupervisorProcess(tmp_path, write_tcp_config(tmp_path, base, base + 20), base)
    first.control_port, first.keys = base + 20, make_keys(tmp_path)
    first.start()
    try:
        folder = tmp_path / "second"
        folder.mkdir()
        make_keys(folder)
        path = write_tcp_config(folder, free_port_block(20), first.control_port)
        completed = subprocess.run([*SUPERVISOR, str(path)], capture_output=True, text=True, timeout=30, cwd=folder)
        assert completed.returncode == 2, completed
        assert "Traceback" not in completed.stderr
        assert completed.stderr.strip().splitlines() == [
            f"error: control endpoint {first.endpoint} is in use (address already in use)"], \
            completed.stderr
        assert [row["id"] for row in first.ctl("list", timeout=3)] == ["1201"]  # still reachable
    finally:
        first.stop()
        kill_tree(first.process.pid)

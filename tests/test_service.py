"""Running audiogw as a service: systemd readiness and STATUS=, stops as systemd sends them,
hung-worker tracebacks, process titles, versions. Real supervisors, a fake NOTIFY_SOCKET."""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from audiogw.client.softphone import place_call
from audiogw.shared.net import free_port_block
from audiogw.supervisor.systemd import status_line
from conftest import wait_for
from supervisor_fixture import SupervisorProcess, kill_tree, write_config

TESTS = Path(__file__).resolve().parent


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket; ``$NOTIFY_SOCKET`` names it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def receive(self, timeout: float) -> dict[str, str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096).decode()
        except socket.timeout:
            return None
        fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        self.messages.append(fields)
        return fields

    def wait(self, predicate, timeout: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            fields = self.receive(left)
            if fields is not None and predicate(fields):
                return fields
        raise AssertionError(f"no sd_notify message with {what} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def configure(folder: Path, base: int, extensions: int = 2, supervisor: str = "", last_extension: str = "") -> Path:
    """write_config's file, with extra [supervisor] lines and extra lines for the last extension."""
    path = write_config(folder, base, extensions)
    text = path.read_text().replace("[supervisor]\n", f"[supervisor]\n{supervisor}", 1) + last_extension
    path.write_text(text)
    return path


def launch(folder: Path, config: Path, base: int) -> SupervisorProcess:
    """A supervisor started as systemd would (its own session: a process group of its own); not waited for."""
    supervisor = SupervisorProcess(folder, config, base)
    log = open(folder / "supervisor.log", "ab")
    supervisor.process = subprocess.Popen(
        [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start", "--config", str(config)],
        stdout=log, stderr=log, cwd=folder, start_new_session=True,
    )
    return supervisor


@pytest.fixture
def service_env(tmp_path, monkeypatch):
    """NOTIFY_SOCKET bound by the test, and the test apps importable by the workers."""
    notify = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify.path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    started: list[SupervisorProcess] = []
    yield notify, started
    for supervisor in started:
        supervisor.stop()
        kill_tree(supervisor.process.pid)
    notify.close()


def serve(env, folder: Path, **configure_kwargs) -> tuple[SupervisorProcess, dict[str, str]]:
    """A supervisor on ``configure(**configure_kwargs)``, once it told systemd READY=1 (that message too)."""
    notify, started = env
    base = free_port_block(20)
    supervisor = launch(folder, configure(folder, base, **configure_kwargs), base)
    started.append(supervisor)
    return supervisor, notify.wait(lambda m: "READY" in m, 20, "READY=1")


def test_status_line_names_what_does_not_serve():
    line = status_line({"1201": ("running", "ready after 0.1 s"), "1202": ("fatal", "flapping:\n 2 exits"),
                        "1203": ("starting", "respawn")})
    assert line == "serving 1/3; 1202 fatal: flapping: 2 exits; 1203 starting"
    assert status_line({}) == "serving 0/0"


def test_ready_with_one_extension_that_cannot_start_and_status_follows_it(tmp_path, service_env):
    notify, _ = service_env
    supervisor, ready = serve(service_env, tmp_path, supervisor="flap_max_restarts = 1\nflap_window = 30\n",
                              last_extension='app = "service_apps:CrashApp"\n')
    assert ready["READY"] == "1"
    assert ready["STATUS"].startswith("serving 1/2; 1202 "), ready
    rows = {row["id"]: row for row in supervisor.ctl("list")}
    assert rows["1201"]["state"] == "running"
    # The crashing extension ends fatal (flapping): STATUS= says so, READY is not sent again.
    fatal = notify.wait(lambda m: "1202 fatal" in m.get("STATUS", ""), 20, "STATUS= naming 1202 fatal")
    assert fatal["STATUS"].startswith("serving 1/2; 1202 fatal: ")
    assert "READY" not in fatal
    assert sum("READY" in m for m in notify.messages) == 1


def test_ready_at_once_when_every_extension_serves(tmp_path, service_env):
    supervisor, ready = serve(service_env, tmp_path)
    base = supervisor.base_port
    assert ready["STATUS"] == "serving 2/2"
    assert all(row["state"] == "running" for row in supervisor.ctl("list"))
    from audiogw.supervisor.cli import ephemeral_overlap_warning, ephemeral_ports

    expected = ephemeral_overlap_warning((base, base + 18), ephemeral_ports())  # write_config's port_range
    assert ("overlaps the kernel's ephemeral ports" in supervisor.log()) == (expected is not None)


def _process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_sigterm_to_the_whole_group_drains_and_everything_exits_0(tmp_path, service_env):
    """KillMode=control-group: SIGTERM reaches the supervisor, the zygote and every worker at once."""
    supervisor, _ = serve(service_env, tmp_path)
    notify = service_env[0]
    base = supervisor.base_port
    tree = _process_tree(supervisor.process.pid)
    assert len(tree) >= 4, tree  # supervisor, forkserver (zygote), two workers (and maybe the resource tracker)
    workers = list(supervisor.pids().values())
    drain = 1.0  # write_config's drain_seconds

    async def scenario():
        call = asyncio.ensure_future(place_call("127.0.0.1", base, seconds=10.0))
        await asyncio.sleep(0.5)
        stop = time.monotonic()
        # systemd signals every process of the unit's cgroup. The supervisor's group holds it, the
        # zygote and the resource tracker; each worker has a session (and group) of its own.
        os.killpg(supervisor.process.pid, signal.SIGTERM)
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
        return await call, stop

    result, stopped_at = asyncio.run(scenario())
    assert result.hung_up_by == "server"
    assert supervisor.process.wait(drain + 5) == 0
    took = time.monotonic() - stopped_at
    # Every process of the group is gone, the workers with status 0 (the forkserver reports them in the log).
    wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree), 5,
             what="every process of the group to exit")
    assert took < drain + 3, took
    log = supervisor.log()
    assert "restart in" not in log and "worker start" in log
    assert "worker kill" not in log and "did not stop" not in log
    exits = [line for line in log.splitlines() if "worker exit extension=" in line]
    assert len(exits) == 2 and all("code 0" in line for line in exits), exits
    # (Each worker drains on whichever comes first: its own SIGTERM or the supervisor's Drain.)
    assert "supervisor stopped" in log
    stopping = notify.wait(lambda m: "STOPPING" in m, 1, "STOPPING=1")
    assert stopping["STATUS"] == f"stopping: draining 2 extension(s) for up to {drain:g} s"
    assert notify.receive(0.1) is None  # no STATUS= counting extensions while they drain


def test_hung_worker_leaves_a_traceback_of_every_thread_before_the_kill(tmp_path, service_env):
    supervisor, _ = serve(service_env, tmp_path, extensions=1, last_extension=(
        'app = "service_apps:HangApp"\noptions = { hang_after = 0.3, hang_seconds = 30.0 }\n'))
    old_pid = supervisor.pids()["1201"]
    wait_for(lambda: "worker kill extension=1201" in supervisor.log(), 10, what="the hung worker's kill")
    log = supervisor.log()
    before_kill = log[:log.index("worker kill extension=1201")]
    dump = before_kill[before_kill.index("dumping its threads"):]
    assert "Thread 0x" in dump and 'File "' in dump, dump
    assert "in blocked_here" in dump  # the frame that blocks the loop, named
    # Then killed and replaced as before.
    wait_for(lambda: supervisor.pids().get("1201") not in (None, old_pid), 10, what="a new worker")


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def test_process_titles_name_the_supervisor_the_zygote_and_each_extension(tmp_path, service_env):
    supervisor, _ = serve(service_env, tmp_path)
    assert _cmdline(supervisor.process.pid) == "audiogw-supervisor"
    workers = supervisor.pids()
    assert {_cmdline(pid) for pid in workers.values()} == {f"audiogw-worker {extension}" for extension in workers}
    zygotes = {psutil.Process(pid).ppid() for pid in workers.values()}
    assert len(zygotes) == 1 and _cmdline(zygotes.pop()) == "audiogw-zygote"


@pytest.mark.parametrize("command", ["audiogw", "audiogw-supervisor"])
def test_version_of_both_commands_comes_from_the_package_metadata(command):
    from importlib.metadata import version

    script = Path(sys.executable).with_name(command)  # the console script pip installed
    completed = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"{command} {version('audiogw')}"


def test_ephemeral_overlap_warning_names_both_ranges(tmp_path):
    from audiogw.supervisor.cli import ephemeral_overlap_warning, ephemeral_ports

    file = tmp_path / "ip_local_port_range"
    file.write_text("32768\t60999\n")
    ephemeral = ephemeral_ports(str(file))
    assert ephemeral == (32768, 60999)
    warning = ephemeral_overlap_warning((40000, 40999), ephemeral)
    assert "[40000, 40999]" in warning and "32768-60999" in warning
    assert ephemeral_overlap_warning((30000, 30999), ephemeral) is None
    assert ephemeral_overlap_warning((30000, 32768), ephemeral) is not None  # one shared port is enough
    assert ephemeral_overlap_warning((40000, 40999), ephemeral_ports(str(tmp_path / "absent"))) is None


def test_supervisor_warns_at_start_when_its_port_range_is_ephemeral(tmp_path, service_env):
    from audiogw.supervisor.cli import ephemeral_ports

    notify, started = service_env
    ephemeral = ephemeral_ports()
    if ephemeral is None:
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range here")
    base = free_port_block(20)
    config = configure(tmp_path, base)
    low = ephemeral[0]  # a range that overlaps by one port; the extensions keep their own ports
    config.write_text(config.read_text().replace(f"port_range = [{base}, {base + 18}]", f"port_range = [{low - 5}, {low}]"))
    supervisor = launch(tmp_path, config, base)
    started.append(supervisor)
    notify.wait(lambda m: "READY" in m, 20, "READY=1")
    assert f"port_range [{low - 5}, {low}] overlaps the kernel's ephemeral ports" in supervisor.log()


UNIT = TESTS.parent / "etc" / "systemd" / "audiogw.service"


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_systemd_unit_deploys_as_documented():
    settings = _unit_settings()
    assert settings["Type"] == ["notify"] and settings["KillMode"] == ["mixed"]
    assert settings["StateDirectory"] == ["audiogw"] and settings["RuntimeDirectory"] == ["audiogw"]
    assert settings["LimitRTPRIO"] and settings["User"] == ["audiogw"]
    assert "RestrictRealtime" not in settings  # the workers' clock is SCHED_RR
    assert settings["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    readme = (TESTS.parent / "README.md").read_text()
    for directory in ("/var/lib/audiogw", "/run/audiogw", "/etc/audiogw/audiogw.toml"):
        assert directory in readme, directory


def test_systemd_unit_security_exposure_is_at_most_4():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    completed = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(UNIT)],
                               capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", completed.stdout)
    if match is None:
        pytest.skip(f"systemd-analyze security --offline is not supported here: {completed.stderr.strip()}")
    assert float(match.group(1)) <= 4.0, completed.stdout

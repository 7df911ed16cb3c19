"""The supervisor with real worker processes: restarts, hangs, persistence, refusals, no orphans."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import psutil
import pytest

from audiogw.client.ctl import CtlRefused
from audiogw.client.softphone import place_call
from conftest import assert_clock_kept, wait_for
from supervisor_fixture import supervisor_process


supervisor = pytest.fixture(name="supervisor")(supervisor_process)


def _new_pid(supervisor, extension, old_pid, timeout=10.0):
    def check():
        rows = {row["id"]: row for row in supervisor.ctl("list", timeout=2)}
        row = rows[extension]
        return row["pid"] if row["state"] == "running" and row["pid"] not in (None, old_pid) else None
    return wait_for(check, timeout, 0.02, what=f"extension {extension} running again")


def test_killed_worker_is_restarted_and_other_extension_keeps_its_audio(supervisor):
    pids = supervisor.pids()
    other_port = supervisor.base_port + 2  # extension 1202's ia port

    async def scenario():
        call = asyncio.ensure_future(place_call("127.0.0.1", other_port, seconds=3.0))
        await asyncio.sleep(1.0)
        os.kill(pids["1201"], signal.SIGKILL)
        return await call

    result = asyncio.run(scenario())
    new_pid = _new_pid(supervisor, "1201", pids["1201"])
    assert new_pid != pids["1201"]
    assert result.error is None
    assert abs(result.frames_received - result.frames_sent) <= 2
    assert_clock_kept(result)  # the other worker's clock ran on through the kill and the respawn
    assert supervisor.pids()["1202"] == pids["1202"], "the other worker was not touched"
    # The restarted extension serves calls again on the same port (the supervisor kept the socket).
    again = asyncio.run(place_call("127.0.0.1", supervisor.base_port, seconds=0.5))
    assert again.frames_received >= 20
    assert "signal SIGKILL: restart in" in supervisor.log()


def test_stopped_worker_is_detected_as_hung_and_replaced(supervisor):
    pid = supervisor.pids()["1201"]
    os.kill(pid, signal.SIGSTOP)
    _new_pid(supervisor, "1201", pid)
    assert "hung: no heartbeat" in supervisor.log()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_add_extension_persists_and_survives_kill_9_of_the_supervisor(supervisor):
    added = supervisor.ctl("add-extension", {"id": "1300", "options": {}})
    assert added["state"] == "running"
    ports = (added["ia_port"], added["retorno_port"])
    supervisor.ctl("remove-extension", {"id": "1202"})
    worker_pids = list(supervisor.pids().values())
    supervisor.process.send_signal(signal.SIGKILL)
    supervisor.process.wait()
    # No worker survives its supervisor.
    wait_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                             for pid in worker_pids), 5, what="workers to exit after the supervisor died")
    supervisor.start()
    rows = {row["id"]: row for row in supervisor.ctl("list")}
    assert set(rows) == {"1201", "1300"}
    assert (rows["1300"]["ia_port"], rows["1300"]["retorno_port"]) == ports
    result = asyncio.run(place_call("127.0.0.1", ports[0], seconds=0.5))
    assert result.frames_received >= 20


def test_refusals_leave_the_supervisor_running(supervisor):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy_port = blocker.getsockname()[1]
        completed = subprocess.run(
            [sys.executable, "-c", "from audiogw.client.cli import main; main()", "ctl", "--endpoint", supervisor.endpoint,
             "add-extension", "1400", "--ia-port", str(busy_port), "--retorno-port", str(supervisor.base_port + 15)],
            capture_output=True, text=True, timeout=30,
        )
    assert completed.returncode == 1, completed
    assert "cannot listen" in completed.stderr and str(busy_port) in completed.stderr
    assert "1400" not in {row["id"] for row in supervisor.ctl("list")}, "nothing half-created"
    for command, args, reason in [
        ("add-extension", {"id": "12a"}, "invalid extension id"),
        ("add-extension", {"id": "1" * 33}, "invalid extension id"),
        ("add-extension", {"id": "1500", "ia_port": 70000}, "65535"),
        ("add-extension", {"id": "1201"}, "already exists"),
        ("add-extension", {"id": "1501", "options": {"rate": 11025}}, "option rate must be"),
        ("remove-extension", {"id": "9999"}, "unknown extension"),
        ("explode", {}, "unknown command"),
        ("list", {"bogus": 1}, "unknown argument"),
    ]:
        with pytest.raises(CtlRefused, match=reason):
            supervisor.ctl(command, args)
    # Raw garbage on the control socket gets an error reply, not a crash.
    import zmq

    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(supervisor.endpoint)
    for garbage in (b"\xff\x00not json", b"[1,2]", b'{"no": "command"}'):
        dealer.send(garbage)
        assert dealer.poll(5000), "the supervisor answers malformed requests"
        assert b'"ok":false' in dealer.recv()
    dealer.close()
    context.term()
    assert supervisor.process.poll() is None
    assert len(supervisor.ctl("list")) == 2


def test_second_supervisor_on_the_same_state_dir_refuses(supervisor):
    completed = subprocess.run(
        [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start", "--config", str(supervisor.config_path)],
        capture_output=True, text=True, timeout=30, cwd=supervisor.folder,
    )
    assert completed.returncode == 1
    assert "another supervisor" in completed.stderr
    assert supervisor.process.poll() is None and len(supervisor.ctl("list")) == 2


def test_sigterm_drains_and_hangs_up_calls(supervisor):
    async def scenario():
        call = asyncio.ensure_future(place_call("127.0.0.1", supervisor.base_port, seconds=10.0))
        await asyncio.sleep(0.5)
        supervisor.process.send_signal(signal.SIGTERM)
        return await call

    result = asyncio.run(scenario())
    assert result.hung_up_by == "server"
    assert supervisor.process.wait(10) == 0
    assert "supervisor stopped" in supervisor.log()


def test_dialplan_names_both_ports(supervisor):
    text = supervisor.ctl("dialplan", {"id": "1201"})["text"]
    assert f"127.0.0.1:{supervisor.base_port}" in text and f"127.0.0.1:{supervisor.base_port + 1}" in text
    assert "AudioSocket(" in text


def test_reload_says_audiosocket_changes_wait_for_a_worker_restart(supervisor):
    pids = supervisor.pids()
    text = supervisor.config_path.read_text()
    supervisor.config_path.write_text(text.replace("[audiosocket]\n", "[audiosocket]\nrealtime_priority = 5\n", 1))
    result = supervisor.ctl("reload")
    assert result["unchanged"] == ["1201", "1202"] and supervisor.pids() == pids  # no worker restarted
    assert ("reload: audiosocket.realtime_priority changed; running workers keep the old value until they restart"
            in supervisor.log())
    assert "audiosocket.bind changed" not in supervisor.log()


def test_remove_then_reload_restores_config_extension_only_when_added(supervisor):
    supervisor.ctl("remove-extension", {"id": "1202"})
    result = supervisor.ctl("reload")
    assert "1202" not in result["added"], "a removed extension stays removed across reloads"
    assert result["unchanged"] == ["1201"]

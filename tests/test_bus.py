"""The worker bus ends in-process (real ZeroMQ sockets, no supervisor), the supervisor's import
boundary, and the loud check of the one private multiprocessing name the zygote relies on."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import types
from pathlib import Path

import psutil
import pytest
import zmq

from audiogw.shared.messages import (
    Drain, Heartbeat, Ready, Stop, Stopping, decode_worker_message, encode_worker_command,
)
from audiogw.worker.link import SupervisorLink
from audiogw.shared.net import free_port_block
from audiogw.worker.stats import WorkerStats
from conftest import wait_for
from supervisor_fixture import SupervisorProcess, kill_tree, write_config

WORKER_ONLY = ("numpy", "soxr", "websockets", "audiogw.worker")  # packages the supervisor must not load


def _loaded_after(statement: str) -> list[str]:
    """The WORKER_ONLY modules a fresh interpreter has loaded after running ``statement``."""
    code = (f"import sys\n{statement}\nprint(' '.join(sorted(m for m in sys.modules "
            f"if any(m == p or m.startswith(p + '.') for p in {WORKER_ONLY!r}))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split()


def test_the_supervisor_daemon_builds_worker_specs_without_the_workers_modules():
    assert _loaded_after("import audiogw.supervisor.daemon, audiogw.supervisor.zygote") == []


def test_the_check_sees_a_worker_module_when_one_is_loaded():  # the test above can fail
    assert "audiogw.worker.stats" in _loaded_after("import audiogw.worker.stats")


def test_the_whole_supervisor_runs_without_the_workers_modules():
    assert _loaded_after("import audiogw.supervisor.cli, audiogw.supervisor.control, "
                         "audiogw.supervisor.metrics, audiogw.supervisor.daemon") == []


# -- the worker's link, against a bare ROUTER ------------------------------------
class FakeWorker:
    extension = "1201"

    def __init__(self) -> None:
        self.stats = WorkerStats()


@pytest.fixture
def router(tmp_path):
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.linger = 0
    endpoint = f"ipc://{tmp_path}/bus.sock"
    socket.bind(endpoint)
    yield socket, endpoint
    socket.close()
    context.term()


def _receive(router: zmq.Socket, timeout: float = 5.0) -> tuple[bytes, object]:
    assert router.poll(int(timeout * 1000)), "no message from the link"
    identity, raw = router.recv_multipart()
    return identity, decode_worker_message(raw)


def test_link_sends_typed_messages_and_passes_on_only_valid_commands(router, caplog):
    socket, endpoint = router
    received: list[object] = []

    async def scenario():
        worker = FakeWorker()
        worker.stats.legs["ia"].calls_total = 7
        link = SupervisorLink(endpoint, worker, 0.05, received.append)
        link.start()
        link.send(Ready)
        identity, first = await asyncio.to_thread(_receive, socket)
        kinds = {type(first)}
        for _ in range(2):
            kinds.add(type((await asyncio.to_thread(_receive, socket))[1]))
        assert {Heartbeat, Ready} <= kinds
        assert first.extension == "1201" and first.pid == os.getpid()
        assert first.stats["legs"]["ia"]["calls_total"] == 7
        socket.send_multipart([identity, b'{"type": "drain", "seconds": "soon"}'])
        socket.send_multipart([identity, b'{"type": "explode"}'])
        socket.send_multipart([identity, encode_worker_command(Drain(seconds=1.5))])
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
        await link.close()
        while True:  # the last message is the worker's final counters
            last = (await asyncio.to_thread(_receive, socket))[1]
            if isinstance(last, Stopping):
                break

    with caplog.at_level(logging.WARNING, logger="audiogw.worker.link"):
        asyncio.run(scenario())
    assert received == [Drain(seconds=1.5)]
    refusals = [r.getMessage() for r in caplog.records if "refused a bus message" in r.getMessage()]
    assert len(refusals) == 2
    assert "at `$.seconds`" in refusals[0] and "Invalid value 'explode'" in refusals[1]


def test_link_stops_the_worker_when_the_supervisor_pid_dies(router):
    _socket, endpoint = router
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    received: list[object] = []

    async def scenario():
        link = SupervisorLink(endpoint, FakeWorker(), 30.0, received.append, supervisor_pid=stand_in.pid)
        link.start()
        await asyncio.sleep(0.1)
        assert received == []  # alive: nothing yet (and the heartbeat's parent check is 30 s away)
        stand_in.kill()
        stand_in.wait()
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.02)
        await link.close()

    try:
        asyncio.run(scenario())
    finally:
        stand_in.kill()
    assert received == [Stop(reason="supervisor_gone")]


def test_link_stops_at_once_when_the_supervisor_is_already_gone(router):
    _socket, endpoint = router
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    received: list[object] = []

    async def scenario():
        link = SupervisorLink(endpoint, FakeWorker(), 30.0, received.append, supervisor_pid=gone.pid)
        link.start()
        await link.close()

    asyncio.run(scenario())
    assert received == [Stop(reason="supervisor_gone")]


# -- the zygote's check of multiprocessing's private name -------------------------
def test_zygote_start_finds_the_forkserver_alive_fd_on_this_python(monkeypatch, caplog):
    import multiprocessing.forkserver

    from audiogw.supervisor import zygote

    monkeypatch.setattr(multiprocessing.forkserver, "ensure_running", lambda: None)
    monkeypatch.setattr(multiprocessing.forkserver, "_forkserver",
                        types.SimpleNamespace(**{zygote.ALIVE_FD: 9}))
    with caplog.at_level(logging.ERROR, logger="audiogw.supervisor.zygote"):
        started = zygote.Zygote()
        started.start()
    assert started.releases_alive_fd and not caplog.records
    # The real ForkServer of this Python declares the name (set to its pipe once running).
    real = multiprocessing.forkserver.ForkServer()
    assert hasattr(real, zygote.ALIVE_FD)


@pytest.mark.parametrize("server, says", [
    (types.SimpleNamespace(), "ForkServer has no _forkserver_alive_fd"),
    (types.SimpleNamespace(_forkserver_alive_fd=None), "is None, not a file descriptor"),
    (None, "has no _forkserver object"),
])
def test_zygote_start_logs_an_error_when_the_private_name_is_gone(monkeypatch, caplog, server, says):
    import multiprocessing.forkserver

    from audiogw.supervisor import zygote

    monkeypatch.setattr(multiprocessing.forkserver, "ensure_running", lambda: None)
    if server is None:
        monkeypatch.delattr(multiprocessing.forkserver, "_forkserver")
    else:
        monkeypatch.setattr(multiprocessing.forkserver, "_forkserver", server)
    with caplog.at_level(logging.ERROR, logger="audiogw.supervisor.zygote"):
        started = zygote.Zygote()
        started.start()
    assert not started.releases_alive_fd
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert says in record.getMessage() and "kill -9" in record.getMessage()
    assert f"Python {sys.version_info[0]}.{sys.version_info[1]}" in record.getMessage()


# -- a real supervisor whose workers cannot release the forkserver's pipe ----------
class KeptPipeSupervisor(SupervisorProcess):
    """The fixture's supervisor, its forkserver preloading tests/forkserver_keeps_alive_fd.py."""

    def start(self) -> "KeptPipeSupervisor":
        # The forkserver imports its preload list from PYTHONPATH (it ignores the parent's sys.path)
        # and skips a module it cannot import: the test checks the module's mark in the log.
        code = ("from audiogw.supervisor import zygote\n"
                "zygote.PRELOAD = zygote.PRELOAD + ['forkserver_keeps_alive_fd']\n"
                "from audiogw.supervisor.cli import main; main()")
        tests = str(Path(__file__).parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
        log = open(self.folder / "supervisor.log", "ab")
        self.process = subprocess.Popen([sys.executable, "-c", code, "start", "--config", str(self.config_path)],
                                        stdout=log, stderr=log, cwd=self.folder, env=env)
        wait_for(lambda: self.running_states(), 15, what="supervisor to serve every extension")
        return self


def _alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def test_without_the_pipe_release_a_kill_9_still_leaves_no_worker(tmp_path):
    base = free_port_block(20)
    supervisor = KeptPipeSupervisor(tmp_path, write_config(tmp_path, base), base).start()
    workers: list[int] = []
    forkservers: list[int] = []
    try:
        workers = list(supervisor.pids().values())
        from forkserver_keeps_alive_fd import KEPT

        assert supervisor.log().count(KEPT) == 2, supervisor.log()
        forkservers = sorted({psutil.Process(pid).ppid() for pid in workers})  # the workers' parent
        assert len(workers) == 2 and len(forkservers) == 1
        supervisor.process.kill()
        supervisor.process.wait()
        wait_for(lambda: not any(_alive(pid) for pid in workers + forkservers), 10,
                 what="workers and forkserver to exit after the supervisor died")
        # They ended through their pid watch (the kernel's parent-death kill needs the released pipe).
        assert supervisor.log().count(f"supervisor pid {supervisor.process.pid} is gone: stopping") == 2
    finally:
        kill_tree(supervisor.process.pid)
        for pid in workers + forkservers:  # a failure here is exactly the orphans this test is about
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

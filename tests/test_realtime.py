"""audiosocket.realtime_priority: a real worker process, its threads' scheduling read back from the kernel."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from audiogw.shared.audiosocket import Kind, encode_audio
from audiogw.shared.net import free_port_block
from audiogw.shared.records import read_ready
from audiogw.worker.realtime import log_realtime
from conftest import raw_connect, read_frames, realtime_allowed, wait_for
from supervisor_fixture import SupervisorProcess, write_config


def thread_policies(pid: int) -> dict[int, int]:
    return {int(tid): os.sched_getscheduler(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


def echoes(port: int) -> bool:
    sock = raw_connect(port)
    payload = (b"\x10\x20" * 160)
    for _ in range(10):
        sock.sendall(encode_audio(payload))
        time.sleep(0.02)
    frames = read_frames(sock, 0.3)
    sock.close()
    return any(kind == Kind.SLIN_8K and data == payload for kind, data in frames)


def test_realtime_priority_puts_every_worker_thread_under_sched_rr_or_says_why_not(start_worker):
    normal = start_worker("echo", extension="1202", args=("--realtime-priority", "0"))
    worker = start_worker("echo", args=("--realtime-priority", "10"))
    normal.wait_log("worker ready")
    assert set(thread_policies(normal.process.pid).values()) == {os.SCHED_OTHER}
    assert "SCHED_RR" not in normal.log() and "realtime_priority" not in normal.log()

    worker.wait_log("worker ready")
    policies = thread_policies(worker.process.pid)
    assert len(policies) >= 2  # the event loop and the log writer, at least
    if realtime_allowed():
        worker.wait_log("extension=1201 audio clock under SCHED_RR priority 10")
        # Every thread, the log writer included: one holding the GIL at normal priority would stall the clock.
        assert set(policies.values()) == {os.SCHED_RR}
        assert os.sched_getparam(worker.process.pid).sched_priority == 10
    else:
        log = worker.wait_log("realtime_priority=10 refused")
        assert "LimitRTPRIO=10" in log
        assert set(policies.values()) == {os.SCHED_OTHER}
    assert echoes(worker.ia_port), "a real-time worker serves calls like any other"


def test_a_refusal_is_a_warning_that_says_how_to_allow_it(caplog):
    with caplog.at_level(logging.INFO, logger="audiogw.worker"):
        log_realtime(20, "1201", PermissionError(errno.EPERM, "Operation not permitted"))
        log_realtime(20, "1202", None)
    refused, granted = caplog.records
    assert refused.levelno == logging.WARNING
    assert "extension=1201 realtime_priority=20 refused (Operation not permitted)" in refused.getMessage()
    assert "CAP_SYS_NICE" in refused.getMessage() and "LimitRTPRIO=20" in refused.getMessage()
    assert granted.levelno == logging.INFO
    assert granted.getMessage() == "extension=1202 audio clock under SCHED_RR priority 20"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to start a worker without the right to real-time")
def test_a_worker_refused_real_time_warns_and_still_serves(tmp_path):
    """The refusal for real: the worker runs as nobody (no CAP_SYS_NICE, RLIMIT_RTPRIO 0)."""
    log_path = tmp_path / "worker.log"
    os.chmod(tmp_path, 0o755)
    # Where the unprivileged worker may write its ready file (pytest's folders are root's, 0700).
    shared = Path(tempfile.mkdtemp(prefix="audiogw-nobody-"))
    os.chmod(shared, 0o777)
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "audiogw.worker",
             "--extension", "1201", "--ia-port", "0", "--retorno-port", "0", "--realtime-priority", "10",
             "--ready-file", str(shared / "ready.json")],
            stdout=log_file, stderr=log_file, cwd=tmp_path)
    try:
        ready = wait_for(lambda: read_ready(shared / "ready.json"), 15, what="the unprivileged worker to serve")
        log = wait_for(lambda: text if "worker ready" in (text := log_path.read_text()) else None, 5,
                       what="the worker's log")
        assert "realtime_priority=10 refused (Operation not permitted)" in log
        assert set(thread_policies(process.pid).values()) == {os.SCHED_OTHER}
        assert echoes(ready.ports["ia"])
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(shared, ignore_errors=True)


def test_metrics_show_the_priority_the_kernel_gave_each_worker(tmp_path):
    """audiogw_worker_realtime_priority comes from the kernel: 10 when granted, 0 when refused."""
    base = free_port_block(20)
    config = write_config(tmp_path, base, extensions=1)
    text = config.read_text().replace("[audiosocket]\n", "[audiosocket]\nrealtime_priority = 10\n", 1)
    config.write_text(text)
    supervisor = SupervisorProcess(tmp_path, config, base).start()
    try:
        (sample,) = supervisor.scrape()["audiogw_worker_realtime_priority"].samples
        assert sample.labels == {"extension": "1201"}
        if realtime_allowed():
            assert sample.value == 10
            assert "extension=1201 audio clock under SCHED_RR priority 10" in supervisor.log()
        else:
            assert sample.value == 0
            assert "realtime_priority=10 refused" in supervisor.log()
    finally:
        supervisor.stop()

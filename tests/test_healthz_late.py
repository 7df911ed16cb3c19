"""/healthz turns degraded as soon as a heartbeat is late, before the lifecycle kills the worker."""
from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from audiogw.shared.net import free_port_block
from audiogw.supervisor.metrics import ExtensionSample, health, heartbeat_late_after
from conftest import wait_for
from supervisor_fixture import SupervisorProcess, kill_tree, write_config

INTERVAL = 0.2  # write_config's heartbeat_interval
LONG_TIMEOUT = 30.0


def test_health_names_a_late_heartbeat_before_the_timeout() -> None:
    now = 1000.0
    limit = heartbeat_late_after(INTERVAL)
    on_time = ExtensionSample(id="1", running=True, last_heartbeat=now - limit / 2)
    late = ExtensionSample(id="2", running=True, last_heartbeat=now - limit - 0.1)
    stopped = ExtensionSample(id="3", running=False, last_heartbeat=now - limit - 0.1)
    code, body = health([on_time, late], now=now, heartbeat_timeout=LONG_TIMEOUT, heartbeat_interval=INTERVAL)
    assert code == 503
    assert body == {"status": "degraded", "down": [],
                    "late": [{"extension": "2", "seconds_since_heartbeat": round(limit + 0.1, 3),
                              "late_after_seconds": limit}]}
    assert health([on_time], now=now, heartbeat_timeout=LONG_TIMEOUT, heartbeat_interval=INTERVAL)[0] == 200
    # Just past the limit reads as past it, not as equal (CI saw "0.4 > 0.4" with round()).
    just = ExtensionSample(id="4", running=True, last_heartbeat=now - limit - 0.0002)
    [reported] = health([just], now=now, heartbeat_timeout=LONG_TIMEOUT, heartbeat_interval=INTERVAL)[1]["late"]
    assert reported["seconds_since_heartbeat"] > reported["late_after_seconds"] == limit, reported
    # A worker that is not running is "down", never "late".
    assert health([stopped], now=now, heartbeat_timeout=LONG_TIMEOUT, heartbeat_interval=INTERVAL)[1] == {
        "status": "degraded", "down": ["3"]}


@pytest.fixture(name="supervisor")
def long_timeout_supervisor(tmp_path: Path):
    base = free_port_block(20)
    path = write_config(tmp_path, base)
    text = path.read_text()
    assert f"heartbeat_interval = {INTERVAL}" in text
    path.write_text(text.replace("heartbeat_timeout = 1.0", f"heartbeat_timeout = {LONG_TIMEOUT}"))
    process = SupervisorProcess(tmp_path, path, base).start()
    yield process
    process.stop()
    kill_tree(process.process.pid)


def healthz(supervisor) -> tuple[int, dict]:
    url = supervisor.metrics_url.replace("/metrics", "/healthz")
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def test_stopped_worker_is_degraded_in_healthz_long_before_its_kill(supervisor):
    wait_for(lambda: healthz(supervisor)[0] == 200 or None, 10, what="healthz 200")
    pid = supervisor.pids()["1201"]
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        body = wait_for(lambda: (lambda r: r[1] if r[0] == 503 else None)(healthz(supervisor)), 10,
                        what="healthz 503 after SIGSTOP")
        noticed = time.monotonic() - stopped
        assert noticed < LONG_TIMEOUT / 4, noticed  # far before heartbeat_timeout
        assert body["status"] == "degraded" and body["down"] == []
        [late] = body["late"]
        assert late["extension"] == "1201"
        assert late["late_after_seconds"] == heartbeat_late_after(INTERVAL)
        assert late["seconds_since_heartbeat"] > late["late_after_seconds"]
        rows = {row["id"]: row for row in supervisor.ctl("list")}
        assert rows["1201"]["pid"] == pid and rows["1201"]["state"] == "running", "not killed yet"
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: healthz(supervisor)[0] == 200 or None, 10, what="healthz 200 after SIGCONT")
    assert supervisor.pids()["1201"] == pid

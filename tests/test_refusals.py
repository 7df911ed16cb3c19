"""Extensions that cannot serve refuse connections at once (SPEC "Extension states and truthful
replies"), with a real supervisor and real workers: a `fatal` extension's port, and one draining
for a removal, answer a connect with ECONNREFUSED instead of leaving the caller in the backlog;
a restart binds again. A quick restart (BACKOFF) keeps the sockets: callers wait in the backlog."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import pytest

from audiogw.client.softphone import place_call
from audiogw.shared.net import free_port_block
from conftest import wait_for
from test_states import (  # noqa: F401 (fixtures: started, and tests/ on the workers' PYTHONPATH)
    FAILING, _failing_app_importable, configure, ctl, launch, rows, started,
)

pytestmark = pytest.mark.timeout(120)

REFUSED_WITHIN = 0.05  # seconds: "at once", against the seconds a caller would wait in a backlog


def connect_outcome(port: int, timeout: float = 2.0) -> tuple[str, float]:
    """("refused" | "connected" | "timeout", seconds taken) for one TCP connect to 127.0.0.1:port."""
    probe = socket.socket()
    probe.settimeout(timeout)
    begun = time.monotonic()
    try:
        probe.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        return "refused", time.monotonic() - begun
    except TimeoutError:
        return "timeout", time.monotonic() - begun
    finally:
        probe.close()
    return "connected", time.monotonic() - begun


def fatal_config(tmp_path, base):
    marker = tmp_path / "ready.marker"
    extra = (f'[[extension]]\nid = "1300"\nia_port = {base + 10}\nretorno_port = {base + 11}\napp = "{FAILING}"\n'
             f'options = {{ mode = "config", until = "{marker}" }}\n')
    return configure(tmp_path, base, [], extensions=1, extra=extra), marker  # fatal_retry: the default 60 s


def test_a_fatal_extension_refuses_at_once_and_serves_after_restart_extension(tmp_path, started):
    base = free_port_block(20)
    config, marker = fatal_config(tmp_path, base)
    supervisor = launch(tmp_path, config, base)
    started.append(supervisor)
    wait_for(lambda: rows(supervisor)["1300"]["state"] == "fatal", 15, what="1300 fatal")
    for port in (base + 10, base + 11):
        outcome, took = connect_outcome(port)
        assert outcome == "refused" and took < REFUSED_WITHIN, (port, outcome, took)
    assert connect_outcome(base)[0] == "connected", "the serving extension is not touched"
    marker.touch()
    result = ctl(supervisor, "restart-extension", "1300")
    assert result.returncode == 0, result
    assert rows(supervisor)["1300"]["state"] == "running"
    call = asyncio.run(place_call("127.0.0.1", base + 10, seconds=0.5))
    assert call.error is None and call.frames_received > 0, call


def test_removal_with_a_drain_refuses_new_callers_while_the_call_in_progress_goes_on(tmp_path, started):
    base = free_port_block(20)
    supervisor = launch(tmp_path, configure(tmp_path, base, [], extensions=1), base)
    started.append(supervisor)
    wait_for(lambda: rows(supervisor)["1201"]["state"] == "running", 15, what="1201 serving")
    drain = 4.0
    call_seconds = 3.0  # ends on its own within the drain

    async def scenario():
        call = asyncio.ensure_future(place_call("127.0.0.1", base, seconds=call_seconds))
        await asyncio.sleep(0.5)
        removal = asyncio.ensure_future(asyncio.to_thread(ctl, supervisor, "remove-extension", "1201",
                                                          "--drain", str(drain)))
        await asyncio.to_thread(wait_for, lambda: connect_outcome(base)[0] == "refused", 2.0, 0.01,
                                what="new connects refused during the drain")
        outcomes = [await asyncio.to_thread(connect_outcome, port) for port in (base, base + 1)]
        in_progress_then = not call.done()
        answered = await removal
        answered_during_call = not call.done()  # the reply does not wait for the drain
        return await call, answered, outcomes, in_progress_then, answered_during_call

    result, removal, outcomes, in_progress_then, answered_during_call = asyncio.run(scenario())
    assert in_progress_then, "the refusals were seen while the call was still in progress"
    assert answered_during_call, "remove-extension answered only after the drain"
    for outcome, took in outcomes:
        assert outcome == "refused" and took < REFUSED_WITHIN, outcomes
    assert removal.returncode == 0, removal
    assert result.error is None and result.hung_up_by == "client", result
    assert abs(result.frames_received - result.frames_sent) <= 2, result


def test_a_drain_that_ends_hangs_up_the_call_still_in_progress(tmp_path, started):
    base = free_port_block(20)
    supervisor = launch(tmp_path, configure(tmp_path, base, [], extensions=1), base)
    started.append(supervisor)
    wait_for(lambda: rows(supervisor)["1201"]["state"] == "running", 15, what="1201 serving")

    async def scenario():
        call = asyncio.ensure_future(place_call("127.0.0.1", base, seconds=10.0))
        await asyncio.sleep(0.5)
        removal = await asyncio.to_thread(ctl, supervisor, "remove-extension", "1201", "--drain", "1")
        return await call, removal

    begun = time.monotonic()
    result, removal = asyncio.run(scenario())
    assert removal.returncode == 0, removal
    assert result.hung_up_by == "server" and result.frames_received > 0, result
    assert time.monotonic() - begun < 10.0, "cut by the drain's end, not the call's"
    assert connect_outcome(base)[0] == "refused"


def test_a_quick_restart_keeps_the_sockets_so_callers_wait_in_the_backlog(tmp_path, started):
    """BACKOFF is not "cannot serve": a connect made while the worker restarts is queued, then served."""
    base = free_port_block(20)
    supervisor = launch(tmp_path, configure(tmp_path, base, ["backoff_initial = 1.0"], extensions=1), base)
    started.append(supervisor)
    pid = wait_for(lambda: (r := rows(supervisor)["1201"])["state"] == "running" and r["pid"], 15,
                   what="1201 serving")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: rows(supervisor)["1201"]["state"] == "backoff", 5, 0.01, what="1201 in backoff")
    assert connect_outcome(base)[0] == "connected", "queued in the kept socket's backlog"
    call = asyncio.run(place_call("127.0.0.1", base, seconds=3.0))  # outlasts the 1 s backoff
    assert call.error is None and call.frames_received > 0, call

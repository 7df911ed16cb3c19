"""`reload` of a changed extension with no dead air (SPEC "Extension states and truthful
replies"), with a real supervisor and real workers: the old worker drains its call in progress
apart while a new worker on the same listening sockets serves new calls at once, and `ctl reload`
answers when the new worker serves, not when the drain ends."""
from __future__ import annotations

import asyncio
import time

import pytest

from audiogw.client.softphone import place_call
from audiogw.shared.net import free_port_block
from conftest import wait_for
from test_states import (  # noqa: F401 (fixtures: started, and tests/ on the workers' PYTHONPATH)
    FAILING, _failing_app_importable, configure, ctl, launch, rows, started,
)

pytestmark = pytest.mark.timeout(120)


def change_app(config, base: int, marker) -> None:
    """Extension 1201 (the first, on ``base``) changed, same ports: the test app, echoing once ``marker`` exists."""
    config.write_text(config.read_text().replace(
        f"retorno_port = {base + 1}\n",
        f'retorno_port = {base + 1}\napp = "{FAILING}"\noptions = {{ mode = "config", until = "{marker}" }}\n'))


def test_reload_hands_over_new_calls_to_the_new_worker_while_the_old_one_finishes(tmp_path, started):
    base = free_port_block(20)
    drain, old_call_seconds = 8.0, 4.0
    config = configure(tmp_path, base, [], extensions=1)
    config.write_text(config.read_text().replace("drain_seconds = 1.0", f"drain_seconds = {drain}"))
    supervisor = launch(tmp_path, config, base)
    started.append(supervisor)
    old_pid = wait_for(lambda: (r := rows(supervisor)["1201"])["state"] == "running" and r["pid"], 15,
                       what="1201 serving")
    marker = tmp_path / "ready.marker"
    marker.touch()  # the failing app echoes once this exists: a changed extension that serves

    async def scenario():
        old_call = asyncio.ensure_future(place_call("127.0.0.1", base, seconds=old_call_seconds))
        await asyncio.sleep(0.5)
        change_app(config, base, marker)
        begun = time.monotonic()
        reload = await asyncio.to_thread(ctl, supervisor, "reload")
        took = time.monotonic() - begun
        old_in_progress = not old_call.done()
        new_call = await place_call("127.0.0.1", base, seconds=1.0)
        old_still_draining = not old_call.done()
        return reload, took, old_in_progress, old_still_draining, new_call, await old_call

    reload, took, old_in_progress, old_still_draining, new_call, old_call = asyncio.run(scenario())
    assert reload.returncode == 0 and "1201" in reload.stdout, reload
    assert old_in_progress, f"ctl reload answered when the new worker served ({took:.2f} s), not after the drain"
    assert old_still_draining, "the new call was served while the old worker still drained"
    assert new_call.error is None and new_call.frames_received > 0, new_call
    assert abs(new_call.frames_received - new_call.frames_sent) <= 2, new_call
    assert old_call.error is None and old_call.hung_up_by == "client", old_call
    assert abs(old_call.frames_received - old_call.frames_sent) <= 2, "the call in progress kept its audio"
    row = rows(supervisor)["1201"]
    assert row["state"] == "running" and row["pid"] != old_pid
    wait_for(lambda: "(replaced, drained)" in supervisor.log(), 5, what="the old worker's exit once drained")
    assert rows(supervisor)["1201"]["state"] == "running", "the old worker's exit is no crash of the new one"
    assert supervisor.ctl("status", {"id": "1201"})[0]["restarts"] == 0


def test_ctl_reload_waits_longer_than_the_supervisor_does_for_the_new_workers():
    from audiogw.shared.commands import RELOAD
    from audiogw.supervisor.lifecycle import RestartPolicy

    assert RELOAD.server_wait is not None and RELOAD.server_wait < RELOAD.client_timeout(1.0)
    assert RELOAD.server_wait > RestartPolicy().start_timeout, "a start timeout's kill is seen before the reply"


def test_a_removal_during_the_handover_drain_ends_the_old_worker_too(tmp_path, started):
    import psutil

    base = free_port_block(20)
    config = configure(tmp_path, base, [], extensions=1)
    config.write_text(config.read_text().replace("drain_seconds = 1.0", "drain_seconds = 30.0"))
    supervisor = launch(tmp_path, config, base)
    started.append(supervisor)
    old_pid = wait_for(lambda: (r := rows(supervisor)["1201"])["state"] == "running" and r["pid"], 15,
                       what="1201 serving")
    marker = tmp_path / "ready.marker"
    marker.touch()

    async def scenario():
        old_call = asyncio.ensure_future(place_call("127.0.0.1", base, seconds=20.0))
        await asyncio.sleep(0.5)
        change_app(config, base, marker)
        reload = await asyncio.to_thread(ctl, supervisor, "reload")
        new_pid = rows(supervisor)["1201"]["pid"]
        removal = await asyncio.to_thread(ctl, supervisor, "remove-extension", "1201", "--drain", "1")
        return reload, new_pid, removal, await old_call

    begun = time.monotonic()
    reload, new_pid, removal, old_call = asyncio.run(scenario())
    assert reload.returncode == 0 and removal.returncode == 0, (reload, removal)
    assert old_call.hung_up_by == "server" and time.monotonic() - begun < 15.0, "cut by the removal's 1 s drain"
    def gone(pid: int) -> bool:
        try:
            return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    # The removal answered at once; both workers end with its 1 s drain (not the reload's 30 s).
    for pid in (old_pid, new_pid):
        wait_for(lambda: gone(pid), 5, what=f"worker {pid} to end after the removal's drain")


def test_a_reload_that_removes_an_extension_answers_while_its_calls_drain(tmp_path, started):
    """The reply waits for what must serve, not for a removed extension's drain: with a 30 s
    drain and a call in progress, `ctl reload` answers at once; the call goes on; the removed
    extension refuses new connections."""
    base = free_port_block(20)
    config = configure(tmp_path, base, [], extensions=2)
    config.write_text(config.read_text().replace("drain_seconds = 1.0", "drain_seconds = 30.0"))
    supervisor = launch(tmp_path, config, base)
    started.append(supervisor)
    wait_for(lambda: all(r["state"] == "running" for r in rows(supervisor).values()) or None, 15,
             what="both extensions serving")

    async def scenario():
        call = asyncio.ensure_future(place_call("127.0.0.1", base + 2, seconds=3.0))  # on 1202
        await asyncio.sleep(0.5)
        text = config.read_text()
        config.write_text(text[:text.index('[[extension]]\nid = "1202"')])
        begun = time.monotonic()
        reload = await asyncio.to_thread(ctl, supervisor, "reload")
        took = time.monotonic() - begun
        in_progress = not call.done()
        refused = None
        try:
            await asyncio.open_connection("127.0.0.1", base + 2)
        except ConnectionRefusedError:
            refused = True
        return reload, took, in_progress, refused, await call

    reload, took, in_progress, refused, call = asyncio.run(scenario())
    assert reload.returncode == 0 and "1202" in reload.stdout, reload
    assert in_progress, f"ctl reload answered after {took:.2f} s, only once the removed extension's call ended"
    assert refused, "the removed extension still accepted a new connection"
    assert call.error is None and abs(call.frames_received - call.frames_sent) <= 2, call
    assert "1202" not in rows(supervisor)

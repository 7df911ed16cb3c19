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
        config.write_text(config.read_text().replace(
            f"retorno_port = {base + 1}\n",
            f'retorno_port = {base + 1}\napp = "{FAILING}"\noptions = {{ mode = "config", until = "{marker}" }}\n'))
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

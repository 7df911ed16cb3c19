"""The CPU seconds (and memory) of an extension count its reload predecessor while it drains, and
keep them once it exits: `audiogw_worker_cpu_seconds_total` never drops nor stalls across a real
handover, and nothing is counted twice (the supervisor's psutil readings; real processes)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest

from audiogw.client.softphone import place_call
from audiogw.shared.net import free_port_block
from conftest import wait_for
from supervisor_fixture import kill_tree, write_config
from test_states import ctl, launch, rows

pytestmark = pytest.mark.timeout(120)

TESTS = Path(__file__).resolve().parent
BURN = 0.5  # cpu seconds the predecessor spends on its call while it drains, before the check


@pytest.fixture(autouse=True)
def _test_apps_importable(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))


def figure(supervisor, family: str) -> float:
    samples = supervisor.scrape()[family].samples
    return next(s.value for s in samples if s.labels.get("extension") == "1201" and not s.name.endswith("_created"))


def cpu_of(pid: int) -> float | None:
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.NoSuchProcess:
        return None
    return times.user + times.system


def test_cpu_seconds_count_the_draining_predecessor_and_carry_its_exit(tmp_path):
    base = free_port_block(20)
    config = write_config(tmp_path, base, extensions=1)
    text = config.read_text().replace("drain_seconds = 1.0", "drain_seconds = 30.0")
    text = text.replace("[audiosocket]\n", "[audiosocket]\nrealtime_priority = 0\n")  # its spin must not be SCHED_RR
    config.write_text(text + 'app = "service_apps:BusyApp"\n')
    supervisor = launch(tmp_path, config, base)
    seen: list[float] = []

    def cpu_total() -> float:
        seen.append(figure(supervisor, "audiogw_worker_cpu_seconds"))
        return seen[-1]

    try:
        old = wait_for(lambda: (r := rows(supervisor)["1201"])["state"] == "running" and r["pid"], 15,
                       what="1201 serving")

        async def scenario() -> None:
            call = asyncio.ensure_future(place_call("127.0.0.1", base, seconds=60.0))
            # Before the handover the worker has spent BURN on its call, and the total shows it.
            await asyncio.to_thread(wait_for, lambda: cpu_total() >= BURN, 15, 0.2, "the worker's cpu in the total")
            config.write_text(config.read_text().replace('"service_apps:BusyApp"\n',
                                                         '"service_apps:BusyApp"\noptions = { spin = 0.021 }\n'))
            reload = await asyncio.to_thread(ctl, supervisor, "reload")
            assert reload.returncode == 0, reload
            new = rows(supervisor)["1201"]["pid"]
            assert new != old and cpu_of(old) is not None, "a handover: the old worker drains its call"
            at_handover = cpu_of(old)
            # The predecessor burns on its call; the total must grow past what it has spent so far.
            burnt = await asyncio.to_thread(wait_for, lambda: (c := cpu_of(old)) and c >= at_handover + BURN and c,
                                            10, 0.05, "the predecessor's burn")
            await asyncio.to_thread(wait_for, lambda: cpu_total() >= burnt, 10, 0.2,
                                    "the predecessor's cpu in the total while it drains")
            new_rss = psutil.Process(new).memory_info().rss
            await asyncio.to_thread(wait_for, lambda: figure(supervisor, "audiogw_worker_resident_memory_bytes")
                                    > 1.5 * new_rss, 10, 0.2, "both workers' memory while it drains")
            before_hangup = cpu_of(old)
            call.cancel()  # the caller hangs up: the predecessor's drain ends, it exits
            await asyncio.gather(call, return_exceptions=True)
            await asyncio.to_thread(wait_for, lambda: cpu_of(old) is None, 10, 0.05, "the predecessor's exit")
            assert "(replaced, drained)" in supervisor.log()
            await asyncio.to_thread(wait_for, lambda: figure(supervisor, "audiogw_worker_resident_memory_bytes")
                                    < 1.5 * new_rss, 10, 0.2, "the predecessor's memory gone with it")
            # Its exit carried its seconds (no drop, checked below), each counted once: what the old
            # worker spent before the handover (at least BURN) is not in the total twice.
            total = cpu_total()
            spent = before_hangup + cpu_of(new)  # the old worker stopped spending as the call ended
            assert total < spent + BURN / 2, (total, spent)

        asyncio.run(scenario())
        assert seen == sorted(seen), f"the cpu total dropped: {seen}"
    finally:
        supervisor.stop()
        kill_tree(supervisor.process.pid)

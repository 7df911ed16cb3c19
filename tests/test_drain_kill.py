"""A worker hung during a drain leaves a traceback of every thread in the log before it is killed,
whichever drain it is: a removal, a reload's handover (the predecessor past its deadline), a stop.
One kill path (Supervisor.kill_worker): DUMP_SIGNAL, then SIGKILL DUMP_BEFORE_KILL later."""
from __future__ import annotations

import re
from pathlib import Path

import psutil
import pytest

from audiogw.shared.net import free_port_block
from conftest import wait_for
from supervisor_fixture import SupervisorProcess, kill_tree, write_config
from test_states import ctl, launch, rows

pytestmark = pytest.mark.timeout(120)

TESTS = Path(__file__).resolve().parent
APP = 'app = "service_apps:CloseHangApp"\n'


@pytest.fixture(autouse=True)
def _test_apps_importable(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def dumped_then_killed(supervisor, pid: int, why: str) -> None:
    """Worker ``pid`` dies; between its dump order (``why``) and its kill the log holds its thread dump."""
    wait_for(lambda: gone(pid), 20, what=f"worker {pid} killed")
    log = supervisor.log()
    ordered = re.search(rf"pid={pid}: [^\n]*{re.escape(why)}[^\n]*dumping its threads[^\n]*\n", log)
    assert ordered, log
    dump = log[ordered.end():log.index("worker kill extension=", ordered.end())]
    assert "Thread 0x" in dump and "in blocked_here" in dump, dump  # the frame that blocks the loop


def test_hung_in_a_handover_drain_then_in_a_removal_drain_dumps_then_dies(tmp_path):
    base = free_port_block(20)
    config = write_config(tmp_path, base, extensions=2)  # drain_seconds = 1.0
    text = config.read_text()
    config.write_text(text.replace(f"retorno_port = {base + 1}\n", f"retorno_port = {base + 1}\n{APP}")
                      .replace(f"retorno_port = {base + 3}\n", f"retorno_port = {base + 3}\n{APP}"))
    supervisor = launch(tmp_path, config, base)
    try:
        wait_for(lambda: supervisor.running_states(), 15, what="both extensions serving")
        pids = supervisor.pids()
        # 1. A reload changes 1202: a handover, the old worker drains apart as the predecessor and
        # blocks its loop as its drain ends; its kill deadline (drain + 5 s) comes.
        config.write_text(config.read_text().replace(
            f"retorno_port = {base + 3}\n{APP}", f"retorno_port = {base + 3}\n{APP}options = {{ close_blocks = 0 }}\n"))
        result = ctl(supervisor, "reload")
        assert result.returncode == 0, result
        dumped_then_killed(supervisor, pids["1202"], "(replaced) did not end its drain")
        assert rows(supervisor)["1202"]["state"] == "running"  # the new worker serves
        # 2. 1201 removed: its drain's end blocks too; the stop's deadline kills it.
        result = ctl(supervisor, "remove-extension", "1201", "--drain", "0")  # answers at once; the kill follows
        assert result.returncode == 0, result
        dumped_then_killed(supervisor, pids["1201"], "did not stop within")
    finally:
        supervisor.stop()
        kill_tree(supervisor.process.pid)

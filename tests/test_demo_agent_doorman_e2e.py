"""The doorman end to end through a real supervisor and worker, no Asterisk: two softphone legs
with one UUID (the visitor on the ia port, the resident calling the retorno port), as
``audiogw call`` on two terminals would; the supervisor runs the reference agent on /doorman."""
from __future__ import annotations

import asyncio

from audiogw.client.softphone import place_call

from doorman_gateway import RATE, VISITOR_HZ, assert_told_bridged_and_hung_up, at, heard_tone, visitor_and_resident, write_config
from supervisor_fixture import SupervisorProcess, kill_tree


def test_doorman_visitor_and_resident_through_a_real_supervisor(tmp_path):
    base = write_config(tmp_path)
    supervisor = SupervisorProcess(tmp_path, tmp_path / "audiogw.toml", base).start()
    try:
        visitor, resident = visitor_and_resident(base)
    finally:
        kill_tree(supervisor.process.pid)
        supervisor.stop()
    log = supervisor.log()
    assert_told_bridged_and_hung_up(visitor, resident, log)
    assert "audiogw.bridge" in log and "audiogw.dial\"" not in log  # the resident was already there: no dial


def test_doorman_tells_a_lone_visitor_nobody_answers_when_the_dial_fails(tmp_path):
    base = write_config(tmp_path)
    supervisor = SupervisorProcess(tmp_path, tmp_path / "audiogw.toml", base).start()
    seconds = 12.0
    try:
        visitor = asyncio.run(place_call("127.0.0.1", base, source=at(1.6, VISITOR_HZ, 1.0, seconds), seconds=seconds))
    finally:
        kill_tree(supervisor.process.pid)
        supervisor.stop()
    log = supervisor.log()
    # No Asterisk here: the gateway answers audiogw.dial with a failed dial_status.
    assert '"event":"audiogw.dial"' in log and "dial_status failed" in log, log[-3000:]
    assert heard_tone(visitor.recorded[int(2.6 * RATE) :], 392.0, RATE) > 0.8  # "nobody answers"
    assert visitor.hung_up_by == "server" and visitor.duration < seconds, (visitor.hung_up_by, log[-3000:])

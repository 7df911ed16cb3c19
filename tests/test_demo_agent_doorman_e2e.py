"""The doorman end to end through a real supervisor and worker, no Asterisk: two softphone legs
with one UUID (the visitor on the ia port, the resident calling the retorno port), as
``audiogw call`` on two terminals would; the supervisor runs the reference agent on /doorman."""
from __future__ import annotations

import asyncio
import uuid

import numpy

from audiogw.client.softphone import place_call
from audiogw.shared.net import free_port_block
from audiogw.shared.wav import tone

from doorman_gateway import heard_tone
from supervisor_fixture import SupervisorProcess, kill_tree

RATE = 8000
VISITOR_HZ, RESIDENT_HZ = 350.0, 1500.0  # in no prompt


def at(seconds: float, frequency: float, length: float, total: float) -> numpy.ndarray:
    """Silence with one tone of ``length`` seconds starting at ``seconds``."""
    samples = numpy.zeros(int(total * RATE), dtype=numpy.int16)
    start = int(seconds * RATE)
    note = tone(frequency, length, RATE, 0.3)
    samples[start : start + len(note)] = note
    return samples


def write_config(tmp_path) -> int:
    """A config with one agent extension on the supervisor's reference agent, path /doorman; its base port."""
    base = free_port_block(4)
    demo_port = base + 3
    config = tmp_path / "audiogw.toml"
    config.write_text(
        '[supervisor]\ncontrol = "ipc://run/control.sock"\nmetrics = "127.0.0.1:0"\nstate_dir = "state"\n'
        f'demo_agent = "127.0.0.1:{demo_port}"\n'
        f'[audiosocket]\nbind = "127.0.0.1"\nport_range = [{base}, {base + 2}]\n'
        f'[[extension]]\nid = "1201"\nia_port = {base}\nretorno_port = {base + 1}\napp = "agent"\n'
        f'options = {{ url = "ws://127.0.0.1:{demo_port}/doorman" }}\n'
    )
    return base


def test_doorman_visitor_and_resident_through_a_real_supervisor(tmp_path):
    base = write_config(tmp_path)
    supervisor = SupervisorProcess(tmp_path, tmp_path / "audiogw.toml", base).start()
    call_uuid = uuid.uuid4()
    visitor_seconds, resident_seconds = 14.0, 9.0
    # The visitor speaks at 1.6 s (after greeting and "who is there?"); the resident, on the line
    # from 0.5 s (no AMI here: the agent is told at once, without a dial), presses 1 at 6 s
    # and then speaks; they hang up at 9.5 s: the visitor hears goodbye and is hung up.
    visitor_source = at(1.6, VISITOR_HZ, 1.0, visitor_seconds)
    resident_source = at(6.8, RESIDENT_HZ, 1.0, resident_seconds)

    async def both():
        visitor = asyncio.create_task(place_call("127.0.0.1", base, call_uuid=call_uuid, source=visitor_source,
                                                 seconds=visitor_seconds))
        await asyncio.sleep(0.5)
        resident = asyncio.create_task(place_call("127.0.0.1", base + 1, call_uuid=call_uuid,
                                                  source=resident_source, seconds=resident_seconds,
                                                  dtmf="1", dtmf_at=6.0))
        return await visitor, await resident

    try:
        visitor, resident = asyncio.run(both())
    finally:
        kill_tree(supervisor.process.pid)
        supervisor.stop()
    log = supervisor.log()
    heard_by_resident = resident.recorded
    heard_by_visitor = visitor.recorded
    # The resident heard the visitor's recorded turn (the agent's playback, before the bridge).
    assert heard_tone(heard_by_resident[: 6 * RATE], VISITOR_HZ, RATE) > 0.8, log[-3000:]
    # Bridged: the visitor heard the resident speak (after the 1), the agent still on the line.
    assert heard_tone(heard_by_visitor[int(6.5 * RATE) : int(9 * RATE)], RESIDENT_HZ, RATE) > 0.5, log[-3000:]
    assert heard_tone(heard_by_visitor[: 6 * RATE], RESIDENT_HZ, RATE) < 0.1  # not before the bridge
    # The resident hung up: goodbye to the visitor, whose leg the agent then ended.
    assert visitor.hung_up_by == "server" and visitor.duration < visitor_seconds, (visitor.hung_up_by, log[-3000:])
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

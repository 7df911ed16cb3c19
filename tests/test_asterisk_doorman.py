"""End to end through a real Asterisk: a real supervisor (AMI), its real agent worker, a WebSocket agent.

The visitor calls the generated agent-driven dialplan; the agent rings the resident
(audiogw.dial -> the supervisor's AMI Originate), gets ringing/answered, the resident's leg
opens its own stream with the visitor's callSid, the agent bridges the two (each phone then
hears the other's tone, which it did not before), sends DTMF to the visitor, and a
Twilio-style REST hangup ends both legs.
"""
from __future__ import annotations

import time
import uuid

import numpy
import pytest

pytest.importorskip("audiogw.worker.calls", reason="needs the worker side of call control (#14, worker/calls.py)")

from asterisk_fixture import assert_no_asterisk_errors  # noqa: E402
from asterisk_phone import Script
from audiogw.shared.media_streams import agent_bridge_message, agent_dial_message, agent_send_dtmf_message
from audiogw.shared.net import free_port_block
from audiogw.supervisor.dialplan import manager_conf_lines
from calls_fixture import AMI_SECRET, AMI_USER, EXTENSION, ami_connected, rest_hangup, write_calls_config
from conftest import wait_for
from supervisor_fixture import SupervisorProcess, kill_tree
from test_asterisk_calls import TEST_CONTEXTS
from test_conversation import ConversationAgent  # noqa: E402 - after the skip


VISITOR_HZ, RESIDENT_HZ = 500.0, 900.0


def tone(hz: float, seconds: float = 30.0) -> numpy.ndarray:
    t = numpy.arange(round(seconds * 8000)) / 8000
    return (3000 * numpy.sin(2 * numpy.pi * hz * t)).astype(numpy.int16)


def level_at(samples: numpy.ndarray, hz: float) -> float:
    """The amplitude of ``hz`` in ``samples`` (a single-bin DFT): ~1500 for the tone, ~0 without it."""
    t = numpy.arange(samples.size) / 8000
    return float(abs(numpy.dot(samples.astype(numpy.float64), numpy.exp(-2j * numpy.pi * hz * t))) / max(1, samples.size))


def test_the_agent_dials_the_resident_bridges_sends_dtmf_and_hangs_up_through_rest(tmp_path, private_asterisk, phone):
    agent = ConversationAgent().start()
    resident, visitor = phone(), phone()
    asterisk = private_asterisk("[general]\n[globals]\n", manager_conf_lines(AMI_USER, "{ami_port}", secret=AMI_SECRET))
    base = free_port_block(20)
    supervisor = SupervisorProcess(tmp_path, write_calls_config(tmp_path, base, manager=f"127.0.0.1:{asterisk.ami_port}",
                                                                url=agent.url), base)
    try:
        supervisor.start()
        generated = supervisor.ctl("dialplan", {"id": EXTENSION})["text"]
        asterisk.reload_dialplan("[general]\n[globals]\nRESIDENT_MODE = answer\n\n" + generated + "\n"
                                 + TEST_CONTEXTS.format(resident=resident.address, visitor=visitor.address))
        wait_for(lambda: ami_connected(supervisor) == 1, 15, what="AMI login")
        visitor_call, resident_call = str(uuid.uuid4()), str(uuid.uuid4())
        asterisk.set_global("VISITOR_UUID", visitor_call)
        asterisk.set_global("RESIDENT_UUID", resident_call)
        visitor.expect(visitor_call, Script(rate=8000, audio=tone(VISITOR_HZ), seconds=None))
        resident.expect(resident_call, Script(rate=8000, audio=tone(RESIDENT_HZ), seconds=None))
        asterisk.originate(f"Local/{EXTENSION}@audiogw-{EXTENSION}", extension="s@visitor-phone")
        wait_for(lambda: "ia" in agent.streams, 10, what="the visitor's stream at the agent")
        ia_start = agent.events("ia", "start")[0]["start"]
        agent.send("ia", agent_dial_message(agent.sid("ia"), 10))
        wait_for(lambda: "retorno" in agent.streams, 10, what="the resident's stream at the agent")
        retorno_start = agent.events("retorno", "start")[0]["start"]
        assert retorno_start["callSid"] == ia_start["callSid"]  # one conversation, one UUID
        statuses = [m["dial_status"]["status"] for m in agent.events("ia", "audiogw.dial_status")]
        assert statuses[:2] == ["ringing", "answered"], statuses
        visitor_phone, resident_phone = visitor.wait_call(visitor_call), resident.wait_call(resident_call)
        time.sleep(0.5)
        before = {"visitor": visitor_phone.heard().size, "resident": resident_phone.heard().size}
        assert level_at(visitor_phone.heard()[-2000:], RESIDENT_HZ) < 100  # not bridged yet: nothing of the other
        agent.send("ia", agent_bridge_message(agent.sid("ia")))
        time.sleep(1.0)
        visitor_heard = visitor_phone.heard()[before["visitor"] + 2000:]
        resident_heard = resident_phone.heard()[before["resident"] + 2000:]
        assert visitor_heard.size >= 4000 and resident_heard.size >= 4000
        assert level_at(visitor_heard, RESIDENT_HZ) > 500, "the visitor does not hear the resident"
        assert level_at(resident_heard, VISITOR_HZ) > 500, "the resident does not hear the visitor"
        assert level_at(visitor_heard, VISITOR_HZ) < 100, "the visitor hears their own voice back"
        agent.send("ia", agent_send_dtmf_message(agent.sid("ia"), "ia", "9"))
        wait_for(lambda: visitor_phone.dtmf() == "9", 10, what="the door DTMF at the visitor's phone")
        call_uuid = str(uuid.UUID(hex=ia_start["callSid"][2:]))
        assert rest_hangup(supervisor, call_uuid, password="wrong-token-0123456789")[0] == 401
        code, body, _ = rest_hangup(supervisor, call_uuid)
        assert code == 200, body
        visitor.wait_ended(visitor_call, 10)
        resident.wait_ended(resident_call, 10)
        assert asterisk.wait_no_channels(5), asterisk.channels()
        assert_no_asterisk_errors(asterisk)
    finally:
        supervisor.stop()
        if supervisor.process is not None:
            kill_tree(supervisor.process.pid)
        agent.stop()

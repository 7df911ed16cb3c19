"""The demo agent's doorman: the pure state machine in-process, then the agent over real
WebSockets on 127.0.0.1 driven by a fake gateway for both legs (tests/doorman_gateway.py)."""
from __future__ import annotations

import asyncio
import logging

import numpy
import pytest

from audiogw.client.demo_agent import (
    DEFAULT_PROMPTS,
    IA,
    RETORNO,
    After,
    Close,
    Doorman,
    Play,
    Recording,
    bound_port,
    doorman_digits,
    load_prompts,
    prompt_seconds,
    serve_demo_agent,
)
from audiogw.shared.media_streams import AgentBridge, AgentDial, AgentHangup, AgentSendDtmf, StreamFormat
from audiogw.shared.vad import level_dbfs
from audiogw.shared.wav import read_wav, tone

from doorman_gateway import FakeLeg, call_sid, tone_power

RATE = 8000
VISITOR_HZ = 350.0  # in no prompt: the resident hearing it hears the visitor's recording
PROMPT_SECONDS = prompt_seconds(load_prompts(DEFAULT_PROMPTS))


def visitor_turn(seconds: float = 0.8, rate: int = RATE) -> numpy.ndarray:
    """A turn the energy VAD ends: a tone, then quiet longer than its hangover."""
    return numpy.concatenate([tone(VISITOR_HZ, seconds, rate, 0.3), numpy.zeros(rate, dtype=numpy.int16)])


def fed(machine: Doorman, samples: numpy.ndarray, leg: str = IA) -> list:
    """Feed 20 ms frames until the machine acts; its actions."""
    frame = RATE // 50
    for offset in range(0, len(samples), frame):
        actions = machine.audio(leg, samples[offset : offset + frame])
        if actions:
            return actions
    return []


def machine_after_turn() -> Doorman:
    machine = Doorman(PROMPT_SECONDS)
    assert machine.start(IA, RATE) == [Play(IA, ("greeting", "who"), "who")]
    actions = fed(machine, visitor_turn())
    assert actions == [AgentDial(30.0), Play(IA, ("wait",), "wait")]
    return machine


# ---- the state machine, in-process ---------------------------------------------

def test_machine_the_whole_flow():
    machine = machine_after_turn()
    assert machine.mark(IA, "who") == [] and machine.dial_status("ringing") == []
    assert machine.dial_status("answered") == []
    [play] = machine.start(RETORNO, RATE)
    assert play.leg == RETORNO and play.mark == "menu" and play.parts[0] == "announce" and play.parts[2] == "menu"
    recording = play.parts[1]
    assert isinstance(recording, Recording) and recording.rate == RATE
    assert abs(len(recording.samples) - 0.8 * RATE) <= RATE // 50  # the tone, its quiet tail trimmed
    assert machine.dtmf(IA, "1") == []  # the visitor's keys do nothing
    assert machine.dtmf(RETORNO, "1") == [AgentBridge()]
    assert machine.dtmf(RETORNO, "1") == []  # already bridged
    assert machine.dtmf(RETORNO, "9") == [AgentSendDtmf(IA, "9"),
                                          Play(RETORNO, ("confirm",), "door")]
    assert machine.dtmf(RETORNO, "5") == []
    actions = machine.dtmf(RETORNO, "2")
    assert actions[:2] == [Play(IA, ("goodbye",), "bye"), Play(RETORNO, ("goodbye",), "bye")]
    assert actions[2] == After(pytest.approx(PROMPT_SECONDS["goodbye"] + 2.0), "end")
    assert machine.dtmf(RETORNO, "1") == []  # ending: the menu is over
    assert machine.mark(IA, "bye") == []  # the resident's goodbye is still playing
    assert machine.mark(RETORNO, "bye") == [AgentHangup(RETORNO), AgentHangup(IA),
                                            Close(RETORNO), Close(IA)]
    assert machine.timer("end") == []  # already done
    assert machine.stop(IA) == [] and machine.stop(RETORNO) == [] and machine.state == "ended"


@pytest.mark.parametrize("status", ["busy", "no_answer", "failed", "hangup"])
def test_machine_nobody_answers(status):
    machine = machine_after_turn()
    actions = machine.dial_status(status)
    assert actions == [Play(IA, ("unavailable",), "bye"), After(pytest.approx(PROMPT_SECONDS["unavailable"] + 2.0), "end")]
    assert machine.start(RETORNO, RATE) == [Close(RETORNO)]  # a resident who answers after that is too late
    # The mark never comes back (a gateway that lost it): the timer hangs up all the same.
    assert machine.timer("end") == [AgentHangup(RETORNO), AgentHangup(IA),
                                    Close(RETORNO), Close(IA)]


def test_machine_resident_already_on_the_line_is_told_without_dialing():
    machine = Doorman(PROMPT_SECONDS, door_digits="#")
    assert machine.start(RETORNO, RATE) == []  # early: holds until the visitor has spoken
    machine.start(IA, RATE)
    [play] = fed(machine, visitor_turn())
    assert play.leg == RETORNO and play.mark == "menu"
    assert machine.dtmf(RETORNO, "9")[0] == AgentSendDtmf(IA, "#")


def test_machine_someone_hangs_up():
    machine = machine_after_turn()
    machine.start(RETORNO, RATE)
    # The resident hangs up while the menu plays: the visitor hears nobody answers, then is hung up.
    assert machine.stop(RETORNO)[0] == Play(IA, ("unavailable",), "bye")
    assert machine.mark(IA, "bye") == [AgentHangup(IA), Close(IA)]

    machine = machine_after_turn()
    machine.start(RETORNO, RATE)
    machine.dtmf(RETORNO, "1")
    # The visitor leaves while bridged: goodbye to the resident only, then their hang-up.
    assert machine.stop(IA)[0] == Play(RETORNO, ("goodbye",), "bye")
    assert machine.mark(RETORNO, "bye") == [AgentHangup(RETORNO), Close(RETORNO)]

    machine = machine_after_turn()
    assert machine.stop(IA) == [] and machine.state == "ended"  # nobody left to talk to


def test_doorman_path_and_door_digits():
    assert doorman_digits("/media") is None and doorman_digits("/") is None and doorman_digits("/doormanx") is None
    assert doorman_digits("/doorman") == "9" and doorman_digits("/doorman/") == "9"
    assert doorman_digits("/doorman?door=%23") == "#" and doorman_digits("/doorman?door=12") == "12"
    assert doorman_digits("/doorman?door=x") == "9"  # not DTMF: refused, the default kept (logged)


# ---- the agent over WebSockets, the fake gateway on both legs -------------------

async def _serve():
    server = await serve_demo_agent("127.0.0.1", 0)
    return server, f"ws://127.0.0.1:{bound_port(server)}/doorman"


def test_doorman_over_websockets_greets_dials_tells_the_resident_bridges_opens_and_says_goodbye(caplog):
    caplog.set_level(logging.INFO, logger="audiogw.demo_agent")
    greeting = read_wav(DEFAULT_PROMPTS / "greeting.wav", RATE)
    who = read_wav(DEFAULT_PROMPTS / "who.wav", RATE)

    async def scenario():
        server, url = await _serve()
        try:
            call = call_sid()
            visitor = await FakeLeg(url, IA, call).open()
            await visitor.wait_mark("who")
            heard = visitor.audio_before_mark("who")
            assert numpy.array_equal(heard, MULAW(numpy.concatenate([greeting, who])))
            assert not visitor.events("audiogw.dial")  # not before the visitor has spoken

            await visitor.say(visitor_turn())
            dial = await visitor.wait_event("audiogw.dial")
            assert dial == {"event": "audiogw.dial", "streamSid": visitor.session.stream_sid, "dial": {"timeout": 30.0}}
            await visitor.wait_mark("wait")
            await visitor.dial_status("ringing")
            await visitor.dial_status("answered")

            resident = await FakeLeg(url, RETORNO, call).open()
            await resident.wait_mark("menu")
            told = resident.audio_before_mark("menu")
            announce = len(read_wav(DEFAULT_PROMPTS / "announce.wav", RATE))
            menu = len(read_wav(DEFAULT_PROMPTS / "menu.wav", RATE))
            recording = told[announce : len(told) - menu]
            assert abs(len(recording) - 0.8 * RATE) <= RATE // 50
            assert tone_power(recording, VISITOR_HZ, RATE) > 0.9  # the visitor's own turn
            assert level_dbfs(recording) == pytest.approx(level_dbfs(tone(VISITOR_HZ, 0.8, RATE, 0.3)), abs=1.0)

            await resident.dtmf("1")
            bridge = await visitor.wait_event("audiogw.bridge")
            assert bridge == {"event": "audiogw.bridge", "streamSid": visitor.session.stream_sid}
            await resident.dtmf("9")
            opened = await visitor.wait_event("audiogw.send_dtmf")
            assert opened["send_dtmf"] == {"leg": "ia", "digits": "9"}
            await resident.wait_mark("door")
            assert not resident.events("audiogw.send_dtmf")  # events go on the visitor's stream only

            await resident.dtmf("2")
            await visitor.wait_closed()
            await resident.wait_closed()
            hangups = [event["hangup"]["leg"] for event in visitor.events("audiogw.hangup")]
            assert sorted(hangups) == ["ia", "retorno"]
            assert "bye" in visitor.marks() and "bye" in resident.marks()  # goodbye played before the hang-up
            assert visitor.received.index(visitor.events("mark")[-1]) < visitor.received.index(visitor.events("audiogw.hangup")[0])
            assert [m.get("event") for m in visitor.received].count("audiogw.dial") == 1
        finally:
            server.close()
            await server.wait_closed()

    MULAW = lambda samples: StreamFormat("mulaw", RATE).from_wire(StreamFormat("mulaw", RATE).to_wire(  # noqa: E731
        samples.astype("<i2").tobytes()))
    asyncio.run(scenario())
    lines = [record.getMessage() for record in caplog.records]
    assert any("send {\"event\":\"audiogw.dial\"" in line for line in lines)


@pytest.mark.parametrize("status", ["busy", "failed"])
def test_doorman_over_websockets_tells_the_visitor_when_nobody_answers(status):
    async def scenario():
        server, url = await _serve()
        try:
            visitor = await FakeLeg(url, IA, call_sid()).open()
            await visitor.wait_mark("who")
            await visitor.say(visitor_turn())
            await visitor.wait_event("audiogw.dial")
            await visitor.dial_status(status)
            await visitor.wait_closed()
            assert "bye" in visitor.marks()
            assert [event["hangup"] for event in visitor.events("audiogw.hangup")] == [{"leg": "ia"}]
            unavailable = read_wav(DEFAULT_PROMPTS / "unavailable.wav", RATE)
            assert len(visitor.audio_before_mark("bye")) == len(unavailable)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_doorman_door_digits_from_the_url_bad_events_survived_and_conversations_apart(caplog):
    caplog.set_level(logging.INFO, logger="audiogw.demo_agent")

    async def scenario():
        server, url = await _serve()
        try:
            first, second = call_sid(), call_sid()
            visitor = await FakeLeg(url + "?door=%23", IA, first).open()
            other = await FakeLeg(url, IA, second).open()  # another conversation at once
            await visitor.wait_mark("who")
            for garbage in ['{"event": "audiogw.dial_status", "dial_status": {"status": "maybe"}}',
                            '{"event": "audiogw.dial_status"}', "not json"]:
                assert visitor.websocket is not None
                await visitor.websocket.send(garbage)
            await visitor.say(visitor_turn())
            await visitor.wait_event("audiogw.dial")
            resident = await FakeLeg(url, RETORNO, first).open()
            await resident.wait_mark("menu")
            await resident.dtmf("9")
            assert (await visitor.wait_event("audiogw.send_dtmf"))["send_dtmf"]["digits"] == "#"
            assert not other.events("audiogw.dial") and not other.events("audiogw.send_dtmf")
            # A second ia stream for a conversation that has one is refused, the first unharmed.
            intruder = await FakeLeg(url, IA, first).open()
            await resident.stop()  # the resident hangs up: the visitor is told, then hung up
            await visitor.wait_closed()
            assert visitor.events("audiogw.hangup")[-1]["hangup"] == {"leg": "ia"}
            await intruder.stop()
            await other.stop()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    lines = [record.getMessage() for record in caplog.records]
    assert any("reason=bad_dial_status" in line for line in lines)
    assert any("reason=second_leg" in line for line in lines)

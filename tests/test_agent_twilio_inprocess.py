"""The agent protocol fixes that let Pipecat's own runner plug in unchanged, in-process.

Twilio-shaped identities, a reconnect backoff that grows while sessions die young,
the play-out of queued agent audio before an agent's hang-up, and the ``jitter_ms``
pre-roll. Fake WebSocket and transport, manual clock (the helpers of
tests/test_agent_inprocess.py); the real-process case is tests/test_agent_close.py.
"""
from __future__ import annotations

import asyncio
import logging
import re
import uuid

import numpy

from audiogw.shared.audiosocket import HANGUP_FRAME, Kind
from audiogw.shared.media_streams import StreamFormat
from audiogw.shared.resample import StreamResampler
from audiogw.shared.twilio_ids import call_sid_for, uuid_for_call_sid
from audiogw.worker.apps import agent as agent_module
from audiogw.worker.playout import PlayoutBuffer
from audiogw.worker.reconnect import ReconnectBackoff
from test_agent_inprocess import (
    Call,
    FakeAgent,
    FakeAgentSocket,
    _call,
    _connected,
    _hang_up,
    _pcm,
    _ramp,
    in_loop,
    settle,
    until,
)
from test_leg_inprocess import ManualClock

MULAW = StreamFormat("mulaw", 8000)
FRAME_SAMPLES = 160  # 20 ms at 8 kHz
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2


async def _call_with_account(agent: FakeAgent, account_sid: str) -> Call:
    """A call whose worker was given ``agent.account_sid`` (WorkerSpec.account_sid → AppContext)."""
    agent.gate = asyncio.Event()  # the first connect waits while the context is set
    call = await _call(agent)
    call.app.context.account_sid = account_sid
    agent.gate.set()
    return call


def _audio_then_hangup(call: Call) -> tuple[list[bytes], bool]:
    """The payloads the caller heard, and whether the leg's last frame was the hang-up."""
    frames = call.sent_frames()
    return [frame.payload for frame in frames if frame.kind != Kind.HANGUP], frames[-1].kind == Kind.HANGUP


# -- identities -------------------------------------------------------------------

def test_call_sids_are_the_uuid_in_twilio_shape_and_map_back() -> None:
    call_uuid = uuid.uuid4()
    call_sid = call_sid_for(call_uuid)
    assert re.fullmatch(r"CA[0-9a-f]{32}", call_sid)
    assert uuid_for_call_sid(call_sid) == call_uuid
    for wrong in ("", call_sid.upper(), call_sid[:-1], "MZ" + call_uuid.hex, str(call_uuid), call_sid + "0"):
        assert uuid_for_call_sid(wrong) is None, wrong


@in_loop
async def test_start_and_stop_carry_twilio_identities_and_a_reconnection_gets_a_new_stream(monkeypatch) -> None:
    monkeypatch.setattr(agent_module, "FIRST_RETRY_DELAY", 0.001)
    agent = FakeAgent()
    call = await _call_with_account(agent, ACCOUNT_SID)
    await until(lambda: agent.sockets and len(agent.sockets[0].sent) >= 2, "connected and start sent")
    first = agent.sockets[0]
    start = first.json()[1]["start"]
    # What Pipecat 1.14's runner reads: it detects Twilio by start.streamSid + start.callSid
    # and builds TwilioFrameSerializer(stream_sid=streamSid, call_sid=callSid, ...).
    assert re.fullmatch(r"MZ[0-9a-f]{32}", start["streamSid"])
    assert start["callSid"] == "CA" + call.uuid.hex
    assert start["accountSid"] == ACCOUNT_SID
    assert first.json()[1]["streamSid"] == start["streamSid"]
    first.drop()
    await until(lambda: len(agent.sockets) == 2 and len(agent.sockets[1].sent) >= 2, "a second session")
    second = agent.sockets[1]
    restart = second.json()[1]["start"]
    assert re.fullmatch(r"MZ[0-9a-f]{32}", restart["streamSid"]) and restart["streamSid"] != start["streamSid"]
    assert (restart["callSid"], restart["accountSid"]) == (start["callSid"], ACCOUNT_SID)
    await _hang_up(call)
    stop = second.json()[-1]
    assert stop["event"] == "stop" and stop["streamSid"] == restart["streamSid"]
    assert stop["stop"] == {"accountSid": ACCOUNT_SID, "callSid": start["callSid"]}


# -- reconnect backoff ----------------------------------------------------------------

def _doubling(first: float, maximum: float, count: int) -> list[float]:
    return [min(first * 2 ** index, maximum) for index in range(count)]


def test_backoff_grows_on_refusals_and_on_sessions_that_die_young_and_resets_after_one_that_lived() -> None:
    clock = ManualClock()
    backoff = ReconnectBackoff(0.5, 5.0, stable_after=3.0, clock=clock)
    assert backoff.delay == 0 and not backoff.failing
    expected = _doubling(0.5, 5.0, 6)
    changes = []
    for index, delay in enumerate(expected):
        if index % 2:
            changes.append(backoff.refused())
        else:  # accepted, then closed at once: as good as a refusal
            backoff.opened()
            clock.advance(0.1)
            changes.append(backoff.ended())
        assert backoff.delay == delay
    assert changes == [delay != before for before, delay in zip([0.0, *expected], expected)]
    assert changes[-1] is False, "stuck at the maximum: no change to log"
    assert backoff.failures == len(expected)
    backoff.opened()
    clock.advance(3.0)
    assert backoff.ended() is True
    assert (backoff.delay, backoff.failures, backoff.last_lived) == (0.5, 0, 3.0)
    backoff.opened()
    assert backoff.ended() is True and backoff.delay == 1.0, "young again: growth starts over"


class AgentThatDies(FakeAgent):
    """Accepts, then the connection breaks at once (Pipecat's runner raising in its handler),
    except the sessions listed in ``lives``, which stay until the test drops them."""

    def __init__(self, lives: set[int] = frozenset()) -> None:
        super().__init__()
        self.lives = lives

    async def connect(self, url: str, **options) -> FakeAgentSocket:
        socket = await super().connect(url, **options)
        if len(self.sockets) not in self.lives:
            socket.drop()
        return socket


class RecordedDelays:
    """Stands in for agent._closed_within: records each reconnect delay instead of sleeping it;
    after ``limit`` of them it waits for the leg to close."""

    def __init__(self, limit: int) -> None:
        self.delays: list[float] = []
        self.limit = limit

    async def __call__(self, leg, seconds: float) -> bool:
        self.delays.append(seconds)
        if len(self.delays) >= self.limit:
            await leg.closed.wait()
            return True
        await asyncio.sleep(0)
        return False


@in_loop
async def test_an_agent_that_accepts_and_dies_at_once_is_reconnected_ever_more_slowly(monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="audiogw.worker.agent")
    attempts = 7
    waits = RecordedDelays(limit=attempts)
    monkeypatch.setattr(agent_module, "_closed_within", waits)
    monkeypatch.setattr(agent_module.AgentApp, "clock", staticmethod(ManualClock()))  # never advanced
    agent = AgentThatDies()
    call = await _call(agent)
    await until(lambda: len(waits.delays) == attempts, "the reconnect attempts")
    maximum = call.app.options.reconnect_max_delay
    assert waits.delays == _doubling(agent_module.FIRST_RETRY_DELAY, maximum, attempts)
    assert call.app.stats.reconnects["ia"] == len(agent.sockets) - 1 == attempts - 1
    assert call.app.stats.connect_failures["ia"] == 0, "they all connected"
    assert not call.leg.closed.is_set(), "the caller stays on the line (silence)"
    lost = [record for record in caplog.records if record.getMessage().startswith("agent connection lost")]
    assert len(lost) == attempts  # each session ended, each one waits a delay
    warned = [record for record in lost if record.levelno == logging.WARNING]
    assert len(warned) == len(set(waits.delays)), "one warning per change of the delay, not per attempt"
    await _hang_up(call)


@in_loop
async def test_a_session_that_lived_resets_the_backoff(monkeypatch) -> None:
    waits = RecordedDelays(limit=6)
    monkeypatch.setattr(agent_module, "_closed_within", waits)
    clock = ManualClock()
    monkeypatch.setattr(agent_module.AgentApp, "clock", staticmethod(clock))
    agent = AgentThatDies(lives={4})
    call = await _call(agent)
    await until(lambda: len(agent.sockets) == 4 and len(agent.sockets[3].sent) >= 2, "the fourth session lives")
    clock.advance(agent_module.STABLE_SESSION_SECONDS)
    agent.sockets[3].drop()
    await until(lambda: len(waits.delays) == 6, "two more attempts")
    first = agent_module.FIRST_RETRY_DELAY
    maximum = call.app.options.reconnect_max_delay
    assert waits.delays == [*_doubling(first, maximum, 3), *_doubling(first, maximum, 3)]
    await _hang_up(call)


# -- play-out before the agent's hang-up ------------------------------------------------

@in_loop
async def test_queued_agent_audio_plays_out_before_the_hang_up_when_the_agent_closes(monkeypatch) -> None:
    monkeypatch.setattr(agent_module, "PLAYOUT_MARGIN", 5.0)  # real seconds: room for a slow test machine
    agent = FakeAgent()
    call, socket = await _connected(agent)
    frames = 6
    reply = _ramp(frames * FRAME_SAMPLES - 70, start=3)  # ends in a partial frame
    for offset in range(0, reply.size, 100):
        socket.push_media(_pcm(reply[offset : offset + 100]), MULAW)
    socket.hang_up()
    await until(lambda: call.protocol._app_task is not None and len(call.leg.outbound) == frames,
                "the reply queued, its last partial frame padded")
    await settle()
    assert not call.leg.closed.is_set(), "the leg waits for its queued audio"
    call.tick(frames - 1)
    await settle()
    assert not call.leg.closed.is_set(), "one frame is still queued"
    call.tick(1)
    await until(lambda: call.leg.closed.is_set(), "the hang-up after the last frame")
    assert call.leg.end_reason == "agent_hangup"
    heard, hung_up = _audio_then_hangup(call)
    assert hung_up and bytes(call.transport.written).endswith(HANGUP_FRAME)
    expected = MULAW.from_wire(MULAW.to_wire(_pcm(reply))).astype("<i2").tobytes()
    assert b"".join(heard) == expected + bytes(frames * 320 - len(expected)), "every sample, in order"
    assert call.app.stats.audio_dropped_seconds["agent_closed"] == 0
    await until(lambda: call.protocol._app_task.done(), "the agent leg ended")


@in_loop
async def test_the_play_out_includes_the_resampler_tail(monkeypatch) -> None:
    monkeypatch.setattr(agent_module, "PLAYOUT_MARGIN", 5.0)
    agent = FakeAgent()
    call, socket = await _connected(agent, rate=16000)  # 8 kHz µ-law agent, 16 kHz leg: resampled
    reply = _ramp(5 * FRAME_SAMPLES, start=9, step=11)
    socket.push_media(_pcm(reply), MULAW)
    socket.hang_up()
    await until(lambda: call.leg.outbound.pending_marks == 1, "the play-out waits on the queue")
    queued = len(call.leg.outbound)
    call.tick(queued)
    await until(lambda: call.leg.closed.is_set(), "the hang-up")
    heard, hung_up = _audio_then_hangup(call)
    assert hung_up
    resampler = StreamResampler(8000, 16000)
    decoded = MULAW.from_wire(MULAW.to_wire(_pcm(reply)))
    whole = numpy.concatenate((resampler(decoded), resampler.flush())).astype("<i2").tobytes()
    assert len(whole) // 2 == reply.size * 2, "the tail brings the reply to its full length"
    played = b"".join(heard)
    assert played[: len(whole)] == whole and not any(played[len(whole):])


@in_loop
async def test_the_play_out_is_bounded_and_what_is_left_is_counted(monkeypatch) -> None:
    monkeypatch.setattr(agent_module, "PLAYOUT_ON_CLOSE_MAX", 0.05)  # real seconds; the test never ticks
    agent = FakeAgent()
    call, socket = await _connected(agent)
    frames = 50
    socket.push_media(_pcm(_ramp(frames * FRAME_SAMPLES)), MULAW)
    socket.hang_up()
    await until(lambda: call.leg.closed.is_set(), "the hang-up at the bound")
    assert call.leg.end_reason == "agent_hangup"
    assert abs(call.app.stats.audio_dropped_seconds["agent_closed"] - frames * 0.02) < 1e-9


@in_loop
async def test_everything_the_agent_sent_before_its_close_is_read_while_the_caller_keeps_talking(monkeypatch) -> None:
    monkeypatch.setattr(agent_module, "PLAYOUT_MARGIN", 5.0)
    agent = FakeAgent()
    call, socket = await _connected(agent)
    frames = 40  # five turns of the receiver (it yields every MESSAGES_PER_TURN)
    for index in range(frames):
        socket.push_media(_pcm(_ramp(FRAME_SAMPLES, start=index)), MULAW)
    socket.hang_up()  # from here the gateway's sends fail: the sender ends first
    call.feed(_pcm(_ramp(4 * FRAME_SAMPLES)), 8000)
    await until(lambda: call.leg.outbound.pending_marks == 1 or call.leg.closed.is_set(), "the play-out")
    assert call.leg.outbound.appended == frames, "no message after the first failed send was lost"
    call.tick(frames)
    await until(lambda: call.leg.closed.is_set(), "the hang-up")


# -- pre-roll (jitter_ms) -----------------------------------------------------------------

def _frame(value: int) -> bytes:
    return numpy.full(FRAME_SAMPLES, value, dtype="<i2").tobytes()


def test_preroll_holds_an_utterance_start_until_enough_is_queued_or_as_long_has_passed() -> None:
    buffer = PlayoutBuffer(8000, capacity_frames=100)
    buffer.set_preroll(3)
    buffer.push(_frame(1))
    assert buffer.pop() is None and buffer.pop() is None and buffer.pop() is None and buffer.holding
    assert buffer.pop()[-2:] == _frame(1)[-2:], "a lone frame waits as long as the pre-roll, then plays"
    assert buffer.pop() is None  # dry again: the next utterance is held
    for value in (2, 3):
        buffer.push(_frame(value))
        assert buffer.pop() is None
    buffer.push(_frame(4))
    assert [buffer.pop()[-1] for _ in range(3)] == [0, 0, 0] and not buffer.holding  # 2, 3, 4 (little-endian high bytes)
    buffer.push(_frame(5))
    assert buffer.pop() is not None, "not dry in between: no hold mid-utterance"
    assert buffer.pop() is None
    buffer.push(_frame(6))
    buffer.mark(lambda: None)
    assert buffer.pop() is not None, "a mark ends the utterance: it plays at once"
    buffer.push(_frame(7))
    buffer.push(_frame(8))
    buffer.clear()
    buffer.push(_frame(9))
    assert buffer.pop() is None, "after a clear the next utterance is held again"


def test_without_preroll_nothing_waits() -> None:
    buffer = PlayoutBuffer(8000, capacity_frames=100)
    buffer.set_preroll(0)
    assert buffer.pop() is None
    buffer.push(_frame(1))
    assert buffer.pop() is not None and not buffer.holding


async def _echo_with_jitter(options: dict) -> tuple[int, int, int]:
    """An input-driven agent (one chunk back per chunk heard) whose chunks arrive with jitter:
    every fourth is a tick late, arriving with the next. Returns (holes inside the echo,
    audio frames heard, ticks from the first chunk's arrival to its playing)."""
    agent = FakeAgent()
    call, socket = await _connected(agent, options)
    arrivals = [1, 1, 0, 2] * 10 + [0] * 5  # chunks the agent's socket delivers before each tick
    sent = 0
    sent_frames = []
    for count in arrivals:
        for _ in range(count):
            sent += 1
            socket.push_media(_pcm(numpy.full(FRAME_SAMPLES, 1000 + sent, dtype=numpy.int16)), MULAW)
        await until(lambda: call.leg.outbound.appended == sent, "the chunks queued")
        call.tick(1)
    sent_frames = [frame.payload for frame in call.sent_frames()]
    loud = [index for index, payload in enumerate(sent_frames) if any(payload)]
    holes = sum(1 for index in range(loud[0], loud[-1]) if not any(sent_frames[index]))
    await _hang_up(call)
    return holes, len(loud), loud[0]


@in_loop
async def test_preroll_removes_the_holes_of_an_input_driven_stream_and_zero_keeps_them() -> None:
    holes, heard, start = await _echo_with_jitter({})
    assert holes > 0 and start == 0, "jitter 0: unchanged, each late chunk is a 20 ms hole"
    chunks = sum([1, 1, 0, 2] * 10)
    assert heard == chunks
    jitter_ms = 40
    holes, heard, start = await _echo_with_jitter({"jitter_ms": jitter_ms})
    assert holes == 0 and heard == chunks, "with the cushion every chunk is on time"
    assert start <= jitter_ms // 20, "the pre-roll delays the utterance at most jitter_ms"

"""The demo agent over real WebSockets on 127.0.0.1, driven the way the gateway drives an agent."""
from __future__ import annotations

import asyncio
import logging

import numpy
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from audiogw.client.demo_agent import (
    BURST_CHUNK_MS,
    DEFAULT_PROMPTS,
    FRAME_MS,
    TurnRecorder,
    bound_port,
    burst_messages,
    serve_demo_agent,
)
from audiogw.shared.media_streams import (
    AgentClear,
    AgentMark,
    AgentMedia,
    StreamFormat,
    StreamSession,
    parse_agent_message,
)
from audiogw.shared.vad import level_dbfs
from audiogw.shared.wav import read_wav, tone

TIMEOUT = 5.0
FORMATS = [StreamFormat("mulaw", 8000), StreamFormat("l16", 16000)]


def as_heard(samples: numpy.ndarray, stream_format: StreamFormat) -> numpy.ndarray:
    """What survives a trip through the wire encoding."""
    return stream_format.from_wire(stream_format.to_wire(samples.astype("<i2").tobytes()))


async def read_until_mark(websocket, stream_format: StreamFormat) -> tuple[list[str], numpy.ndarray, str]:
    """(kinds of messages in order, decoded audio, mark name) up to and including the next mark."""
    kinds: list[str] = []
    chunks: list[numpy.ndarray] = []
    async with asyncio.timeout(TIMEOUT):
        while True:
            raw = await websocket.recv()
            assert isinstance(raw, str), "Twilio agents send text frames"
            message = parse_agent_message(raw, stream_format)
            if isinstance(message, AgentMedia):
                kinds.append("media")
                chunks.append(stream_format.from_wire(message.payload))
            elif isinstance(message, AgentClear):
                kinds.append("clear")
            elif isinstance(message, AgentMark):
                kinds.append("mark")
                audio = numpy.concatenate(chunks) if chunks else numpy.empty(0, dtype=numpy.int16)
                return kinds, audio, message.name


def media_chunks(session: StreamSession, samples: numpy.ndarray) -> list[bytes]:
    frame = session.stream_format.rate * FRAME_MS // 1000
    return [session.media(samples[offset : offset + frame].astype("<i2").tobytes())
            for offset in range(0, len(samples), frame)]


@pytest.mark.parametrize("stream_format", FORMATS, ids=lambda f: f"{f.encoding}-{f.rate}")
def test_greeting_echo_of_a_turn_confirmation_and_bad_messages(stream_format, caplog):
    caplog.set_level(logging.INFO, logger="audiogw.demo_agent")
    rate = stream_format.rate
    greeting = read_wav(DEFAULT_PROMPTS / "greeting.wav", rate)
    confirm = read_wav(DEFAULT_PROMPTS / "confirm.wav", rate)
    turn_seconds = 1.0
    turn = tone(440.0, turn_seconds, rate, 0.3)
    quiet = numpy.zeros(rate, dtype=numpy.int16)  # longer than the VAD hangover

    async def scenario():
        server = await serve_demo_agent("127.0.0.1", 0)
        try:
            async with connect(f"ws://127.0.0.1:{bound_port(server)}/media") as websocket:
                gateway = StreamSession(stream_format)
                await websocket.send(gateway.connected(), text=True)
                await websocket.send(gateway.start(), text=True)

                kinds, audio, mark = await read_until_mark(websocket, stream_format)
                assert mark == "greeting" and "clear" not in kinds
                assert kinds.count("media") == -(-len(greeting) // (rate * BURST_CHUNK_MS // 1000))
                assert numpy.array_equal(audio, as_heard(greeting, stream_format))
                await websocket.send(gateway.mark("greeting"), text=True)  # played

                for message in media_chunks(gateway, numpy.concatenate([turn, quiet])):
                    await websocket.send(message, text=True)
                kinds, audio, mark = await read_until_mark(websocket, stream_format)
                assert mark == "playback" and "clear" not in kinds
                frame = rate * FRAME_MS // 1000
                assert abs(len(audio) - len(turn)) <= frame
                assert level_dbfs(audio) == pytest.approx(level_dbfs(turn), abs=1.0)
                # The playback mark is not echoed: it is still playing when the caller presses 1.

                await websocket.send(gateway.dtmf("1"), text=True)
                kinds, audio, mark = await read_until_mark(websocket, stream_format)
                assert mark == "confirm" and kinds[0] == "clear" and kinds.count("clear") == 1
                assert numpy.array_equal(audio, as_heard(confirm, stream_format))

                for garbage in ["not json", b"\x00\x01binary", '{"event": "media"}', '{"event": "dance"}',
                                "[]", '{"event": "dtmf", "dtmf": {"digit": "99"}}', gateway.start()]:
                    await websocket.send(garbage)
                await websocket.send(gateway.dtmf("7"), text=True)  # not a command: ignored
                await websocket.send(gateway.dtmf("1"), text=True)
                kinds, audio, mark = await read_until_mark(websocket, stream_format)
                assert mark == "confirm" and kinds[0] == "clear"  # the session survived the garbage

                await websocket.send(gateway.stop(), text=True)
                with pytest.raises(ConnectionClosed):
                    async with asyncio.timeout(TIMEOUT):
                        await websocket.recv()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    lines = [record.getMessage() for record in caplog.records]
    assert sum(line.startswith("session start") for line in lines) == 1
    ends = [line for line in lines if line.startswith("session end")]
    assert len(ends) == 1 and "reason=stop" in ends[0] and "turns=1" in ends[0] and "bad_messages=7" in ends[0]


def test_media_before_start_is_ignored_and_a_closed_connection_ends_the_session(caplog):
    caplog.set_level(logging.INFO, logger="audiogw.demo_agent")

    async def scenario():
        server = await serve_demo_agent("127.0.0.1", 0, DEFAULT_PROMPTS)
        try:
            async with connect(f"ws://127.0.0.1:{bound_port(server)}") as websocket:
                session = StreamSession(FORMATS[0])
                await websocket.send(session.media(b"\x00\x00" * 160), text=True)
                await websocket.send(session.start(), text=True)
                _, _, mark = await read_until_mark(websocket, FORMATS[0])
                assert mark == "greeting"
            async with asyncio.timeout(TIMEOUT):
                while not any(r.getMessage().startswith("session end") for r in caplog.records):
                    await asyncio.sleep(0.01)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
    ends = [r.getMessage() for r in caplog.records if r.getMessage().startswith("session end")]
    assert len(ends) == 1 and "reason=closed" in ends[0] and "bad_messages=1" in ends[0]


@pytest.mark.parametrize("stream_format", FORMATS, ids=lambda f: f"{f.encoding}-{f.rate}")
def test_burst_is_whole_chunks_then_a_mark(stream_format):
    chunk = stream_format.rate * BURST_CHUNK_MS // 1000
    samples = tone(440.0, 1.0, stream_format.rate, 0.3)[: 5 * chunk + chunk // 2]  # a short last chunk
    messages = [parse_agent_message(message, stream_format)
                for message in burst_messages(stream_format, "MZ1", samples, "done")]
    assert messages[-1] == AgentMark("done", "MZ1")
    sizes = [stream_format.samples_in(len(message.payload)) for message in messages[:-1]]
    assert sizes == [chunk] * 5 + [chunk // 2]


def test_turn_recorder_cuts_the_same_utterance_whatever_the_chunk_size():
    rate = 8000
    speech = tone(300.0, 0.5, rate, 0.3)
    # The lead-in is whole VAD frames, so the onset frames hold speech only.
    lead_in, tail = numpy.zeros(rate // 5, dtype=numpy.int16), numpy.zeros(rate, dtype=numpy.int16)
    signal = numpy.concatenate([lead_in, speech, tail])
    results = []
    for chunk in (rate * FRAME_MS // 1000, 56, 1001):  # whole frames, and sizes that split frames
        recorder = TurnRecorder(rate)
        utterances = [u for offset in range(0, len(signal), chunk)
                      if (u := recorder.feed(signal[offset : offset + chunk])) is not None]
        assert len(utterances) == 1
        results.append(utterances[0])
    assert all(numpy.array_equal(result, results[0]) for result in results)
    assert numpy.array_equal(results[0], speech)  # starts at the onset, quiet tail trimmed


def test_a_turn_that_never_pauses_is_cut_at_the_limit():
    rate = 8000
    max_seconds = 0.5
    recorder = TurnRecorder(rate, max_seconds=max_seconds)
    frame = rate * FRAME_MS // 1000
    speech = tone(300.0, 1.5 * max_seconds, rate, 0.3)  # the rest is too short to hit the limit again
    utterances = [u for offset in range(0, len(speech), frame)
                  if (u := recorder.feed(speech[offset : offset + frame])) is not None]
    assert [len(u) for u in utterances] == [int(max_seconds * rate)]

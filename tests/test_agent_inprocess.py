"""The `agent` app in-process: a fake WebSocket, a fake transport, a manual clock.

No socket, no WebSocket server and no real time on the audio path: the app's
``connect`` is a fake that hands out :class:`FakeAgentSocket`s, which record
what the gateway sends and let the test push what an agent would (Twilio
Media Streams ``media``, ``mark``, ``clear``, junk). The caller's frames go in
through ``data_received`` as the transport would deliver them; the leg's
outbound frames come out when the test calls ``on_tick``, as the ticker would.
The end-to-end version of these cases (a real worker, real sockets, a real
websockets server) is tests/test_agent.py.
"""
from __future__ import annotations

import asyncio
import functools
import time
import uuid
from dataclasses import dataclass

import numpy
import orjson
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close

from audiogw.shared.audiosocket import (
    FRAME_PERIOD,
    HANGUP_FRAME,
    Kind,
    encode_audio,
    encode_uuid,
    frame_bytes,
)
from audiogw.shared.config import AudioSocketSettings
from audiogw.shared.media_streams import (
    GatewayConnected,
    GatewayMark,
    GatewayMedia,
    GatewayStart,
    GatewayStop,
    StreamFormat,
    agent_clear_message,
    agent_mark_message,
    agent_media_message,
    parse_gateway_message,
)
from audiogw.shared.wav import tone, write_wav
from audiogw.worker.apps import AppContext, create_app
from audiogw.worker.apps import agent as agent_module
from audiogw.worker.leg import FIRST_AUDIO_GRACE, LegProtocol
from audiogw.worker.server import ExtensionWorker
from test_leg_inprocess import FakeTransport, ManualClock

URL = "ws://agent.invalid/media"  # never resolved: the fake connect answers


def in_loop(test):
    """Run an async test body on a fresh event loop; pytest fixtures pass through."""
    @functools.wraps(test)
    def run(*args, **kwargs) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


async def until(predicate, what: str, timeout: float = 2.0) -> None:
    """Give the loop turns until ``predicate()``; a few ms of real time only where a thread works."""
    deadline = time.monotonic() + timeout
    turns = 0
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout:g} s: {what}")
        turns += 1
        await asyncio.sleep(0 if turns < 100 else 0.002)


async def settle(turns: int = 50) -> None:
    """Loop turns for work that must *not* happen (a mark echoed early, a leg ended)."""
    for _ in range(turns):
        await asyncio.sleep(0)


_END = object()


def _clean_close(by_agent: bool, code: int = 1000, reason: str = "") -> ConnectionClosedOK:
    """What websockets raises after a closing handshake (``by_agent``: the agent's close frame came first)."""
    return ConnectionClosedOK(Close(code, reason), Close(code, reason), rcvd_then_sent=by_agent)


class FakeAgentSocket:
    """What agent.py uses of a websockets ``ClientConnection``: ``send(message, text=True)``,
    ``recv`` / ``async for``, ``close()``. The agent side is the ``push_*`` and ``hang_up``/``drop``."""

    def __init__(self) -> None:
        self.sent: list[bytes | str] = []
        self.text_flags: list[bool | None] = []
        self.close_calls = 0
        self._inbox: asyncio.Queue = asyncio.Queue()
        self._closed_by: BaseException | None = None  # what send raises once the connection is gone

    # -- the ClientConnection side (what the gateway calls) --
    async def send(self, message: bytes | str, text: bool | None = None) -> None:
        if self._closed_by is not None:
            raise self._closed_by
        self.sent.append(message)
        self.text_flags.append(text)

    async def recv(self) -> bytes | str:
        item = await self._inbox.get()
        if item is _END:
            self._inbox.put_nowait(_END)
            raise self._closed_by or _clean_close(by_agent=True)
        if isinstance(item, BaseException):
            self._inbox.put_nowait(item)  # a broken connection stays broken
            raise item
        return item

    def __aiter__(self) -> "FakeAgentSocket":
        return self

    async def __anext__(self) -> bytes | str:
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None  # websockets ends the iteration on a clean close

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_calls += 1
        if self._closed_by is None:
            self._closed_by = _clean_close(by_agent=False, code=code, reason=reason)
            self._inbox.put_nowait(_END)

    # -- the agent side (what the test does) --
    def push(self, message: bytes | str) -> None:
        """One WebSocket frame from the agent: ``str`` is a text frame, ``bytes`` a binary one."""
        self._inbox.put_nowait(message)

    def push_text(self, message: bytes) -> None:
        self.push(message.decode())

    def push_media(self, pcm: bytes, stream_format: StreamFormat) -> None:
        self.push_text(agent_media_message(self.stream_sid, stream_format.to_wire(pcm)))

    def push_mark(self, name: str) -> None:
        self.push_text(agent_mark_message(self.stream_sid, name))

    def push_clear(self) -> None:
        self.push_text(agent_clear_message(self.stream_sid))

    def hang_up(self) -> None:
        """The agent closes the WebSocket cleanly."""
        self._closed_by = _clean_close(by_agent=True)
        self._inbox.put_nowait(_END)

    def drop(self) -> None:
        """The connection breaks (no close frame)."""
        error = ConnectionClosedError(None, None)
        self._closed_by = error
        self._inbox.put_nowait(error)

    # -- what the gateway sent --
    def messages(self) -> list:
        return [parse_gateway_message(raw) for raw in self.sent]

    def json(self) -> list[dict]:
        return [orjson.loads(raw) for raw in self.sent]

    def events(self) -> list[str]:
        return [message["event"] for message in self.json()]

    @property
    def stream_sid(self) -> str:
        return next(message.stream_sid for message in self.messages() if isinstance(message, GatewayStart))


class FakeAgent:
    """The app's ``connect``: refuses the first ``failures`` attempts, then answers with a fake socket;
    with ``gate`` set, an answering attempt waits for it first."""

    def __init__(self, failures: int = 0, error: BaseException | None = None) -> None:
        self.failures = failures
        self.error = error or ConnectionRefusedError(111, "Connection refused")
        self.calls: list[tuple[str, dict]] = []
        self.sockets: list[FakeAgentSocket] = []
        self.gate: asyncio.Event | None = None

    async def connect(self, url: str, **options) -> FakeAgentSocket:
        self.calls.append((url, options))
        if self.failures:
            self.failures -= 1
            raise self.error
        if self.gate is not None:
            await self.gate.wait()
        socket = FakeAgentSocket()
        self.sockets.append(socket)
        return socket


@dataclass
class Call:
    clock: ManualClock
    app: agent_module.AgentApp
    worker: ExtensionWorker
    protocol: LegProtocol
    transport: FakeTransport
    uuid: uuid.UUID

    @property
    def leg(self):
        return self.protocol.leg

    def feed(self, pcm: bytes, rate: int) -> None:
        """Caller audio, one AudioSocket frame per 20 ms, as the transport delivers it."""
        size = frame_bytes(rate)
        for offset in range(0, len(pcm), size):
            self.protocol.data_received(encode_audio(pcm[offset : offset + size], rate))

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            self.leg.on_tick(self.clock.now)
            self.clock.advance(FRAME_PERIOD)

    def sent_frames(self) -> list:
        return self.transport.frames()


async def _call(agent: FakeAgent, options: dict | None = None, *, rate: int = 8000, base_dir: str = ".") -> Call:
    clock = ManualClock()
    context = AppContext(extension="1201", options={"url": URL, "rate": rate, **(options or {})}, base_dir=base_dir)
    app = create_app("agent", context)
    app.connect = agent.connect
    await app.start()
    worker = ExtensionWorker("1201", app, AudioSocketSettings(), clock=clock)
    protocol = LegProtocol(worker, "ia")
    transport = FakeTransport()
    protocol.connection_made(transport)
    call_uuid = uuid.uuid4()
    protocol.data_received(encode_uuid(call_uuid))
    return Call(clock, app, worker, protocol, transport, call_uuid)


async def _connected(agent: FakeAgent, options: dict | None = None, **kwargs) -> tuple[Call, FakeAgentSocket]:
    """A call whose agent has answered and received ``connected`` and ``start``; the clock past the grace."""
    call = await _call(agent, options, **kwargs)
    await until(lambda: agent.sockets and len(agent.sockets[0].sent) >= 2, "connected and start sent")
    call.clock.advance(FIRST_AUDIO_GRACE)  # a known rate sends silence before this; audio from here
    return call, agent.sockets[0]


def _pcm(samples: numpy.ndarray) -> bytes:
    return samples.astype("<i2").tobytes()


def _ramp(count: int, start: int = 0, step: int = 37) -> numpy.ndarray:
    """Distinct, non-silent samples, so a misplaced or repeated frame shows."""
    return ((numpy.arange(count) * step + start) % 20000 - 10000).astype(numpy.int16)


async def _hang_up(call: Call) -> None:
    call.protocol.data_received(HANGUP_FRAME)
    await until(lambda: call.protocol._app_task.done(), "the agent leg ended")


# -- gateway -> agent --------------------------------------------------------------

@in_loop
async def test_connect_gets_the_options_and_the_agent_hears_connected_then_start_then_the_caller() -> None:
    agent = FakeAgent()
    call, socket = await _connected(agent, {"connect_timeout": 3.0, "headers": {"Authorization": "Bearer x"}})
    url, options = agent.calls[0]
    assert url == URL
    assert options["open_timeout"] == 3.0 and options["additional_headers"] == {"Authorization": "Bearer x"}
    assert options["max_size"] == agent_module.MAX_MESSAGE_BYTES and options["compression"] is None
    connected, start = socket.messages()
    assert isinstance(connected, GatewayConnected)
    assert isinstance(start, GatewayStart)
    assert start.call_sid == "CA" + call.uuid.hex
    assert start.custom_parameters == {"extension": "1201", "leg": "ia"}
    assert start.stream_format == StreamFormat("mulaw", 8000)
    assert socket.json()[1]["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}

    caller = _ramp(3 * 160)
    call.feed(_pcm(caller), 8000)
    await until(lambda: len(socket.sent) == 5, "three media messages")
    media = socket.messages()[2:]
    assert all(isinstance(message, GatewayMedia) for message in media)
    assert [message.stream_sid for message in media] == [start.stream_sid] * 3
    wire = StreamFormat("mulaw", 8000).to_wire(_pcm(caller))
    assert b"".join(message.payload for message in media) == wire
    body = [message["media"] for message in socket.json()[2:]]
    assert [(m["chunk"], m["timestamp"]) for m in body] == [("1", "0"), ("2", "20"), ("3", "40")]
    assert socket.text_flags == [True] * 5, "Twilio agents read text frames only"
    await _hang_up(call)


@in_loop
async def test_l16_at_16k_announces_its_format_and_carries_the_caller_big_endian() -> None:
    agent = FakeAgent()
    call, socket = await _connected(agent, {"encoding": "l16", "media_rate": 16000}, rate=16000)
    start = socket.messages()[1]
    assert start.stream_format == StreamFormat("l16", 16000)
    caller = _ramp(2 * 320, start=5)
    call.feed(_pcm(caller), 16000)
    await until(lambda: len(socket.sent) == 4, "two media messages")
    payload = b"".join(message.payload for message in socket.messages()[2:])
    assert payload == caller.astype(">i2").tobytes()
    await _hang_up(call)


# -- agent -> caller -----------------------------------------------------------

@in_loop
async def test_agent_media_in_odd_chunks_leaves_as_whole_frames_on_the_ticks_then_silence() -> None:
    agent = FakeAgent()
    call, socket = await _connected(agent)
    stream_format = StreamFormat("mulaw", 8000)
    reply = _ramp(4 * 160, start=11)
    for offset in range(0, reply.size, 100):  # 100-sample chunks: not frame-aligned
        socket.push_media(_pcm(reply[offset : offset + 100]), stream_format)
    await until(lambda: len(call.leg.outbound) == 4, "four frames queued")
    assert call.sent_frames() == [], "agent audio waits for the clock"
    call.tick(5)
    frames = call.sent_frames()
    assert [frame.kind for frame in frames] == [Kind.SLIN_8K] * 5
    heard = stream_format.from_wire(stream_format.to_wire(_pcm(reply))).astype("<i2").tobytes()
    assert b"".join(frame.payload for frame in frames[:4]) == heard
    assert frames[4].payload == bytes(320), "nothing queued: silence"
    assert abs(call.app.stats.audio_received_seconds["ia"] - 0.08) < 1e-9
    assert call.worker.stats.legs["ia"].frames_sent == 5
    await _hang_up(call)


@in_loop
async def test_a_mark_is_echoed_once_the_frames_before_it_have_left() -> None:
    agent = FakeAgent()
    call, socket = await _connected(agent)
    socket.push_media(_pcm(_ramp(3 * 160)), StreamFormat("mulaw", 8000))
    socket.push_mark("reply-1")
    await until(lambda: len(call.leg.outbound) == 3 and call.leg.outbound.pending_marks == 1, "media and mark queued")
    call.tick(2)
    await settle()
    assert "mark" not in socket.events(), "a frame before the mark has not left yet"
    call.tick(1)
    await until(lambda: "mark" in socket.events(), "the mark echoed")
    marks = [message for message in socket.messages() if isinstance(message, GatewayMark)]
    assert [(mark.name, mark.stream_sid) for mark in marks] == [("reply-1", socket.stream_sid)]
    await _hang_up(call)


@in_loop
async def test_clear_empties_the_playout_queue_and_echoes_the_pending_mark() -> None:
    agent = FakeAgent()
    call, socket = await _connected(agent)
    stream_format = StreamFormat("mulaw", 8000)
    socket.push_media(_pcm(_ramp(10 * 160)), stream_format)
    socket.push_mark("before-clear")
    await until(lambda: len(call.leg.outbound) == 10, "ten frames queued")
    call.tick(2)
    assert "mark" not in socket.events()
    socket.push_clear()
    await until(lambda: len(call.leg.outbound) == 0, "the queue emptied")
    await until(lambda: "mark" in socket.events(), "the pending mark echoed by the clear")
    call.tick(2)
    frames = call.sent_frames()
    assert len(frames) == 4
    assert frames[1].payload != bytes(320) and frames[2].payload == frames[3].payload == bytes(320)
    # Audio after the clear plays again.
    socket.push_media(_pcm(numpy.full(160, 1234, dtype=numpy.int16)), stream_format)
    await until(lambda: len(call.leg.outbound) == 1, "new audio queued")
    await _hang_up(call)


@in_loop
async def test_malformed_agent_messages_are_refused_and_counted_and_the_leg_plays_on() -> None:
    agent = FakeAgent()
    call, socket = await _connected(agent)
    socket.push("{not json")
    socket.push(b"\x01\x02")  # a binary frame
    socket.push('{"event": "start", "streamSid": "MZ1"}')  # a gateway event
    socket.push('{"event": "media", "media": {"payload": "***"}}')
    await until(lambda: sum(call.app.stats.bad_messages.values()) == 4, "four refusals counted")
    assert dict(call.app.stats.bad_messages) == {
        "bad_json": 1, "binary_frame": 1, "unknown_event": 1, "bad_base64": 1,
    }
    await settle()
    assert not call.leg.closed.is_set() and not call.transport.closed
    assert socket.close_calls == 0 and len(agent.calls) == 1, "the session goes on"
    socket.push_media(_pcm(numpy.full(160, 999, dtype=numpy.int16)), StreamFormat("mulaw", 8000))
    await until(lambda: len(call.leg.outbound) == 1, "valid media after the junk still plays")
    await _hang_up(call)


# -- connection life -----------------------------------------------------------

@in_loop
async def test_an_unreachable_agent_is_counted_and_the_caller_hears_silence() -> None:
    agent = FakeAgent(failures=1)
    call = await _call(agent)
    await until(lambda: call.app.stats.connect_failures["ia"] == 1, "the failure counted")
    call.clock.advance(FIRST_AUDIO_GRACE)
    call.tick(3)
    assert [frame.payload for frame in call.sent_frames()] == [bytes(320)] * 3
    assert not call.leg.closed.is_set(), "an unreachable agent does not end the call"
    await _hang_up(call)  # within the retry delay: the leg ends without another attempt
    assert len(agent.calls) == 1 and agent.sockets == []


@in_loop
async def test_the_fallback_plays_while_the_agent_is_unreachable_and_stops_when_it_answers(tmp_path) -> None:
    fallback = tone(440, 0.1, 8000)  # five frames
    write_wav(tmp_path / "fallback.wav", fallback, 8000)
    agent = FakeAgent(failures=1)
    agent.gate = asyncio.Event()  # the second attempt waits: the fallback plays meanwhile
    call = await _call(agent, {"fallback": "fallback.wav", "reconnect_max_delay": 0.01}, base_dir=str(tmp_path))
    await until(lambda: len(call.leg.outbound) == 5, "the fallback queued")
    assert call.app.stats.connect_failures["ia"] == 1
    call.clock.advance(FIRST_AUDIO_GRACE)
    call.tick(2)
    expected = await call.app.fallback.pcm(8000)
    assert b"".join(frame.payload for frame in call.sent_frames()) == expected[: 2 * 320]
    await until(lambda: len(agent.calls) == 2, "a reconnection attempt")
    agent.gate.set()
    await until(lambda: agent.sockets and len(agent.sockets[0].sent) >= 2, "the agent answered")
    assert len(call.leg.outbound) == 0, "the fallback stops once the agent is there"
    await _hang_up(call)


@in_loop
async def test_the_leg_hanging_up_sends_stop_and_closes_the_websocket() -> None:
    agent = FakeAgent()
    call, socket = await _connected(agent)
    await _hang_up(call)
    assert call.leg.end_reason == "peer_hangup"
    last = socket.messages()[-1]
    assert isinstance(last, GatewayStop) and last.stream_sid == socket.stream_sid
    assert socket.json()[-1]["stop"]["callSid"] == "CA" + call.uuid.hex
    assert socket.close_calls == 1
    assert len(agent.calls) == 1, "no reconnection after the leg ended"


@in_loop
async def test_the_agent_closing_cleanly_hangs_up_the_leg() -> None:
    agent = FakeAgent()
    call, socket = await _connected(agent)
    socket.hang_up()
    await until(lambda: call.leg.closed.is_set(), "the leg hung up")
    assert call.leg.end_reason == "agent_hangup"
    assert bytes(call.transport.written).endswith(HANGUP_FRAME) and call.transport.closed
    await until(lambda: call.protocol._app_task.done(), "the agent leg ended")
    assert "stop" not in socket.events() and len(agent.calls) == 1


@in_loop
async def test_a_dropped_connection_reconnects_with_a_new_stream_and_the_leg_lives_on(monkeypatch) -> None:
    monkeypatch.setattr(agent_module, "FIRST_RETRY_DELAY", 0.005)
    agent = FakeAgent()
    call, first = await _connected(agent)
    first.drop()
    await until(lambda: len(agent.sockets) == 2 and len(agent.sockets[1].sent) >= 2, "a second session")
    second = agent.sockets[1]
    assert second.events()[:2] == ["connected", "start"]
    assert second.stream_sid != first.stream_sid
    assert first.close_calls == 1 and not call.leg.closed.is_set()
    assert call.app.stats.connect_failures["ia"] == 0
    await _hang_up(call)
    assert second.events()[-1] == "stop"

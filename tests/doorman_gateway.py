"""Test helpers for doorman agents. A test-side fake of the gateway: one WebSocket client per call leg,
speaking Twilio Media Streams as audiogw does (connected, start with customParameters.leg,
media, dtmf, mark echoes, stop) plus ``audiogw.dial_status``; it records what the agent sends.

Used by tests/test_demo_agent_doorman.py (the demo agent) and tests/test_pipecat_doorman.py
(examples/pipecat_doorman.py): one fake, so both agents are held to the same flow. And the
two-softphone scenario through a real supervisor and worker (tests/test_demo_agent_doorman_e2e.py,
tests/test_pipecat_doorman.py): one UUID, the visitor on ia, the resident calling retorno.
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import uuid

import numpy
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from audiogw.client.softphone import place_call
from audiogw.shared.media_streams import StreamFormat, StreamSession
from audiogw.shared.net import free_port_block
from audiogw.shared.wav import tone

TIMEOUT = 10.0
MULAW_8K = StreamFormat("mulaw", 8000)


def call_sid() -> str:
    """A conversation's callSid, shaped as audiogw makes it (``CA`` + the UUID's hex)."""
    return "CA" + uuid.uuid4().hex


def tone_power(samples: numpy.ndarray, frequency: float, rate: int) -> float:
    """Share of the signal's power at ``frequency`` (Goertzel over the whole block), 0..1."""
    values = numpy.asarray(samples, dtype=numpy.float64)
    if values.size == 0:
        return 0.0
    times = numpy.arange(values.size) / rate
    projection = numpy.abs(numpy.dot(values, numpy.exp(-2j * math.pi * frequency * times))) ** 2
    total = float(numpy.dot(values, values))
    return 0.0 if total == 0 else float(2 * projection / (values.size * total))


def heard_tone(samples: numpy.ndarray, frequency: float, rate: int, seconds: float = 0.2) -> float:
    """The best :func:`tone_power` of ``frequency`` over windows of ``seconds`` (a note somewhere in ``samples``)."""
    size, step = int(seconds * rate), max(1, int(seconds * rate) // 4)
    return max((tone_power(samples[start : start + size], frequency, rate)
                for start in range(0, max(1, len(samples) - size + 1), step)), default=0.0)


class FakeLeg:
    """One leg's stream to the agent; ``received`` keeps every agent message in order."""

    def __init__(self, url: str, leg: str, call: str, stream_format: StreamFormat = MULAW_8K,
                 echo_marks: bool = True) -> None:
        self.url = url
        self.leg = leg
        self.stream_format = stream_format
        self.echo_marks = echo_marks
        self.session = StreamSession(stream_format, call_sid=call, account_sid="AC" + "0" * 32,
                                     custom_parameters={"extension": "1201", "leg": leg})
        self.received: list[dict] = []
        self.closed = asyncio.Event()
        self.websocket: ClientConnection | None = None
        self._reader: asyncio.Task | None = None
        self._changed = asyncio.Event()

    async def open(self) -> FakeLeg:
        self.websocket = await connect(self.url, max_size=1 << 20)
        await self.websocket.send(self.session.connected(), text=True)
        await self.websocket.send(self.session.start(), text=True)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.websocket is not None
        try:
            async for raw in self.websocket:
                assert isinstance(raw, str), "Twilio agents send text frames"
                message = json.loads(raw)
                self.received.append(message)
                if message.get("event") == "mark" and self.echo_marks:
                    # The gateway plays whole bursts at once here: the mark is reached at once.
                    await self.websocket.send(self.session.mark(message["mark"]["name"]), text=True)
                self._changed.set()
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()
            self._changed.set()

    # -- what the agent sent ------------------------------------------------------
    def events(self, name: str) -> list[dict]:
        return [message for message in self.received if message.get("event") == name]

    def marks(self) -> list[str]:
        return [message["mark"]["name"] for message in self.events("mark")]

    def audio(self, start: int = 0, end: int | None = None) -> numpy.ndarray:
        """The agent's audio in ``received[start:end]``, decoded."""
        chunks = [self.stream_format.from_wire(base64.b64decode(message["media"]["payload"]))
                  for message in self.received[start:end] if message.get("event") == "media"]
        return numpy.concatenate(chunks) if chunks else numpy.empty(0, dtype=numpy.int16)

    def audio_before_mark(self, name: str) -> numpy.ndarray:
        """The audio between the mark before ``name`` (or the start) and ``name``."""
        indexes = [i for i, message in enumerate(self.received) if message.get("event") == "mark"]
        at = next(i for i in indexes if self.received[i]["mark"]["name"] == name)
        before = [i for i in indexes if i < at]
        return self.audio(before[-1] + 1 if before else 0, at)

    async def wait(self, predicate, what: str, timeout: float = TIMEOUT):
        """Until ``predicate()`` is truthy (checked whenever a message arrives)."""
        async with asyncio.timeout(timeout):
            while True:
                value = predicate()
                if value:
                    return value
                if self.closed.is_set():
                    value = predicate()
                    assert value, f"{self.leg}: the agent closed before {what}; received {self.summary()}"
                    return value
                self._changed.clear()
                await self._changed.wait()

    async def wait_event(self, name: str, count: int = 1) -> dict:
        events = await self.wait(lambda: len(self.events(name)) >= count and self.events(name), f"{name} #{count}")
        return events[count - 1]

    async def wait_mark(self, name: str) -> None:
        await self.wait(lambda: name in self.marks(), f"mark {name}")

    async def wait_audio_seconds(self, seconds: float, after: int = 0) -> numpy.ndarray:
        """Until the agent has sent ``seconds`` of audio in ``received[after:]``."""
        rate = self.stream_format.rate
        await self.wait(lambda: self.audio(after).size >= seconds * rate, f"{seconds:.2f} s of audio")
        return self.audio(after)

    async def wait_closed(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self.closed.wait()

    def summary(self) -> str:
        kinds = [m.get("event") for m in self.received]
        compact: list[str] = []
        for kind in kinds:
            if compact and compact[-1].startswith(f"{kind} x") and kind == "media":
                compact[-1] = f"media x{int(compact[-1].split('x')[1]) + 1}"
            else:
                compact.append(f"{kind} x1" if kind == "media" else str(kind))
        return ", ".join(compact)

    # -- the gateway's side -------------------------------------------------------
    async def say(self, samples: numpy.ndarray, paced: bool = False) -> None:
        """Caller audio as 20 ms media messages (``paced``: in real time, as a phone sends it)."""
        assert self.websocket is not None
        frame = self.stream_format.rate // 50
        for offset in range(0, len(samples), frame):
            await self.websocket.send(self.session.media(samples[offset : offset + frame].astype("<i2").tobytes()),
                                      text=True)
            if paced:
                await asyncio.sleep(0.02)

    async def dtmf(self, digit: str) -> None:
        assert self.websocket is not None
        await self.websocket.send(self.session.dtmf(digit), text=True)

    async def dial_status(self, status: str) -> None:
        assert self.websocket is not None
        self.session.sequence_number += 1
        await self.websocket.send(json.dumps({
            "event": "audiogw.dial_status", "sequenceNumber": str(self.session.sequence_number),
            "streamSid": self.session.stream_sid, "dial_status": {"status": status, "leg": "retorno"},
        }), text=True)

    async def stop(self) -> None:
        """The gateway's end of the leg: ``stop``, then the close."""
        if self.websocket is None:
            return
        try:
            await self.websocket.send(self.session.stop(), text=True)
            await self.websocket.close()
        except ConnectionClosed:
            pass
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


# ---- through a real supervisor and worker: two softphone legs, one UUID ------------

RATE = 8000
VISITOR_HZ, RESIDENT_HZ = 350.0, 1500.0  # in no prompt


def at(seconds: float, frequency: float, length: float, total: float) -> numpy.ndarray:
    """Silence with one tone of ``length`` seconds starting at ``seconds``."""
    samples = numpy.zeros(int(total * RATE), dtype=numpy.int16)
    start = int(seconds * RATE)
    note = tone(frequency, length, RATE, 0.3)
    samples[start : start + len(note)] = note
    return samples


def write_config(tmp_path, url: str | None = None, *, base: int | None = None, metrics: str = "127.0.0.1:0",
                 account: tuple[str, str] | None = None) -> int:
    """A config with one agent extension on ``url`` (default: the supervisor's reference agent,
    path /doorman) and ``account`` as ``[agent]`` account_sid / auth_token; its base port."""
    base = base if base is not None else free_port_block(4)
    demo_port = base + 3
    url = url or f"ws://127.0.0.1:{demo_port}/doorman"
    agent = f'[agent]\naccount_sid = "{account[0]}"\nauth_token = "{account[1]}"\n' if account else ""
    config = tmp_path / "audiogw.toml"
    config.write_text(
        f'[supervisor]\ncontrol = "ipc://run/control.sock"\nmetrics = "{metrics}"\nstate_dir = "state"\n'
        f'demo_agent = "127.0.0.1:{demo_port}"\n'
        f'[audiosocket]\nbind = "127.0.0.1"\nport_range = [{base}, {base + 2}]\n{agent}'
        f'[[extension]]\nid = "1201"\nia_port = {base}\nretorno_port = {base + 1}\napp = "agent"\n'
        f'options = {{ url = "{url}" }}\n'
    )
    return base


VISITOR_SECONDS, RESIDENT_SECONDS = 14.0, 9.0


def visitor_and_resident(base: int, visitor_seconds: float = VISITOR_SECONDS):
    """The visitor speaks at 1.6 s (after greeting and "who is there?"); the resident, on the line
    from 0.5 s (no AMI here: the agent tells them at once, without a dial), presses 1 at 6 s and
    speaks at 6.8 s; they hang up at 9 s: the visitor hears goodbye and is hung up."""
    call_uuid = uuid.uuid4()
    visitor_source = at(1.6, VISITOR_HZ, 1.0, visitor_seconds)
    resident_source = at(6.8, RESIDENT_HZ, 1.0, RESIDENT_SECONDS)

    async def both():
        visitor = asyncio.create_task(place_call("127.0.0.1", base, call_uuid=call_uuid, source=visitor_source,
                                                 seconds=visitor_seconds))
        await asyncio.sleep(0.5)
        resident = asyncio.create_task(place_call("127.0.0.1", base + 1, call_uuid=call_uuid,
                                                  source=resident_source, seconds=RESIDENT_SECONDS,
                                                  dtmf="1", dtmf_at=6.0))
        return await visitor, await resident

    return asyncio.run(both())


def assert_told_bridged_and_hung_up(visitor, resident, log: str, visitor_seconds: float = VISITOR_SECONDS) -> None:
    # The resident heard the visitor's recorded turn (the agent's playback, before the bridge).
    assert heard_tone(resident.recorded[: 6 * RATE], VISITOR_HZ, RATE) > 0.8, log[-3000:]
    # Bridged: the visitor heard the resident speak (after the 1), the agent still on the line.
    assert heard_tone(visitor.recorded[int(6.5 * RATE) : int(9 * RATE)], RESIDENT_HZ, RATE) > 0.5, log[-3000:]
    assert heard_tone(visitor.recorded[: 6 * RATE], RESIDENT_HZ, RATE) < 0.1  # not before the bridge
    # The resident hung up: goodbye to the visitor, whose leg the agent then ended.
    assert visitor.hung_up_by == "server" and visitor.duration < visitor_seconds, (visitor.hung_up_by, log[-3000:])

"""The leg in-process: a fake transport, a manual clock, ticks driven by the test.

No socket and no real time: each test feeds bytes through ``data_received`` as
the transport would, calls ``on_tick`` as the ticker would, and reads what the
leg wrote. This pins the leg's frame-level behaviour (grace, echo, underruns,
flood, bad frames) to exact counts instead of timing.
"""
from __future__ import annotations

import asyncio
import functools
import uuid

from audiogw.shared.audiosocket import (
    FRAME_PERIOD,
    HANGUP_FRAME,
    FrameDecoder,
    Kind,
    encode_audio,
    encode_from_asterisk,
    encode_uuid,
    frame_bytes,
)
from audiogw.shared.config import AudioSocketSettings
from audiogw.worker.apps import AppContext, create_app
from audiogw.worker.leg import FIRST_AUDIO_GRACE, LegProtocol
from audiogw.worker.server import ExtensionWorker


def in_loop(test):
    """Run an async test body on a fresh event loop (the suite has no asyncio plugin)."""
    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())
    return run


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeTransport(asyncio.Transport):
    """What the leg needs of a transport; records writes and closes."""

    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.aborted = False
        self.paused = False
        self._peer = peer

    def get_extra_info(self, name: str, default=None):
        return {"peername": self._peer}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def frames(self) -> list:
        return FrameDecoder().feed(bytes(self.written))


async def _worker(clock: ManualClock, options: dict | None = None) -> ExtensionWorker:
    context = AppContext(extension="1201", options=options or {})
    return ExtensionWorker("1201", create_app("echo", context), AudioSocketSettings(), clock=clock)


async def _connected(clock: ManualClock, options: dict | None = None, peer=("127.0.0.1", 40000)):
    worker = await _worker(clock, options)
    protocol = LegProtocol(worker, "ia")
    transport = FakeTransport(peer)
    protocol.connection_made(transport)
    return worker, protocol, transport


def _tone_frame(rate: int, value: int) -> bytes:
    return encode_audio(value.to_bytes(2, "little", signed=True) * (frame_bytes(rate) // 2), rate)


def _tick(protocol: LegProtocol, clock: ManualClock, count: int = 1) -> None:
    for _ in range(count):
        protocol.leg.on_tick(clock.now)
        clock.advance(FRAME_PERIOD)


@in_loop
async def test_auto_rate_holds_audio_through_the_grace_then_echoes_every_frame() -> None:
    clock = ManualClock()
    worker, protocol, transport = await _connected(clock)
    protocol.data_received(encode_uuid(uuid.uuid4()))
    await asyncio.sleep(0)  # the app's first step: echo forwards the leg to itself
    grace_ticks = int(FIRST_AUDIO_GRACE / FRAME_PERIOD)
    _tick(protocol, clock, grace_ticks)
    assert transport.frames() == [], "auto sends nothing before the caller's first frame or the grace"
    sent = [_tone_frame(8000, 100 + index) for index in range(10)]
    for frame in sent:
        protocol.data_received(frame)
    _tick(protocol, clock, 10)
    frames = transport.frames()
    assert [frame.kind for frame in frames] == [Kind.SLIN_8K] * 10
    assert [frame.payload for frame in frames] == [frame[3:] for frame in sent]
    stats = worker.stats.legs["ia"]
    assert (stats.frames_received, stats.frames_sent, stats.underruns) == (10, 10, 0)


@in_loop
async def test_a_known_rate_sends_silence_on_the_first_tick_and_counts_an_underrun_only_after_audio() -> None:
    clock = ManualClock()
    worker, protocol, transport = await _connected(clock, {"rate": 16000})
    protocol.data_received(encode_uuid(uuid.uuid4()))
    await asyncio.sleep(0)
    _tick(protocol, clock, 1)
    first = transport.frames()
    assert len(first) == 1 and first[0].kind == Kind.SLIN_16K and set(first[0].payload) == {0}
    _tick(protocol, clock, 3)  # past the grace: still silence, no audio played yet, no underrun
    protocol.data_received(_tone_frame(16000, 500))
    _tick(protocol, clock, 1)
    _tick(protocol, clock, 1)  # nothing queued while audio was flowing: one underrun
    stats = worker.stats.legs["ia"]
    assert stats.frames_sent == 6
    assert stats.underruns == 1
    assert transport.frames()[4].payload == _tone_frame(16000, 500)[3:]


@in_loop
async def test_a_flood_is_dropped_and_counted_while_real_time_audio_passes() -> None:
    clock = ManualClock()
    worker, protocol, transport = await _connected(clock)
    protocol.data_received(encode_uuid(uuid.uuid4()))
    await asyncio.sleep(0)
    # 200 frames (4 s of audio) at one instant: real time plus 1 s of burst passes, the rest is flood.
    burst = _tone_frame(8000, 7) * 200
    protocol.data_received(burst)
    while protocol._held:  # the decoder's per-read limit held the rest: release as the loop would
        protocol._release_reading()
    stats = worker.stats.legs["ia"]
    assert stats.frames_received == 200
    dropped = stats.frames_dropped["inbound_flood"]
    assert 140 <= dropped <= 150, dropped
    assert not transport.closed, "a flood drops frames, it does not end the leg"


@in_loop
async def test_a_bad_frame_ends_this_leg_with_a_counted_reason_and_a_hangup() -> None:
    clock = ManualClock()
    worker, protocol, transport = await _connected(clock)
    protocol.data_received(encode_uuid(uuid.uuid4()))
    await asyncio.sleep(0)
    protocol.data_received(bytes([0x42, 0, 1, 0]))  # unknown kind
    assert transport.closed
    assert bytes(transport.written).endswith(HANGUP_FRAME)
    stats = worker.stats.legs["ia"]
    assert sum(stats.protocol_errors.values()) == 1
    assert stats.calls_active == 0 and stats.calls_total == 1
    assert protocol.leg.closed.is_set()


@in_loop
async def test_audio_before_the_uuid_is_refused_as_no_uuid() -> None:
    clock = ManualClock()
    worker, protocol, transport = await _connected(clock)
    protocol.data_received(_tone_frame(8000, 1))
    assert transport.closed and protocol.leg is None
    assert worker.stats.legs["ia"].protocol_errors == {"no_uuid": 1}


@in_loop
async def test_a_peer_outside_allow_is_refused_before_any_frame() -> None:
    clock = ManualClock()
    worker, protocol, transport = await _connected(clock, peer=("192.0.2.7", 5000))
    assert transport.closed
    assert worker.stats.legs["ia"].protocol_errors == {"peer_not_allowed": 1}


@in_loop
async def test_a_partial_frame_held_past_the_timeout_ends_the_leg_on_the_manual_clock() -> None:
    clock = ManualClock()
    worker, protocol, transport = await _connected(clock)
    protocol.data_received(encode_uuid(uuid.uuid4()))
    await asyncio.sleep(0)
    protocol.data_received(_tone_frame(8000, 3)[:50])  # header and part of the payload
    clock.advance(1.0)
    protocol._check_partial()
    assert not transport.closed, "1 s of a held frame is still within the timeout"
    clock.advance(1.5)
    protocol._check_partial()
    assert transport.closed
    assert worker.stats.legs["ia"].protocol_errors == {"partial_frame_timeout": 1}


@in_loop
async def test_dtmf_reaches_the_app_and_a_hangup_frame_ends_the_leg() -> None:
    clock = ManualClock()
    worker, protocol, transport = await _connected(clock)
    protocol.data_received(encode_uuid(uuid.uuid4()))
    await asyncio.sleep(0)
    protocol.data_received(encode_from_asterisk(Kind.DTMF, b"5"))
    protocol.data_received(HANGUP_FRAME)
    assert protocol.leg.end_reason == "peer_hangup"
    assert transport.closed and not transport.aborted



"""Pure parts of the audio path: rate changes keep queued audio, live queues have bounded
latency, a read's work is bounded, a flooding peer is held to real time."""
from __future__ import annotations

import asyncio

import numpy
import pytest
from hypothesis import given, settings, strategies as st

from audiogw.shared.audiosocket import HEADER_SIZE, FrameDecoder, Kind, encode_audio, encode_dtmf
from audiogw.worker.flood import AUDIO_BURST_SECONDS, InboundGuard, TokenBucket
from audiogw.worker.playout import LATENCY_WINDOW_TICKS, PlayoutBuffer


def _tone(seconds: float, rate: int, hz: float = 440.0) -> bytes:
    samples = numpy.arange(int(seconds * rate))
    return (numpy.sin(2 * numpy.pi * hz * samples / rate) * 8000).astype("<i2").tobytes()


def _payloads(buffer: PlayoutBuffer) -> bytes:
    out = bytearray()
    while (frame := buffer.pop()) is not None:
        out += frame[HEADER_SIZE:]
    return bytes(out)


def test_rate_change_converts_queued_audio_instead_of_dropping_it():
    buffer = PlayoutBuffer(8000, capacity_frames=100, lead_frames=3)
    buffer.push(_tone(0.5, 8000))  # 25 frames
    marked = []
    buffer.mark(lambda: marked.append(True))
    buffer.set_rate(16000)
    assert len(buffer) == 25, "every queued 20 ms frame is still there"
    assert not marked, "a mark still waits for the audio before it"
    frame = buffer.pop()
    assert frame[0] == Kind.SLIN_16K and len(frame) == HEADER_SIZE + 640
    heard = numpy.frombuffer(frame[HEADER_SIZE:] + _payloads(buffer), dtype="<i2").astype(float)
    assert marked == [True]
    expected = numpy.frombuffer(_tone(0.5, 16000), dtype="<i2").astype(float)
    middle = slice(800, 7200)  # away from the filter's edges
    assert numpy.corrcoef(heard[middle], expected[middle])[0, 1] > 0.99, "the same tone, at 16 kHz"


def test_rate_change_wakes_a_waiting_producer():
    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        buffer = PlayoutBuffer(8000, capacity_frames=100, lead_frames=3)
        buffer.push(_tone(0.1, 8000))
        waiter = buffer.wait_for_room(loop)
        buffer.set_rate(16000)
        await asyncio.sleep(0)
        return waiter.done()

    assert asyncio.run(scenario())


def test_an_empty_queue_wakes_a_producer_that_waits_for_room():
    async def scenario() -> bool:
        buffer = PlayoutBuffer(8000, capacity_frames=100, lead_frames=3)
        waiter = buffer.wait_for_room(asyncio.get_running_loop())
        assert buffer.pop() is None
        return waiter.done()

    assert asyncio.run(scenario())


def _live_buffer(max_latency_frames: int = 5) -> PlayoutBuffer:
    buffer = PlayoutBuffer(8000, capacity_frames=100, lead_frames=3)
    buffer.max_latency_frames = max_latency_frames
    return buffer


def test_a_standing_delay_in_live_audio_is_cut_to_the_bound_within_two_windows():
    buffer = _live_buffer(5)
    frame = b"\x01\x00" * 160
    for _ in range(25):  # a 500 ms stall arrives as one burst
        buffer.push(frame)
    for tick in range(2 * LATENCY_WINDOW_TICKS):
        buffer.push(frame)  # one in, one out: the delay would stand for the rest of the call
        buffer.pop()
    assert len(buffer) <= 5
    assert 19 <= buffer.drop_counts["latency"] <= 21, "the standing 500 ms, down to 100 ms"
    assert buffer.dropped == 0, "latency cuts are not overflow drops"


def test_a_burst_that_drains_by_itself_is_not_cut():
    buffer = _live_buffer(5)
    frame = b"\x01\x00" * 160
    for _ in range(12):
        buffer.push(frame)
    for _ in range(3 * LATENCY_WINDOW_TICKS):
        buffer.pop()  # nothing more arrives: the queue drains on its own
    assert buffer.drop_counts["latency"] == 0


def test_prompts_and_agent_speech_are_never_cut_for_latency():
    buffer = PlayoutBuffer(8000, capacity_frames=500, lead_frames=3)  # max_latency_frames 0: not live
    buffer.push(_tone(4.0, 8000))
    for _ in range(3 * LATENCY_WINDOW_TICKS):
        buffer.pop()
    assert len(buffer) == 200 - 3 * LATENCY_WINDOW_TICKS
    assert buffer.drop_counts["latency"] == 0


def test_decoder_limit_leaves_the_rest_for_the_next_feed():
    wire = b"".join(encode_audio(bytes([index]) * 320) for index in range(10)) + encode_dtmf("5")
    decoder = FrameDecoder()
    first = decoder.feed(wire, limit=4)
    assert len(first) == 4 and decoder.backlog
    second = decoder.feed(b"", limit=4)
    third = decoder.feed(b"", limit=4)
    assert len(second) == 4 and len(third) == 3 and not decoder.backlog and decoder.pending == 0
    assert [frame.payload[0] for frame in first + second + third[:2]] == list(range(10))
    assert third[-1].kind == Kind.DTMF


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(1, 8))
def test_decoder_with_a_limit_yields_the_same_frames_in_order(cuts, limit):
    wire = b"".join(encode_audio(bytes([index % 256]) * 320) for index in range(40))
    decoder = FrameDecoder()
    frames = []
    offset = 0
    for cut in cuts:
        frames += decoder.feed(wire[offset : offset + cut * 7], limit=limit)
        offset += cut * 7
    frames += decoder.feed(wire[offset:], limit=limit)
    while decoder.backlog:
        frames += decoder.feed(b"", limit=limit)
    assert [frame.payload[0] for frame in frames] == [index % 256 for index in range(40)]


def test_token_bucket_allows_real_time_plus_its_burst():
    bucket = TokenBucket(rate=1.0, burst=1.0, now=0.0)
    admitted = sum(bucket.take(0.02, 0.0) for _ in range(200))
    assert admitted == 50, "a full second of burst at once, no more"
    admitted = sum(bucket.take(0.02, 1.0 + index * 0.001) for index in range(200))
    assert 50 <= admitted <= 60, "then real time: about 1 s of audio per second"


def test_guard_holds_a_flood_to_real_time_and_lets_asterisk_pacing_through():
    guard = InboundGuard(now=0.0)
    paced = [guard.admit_audio(0.02, index * 0.02) for index in range(500)]
    assert all(paced), "one frame per 20 ms is never dropped"
    flood = InboundGuard(now=0.0)
    admitted = sum(flood.admit_audio(0.02, index * 0.0001) for index in range(10000))  # 10 s of audio in 1 s
    assert admitted <= (AUDIO_BURST_SECONDS + 1.0) / 0.02 + 1
    dtmf = InboundGuard(now=0.0)
    assert sum(dtmf.admit_other(0.0) for _ in range(1000)) == 20


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_rate_change_back_and_forth_keeps_frame_count(rate):
    buffer = PlayoutBuffer(8000, capacity_frames=100, lead_frames=3)
    buffer.push(_tone(0.3, 8000) + b"\x00\x00" * 40)  # 15 frames and a partial
    buffer.set_rate(rate)
    buffer.set_rate(8000)
    assert len(buffer) == 15


def test_outbox_keeps_the_newest_caller_audio_and_every_control_message():
    from audiogw.worker.apps.outbox import Outbox

    async def scenario() -> list[bytes]:
        outbox = Outbox(max_media=5, max_messages=8)
        for index in range(20):
            outbox.put(b"media%d" % index, media=True)
            if index == 10:
                outbox.put(b"dtmf")
        assert outbox.dropped_media == 15
        return [await outbox.get() for _ in range(len(outbox))]

    sent = asyncio.run(scenario())
    assert sent == [b"dtmf", b"media15", b"media16", b"media17", b"media18", b"media19"]


def test_outbox_refuses_control_messages_only_when_full_of_them():
    from audiogw.worker.apps.outbox import Outbox

    outbox = Outbox(max_media=2, max_messages=3)
    assert all(outbox.put(b"event") for _ in range(3))
    assert not outbox.put(b"one too many")
    assert outbox.put(b"media", media=True) is False and len(outbox) == 3

"""Twilio Media Streams messages: builder shapes, parsing, every refusal, L16 byte order, numbering."""
from __future__ import annotations

import base64

import numpy
import orjson
import pytest

from audiogw.shared import media_streams as ms
from audiogw.shared.media_streams import (
    AgentClear,
    AgentMark,
    AgentMedia,
    MediaStreamsError,
    StreamFormat,
    StreamSession,
    parse_agent_message,
    parse_gateway_message,
)
from audiogw.shared.mulaw import encode_mulaw
from audiogw.shared.wav import tone

MULAW = StreamFormat("mulaw", 8000)


def loads(message: bytes) -> dict:
    assert isinstance(message, bytes)
    return orjson.loads(message)


def pcm(seconds: float, rate: int) -> bytes:
    return tone(440.0, seconds, rate, 0.5).astype("<i2").tobytes()


# ---- formats ----------------------------------------------------------------

@pytest.mark.parametrize(("encoding", "rate"), [("mulaw", 8000), ("l16", 8000), ("l16", 16000), ("l16", 24000)])
def test_valid_formats_and_their_media_format(encoding, rate):
    stream_format = StreamFormat(encoding, rate)
    media_format = stream_format.media_format()
    assert media_format == {"encoding": ms.ENCODINGS[encoding], "sampleRate": rate, "channels": 1}
    assert StreamFormat.from_media_format(media_format) == stream_format


@pytest.mark.parametrize(("encoding", "rate"), [("mulaw", 16000), ("l16", 44100), ("opus", 8000), ("l16", "8000")])
def test_invalid_formats_are_refused(encoding, rate):
    with pytest.raises(MediaStreamsError) as caught:
        StreamFormat(encoding, rate)
    assert caught.value.reason == "bad_format"


@pytest.mark.parametrize(
    "media_format",
    [None, {"encoding": "audio/wav", "sampleRate": 8000},
     {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
     {"encoding": "audio/L16"}],
)
def test_unusable_media_formats_are_refused(media_format):
    with pytest.raises(MediaStreamsError) as caught:
        StreamFormat.from_media_format(media_format)
    assert caught.value.reason == "bad_format"


def test_l16_is_big_endian_on_the_wire_and_round_trips():
    samples = numpy.array([1, -2, 0x1234, -32768, 32767], dtype=numpy.int16)
    wire = StreamFormat("l16", 16000).to_wire(samples.astype("<i2").tobytes())
    assert wire[:2] == b"\x00\x01" and wire[4:6] == b"\x12\x34"
    assert wire == samples.astype(">i2").tobytes()
    decoded = StreamFormat("l16", 16000).from_wire(wire)
    assert decoded.dtype == numpy.int16 and numpy.array_equal(decoded, samples)


def test_mulaw_to_wire_is_g711_and_from_wire_decodes():
    samples = tone(440.0, 0.02, 8000, 0.5)
    wire = MULAW.to_wire(samples.astype("<i2").tobytes())
    assert wire == encode_mulaw(samples) and len(wire) == len(samples)
    assert MULAW.from_wire(wire).dtype == numpy.int16 and len(MULAW.from_wire(wire)) == len(samples)


def test_odd_pcm_and_odd_l16_payloads_are_refused():
    for call in (lambda: MULAW.to_wire(b"\x00" * 3), lambda: StreamFormat("l16", 8000).from_wire(b"\x00" * 3)):
        with pytest.raises(MediaStreamsError) as caught:
            call()
        assert caught.value.reason == "odd_length"


# ---- gateway -> agent builders ----------------------------------------------

def test_connected_message():
    assert loads(ms.connected_message()) == {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def test_start_message_shape():
    message = loads(ms.start_message(1, "MZ1", "CA1", StreamFormat("l16", 16000), "AC1", {"extension": "1201"}))
    assert message == {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "streamSid": "MZ1", "accountSid": "AC1", "callSid": "CA1", "tracks": ["inbound"],
            "customParameters": {"extension": "1201"},
            "mediaFormat": {"encoding": "audio/L16", "sampleRate": 16000, "channels": 1},
        },
        "streamSid": "MZ1",
    }
    with pytest.raises(MediaStreamsError) as caught:
        ms.start_message(1, "MZ1", "CA1", MULAW, custom_parameters={"nested": {"no": "thanks"}})
    assert caught.value.reason == "bad_parameters"


def test_media_dtmf_mark_stop_shapes():
    assert loads(ms.media_message(7, "MZ1", 6, 100, b"\x01\x02")) == {
        "event": "media", "sequenceNumber": "7", "streamSid": "MZ1",
        "media": {
            "track": "inbound", "chunk": "6", "timestamp": "100",
            "payload": base64.b64encode(b"\x01\x02").decode(),
        },
    }
    assert loads(ms.dtmf_message(8, "MZ1", "#")) == {
        "event": "dtmf", "streamSid": "MZ1", "sequenceNumber": "8", "dtmf": {"track": "inbound_track", "digit": "#"},
    }
    assert loads(ms.mark_message(9, "MZ1", "greeting")) == {
        "event": "mark", "sequenceNumber": "9", "streamSid": "MZ1", "mark": {"name": "greeting"},
    }
    assert loads(ms.stop_message(10, "MZ1", "CA1", "AC1")) == {
        "event": "stop", "sequenceNumber": "10", "streamSid": "MZ1", "stop": {"accountSid": "AC1", "callSid": "CA1"},
    }
    with pytest.raises(MediaStreamsError) as caught:
        ms.dtmf_message(8, "MZ1", "x")
    assert caught.value.reason == "bad_dtmf"


def test_make_sid_has_twilio_shape_and_is_unique():
    sids = {ms.make_sid("MZ") for _ in range(100)}
    assert len(sids) == 100
    assert all(sid.startswith("MZ") and len(sid) == 34 and int(sid[2:], 16) >= 0 for sid in sids)


# ---- numbering ---------------------------------------------------------------

@pytest.mark.parametrize("stream_format", [MULAW, StreamFormat("l16", 16000), StreamFormat("l16", 24000)])
def test_session_numbers_messages_chunks_and_timestamps_from_samples(stream_format):
    session = StreamSession(stream_format, custom_parameters={"leg": "ia"})
    assert loads(session.connected())["event"] == "connected"  # connected carries no number
    start = loads(session.start())
    assert start["sequenceNumber"] == "1" and start["streamSid"] == session.stream_sid
    assert start["start"]["callSid"] == session.call_sid and start["start"]["customParameters"] == {"leg": "ia"}
    chunk_seconds = [0.02, 0.02, 0.06, 0.01, 0.02]  # uneven chunks: timestamps follow samples, not counts
    sent_ms = 0.0
    for index, seconds in enumerate(chunk_seconds, start=1):
        media = loads(session.media(pcm(seconds, stream_format.rate)))
        assert media["sequenceNumber"] == str(1 + index)
        assert media["media"]["chunk"] == str(index)
        assert media["media"]["timestamp"] == str(int(round(sent_ms)))
        payload = base64.b64decode(media["media"]["payload"])
        assert stream_format.samples_in(len(payload)) == round(seconds * stream_format.rate)
        sent_ms += seconds * 1000
    next_number = 2 + len(chunk_seconds)
    assert loads(session.dtmf("5"))["sequenceNumber"] == str(next_number)
    assert loads(session.mark("m"))["sequenceNumber"] == str(next_number + 1)
    stop = loads(session.stop())
    assert stop["sequenceNumber"] == str(next_number + 2)
    assert stop["stop"]["callSid"] == session.call_sid
    assert session.chunk == len(chunk_seconds)
    assert session.timestamp_ms == int(round(sent_ms))


def test_session_refusals_leave_no_gap_in_numbering():
    session = StreamSession(MULAW)
    session.start()
    for call in (lambda: session.dtmf("Z"), lambda: session.media(b"\x00" * 5)):
        with pytest.raises(MediaStreamsError):
            call()
    media = loads(session.media(pcm(0.02, 8000)))
    assert media["sequenceNumber"] == "2" and media["media"]["chunk"] == "1" and media["media"]["timestamp"] == "0"


def test_timestamp_truncates_to_whole_milliseconds():
    session = StreamSession(StreamFormat("l16", 24000))
    session.media(b"\x00\x00" * 37)  # 37 samples at 24 kHz = 1.54 ms
    assert session.timestamp_ms == 37 * 1000 // 24000


# ---- agent -> gateway parsing -----------------------------------------------

def test_parse_each_agent_message():
    payload = MULAW.to_wire(pcm(0.02, 8000))
    media = parse_agent_message(ms.agent_media_message("MZ1", payload), MULAW)
    assert media == AgentMedia(payload, "MZ1")
    assert parse_agent_message(ms.agent_mark_message("MZ1", "greeting").decode()) == AgentMark("greeting", "MZ1")
    assert parse_agent_message(ms.agent_clear_message("MZ1")) == AgentClear("MZ1")
    assert parse_agent_message(b'{"event":"clear"}') == AgentClear(None)


def test_agent_builders_shapes():
    assert loads(ms.agent_media_message("MZ1", b"\xff")) == {
        "event": "media", "streamSid": "MZ1", "media": {"payload": "/w=="},
    }
    assert loads(ms.agent_mark_message("MZ1", "x")) == {"event": "mark", "streamSid": "MZ1", "mark": {"name": "x"}}
    assert loads(ms.agent_clear_message("MZ1")) == {"event": "clear", "streamSid": "MZ1"}


L16 = StreamFormat("l16", 16000)
REFUSALS = [
    ("bad_json", b"{not json", None),
    ("bad_json", b"\xff\xfe", None),
    ("not_an_object", b"[1, 2]", None),
    ("not_an_object", b'"media"', None),
    ("missing_field", b'{"streamSid": "MZ1"}', None),
    ("bad_field", b'{"event": 5}', None),
    ("bad_field", b'{"event": "clear", "streamSid": 5}', None),
    ("unknown_event", b'{"event": "start", "start": {}}', None),
    ("unknown_event", b'{"event": "connected"}', None),
    ("unknown_event", b'{"event": "stop"}', None),
    ("unknown_event", b'{"event": "dtmf", "dtmf": {"digit": "1"}}', None),
    ("unknown_event", b'{"event": "playAudio"}', None),
    ("missing_field", b'{"event": "media"}', None),
    ("bad_field", b'{"event": "media", "media": "AAAA"}', None),
    ("missing_field", b'{"event": "media", "media": {}}', None),
    ("bad_field", b'{"event": "media", "media": {"payload": 12}}', None),
    ("bad_base64", b'{"event": "media", "media": {"payload": "not base64!"}}', None),
    ("bad_base64", b'{"event": "media", "media": {"payload": "AAA"}}', None),
    ("empty_media", b'{"event": "media", "media": {"payload": ""}}', None),
    ("odd_length", b'{"event": "media", "media": {"payload": "AAAA"}}', L16),
    ("bad_mark", b'{"event": "mark"}', None),
    ("bad_mark", b'{"event": "mark", "mark": {}}', None),
    ("bad_mark", b'{"event": "mark", "mark": {"name": ""}}', None),
    ("bad_mark", b'{"event": "mark", "mark": {"name": 3}}', None),
    ("bad_mark", b'{"event": "mark", "mark": "greeting"}', None),
]


@pytest.mark.parametrize(("reason", "text", "stream_format"), REFUSALS)
def test_each_refusal_reason(reason, text, stream_format):
    with pytest.raises(MediaStreamsError) as caught:
        parse_agent_message(text, stream_format)
    assert caught.value.reason == reason
    assert str(caught.value)


def test_odd_length_is_fine_for_mulaw():
    three_bytes = ms.agent_media_message("MZ1", b"\x01\x02\x03")
    assert parse_agent_message(three_bytes, MULAW).payload == b"\x01\x02\x03"


def test_mark_name_length_limit():
    longest = "m" * ms.MAX_MARK_NAME
    assert parse_agent_message(ms.agent_mark_message("MZ1", longest)).name == longest
    with pytest.raises(MediaStreamsError) as caught:
        parse_agent_message(ms.agent_mark_message("MZ1", longest + "m"))
    assert caught.value.reason == "bad_mark"


def test_too_large_is_refused_before_parsing():
    limit = 1000
    message = ms.agent_media_message("MZ1", b"\x00" * limit)
    assert len(message) > limit
    with pytest.raises(MediaStreamsError) as caught:
        parse_agent_message(message, max_bytes=limit)
    assert caught.value.reason == "too_large"
    assert parse_agent_message(message, max_bytes=len(message)).payload == b"\x00" * limit
    with pytest.raises(MediaStreamsError) as caught:
        parse_agent_message(b"{" * (ms.MAX_MESSAGE_BYTES + 1))
    assert caught.value.reason == "too_large"


# ---- gateway -> agent parsing (what agents read) ----------------------------

def test_gateway_messages_parse_back():
    session = StreamSession(StreamFormat("l16", 24000), account_sid="AC1", custom_parameters={"a": "b"})
    connected = parse_gateway_message(session.connected())
    assert connected == ms.GatewayConnected("Call", "1.0.0")
    start = parse_gateway_message(session.start())
    assert start == ms.GatewayStart(session.stream_sid, session.call_sid, "AC1", session.stream_format, {"a": "b"})
    audio = pcm(0.02, 24000)
    media = parse_gateway_message(session.media(audio), start.stream_format)
    assert isinstance(media, ms.GatewayMedia) and media.stream_sid == session.stream_sid
    assert start.stream_format.from_wire(media.payload).astype("<i2").tobytes() == audio
    assert parse_gateway_message(session.dtmf("1")) == ms.GatewayDtmf("1", session.stream_sid)
    assert parse_gateway_message(session.mark("greeting")) == ms.GatewayMark("greeting", session.stream_sid)
    assert parse_gateway_message(session.stop()) == ms.GatewayStop(session.stream_sid)
    barge_in = session.custom("barge_in", {"timestamp": "120"})
    assert parse_gateway_message(barge_in) == ms.GatewayBargeIn(session.stream_sid)
    numbers = [int(orjson.loads(message)["sequenceNumber"]) for message in (session.stop(), barge_in)]
    assert numbers[0] == numbers[1] + 1  # the extension event is numbered like the standard ones


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        ("bad_dtmf", b'{"event": "dtmf", "dtmf": {"digit": "11"}}'),
        ("missing_field", b'{"event": "dtmf", "dtmf": {}}'),
        ("bad_format", b'{"event": "start", "start": {"streamSid": "MZ", "callSid": "CA", "mediaFormat": {}}}'),
        ("missing_field", b'{"event": "start", "start": {"streamSid": "MZ", "callSid": "CA"}}'),
        ("bad_field", b'{"event": "start", "start": {"streamSid": "MZ", "callSid": "CA", "customParameters": [],'
                      b' "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}}'),
        ("bad_field", b'{"event": "start", "start": {"streamSid": "MZ", "callSid": "CA", "accountSid": null,'
                      b' "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}}'),
        ("unknown_event", b'{"event": "clear"}'),
    ],
)
def test_gateway_message_refusals(reason, text):
    with pytest.raises(MediaStreamsError) as caught:
        parse_gateway_message(text)
    assert caught.value.reason == reason

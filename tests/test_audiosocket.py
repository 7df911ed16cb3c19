"""The AudioSocket codec: round trips, every refusal, and no foreign exception on any input."""
from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiogw.shared.audiosocket import (
    AUDIO_RATES,
    HANGUP_FRAME,
    AudioSocketError,
    Frame,
    FrameDecoder,
    Kind,
    decode_uuid,
    describe_error,
    encode_audio,
    encode_dtmf,
    encode_from_asterisk,
    encode_to_asterisk,
    encode_uuid,
    frame_bytes,
    max_payload,
)


def test_uuid_frame_then_audio_decodes_in_order():
    call = uuid.uuid4()
    wire = encode_uuid(call) + encode_audio(b"\x01\x00" * 160) + encode_dtmf("5") + HANGUP_FRAME
    frames = FrameDecoder().feed(wire)
    assert [f.kind for f in frames] == [Kind.UUID, Kind.SLIN_8K, Kind.DTMF, Kind.HANGUP]
    assert decode_uuid(frames[0].payload) == call
    assert frames[1].payload == b"\x01\x00" * 160
    assert frames[2].payload == b"5"


def test_byte_by_byte_feeding_gives_the_same_frames():
    wire = encode_uuid(uuid.UUID(int=7)) + encode_audio(bytes(range(256)) * 2 + bytes(128))
    decoder = FrameDecoder()
    frames = []
    for index in range(len(wire)):
        frames += decoder.feed(wire[index : index + 1])
    assert [f.kind for f in frames] == [Kind.UUID, Kind.SLIN_8K]
    assert decoder.pending == 0


@pytest.mark.parametrize(
    "wire, reason",
    [
        (b"\x42\x00\x00", "unknown_kind"),
        (b"\x01\x00\x05" + bytes(5), "bad_uuid"),
        (b"\x03\x00\x02" + b"12", "bad_dtmf"),
        (b"\x03\x00\x01" + b"x", "bad_dtmf"),
        (b"\x10\x00\x00", "empty_audio"),
        (b"\x10\x00\x03" + bytes(3), "odd_payload"),
        (b"\x10\xff\xff", "oversized"),
        (b"\x00\x00\x01\x00", "oversized"),
    ],
)
def test_bad_frames_raise_codec_error_with_reason(wire, reason):
    with pytest.raises(AudioSocketError) as caught:
        FrameDecoder().feed(wire)
    assert caught.value.reason == reason


def test_oversized_header_is_refused_before_the_payload_arrives():
    with pytest.raises(AudioSocketError) as caught:
        FrameDecoder().feed(b"\x10\x40\x00")  # 16 KiB announced, nothing sent yet
    assert caught.value.reason == "oversized"


def test_decoder_refuses_input_after_an_error():
    decoder = FrameDecoder()
    with pytest.raises(AudioSocketError):
        decoder.feed(b"\x42\x00\x00")
    with pytest.raises(AudioSocketError) as caught:
        decoder.feed(HANGUP_FRAME)
    assert caught.value.reason == "after_error"


@pytest.mark.parametrize("kind", [Kind.UUID, Kind.DTMF, Kind.ERROR])
def test_encoder_refuses_kinds_that_make_asterisk_hang_up(kind):
    with pytest.raises(AudioSocketError) as caught:
        encode_to_asterisk(kind, b"1")
    assert caught.value.reason == "forbidden_kind"


def test_encoder_refuses_empty_audio_and_builds_one_buffer():
    with pytest.raises(AudioSocketError) as caught:
        encode_to_asterisk(Kind.SLIN_8K, b"")
    assert caught.value.reason == "empty_audio"
    frame = encode_to_asterisk(Kind.SLIN_16K, bytes(640))
    assert isinstance(frame, bytes) and frame[:3] == b"\x12\x02\x80" and len(frame) == 643
    assert encode_to_asterisk(Kind.HANGUP) == HANGUP_FRAME


def test_frame_sizes_for_every_rate():
    assert frame_bytes(8000) == 320
    assert frame_bytes(16000) == 640
    assert frame_bytes(44100) == 1764
    assert frame_bytes(192000) == 7680
    for kind in AUDIO_RATES:
        assert max_payload(kind) <= 0xFFFF


def test_describe_error_names_the_flags():
    assert "caller hung up" in describe_error(b"\x01")
    assert "memory" in describe_error(b"\x04")
    assert describe_error(b"") == "error (no code)"


audio_frames = st.sampled_from(sorted(AUDIO_RATES)).flatmap(
    lambda kind: st.integers(1, max_payload(kind) // 2).map(lambda n: Frame(kind, bytes(2 * n)))
)
frames_strategy = st.one_of(
    audio_frames,
    st.uuids().map(lambda u: Frame(Kind.UUID, u.bytes)),
    st.sampled_from("0123456789*#ABCD").map(lambda d: Frame(Kind.DTMF, d.encode())),
    st.just(Frame(Kind.HANGUP, b"")),
    st.binary(max_size=1).map(lambda b: Frame(Kind.ERROR, b)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(frames_strategy, max_size=8), st.lists(st.integers(1, 400), max_size=20))
def test_round_trip_through_any_chunking(frames, cuts):
    wire = b"".join(encode_from_asterisk(f.kind, f.payload) for f in frames)
    decoder = FrameDecoder()
    decoded, offset = [], 0
    for cut in cuts:
        decoded += decoder.feed(wire[offset : offset + cut])
        offset += cut
    decoded += decoder.feed(wire[offset:])
    assert decoded == frames
    assert decoder.pending == 0


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_nothing_but_the_codec_error(data):
    decoder = FrameDecoder()
    try:
        for frame in decoder.feed(data):
            assert isinstance(frame, Frame)
    except AudioSocketError as error:
        assert error.reason

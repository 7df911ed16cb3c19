"""The AMI wire format (supervisor/ami_protocol.py), without a socket."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from audiogw.supervisor.ami_protocol import AmiParser, AmiProtocolError, format_action

BANNER = b"Asterisk Call Manager/9.0.0\r\n"
LOGIN_OK = b"Response: Success\r\nActionID: 1\r\nMessage: Authentication accepted\r\n\r\n"
EVENT = (b"Event: UserEvent\r\nPrivilege: user,all\r\nChannel: Local/1201@audiogw-1201-00000001;2\r\n"
         b"UserEvent: AudiogwLeg\r\nUuid: 0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\r\nLeg: ia\r\n\r\n")


def test_banner_then_messages():
    parser = AmiParser()
    messages = parser.feed(BANNER + LOGIN_OK + EVENT)
    assert parser.banner == "Asterisk Call Manager/9.0.0"
    assert [m.response for m in messages] == ["Success", ""]
    login, event = messages
    assert login.ok and login.action_id == "1" and not login.is_event
    assert event.is_event and event.event == "UserEvent" and event.get("userevent") == "AudiogwLeg"
    assert event["Channel"] == "Local/1201@audiogw-1201-00000001;2" and "Leg" in event and "Nope" not in event


def test_values_keep_their_colons_and_repeated_keys_their_order():
    parser = AmiParser(expect_banner=False)
    [message] = parser.feed(b"Event: VarSet\r\nValue: a: b:c\r\nChanVariable: x=1\r\nChanVariable: y=2\r\n\r\n")
    assert message["Value"] == "a: b:c"
    assert [v for k, v in message.headers if k == "ChanVariable"] == ["x=1", "y=2"]


def test_error_response_is_not_ok():
    [message] = AmiParser(expect_banner=False).feed(b"Response: Error\r\nActionID: 7\r\nMessage: Authentication failed\r\n\r\n")
    assert not message.ok and message.get("Message") == "Authentication failed"


def test_lone_lf_line_endings_are_accepted():
    [message] = AmiParser(expect_banner=False).feed(b"Event: Hangup\nChannel: x\n\n")
    assert message.event == "Hangup"


def test_not_an_ami_server_is_refused():
    with pytest.raises(AmiProtocolError, match="not an AMI server"):
        AmiParser().feed(b"HTTP/1.1 400 Bad Request\r\n\r\n")


def test_header_without_colon_is_refused():
    with pytest.raises(AmiProtocolError, match="without 'Key:'"):
        AmiParser(expect_banner=False).feed(b"Event: x\r\ngarbage line\r\n\r\n")


def test_endless_message_is_refused_without_waiting_for_its_end():
    parser = AmiParser(max_bytes=1000, expect_banner=False)
    with pytest.raises(AmiProtocolError, match="longer than 1000"):
        for _ in range(100):
            parser.feed(b"Key: " + b"v" * 50 + b"\r\n")
    with pytest.raises(AmiProtocolError, match="longer than 1000"):
        AmiParser(max_bytes=1000, expect_banner=False).feed(b"K: " + b"v" * 2000)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_any_split_of_the_stream_gives_the_same_messages(cuts):
    stream = BANNER + LOGIN_OK + EVENT + LOGIN_OK
    whole = AmiParser().feed(stream)
    parser = AmiParser()
    pieces, position = [], 0
    for cut in cuts:
        pieces.append(stream[position:position + cut])
        position += cut
    pieces.append(stream[position:])
    got = [message for piece in pieces for message in parser.feed(piece)]
    assert got == whole and len(got) == 3


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,15}\Z"), _text), max_size=8))
def test_format_then_parse_round_trips(fields):
    raw = format_action("Originate", "audiogw-1-2", fields)
    [message] = AmiParser(expect_banner=False).feed(raw)
    assert message.headers[:2] == (("Action", "Originate"), ("ActionID", "audiogw-1-2"))
    assert [(k, v) for k, v in message.headers[2:]] == [(k, v.strip()) for k, v in fields]


@pytest.mark.parametrize("fields", [{"Channel": "PJSIP/x\r\nAction: Hangup"}, {"Bad\nName": "x"}, {"A:B": "x"}])
def test_a_line_break_cannot_inject_a_header(fields):
    with pytest.raises(ValueError):
        format_action("Originate", "1", fields)

"""audiogw's call-control events in shared/media_streams.py: builders, parsers and their refusals (pure)."""
from __future__ import annotations

import orjson
import pytest

from audiogw.shared.media_streams import (
    AgentBridge,
    AgentDial,
    AgentHangup,
    AgentSendDtmf,
    GatewayDialStatus,
    MediaStreamsError,
    StreamFormat,
    StreamSession,
    agent_bridge_message,
    agent_dial_message,
    agent_hangup_message,
    agent_send_dtmf_message,
    parse_agent_message,
    parse_gateway_message,
)
from audiogw.shared.messages import DIAL_STATUSES


def test_the_agent_events_have_the_specs_shapes_and_parse_back() -> None:
    assert orjson.loads(agent_dial_message("MZ1", 30)) == {
        "event": "audiogw.dial", "streamSid": "MZ1", "dial": {"timeout": 30}}
    assert orjson.loads(agent_hangup_message("MZ1", "ia")) == {
        "event": "audiogw.hangup", "streamSid": "MZ1", "hangup": {"leg": "ia"}}
    assert orjson.loads(agent_send_dtmf_message("MZ1", "ia", "#")) == {
        "event": "audiogw.send_dtmf", "streamSid": "MZ1", "send_dtmf": {"leg": "ia", "digits": "#"}}
    assert orjson.loads(agent_bridge_message("MZ1")) == {"event": "audiogw.bridge", "streamSid": "MZ1"}
    assert orjson.loads(agent_bridge_message("MZ1", False)) == {"event": "audiogw.unbridge", "streamSid": "MZ1"}
    assert parse_agent_message(agent_dial_message("MZ1", 12.5)) == AgentDial(12.5, "MZ1")
    assert parse_agent_message(b'{"event": "audiogw.dial"}') == AgentDial(30.0, None), "timeout is optional"
    assert parse_agent_message(agent_bridge_message("MZ1")) == AgentBridge(True, "MZ1")
    assert parse_agent_message(agent_bridge_message("MZ1", False)) == AgentBridge(False, "MZ1")
    assert parse_agent_message(agent_hangup_message("MZ1", "retorno")) == AgentHangup("retorno", "MZ1")
    assert parse_agent_message(agent_send_dtmf_message("MZ1", "ia", "w9#")) == AgentSendDtmf("ia", "w9#", "MZ1")


@pytest.mark.parametrize(("reason", "raw"), [
    ("bad_dial", b'{"event": "audiogw.dial", "dial": {"timeout": 0}}'),
    ("bad_dial", b'{"event": "audiogw.dial", "dial": {"timeout": 601}}'),
    ("bad_dial", b'{"event": "audiogw.dial", "dial": {"timeout": true}}'),
    ("bad_dial", b'{"event": "audiogw.dial", "dial": 30}'),
    ("bad_leg", b'{"event": "audiogw.hangup", "hangup": {"leg": "both"}}'),
    ("bad_leg", b'{"event": "audiogw.hangup", "hangup": {}}'),
    ("missing_field", b'{"event": "audiogw.hangup"}'),
    ("bad_field", b'{"event": "audiogw.send_dtmf", "send_dtmf": "1"}'),
    ("bad_digits", b'{"event": "audiogw.send_dtmf", "send_dtmf": {"leg": "ia", "digits": ""}}'),
    ("bad_digits", b'{"event": "audiogw.send_dtmf", "send_dtmf": {"leg": "ia", "digits": "1x"}}'),
    ("bad_digits", b'{"event": "audiogw.send_dtmf", "send_dtmf": {"leg": "ia", "digits": "' + b"1" * 33 + b'"}}'),
    ("bad_leg", b'{"event": "audiogw.send_dtmf", "send_dtmf": {"leg": "door", "digits": "1"}}'),
    ("unknown_event", b'{"event": "audiogw.dial_status", "dial_status": {"status": "ringing"}}'),
    ("unknown_event", b'{"event": "audiogw.transfer"}'),
])
def test_a_bad_event_is_refused_with_its_reason(reason: str, raw: bytes) -> None:
    with pytest.raises(MediaStreamsError) as refused:
        parse_agent_message(raw)
    assert refused.value.reason == reason


def test_dial_status_is_numbered_like_the_stream_and_parses_back() -> None:
    session = StreamSession(StreamFormat())
    session.start()
    for status in DIAL_STATUSES:
        raw = session.dial_status(status)
        message = orjson.loads(raw)
        assert message["event"] == "audiogw.dial_status" and message["streamSid"] == session.stream_sid
        assert message["dial_status"] == {"status": status, "leg": "retorno"}
        assert parse_gateway_message(raw) == GatewayDialStatus(status, "retorno", "", session.stream_sid)
    assert message["sequenceNumber"] == str(1 + len(DIAL_STATUSES))
    failed = orjson.loads(session.dial_status("failed", reason="AMI is down"))
    assert failed["dial_status"] == {"status": "failed", "leg": "retorno", "reason": "AMI is down"}
    with pytest.raises(MediaStreamsError) as refused:
        session.dial_status("connected")
    assert refused.value.reason == "bad_dial_status"

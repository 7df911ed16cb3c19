"""The typed messages of the worker bus and the control channel, in-process: round trips and refusals."""
from __future__ import annotations

import pickle

import orjson
import pytest
from hypothesis import given, strategies as st

from audiogw.shared.config import AudioSocketSettings
from audiogw.shared.messages import (
    MAX_MESSAGE_BYTES, Drain, Failed, Heartbeat, MessageError, Ready, Reply, Request, Stop, Stopping,
    decode_reply, decode_request, decode_worker_command, decode_worker_message, encode_reply, encode_request,
    encode_worker_command, encode_worker_message,
)
from audiogw.shared.worker_spec import WorkerSpec

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 53), 2 ** 53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)
worker_kinds = st.sampled_from([Ready, Heartbeat, Stopping])


def wire(raw: bytes) -> dict:
    return orjson.loads(raw)


# -- worker -> supervisor -------------------------------------------------------
@given(kind=worker_kinds, extension=st.text(min_size=1, max_size=12), pid=st.integers(1, 2 ** 31), stats=json_objects)
def test_worker_message_round_trip(kind, extension, pid, stats):
    message = kind(extension=extension, pid=pid, stats=stats)
    assert decode_worker_message(encode_worker_message(message)) == message


def test_worker_message_wire_form_names_its_type():
    raw = encode_worker_message(Heartbeat(extension="1201", pid=42, stats={"legs": {}}))
    assert wire(raw) == {"type": "heartbeat", "extension": "1201", "pid": 42, "stats": {"legs": {}}}
    assert wire(encode_worker_message(Ready(extension="1", pid=1, stats={})))["type"] == "ready"
    assert wire(encode_worker_message(Stopping(extension="1", pid=1, stats={})))["type"] == "stopping"


@given(reason=st.text(max_size=40))
def test_failed_carries_the_option_error(reason):
    message = Failed(extension="1201", pid=42, stats={}, reason=reason)
    assert wire(encode_worker_message(message)) == {"type": "failed", "extension": "1201", "pid": 42, "stats": {},
                                                    "reason": reason}
    assert decode_worker_message(encode_worker_message(message)) == message
    with pytest.raises(MessageError, match="reason"):
        decode_worker_message(b'{"type": "failed", "extension": "1201", "pid": 42, "stats": {}}')


GOOD_HEARTBEAT = {"type": "heartbeat", "extension": "1201", "pid": 42, "stats": {}}


def without(key: str) -> dict:
    return {k: v for k, v in GOOD_HEARTBEAT.items() if k != key}


@pytest.mark.parametrize("raw, reason", [
    (b"\xff\x00not json", "worker message is not JSON"),
    (b"", "worker message is not JSON"),
    (b"[1, 2]", "Expected `object`, got `array`"),
    (b'"heartbeat"', "Expected `object`, got `str`"),
    (orjson.dumps(without("type")), "missing required field `type`"),
    (orjson.dumps({**GOOD_HEARTBEAT, "type": "hello"}), "Invalid value 'hello' - at `$.type`"),
    (orjson.dumps({**GOOD_HEARTBEAT, "type": "drain"}), "Invalid value 'drain' - at `$.type`"),
    (orjson.dumps(without("extension")), "missing required field `extension`"),
    (orjson.dumps({**GOOD_HEARTBEAT, "extension": ""}), "at `$.extension`"),
    (orjson.dumps({**GOOD_HEARTBEAT, "extension": 1201}), "Expected `str`, got `int` - at `$.extension`"),
    (orjson.dumps(without("pid")), "missing required field `pid`"),
    (orjson.dumps({**GOOD_HEARTBEAT, "pid": "42"}), "Expected `int`, got `str` - at `$.pid`"),
    (orjson.dumps({**GOOD_HEARTBEAT, "pid": 0}), "Expected `int` >= 1 - at `$.pid`"),
    (orjson.dumps({**GOOD_HEARTBEAT, "pid": 4.5}), "at `$.pid`"),
    (orjson.dumps(without("stats")), "missing required field `stats`"),
    (orjson.dumps({**GOOD_HEARTBEAT, "stats": [1]}), "Expected `object`, got `array` - at `$.stats`"),
    (orjson.dumps({**GOOD_HEARTBEAT, "stats": None}), "Expected `object`, got `null` - at `$.stats`"),
    (orjson.dumps({**GOOD_HEARTBEAT, "seq": 3}), "unknown field `seq`"),
    (orjson.dumps({**GOOD_HEARTBEAT, "active_legs": 1}), "unknown field `active_legs`"),
])
def test_malformed_worker_messages_are_refused_with_their_reason(raw, reason):
    with pytest.raises(MessageError) as caught:
        decode_worker_message(raw)
    assert reason in str(caught.value), str(caught.value)
    assert str(caught.value).startswith("worker message")


def test_oversized_messages_are_refused_on_every_channel():
    raw = orjson.dumps({**GOOD_HEARTBEAT, "stats": {"pad": "x" * MAX_MESSAGE_BYTES}})
    for decode in (decode_worker_message, decode_worker_command, decode_request, decode_reply):
        with pytest.raises(MessageError, match=f"exceeds {MAX_MESSAGE_BYTES}"):
            decode(raw)
    just_fits = orjson.dumps({**GOOD_HEARTBEAT, "stats": {"pad": "x" * (MAX_MESSAGE_BYTES - 100)}})
    assert len(just_fits) <= MAX_MESSAGE_BYTES
    assert decode_worker_message(just_fits).pid == 42


# -- supervisor -> worker -------------------------------------------------------
@given(seconds=st.floats(0, 1e6), reason=st.text(max_size=10))
def test_drain_round_trip(seconds, reason):
    assert decode_worker_command(encode_worker_command(Drain(seconds=seconds, reason=reason))) == Drain(seconds, reason)


def test_worker_command_wire_form():
    assert wire(encode_worker_command(Drain(seconds=2.5))) == {"type": "drain", "seconds": 2.5}
    assert wire(encode_worker_command(Stop())) == {"type": "stop"}
    assert decode_worker_command(b'{"type": "stop"}') == Stop(reason="stop")
    assert decode_worker_command(b'{"type": "drain", "seconds": 3}') == Drain(seconds=3.0)


@pytest.mark.parametrize("raw, reason", [
    (b"drain", "worker command is not JSON"),
    (b"{}", "missing required field `type`"),
    (b'{"type": "heartbeat"}', "Invalid value 'heartbeat' - at `$.type`"),
    (b'{"type": "drain"}', "missing required field `seconds`"),
    (b'{"type": "drain", "seconds": -1}', "Expected `float` >= 0.0 - at `$.seconds`"),
    (b'{"type": "drain", "seconds": "5"}', "Expected `float`, got `str` - at `$.seconds`"),
    (b'{"type": "stop", "now": true}', "unknown field `now`"),
])
def test_malformed_worker_commands_are_refused_with_their_reason(raw, reason):
    with pytest.raises(MessageError) as caught:
        decode_worker_command(raw)
    assert reason in str(caught.value), str(caught.value)


# -- ctl <-> supervisor ---------------------------------------------------------
@given(request_id=st.none() | st.text(max_size=32), command=st.text(max_size=20), args=json_objects)
def test_request_round_trip(request_id, command, args):
    request = Request(command=command, id=request_id, args=args)
    assert decode_request(encode_request(request)) == request


def test_request_wire_form_and_optional_fields():
    raw = encode_request(Request(command="list", id="abc", args={}))
    assert wire(raw) == {"command": "list", "id": "abc", "args": {}}
    assert decode_request(b'{"command": "list"}') == Request(command="list")
    assert decode_request(b'{"command": "list", "id": "a", "args": null, "from": "v2"}').args is None


@pytest.mark.parametrize("raw, reason, request_id", [
    (b"\xff\x00not json", "request is not JSON", None),
    (b"[1, 2]", "Expected `object`, got `array`", None),
    (b'{"no": "command"}', "missing required field `command`", None),
    (b'{"id": "r1", "args": {}}', "missing required field `command`", "r1"),
    (b'{"id": "r2", "command": 7}', "Expected `str`, got `int` - at `$.command`", "r2"),
    (b'{"id": "r3", "command": "list", "args": [1]}', "at `$.args`", "r3"),
    (b'{"id": 5, "command": "list"}', "at `$.id`", None),
])
def test_malformed_requests_are_refused_naming_their_id(raw, reason, request_id):
    with pytest.raises(MessageError) as caught:
        decode_request(raw)
    assert reason in str(caught.value), str(caught.value)
    assert caught.value.request_id == request_id


@given(request_id=st.none() | st.text(max_size=32), result=json_values)
def test_success_reply_round_trip(request_id, result):
    reply = Reply.success(request_id, result)
    assert decode_reply(encode_reply(reply)) == reply


@given(request_id=st.none() | st.text(max_size=32), error=st.text(min_size=1, max_size=40))
def test_failure_reply_round_trip(request_id, error):
    reply = Reply.failure(request_id, error)
    assert decode_reply(encode_reply(reply)) == reply


def test_reply_wire_form_carries_only_what_applies():
    assert wire(encode_reply(Reply.success("a", [1]))) == {"id": "a", "ok": True, "result": [1]}
    assert wire(encode_reply(Reply.failure(None, "no"))) == {"id": None, "ok": False, "error": "no"}


@pytest.mark.parametrize("raw, reason, request_id", [
    (b"nope", "reply is not JSON", None),
    (b'{"ok": true}', "missing required field `id`", None),
    (b'{"id": "q1"}', "missing required field `ok`", "q1"),
    (b'{"id": "q2", "ok": "yes"}', "Expected `bool`, got `str` - at `$.ok`", "q2"),
    (b'{"id": "q3", "ok": false, "error": 3}', "at `$.error`", "q3"),
    (b'{"id": "q4", "ok": false, "result": 1}', "a refusal carries an error, not a result", "q4"),
])
def test_malformed_replies_are_refused_naming_their_id(raw, reason, request_id):
    with pytest.raises(MessageError) as caught:
        decode_reply(raw)
    assert reason in str(caught.value), str(caught.value)
    assert caught.value.request_id == request_id


# -- the worker spec --------------------------------------------------------------
def test_worker_spec_is_frozen_and_survives_pickling():
    spec = WorkerSpec(extension="1201", app="echo", settings=AudioSocketSettings(), options={"rate": 8000},
                      bus_endpoint="ipc:///tmp/x", clock_slot=3, supervisor_pid=1)
    assert pickle.loads(pickle.dumps(spec)) == spec
    with pytest.raises(AttributeError):
        spec.app = "agent"  # type: ignore[misc]


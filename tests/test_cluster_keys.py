"""The etcd key layout (shared/cluster_keys.py): one declaration, typed values, refusals with a reason."""
from __future__ import annotations

import msgspec
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from audiogw.shared.cluster_keys import (
    EXTENSIONS, FAMILIES, LEADER, NODES, PLACEMENT, PORTS, PREFIX, Assignment, ClusterValueError, ExtensionRecord,
    LeaderRecord, NodeRecord, PortRecord, decode_value, encode_value, key_for, parse_key, prefix_range,
)
from audiogw.shared.cluster_keys import (
    REMOVALS, REPLIES, REQUESTS, STATUS, CommandReply, CommandRequest, Removal, ServingStatus, request_key,
)

REQUEST_ID = "0123456789abcdef0123456789abcdef"
from audiogw.shared.config import ExtensionConfig

RECORDS = [
    (key_for(EXTENSIONS, "1201"), ExtensionRecord(id="1201", ia_port=30000, retorno_port=30001, app="agent",
                                                  options={"url": "ws://127.0.0.1:8765/media"})),
    (key_for(NODES, "gw1"), NodeRecord(name="gw1", advertise="10.0.0.1", http="10.0.0.1:9464", version="0.1.0",
                                       started=1.5)),
    (key_for(PLACEMENT, "1201"), Assignment(node="gw1", epoch=3, standby="gw2", leader="gw2")),
    (key_for(LEADER), LeaderRecord(name="gw2")),
    (key_for(PORTS, "30001"), PortRecord(extension="1201", leg="retorno")),
    (key_for(STATUS, "1201"), ServingStatus(node="gw2", state="running", epoch=3, defined=17, pid=4242,
                                            reason="exited with code 1")),
    (request_key("gw2", REQUEST_ID), CommandRequest(asker="gw1", command="restart-extension", wait=12.0,
                                                    args={"id": "1201"})),
    (key_for(REPLIES, REQUEST_ID), CommandReply(node="gw2", ok=True, result=[{"id": "1201", "state": "running"}])),
    (key_for(REMOVALS, "1201"), Removal(drain=0.0)),
]


def test_the_layout():
    assert [family.name for family in FAMILIES] == ["extensions", "nodes", "placement", "leader", "ports", "status",
                                                    "requests", "replies", "removals"]
    assert [key for key, _ in RECORDS] == [b"/audiogw/extensions/1201", b"/audiogw/nodes/gw1",
                                          b"/audiogw/placement/1201", b"/audiogw/leader", b"/audiogw/ports/30001",
                                          b"/audiogw/status/1201", f"/audiogw/requests/gw2/{REQUEST_ID}".encode(),
                                          f"/audiogw/replies/{REQUEST_ID}".encode(), b"/audiogw/removals/1201"]
    assert {family.name for family in FAMILIES if family.leased} == {"nodes", "leader", "status", "requests",
                                                                     "replies", "removals"}
    assert all(family.prefix.startswith(PREFIX) for family in FAMILIES)


@pytest.mark.parametrize(("key", "record"), RECORDS, ids=lambda value: getattr(value, "__name__", None))
def test_each_value_round_trips(key, record):
    raw = encode_value(record)
    assert decode_value(key, raw) == record
    assert parse_key(key)[0].record is type(record)


def test_an_extension_record_is_what_the_state_file_writes():
    config = ExtensionConfig.from_dict({"id": "1202", "ia_port": 30002, "retorno_port": 30003, "app": "bridge"})
    record = decode_value(key_for(EXTENSIONS, "1202"), orjson.dumps(config.to_dict()))
    assert ExtensionConfig.from_dict(msgspec.to_builtins(record)) == config


def test_unknown_fields_from_another_version_are_ignored():
    raw = orjson.dumps({"node": "gw1", "epoch": 1, "new_field": [1, 2]})
    assert decode_value(b"/audiogw/placement/1", raw) == Assignment(node="gw1", epoch=1)


@pytest.mark.parametrize(("key", "raw", "reason"), [
    (b"/audiogw/placement/1", b"{", "not JSON"),
    (b"/audiogw/placement/1", b'{"node": "gw1"}', "missing required field `epoch`"),
    (b"/audiogw/placement/1", b'{"node": "gw1", "epoch": 0}', "Expected `int` >= 1"),
    (b"/audiogw/placement/1", b'{"node": "gw1", "epoch": 1, "standby": "gw1"}', "is the serving node itself"),
    (b"/audiogw/placement/1", b'{"node": "a/b", "epoch": 1}', "node"),
    (b"/audiogw/placement/12a", b'{"node": "gw1", "epoch": 1}', "is not an extension id"),
    (b"/audiogw/nodes/gw1", b'{"name": "gw2", "advertise": "x"}', "the record names 'gw2', the key 'gw1'"),
    (b"/audiogw/extensions/1201", b'{"id": "1202", "ia_port": 1, "retorno_port": 2, "app": "echo"}',
     "the record names '1202'"),
    (b"/audiogw/extensions/1201", b'{"id": "1201", "ia_port": 0, "retorno_port": 2, "app": "echo"}', "ia_port"),
    (b"/audiogw/leader", b"[]", "Expected `object`"),
    (b"/audiogw/ports/030001", b'{"extension": "1201", "leg": "ia"}', "is not a TCP port"),
    (b"/audiogw/ports/70000", b'{"extension": "1201", "leg": "ia"}', "is not a TCP port"),
    (b"/audiogw/ports/x", b'{"extension": "1201", "leg": "ia"}', "is not a TCP port"),
    (b"/audiogw/ports/30001", b'{"extension": "1201", "leg": "both"}', "leg"),
    (b"/audiogw/other/x", b"{}", "not in the audiogw layout"),
    (b"/audiogw/nodes/", b"{}", "not in the audiogw layout"),
    (b"/audiogw/nodes/a/b", b"{}", "not in the audiogw layout"),
    (b"/elsewhere", b"{}", "not in the audiogw layout"),
    (b"/audiogw/status/1201", b'{"node": "gw1", "state": "dancing", "epoch": 1}', "state 'dancing' is not one of"),
    (b"/audiogw/status/1201", b'{"node": "gw1", "state": "running", "epoch": 1, "pid": 0}', "pid"),
    (b"/audiogw/status/12x", b'{"node": "gw1", "state": "running", "epoch": 1}', "is not an extension id"),
    (f"/audiogw/requests/gw1/{REQUEST_ID}".encode(), b'{"asker": "gw2", "command": "stop", "wait": 3}',
     "command 'stop' is not carried to another node"),
    (f"/audiogw/requests/gw1/{REQUEST_ID}".encode(), b'{"asker": "gw2", "command": "status", "wait": 3600}',
     "wait"),
    (f"/audiogw/requests/gw1/{REQUEST_ID}".encode(), b'{"asker": "gw2", "command": "status", "wait": 3, '
     b'"args": []}', "args"),
    (b"/audiogw/requests/gw1/not-an-id", b'{"asker": "gw2", "command": "status", "wait": 3}',
     "is not NODE/REQUEST-ID"),
    (f"/audiogw/requests/{REQUEST_ID}".encode(), b"{}", "not in the audiogw layout"),
    (f"/audiogw/replies/{REQUEST_ID}".encode(), b'{"node": "gw1", "ok": true, "error": "both"}',
     "ok without an error, or refused with one"),
    (f"/audiogw/replies/{REQUEST_ID}".encode(), b'{"node": "gw1", "ok": false}', "refused with one"),
    (b"/audiogw/replies/xyz", b'{"node": "gw1", "ok": true}', "is not a request id"),
    (b"/audiogw/removals/1201", b'{"drain": -1}', "drain"),
    (b"/audiogw/removals/1201", b'{"drain": 1e9}', "drain"),
])
def test_bad_values_are_refused_with_a_reason(key, raw, reason):
    with pytest.raises(ClusterValueError) as info:
        decode_value(key, raw)
    assert reason in str(info.value)


def test_an_oversized_value_is_refused():
    with pytest.raises(ClusterValueError, match="exceeds"):
        decode_value(b"/audiogw/leader", b'{"name": "' + b"a" * (1 << 20) + b'"}')


def test_keys_refuse_ids_they_cannot_hold():
    for bad in ("", "a/b"):
        with pytest.raises(ClusterValueError):
            key_for(NODES, bad)
    with pytest.raises(ClusterValueError):
        key_for(LEADER, "x")
    with pytest.raises(ClusterValueError):
        encode_value(orjson)  # type: ignore[arg-type]


@given(st.text("0123456789*#", min_size=1, max_size=32))
def test_every_extension_key_is_inside_its_prefix_range(extension_id):
    key = key_for(PLACEMENT, extension_id)
    start, end = prefix_range(PLACEMENT)
    assert start <= key < end
    assert parse_key(key) == (PLACEMENT, extension_id)
    everything = prefix_range()
    assert everything[0] <= key < everything[1]
    for family in (EXTENSIONS, NODES):
        other_start, other_end = prefix_range(family)
        assert not other_start <= key < other_end

"""The etcd fixture itself: three real members agree on a leader, share data, survive a member's death."""
from __future__ import annotations

import base64

from etcd_fixture import _post, etcd_cluster  # noqa: F401  (the fixture)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _get(member, key: str) -> str | None:
    reply = _post(f"{member.client_url}/v3/kv/range", {"key": _b64(key)})
    kvs = reply.get("kvs") or []
    return base64.b64decode(kvs[0]["value"]).decode() if kvs else None


def test_three_members_one_leader_and_shared_data(etcd_cluster):
    assert len(etcd_cluster.members) == 3
    assert len(set(etcd_cluster.client_urls)) == 3
    leader = etcd_cluster.wait_leader()
    ids = {member.status()["header"]["member_id"] for member in etcd_cluster.members}
    assert len(ids) == 3
    assert {member.status()["leader"] for member in etcd_cluster.members} == {leader.status()["header"]["member_id"]}
    first, second = etcd_cluster.members[0], etcd_cluster.members[2]
    _post(f"{first.client_url}/v3/kv/put", {"key": _b64("/fixture/k"), "value": _b64("v1")})
    assert _get(second, "/fixture/k") == "v1"  # a linearizable read through another member


def test_killed_leader_is_replaced_and_rejoins(etcd_cluster):
    leader = etcd_cluster.wait_leader()
    etcd_cluster.kill(leader)
    assert not leader.running and leader.status() is None
    new_leader = etcd_cluster.wait_leader(other_than=leader)
    assert new_leader is not leader
    survivor = next(member for member in etcd_cluster.members if member.running)
    _post(f"{survivor.client_url}/v3/kv/put", {"key": _b64("/fixture/after"), "value": _b64("2 of 3")})
    etcd_cluster.restart(leader)
    etcd_cluster.wait_leader()  # all three running agree again
    assert _get(leader, "/fixture/after") == "2 of 3"  # it caught up on what it missed


def test_stop_all_leaves_nothing_running(etcd_cluster):
    etcd_cluster.stop_all()
    assert not any(member.running for member in etcd_cluster.members)
    assert all(member.status() is None for member in etcd_cluster.members)

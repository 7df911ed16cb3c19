"""Node agents (supervisor/cluster.py) against a real 3-member etcd: they elect one leader,
agree on placement, move only a lost node's extensions, and carry on when etcd's leader dies.

Three agents run in-process on one loop (each its own aetcd client, lease and view); the
extension definitions are written straight into etcd, as `ctl` will in cluster mode."""
from __future__ import annotations

import asyncio
import logging
import time

import aetcd
import pytest

from audiogw.shared.cluster_keys import (
    EXTENSIONS, NODES, PLACEMENT, ExtensionRecord, NodeRecord, encode_value, key_for, prefix_range,
)
from audiogw.supervisor.cluster import ClusterView, NodeAgent, parse_endpoint
from audiogw.supervisor.placement import served_by
from etcd_fixture import etcd_cluster  # noqa: F401  (the fixture)

TTL = 3  # the default lease_ttl (2, the shortest etcd allows, is tight on a loaded 2-core CI machine)
EXTENSION_IDS = [str(1200 + index) for index in range(12)]
log = logging.getLogger("test_cluster_agent")


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 90))


async def until(predicate, timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` holds (polled on the loop); fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def make_agents(cluster, names=("gw1", "gw2", "gw3"), urls=None) -> list[NodeAgent]:
    """Agents on every member (spread by name), or all first on ``urls[0]``."""
    return [NodeAgent(NodeRecord(name=name, advertise=f"127.0.0.{index + 2}"), urls or cluster.client_urls, TTL,
                      spread=urls is None)
            for index, name in enumerate(names)]


async def client_for(cluster) -> aetcd.Client:
    host, port = parse_endpoint(next(m for m in cluster.members if m.running).client_url)
    client = aetcd.Client(host=host, port=port, timeout=2)
    await client.connect()
    return client


async def define(client: aetcd.Client, extension_ids) -> None:
    for index, extension_id in enumerate(extension_ids):
        record = ExtensionRecord(id=extension_id, ia_port=30000 + 2 * index, retorno_port=30001 + 2 * index,
                                 app="echo")
        await client.put(key_for(EXTENSIONS, extension_id), encode_value(record))


def placed_everywhere(agents, extension_ids, nodes) -> bool:
    """Every agent sees every extension placed on a live node, and they all see the same placement."""
    views = [agent.view.assignments() for agent in agents]
    first = views[0]
    return (set(first) == set(extension_ids) and all(view == first for view in views)
            and all(assignment.node in nodes for assignment in first.values())
            and all(agent.view.placement[e].mod_revision is not None for agent in agents for e in first))


async def placed(agents, client, extension_ids) -> None:
    """Start the agents, define the extensions, wait until every agent sees them placed."""
    await start(agents)
    await define(client, extension_ids)
    await until(lambda: placed_everywhere(agents, extension_ids, {agent.name for agent in agents}), 20, "placement")


async def start(agents) -> None:
    for agent in agents:
        agent.start()
    await until(lambda: all(agent.connected for agent in agents), 20, "every agent connected")
    await until(lambda: sum(agent.is_leader for agent in agents) == 1, 20, "one leader")


async def stop(agents, client=None) -> None:
    for agent in agents:
        await agent.stop()
    if client is not None:
        await client.close()


def test_three_agents_elect_one_leader_and_agree_on_placement(etcd_cluster):
    async def scenario():
        agents = make_agents(etcd_cluster)
        client = await client_for(etcd_cluster)
        try:
            await start(agents)
            await define(client, EXTENSION_IDS)
            took = await until(lambda: placed_everywhere(agents, EXTENSION_IDS, {"gw1", "gw2", "gw3"}), 20,
                               "placement seen by every agent")
            log.info("12 extensions placed and seen by 3 agents in %.3f s", took)
            placement = agents[0].view.assignments()
            assert {a.node for a in placement.values()} <= {"gw1", "gw2", "gw3"}
            for agent in agents:  # each serves exactly its share, and the shares cover everything once
                await until(lambda: set(agent.assigned) == served_by(placement, agent.name), 10, "assigned")
            assert sorted(e for agent in agents for e in agent.assigned) == sorted(EXTENSION_IDS)
            leader = next(agent for agent in agents if agent.is_leader)
            assert {a.leader for a in placement.values()} == {leader.name}
            assert all(a.epoch == 1 and a.standby not in (None, a.node) for a in placement.values())
            assert set(agents[1].view.nodes) == {"gw1", "gw2", "gw3"}
            # A removal is seen everywhere: its placement key goes too.
            await client.delete(key_for(EXTENSIONS, "1200"))
            await until(lambda: all("1200" not in agent.view.placement and "1200" not in agent.assigned
                                    for agent in agents), 10, "a removed extension unplaced everywhere")
        finally:
            await stop(agents, client)

    run(scenario())


def test_a_node_whose_lease_expires_loses_only_its_extensions(etcd_cluster):
    async def scenario():
        agents = make_agents(etcd_cluster)
        client = await client_for(etcd_cluster)
        back = None
        try:
            await placed(agents, client, EXTENSION_IDS)
            before = agents[0].view.assignments()
            # The victim: a node that is not the leader and serves something (a crash: no revoke).
            victim = next(agent for agent in agents if not agent.is_leader and served_by(before, agent.name))
            survivors = [agent for agent in agents if agent is not victim]
            lost = served_by(before, victim.name)
            killed_at = time.monotonic()
            await victim.stop(revoke=False)
            await until(lambda: placed_everywhere(survivors, EXTENSION_IDS, {a.name for a in survivors}),
                        TTL + 10, "the lost node's extensions placed elsewhere")
            log.info("lease of a killed node expired and its %d extension(s) moved in %.3f s (TTL %d s)",
                     len(lost), time.monotonic() - killed_at, TTL)
            after = survivors[0].view.assignments()
            assert victim.name not in survivors[0].view.nodes
            for extension_id, assignment in after.items():
                if extension_id in lost:
                    assert assignment.node == before[extension_id].standby  # to its standby
                    assert assignment.epoch == before[extension_id].epoch + 1
                else:
                    assert (assignment.node, assignment.epoch) == (before[extension_id].node,
                                                                   before[extension_id].epoch)
                assert victim.name not in (assignment.node, assignment.standby)
            # The crashed node comes back with a new lease: it takes nothing back (sticky).
            back = make_agents(etcd_cluster, (victim.name,))[0]
            back.start()
            await until(lambda: back.connected, 20, "the node back")
            await until(lambda: all(victim.name in agent.view.nodes for agent in survivors), 10, "seen back")
            await asyncio.sleep(0.3)
            assert back.assigned == {} and not served_by(back.view.assignments(), victim.name)
        finally:
            await stop(agents + ([back] if back is not None else []), client)

    run(scenario())


def test_the_leader_node_dying_elects_another_which_moves_its_extensions(etcd_cluster):
    async def scenario():
        agents = make_agents(etcd_cluster)
        client = await client_for(etcd_cluster)
        try:
            await placed(agents, client, EXTENSION_IDS)
            before = agents[0].view.assignments()
            leader = next(agent for agent in agents if agent.is_leader)
            survivors = [agent for agent in agents if agent is not leader]
            await leader.stop(revoke=True)  # a clean stop: the lease goes at once, no TTL to wait
            await until(lambda: sum(agent.is_leader for agent in survivors) == 1, 10, "a new leader")
            await until(lambda: placed_everywhere(survivors, EXTENSION_IDS, {a.name for a in survivors}), 10,
                        "the old leader's extensions moved")
            after = survivors[0].view.assignments()
            assert {e for e in EXTENSION_IDS if after[e].node != before[e].node} == served_by(before, leader.name)
        finally:
            await stop(agents, client)

    run(scenario())


def test_agents_carry_on_when_the_etcd_leader_is_killed(etcd_cluster):
    async def scenario():
        etcd_leader = etcd_cluster.wait_leader()
        others = [member.client_url for member in etcd_cluster.members if member is not etcd_leader]
        agents = make_agents(etcd_cluster, urls=[etcd_leader.client_url, *others])  # all on the leader
        client = await client_for(etcd_cluster)
        try:
            await placed(agents, client, EXTENSION_IDS[:6])
            before = agents[0].view.assignments()
            assigned = {agent.name: dict(agent.assigned) for agent in agents}
            leases = {agent.name: agent.lease_id for agent in agents}
            shrank: list[str] = []
            for agent in agents:  # no agent may stop serving anything meanwhile
                agent.on_change = lambda a: shrank.append(a.name) if set(a.assigned) < set(assigned[a.name]) else None
            assert etcd_cluster.leader() is etcd_leader
            killed_at = time.monotonic()
            etcd_cluster.kill(etcd_leader)
            etcd_cluster.wait_leader(other_than=etcd_leader)
            await client.close()
            client = await client_for(etcd_cluster)
            await define(client, EXTENSION_IDS[6:])  # the cluster still places what is added
            took = await until(lambda: placed_everywhere(agents, EXTENSION_IDS, {"gw1", "gw2", "gw3"})
                               and all(agent.connected for agent in agents), 20, "placement after the kill")
            log.info("etcd leader killed: agents placed 6 new extensions %.3f s after the kill (%.3f s after "
                     "the new etcd leader)", time.monotonic() - killed_at, took)
            after = agents[0].view.assignments()
            assert all(after[e] == before[e] for e in before)  # nothing moved
            assert {agent.name: agent.lease_id for agent in agents} == leases  # no lease was lost
            assert not shrank
            assert all(agent.stats["session_failures"] >= 1 for agent in agents)  # each did move to another member
        finally:
            await stop(agents, client)

    run(scenario())


def test_agents_keep_their_assignments_when_all_of_etcd_stops(etcd_cluster):
    async def scenario():
        agents = make_agents(etcd_cluster)
        client = await client_for(etcd_cluster)
        try:
            await placed(agents, client, EXTENSION_IDS[:6])
            await until(lambda: sum(len(agent.assigned) for agent in agents) == 6, 10, "assigned")
            assigned = {agent.name: dict(agent.assigned) for agent in agents}
            await client.close()
            client = None
            etcd_cluster.stop_all()
            await until(lambda: not any(agent.connected for agent in agents), TTL + 10, "every agent disconnected")
            await asyncio.sleep(TTL)  # well past the lease: still serving the cached assignments
            assert {agent.name: agent.assigned for agent in agents} == assigned
            assert all(agent.definition(e) is not None for agent in agents for e in agent.assigned)
            # etcd back: the agents reconnect on their own; the placement they serve is the same.
            for member in etcd_cluster.members:
                etcd_cluster.restart(member)
            etcd_cluster.wait_leader()
            await until(lambda: all(agent.connected for agent in agents), 30, "every agent reconnected")
            await until(lambda: sum(agent.is_leader for agent in agents) == 1, 20, "one leader again")
            await until(lambda: placed_everywhere(agents, EXTENSION_IDS[:6], {"gw1", "gw2", "gw3"}), 20, "placement")
            assert {agent.name: set(agent.assigned) for agent in agents} == {
                name: set(extensions) for name, extensions in assigned.items()}
        finally:
            for agent in agents:
                await agent.stop(revoke=False)

    run(scenario())


def test_a_bad_value_in_etcd_is_skipped_and_counted(etcd_cluster):
    async def scenario():
        agents = make_agents(etcd_cluster, ("gw1",))
        client = await client_for(etcd_cluster)
        try:
            await start(agents)
            await client.put(key_for(EXTENSIONS, "1300"), b'{"id": "1300", "ia_port": "x"}')
            await client.put(b"/audiogw/unknown/x", b"{}")
            await define(client, ["1301"])
            await until(lambda: "1301" in agents[0].assigned, 10, "the good extension placed")
            assert "1300" not in agents[0].view.extensions and agents[0].view.refused["value"] == 2
        finally:
            await stop(agents, client)

    run(scenario())


class _KV:
    def __init__(self, key: bytes, value: bytes, revision: int, lease: int = 0) -> None:
        self.key, self.value, self.mod_revision, self.create_revision, self.lease = key, value, revision, revision, lease


def test_the_view_follows_puts_and_deletes_without_a_socket():
    view = ClusterView()
    node = NodeRecord(name="gw1", advertise="10.0.0.1")
    view.load([_KV(key_for(NODES, "gw1"), encode_value(node), 5, lease=7)], revision=9)
    assert view.revision == 9 and view.nodes["gw1"].record == node and view.nodes["gw1"].lease == 7
    assert view.apply(True, _KV(key_for(PLACEMENT, "1"), b'{"node": "gw1", "epoch": 2}', 10)) is PLACEMENT
    assert view.assignments()["1"].epoch == 2 and view.revision == 10
    assert view.apply(False, _KV(key_for(NODES, "gw1"), b"", 11)) is NODES and not view.nodes
    assert view.apply(True, _KV(b"/audiogw/placement/1", b"[]", 12)) is None  # refused: the old value stays
    assert view.assignments()["1"].epoch == 2 and view.refused["value"] == 1
    start, end = prefix_range()
    assert start == b"/audiogw/" and end == b"/audiogw0"


def test_route_and_service_discovery_answer_from_the_view():
    view = ClusterView()
    view.load([
        _KV(key_for(NODES, "gw1"), encode_value(NodeRecord(name="gw1", advertise="10.0.0.1", http="10.0.0.1:9464")), 2),
        _KV(key_for(NODES, "gw2"), encode_value(NodeRecord(name="gw2", advertise="10.0.0.2")), 3),
        _KV(key_for(EXTENSIONS, "1201"), encode_value(ExtensionRecord(id="1201", ia_port=30000, retorno_port=30001,
                                                                      app="echo")), 4),
        _KV(key_for(PLACEMENT, "1201"), b'{"node": "gw1", "epoch": 1, "standby": "gw2"}', 5),
        _KV(key_for(EXTENSIONS, "1202"), encode_value(ExtensionRecord(id="1202", ia_port=30002, retorno_port=30003,
                                                                      app="echo")), 6),
    ], revision=6)
    assert view.route("1201") == {"host": "10.0.0.1", "ia_port": 30000, "retorno_port": 30001}
    assert view.route("1202") is None  # defined, not placed yet
    assert view.route("9999") is None
    view.apply(False, _KV(key_for(NODES, "gw1"), b"", 7))  # its node's lease went: not routed there any more
    assert view.route("1201") is None
    assert view.http_sd() == []  # gw2 has no HTTP listener
    view.apply(True, _KV(key_for(NODES, "gw1"), encode_value(NodeRecord(name="gw1", advertise="10.0.0.1",
                                                                         http="10.0.0.1:9464")), 8))
    assert view.http_sd() == [{"targets": ["10.0.0.1:9464"], "labels": {"node": "gw1"}}]


def test_the_agent_a_config_describes(tmp_path):
    from audiogw.shared.config import load_config
    from audiogw.supervisor.cluster import agent_for, node_record

    path = tmp_path / "audiogw.toml"
    path.write_text('[supervisor]\nmetrics = "0.0.0.0:9464"\n[audiosocket]\nbind = "10.1.2.3"\n'
                    '[cluster]\netcd = ["http://10.0.0.1:2379", "http://[::1]:2379"]\nname = "gw7"\nlease_ttl = 5\n')
    config = load_config(path)
    record = node_record(config, 12.5)
    assert (record.name, record.advertise, record.http, record.started) == ("gw7", "10.1.2.3", "10.1.2.3:9464", 12.5)
    agent = agent_for(config, 12.5)
    assert agent.urls == ["http://10.0.0.1:2379", "http://[::1]:2379"] and agent.lease_ttl == 5
    assert parse_endpoint(agent.urls[1]) == ("[::1]", 2379)
    assert not agent.connected and agent.assigned == {} and not agent.is_leader
    path.write_text('[supervisor]\nmetrics = "127.0.0.1:0"\n')
    with pytest.raises(ValueError):
        node_record(load_config(path), 0.0)  # one host: no node

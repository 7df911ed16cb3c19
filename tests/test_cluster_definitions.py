"""Extension definitions in etcd (supervisor/cluster.py define_extension/undefine_extension, real
3-member etcd): a port is unique in the whole cluster, however many nodes add at once."""
from __future__ import annotations

import asyncio

import aetcd

from audiogw.shared.cluster_keys import EXTENSIONS, PORTS, ExtensionRecord, PortRecord, decode_value, key_for
from audiogw.supervisor.cluster import define_extension, parse_endpoint, undefine_extension
from etcd_fixture import etcd_cluster  # noqa: F401  (the fixture)


def record(extension_id: str, ia_port: int, retorno_port: int) -> ExtensionRecord:
    return ExtensionRecord(id=extension_id, ia_port=ia_port, retorno_port=retorno_port, app="echo")


def clients(cluster) -> list[aetcd.Client]:
    """One client per member: the adds below come from three 'nodes' at once."""
    result = []
    for member in cluster.members:
        host, port = parse_endpoint(member.client_url)
        result.append(aetcd.Client(host=host, port=port, timeout=2))
    return result


def test_define_refuses_a_taken_id_or_port_and_undefine_frees_them(etcd_cluster):
    async def scenario():
        client, *others = clients(etcd_cluster)
        try:
            assert await define_extension(client, record("1201", 30000, 30001)) is None
            stored = await client.get(key_for(EXTENSIONS, "1201"))
            assert decode_value(key_for(EXTENSIONS, "1201"), stored.value) == record("1201", 30000, 30001)
            claim = await others[0].get(key_for(PORTS, "30001"))
            assert decode_value(key_for(PORTS, "30001"), claim.value) == PortRecord(extension="1201", leg="retorno")
            assert await define_extension(others[0], record("1201", 30010, 30011)) == "extension 1201 already exists"
            assert await define_extension(others[1], record("1202", 30002, 30001)) == \
                "port 30001 is used by extension 1201 (retorno)"
            assert await define_extension(client, record("1203", 30005, 30005)) == \
                "ia_port and retorno_port are both 30005"
            assert await others[0].get(key_for(EXTENSIONS, "1202")) is None  # nothing half-written
            assert await others[0].get(key_for(PORTS, "30002")) is None
            assert await undefine_extension(others[1], "1201") is True
            assert await undefine_extension(others[1], "1201") is False
            assert await client.get(key_for(PORTS, "30000")) is None
            assert await define_extension(others[0], record("1202", 30002, 30001)) is None  # the port is free again
        finally:
            for each in (client, *others):
                await each.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_concurrent_adds_of_one_port_from_three_nodes_let_exactly_one_win(etcd_cluster):
    async def scenario():
        nodes = clients(etcd_cluster)
        try:
            attempts = [define_extension(nodes[index % 3], record(str(1300 + index), 31000, 31001 + index))
                        for index in range(9)]
            outcomes = await asyncio.gather(*attempts)
            winners = [index for index, outcome in enumerate(outcomes) if outcome is None]
            assert len(winners) == 1
            assert all("port 31000 is used by extension" in outcome for outcome in outcomes if outcome is not None)
            claim = await nodes[1].get(key_for(PORTS, "31000"))
            assert decode_value(key_for(PORTS, "31000"), claim.value).extension == str(1300 + winners[0])
            losers = [index for index in range(9) if index not in winners]
            for index in losers:  # a loser claimed nothing, not even its free retorno port
                assert await nodes[2].get(key_for(PORTS, str(31001 + index))) is None
        finally:
            for each in nodes:
                await each.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_the_agent_runs_a_command_on_its_session_or_says_etcd_is_unreachable(etcd_cluster):
    from audiogw.shared.cluster_keys import NodeRecord
    from audiogw.supervisor.cluster import EtcdUnavailable, NodeAgent

    async def scenario():
        agent = NodeAgent(NodeRecord(name="gw1", advertise="127.0.0.1"), etcd_cluster.client_urls, 3)
        agent.start()
        try:
            # Called before the agent is connected: it waits for the session, then runs.
            assert await agent.call(lambda client: define_extension(client, record("1501", 33000, 33001)), 10) is None
            assert await agent.call(lambda client: define_extension(client, record("1502", 33000, 33003)), 10) == \
                "port 33000 is used by extension 1501 (ia)"
            etcd_cluster.stop_all()
            try:
                await agent.call(lambda client: undefine_extension(client, "1501"), 2)
            except EtcdUnavailable as error:
                assert "gw1" in str(error)
            else:
                raise AssertionError("a command ran with all of etcd stopped")
        finally:
            await agent.stop(revoke=False)

    asyncio.run(asyncio.wait_for(scenario(), 60))

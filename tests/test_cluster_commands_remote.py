"""ctl on one node about an extension another node serves (#15's control plane), with a real 3-member etcd
and three real supervisors (tests/test_cluster_supervisors.py's fixtures): add-extension answers with the
serving node's outcome, list shows its state, status and restart-extension reach it, remove-extension's
--drain is the one it drains with, and bad values written straight into etcd are refused and counted."""
from __future__ import annotations

import asyncio
import socket

import aetcd
import orjson
import pytest

from audiogw.bench.cluster_rig import make_nodes
from audiogw.client.ctl import CtlRefused
from audiogw.client.softphone import place_call
from audiogw.shared.cluster_keys import REMOVALS, REPLIES, STATUS, key_for, request_key
from audiogw.shared.net import free_port_block
from audiogw.shared.wav import tone, write_wav
from audiogw.supervisor.cluster import parse_endpoint
from audiogw.supervisor.placement import ranking
from conftest import wait_for
from etcd_fixture import etcd_cluster  # noqa: F401  (the fixture)
from test_cluster_supervisors import TTL, scrape, serving

ASKER, SERVER = 0, 1  # nodes[0] (gw1) asks about extensions placement gives nodes[1] (gw2)


def ids_placed_on(name: str, names: list[str], count: int, start: int = 1700) -> list[str]:
    """Extension ids whose first rendezvous choice among ``names`` is ``name`` (where a new one is placed)."""
    found = []
    candidate = start
    while len(found) < count:
        if ranking(str(candidate), names)[0] == name:
            found.append(str(candidate))
        candidate += 1
    return found


def start_nodes(etcd_cluster, tmp_path, drain_seconds: float = 1.0):
    group = make_nodes(tmp_path, etcd_cluster.client_urls, free_port_block(40), lease_ttl=TTL)
    for node in group:
        node.drain_seconds = drain_seconds
    group[ASKER].folder.mkdir(parents=True, exist_ok=True)
    write_wav(group[ASKER].folder / "door.wav", tone(440, 0.5), 8000)  # not on the serving node
    for node in group:
        node.start()
    return group


@pytest.fixture
def nodes(etcd_cluster, tmp_path):
    group = start_nodes(etcd_cluster, tmp_path)
    try:
        yield group
    finally:
        for node in group:
            node.stop()


@pytest.fixture
def slow_drain_nodes(etcd_cluster, tmp_path):
    """Nodes whose supervisor.drain_seconds is long: a removal's default drain keeps a call going."""
    group = start_nodes(etcd_cluster, tmp_path, drain_seconds=30.0)
    try:
        yield group
    finally:
        for node in group:
            node.stop()


def counter(node, name: str) -> float:
    return sum(float(line.split()[1]) for line in scrape(node).splitlines() if line.startswith(name + " "))


def test_add_list_status_restart_on_one_node_reach_the_serving_node(nodes):
    asker, server = nodes[ASKER], nodes[SERVER]
    good, bad = ids_placed_on(server.name, [node.name for node in nodes], 2)
    row = asker.ctl("add-extension", {"id": good, "app": "echo"}, timeout=20)
    here = server.local()[good]  # the serving node's own word
    assert (row["host"], row["state"], row["pid"]) == (server.name, "running", here["pid"]), row
    assert here["state"] == "running" and good not in asker.local()
    listed = {row["id"]: row for row in asker.ctl("list")}
    assert (listed[good]["host"], listed[good]["state"], listed[good]["pid"]) == (server.name, "running", here["pid"])

    [status] = asker.ctl("status", {"id": good})
    assert (status["host"], status["pid"], status["state"]) == (server.name, here["pid"], "running")
    assert "uptime" in status and "restarts" in status  # the serving node's status row, figures and all

    restarted = asker.ctl("restart-extension", {"id": good}, timeout=20)
    assert restarted["host"] == server.name and restarted["state"] == "running"
    assert restarted["pid"] != here["pid"] and restarted["pid"] == server.local()[good]["pid"]
    wait_for(lambda: {row["id"]: row for row in asker.ctl("list")}[good]["pid"] == restarted["pid"], 10,
             what="the new pid listed on the asking node")

    # A playback file the asking node has but the serving node lacks: the serving node's reason, nothing left.
    with pytest.raises(CtlRefused, match=rf"on node {server.name}: cannot serve it on node {server.name}: .*door\.wav"):
        asker.ctl("add-extension", {"id": bad, "app": "playback", "options": {"file": "door.wav"}}, timeout=20)
    assert bad not in {row["id"] for row in asker.ctl("list")}, "the asking node's list follows its reply"
    for node in nodes:  # the others within a watch event
        wait_for(lambda: bad not in {row["id"] for row in node.ctl("list")}, 5, what=f"{bad} gone on {node.name}")
    url = nodes[0].etcd[0]
    assert not asyncio.run(etcd_keys(url, f"/audiogw/extensions/{bad}"))
    ports = {orjson.loads(value)["extension"] for _key, value in asyncio.run(etcd_keys(url, "/audiogw/ports/"))}
    assert ports == {good}, "the failed extension's ports are free again"
    wait_for(lambda: not asyncio.run(etcd_keys(nodes[0].etcd[0], f"/audiogw/status/{bad}")), 10,
             what="the failed extension's status key gone")

    # A port some other program holds on the serving node's address: its worker cannot listen there.
    [busy_id] = ids_placed_on(server.name, [node.name for node in nodes], 1, start=int(bad) + 1)
    with socket.socket() as squatter:
        squatter.bind((server.address, server.base_port + 30))
        squatter.listen()
        with pytest.raises(CtlRefused, match=rf"on node {server.name}: cannot listen on {server.address}:"
                                             rf"{server.base_port + 30}"):
            asker.ctl("add-extension", {"id": busy_id, "app": "echo", "ia_port": server.base_port + 30}, timeout=20)
    assert busy_id not in {row["id"] for row in asker.ctl("list")}

    # The same commands about an extension the asking node serves itself stay local.
    [mine] = ids_placed_on(asker.name, [node.name for node in nodes], 1)
    first = asker.ctl("add-extension", {"id": mine, "app": "echo"}, timeout=20)
    again = asker.ctl("restart-extension", {"id": mine}, timeout=20)
    assert first["host"] == again["host"] == asker.name and again["pid"] != first["pid"]
    assert asker.ctl("status", {"id": mine})[0]["pid"] == again["pid"] == asker.local()[mine]["pid"]

    with pytest.raises(CtlRefused, match="cluster mode serves etcd's definitions"):
        asker.ctl("reset", {"id": good}, timeout=20)
    with pytest.raises(CtlRefused, match="unknown extension 1699"):
        asker.ctl("status", {"id": "1699"})


def test_remove_drain_0_on_one_node_stops_a_call_on_the_serving_node_at_once(slow_drain_nodes):
    nodes = slow_drain_nodes
    asker, server = nodes[ASKER], nodes[SERVER]
    kept, cut = ids_placed_on(server.name, [node.name for node in nodes], 2)
    rows = {extension_id: asker.ctl("add-extension", {"id": extension_id, "app": "echo"}, timeout=20)
            for extension_id in (kept, cut)}
    assert {row["host"] for row in rows.values()} == {server.name}

    async def removed_during_a_call(extension_id: str, args: dict, seconds: float):
        call = asyncio.ensure_future(place_call(server.address, rows[extension_id]["ia_port"], seconds=seconds))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(asker.ctl, "remove-extension", {"id": extension_id, **args})
        return await call

    # The default drain (the nodes' supervisor.drain_seconds, 30 s) lets the call go on to its end ...
    result = asyncio.run(removed_during_a_call(kept, {}, seconds=4.0))
    assert result.error is None and result.hung_up_by == "client", result
    # ... --drain 0 given on the asking node hangs it up on the serving node at once.
    result = asyncio.run(removed_during_a_call(cut, {"drain": 0}, seconds=20.0))
    assert result.hung_up_by != "client", result  # cut before its own end
    wait_for(lambda: not asyncio.run(etcd_keys(nodes[0].etcd[0], "/audiogw/removals/")), 10,
             what="the serving node cleans the removal records up")


def test_bad_values_under_the_new_keys_are_refused_counted_and_nobody_falls(nodes):
    asker, server = nodes[ASKER], nodes[SERVER]
    [extension_id] = ids_placed_on(server.name, [node.name for node in nodes], 1)
    asker.ctl("add-extension", {"id": extension_id, "app": "echo"}, timeout=20)
    url = nodes[0].etcd[0]
    bad_request = "ab" * 16
    refused_before = counter(server, "audiogw_cluster_requests_refused_total")
    asyncio.run(put_raw(url, [
        (request_key(server.name, bad_request), b'{"asker": "gw1", "command": "stop", "wait": 3}'),
        (request_key(server.name, "cd" * 16), b"not json"),
        (request_key(server.name, "ef" * 16), orjson.dumps({"asker": "gw1", "command": "status", "wait": 3,
                                                            "args": {"id": "not an id"}})),
        (key_for(STATUS, extension_id), b'{"node": "gw9", "state": "dancing", "epoch": 1}'),
        (key_for(REMOVALS, extension_id), b'{"drain": -5}'),
        (key_for(REPLIES, "12" * 16), b'{"node": "gw2", "ok": true, "error": "and yet"}'),
    ]))

    def reply(request_id: str) -> dict | None:
        found = asyncio.run(etcd_keys(url, key_for(REPLIES, request_id).decode()))
        return orjson.loads(found[0][1]) if found else None

    for request_id, reason in ((bad_request, "command 'stop' is not carried to another node"),
                               ("cd" * 16, "not JSON"), ("ef" * 16, "invalid extension id")):
        answer = wait_for(lambda: reply(request_id), 10, what=f"the serving node's refusal of request {request_id}")
        assert answer["ok"] is False and answer["node"] == server.name and reason in answer["error"], answer
    wait_for(lambda: counter(server, "audiogw_cluster_requests_refused_total") >= refused_before + 3, 5,
             what="the refused requests counted")
    wait_for(lambda: all(counter(node, "audiogw_cluster_values_refused_total") >= 4 for node in nodes), 5,
             what="every node's watch refused and counted the bad values")
    assert "cluster: refused" in server.log() and "cluster: ignored" in asker.log()
    for node in nodes:
        node.check_alive()
    # Everything still answers; the bad status is not taken for the serving node's word, which it writes again.
    wait_for(lambda: orjson.loads(asyncio.run(etcd_keys(url, key_for(STATUS, extension_id).decode()))[0][1])
             .get("node") == server.name, 10, what="the serving node's status written over the bad one")
    listed = wait_for(lambda: {row["id"]: row for row in asker.ctl("list") if row["state"] == "running"}, 10,
                      what="the extension listed running again")
    assert listed[extension_id]["host"] == server.name
    assert asker.ctl("status", {"id": extension_id})[0]["host"] == server.name


async def put_raw(url: str, items: list[tuple[bytes, bytes]]) -> None:
    host, port = parse_endpoint(url)
    async with aetcd.Client(host=host, port=port, timeout=2) as client:
        for key, value in items:
            await client.put(key, value)


async def etcd_keys(url: str, prefix: str) -> list[tuple[bytes, bytes]]:
    host, port = parse_endpoint(url)
    async with aetcd.Client(host=host, port=port, timeout=2) as client:
        return [(item.key, item.value) for item in await client.get_prefix(prefix.encode())]


def test_after_a_failover_the_asking_node_shows_the_new_nodes_word(nodes):
    asker, server = nodes[ASKER], nodes[SERVER]
    [extension_id] = ids_placed_on(server.name, [node.name for node in nodes], 1, start=1750)
    asker.ctl("add-extension", {"id": extension_id, "app": "echo"}, timeout=20)
    server.kill()  # no revoke: its statuses go with its lease
    heir = wait_for(lambda: serving([asker, nodes[2]], [extension_id]), TTL + 10, what="served elsewhere")[extension_id]
    heir_node = next(node for node in nodes if node.name == heir)
    pid = heir_node.local()[extension_id]["pid"]
    row = wait_for(lambda: next((row for row in asker.ctl("list") if row["id"] == extension_id and
                                 row["state"] == "running"), None), 10, what="the new node's status listed")
    assert (row["host"], row["pid"]) == (heir, pid)
    assert asker.ctl("status", {"id": extension_id})[0]["pid"] == pid
    statuses = asyncio.run(etcd_keys(asker.etcd[0], "/audiogw/status/"))
    assert [orjson.loads(value)["node"] for _key, value in statuses] == [heir]

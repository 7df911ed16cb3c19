"""Three real ``[cluster]`` supervisors (127.0.0.2, .3, .4) on a real 3-member etcd (#15, SPEC
"Beyond one host"): placement over the nodes, ctl from any node, /route/ID, calls on the routed
host, kill -9 of a whole node, removal seen everywhere, a rejoining node, etcd's leader killed,
all of etcd stopped."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
import uuid

import aetcd
import pytest

from audiogw.bench.cluster_rig import ClusterNode, listening, make_nodes
from audiogw.client.ctl import CtlRefused
from audiogw.client.softphone import place_call
from audiogw.shared.cluster_keys import EXTENSIONS, ExtensionRecord, encode_value, key_for
from audiogw.shared.net import free_port_block
from audiogw.supervisor.cluster import parse_endpoint
from conftest import wait_for
from etcd_fixture import etcd_cluster  # noqa: F401  (the fixture)

TTL = 3
IDS = [str(1500 + index) for index in range(6)]


@pytest.fixture
def nodes(etcd_cluster, tmp_path):
    group = make_nodes(tmp_path, etcd_cluster.client_urls, free_port_block(40), lease_ttl=TTL)
    try:
        for node in group:
            node.start()
        yield group
    finally:
        for node in group:
            node.stop()


def serving(nodes: list[ClusterNode], ids) -> dict[str, str] | None:
    """extension -> the one node whose supervisor runs it (running), when every id has exactly one; else None."""
    found: dict[str, list[str]] = {}
    for node in nodes:
        for extension_id, row in node.local().items():
            if row["state"] == "running":
                found.setdefault(extension_id, []).append(node.name)
    if sorted(found) != sorted(ids) or any(len(names) != 1 for names in found.values()):
        return None
    return {extension_id: names[0] for extension_id, names in found.items()}


def scrape(node: ClusterNode) -> str:
    with urllib.request.urlopen(f"http://{node.http}/metrics", timeout=2) as response:
        return response.read().decode()


def add_all(nodes: list[ClusterNode]) -> dict[str, dict]:
    rows = {}
    for index, extension_id in enumerate(IDS):  # ctl from every node in turn
        rows[extension_id] = nodes[index % len(nodes)].ctl("add-extension", {"id": extension_id, "app": "echo"},
                                                           timeout=20)
    return rows


def test_placement_ctl_route_call_and_removal_from_any_node(nodes):
    rows = add_all(nodes)
    ports = [port for row in rows.values() for port in (row["ia_port"], row["retorno_port"])]
    assert len(set(ports)) == len(ports), "ports are unique in the cluster"
    by_node = wait_for(lambda: serving(nodes, IDS), 20, what="every extension running on exactly one node")
    assert len(set(by_node.values())) >= 2, f"placement spreads over the nodes: {by_node}"
    address = {node.name: node.address for node in nodes}
    for node in nodes:  # every node lists the whole cluster, with the host, and routes every extension
        listed = {row["id"]: row for row in node.ctl("list")}
        assert sorted(listed) == sorted(IDS)
        assert {extension_id: row["host"] for extension_id, row in listed.items()} == by_node
        for extension_id in IDS:
            assert node.route(extension_id) == {"host": address[by_node[extension_id]],
                                                 "ia_port": rows[extension_id]["ia_port"],
                                                 "retorno_port": rows[extension_id]["retorno_port"]}
        assert node.get("/route/9999")[0] == 404
        status, sd = node.get("/sd")
        assert status == 200 and sorted(target for entry in sd for target in entry["targets"]) == sorted(
            n.http for n in nodes)
    printed = subprocess.run([sys.executable, "-c", "from audiogw.client.cli import main; main()", "ctl", "--config",
                              str(nodes[2].folder / "audiogw.toml"), "list", "--json"],
                             capture_output=True, text=True, timeout=20, cwd=nodes[2].folder)
    assert printed.returncode == 0, printed.stderr
    assert {row["id"]: row["host"] for row in json.loads(printed.stdout)} == by_node  # `ctl list --json` rows
    assert sum("audiogw_cluster_leader 1.0" in scrape(node) for node in nodes) == 1
    assert all("audiogw_cluster_connected 1.0" in scrape(node) for node in nodes)
    extension_id = IDS[0]
    route = nodes[2].route(extension_id)
    result = asyncio.run(place_call(route["host"], route["ia_port"], seconds=1.0))
    assert result.error is None and result.frames_received >= 20, result
    for node in nodes:  # nobody else listens on those ports
        if node.address != route["host"]:
            assert not listening(node.address, route["ia_port"])
    text = nodes[1].ctl("dialplan", {"id": extension_id, "cluster": True})["text"]
    assert f"/route/{extension_id}" in text and "CHANUNAVAIL" in text and all(n.http in text for n in nodes)
    # A port another extension holds is refused from any node.
    with pytest.raises(CtlRefused, match="used by extension"):
        nodes[1].ctl("add-extension", {"id": "1599", "ia_port": route["ia_port"]}, timeout=20)
    # Removal from another node than the serving one: gone everywhere, not listened for any more.
    remover = next(node for node in nodes if node.name != by_node[extension_id])
    remover.ctl("remove-extension", {"id": extension_id})
    assert extension_id not in {row["id"] for row in remover.ctl("list")}, "the remover's list follows its reply"
    wait_for(lambda: all(extension_id not in {row["id"] for row in node.ctl("list")} and
                         node.route(extension_id) is None for node in nodes), 10, what="the removal seen everywhere")
    wait_for(lambda: not listening(route["host"], route["ia_port"]), 10, what="its port closed on its host")
    with pytest.raises(CtlRefused, match="unknown extension"):
        nodes[0].ctl("remove-extension", {"id": extension_id})
    # A definition no node can run (written past ctl, say by a newer version): refused, logged, counted.
    asyncio.run(put_definition(nodes[0].etcd[0], ExtensionRecord(id="1598", ia_port=route["ia_port"],
                                                                 retorno_port=route["retorno_port"], app="no-such-app")))
    wait_for(lambda: any("extension 1598 not served on node" in node.log() for node in nodes), 10,
             what="the bad definition refused")
    wait_for(lambda: any(float(line.split()[1]) >= 1 for node in nodes for line in scrape(node).splitlines()
                         if line.startswith("audiogw_cluster_refused_total ")), 5, what="the refusal counted")
    assert all("1598" not in node.local() for node in nodes)


async def put_definition(url: str, record: ExtensionRecord) -> None:
    host, port = parse_endpoint(url)
    async with aetcd.Client(host=host, port=port, timeout=2) as client:
        await client.put(key_for(EXTENSIONS, record.id), encode_value(record))


def test_the_files_extensions_are_not_served_in_cluster_mode_not_even_by_a_reload(etcd_cluster, tmp_path):
    [node] = make_nodes(tmp_path, etcd_cluster.client_urls, free_port_block(40), count=1, lease_ttl=TTL)
    node.extra_config = f"[[extension]]\nid = \"1201\"\nia_port = {node.base_port + 37}\nretorno_port = {node.base_port + 38}\n"
    try:
        node.start()
        assert "cluster mode: the 1 extension(s) of the config file and state file are not served (1201)" in node.log()
        node.ctl("add-extension", {"id": "1202", "app": "echo"}, timeout=20)
        node.ctl("reload", timeout=20)
        assert sorted(node.local()) == ["1202"] and [row["id"] for row in node.ctl("list")] == ["1202"]
        assert not listening(node.address, node.base_port + 37)
    finally:
        node.stop()


def test_kill_9_of_a_node_moves_its_extensions_and_it_rejoins_without_double_serving(nodes):
    add_all(nodes)
    before = wait_for(lambda: serving(nodes, IDS), 20, what="every extension running on exactly one node")
    counts = {node.name: sum(1 for name in before.values() if name == node.name) for node in nodes}
    victim = max(nodes, key=lambda node: counts[node.name])
    lost = sorted(e for e, name in before.items() if name == victim.name)
    assert lost
    survivors = [node for node in nodes if node is not victim]
    victim.kill()
    killed = time.monotonic()
    after = wait_for(lambda: serving(survivors, IDS), TTL + 10, interval=0.05,
                     what="the killed node's extensions running elsewhere")
    took = time.monotonic() - killed
    print(f"kill -9 of node {victim.name}: its {len(lost)} extension(s) served elsewhere after {took:.2f} s "
          f"(lease_ttl {TTL} s)")
    assert all(after[e] == before[e] for e in IDS if e not in lost), "nothing else moved"
    for extension_id in lost:  # routed to, and answering on, its new host
        route = survivors[0].route(extension_id)
        assert route is not None and route["host"] == next(n.address for n in survivors if n.name == after[extension_id])
        result = asyncio.run(place_call(route["host"], route["ia_port"], seconds=0.5))
        assert result.error is None and result.frames_received >= 10, result
    victim.start()  # rejoins as a new node: it takes new extensions only, never one served elsewhere
    wait_for(lambda: len(victim.cluster_health()["nodes"]) == 3, 10, what="the node rejoined")
    time.sleep(1.0)
    assert serving(nodes, IDS) == after
    assert victim.local() == {}


def test_a_stopping_node_hands_over_once_its_listeners_close_not_after_its_drain(nodes):
    add_all(nodes)
    before = wait_for(lambda: serving(nodes, IDS), 20, what="every extension running on exactly one node")
    victim = max(nodes, key=lambda node: sum(1 for name in before.values() if name == node.name))
    lost = sorted(e for e, name in before.items() if name == victim.name)
    survivors = [node for node in nodes if node is not victim]
    async def scenario():
        row = victim.local()[lost[0]]
        call = asyncio.ensure_future(place_call(victim.address, row["ia_port"], seconds=4 * TTL))
        await asyncio.sleep(1.0)
        victim.ctl("stop", {"drain": 5 * TTL})  # the call in progress keeps it draining longer than a lease lasts
        moved = await asyncio.to_thread(wait_for, lambda: serving(survivors, IDS), 2 * TTL, 0.05,
                                        "the stopping node's extensions running elsewhere")
        alive = victim.process.poll() is None
        return await call, moved, alive

    result, moved, alive = asyncio.run(scenario())
    assert alive, "the standby took over only after the stopping node's drain: its lease was revoked too late"
    assert all(moved[e] != victim.name for e in lost)
    assert result.error is None and result.hung_up_by == "client", "the call in progress drained to its end"
    victim.process.wait(30)


def test_etcd_leader_killed_then_all_etcd_stopped_nodes_keep_serving(nodes, etcd_cluster):
    add_all(nodes)
    before = wait_for(lambda: serving(nodes, IDS), 20, what="every extension running on exactly one node")
    pids = {node.name: {e: row["pid"] for e, row in node.local().items()} for node in nodes}
    leader = etcd_cluster.wait_leader()
    etcd_cluster.kill(leader)
    etcd_cluster.wait_leader()
    wait_for(lambda: all(node.cluster_health()["etcd_connected"] for node in nodes), 10,
             what="every node on a live etcd member")
    time.sleep(TTL)  # longer than a lease: nothing may have moved or restarted meanwhile
    assert serving(nodes, IDS) == before
    assert {node.name: {e: row["pid"] for e, row in node.local().items()} for node in nodes} == pids
    etcd_cluster.stop_all()
    wait_for(lambda: not any(node.cluster_health()["etcd_connected"] for node in nodes), 10,
             what="every node sees etcd gone")
    time.sleep(TTL + 1)  # the leases expire in etcd's absence: each node keeps its cached assignments
    assert serving(nodes, IDS) == before
    for node in nodes:
        status, body = node.get("/healthz")
        assert status == 200 and body["cluster"]["status"] == "degraded", body
        assert "etcd unreachable" in body["cluster"]["why"]
        assert "audiogw_cluster_connected 0.0" in scrape(node)
    address = {node.name: node.address for node in nodes}
    extension_id = IDS[0]
    row = next(node for node in nodes if node.name == before[extension_id]).local()[extension_id]
    result = asyncio.run(place_call(address[before[extension_id]], row["ia_port"], seconds=0.5))
    assert result.error is None and result.frames_received >= 10, result
    with pytest.raises(CtlRefused, match="etcd"):
        nodes[0].ctl("remove-extension", {"id": extension_id}, timeout=10)
    # A node restarted while etcd is still down serves its view cached on disk (STATE/cluster-view.json).
    restarted = max(nodes, key=lambda node: sum(1 for name in before.values() if name == node.name))
    restarted.stop()
    restarted.start(connected=False)
    wait_for(lambda: serving(nodes, IDS) == before, 10, what="the restarted node serving its cached assignments")
    assert "served only if etcd stays unreachable" in restarted.log()
    assert restarted.cluster_health()["status"] == "degraded"


# -- through the real Asterisk (tests/asterisk_fixture.py): the --cluster dialplan -------------------------
def test_cluster_dialplan_reaches_the_routed_host_and_again_after_it_is_killed(nodes, private_asterisk, phone):
    from asterisk_fixture import assert_no_asterisk_errors
    from asterisk_phone import Script, noise

    extension_id = IDS[0]
    nodes[0].ctl("add-extension", {"id": extension_id, "app": "echo"}, timeout=20)
    host = wait_for(lambda: serving(nodes, [extension_id]), 20, what="the extension served")[extension_id]
    text = nodes[1].ctl("dialplan", {"id": extension_id, "cluster": True})["text"]
    visitor = phone()
    asterisk = private_asterisk("[general]\n[globals]\n"
                                f"AUDIOGW_RESIDENT_{extension_id} = Local/s@fake-resident\n\n" + text + "\n"
                                "[visitor-phone]\nexten => _[0-9a-f].,1,Answer()\n"
                                f" same => n,AudioSocket(${{EXTEN}},{visitor.address})\n same => n,Hangup()\n\n"
                                "[fake-resident]\nexten => s,1,Answer()\n same => n,Wait(3)\n same => n,Hangup()\n")
    assert "func_curl.so" in asterisk.cli("module show like curl")

    def call_through_cluster() -> tuple[str, float]:
        """One visitor call through the --cluster dialplan: the node whose worker took its ia leg, and the
        seconds from the originate to the echo."""
        call_uuid = str(uuid.uuid4())
        # The visitor stays on the line long enough for a failover (lease_ttl + 2 s) and the echo after it.
        visitor.expect(call_uuid, Script(rate=8000, audio=noise(TTL + 5.0, 8000, seed=5), seconds=TTL + 5.0))
        before = {node.name: ia_calls(node, extension_id) for node in nodes if node.process.poll() is None}
        asterisk.originate(f"Local/{extension_id}@audiogw-{extension_id}", extension=f"{call_uuid}@visitor-phone")
        placed = time.monotonic()
        try:
            heard = visitor.wait_call(call_uuid, 20)
            wait_for(lambda: len(heard.audio_frames()) >= 25, 20, what="the echo through the routed host")
            echoed = time.monotonic() - placed
            visitor.wait_ended(call_uuid)
        except AssertionError as error:
            raise AssertionError(f"{error}\nAsterisk's log:\n{asterisk.log_text()[-4000:]}") from None
        after = {node.name: ia_calls(node, extension_id) for node in nodes if node.name in before}
        served = [name for name in before if after[name] > before[name]]
        assert len(served) == 1, (before, after)
        return served[0], echoed

    assert call_through_cluster()[0] == host
    victim = next(node for node in nodes if node.name == host)
    victim.kill()
    killed = time.monotonic()
    moved, echoed = call_through_cluster()  # at once: the dialplan retries (next node, rounds) until the standby serves
    print(f"a call through the --cluster dialplan placed right after kill -9 of its host ({host}): echoed by "
          f"{moved} {echoed:.2f} s later ({time.monotonic() - killed:.2f} s after the kill, the call included)")
    assert moved != host
    assert asterisk.wait_no_channels(10), asterisk.channels()
    # While the killed host's lease runs out, /route/ID still names it: each try there is CHANUNAVAIL.
    assert_no_asterisk_errors(asterisk, expected=("Failed to connect to AudioSocket service",))


def ia_calls(node: ClusterNode, extension_id: str) -> int:
    """Calls accepted on the extension's ia leg by this node's worker (0: it does not serve it)."""
    for line in scrape(node).splitlines():
        if line.startswith("audiogw_calls_total{") and f'extension="{extension_id}"' in line and 'leg="ia"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0

"""At most one host listens for an extension when etcd is out of reach of some nodes (#15, SPEC "Beyond
one host"; supervisor/fencing.py). Real etcd, three real supervisors: a node cut off from etcd while
the others reach it (it reaches etcd through relays, ``audiogw.bench.partition``, that the test turns
into a black hole, while its HTTP server stays reachable by the others), and a node started from its
cached view while all of etcd is down.
"""
from __future__ import annotations

import threading
import time

import pytest

from audiogw.bench.cluster_rig import listening, make_nodes
from audiogw.bench.partition import links_to
from audiogw.shared.net import free_port_block
from conftest import wait_for
from etcd_fixture import etcd_cluster  # noqa: F401  (the fixture)
from test_cluster_supervisors import TTL, nodes, scrape, serving  # noqa: F401  (nodes: the fixture)

IDS = [str(1700 + index) for index in range(6)]


@pytest.fixture
def cut_node(etcd_cluster, tmp_path):
    """Three nodes; the first (gw1) reaches etcd only through the links (cut at the test's word)."""
    links = links_to(etcd_cluster.client_urls)
    group = make_nodes(tmp_path, etcd_cluster.client_urls, free_port_block(40), lease_ttl=TTL)
    group[0].etcd = [link.url for link in links]
    try:
        for node in group:
            node.start()
        yield group, links
    finally:
        for node in group:
            node.stop()
        for link in links:
            link.close()


class Watcher(threading.Thread):
    """Samples, every 20 ms, which nodes accept a connection on each of the extensions' ia ports."""

    def __init__(self, nodes, ports: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.nodes, self.ports = nodes, ports
        self.double: list[tuple[float, str, list[str]]] = []
        self.samples = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for extension_id, port in self.ports.items():
                hosts = [node.name for node in self.nodes if listening(node.address, port)]
                if len(hosts) > 1:
                    self.double.append((time.monotonic(), extension_id, hosts))
            self.samples += 1
            self.halt.wait(0.02)


def test_a_node_cut_off_from_etcd_fences_itself_and_nobody_double_serves(cut_node):
    nodes, links = cut_node
    cut, others = nodes[0], nodes[1:]
    ids = []
    for extension_id in IDS:  # enough extensions that the node to be cut serves some
        others[len(ids) % 2].ctl("add-extension", {"id": extension_id, "app": "echo"}, timeout=20)
        ids.append(extension_id)
    before = wait_for(lambda: serving(nodes, ids), 20, what="every extension running on exactly one node")
    lost = sorted(e for e, name in before.items() if name == cut.name)
    if not lost:
        pytest.skip(f"placement gave {cut.name} none of {ids}: {before}")  # rendezvous hashing; not seen so far
    ports = {e: row["ia_port"] for e, row in cut.local().items()}
    watcher = Watcher(nodes, ports)
    watcher.start()
    try:
        for link in links:
            link.cut()
        cut_at = time.monotonic()
        after = wait_for(lambda: serving(others, ids), TTL + 10, interval=0.05,
                         what=f"{cut.name}'s extensions running on the other nodes")
        took = time.monotonic() - cut_at
        health = wait_for(lambda: (h := cut.cluster_health()) and h["status"] == "fenced" and h, 5,
                          what="the cut node reports itself fenced")
        assert "cut off from etcd" in health["why"] and health["etcd_connected"] is False
        assert cut.local() == {}, "the fenced node runs nothing"
        status, body = cut.get(f"/route/{lost[0]}")
        assert status == 503 and "ask another node" in body["error"], (status, body)
        assert "audiogw_cluster_fenced 1.0" in scrape(cut)
        assert all(others[0].route(e)["host"] != cut.address for e in lost)
        print(f"{cut.name} cut off from etcd: its {len(lost)} extension(s) served elsewhere after {took:.2f} s "
              f"(lease_ttl {TTL} s); {watcher.samples} samples of every port, none on two hosts")
        assert all(after[e] == before[e] for e in ids if e not in lost), "nothing else moved"
        # Healed: the node rejoins as new, takes back nothing that is served elsewhere.
        for link in links:
            link.heal()
        wait_for(lambda: (h := cut.cluster_health()) and h["status"] == "ok", 15, what="the cut node back on etcd")
        time.sleep(1.0)
        assert serving(nodes, ids) == after
    finally:
        watcher.halt.set()
        watcher.join(5)
    assert watcher.double == [], f"two hosts listened for one extension: {watcher.double[:10]}"


def test_a_node_started_from_its_cache_while_etcd_is_down_leaves_what_moved_to_others(nodes, etcd_cluster):
    """Killed while etcd lived (its extensions moved), started again once all of etcd is down: its cached
    view still places them on it, but the peers say they serve them, so it serves none of them."""
    ids = []
    for extension_id in IDS:
        nodes[1].ctl("add-extension", {"id": extension_id, "app": "echo"}, timeout=20)
        ids.append(extension_id)
    before = wait_for(lambda: serving(nodes, ids), 20, what="every extension running on exactly one node")
    victim = max(nodes, key=lambda node: sum(1 for name in before.values() if name == node.name))
    lost = sorted(e for e, name in before.items() if name == victim.name)
    survivors = [node for node in nodes if node is not victim]
    time.sleep(1.5)  # its cached view (written 1 s after a change) places them on it
    victim.kill()
    after = wait_for(lambda: serving(survivors, ids), TTL + 10, interval=0.05, what="its extensions moved")
    etcd_cluster.stop_all()
    wait_for(lambda: not any(node.cluster_health()["etcd_connected"] for node in survivors), 10,
             what="every node sees etcd gone")
    victim.start(connected=False)
    wait_for(lambda: "cached view, not" in victim.log(), 10, what="the restarted node's decision on its cache")
    time.sleep(0.5)
    assert f"serves 0 assignment(s) of its cached view, not {len(lost)} another node serves" in victim.log()
    assert victim.local() == {} and serving(nodes, ids) == after
    assert victim.cluster_health()["status"] == "degraded"

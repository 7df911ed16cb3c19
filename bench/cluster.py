"""Cluster benchmark (#15): failover after a host's kill -9, and ``ctl add-extension`` -> serving.

`python -m audiogw.bench.cluster [--kills 10] [--adds 20] [--cuts 0] [--lease-ttl 3] [--json]` starts a 3-member etcd
and three ``[cluster]`` supervisors on 127.0.0.2-4 in a temporary folder (``bench/cluster_rig.py``) and prints:

- failover: the node serving a probe extension is killed (``kill -9`` of its process group); a client
  does what the ``--cluster`` dialplan does, as fast as it can: ask ``/route/ID`` of a live node, call
  the host it names; the time from the kill to the first audio frame of a call on the new host, p50/max
  over the kills, and the calls refused meanwhile (no route, connection refused or no answer). The node
  is started again (it rejoins) before the next kill;
- add: ``ctl add-extension`` on a node in turn -> its first frame on the host ``/route/ID`` names, p50/p95
  (and the ctl reply alone);
- cuts (``--cuts N``; every node then reaches etcd through relays, ``bench/partition.py``): the node
  serving the probe is cut off from etcd (a black hole) while the others reach it; the time from the
  cut to the first frame of a call on another host, p50/max, and how many samples (every 10 ms, each
  node's address) found two hosts listening for the probe (the SPEC says never). Healed before the next.
"""
from __future__ import annotations

import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click
import orjson

from audiogw.bench.cluster_rig import ClusterNode, listening, make_nodes, start_cluster
from audiogw.bench.partition import links_to
from audiogw.shared.net import free_port_block

PROBE = "1700"
ATTEMPT_TIMEOUT = 0.5  # seconds a call attempt waits to connect and for its first frame


def first_frame(host: str, port: int, timeout: float = ATTEMPT_TIMEOUT) -> bool:
    """One call attempt: connect, send the UUID frame, True once the gateway's first frame arrives."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"\x01\x00\x10" + uuid.uuid4().bytes)
            sock.settimeout(timeout)
            return len(sock.recv(3)) == 3
    except OSError:
        return False


def call_until_served(nodes: list[ClusterNode], extension_id: str, timeout: float,
                      since: float, not_on: str | None = None) -> tuple[float | None, int]:
    """Seconds from ``since`` (monotonic) until a call routed by a live node (to another host than
    ``not_on``) gets a first frame, and the attempts refused before."""
    refused, start, index = 0, since, 0
    while time.monotonic() - start < timeout:
        node = nodes[index % len(nodes)]
        index += 1
        try:
            route = node.route(extension_id)
        except OSError:
            route = None
        if route is not None and route["host"] != not_on and first_frame(route["host"], route["ia_port"]):
            return time.monotonic() - start, refused
        refused += 1
        time.sleep(0.02)
    return None, refused


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def serving_node(nodes: list[ClusterNode], extension_id: str) -> ClusterNode | None:
    for node in nodes:
        row = node.local().get(extension_id)
        if row is not None and row["state"] == "running":
            return node
    return None


def wait_serving(nodes: list[ClusterNode], extension_id: str, timeout: float = 20.0) -> ClusterNode:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = serving_node(nodes, extension_id)
        if node is not None:
            return node
        time.sleep(0.05)
    raise RuntimeError(f"extension {extension_id} not served within {timeout} s")


def cut_once(nodes: list[ClusterNode], links: dict[str, list], lease_ttl: int) -> tuple[float, int, int]:
    """Cut the probe's host off from etcd: seconds until another host serves it, samples, samples with two listening."""
    victim = wait_serving(nodes, PROBE)
    port = victim.local()[PROBE]["ia_port"]
    others = [node for node in nodes if node is not victim]
    for link in links[victim.name]:
        link.cut()
    cut = time.monotonic()
    samples = double = 0
    took = None
    try:
        while time.monotonic() - cut < lease_ttl + 20:
            if sum(listening(node.address, port, timeout=0.5) for node in nodes) > 1:
                double += 1
            samples += 1
            if took is None:
                route = others[samples % 2].route(PROBE)
                if route is not None and route["host"] != victim.address and first_frame(route["host"], port):
                    took = time.monotonic() - cut
            elif time.monotonic() - cut > took + 2.0:  # watched 2 s past the move
                break
            time.sleep(0.01)
    finally:
        for link in links[victim.name]:
            link.heal()
    if took is None:
        raise RuntimeError(f"{PROBE} not served elsewhere within {lease_ttl + 20} s of the cut")
    deadline = time.monotonic() + 20
    while (health := victim.cluster_health()) is None or health.get("status") != "ok":
        if time.monotonic() > deadline:
            raise RuntimeError(f"node {victim.name} not back on etcd within 20 s of the heal")
        time.sleep(0.05)
    return took, samples, double


def run(kills: int, adds: int, lease_ttl: int, root: Path, cuts: int = 0) -> dict:
    etcd_binary = shutil.which("etcd")
    if etcd_binary is None:
        raise click.ClickException("no etcd binary: `apt-get install etcd-server` (Debian)")
    etcd = start_cluster(root, binary=etcd_binary)
    nodes = make_nodes(root, etcd.client_urls, free_port_block(40), lease_ttl=lease_ttl)
    links = {node.name: links_to(etcd.client_urls) for node in nodes} if cuts else {}
    for node in nodes:
        if cuts:
            node.etcd = [link.url for link in links[node.name]]
    try:
        for node in nodes:
            node.start()
        add_reply, add_served = [], []
        for index in range(adds):
            extension_id = str(1800 + index)
            node = nodes[index % len(nodes)]
            start = time.monotonic()
            row = node.ctl("add-extension", {"id": extension_id, "app": "echo"}, timeout=20)
            add_reply.append(time.monotonic() - start)
            while (route := nodes[0].route(extension_id)) is None or not first_frame(route["host"], row["ia_port"]):
                if time.monotonic() - start > 20:
                    raise RuntimeError(f"extension {extension_id} added but not serving in 20 s")
                time.sleep(0.005)
            add_served.append(time.monotonic() - start)
            # The rig's port range holds 19 extensions: each measured one is removed again.
            node.ctl("remove-extension", {"id": extension_id, "drain": 0}, timeout=20)
        nodes[0].ctl("add-extension", {"id": PROBE, "app": "echo"}, timeout=20)
        failover, refused = [], []
        for _kill in range(kills):
            victim = wait_serving(nodes, PROBE)
            survivors = [node for node in nodes if node is not victim]
            killed = time.monotonic()
            victim.kill()
            took, refusals = call_until_served(survivors, PROBE, lease_ttl + 20, since=killed)
            if took is None:
                raise RuntimeError(f"{PROBE} not served again within {lease_ttl + 20} s of the kill")
            failover.append(took)
            refused.append(refusals)
            victim.start()
        cut_served, cut_samples, cut_double = [], [], []
        for _cut in range(cuts):
            took, samples, double = cut_once(nodes, links, lease_ttl)
            cut_served.append(took)
            cut_samples.append(samples)
            cut_double.append(double)
        return {
            "nodes": len(nodes), "lease_ttl": lease_ttl, "kills": kills,
            "failover_p50_s": round(statistics.median(failover), 3) if failover else None,
            "failover_max_s": round(max(failover), 3) if failover else None,
            "failover_s": [round(value, 3) for value in failover],
            "refused_attempts_per_kill": refused,
            "adds": adds,
            "add_served_p50_ms": round(1000 * statistics.median(add_served), 1) if add_served else None,
            "add_served_p95_ms": round(1000 * percentile(add_served, 0.95), 1) if add_served else None,
            "add_reply_p50_ms": round(1000 * statistics.median(add_reply), 1) if add_reply else None,
            "cuts": cuts,
            "cut_served_elsewhere_p50_s": round(statistics.median(cut_served), 3) if cut_served else None,
            "cut_served_elsewhere_max_s": round(max(cut_served), 3) if cut_served else None,
            "cut_samples": cut_samples,
            "cut_samples_two_hosts_listening": cut_double,
        }
    finally:
        for node in nodes:
            node.stop()
        etcd.stop_all()
        for group in links.values():
            for link in group:
                link.close()


@click.command()
@click.option("--kills", default=10, show_default=True, help="Host kills (failover measurements).")
@click.option("--adds", default=20, show_default=True, help="ctl add-extension measurements.")
@click.option("--cuts", default=0, show_default=True,
              help="Partitions: the probe's host cut off from etcd (every node then reaches etcd through relays).")
@click.option("--lease-ttl", default=3, show_default=True, help="[cluster] lease_ttl of every node.")
@click.option("--keep", is_flag=True, help="Keep the temporary folder (logs).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def main(kills: int, adds: int, cuts: int, lease_ttl: int, keep: bool, as_json: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="audiogw-bench-cluster-"))
    try:
        result = run(kills, adds, lease_ttl, root, cuts)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs kept in {root}", file=sys.stderr)
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    click.echo(f"failover (kill -9 of the serving host, {kills} kills, lease_ttl {lease_ttl} s): "
               f"p50 {result['failover_p50_s']} s, max {result['failover_max_s']} s; call attempts refused "
               f"meanwhile per kill: {result['refused_attempts_per_kill']}")
    click.echo(f"ctl add-extension -> first frame on its host ({adds} adds): p50 {result['add_served_p50_ms']} ms, "
               f"p95 {result['add_served_p95_ms']} ms (ctl reply p50 {result['add_reply_p50_ms']} ms)")
    if cuts:
        click.echo(f"partition (the serving host cut off from etcd, {cuts} cuts): served on another host after "
                   f"p50 {result['cut_served_elsewhere_p50_s']} s, max {result['cut_served_elsewhere_max_s']} s; "
                   f"samples with two hosts listening: {sum(result['cut_samples_two_hosts_listening'])} of "
                   f"{sum(result['cut_samples'])}")


if __name__ == "__main__":
    main()

"""Node agents as real processes (uvloop, as the supervisor runs) on a real 3-member etcd:
`kill -9` of one moves only its extensions, within the lease TTL and a little more."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aetcd

from audiogw.shared.cluster_keys import EXTENSIONS, ExtensionRecord, encode_value, key_for
from audiogw.supervisor.cluster import parse_endpoint
from conftest import wait_for
from etcd_fixture import etcd_cluster  # noqa: F401  (the fixture)

NODE = Path(__file__).with_name("cluster_node.py")
TTL = 3
EXTENSION_IDS = [str(1400 + index) for index in range(9)]


def last_state(path: Path) -> dict | None:
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")] if path.exists() else []
    return json.loads(lines[-1]) if lines else None


def define(url: str, extension_ids) -> None:
    async def put() -> None:
        host, port = parse_endpoint(url)
        async with aetcd.Client(host=host, port=port, timeout=2) as client:
            for index, extension_id in enumerate(extension_ids):
                await client.put(key_for(EXTENSIONS, extension_id), encode_value(ExtensionRecord(
                    id=extension_id, ia_port=32000 + 2 * index, retorno_port=32001 + 2 * index, app="echo")))

    asyncio.run(put())


def test_kill_9_of_a_node_process_moves_only_its_extensions(etcd_cluster, tmp_path):
    outputs = {name: tmp_path / f"{name}.out" for name in ("gw1", "gw2", "gw3")}
    processes = {}
    try:
        for name, output in outputs.items():
            with open(output, "w") as handle, open(tmp_path / f"{name}.err", "w") as errors:
                processes[name] = subprocess.Popen([sys.executable, str(NODE), name, str(TTL), *etcd_cluster.client_urls],
                                                   stdout=handle, stderr=errors)
        define(etcd_cluster.client_urls[0], EXTENSION_IDS)

        def states() -> dict[str, dict] | None:
            found = {name: last_state(path) for name, path in outputs.items() if name in processes}
            return found if all(found.values()) else None

        def all_served(names) -> dict[str, dict] | None:
            found = states()
            if found is None:
                return None
            served = sorted(e for name in names for e in found[name]["assigned"])
            return found if served == sorted(EXTENSION_IDS) and all(found[n]["connected"] for n in names) else None

        before = wait_for(lambda: all_served(outputs), 30, what="every extension served by one node process")
        assert sum(state["leader"] for state in before.values()) == 1
        victim = max((name for name in before if not before[name]["leader"]),
                     key=lambda name: len(before[name]["assigned"]))
        lost = set(before[victim]["assigned"])
        assert lost
        processes[victim].send_signal(signal.SIGKILL)
        processes[victim].wait(10)
        killed_at = time.monotonic()
        survivors = [name for name in outputs if name != victim]
        del processes[victim]
        after = wait_for(lambda: all_served(survivors), TTL + 10, what="the killed node's extensions served elsewhere")
        took = time.monotonic() - killed_at
        print(f"kill -9 of a node process: its {len(lost)} extension(s) served elsewhere after {took:.2f} s "
              f"(lease_ttl {TTL} s)")
        for name in survivors:
            for extension_id, epoch in before[name]["assigned"].items():  # nothing of theirs moved
                assert after[name]["assigned"].get(extension_id) == epoch
        moved = {e: epoch for name in survivors for e, epoch in after[name]["assigned"].items() if e in lost}
        assert set(moved) == lost and all(epoch == before[victim]["assigned"][e] + 1 for e, epoch in moved.items())
    finally:
        for name, process in processes.items():
            process.send_signal(signal.SIGTERM)
        for name, process in processes.items():
            try:
                assert process.wait(10) == 0, (tmp_path / f"{name}.err").read_text()
            except subprocess.TimeoutExpired:
                process.kill()
                raise

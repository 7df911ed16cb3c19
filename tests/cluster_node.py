"""A node agent alone in a process, on uvloop as in the supervisor (tests): one JSON line on
stdout at each change of its state; SIGTERM leaves cleanly (its lease revoked).

    python tests/cluster_node.py NAME LEASE_TTL URL [URL ...]
"""
from __future__ import annotations

import asyncio
import json
import signal
import sys

import uvloop

from audiogw.shared.cluster_keys import NodeRecord
from audiogw.supervisor.cluster import NodeAgent


def report(agent: NodeAgent) -> None:
    print(json.dumps({"name": agent.name, "connected": agent.connected, "leader": agent.is_leader,
                      "assigned": {extension_id: assignment.epoch for extension_id, assignment in agent.assigned.items()}}),
          flush=True)


async def run(name: str, ttl: int, urls: list[str]) -> None:
    agent = NodeAgent(NodeRecord(name=name, advertise="127.0.0.1"), urls, ttl, on_change=report)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    agent.start()
    await stop.wait()
    await agent.stop()


if __name__ == "__main__":
    uvloop.run(run(sys.argv[1], int(sys.argv[2]), sys.argv[3:]))

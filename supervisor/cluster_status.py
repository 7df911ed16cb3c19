"""The serving node's word on its extensions, cluster-wide (#15): ``/audiogw/status/ID``.

Each node writes one :class:`~audiogw.shared.cluster_keys.ServingStatus` per extension it serves
from the cluster (state, pid, reason, the placement epoch and the definition it serves), under its
own lease, so the keys vanish with a dead node; it deletes the key when it stops serving the
extension. ``ctl add-extension`` and ``ctl list`` on any node read them (supervisor/cluster_commands.py).

Never one write per frame or heartbeat, and never on the supervisor loop's path: the supervisor
calls :meth:`StatusPublisher.changed` whenever it has woken for a lifecycle change (its timers'
wake-up, supervisor/daemon.py) and the cluster wiring after each reconcile; that only sets a flag.
One task at a time then (at once after a quiet spell, else ``STATUS_DELAY`` after its previous
round: a failover that starts hundreds of workers coalesces) compares what this node serves with the view of etcd (fed by the agent's watch) and
writes only the difference, in transactions of at most ``TXN_BATCH`` operations. A key whose value
is not what this node wants (lost with an old lease, deleted by hand, written by a stale incarnation)
differs from the view, so it is written again at the next change: the view is the memory.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from audiogw.shared.cluster_keys import STATUS, Assignment, ServingStatus, encode_value, key_for
from audiogw.supervisor.cluster import TXN_BATCH, Entry, EtcdUnavailable, NodeAgent
from audiogw.supervisor.placement import batches
from audiogw.supervisor.tasks import cancel_and_wait

if TYPE_CHECKING:
    from audiogw.supervisor.daemon import Supervisor
    from audiogw.supervisor.extension import ExtensionRuntime

log = logging.getLogger("audiogw.supervisor.cluster")

__all__ = ["STATUS_DELAY", "runtime_status", "refused_status", "status_changes", "StatusPublisher"]

STATUS_DELAY = 0.02  # seconds between two write rounds: a burst's changes (a failover's hundreds of starts) go together
WRITE_WAIT = 5.0  # seconds one batch may wait for etcd; then the next change tries again


def runtime_status(node: str, runtime: "ExtensionRuntime", assignment: Assignment, defined: int) -> ServingStatus:
    """What ``node`` says of an extension it runs: its lifecycle as ``ctl list`` shows it locally,
    and the outcome of its current start (``failure``) once that start has failed."""
    outcome = runtime.outcome
    failure = outcome.result() if outcome is not None and outcome.done() and not outcome.cancelled() else None
    return ServingStatus(node=node, state=runtime.state, epoch=assignment.epoch, defined=defined, pid=runtime.pid,
                         reason=runtime.reason, failure=failure)


def refused_status(node: str, assignment: Assignment, defined: int, reason: str) -> ServingStatus:
    """What ``node`` says of an extension placed on it whose definition it cannot run (no worker at all)."""
    why = f"cannot serve it on node {node}: {reason}"
    return ServingStatus(node=node, state="fatal", epoch=assignment.epoch, defined=defined, reason=why, failure=why)


def status_changes(wanted: Mapping[str, ServingStatus], current: Mapping[str, Entry], node: str,
                   lease: int) -> tuple[dict[str, ServingStatus], dict[str, Entry]]:
    """(keys to put, keys to delete): a wanted status that etcd (as ``current`` shows it) does not hold
    under this node's ``lease``, and this node's statuses of extensions it no longer serves."""
    puts = {extension_id: status for extension_id, status in wanted.items()
            if (entry := current.get(extension_id)) is None or entry.record != status or entry.lease != lease}
    deletes = {extension_id: entry for extension_id, entry in current.items()
               if extension_id not in wanted and entry.record.node == node}
    return puts, deletes


class StatusPublisher:
    """Keeps ``/audiogw/status/ID`` of this node's extensions in step with their lifecycles."""

    def __init__(self, supervisor: "Supervisor", agent: NodeAgent) -> None:
        self.supervisor = supervisor
        self.agent = agent
        self.refusals: dict[str, str] = {}  # assigned here, definition refused (the last reconcile's), by id
        self.stats: Counter[str] = Counter()
        self._dirty = False
        self._task: asyncio.Task | None = None
        self._stopping = False

    def changed(self) -> None:
        """Something may have changed (on the loop, synchronous: a flag and at most one task)."""
        self._dirty = True
        if not self._stopping and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="cluster-status")

    async def stop(self) -> None:
        """No more writes (the lease's revocation then removes every status of this node)."""
        self._stopping = True
        await cancel_and_wait(self._task)

    def wanted(self) -> dict[str, ServingStatus]:
        """The status of every extension placement gives this node: its runtime's, or its refusal."""
        agent, view = self.agent, self.agent.view
        wanted: dict[str, ServingStatus] = {}
        for extension_id, assignment in agent.assigned.items():
            defined = view.extensions.get(extension_id)
            revision = defined.create_revision if defined is not None else 0
            runtime = self.supervisor.extensions.get(extension_id)
            if runtime is not None:
                wanted[extension_id] = runtime_status(agent.name, runtime, assignment, revision)
            elif extension_id in self.refusals:
                wanted[extension_id] = refused_status(agent.name, assignment, revision, self.refusals[extension_id])
        return wanted

    async def _run(self) -> None:
        delay = 0.0  # the first change after a quiet spell goes out at once (an add waits for it) ...
        while self._dirty and not self._stopping:
            await asyncio.sleep(delay)
            delay = STATUS_DELAY  # ... and a burst's next ones at most once per STATUS_DELAY
            self._dirty = False
            try:
                await self._write()
            except EtcdUnavailable as error:  # the next session's reconcile calls changed() again
                self.stats["write_failures"] += 1
                log.debug("cluster: status not written: %s", error)
            except Exception:
                self.stats["write_failures"] += 1
                log.exception("cluster: status write failed; trying again at the next change")

    async def _write(self) -> None:
        agent, view = self.agent, self.agent.view
        lease = agent.lease_id
        if lease is None or not agent.connected:
            return
        puts, deletes = status_changes(self.wanted(), view.status, agent.name, lease)
        for batch in batches(sorted(puts), TXN_BATCH):
            seen = {extension_id: view.status.get(extension_id) for extension_id in batch}

            async def put(client, batch=batch):
                tx = client.transactions
                return await client.transaction(compare=[], failure=[], success=[
                    tx.put(key_for(STATUS, extension_id), encode_value(puts[extension_id]), lease=lease)
                    for extension_id in batch])

            await agent.call(put, WRITE_WAIT)
            self.stats["written"] += len(batch)
            for extension_id in batch:  # until the watch's echo: what was written (as placement does)
                if view.status.get(extension_id) is seen[extension_id]:
                    view.status[extension_id] = Entry(puts[extension_id], None, 0, lease)
        # A delete compares the value this node wrote: another node's newer status stays.
        for batch in batches(sorted(deletes), TXN_BATCH // 2):
            done = await self._delete(batch, deletes)
            if not done and len(batch) > 1:
                for extension_id in batch:  # one of them changed meanwhile: the others still go
                    await self._delete([extension_id], deletes)

    async def _delete(self, batch: list[str], deletes: Mapping[str, Entry]) -> bool:
        view = self.agent.view

        async def delete(client):
            tx = client.transactions
            keys = [key_for(STATUS, extension_id) for extension_id in batch]
            return await client.transaction(
                compare=[tx.value(key) == encode_value(deletes[extension_id].record)
                         for key, extension_id in zip(keys, batch)],
                success=[tx.delete(key) for key in keys], failure=[])

        deleted, _ = await self.agent.call(delete, WRITE_WAIT)
        if deleted:
            self.stats["deleted"] += len(batch)
            for extension_id in batch:
                if view.status.get(extension_id) is deletes[extension_id]:
                    view.status.pop(extension_id, None)
        return bool(deleted)

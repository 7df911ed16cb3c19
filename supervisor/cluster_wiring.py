"""``[cluster]`` mode in the supervisor (#15): what this node serves follows etcd's placement.

Imported only when ``[cluster] etcd`` is set (it brings aetcd and gRPC). One
:class:`ClusterServing` per supervisor owns the :class:`~audiogw.supervisor.cluster.NodeAgent`
and turns its changes into the existing lifecycle:

- the agent's ``on_change`` only marks the node dirty and makes sure ONE reconcile task runs
  (never inline work on the agent's watch): the task runs ``plan_serving`` against the running
  extensions and carries it out with the single-host operations (``remove_in_background``:
  listeners closed at once, calls drained apart; ``add_runtime``; ``replace_extension`` under
  the extension's lock), then looks again if something changed meanwhile;
- a definition this node cannot run is refused: counted, logged once per id and value;
- every change of the agent's view (a debounced ``on_view``) publishes what the HTTP thread
  answers (``/route/ID``, ``/sd``, the cluster part of ``/healthz`` and ``/metrics``) as one
  immutable :class:`Published`, swapped whole: the HTTP thread never waits for etcd nor the loop;
- ``stop()``: the supervisor closes every listener first, then the lease is revoked (the standby
  takes over at once, not after the TTL), then the calls drain.

The local state file's extensions (and the config file's ``[[extension]]``) are not served in
cluster mode: etcd is the one source of definitions. They are named in a warning at start.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from audiogw.shared.stats_schema import CLUSTER_FIGURES
from audiogw.shared.cluster_keys import STATUS, Family
from audiogw.supervisor.cluster import Entry, NodeAgent, agent_for
from audiogw.supervisor.cluster_commands import RemoteCommands, forget_removal
from audiogw.supervisor.cluster_status import StatusPublisher
from audiogw.supervisor.placement import plan_serving

if TYPE_CHECKING:
    from audiogw.supervisor.daemon import Supervisor

log = logging.getLogger("audiogw.supervisor.cluster")

SOURCE_CLUSTER = "cluster"  # ctl list's source of an extension defined in etcd
PUBLISH_DELAY = 0.02  # seconds: a burst of watch events (a node's loss moves hundreds) publishes once
_REFUSED_LOGGED_MAX = 1000


@dataclass(frozen=True)
class Published:
    """What the HTTP thread reads (built on the loop, never changed after)."""

    routes: Mapping[str, dict[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    sd: tuple[dict[str, Any], ...] = ()
    health: Mapping[str, Any] | None = None
    figures: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # CLUSTER_FIGURES, by key


class ClusterServing:
    """This supervisor as a node of the cluster: the agent, the reconcile task, the published view."""

    def __init__(self, supervisor: "Supervisor") -> None:
        self.supervisor = supervisor
        self.agent: NodeAgent = agent_for(supervisor.config, supervisor.started_at, on_change=self._changed)
        self.agent.on_view = self._view_changed
        self.published = Published()
        self.status = StatusPublisher(supervisor, self.agent)  # /audiogw/status/ID of what this node serves
        self.remote = RemoteCommands(supervisor)  # status / restart-extension carried to and from other nodes
        self.agent.view.on_side = self._side_changed
        self.agent.view.on_side_refused = self._side_refused
        self.stats: Counter[str] = Counter()
        self._dirty = False
        self._task: asyncio.Task | None = None
        self._publish_timer: asyncio.TimerHandle | None = None
        self._refused_logged: set[tuple[str, str]] = set()
        self._stopping = False

    @property
    def name(self) -> str:
        return self.agent.name

    # -- running ----------------------------------------------------------------
    def start(self) -> None:
        self._publish()
        self.agent.start()

    async def stop(self) -> None:
        """Leave the cluster: the reconcile task ends, the lease is revoked (the caller closed the listeners)."""
        self._stopping = True
        if self._publish_timer is not None:
            self._publish_timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self.status.stop()
        await self.remote.stop()
        await self.agent.stop(revoke=True)

    # -- the agent's hooks (on the loop, synchronous: only mark and schedule) ------
    def _changed(self, agent: NodeAgent) -> None:
        self._dirty = True
        self._view_changed()
        if self._stopping or self.supervisor.stopping:
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._reconcile(), name="cluster-reconcile")

    def _view_changed(self) -> None:
        if self._publish_timer is None and not self._stopping:
            self._publish_timer = asyncio.get_running_loop().call_later(PUBLISH_DELAY, self._publish)

    # -- reconcile ----------------------------------------------------------------
    async def _reconcile(self) -> None:
        """Serve what placement gives this node; one task at a time, again while changes arrive."""
        while self._dirty and not self._stopping and not self.supervisor.stopping:
            self._dirty = False
            try:
                await self._apply_once()
            except Exception:
                log.exception("cluster: reconcile failed; trying again at the next change")
                self.stats["reconcile_failures"] += 1
        self._view_changed()  # its counters (refused) reach /metrics
        self.status.changed()  # what it started and stopped (a removal leaves no wake-up of the timers)

    async def _apply_once(self) -> None:
        supervisor, agent = self.supervisor, self.agent
        running = {extension_id: runtime.config for extension_id, runtime in supervisor.extensions.items()}
        definitions = {extension_id: record for extension_id in agent.assigned
                       if (record := agent.definition(extension_id)) is not None}
        plan = plan_serving(agent.assigned, definitions, running, supervisor.config.base_dir)
        drain = supervisor.config.supervisor.drain_seconds
        self.status.refusals = dict(plan.refused)
        for extension_id in plan.stop:  # first: at most one host listens, and a moved port is freed
            if (runtime := supervisor.extensions.get(extension_id)) is not None:
                log.info("cluster: extension %s is no longer this node's (%s): stopping it", extension_id,
                         "moved" if extension_id in agent.view.extensions else "removed")
                supervisor.remove_in_background(runtime, self._drain(extension_id, drain))
                self.stats["stopped"] += 1
        for extension_id, reason in plan.refused:
            self.stats["refused"] += 1
            key = (extension_id, reason)
            if key not in self._refused_logged and len(self._refused_logged) < _REFUSED_LOGGED_MAX:
                self._refused_logged.add(key)
                log.error("cluster: extension %s not served on node %s: %s", extension_id, self.name, reason)
        await asyncio.sleep(0)  # the removals' first step (their listeners closed) before a start binds
        for extension in plan.replace:
            if (runtime := supervisor.extensions.get(extension.id)) is not None:
                async with runtime.lock:
                    log.info("cluster: extension %s changed in etcd: replacing its worker", extension.id)
                    await supervisor.replace_extension(runtime, extension)
                    runtime.source = SOURCE_CLUSTER
                    self.stats["replaced"] += 1
        for extension in plan.start:
            if extension.id in supervisor.extensions or supervisor.stopping:
                continue
            runtime = supervisor.add_runtime(extension)
            runtime.source = SOURCE_CLUSTER
            self.stats["started"] += 1
            log.info("cluster: node %s serves extension %s (epoch %d)", self.name, extension.id,
                     agent.assigned[extension.id].epoch)

    def counters_changed(self) -> None:
        """A counter of /metrics changed outside the agent's view changes (a refused request): publish."""
        self._view_changed()

    def _side_refused(self, family: Family, item: str, reason: str) -> None:
        self.remote.refused(family, item, reason)
        self._view_changed()  # cluster_values_refused

    def _side_changed(self, family: Family, item: str, entry: Entry | None) -> None:
        """The view's ``on_side``: a status of this node's gone or overwritten is written again; requests
        and replies go to the remote commands."""
        if family is STATUS:
            if item in self.agent.assigned and (entry is None or entry.record.node != self.name):
                self.status.changed()
        else:
            self.remote.seen(family, item, entry)

    def _drain(self, extension_id: str, default: float) -> float:
        """The drain of a stop: what the removal asked for (``remove-extension --drain``), else ``default``."""
        view = self.agent.view
        entry = view.removals.get(extension_id)
        if extension_id in view.extensions or entry is None:
            return default  # moved, or removed without a record (an older node's ctl)
        self.remote.in_background(forget_removal(self.agent, extension_id, entry))
        return entry.record.drain

    # -- what the HTTP thread reads -------------------------------------------------
    def _publish(self) -> None:
        self._publish_timer = None
        agent, view = self.agent, self.agent.view
        routes = {}
        for extension_id in view.extensions:
            route = view.route(extension_id)
            if route is not None:
                routes[extension_id] = route
        health = {
            "node": self.name,
            "status": "ok" if agent.connected else "degraded",
            "etcd_connected": agent.connected,
            "leader": agent.is_leader,
            "assigned": len(agent.assigned),
            "nodes": sorted(view.nodes),
        }
        if not agent.connected:
            health["why"] = "etcd unreachable: serving the cached assignments"
        figures = {"cluster_connected": agent.connected, "cluster_leader": agent.is_leader,
                   "cluster_assigned": len(agent.assigned), "cluster_nodes": len(view.nodes),
                   "cluster_values_refused": view.refused["value"],
                   "cluster_requests_refused": self.remote.stats["requests_refused"] + self.remote.stats["replies_refused"],
                   "cluster_refused": self.stats["refused"],
                   "cluster_session_failures": agent.stats["session_failures"]}
        assert set(figures) == {spec.key for spec in CLUSTER_FIGURES}
        self.published = Published(MappingProxyType(routes), tuple(view.http_sd()), MappingProxyType(health),
                                   MappingProxyType({key: float(value) for key, value in figures.items()}))
        self.supervisor.metrics_publish()

    def figures(self) -> Mapping[str, float]:
        """The ``CLUSTER_FIGURES`` (by key) for the metrics snapshot, as last published."""
        return self.published.figures

    def health(self) -> Mapping[str, Any] | None:
        """``/healthz``'s ``cluster`` part, as last published."""
        return self.published.health

    def route(self, extension_id: str) -> dict[str, Any] | None:
        """``GET /route/ID`` from the published view (any thread)."""
        return self.published.routes.get(extension_id)


def not_served_warning(supervisor: "Supervisor") -> str | None:
    """The warning naming the file's and the state file's extensions, which cluster mode does not serve."""
    local = sorted(supervisor.store.effective(supervisor.config.extensions))
    if not local:
        return None
    return (f"cluster mode: the {len(local)} extension(s) of the config file and state file are not served "
            f"({', '.join(local[:10])}{' ...' if len(local) > 10 else ''}): extensions come from etcd; "
            "add them with `audiogw ctl add-extension` on any node")

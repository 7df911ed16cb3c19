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
  takes over at once, not after the TTL), then the calls drain;
- at most one host listens (``supervisor/fencing.py``): :meth:`peer_report` is this node's answer to
  ``GET /cluster/peer`` (read live, from the HTTP thread), and a start of an extension that moved off
  a node still answering that it listens for it is held until that node lets go.

The local state file's extensions (and the config file's ``[[extension]]``) are not served in
cluster mode: etcd is the one source of definitions. They are named in a warning at start.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from audiogw.shared.cluster_keys import STATUS, Family
from audiogw.shared.messages import PeerReport
from audiogw.shared.stats_schema import CLUSTER_FIGURES
from audiogw.supervisor.cluster import Entry, NodeAgent, agent_for
from audiogw.supervisor.cluster_commands import RemoteCommands, forget_removal
from audiogw.supervisor.cluster_status import StatusPublisher
from audiogw.supervisor.fencing import PROBE_INTERVAL, PROBE_TIMEOUT, claimed
from audiogw.supervisor.log_once import FirstSeen
from audiogw.supervisor.peers import ask_peers
from audiogw.supervisor.placement import plan_serving
from audiogw.supervisor.tasks import cancel_and_wait

if TYPE_CHECKING:
    from audiogw.supervisor.daemon import Supervisor

log = logging.getLogger("audiogw.supervisor.cluster")

SOURCE_CLUSTER = "cluster"  # ctl list's source of an extension defined in etcd
PUBLISH_DELAY = 0.02  # seconds: a burst of watch events (a node's loss moves hundreds) publishes once


@dataclass(frozen=True)
class Published:
    """What the HTTP thread reads (built on the loop, never changed after)."""

    routes: Mapping[str, dict[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    sd: tuple[dict[str, Any], ...] = ()
    health: Mapping[str, Any] | None = None
    figures: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))  # CLUSTER_FIGURES, by key
    fenced: str | None = None  # /route/ID's 503: why this node's view is not to be trusted


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
        self.status_seen = asyncio.Event()  # set at each status change in the view (an add waits for one)
        self.agent.view.on_side_refused = self._side_refused
        self.stats: Counter[str] = Counter()
        self._dirty = False
        self._task: asyncio.Task | None = None
        self._publish_timer: asyncio.TimerHandle | None = None
        self._first = FirstSeen()  # (extension, reason or node): a refusal or a held start logged once
        self._held_timer: asyncio.TimerHandle | None = None
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
        for timer in (self._publish_timer, self._held_timer):
            if timer is not None:
                timer.cancel()
        await cancel_and_wait(self._task)
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
            if self._first(key):
                log.error("cluster: extension %s not served on node %s: %s", extension_id, self.name, reason)
        await asyncio.sleep(0)  # the removals' first step (their listeners closed) before a start binds
        held = await self._held(plan.start)
        for extension in plan.replace:
            if (runtime := supervisor.extensions.get(extension.id)) is not None:
                async with runtime.lock:
                    log.info("cluster: extension %s changed in etcd: replacing its worker", extension.id)
                    await supervisor.replace_extension(runtime, extension)
                    runtime.source = SOURCE_CLUSTER
                    self.stats["replaced"] += 1
        for extension in plan.start:
            if extension.id in supervisor.extensions or supervisor.stopping or extension.id in held:
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
            self.status_seen.set()
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
        self.remote.in_background(forget_removal(self.agent, extension_id, entry.record))
        return entry.record.drain

    async def _held(self, starts) -> dict[str, str]:
        """The starts to hold (extension -> node): a node gone from etcd still answers that it listens for them.

        Asked again every ``PROBE_INTERVAL`` until it lets go (a node cut off from etcd fences itself
        once a peer shows it its lease is gone) or stops answering (dead, or cut off from us too)."""
        ids = [extension.id for extension in starts if extension.id not in self.supervisor.extensions]
        departed = self.agent.departed_peers() if ids else {}
        if not departed:
            return {}
        reports = await ask_peers(departed, PROBE_TIMEOUT, self.agent.stats)
        held = claimed(ids, reports)
        for extension_id, node in held.items():
            self.stats["held_starts"] += 1
            if self._first(("held", extension_id, node)):
                log.warning("cluster: extension %s not started on node %s yet: node %s, gone from etcd, still listens "
                            "for it (asking again every %.1f s)", extension_id, self.name, node, PROBE_INTERVAL)
        if held and self._held_timer is None and not self._stopping:
            self._held_timer = asyncio.get_running_loop().call_later(PROBE_INTERVAL, self._held_again)
        return held

    def _held_again(self) -> None:
        self._held_timer = None
        self._changed(self.agent)

    def peer_report(self) -> PeerReport:
        """``GET /cluster/peer`` (any thread: plain reads of the loop's state): what this node listens for now."""
        agent, supervisor = self.agent, self.supervisor
        contact = agent.last_contact
        listening = not (self._stopping or supervisor.stopping or agent.fenced)
        return PeerReport(node=self.name, etcd_connected=agent.connected,
                          contact_age=None if contact is None else max(0.0, time.monotonic() - contact),
                          nodes=sorted(list(agent.view.nodes)),
                          serving=sorted(list(supervisor.extensions)) if listening else [])

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
            "status": "ok" if agent.connected else "fenced" if agent.fenced else "degraded",
            "etcd_connected": agent.connected,
            "leader": agent.is_leader,
            "assigned": len(agent.assigned),
            "nodes": sorted(view.nodes),
        }
        fenced = None
        if agent.fenced:
            fenced = health["why"] = (f"cut off from etcd, which node {agent.fenced} reaches: this node's lease is gone, "
                                      "its extensions moved; listening for none until etcd is back")
        elif not agent.connected:
            health["why"] = "etcd unreachable: serving the cached assignments"
        figures = {"cluster_connected": agent.connected, "cluster_leader": agent.is_leader,
                   "cluster_assigned": len(agent.assigned), "cluster_nodes": len(view.nodes),
                   "cluster_values_refused": view.refused["value"],
                   "cluster_requests_refused": sum(self.remote.stats[key] for key in ("requests_refused",
                                                                                      "replies_refused")),
                   "cluster_refused": self.stats["refused"],
                   "cluster_session_failures": agent.stats["session_failures"],
                   "cluster_fenced": agent.fenced is not None, "cluster_held_starts": self.stats["held_starts"],
                   "cluster_peer_refused": agent.stats["peer_refused"]}
        assert set(figures) == {spec.key for spec in CLUSTER_FIGURES}
        self.published = Published(MappingProxyType(routes), tuple(view.http_sd()), MappingProxyType(health),
                                   MappingProxyType({key: float(value) for key, value in figures.items()}), fenced)
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


def no_http_warning(supervisor: "Supervisor") -> str | None:
    """Cluster mode without an HTTP listener: this node answers no ``/route/ID`` and no peer question."""
    if supervisor.config.supervisor.metrics_port:
        return None
    return ("cluster mode without supervisor.metrics: this node answers no GET /route/ID (Asterisk) and no "
            "GET /cluster/peer, so the other nodes cannot ask it whether it still listens, nor it them when it "
            "loses etcd (supervisor/fencing.py); set supervisor.metrics on every node")

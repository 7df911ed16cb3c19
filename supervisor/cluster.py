"""The node agent of ``[cluster]`` mode (#15): a lease, an elected leader, placement by CAS.

Runs on the supervisor's loop (never a worker's): every etcd call is an aetcd coroutine with
a timeout, so nothing here blocks the loop. Imported only when ``[cluster]`` is set (aetcd
brings gRPC; single-host mode pays nothing). ``supervisor/cluster_wiring.py`` drives it.

One :class:`NodeAgent` per supervisor:

- **session**: connect to one ``[cluster] etcd`` URL; keep (or grant) this node's lease and
  put ``/audiogw/nodes/NAME`` under it; read everything under ``/audiogw/`` (a
  :class:`ClusterView`) and watch it from the next revision. The session ends on the first
  error of its watch or of its keepalive (every ``lease_ttl / 3``); the agent then tries the
  next URL, resuming the watch from the last revision it saw. The lease outlives a session
  as long as a keepalive lands within ``lease_ttl``; a lease found expired is replaced (and
  the node is then new to the cluster: it serves only what placement gives it afresh).
- **leader**: ``/audiogw/leader`` is created with a txn (``create_revision == 0``) under the
  node's lease; its create revision is the leader's ``term``. It goes when that lease does,
  and the others campaign again when they see it deleted.
- **placement**: the leader runs ``plan_placement`` (``supervisor/placement.py``) whenever
  nodes, extensions or placement change, and writes the result in transactions that compare
  its term (a deposed leader writes nothing) and each key's mod revision (a stale view writes
  nothing; the watch brings the news and the plan runs again).
- **assignments**: what placement gives this node (with a definition) is :attr:`assigned`.
  When etcd cannot be reached it stays as it was (the node keeps serving what it has) and
  :attr:`connected` says so, unless a peer proves this node's lease gone (``supervisor/fencing.py``):
  then :attr:`fenced` names that peer and nothing is assigned until etcd is back.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aetcd

from audiogw.shared.cluster_keys import (
    EXTENSIONS, LEADER, NODES, PLACEMENT, PORTS, PREFIX, Assignment, ClusterValueError, ExtensionRecord, Family,
    LeaderRecord, NodeRecord, PortRecord, decode_value, encode_value, key_for, parse_key,
)
from audiogw.shared.cluster_keys import REMOVALS, REPLIES, REQUESTS, STATUS, Removal
from audiogw.shared.config import Config
from audiogw.shared.version import audiogw_version
from audiogw.supervisor import cluster_cache
from audiogw.supervisor.fencing import PROBE_INTERVAL, PROBE_TIMEOUT, claimed, lease_gone
from audiogw.supervisor.log_once import FirstSeen
from audiogw.supervisor.peers import ask_peers
from audiogw.supervisor.placement import batches, plan_placement, score
from audiogw.supervisor.tasks import cancel_and_wait

log = logging.getLogger("audiogw.supervisor.cluster")

__all__ = ["Entry", "ClusterView", "NodeAgent", "EtcdUnavailable", "parse_endpoint", "TXN_BATCH",
           "define_extension", "undefine_extension", "node_record", "agent_for"]

TXN_BATCH = 100  # placement keys per transaction: etcd's --max-txn-ops is 128 (compares and ops alike)
_LEADER_KEY = key_for(LEADER)
_NODES_PREFIX = NODES.prefix.encode()
_RETRY_MAX = 1.0  # seconds between two rounds over every endpoint, at most
CACHE_DELAY = 1.0  # seconds from a change of the view to its write on disk (a burst writes once)
DEPARTED_KEEP = 60.0  # seconds a node gone from etcd is still asked before one of its extensions starts here
# The session's first read returns all of /audiogw/ at once: ~350 bytes an extension (definition,
# placement, two port claims), so 10 000 extensions are ~3.5 MB, near gRPC's default 4 MiB limit.
_CHANNEL_OPTIONS = {"grpc.max_receive_message_length": 64 << 20}


T = TypeVar("T")


class EtcdUnavailable(RuntimeError):
    """No etcd session to run an operation on in time (a command in cluster mode is refused with this)."""


def parse_endpoint(url: str) -> tuple[str, int]:
    """``http://HOST:PORT`` (as ``[cluster] etcd`` validated it) -> the host and port aetcd takes
    (an IPv6 host keeps its brackets: gRPC's target is ``HOST:PORT``)."""
    rest = url.split("://", 1)[1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded value with the etcd metadata the agent needs (CAS on ``mod_revision``; the
    leader's term is its ``create_revision``; ``lease`` tells whose it is). ``mod_revision``
    None: written by this node, its revision not seen yet."""

    record: Any
    mod_revision: int | None
    create_revision: int
    lease: int


# The families the agent itself does not act on (no placement, no route): the control plane's
# (supervisor/cluster_commands.py, supervisor/cluster_status.py). ClusterView keeps them and tells
# ``on_side``; ``apply`` returns None for them, so a status write never makes the leader plan again.
SIDE_FAMILIES: tuple[Family, ...] = (STATUS, REQUESTS, REPLIES, REMOVALS)


class ClusterView:
    """Everything under ``/audiogw/`` as this node last saw it. Pure (fed key-values, no client):
    a value that is not its family's shape is skipped, logged once per key and value, counted."""

    def __init__(self) -> None:
        self.extensions: dict[str, Entry] = {}
        self.nodes: dict[str, Entry] = {}
        self.placement: dict[str, Entry] = {}
        self.ports: dict[str, Entry] = {}
        self.status: dict[str, Entry] = {}  # extension id -> its serving node's ServingStatus
        self.requests: dict[str, Entry] = {}  # "NODE/REQID" -> CommandRequest
        self.replies: dict[str, Entry] = {}  # REQID -> CommandReply
        self.removals: dict[str, Entry] = {}  # extension id -> Removal
        # Called (on the loop, synchronously: only note and schedule) after each change of a side family:
        # (family, id, the new entry or None for a delete).
        self.on_side: Callable[[Family, str, Entry | None], None] | None = None
        self.on_side_refused: Callable[[Family, str, str], None] | None = None  # (family, id, the reason)
        self.leader: Entry | None = None
        self.revision = 0
        self.refused: Counter[str] = Counter()  # bad values by family
        self._first = FirstSeen()  # (key, mod revision): logged once

    def _table(self, family: Family) -> dict[str, Entry]:
        return {EXTENSIONS.name: self.extensions, NODES.name: self.nodes, PLACEMENT.name: self.placement,
                PORTS.name: self.ports, STATUS.name: self.status, REQUESTS.name: self.requests,
                REPLIES.name: self.replies, REMOVALS.name: self.removals}[family.name]

    def load(self, kvs: Sequence[Any], revision: int) -> None:
        """A full read (every key under the prefix, at ``revision``) replaces the view."""
        self.extensions, self.nodes, self.placement, self.ports, self.leader = {}, {}, {}, {}, None
        self.status, self.requests, self.replies, self.removals = {}, {}, {}, {}
        for kv in kvs:
            self.apply(True, kv)
        self.revision = revision

    def apply(self, put: bool, kv: Any) -> Family | None:
        """One put or delete; returns the family it changed (None: outside the layout, refused, or one
        of the ``SIDE_FAMILIES``, which ``on_side`` hears of instead)."""
        self.revision = max(self.revision, kv.mod_revision)
        try:
            family, item = parse_key(kv.key)
            record = decode_value(kv.key, kv.value) if put else None
        except ClusterValueError as error:
            self.refused["value"] += 1
            if self._first((kv.key, kv.mod_revision)):
                log.warning("cluster: ignored %s", error)
            self._side_refused(kv.key, str(error))
            return None
        entry = Entry(record, kv.mod_revision, kv.create_revision, kv.lease) if put else None
        if family in SIDE_FAMILIES:
            return self._side(family, item, entry)
        if family is LEADER:
            self.leader = entry
        elif entry is None:
            self._table(family).pop(item, None)
        else:
            self._table(family)[item] = entry
        return family

    def _side(self, family: Family, item: str, entry: Entry | None) -> None:
        if entry is None:
            self._table(family).pop(item, None)
        else:
            self._table(family)[item] = entry
        if self.on_side is not None:
            try:
                self.on_side(family, item, entry)
            except Exception:
                log.exception("cluster: on_side failed")
        return None

    def _side_refused(self, key: bytes, reason: str) -> None:
        """A refused value under a side family's key: ``on_side_refused`` may answer it (a bad request)."""
        try:
            family, item = parse_key(key)
        except ClusterValueError:
            return
        if family not in SIDE_FAMILIES:
            return
        if self._table(family).pop(item, None) is not None and self.on_side is not None:
            try:  # the key holds something else now: what it held before is no longer there
                self.on_side(family, item, None)
            except Exception:
                log.exception("cluster: on_side failed")
        if self.on_side_refused is not None:
            try:
                self.on_side_refused(family, item, reason)
            except Exception:
                log.exception("cluster: on_side_refused failed")

    def entries(self) -> list[tuple[Family, str, Entry]]:
        """A copy of what ``cluster_cache`` writes (definitions, nodes, placement, ports, the leader): cheap on
        the loop (~10 ms at 10 000 extensions); the records are frozen, so a thread may encode them."""
        rows = [(family, item, entry) for family in (EXTENSIONS, NODES, PLACEMENT, PORTS)
                for item, entry in self._table(family).items()]
        if self.leader is not None:
            rows.append((LEADER, "", self.leader))
        return rows

    def assignments(self) -> dict[str, Assignment]:
        return {extension_id: entry.record for extension_id, entry in self.placement.items()}

    def route(self, extension_id: str) -> dict[str, Any] | None:
        """``GET /route/ID``'s answer (SPEC "Beyond one host"): the serving node's advertised address
        and the extension's ports; None (404) when it is not placed on a live node (Asterisk then
        tries its next host, or the caller hears the failure at once)."""
        placed, defined = self.placement.get(extension_id), self.extensions.get(extension_id)
        node = self.nodes.get(placed.record.node) if placed is not None else None
        if defined is None or node is None:
            return None
        return {"host": node.record.advertise, "ia_port": defined.record.ia_port,
                "retorno_port": defined.record.retorno_port}

    def http_sd(self) -> list[dict[str, Any]]:
        """``GET /sd`` (Prometheus ``http_sd_configs``): every live node's HTTP listener, labelled with its name."""
        return [{"targets": [entry.record.http], "labels": {"node": name}}
                for name, entry in sorted(self.nodes.items()) if entry.record.http]


class NodeAgent:
    """This node in the cluster: its lease, its part in the election, the placement it serves.

    ``on_change(agent)`` is called (on the loop, synchronously) whenever :attr:`assigned`,
    :attr:`connected` or :attr:`is_leader` change: the supervisor's hook to start and stop
    workers. ``rebalance`` is placement's (off: only a lost node's extensions move).
    """

    def __init__(self, record: NodeRecord, urls: Sequence[str], lease_ttl: int, *,
                 on_change: Callable[["NodeAgent"], None] | None = None, rebalance: bool = False,
                 spread: bool = True, settle: float | None = None, cache_path: str | None = None) -> None:
        if not urls:
            raise ValueError("no etcd URL")
        self.record = record
        self.name = record.name
        self.urls = list(urls)
        self.lease_ttl = lease_ttl
        self.rpc_timeout = max(0.2, lease_ttl / 3)
        self.on_change = on_change
        self.on_view: Callable[[], None] | None = None  # after every change of :attr:`view` (routes, /sd)
        self.rebalance = rebalance
        self.view = ClusterView()
        self.assigned: dict[str, Assignment] = {}
        self.connected = False
        self.term: int | None = None  # the leader key's create revision while this node leads
        self.lease_id: int | None = None
        self.last_contact: float | None = None  # monotonic time of the last etcd reply
        self.stats: Counter[str] = Counter()
        self.fenced: str | None = None  # the peer whose view proved this node's lease gone (fencing.py)
        self.departed: dict[str, tuple[NodeRecord, float]] = {}  # nodes gone from etcd: record, when (monotonic)
        self._guard_task: asyncio.Task | None = None
        self.cache_path = cache_path  # cluster_cache: the view on disk, for a start while etcd is down
        self._cached_start = False  # the view came from the cache: serve it once the peers prove nothing
        self._save_timer: asyncio.TimerHandle | None = None
        self._save_task: asyncio.Task | None = None
        self.changed = asyncio.Event()  # set at every on_change (tests and the supervisor may wait on it)
        # Nodes start on different endpoints (by name), so one etcd member's death is one node's reconnect,
        # not everyone's; ``spread=False`` starts at the first URL.
        self._endpoint = score(self.name, "etcd") % len(self.urls) if spread else 0
        self._client: aetcd.Client | None = None
        self._task: asyncio.Task | None = None
        self._plan_task: asyncio.Task | None = None
        self._replan = False
        self._stopping = False
        self._failures = 0
        self._background: set[asyncio.Task] = set()
        # A leader that joined less than ``settle`` s ago (default lease_ttl) places no new extension
        # yet: at a cluster's start the nodes join one by one, and sticky placement would leave every
        # extension on the first. Moves off a lost node never wait: those extensions are placed already.
        self.settle = lease_ttl if settle is None else settle
        self._joined_at: float | None = None
        self._settle_timer: asyncio.TimerHandle | None = None

    @property
    def is_leader(self) -> bool:
        return self.term is not None

    async def call(self, operation: Callable[[aetcd.Client], Awaitable[T]], timeout: float) -> T:
        """Run ``operation(client)`` on this node's current etcd session (``ctl`` in cluster mode:
        ``define_extension``...), waiting up to ``timeout`` s for one; EtcdUnavailable says why not."""
        deadline = time.monotonic() + timeout
        while self._client is None or not self.connected:
            if self._stopping or time.monotonic() >= deadline:
                raise EtcdUnavailable(f"etcd is unreachable from node {self.name} (tried {', '.join(self.urls)})")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), max(0.01, min(0.2, deadline - time.monotonic())))
            except TimeoutError:
                pass
        try:
            return await asyncio.wait_for(operation(self._client), max(0.01, deadline - time.monotonic()))
        except (aetcd.ClientError, OSError, TimeoutError) as error:
            raise EtcdUnavailable(f"etcd did not answer node {self.name}: {type(error).__name__}: {error}") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # our caller is cancelled
            # gRPC cancels the calls in flight when the session closes its channel (an endpoint failed).
            raise EtcdUnavailable(f"node {self.name}'s etcd session ended during the call; try again") from None

    # -- running ----------------------------------------------------------------
    def start(self) -> None:
        """Join the cluster in the background (the loop is never held: see ``connected``)."""
        if self._task is None:
            self._load_cache()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"cluster-{self.name}")

    def _load_cache(self) -> None:
        loaded = cluster_cache.load(self.cache_path, self.name) if self.cache_path else None
        if loaded is None:
            return
        revision, kvs, age = loaded
        self.view.load(kvs, revision)
        self._cached_start = True
        log.info("cluster: node %s loaded its view of etcd from %s (%.0f s old, revision %d): %d extension(s), %d "
                 "placed here; served only if etcd stays unreachable and no peer reaches it", self.name,
                 self.cache_path, age, revision, len(self.view.extensions), len(self._mine()))

    def _save_soon(self) -> None:
        if self.cache_path and self.connected and self._save_timer is None and not self._stopping:
            self._save_timer = asyncio.get_running_loop().call_later(CACHE_DELAY, self._save)

    def _save(self) -> None:
        self._save_timer = None
        if self._save_task is not None and not self._save_task.done():
            self._save_soon()  # one write at a time: the next one after it
            return
        assert self.cache_path is not None
        # Encoding 40 000 records takes ~150 ms: in the thread, from the loop's copy.
        self._save_task = asyncio.ensure_future(asyncio.to_thread(
            cluster_cache.save, self.cache_path, self.name, self.view.revision, self.view.entries()))
        self._save_task.add_done_callback(self._saved)

    def _saved(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.stats["cache_write_failures"] += 1
            log.error("cluster: could not write the cached view %s: %s", self.cache_path, task.exception())

    async def stop(self, *, revoke: bool = True) -> None:
        """Leave: with ``revoke`` the lease goes at once (this node's key and, if it leads, the
        leader key with it), so the others move its extensions now rather than after the TTL.
        ``revoke=False`` leaves as a crash would (tests)."""
        self._stopping = True
        for timer in (self._settle_timer, self._save_timer):
            if timer is not None:
                timer.cancel()
        self._settle_timer = self._save_timer = None
        client, lease_id = self._client, self.lease_id
        if revoke and client is not None and lease_id is not None:
            try:
                await asyncio.wait_for(client.revoke_lease(lease_id), self.rpc_timeout)
            except (aetcd.ClientError, OSError, TimeoutError) as error:
                log.warning("cluster: could not revoke this node's lease (it expires in %d s): %s", self.lease_ttl,
                            error)
        for task in (self._plan_task, self._task, self._guard_task, *self._background):
            await cancel_and_wait(task)
        self._task = self._plan_task = None

    async def _run(self) -> None:
        round_start = self._endpoint
        while not self._stopping:
            url = self.urls[self._endpoint]
            host, port = parse_endpoint(url)
            client = aetcd.Client(host=host, port=port, timeout=self.rpc_timeout, options=_CHANNEL_OPTIONS)
            self._client = client
            try:
                await self._session(client)
            except asyncio.CancelledError as error:
                task = asyncio.current_task()
                if self._stopping or (task is not None and task.cancelling()):
                    raise
                self._session_failed(url, error)  # a gRPC call cancelled under us: not the agent's stop
            except Exception as error:  # aetcd's ClientError family, a timeout, a lost lease: next endpoint
                self._session_failed(url, error)
            finally:
                self._client = None
                try:
                    await asyncio.wait_for(client.close(), self.rpc_timeout)
                except (Exception, asyncio.CancelledError):
                    pass
            self._endpoint = (self._endpoint + 1) % len(self.urls)
            if self._endpoint == round_start:  # every endpoint failed once: wait a little, growing
                await asyncio.sleep(min(_RETRY_MAX, 0.1 * 2 ** min(self._failures, 4)))

    def _view_changed(self) -> None:
        self._save_soon()
        if self.on_view is not None:
            try:
                self.on_view()
            except Exception:
                log.exception("cluster: on_view failed")

    def _session_failed(self, url: str, error: BaseException) -> None:
        self.stats["session_failures"] += 1
        self._failures += 1
        what = f"{type(error).__name__}: {error}".strip().rstrip(":")
        if self.connected:
            log.warning("cluster: lost etcd at %s (%s); serving the %d cached assignment(s), trying the next endpoint",
                        url, what, len(self.assigned))
        else:
            log.debug("cluster: etcd at %s: %s", url, what)
        self._set(connected=False)
        if self._guard_task is None or self._guard_task.done():
            self._guard_task = asyncio.ensure_future(self._guard())

    # -- fencing (supervisor/fencing.py) ---------------------------------------------
    def peers(self) -> dict[str, str]:
        """The other live nodes of the view with an HTTP listener: name -> ``HOST:PORT``."""
        return {name: entry.record.http for name, entry in self.view.nodes.items()
                if name != self.name and entry.record.http}

    def departed_peers(self) -> dict[str, str]:
        """Nodes gone from etcd in the last ``DEPARTED_KEEP`` s that may still answer: name -> ``HOST:PORT``."""
        now = time.monotonic()
        for name in [name for name, (_, at) in self.departed.items() if now - at > DEPARTED_KEEP]:
            del self.departed[name]
        return {name: record.http for name, (record, _) in self.departed.items() if record.http}

    def _note_departures(self, before: dict[str, Entry]) -> None:
        now = time.monotonic()
        for name, entry in before.items():
            if name not in self.view.nodes and name != self.name:
                self.departed[name] = (entry.record, now)
        for name in self.view.nodes:
            self.departed.pop(name, None)

    async def _guard(self) -> None:
        """While etcd is out of reach: ask the peers whether it is for them too; fence on proof it is not."""
        while not self.connected and not self._stopping:
            peers = self.peers()
            reports = await ask_peers(peers, PROBE_TIMEOUT, self.stats) if peers else {}
            if self.connected or self._stopping:
                return
            witness = lease_gone(self.name, reports.values(), self.lease_ttl)
            if witness is None and self._cached_start:
                self._cached_start = False
                mine = self._mine()
                taken = claimed(mine, reports)  # moved while this node was away: another serves it now
                log.warning("cluster: etcd unreachable at start and no peer reaches it (%d of %d answered): node %s "
                            "serves %d assignment(s) of its cached view%s", len(reports), len(peers), self.name,
                            len(mine) - len(taken), f", not {len(taken)} another node serves" if taken else "")
                self._set(assigned={e: a for e, a in mine.items() if e not in taken})
            if witness is not None and self.fenced is None:
                self.stats["fenced"] += 1
                log.error("cluster: node %s is cut off from etcd, which node %s reaches: this node's lease is gone "
                          "and its %d extension(s) move elsewhere; it stops listening for them until etcd is back",
                          self.name, witness, len(self.assigned))
                self.lease_id = None  # gone in etcd: the next session grants a new one
                self._cached_start = False
                self._set(fenced=witness, term=None, assigned={})
                return  # nothing more to learn from the peers: the next session clears the fence
            await asyncio.sleep(PROBE_INTERVAL)

    async def _session(self, client: aetcd.Client) -> None:
        await self._ensure_lease(client)
        snapshot = await client.get_prefix(PREFIX.encode())
        before = dict(self.view.nodes)
        self.view.load(list(snapshot), snapshot.header.revision)
        self._note_departures(before)
        self.last_contact = time.monotonic()
        self._view_changed()
        watch = await client.watch_prefix(PREFIX.encode(), start_revision=self.view.revision + 1)
        self._failures = 0
        self.stats["sessions"] += 1
        if self._joined_at is None:
            self._joined_at = time.monotonic()
        self._check_leader()
        self._cached_start = False
        self._set(connected=True, fenced=None, assigned=self._mine())  # a reconnect's fresh read may have moved some
        if self.view.leader is None:
            await self._campaign(client)
        self._plan_soon()
        watching = asyncio.ensure_future(self._follow(watch))
        keepalive = asyncio.ensure_future(self._keepalive(client))
        try:
            done, _ = await asyncio.wait((watching, keepalive), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the failure that ended the session
            raise ConnectionError("the watch ended")
        finally:
            for task in (watching, keepalive):
                task.cancel()
            await asyncio.gather(watching, keepalive, return_exceptions=True)
            try:
                await asyncio.wait_for(watch.cancel(), self.rpc_timeout)
            except (Exception, asyncio.CancelledError):
                pass

    async def _ensure_lease(self, client: aetcd.Client) -> None:
        """Keep the lease this node has if it still lives, else grant a new one; (re)put the node key."""
        if self.lease_id is not None:
            reply = await client.refresh_lease(self.lease_id)
            if reply is None or reply.TTL <= 0:
                self._lease_lost()
        if self.lease_id is None:
            lease = await client.lease(self.lease_ttl)
            self.lease_id = lease.id
            log.info("cluster: node %s joined with a %d s lease (%x)", self.name, self.lease_ttl, lease.id)
        await client.put(key_for(NODES, self.name), encode_value(self.record), lease=self.lease_id)

    def _lease_lost(self) -> None:
        self.stats["leases_lost"] += 1
        log.warning("cluster: node %s's lease expired (etcd unreachable for %d s or more): it rejoins as new",
                    self.name, self.lease_ttl)
        self.lease_id = None
        self._set(term=None)

    async def _keepalive(self, client: aetcd.Client) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            assert self.lease_id is not None
            reply = await client.refresh_lease(self.lease_id)  # the client's timeout (rpc_timeout) bounds it
            if reply is None or reply.TTL <= 0:
                self._lease_lost()
                raise ConnectionError("lease expired")
            self.last_contact = time.monotonic()

    async def _follow(self, watch: Any) -> None:
        async for event in watch:
            self.last_contact = time.monotonic()
            pending = self._pending_confirmation(event)
            before = dict(self.view.nodes) if event.kind != "PUT" and event.kv.key.startswith(_NODES_PREFIX) else None
            family = self.view.apply(event.kind == "PUT", event.kv)
            if family is None:
                continue
            if family is NODES:
                self._note_departures(before or {})  # a put: nothing left, the node (back) in view
            self._view_changed()
            if family is LEADER:
                self._check_leader()
                if self.view.leader is None and not self._stopping:
                    task = asyncio.ensure_future(self._campaign_quietly())
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
            if family is PLACEMENT or family is EXTENSIONS:
                self._update_assigned()
            if not pending:
                self._plan_soon()

    def _pending_confirmation(self, event: Any) -> bool:
        """The watch's echo of a placement value this leader just wrote: nothing new to plan for."""
        try:
            family, extension_id = parse_key(event.kv.key)
        except ClusterValueError:
            return False
        entry = self.view.placement.get(extension_id) if family is PLACEMENT else None
        if entry is None or entry.mod_revision is not None or event.kind != "PUT":
            return False
        try:
            return decode_value(event.kv.key, event.kv.value) == entry.record
        except ClusterValueError:
            return False

    # -- the election ------------------------------------------------------------
    async def _campaign(self, client: aetcd.Client) -> None:
        """Create the leader key under this node's lease if nobody holds it; the watch reports who won."""
        tx = client.transactions
        won, _ = await client.transaction(
            compare=[tx.create(_LEADER_KEY) == 0],
            success=[tx.put(_LEADER_KEY, encode_value(LeaderRecord(name=self.name)), lease=self.lease_id)],
            failure=[])
        if won:
            self.stats["elections_won"] += 1

    async def _campaign_quietly(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            await self._campaign(client)
        except (aetcd.ClientError, OSError, TimeoutError) as error:
            log.debug("cluster: campaign failed: %s", error)  # the session's own calls will notice too

    def _check_leader(self) -> None:
        """This node leads while the leader key names it under its own lease; the key's create revision is the term."""
        leader = self.view.leader
        mine = leader is not None and leader.record.name == self.name and leader.lease == self.lease_id
        term = leader.create_revision if mine and leader is not None else None
        if term != self.term:
            if term is not None:
                log.info("cluster: node %s leads (term %d)", self.name, term)
            self._set(term=term)

    # -- placement (the leader) --------------------------------------------------
    def _plan_soon(self) -> None:
        if self.term is None:
            return
        if self._plan_task is not None and not self._plan_task.done():
            self._replan = True
            return
        self._plan_task = asyncio.ensure_future(self._plan_loop())

    async def _plan_loop(self) -> None:
        while True:
            self._replan = False
            client = self._client
            if client is None or self.term is None:
                return
            try:
                await self._write_plan(client, self.term)
            except (aetcd.ClientError, OSError, TimeoutError) as error:
                log.debug("cluster: placement write failed: %s", error)  # the next session plans again
                return
            if not self._replan:
                return

    async def _write_plan(self, client: aetcd.Client, term: int) -> None:
        view = self.view
        # The plan runs in a thread on copies: a first plan of 10 000 extensions over 20 nodes hashes
        # 200 000 pairs (~0.4 s), which the supervisor's loop must not wait for. Each write compares the
        # mod revision the plan started from, so a view that moved meanwhile writes nothing stale.
        entries = dict(view.placement)
        extensions = list(view.extensions)
        settling = (self._joined_at or 0.0) + self.settle - time.monotonic()
        if settling > 0 and any(extension_id not in entries for extension_id in extensions):
            extensions = [extension_id for extension_id in extensions if extension_id in entries]
            if self._settle_timer is None:
                self._settle_timer = asyncio.get_running_loop().call_later(settling, self._settled)
        plan = await asyncio.to_thread(
            plan_placement, extensions, list(view.nodes),
            {extension_id: entry.record for extension_id, entry in entries.items()},
            leader=self.name, rebalance=self.rebalance)
        if self.term != term:
            return
        changes: list[tuple[str, Assignment | None]] = [*plan.writes.items(), *((e, None) for e in plan.deletes)]
        # A key this node just wrote is settled by its own watch event (which plans again).
        changes = [(e, a) for e, a in changes if e not in entries or entries[e].mod_revision is not None]
        tx = client.transactions
        for batch in batches(range(len(changes)), TXN_BATCH):
            compare = [tx.create(_LEADER_KEY) == term]
            ops = []
            seen = {}
            for index in batch:
                extension_id, assignment = changes[index]
                key = key_for(PLACEMENT, extension_id)
                entry = seen[extension_id] = entries.get(extension_id)
                compare.append(tx.mod(key) == (entry.mod_revision if entry is not None else 0))
                ops.append(tx.delete(key) if assignment is None else tx.put(key, encode_value(assignment)))
            written, _ = await client.transaction(compare=compare, success=ops, failure=[])
            if not written:
                self.stats["placement_conflicts"] += 1
                leader = await client.get(_LEADER_KEY)
                if leader is None or leader.create_revision != term:
                    log.warning("cluster: node %s no longer leads (term %d): placement not written", self.name, term)
                    self._set(term=None)
                return  # else a newer value is on its way through the watch, which plans again
            self.stats["placement_writes"] += len(batch)
            for index in batch:  # the view holds what was written until the watch confirms it
                extension_id, assignment = changes[index]
                if view.placement.get(extension_id) is not seen[extension_id]:
                    continue  # the watch was quicker: the view already has the written value
                if assignment is None:
                    view.placement.pop(extension_id, None)
                else:
                    view.placement[extension_id] = Entry(assignment, None, 0, 0)
        if plan.moves:
            log.info("cluster: placement term %d: %s", term, ", ".join(
                f"{move.extension} {move.old or '-'} -> {move.new} (epoch {move.epoch})" for move in plan.moves[:20])
                + (f" and {len(plan.moves) - 20} more" if len(plan.moves) > 20 else ""))

    def _settled(self) -> None:
        self._settle_timer = None
        self._plan_soon()

    # -- what this node serves ---------------------------------------------------
    def _mine(self) -> dict[str, Assignment]:
        return {extension_id: entry.record for extension_id, entry in self.view.placement.items()
                if entry.record.node == self.name and extension_id in self.view.extensions}

    def _update_assigned(self) -> None:
        self._set(assigned=self._mine())

    def definition(self, extension_id: str) -> ExtensionRecord | None:
        """The extension's definition as last seen in etcd (kept while etcd is unreachable)."""
        entry = self.view.extensions.get(extension_id)
        return entry.record if entry is not None else None

    _UNSET: Any = object()

    def _set(self, *, connected: Any = _UNSET, term: Any = _UNSET, assigned: Any = _UNSET,
             fenced: Any = _UNSET) -> None:
        before = (self.connected, self.term, self.assigned, self.fenced)
        if connected is not self._UNSET:
            self.connected = connected
        if term is not self._UNSET:
            self.term = term
        if assigned is not self._UNSET:
            self.assigned = assigned
        if fenced is not self._UNSET:
            self.fenced = fenced
        if (self.connected, self.term, self.assigned, self.fenced) != before:
            self.changed.set()
            if self.on_change is not None:
                try:
                    self.on_change(self)
                except Exception:
                    log.exception("cluster: on_change failed")


# -- extension definitions (what `ctl add-extension` / `remove-extension` will call in cluster mode) --
def _port_claims(record: ExtensionRecord) -> list[tuple[bytes, bytes]]:
    return [(key_for(PORTS, str(port)), encode_value(PortRecord(extension=record.id, leg=leg)))
            for leg, port in (("ia", record.ia_port), ("retorno", record.retorno_port))]


async def define_extension(client: aetcd.Client, record: ExtensionRecord) -> str | None:
    """Add ``record`` with its two ports claimed, in one transaction: None when written, else why not
    (the id exists, or a port is another extension's). Any node may call it at the same time as
    another: etcd orders the transactions, and the second finds the first's keys."""
    if record.ia_port == record.retorno_port:
        return f"ia_port and retorno_port are both {record.ia_port}"
    tx = client.transactions
    extension_key = key_for(EXTENSIONS, record.id)
    claims = _port_claims(record)
    written, responses = await client.transaction(
        compare=[tx.create(extension_key) == 0, *(tx.create(key) == 0 for key, _ in claims)],
        success=[tx.put(extension_key, encode_value(record)), *(tx.put(key, value) for key, value in claims)],
        failure=[tx.get(extension_key), *(tx.get(key) for key, _ in claims)])
    if written:
        return None
    found = [items[0] if items else None for items in responses]  # (value, meta) per get, or None
    if found[0] is not None:
        return f"extension {record.id} already exists"
    for (key, _), item in zip(claims, found[1:]):
        if item is not None:
            try:
                holder = decode_value(key, item[0])
                return f"port {key.rsplit(b'/', 1)[1].decode()} is used by extension {holder.extension} ({holder.leg})"
            except ClusterValueError:
                return f"port {key.rsplit(b'/', 1)[1].decode()} is taken (unreadable claim)"
    return "changed meanwhile; try again"


async def undefine_extension(client: aetcd.Client, extension_id: str, removal: Removal | None = None,
                             lease: int | None = None) -> bool:
    """Remove an extension's definition and free its ports in one transaction (the leader then deletes
    its placement; its node stops it). False when it did not exist. ``removal`` (under ``lease``, the
    removing node's) is written in the same transaction, before the delete: the serving node sees the
    drain asked for in the same watch revision as the removal."""
    extension_key = key_for(EXTENSIONS, extension_id)
    drain = ([client.transactions.put(key_for(REMOVALS, extension_id), encode_value(removal), lease=lease)]
             if removal is not None else [])
    for _attempt in range(5):
        current = await client.get(extension_key)
        if current is None:
            return False
        record = decode_value(extension_key, current.value)
        tx = client.transactions
        claims = [key for key, _ in _port_claims(record)]
        removed, _ = await client.transaction(
            compare=[tx.mod(extension_key) == current.mod_revision],
            success=[*drain, tx.delete(extension_key), *(tx.delete(key) for key in claims)], failure=[])
        if removed:
            return True
    raise ConnectionError(f"extension {extension_id} kept changing during its removal")


# -- from the config (what Supervisor will call when [cluster] is set) ------------------
def node_record(config: Config, started: float) -> NodeRecord:
    """This node as the others see it: ``[cluster]`` name and advertise address, and its HTTP
    listener (``supervisor.metrics``; an every-interface bind is reached at the advertise address)."""
    cluster, supervisor = config.cluster, config.supervisor
    if cluster.etcd is None or cluster.name is None or cluster.advertise is None:
        raise ValueError("no [cluster] etcd in this config")
    http = ""
    if supervisor.metrics_port:
        host = supervisor.metrics_host
        if ipaddress.ip_address(host).is_unspecified:
            host = cluster.advertise
        http = f"[{host}]:{supervisor.metrics_port}" if ":" in host else f"{host}:{supervisor.metrics_port}"
    return NodeRecord(name=cluster.name, advertise=cluster.advertise, http=http, version=audiogw_version(),
                      started=started)


def agent_for(config: Config, started: float, on_change: Callable[[NodeAgent], None] | None = None) -> NodeAgent:
    """The node agent ``[cluster]`` describes (not started: ``agent.start()`` on the supervisor's loop)."""
    assert config.cluster.etcd is not None
    return NodeAgent(node_record(config, started), config.cluster.etcd, config.cluster.lease_ttl, on_change=on_change,
                     cache_path=os.path.join(config.supervisor.state_dir, cluster_cache.CACHE_FILE))

"""Control commands in ``[cluster]`` mode (#15): ``add-extension``, ``remove-extension``, ``list``,
``status``, ``restart-extension`` and ``dialplan --cluster`` against any node change or read the
cluster (etcd), not this node alone.

``supervisor/commands.py``'s handlers call these when ``supervisor.cluster`` is set (imported then
only: aetcd stays out of single-host mode). Every etcd operation runs through
``NodeAgent.call`` (this node's current session, bounded by the command's wait); no session in
time is a :class:`CommandRefused` with the reason (``EtcdUnavailable``).

- ``add-extension`` answers with the serving node's outcome, wherever placement puts it: this
  node's worker, or the serving node's ``/audiogw/status/ID`` (supervisor/cluster_status.py); a
  failure there undefines the extension, as a local failure does.
- ``list`` shows each remote extension's state, pid and reason from its status key.
- ``status ID`` and ``restart-extension ID`` (the ``remote`` commands of shared/commands.py) are
  carried to the serving node through etcd (:class:`RemoteCommands`): a request under this node's
  lease, a reply under the serving node's; ``status`` without ID answers for this node's own
  extensions (each row names its ``host``).
- ``remove-extension`` writes the drain asked for (``/audiogw/removals/ID``) in the same
  transaction as the definition's delete; the serving node drains that long.
- ``reset`` is refused: it is about the config file's definitions, which cluster mode does not serve.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import msgspec

from audiogw.shared.apps import AppOptionError, parse_app_options
from audiogw.shared.cluster_keys import (
    REMOVALS, REPLIES, REQUEST_ID_PATTERN, REQUESTS, CommandReply, CommandRequest, ExtensionRecord, Family, Removal, encode_value, key_for,
    request_key,
)
from audiogw.shared.commands import (
    ADD_EXTENSION, DECLARATIONS, REMOTE_COMMANDS, RESTART_EXTENSION, STATUS, ArgumentInvalid, CommandSpec,
)
from audiogw.shared.config import ConfigError, ExtensionConfig, allocate_ports
from audiogw.supervisor.cluster import Entry, EtcdUnavailable, define_extension, undefine_extension
from audiogw.supervisor.cluster_dialplan import cluster_dialplan_for
from audiogw.supervisor.commands import CommandRefused, _outcome, explicit_ports, restart_here, status_here
from audiogw.supervisor.log_once import FirstSeen

if TYPE_CHECKING:
    from audiogw.supervisor.daemon import Supervisor

log = logging.getLogger("audiogw.supervisor.cluster")

ETCD_WAIT = 5.0  # seconds a command without a declared wait gives etcd (remove-extension, list)
STATUS_WAIT = 3.0  # seconds `status ID` waits for another node's reply (ctl waits 5 s by default)
ASK_MARGIN = 1.0  # seconds of a remote command's wait kept for the etcd round trips (request, reply)
PLACED_POLL = 0.02
SEEN_WAIT = 1.0  # seconds a reply waits for this node's watch to bring its own write (milliseconds, normally)
GONE_POLL = 0.2  # seconds between two looks whether the asked node is still alive
REMOVAL_KEEP = 30.0  # seconds a removal's record stays at most (the serving node reads it at once)
MAX_SERVED = 64  # requests this node runs for others at once; more are refused (busy)
FAILED_STATES = frozenset({"backoff", "failed", "fatal"})  # a start that went wrong (with its reason)


def _placed_node(supervisor: "Supervisor", extension_id: str) -> str | None:
    placed = supervisor.cluster.agent.view.placement.get(extension_id)
    return placed.record.node if placed is not None else None


def _remote_status(supervisor: "Supervisor", extension_id: str) -> Entry | None:
    """The serving node's status of the extension, if it is about the placement and definition now in view."""
    view = supervisor.cluster.agent.view
    entry, placed, defined = (view.status.get(extension_id), view.placement.get(extension_id),
                              view.extensions.get(extension_id))
    if entry is None or placed is None or defined is None:
        return None
    status = entry.record
    if (status.node, status.epoch) != (placed.record.node, placed.record.epoch):
        return None  # an earlier node's, still leased (it stops) or a newer placement not served yet
    if status.defined and status.defined != defined.create_revision:
        return None  # an earlier extension of the same id
    return entry


def _row(supervisor: "Supervisor", extension_id: str) -> dict[str, Any] | None:
    """An extension as the cluster knows it, with the node that serves it (``host``: its name)."""
    cluster = supervisor.cluster
    view = cluster.agent.view
    defined = view.extensions.get(extension_id)
    if defined is None:
        return None
    record = defined.record
    node = _placed_node(supervisor, extension_id)
    runtime = supervisor.extensions.get(extension_id) if node == cluster.name else None
    status = _remote_status(supervisor, extension_id)
    if runtime is not None:
        state, pid, reason = runtime.state, runtime.pid, runtime.reason
    elif node is not None and node in view.nodes and status is not None:
        state, pid, reason = status.record.state, status.record.pid, status.record.reason  # the serving node's word
    elif node is not None and node in view.nodes:
        state, pid, reason = "placed", None, None  # its node has not said how it is doing yet
    else:
        state, pid, reason = "unplaced", None, ("its node is gone; waiting for placement" if node else None)
    return {"id": record.id, "ia_port": record.ia_port, "retorno_port": record.retorno_port, "app": record.app,
            "options": dict(record.options), "state": state, "pid": pid, "source": "cluster", "reason": reason,
            "host": node}


async def _call(supervisor: "Supervisor", operation, timeout: float):
    try:
        return await supervisor.cluster.agent.call(operation, timeout)
    except EtcdUnavailable as error:
        raise CommandRefused(str(error)) from None


async def add_extension(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    """Define the extension in etcd with two ports unique in the cluster, then answer with the serving
    node's outcome (this node's worker, or another node's status key), or say why not in time."""
    assert ADD_EXTENSION.server_wait is not None
    deadline = time.monotonic() + ADD_EXTENSION.server_wait
    cluster, config = supervisor.cluster, supervisor.config
    extension_id = args["id"]
    app = args.get("app", config.defaults.app)
    options = {**config.defaults.options, **args.get("options", {})}
    try:
        parse_app_options(app, options, config.base_dir)
    except AppOptionError as error:
        raise CommandRefused(str(error)) from None
    used = {int(port) for port in cluster.agent.view.ports}
    if config.supervisor.metrics_port:
        used.add(config.supervisor.metrics_port)
    for name in ("ia_port", "retorno_port"):
        if args.get(name) == config.supervisor.metrics_port:
            raise CommandRefused(f"port {args[name]} is the metrics server's")
    for _attempt in range(20):
        ports = dict(args)
        wanted = [name for name in ("ia_port", "retorno_port") if name not in args]
        if wanted:
            try:
                ports.update(zip(wanted, allocate_ports(config.audiosocket.port_range,
                                                        used | explicit_ports(args), len(wanted))))
            except ConfigError as error:
                raise CommandRefused(error.reason) from None
        try:
            ExtensionConfig.from_dict({"id": extension_id, "ia_port": ports["ia_port"],
                                       "retorno_port": ports["retorno_port"], "app": app, "options": options},
                                      base_dir=config.base_dir)
        except ConfigError as error:
            raise CommandRefused(f"{error.key}: {error.reason}") from None
        record = ExtensionRecord(id=extension_id, ia_port=ports["ia_port"], retorno_port=ports["retorno_port"],
                                 app=app, options=options)
        reason = await _call(supervisor, lambda client: define_extension(client, record),
                             max(0.1, deadline - time.monotonic()))
        if reason is None:
            break
        taken = reason.split()[1] if reason.startswith("port ") else None
        if not wanted or taken is None or not taken.isdigit() or int(taken) in explicit_ports(args):
            raise CommandRefused(f"extension {extension_id} not added: {reason}")
        used.update(ports[name] for name in wanted)  # another node took that port meanwhile: the next ones
    else:
        raise CommandRefused("no two free ports found in the configured range")
    failure = await _served(supervisor, extension_id, deadline)
    row = _row(supervisor, extension_id)
    if failure is not None or row is None:
        # As on one host: an add that does not serve leaves nothing behind (its definition and ports go).
        try:
            await supervisor.cluster.agent.call(lambda client: undefine_extension(client, extension_id), ETCD_WAIT)
        except EtcdUnavailable as error:
            raise CommandRefused(f"extension {extension_id} failed: {failure}; and it is still defined in the "
                                 f"cluster ({error}): remove-extension {extension_id}") from None
        await _seen_gone(supervisor, extension_id)
        raise CommandRefused(f"extension {extension_id} failed: {failure or 'removed meanwhile'}; not added")
    return row


async def _seen_gone(supervisor: "Supervisor", extension_id: str) -> None:
    """Wait (at most ``SEEN_WAIT`` s) until this node's view has the definition's delete, so that a
    ``list`` asked of this node after the reply no longer shows it (the others see it a watch later)."""
    deadline = time.monotonic() + SEEN_WAIT
    while extension_id in supervisor.cluster.agent.view.extensions and time.monotonic() < deadline:
        await asyncio.sleep(PLACED_POLL)


async def _served(supervisor: "Supervisor", extension_id: str, deadline: float) -> str | None:
    """None once the extension serves (here: its worker's outcome; on another node: its status key
    says running), else why not: the serving node's failure, or that no answer came in time."""
    cluster = supervisor.cluster
    while True:
        cluster.status_seen.clear()  # before the look: a status arriving after it wakes the wait below
        view = cluster.agent.view
        placed = view.placement.get(extension_id)
        if placed is not None and placed.record.node in view.nodes:
            node = placed.record.node
            if node == cluster.name:
                runtime = supervisor.extensions.get(extension_id)
                if runtime is not None:
                    return await _outcome(runtime, deadline)
                if extension_id in cluster.status.refusals:
                    return f"node {node} cannot serve it: {cluster.status.refusals[extension_id]}"
            elif (entry := _remote_status(supervisor, extension_id)) is not None:
                status = entry.record
                if status.failure is not None or status.state in FAILED_STATES:
                    return f"on node {node}: {status.failure or status.reason or 'state ' + status.state}"
                if status.state == "running":
                    return None
        if time.monotonic() >= deadline:
            if placed is None or placed.record.node not in view.nodes:
                return "is not placed on a live node in time"
            entry = _remote_status(supervisor, extension_id)
            said = f"it says {entry.record.state}" if entry is not None else "it has not said how it is doing"
            return f"not serving in time on node {placed.record.node} ({said})"
        try:
            await asyncio.wait_for(cluster.status_seen.wait(), PLACED_POLL)
        except TimeoutError:
            pass


async def remove_extension(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    """Remove the definition (and free its ports) in etcd, with the drain asked for in the same
    transaction; the serving node stops it as it sees the removal (its listeners close at once, its
    calls drain for ``drain`` s)."""
    extension_id = args["id"]
    agent = supervisor.cluster.agent
    node = _placed_node(supervisor, extension_id)
    # No record for an extension nobody serves: nobody would take it (or delete it).
    removal = Removal(drain=args["drain"]) if node is not None and node in agent.view.nodes else None
    removed = await _call(supervisor, lambda client: undefine_extension(client, extension_id, removal,
                                                                        agent.lease_id), ETCD_WAIT)
    if not removed:
        raise CommandRefused(f"unknown extension {extension_id}")
    if removal is not None:  # the serving node deletes it once it has read it; this is the backstop
        supervisor.cluster.remote.in_background(_forget_removal_later(agent, extension_id, removal))
    await _seen_gone(supervisor, extension_id)
    return {"id": extension_id, "drain": args["drain"]}


async def _forget_removal_later(agent, extension_id: str, removal: Removal) -> None:
    """The serving node reads a removal's record as it sees the definition go (the same watch revision);
    one it could not read (it died meanwhile) goes after ``REMOVAL_KEEP`` s."""
    await asyncio.sleep(REMOVAL_KEEP)
    await forget_removal(agent, extension_id, removal)


async def list_extensions(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    """Every extension of the cluster (as this node last saw etcd), each with its ``host``."""
    view = supervisor.cluster.agent.view
    return [row for extension_id in sorted(view.extensions) if (row := _row(supervisor, extension_id)) is not None]


async def dialplan(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    """``ctl dialplan ID --cluster``: the CURL() + channel-driver variant over every live node."""
    row = _row(supervisor, args["id"])
    if row is None:
        raise CommandRefused(f"unknown extension {args['id']}")
    view = supervisor.cluster.agent.view
    nodes = [entry.record.http for _name, entry in sorted(view.nodes.items()) if entry.record.http]
    if not nodes:
        raise CommandRefused("no live node has an HTTP listener (supervisor.metrics) to ask /route/ID")
    return {"text": cluster_dialplan_for(args["id"], row["app"], row["ia_port"], row["retorno_port"], nodes)}


async def reset(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    raise CommandRefused(f"reset {args['id']}: cluster mode serves etcd's definitions, not the config file's, "
                         "so there is no runtime change to drop; use remove-extension / add-extension")


async def forget_removal(agent, extension_id: str, removal: Removal) -> None:
    """The serving node has taken the drain of a removal: its record goes (unless another one replaced it)."""
    key = key_for(REMOVALS, extension_id)

    async def delete(client):
        tx = client.transactions
        return await client.transaction(compare=[tx.value(key) == encode_value(removal)],
                                        success=[tx.delete(key)], failure=[])
    try:
        await agent.call(delete, ETCD_WAIT)
    except EtcdUnavailable as error:  # it goes with the removing node's lease at the latest
        log.debug("cluster: removal record of %s not deleted: %s", extension_id, error)


# -- the commands carried to the serving node ---------------------------------------------
def _serving_node(supervisor: "Supervisor", extension_id: str) -> str:
    """The node to run a command on ``extension_id`` (this node's name when it runs it), or why none."""
    cluster = supervisor.cluster
    if extension_id in supervisor.extensions:
        return cluster.name
    view = cluster.agent.view
    if extension_id not in view.extensions:
        raise CommandRefused(f"unknown extension {extension_id}")
    node = _placed_node(supervisor, extension_id)
    if node is None or node not in view.nodes:
        raise CommandRefused(f"extension {extension_id} is not served by a live node yet (waiting for placement)")
    return node


async def status(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    """``status ID`` from the node that serves ID, wherever it is; without ID this node's own rows."""
    deadline = time.monotonic() + STATUS_WAIT
    if "id" in args and (node := _serving_node(supervisor, args["id"])) != supervisor.cluster.name:
        return await supervisor.cluster.remote.ask(node, STATUS, {"id": args["id"]}, deadline)
    return await _status_here(supervisor, args, deadline)


async def restart_extension(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    """Restart ID on the node that serves it; answers with that node's outcome."""
    assert RESTART_EXTENSION.server_wait is not None
    deadline = time.monotonic() + RESTART_EXTENSION.server_wait
    node = _serving_node(supervisor, args["id"])
    if node != supervisor.cluster.name:
        return await supervisor.cluster.remote.ask(node, RESTART_EXTENSION, {"id": args["id"]}, deadline)
    return await _restart_here(supervisor, args, deadline)


def _here(supervisor: "Supervisor", extension_id: str) -> None:
    if extension_id not in supervisor.extensions:
        refused = supervisor.cluster.status.refusals.get(extension_id)
        raise CommandRefused(f"extension {extension_id} is not running on node {supervisor.cluster.name}"
                             + (f": {refused}" if refused else ""))


async def _status_here(supervisor: "Supervisor", args: dict[str, Any], deadline: float) -> Any:
    if "id" in args:
        _here(supervisor, args["id"])
    return [{**row, "host": supervisor.cluster.name} for row in await status_here(supervisor, args)]


async def _restart_here(supervisor: "Supervisor", args: dict[str, Any], deadline: float) -> Any:
    _here(supervisor, args["id"])
    return {**await restart_here(supervisor, args["id"], deadline), "host": supervisor.cluster.name}


LocalHandler = Callable[["Supervisor", dict[str, Any], float], Awaitable[Any]]
# What a node runs for a request another node carried to it (args validated, its deadline).
HERE: dict[str, LocalHandler] = {STATUS.name: _status_here, RESTART_EXTENSION.name: _restart_here}
if set(HERE) != REMOTE_COMMANDS:
    raise RuntimeError(f"remote commands out of step: declared {sorted(REMOTE_COMMANDS)}, run here {sorted(HERE)}")


def check_reply(spec: CommandSpec, node: str, reply: CommandReply) -> Any:
    """The result a reply carries, checked against the command's declared result type; CommandRefused
    with the serving node's refusal, or with what is wrong with the reply (external input)."""
    if reply.node != node:
        raise CommandRefused(f"refused the reply to {spec.name}: it names node {reply.node!r}, the request "
                             f"went to {node!r}")
    if not reply.ok:
        raise CommandRefused(f"node {node}: {reply.error}")
    try:
        msgspec.convert(reply.result, spec.result)
    except msgspec.ValidationError as error:
        raise CommandRefused(f"refused node {node}'s reply to {spec.name}: {error}") from None
    return reply.result


class RemoteCommands:
    """Both ends of a command carried through etcd: this node asks (:meth:`ask`) and waits for the
    reply in its view; it runs the requests addressed to it (:meth:`seen`, the view's ``on_side``)
    and writes their replies under its lease. Bad requests or replies are refused with a reason,
    logged (once per key) and counted; nothing here takes the supervisor down."""

    def __init__(self, supervisor: "Supervisor") -> None:
        self.supervisor = supervisor
        self.stats: Counter[str] = Counter()
        self._pending: dict[str, asyncio.Future[CommandReply]] = {}
        self._served: set[str] = set()  # request items ("NODE/REQID") run or running here
        self._tasks: set[asyncio.Task] = set()
        self._first = FirstSeen()  # where a refusal was: logged once
        self._stopping = False

    @property
    def agent(self):
        return self.supervisor.cluster.agent

    async def stop(self) -> None:
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- asking --------------------------------------------------------------------------
    async def ask(self, node: str, spec: CommandSpec, args: dict[str, Any], deadline: float) -> Any:
        """Run ``spec`` on ``node`` with ``args``; its result, or CommandRefused with its reason (or ours)."""
        agent = self.agent
        wait = deadline - time.monotonic() - ASK_MARGIN
        if wait <= 0:
            raise CommandRefused(f"no time left to ask node {node}")
        request_id = uuid.uuid4().hex
        request = CommandRequest(asker=agent.name, command=spec.name, wait=round(wait, 3), args=args)
        future: asyncio.Future[CommandReply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        key = request_key(node, request_id)
        try:
            await _call(self.supervisor, lambda client: client.put(key, encode_value(request), lease=agent.lease_id),
                        max(0.1, deadline - time.monotonic()))
            self.stats["requests_sent"] += 1
            while not future.done():
                if time.monotonic() >= deadline:
                    raise CommandRefused(f"node {node} did not answer {spec.name} within {wait + ASK_MARGIN:.1f} s")
                if node not in agent.view.nodes:
                    raise CommandRefused(f"node {node} left the cluster before it answered {spec.name}")
                await asyncio.wait([future], timeout=min(GONE_POLL, max(0.0, deadline - time.monotonic())))
            reply = future.result()  # raises the refusal of a bad reply value (refused())
            try:
                return check_reply(spec, node, reply)
            except CommandRefused as error:
                if reply.node != node or reply.ok:  # the reply itself is wrong, not the command refused
                    self._refuse("replies_refused", key.decode(), str(error))
                raise
        finally:
            self._pending.pop(request_id, None)
            self.in_background(self._forget(key, request_id))

    async def _forget(self, key: bytes, request_id: str) -> None:
        """Delete the request and its reply (the replying node deletes its reply too once the request goes)."""
        async def delete(client):
            tx = client.transactions
            return await client.transaction(compare=[], failure=[],
                                            success=[tx.delete(key), tx.delete(key_for(REPLIES, request_id))])
        try:
            await self.agent.call(delete, ETCD_WAIT)
        except EtcdUnavailable as error:  # it goes with this node's lease at the latest
            log.debug("cluster: request %s not deleted: %s", request_id, error)

    def refused(self, family: Family, item: str, reason: str) -> None:
        """A request or reply value the view refused (the view logged and counted it): a reply this node
        waits for fails the command with the reason; a request to this node is answered with it."""
        if family is REPLIES and (future := self._pending.get(item)) is not None and not future.done():
            self._refuse("replies_refused", item, reason)
            future.set_exception(CommandRefused(f"refused the reply: {reason}"))
        elif (family is REQUESTS and item.split("/")[0] == self.agent.name and item not in self._served
              and REQUEST_ID_PATTERN.match(item.split("/")[1])):
            self._refuse("requests_refused", item, reason)
            self._served.add(item)
            self.in_background(self._reply(item, CommandReply(node=self.agent.name, ok=False,
                                                                error=f"bad request: {reason}"), known=False))

    # -- answering -------------------------------------------------------------------------
    def seen(self, family: Family, item: str, entry: Entry | None) -> None:
        """A request or a reply changed in the view (on the loop, synchronous: only note and schedule)."""
        if family is REPLIES:
            future = self._pending.get(item)
            if entry is not None and future is not None and not future.done():
                future.set_result(entry.record)
            return
        if family is not REQUESTS:
            return
        node, request_id = item.split("/")
        if node != self.agent.name:
            return
        if entry is None:  # asked and answered, or the asker gave up (or died): its reply goes too
            self._served.discard(item)
            reply = self.agent.view.replies.get(request_id)
            if reply is not None and reply.record.node == self.agent.name:
                self.in_background(self._delete_reply(request_id))
            return
        if item in self._served or self._stopping:
            return
        self._served.intersection_update(self.agent.view.requests)  # those deleted while etcd was away
        self._served.add(item)
        if sum(1 for task in self._tasks if task.get_name().startswith("request-")) >= MAX_SERVED:
            self._refuse("requests_refused", item, f"node {self.agent.name} is busy ({MAX_SERVED} requests at once)")
            self.in_background(self._reply(item, CommandReply(node=self.agent.name, ok=False, error=(
                f"node {self.agent.name} is busy with {MAX_SERVED} requests; try again"))))
            return
        self.in_background(self._serve(item, entry.record), name=f"request-{request_id}")

    async def _serve(self, item: str, request: CommandRequest) -> None:
        supervisor = self.supervisor
        deadline = time.monotonic() + request.wait
        spec = DECLARATIONS[request.command]
        try:
            args = spec.parse(request.args, supervisor.config)
            if "id" not in args:
                raise ArgumentInvalid(f"{spec.name}: a request from another node names an extension id")
        except ArgumentInvalid as error:
            self._refuse("requests_refused", item, f"from node {request.asker}: {error.reason}")
            reply = CommandReply(node=self.agent.name, ok=False, error=f"bad request: {error.reason}")
        else:
            try:
                result = await HERE[spec.name](supervisor, args, deadline)
                reply = CommandReply(node=self.agent.name, ok=True, result=result)
                self.stats["requests_served"] += 1
            except CommandRefused as error:
                reply = CommandReply(node=self.agent.name, ok=False, error=str(error))
                self.stats["requests_served"] += 1
            except Exception as error:
                log.exception("cluster: request %s (%s) from node %s failed", item, spec.name, request.asker)
                reply = CommandReply(node=self.agent.name, ok=False, error=f"failed on node {self.agent.name}: "
                                     f"{type(error).__name__}: {error}")
        await self._reply(item, reply)

    async def _reply(self, item: str, reply: CommandReply, known: bool = True) -> None:
        """Write the reply under this node's lease, if the request is still there (``known``: in the view;
        a refused request value never is)."""
        agent = self.agent
        request_id = item.split("/")[1]
        if known and item not in agent.view.requests:
            return  # the asker gave up meanwhile
        try:
            await agent.call(lambda client: client.put(key_for(REPLIES, request_id), encode_value(reply),
                                                       lease=agent.lease_id), ETCD_WAIT)
        except EtcdUnavailable as error:
            log.warning("cluster: reply to request %s not written: %s", item, error)
            return
        if known and item not in agent.view.requests:  # gone while we wrote: nobody deletes the reply but us
            await self._delete_reply(request_id)

    async def _delete_reply(self, request_id: str) -> None:
        try:
            await self.agent.call(lambda client: client.delete(key_for(REPLIES, request_id)), ETCD_WAIT)
        except EtcdUnavailable as error:
            log.debug("cluster: reply %s not deleted: %s", request_id, error)

    def _refuse(self, counter: str, where: str, reason: str) -> None:
        self.stats[counter] += 1
        self.supervisor.cluster.counters_changed()
        if self._first(where):
            log.warning("cluster: refused %s: %s", where, reason)

    def in_background(self, work, name: str | None = None) -> None:
        """Run ``work`` as a task kept until it ends (cancelled at stop)."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

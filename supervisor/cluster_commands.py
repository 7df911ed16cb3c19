"""Control commands in ``[cluster]`` mode (#15): ``add-extension``, ``remove-extension``, ``list`` and
``dialplan --cluster`` against any node change or read the cluster (etcd), not this node alone.

``supervisor/commands.py``'s handlers call these when ``supervisor.cluster`` is set (imported then
only: aetcd stays out of single-host mode). Every etcd operation runs through
``NodeAgent.call`` (this node's current session, bounded by the command's wait); no session in
time is a :class:`CommandRefused` with the reason (``EtcdUnavailable``).
"""
from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from audiogw.shared.apps import AppOptionError, parse_app_options
from audiogw.shared.cluster_keys import ExtensionRecord
from audiogw.shared.commands import ADD_EXTENSION, REMOVE_EXTENSION
from audiogw.shared.config import ConfigError, ExtensionConfig, allocate_ports
from audiogw.supervisor.cluster import EtcdUnavailable, define_extension, undefine_extension
from audiogw.supervisor.cluster_dialplan import cluster_dialplan_for
from audiogw.supervisor.commands import CommandRefused, _outcome, explicit_ports

if TYPE_CHECKING:
    from audiogw.supervisor.daemon import Supervisor

ETCD_WAIT = 5.0  # seconds a command without a declared wait gives etcd (remove-extension, list)
PLACED_POLL = 0.02


def _row(supervisor: "Supervisor", extension_id: str) -> dict[str, Any] | None:
    """An extension as the cluster knows it, with the node that serves it (``host``: its name)."""
    cluster = supervisor.cluster
    view = cluster.agent.view
    defined = view.extensions.get(extension_id)
    if defined is None:
        return None
    record = defined.record
    placed = view.placement.get(extension_id)
    node = placed.record.node if placed is not None else None
    runtime = supervisor.extensions.get(extension_id) if node == cluster.name else None
    if runtime is not None:
        state, pid, reason = runtime.state, runtime.pid, runtime.reason
    elif node is not None and node in view.nodes:
        state, pid, reason = "placed", None, None  # served by another node: its own ctl list has the details
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
    """Define the extension in etcd with two ports unique in the cluster, then answer once it serves
    (here: its worker's outcome) or is placed on another live node, or say why not in time."""
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
        raise CommandRefused(f"extension {extension_id} failed: {failure or 'removed meanwhile'}; not added")
    return row


async def _served(supervisor: "Supervisor", extension_id: str, deadline: float) -> str | None:
    """None once the extension is placed on a live node (and, when that is this node, its worker serves)."""
    cluster = supervisor.cluster
    while True:
        view = cluster.agent.view
        placed = view.placement.get(extension_id)
        if placed is not None and placed.record.node in view.nodes:
            if placed.record.node != cluster.name:
                return None
            runtime = supervisor.extensions.get(extension_id)
            if runtime is not None:
                return await _outcome(runtime, deadline)
        if time.monotonic() >= deadline:
            return "is not placed on a live node in time"
        await asyncio.sleep(PLACED_POLL)


async def remove_extension(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    """Remove the definition (and free its ports) in etcd; the serving node stops it as it sees the
    removal (its listeners close at once, its calls drain for that node's supervisor.drain_seconds)."""
    extension_id = args["id"]
    removed = await _call(supervisor, lambda client: undefine_extension(client, extension_id), ETCD_WAIT)
    if not removed:
        raise CommandRefused(f"unknown extension {extension_id}")
    return {"id": extension_id, "drain": args["drain"]}


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

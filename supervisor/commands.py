"""Control commands: one small async handler each, paired with its declaration.

What a command takes and answers is declared once in ``shared/commands.py``
(ctl builds its CLI from the same declarations); ``HANDLERS`` pairs each
declaration with its handler, and ``COMMANDS`` (by name) is what the control
server dispatches through (:func:`dispatch`). Arguments reach a handler already
validated, with config defaults filled in.

A handler raises :class:`CommandRefused` with a reason for a person; it never
returns an error value. Commands on one extension hold that extension's lock;
there is no global lock, so a slow drain never blocks ``list`` or ``status``.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from audiogw.shared.commands import (
    ADD_EXTENSION,
    DECLARATIONS,
    DIALPLAN,
    LIST,
    RELOAD,
    REMOVE_EXTENSION,
    RESET,
    RESTART_EXTENSION,
    STATUS,
    STOP,
    ArgumentInvalid,
    CommandSpec,
)
from audiogw.shared.config import ConfigError, ExtensionConfig, allocate_ports
from audiogw.shared.stats_schema import status_figures
from audiogw.supervisor.dialplan import dialplan_for
from audiogw.supervisor.extension import PortInUse
from audiogw.supervisor.limits import fd_shortage
from audiogw.supervisor.state import SOURCE_RUNTIME
from audiogw.shared.apps import AppOptionError, parse_app_options

if TYPE_CHECKING:
    from audiogw.supervisor.daemon import Supervisor
    from audiogw.supervisor.extension import ExtensionRuntime


class CommandRefused(Exception):
    """The request is understood but refused (unknown extension, port in use, ...)."""


Handler = Callable[["Supervisor", dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Command:
    """A declaration paired with the handler that carries it out."""

    spec: CommandSpec
    handler: Handler


def parse_args(command_name: str, command: Command, raw: Any, config: Any = None) -> dict[str, Any]:
    """The request's args checked by the command's declared validators (the same ones ctl runs)."""
    try:
        return command.spec.parse(raw, config)
    except ArgumentInvalid as error:
        raise CommandRefused(error.reason) from None


async def dispatch(supervisor: "Supervisor", name: Any, raw_args: Any) -> Any:
    """Run one control request: find the command, validate its args, call its handler."""
    command = COMMANDS.get(name) if isinstance(name, str) else None
    if command is None:
        raise CommandRefused(f"unknown command {name!r} (known: {', '.join(sorted(COMMANDS))})")
    return await command.handler(supervisor, parse_args(name, command, raw_args, supervisor.config))


def _runtime(supervisor: "Supervisor", extension_id: str) -> "ExtensionRuntime":
    runtime = supervisor.extensions.get(extension_id)
    if runtime is None:
        raise CommandRefused(f"unknown extension {extension_id}")
    return runtime


async def _outcome(runtime: "ExtensionRuntime", deadline: float) -> str | None:
    """None once the worker started for this request serves, else why it does not.

    ``deadline`` (monotonic) comes from the command's ``server_wait``, which is
    shorter than ctl's own timeout by construction: the reply is always the
    supervisor's truth, never ctl's "no reply".
    """
    outcome = runtime.outcome
    if outcome is None:
        return None if runtime.state == "running" else f"not serving (state {runtime.state})"
    try:
        return await asyncio.wait_for(asyncio.shield(outcome), max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        return f"not serving in time (state {runtime.state}{': ' + runtime.reason if runtime.reason else ''})"


def _deadline(spec: CommandSpec) -> float:
    assert spec.server_wait is not None
    return time.monotonic() + spec.server_wait


def _summary(runtime: "ExtensionRuntime") -> dict[str, Any]:
    config = runtime.config
    return {
        "id": config.id, "ia_port": config.ia_port, "retorno_port": config.retorno_port,
        "app": config.app, "options": dict(config.options),
        "state": runtime.state, "pid": runtime.pid, "source": runtime.source, "reason": runtime.reason,
    }


# -- the commands ------------------------------------------------------------------
async def add_extension(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    """Start the extension and answer only with the truth: it serves (then it is saved), or
    the reason it failed (then it is not saved, not listed, and its ports are free)."""
    if getattr(supervisor, "cluster", None) is not None:  # [cluster] mode: etcd's definitions (supervisor/cluster_commands.py)
        from audiogw.supervisor import cluster_commands
        return await cluster_commands.add_extension(supervisor, args)
    deadline = _deadline(ADD_EXTENSION)
    extension_id = args["id"]
    if extension_id in supervisor.extensions:
        raise CommandRefused(f"extension {extension_id} already exists")
    if (shortage := fd_shortage()) is not None:  # before libzmq would abort on "Too many open files"
        raise CommandRefused(f"extension {extension_id} not added: {shortage}")
    used = {port for runtime in supervisor.extensions.values()
            for port in (runtime.config.ia_port, runtime.config.retorno_port)}
    used.add(supervisor.config.supervisor.metrics_port)
    for name in ("ia_port", "retorno_port"):
        if args.get(name) in used:
            raise CommandRefused(f"port {args[name]} is already used by another extension or the metrics server")
    app = args.get("app", supervisor.config.defaults.app)
    options = {**supervisor.config.defaults.options, **args.get("options", {})}
    try:  # types and meaning (the file plays, the url is ws://) before anything is bound or saved
        parse_app_options(app, options, supervisor.config.base_dir)
    except AppOptionError as error:
        raise CommandRefused(str(error)) from None
    # Ports not given come from the range; a port some other program holds is skipped.
    for _attempt in range(20):
        wanted = [name for name in ("ia_port", "retorno_port") if name not in args]
        ports = dict(args)
        if wanted:
            try:
                free = allocate_ports(supervisor.config.audiosocket.port_range, used | explicit_ports(args),
                                      len(wanted))
            except ConfigError as error:
                raise CommandRefused(error.reason) from None
            ports.update(zip(wanted, free))
        try:
            extension = ExtensionConfig.from_dict(
                {"id": extension_id, "ia_port": ports["ia_port"], "retorno_port": ports["retorno_port"],
                 "app": app, "options": options},
                base_dir=supervisor.config.base_dir,
            )
        except ConfigError as error:
            raise CommandRefused(f"{error.key}: {error.reason}") from None
        try:
            runtime = supervisor.add_runtime(extension, bind_now=True)
            runtime.source = SOURCE_RUNTIME  # saved once it serves; never from the file meanwhile
            break
        except PortInUse as error:
            if error.port in explicit_ports(args):
                raise CommandRefused(f"port {error.port} is in use ({error})") from None
            used.update(port for name, port in ports.items() if name in wanted)
    else:
        raise CommandRefused("no two free ports found in the configured range")
    failure = await _outcome(runtime, deadline)
    if failure is None:
        try:
            supervisor.persist_added(extension)
        except OSError as error:
            failure = f"cannot save the state file: {error.strerror or error}"
    if failure is not None:
        await supervisor.discard_extension(runtime)
        raise CommandRefused(f"extension {extension_id} failed: {failure}; not added")
    return _summary(runtime)


def explicit_ports(args: dict[str, Any]) -> set[int]:
    """The ports the request names (a busy one is refused as such, not skipped like a range port)."""
    return {args[name] for name in ("ia_port", "retorno_port") if name in args}


async def remove_extension(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    """Forget the extension (persisted) and refuse new calls at once; the calls in progress finish
    in the background for ``drain`` s, so the reply never waits for a drain ctl's timeout cannot cover."""
    if getattr(supervisor, "cluster", None) is not None:
        from audiogw.supervisor import cluster_commands
        return await cluster_commands.remove_extension(supervisor, args)
    runtime = _runtime(supervisor, args["id"])
    async with runtime.lock:
        supervisor.forget_extension(runtime.id)
        supervisor.remove_in_background(runtime, args["drain"])
    return {"id": runtime.id, "drain": args["drain"]}


async def restart_extension(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    """Restart at once (its calls are dropped: no drain), clearing failed/fatal; answer with the truth."""
    if getattr(supervisor, "cluster", None) is not None:  # on the node that serves it, wherever it is
        from audiogw.supervisor import cluster_commands
        return await cluster_commands.restart_extension(supervisor, args)
    return await restart_here(supervisor, args["id"], _deadline(RESTART_EXTENSION))


async def restart_here(supervisor: "Supervisor", extension_id: str, deadline: float) -> dict[str, Any]:
    """Restart this supervisor's extension; ``deadline`` (monotonic) bounds the wait for its outcome."""
    runtime = _runtime(supervisor, extension_id)
    async with runtime.lock:
        await supervisor.replace_extension(runtime, runtime.config, drain=0.0)
    failure = await _outcome(runtime, deadline)
    if failure is not None:
        raise CommandRefused(f"extension {runtime.id} restarted but failed: {failure} (state {runtime.state})")
    return _summary(runtime)


async def list_extensions(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    if getattr(supervisor, "cluster", None) is not None:
        from audiogw.supervisor import cluster_commands
        return await cluster_commands.list_extensions(supervisor, args)
    return [_summary(runtime) for runtime in supervisor.extensions.values()]


def status_row(runtime: "ExtensionRuntime") -> dict[str, Any]:
    """One ``ctl status`` row: the extension, its supervisor-side figures, and the schema's columns."""
    rss, cpu_seconds = runtime.resources()
    uptime = time.monotonic() - runtime.started_at if runtime.started_at and runtime.pid else None
    return {
        **_summary(runtime),
        "uptime": uptime,
        "restarts": runtime.lifecycle.restarts,
        "fatal_retries": runtime.lifecycle.fatal_retries,
        **status_figures(runtime.totals(), runtime.stats),
        "memory_bytes": rss,
        "cpu_seconds": cpu_seconds,
        "cpu_percent": runtime.cpu_percent(),
    }


async def status(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    if getattr(supervisor, "cluster", None) is not None:  # ID: from the node that serves it, wherever it is
        from audiogw.supervisor import cluster_commands
        return await cluster_commands.status(supervisor, args)
    return await status_here(supervisor, args)


async def status_here(supervisor: "Supervisor", args: dict[str, Any]) -> list[dict[str, Any]]:
    """This supervisor's rows: extension ``args["id"]``'s, or every one's."""
    if "id" in args:
        return [status_row(_runtime(supervisor, args["id"]))]
    return [status_row(runtime) for runtime in supervisor.extensions.values()]


async def reload(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    try:
        return await supervisor.reload(deadline=_deadline(RELOAD))
    except ConfigError as error:
        raise CommandRefused(f"reload refused: {error}") from None


async def stop(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    supervisor.request_stop(args["drain"])
    return {"stopping": True}


async def dialplan(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    if args.get("cluster"):
        if getattr(supervisor, "cluster", None) is None:
            raise CommandRefused("--cluster: this supervisor is not in cluster mode (no [cluster] etcd)")
        from audiogw.supervisor import cluster_commands
        return await cluster_commands.dialplan(supervisor, args)
    runtime = _runtime(supervisor, args["id"])
    return {"text": dialplan_for(runtime.config, supervisor.config.audiosocket.bind,
                                 manager_user=supervisor.config.asterisk.username)}


async def reset(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    if getattr(supervisor, "cluster", None) is not None:  # refused: no file definitions in cluster mode
        from audiogw.supervisor import cluster_commands
        return await cluster_commands.reset(supervisor, args)
    deadline = _deadline(RESET)
    extension_id = args["id"]
    try:
        action = await supervisor.reset_extension(extension_id)
    except LookupError as error:
        raise CommandRefused(str(error.args[0])) from None
    except OSError as error:  # the state file could not be written, or the file's ports cannot be bound
        raise CommandRefused(f"reset of {extension_id} failed: {error}") from None
    runtime = supervisor.extensions.get(extension_id)
    if runtime is not None and action in ("started", "replaced"):
        await _outcome(runtime, deadline)  # answers when it serves or failed (its state says which)
    return {"id": extension_id, "action": action, "source": "file"}


def pair(handlers: Mapping[CommandSpec, Handler]) -> dict[str, Command]:
    """Each declaration with its handler, by name; a declaration without a handler (or the reverse) is a bug."""
    declared = set(DECLARATIONS.values())
    missing = sorted(spec.name for spec in declared - set(handlers))
    undeclared = sorted(getattr(spec, "name", repr(spec)) for spec in set(handlers) - declared)
    if missing or undeclared:
        raise RuntimeError(f"control commands out of step: declared without a handler {missing}, "
                           f"handled without a declaration {undeclared} (see shared/commands.py)")
    return {spec.name: Command(spec, handlers[spec]) for spec in DECLARATIONS.values()}


HANDLERS: dict[CommandSpec, Handler] = {
    ADD_EXTENSION: add_extension,
    REMOVE_EXTENSION: remove_extension,
    RESTART_EXTENSION: restart_extension,
    LIST: list_extensions,
    STATUS: status,
    RELOAD: reload,
    STOP: stop,
    DIALPLAN: dialplan,
    RESET: reset,
}
COMMANDS: dict[str, Command] = pair(HANDLERS)

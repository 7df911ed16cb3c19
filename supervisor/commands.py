"""Control commands: one small async function each, with its arguments declared next to it.

``COMMANDS`` is the explicit registry the control server dispatches through.
A handler raises :class:`CommandRefused` with a reason for a person; it never
returns an error value. Commands on one extension hold that extension's lock;
there is no global lock, so a slow drain never blocks ``list`` or ``status``.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping

from audiogw.shared.config import ConfigError, ExtensionConfig, allocate_ports, validate_extension_id, validate_port
from audiogw.shared.stats_schema import status_figures
from audiogw.supervisor.dialplan import dialplan_for
from audiogw.supervisor.extension import PortInUse
from audiogw.worker.apps import APPS, AppOptionError

if TYPE_CHECKING:
    from audiogw.supervisor.daemon import Supervisor
    from audiogw.supervisor.extension import ExtensionRuntime

READY_TIMEOUT = 5.0


class CommandRefused(Exception):
    """The request is understood but refused (unknown extension, port in use, ...)."""


# -- argument validators: value -> clean value, raising CommandRefused -------------
def _extension_id(value: Any) -> str:
    try:
        return validate_extension_id(value)
    except ConfigError as error:
        raise CommandRefused(f"invalid extension id {value!r}: {error.reason}") from None


def _port(value: Any) -> int:
    try:
        return validate_port(value)
    except ConfigError as error:
        raise CommandRefused(error.reason) from None


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 86400:
        raise CommandRefused(f"drain must be a number of seconds from 0 to 86400, got {value!r}")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise CommandRefused(f"expected a non-empty string, got {value!r}")
    return value


def _options(value: Any) -> dict:
    if not isinstance(value, dict):
        raise CommandRefused(f"options must be an object of KEY: VALUE, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class Arg:
    validate: Callable[[Any], Any]
    required: bool = False


@dataclass(frozen=True)
class Command:
    handler: Callable[["Supervisor", dict[str, Any]], Awaitable[Any]]
    args: Mapping[str, Arg]
    summary: str


def parse_args(command_name: str, command: Command, raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise CommandRefused(f"{command_name}: args must be an object")
    unknown = sorted(set(raw) - set(command.args))
    if unknown:
        raise CommandRefused(f"{command_name}: unknown argument(s) {', '.join(unknown)}")
    clean = {}
    for name, arg in command.args.items():
        if name in raw and raw[name] is not None:
            clean[name] = arg.validate(raw[name])
        elif arg.required:
            raise CommandRefused(f"{command_name}: missing argument {name!r}")
    return clean


def _runtime(supervisor: "Supervisor", extension_id: str) -> "ExtensionRuntime":
    runtime = supervisor.extensions.get(extension_id)
    if runtime is None:
        raise CommandRefused(f"unknown extension {extension_id}")
    return runtime


async def _wait_ready(runtime: "ExtensionRuntime") -> None:
    try:
        await asyncio.wait_for(runtime.ready_event.wait(), READY_TIMEOUT)
    except TimeoutError:
        pass


def _summary(runtime: "ExtensionRuntime") -> dict[str, Any]:
    config = runtime.config
    return {
        "id": config.id, "ia_port": config.ia_port, "retorno_port": config.retorno_port,
        "app": config.app, "options": dict(config.options),
        "state": runtime.lifecycle.state.value, "pid": runtime.pid,
    }


# -- the commands ------------------------------------------------------------------
async def add_extension(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    extension_id = args["id"]
    if extension_id in supervisor.extensions:
        raise CommandRefused(f"extension {extension_id} already exists")
    used = {port for runtime in supervisor.extensions.values()
            for port in (runtime.config.ia_port, runtime.config.retorno_port)}
    used.add(supervisor.config.supervisor.metrics_port)
    for name in ("ia_port", "retorno_port"):
        if args.get(name) in used:
            raise CommandRefused(f"port {args[name]} is already used by another extension or the metrics server")
    app = args.get("app", supervisor.config.defaults.app)
    if app not in APPS:
        raise CommandRefused(f"unknown app {app!r} (known: {', '.join(sorted(APPS))})")
    options = {**supervisor.config.defaults.options, **args.get("options", {})}
    try:
        APPS[app].validate_options(options)
    except AppOptionError as error:
        raise CommandRefused(str(error)) from None
    # Ports not given come from the range; a port some other program holds is skipped.
    for _attempt in range(20):
        wanted = [name for name in ("ia_port", "retorno_port") if name not in args]
        ports = dict(args)
        if wanted:
            try:
                explicit = {args[name] for name in ("ia_port", "retorno_port") if name in args}
                free = allocate_ports(supervisor.config.audiosocket.port_range, used | explicit, len(wanted))
            except ConfigError as error:
                raise CommandRefused(error.reason) from None
            ports.update(zip(wanted, free))
        try:
            extension = ExtensionConfig.from_dict(
                {"id": extension_id, "ia_port": ports["ia_port"], "retorno_port": ports["retorno_port"],
                 "app": app, "options": options},
                known_apps=supervisor.known_apps,
            )
        except ConfigError as error:
            raise CommandRefused(f"{error.key}: {error.reason}") from None
        try:
            runtime = supervisor.add_runtime(extension, persist=True)
            break
        except PortInUse as error:
            if not wanted:
                raise CommandRefused(str(error)) from None
            used.update(port for name, port in ports.items() if name in wanted)
    else:
        raise CommandRefused("no two free ports found in the configured range")
    await _wait_ready(runtime)
    return _summary(runtime)


async def remove_extension(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    runtime = _runtime(supervisor, args["id"])
    async with runtime.lock:
        supervisor.forget_extension(runtime.id)
        await supervisor.stop_extension(runtime, args.get("drain", 0.0), remove=True)
    return {"id": runtime.id}


async def restart_extension(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    runtime = _runtime(supervisor, args["id"])
    async with runtime.lock:
        await supervisor.replace_extension(runtime, runtime.config)
    await _wait_ready(runtime)
    return _summary(runtime)


async def list_extensions(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    return [_summary(runtime) for runtime in supervisor.extensions.values()]


def status_row(runtime: "ExtensionRuntime") -> dict[str, Any]:
    """One ``ctl status`` row: the extension, its supervisor-side figures, and the schema's columns."""
    rss, cpu_seconds = runtime.resources()
    uptime = time.monotonic() - runtime.started_at if runtime.started_at and runtime.pid else None
    return {
        **_summary(runtime),
        "uptime": uptime,
        "restarts": runtime.lifecycle.restarts,
        **status_figures(runtime.totals(), runtime.stats),
        "memory_bytes": rss,
        "cpu_seconds": cpu_seconds,
        "cpu_percent": runtime.cpu_percent(),
    }


async def status(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    if "id" in args:
        return [status_row(_runtime(supervisor, args["id"]))]
    return [status_row(runtime) for runtime in supervisor.extensions.values()]


async def reload(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    try:
        return await supervisor.reload()
    except ConfigError as error:
        raise CommandRefused(f"reload refused: {error}") from None


async def stop(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    supervisor.request_stop(args.get("drain", supervisor.config.supervisor.drain_seconds))
    return {"stopping": True}


async def dialplan(supervisor: "Supervisor", args: dict[str, Any]) -> Any:
    runtime = _runtime(supervisor, args["id"])
    return {"text": dialplan_for(runtime.config, supervisor.config.audiosocket.bind)}


COMMANDS: dict[str, Command] = {
    "add-extension": Command(add_extension, {
        "id": Arg(_extension_id, required=True), "ia_port": Arg(_port), "retorno_port": Arg(_port),
        "app": Arg(_text), "options": Arg(_options),
    }, "Add an extension and start its worker (persisted)."),
    "remove-extension": Command(remove_extension, {"id": Arg(_extension_id, required=True), "drain": Arg(_seconds)},
                                "Drain and remove an extension (persisted)."),
    "restart-extension": Command(restart_extension, {"id": Arg(_extension_id, required=True)},
                                 "Restart an extension's worker (also clears a failed state)."),
    "list": Command(list_extensions, {}, "Extensions with ports, app, state and pid."),
    "status": Command(status, {"id": Arg(_extension_id)}, "Per-extension state and counters."),
    "reload": Command(reload, {}, "Apply the config file's differences."),
    "stop": Command(stop, {"drain": Arg(_seconds)}, "Drain every extension and stop the supervisor."),
    "dialplan": Command(dialplan, {"id": Arg(_extension_id, required=True)}, "Asterisk dialplan for an extension."),
}

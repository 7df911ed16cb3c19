"""The control commands, each declared once: what it takes, what it answers, how ctl spells it.

Both sides read these declarations: the supervisor (``supervisor/commands.py``)
pairs each one with its handler and validates every request with the declared
validators; ``audiogw ctl`` (``client/ctl.py``) builds its click commands from
them, so a bad value is refused for the same reason before anything is sent.
Nothing here imports the supervisor's or the worker's runtime (no numpy, no
websockets): only ``shared.config``'s validators and msgspec for the result types.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from audiogw.shared.config import ConfigError, parse_option, validate_extension_id, validate_port

__all__ = [
    "EXTENSION_STATES",
    "ArgumentInvalid", "ConfigDefault", "Arg", "CommandSpec", "DECLARATIONS",
    "ADD_EXTENSION", "REMOVE_EXTENSION", "RESTART_EXTENSION", "LIST", "STATUS", "RELOAD", "STOP", "DIALPLAN",
    "RESET", "REMOTE_COMMANDS", "Extension", "Removed", "Reloaded", "Override", "Reset", "Stopping", "Dialplan",
]

MAX_DRAIN_SECONDS = 86400
# Commands that wait for a worker to serve or fail (add-extension, restart-extension, reload) answer
# within reply_timeout - REPLY_MARGIN; ctl waits reply_timeout. The worker's start timeout
# (RestartPolicy.start_timeout, 5 s) fits inside, so its kill is the answer, never ctl's timeout.
START_REPLY_TIMEOUT = 15.0
REPLY_MARGIN = 2.0


class ArgumentInvalid(ValueError):
    """An argument refused by its validator: ``reason`` is for a person, ``arg`` names the argument."""

    def __init__(self, reason: str, arg: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.arg = arg


# -- validators: wire value -> clean value, raising ArgumentInvalid(reason) -------------
# ctl runs them on what click parsed, the supervisor on what arrived: one reason, both sides.


def _shown(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    return repr(value)


def extension_id(value: Any) -> str:
    """A dial string (digits, '*', '#'), kept a string so leading zeros survive."""
    try:
        return validate_extension_id(value)
    except ConfigError as error:
        raise ArgumentInvalid(error.reason) from None


def port(value: Any) -> int:
    """A TCP port a socket can bind (1-65535)."""
    try:
        return validate_port(value)
    except ConfigError as error:
        raise ArgumentInvalid(error.reason) from None


def drain_seconds(value: Any) -> float:
    """How long calls in progress may go on: finite, 0 to a day (NaN never reaches a timer)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_DRAIN_SECONDS:
        raise ArgumentInvalid(f"must be a number of seconds from 0 to {MAX_DRAIN_SECONDS}, got {_shown(value)}")
    return float(value)


def app_name(value: Any) -> str:
    """An app name; whether the supervisor knows it is its own check (it owns the registry)."""
    if not isinstance(value, str):
        raise ArgumentInvalid(f"expected a non-empty string, got {value!r}")
    if not value.strip():
        raise ArgumentInvalid("empty app name")
    return value


def flag(value: Any) -> bool:
    """An on/off switch (``ctl`` spells it as a flag)."""
    if not isinstance(value, bool):
        raise ArgumentInvalid(f"expected true or false, got {value!r}")
    return value


def options(value: Any) -> dict[str, Any]:
    """App options as KEY: VALUE; their meaning is the app's to check (in the supervisor)."""
    if not isinstance(value, dict):
        raise ArgumentInvalid(f"options must be an object of KEY: VALUE, got {type(value).__name__}")
    return value


def options_from_cli(texts: tuple[str, ...]) -> dict[str, Any]:
    """Repeated ``--option KEY=VALUE`` into the options object, each VALUE typed like TOML."""
    parsed: dict[str, Any] = {}
    for text in texts:
        try:
            key, value = parse_option(text)
        except ConfigError as error:
            raise ArgumentInvalid(error.reason) from None
        if key in parsed:
            raise ArgumentInvalid(f"option {key!r} given twice")
        parsed[key] = value
    return parsed


# -- declarations -------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigDefault:
    """A default the supervisor reads from its config at run time (``section.key``); ctl sends nothing."""

    key: str

    def resolve(self, config: Any) -> Any:
        section, name = self.key.split(".")
        return getattr(getattr(config, section), name)


@dataclass(frozen=True)
class Arg:
    """One argument: its name in the request's ``args`` and how ``ctl`` spells it.

    ``cli`` is ``--some-option`` for an option, else the metavar of a positional
    argument (``ID``, ``[ID]``). ``refusal`` is the supervisor's wording of a
    refused value (``{name}``, ``{value!r}``, ``{reason}``); ctl shows ``reason``
    under click's "Invalid value for ...". ``from_cli`` turns a repeatable
    option's texts into the wire value (then ``validate`` runs on it too).
    """

    name: str
    type: type
    validate: Callable[[Any], Any]
    cli: str
    help: str = ""
    required: bool = False
    default: Any = None
    default_help: str | None = None
    refusal: str = "{reason}"
    from_cli: Callable[[tuple[str, ...]], Any] | None = None
    metavar: str | None = None

    @property
    def is_option(self) -> bool:
        return self.cli.startswith("--")

    def help_text(self) -> str:
        """The option's help with its default, for people: ``[default: supervisor.drain_seconds]``."""
        shown = self.default_help
        if shown is None and self.default is not None:
            shown = self.default.key if isinstance(self.default, ConfigDefault) else str(self.default)
        return f"{self.help} [default: {shown}]." if shown is not None else self.help

    def refuse(self, value: Any, reason: str) -> ArgumentInvalid:
        return ArgumentInvalid(self.refusal.format(name=self.name, value=value, reason=reason), self.name)


Check = Callable[[dict[str, Any], Callable[[str], str]], None]


@dataclass(frozen=True, eq=False)
class CommandSpec:
    """One control command: its name on the wire and on the CLI, arguments, result type and help.

    ``summary`` is the one line of ``ctl --help``; ``help`` (default: the summary)
    is ``ctl NAME --help``'s text. ``check`` sees all the clean arguments at once
    (rules across arguments); it gets a ``spell(name)`` naming an argument the
    way its side writes it (``--ia-port`` for ctl, ``ia_port`` for the wire).
    ``result`` is the msgspec type of the reply's ``result``.
    """

    name: str
    summary: str
    args: tuple[Arg, ...] = ()
    result: Any = Any
    help: str | None = None
    check: Check | None = None
    reply_timeout: float | None = None  # ctl waits at least this long for the reply (see server_wait)
    # [cluster] mode: asked on any node about an extension another node serves, the command is carried to
    # that node through etcd (supervisor/cluster_commands.py) and answers with that node's result.
    remote: bool = False

    @property
    def server_wait(self) -> float | None:
        """How long the supervisor may wait for the truth before it answers: always
        REPLY_MARGIN short of what ctl waits, so the two timeouts cannot cross."""
        return None if self.reply_timeout is None else self.reply_timeout - REPLY_MARGIN

    def client_timeout(self, asked: float) -> float:
        """The seconds ctl waits: what was asked (``--timeout``), never less than ``reply_timeout``."""
        return asked if self.reply_timeout is None else max(asked, self.reply_timeout)

    def arg(self, name: str) -> Arg:
        return next(arg for arg in self.args if arg.name == name)

    def parse(self, raw: Any, config: Any = None) -> dict[str, Any]:
        """A request's ``args`` validated, with config defaults filled in; ArgumentInvalid says why not."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ArgumentInvalid(f"{self.name}: args must be an object")
        unknown = sorted(set(raw) - {arg.name for arg in self.args})
        if unknown:
            raise ArgumentInvalid(f"{self.name}: unknown argument(s) {', '.join(map(str, unknown))}")
        clean: dict[str, Any] = {}
        for arg in self.args:
            value = raw.get(arg.name)
            if value is not None:
                try:
                    clean[arg.name] = arg.validate(value)
                except ArgumentInvalid as error:
                    raise arg.refuse(value, error.reason) from None
            elif arg.required:
                raise ArgumentInvalid(f"{self.name}: missing argument {arg.name!r}", arg.name)
            elif isinstance(arg.default, ConfigDefault) and config is not None:
                clean[arg.name] = arg.default.resolve(config)
            elif arg.default is not None and not isinstance(arg.default, ConfigDefault):
                clean[arg.name] = arg.default
        if self.check is not None:
            try:
                self.check(clean, str)
            except ArgumentInvalid as error:
                raise ArgumentInvalid(f"{error.arg}: {error.reason}", error.arg) from None
        return clean


# -- result types (what ``--json`` prints, field for field) -------------------------------


# An extension's state as ctl shows it (and another node reads it in etcd, shared/cluster_keys.py):
# supervisor/lifecycle.py's PUBLIC_STATE maps each worker state onto one of these.
EXTENSION_STATES: tuple[str, ...] = ("starting", "running", "backoff", "failed", "fatal", "stopping")


class Extension(msgspec.Struct):
    """An extension as ``list``, ``add-extension`` and ``restart-extension`` answer it."""

    id: str
    ia_port: int
    retorno_port: int
    app: str
    options: dict[str, Any]
    state: str  # one of EXTENSION_STATES
    pid: int | None
    source: str = "file"  # "file" (the config file) or "runtime" (ctl add-extension), see ctl reset
    reason: str | None = None  # the last failure: exit status or signal, missed heartbeats, a busy port...
    host: str | None = None  # [cluster] mode: the node that serves it (None: one host, or not placed)


class Removed(msgspec.Struct):
    id: str
    drain: float  # seconds the calls in progress may still take (they finish in the background)


class Override(msgspec.Struct):
    """An extension whose file definition a runtime change hides, and what to do about it."""

    id: str
    reason: str


class Reloaded(msgspec.Struct):
    added: list[str]
    removed: list[str]
    changed: list[str]
    unchanged: list[str]
    overridden: list[Override] = []


class Reset(msgspec.Struct):
    """``ctl reset``: what applying the file's definition did (started, replaced, removed, unchanged)."""

    id: str
    action: str
    source: str


class Stopping(msgspec.Struct):
    stopping: bool


class Dialplan(msgspec.Struct):
    text: str


# -- the commands ----------------------------------------------------------------------

_ID = Arg("id", str, extension_id, "ID", required=True, refusal="invalid extension id {value!r}: {reason}")
_OPTIONAL_ID = replace(_ID, cli="[ID]", required=False)
_DRAIN = Arg("drain", float, drain_seconds, "--drain", "Seconds to let calls in progress finish",
             default=ConfigDefault("supervisor.drain_seconds"), refusal="{name} {reason}")


def _two_ports(args: dict[str, Any], spell: Callable[[str], str]) -> None:
    if "ia_port" in args and args["ia_port"] == args.get("retorno_port"):
        raise ArgumentInvalid(
            f"same port as {spell('ia_port')} ({args['ia_port']}); the two legs need two ports", "retorno_port"
        )


ADD_EXTENSION = CommandSpec(
    "add-extension", "Add an extension; prints its two ports.",
    (
        _ID,
        Arg("ia_port", int, port, "--ia-port", "Port for the visitor's call", default_help="from port_range"),
        Arg("retorno_port", int, port, "--retorno-port", "Port for the resident's leg",
            default_help="from port_range"),
        Arg("app", str, app_name, "--app", "App answering the calls", default=ConfigDefault("defaults.app")),
        Arg("options", dict, options, "--option", "App option (repeatable); VALUE is read like TOML "
            "(true, 3, \"text\"), else kept as text.", from_cli=options_from_cli, metavar="KEY=VALUE"),
    ),
    Extension,
    help="Add extension ID and start its worker; prints its two ports.\n\n"
         "Answers once the worker serves (persisted: it survives a supervisor restart), or "
         "refuses with the reason it failed (nothing saved, its ports freed). ctl waits at least "
         f"{START_REPLY_TIMEOUT:g} s for that answer, whatever --timeout says.",
    check=_two_ports,
    reply_timeout=START_REPLY_TIMEOUT,
)
REMOVE_EXTENSION = CommandSpec(
    "remove-extension", "Stop extension ID's worker and forget it. Persisted.", (_ID, _DRAIN), Removed,
    help="Forget extension ID (persisted) and refuse new calls at once; the calls in progress go on for "
         "up to --drain seconds (default supervisor.drain_seconds) in the background, then are hung up. "
         "Answers at once. In cluster mode the node serving it drains for --drain seconds.",
)
RESTART_EXTENSION = CommandSpec(
    "restart-extension", "Restart extension ID's worker (its calls are dropped).", (_ID,), Extension,
    help="Restart extension ID's worker (its calls are dropped); clears failed and fatal at once.\n\n"
         "Answers once the worker serves, or refuses with the reason it failed (ctl waits at least "
         f"{START_REPLY_TIMEOUT:g} s for it). In cluster mode any node restarts it on the node serving it.",
    reply_timeout=START_REPLY_TIMEOUT,
    remote=True,
)
LIST = CommandSpec("list", "List the extensions: ports, app, worker state and pid.", (), list[Extension])
STATUS = CommandSpec(
    "status", "Health and audio timing of all extensions, or of ID.", (_OPTIONAL_ID,), list[dict[str, Any]],
    help="Health and audio timing of all extensions, or of ID.\n\n"
         "In cluster mode: ID is asked of the node serving it, wherever it is; without ID, the rows are "
         "this node's own extensions (each row's host names it).",
    remote=True,
)
RELOAD = CommandSpec(
    "reload", "Re-read the config file (like SIGHUP).", (), Reloaded,
    help="Re-read the config file and apply the changes (like SIGHUP).",
    reply_timeout=START_REPLY_TIMEOUT,  # answers once the replaced and added workers serve (or failed)
)
STOP = CommandSpec("stop", "Stop the supervisor and every worker, gracefully.", (_DRAIN,), Stopping)
DIALPLAN = CommandSpec(
    "dialplan", "Print the Asterisk dialplan lines for extension ID.",
    (_ID, Arg("cluster", bool, flag, "--cluster", "[cluster] mode: ask GET /route/ID of every node (CURL()) and "
              "dial the host it names, the next node on CHANUNAVAIL")),
    Dialplan)
RESET = CommandSpec(
    "reset", "Drop ID's runtime change: the file's definition counts again.", (_ID,), Reset,
    help="Drop the runtime change of extension ID (ctl add-extension / remove-extension) so the config "
         "file's definition, or its absence, counts again; applied at once, like a reload of ID. Persisted. "
         "Refused in cluster mode (the definitions are etcd's, not the file's).",
    reply_timeout=START_REPLY_TIMEOUT,
)

DECLARATIONS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (ADD_EXTENSION, REMOVE_EXTENSION, RESTART_EXTENSION, LIST, STATUS, RELOAD, STOP, DIALPLAN, RESET)
}
REMOTE_COMMANDS: frozenset[str] = frozenset(spec.name for spec in DECLARATIONS.values() if spec.remote)

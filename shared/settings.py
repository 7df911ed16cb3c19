"""The ``[supervisor]`` and ``[audiosocket]`` keys, each declared once.

A :class:`Setting` carries everything about one key: its type and bounds (the
parser), its default, the sentence that documents it, and what a ``reload`` does
with a new value. The section parsers, the "did you mean" key lists, the
:class:`SupervisorSettings` / :class:`AudioSocketSettings` dataclasses, the
reload plan (``supervisor/reload_plan.py``) and the commented reference
``etc/audiogw.toml`` (``python -m audiogw.shared.settings``) all come from these
declarations, so a new key cannot be half-added. Checks that involve two keys
stay explicit, small validators (:data:`CHECKS`).

Pure logic, no sockets (``_check_folder`` only stats a path).
"""
from __future__ import annotations

import dataclasses
import datetime
import difflib
import enum
import ipaddress
import json
import math
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from audiogw.shared.audiosocket import FRAME_PERIOD

# Linux sun_path holds 108 bytes including the terminating NUL.
IPC_PATH_MAX_BYTES = 107
MIN_WRITE_BUFFER = 4096
LOG_FORMATS = ("human", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

__all__ = [
    "ConfigError",
    "Reload",
    "RELOAD_NOTES",
    "ParseContext",
    "Setting",
    "SUPERVISOR",
    "AUDIOSOCKET",
    "SECTIONS",
    "Check",
    "CHECKS",
    "SupervisorSettings",
    "AudioSocketSettings",
    "CLUSTER",
    "ClusterSettings",
    "NODE_NAME_PATTERN",
    "resolve_cluster",
    "ASTERISK",
    "AGENT",
    "AsteriskSettings",
    "AgentSettings",
    "parse_section",
    "setting_names",
    "reference_text",
    "toml_value",
    "resolve_path",
    "validate_port",
]


class ConfigError(ValueError):
    """A refused configuration value: where it is (file, key) and why."""

    def __init__(self, file: str | None, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        parts = [part for part in (file, key) if part]
        super().__init__(": ".join([*parts, reason]))

    def __reduce__(self) -> tuple[Any, ...]:
        # Default pickling would call ConfigError(message): keep it rebuildable
        # so the error can cross a process boundary (worker -> supervisor).
        return (type(self), (self.file, self.key, self.reason))


# --------------------------------------------------------------------------- types

_TOML_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (datetime.datetime, "datetime"),
    (datetime.date, "date"),
    (datetime.time, "time"),
    (list, "array"),
    (tuple, "array"),
    (Mapping, "table"),
)


def _type_name(value: object) -> str:
    """The TOML word for a value's type, since that is what the user wrote."""
    if value is None:
        return "null"
    for python_type, name in _TOML_TYPE_NAMES:
        if isinstance(value, python_type):
            return name
    return type(value).__name__


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _expect_str(value: object, file: str | None, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(file, key, f"expected a string, got {_type_name(value)}")
    return value


def _expect_int(value: object, file: str | None, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(file, key, f"expected an integer, got {_type_name(value)}")
    return value


def _expect_number(value: object, file: str | None, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(file, key, f"expected a number, got {_type_name(value)}")
    if not math.isfinite(value):
        raise ConfigError(file, key, f"expected a finite number, got {value}")
    return float(value)


def _expect_table(value: object, file: str | None, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(file, key, f"expected a table, got {_type_name(value)}")
    return value


def _expect_array(value: object, file: str | None, key: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(file, key, f"expected an array, got {_type_name(value)}")
    return list(value)


def _unknown_key_reason(name: str, known: Iterable[str]) -> str:
    known = list(known)
    reason = f"unknown key {name!r}"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        return f"{reason}; did you mean {close[0]!r}?"
    return f"{reason}; known keys: {', '.join(known)}"


def _check_keys(table: Mapping[str, Any], known: Iterable[str], file: str | None, prefix: str) -> None:
    known = tuple(known)
    for name in table:
        if name not in known:
            raise ConfigError(file, _join(prefix, str(name)), _unknown_key_reason(str(name), known))


def _choice(value: object, choices: Iterable[str], file: str | None, key: str, what: str) -> str:
    """A string from a fixed set, compared case-insensitively, returned lower-case."""
    choices = tuple(choices)
    text = _expect_str(value, file, key)
    if text.lower() in choices:
        return text.lower()
    reason = f"unknown {what} {text!r}; expected one of: {', '.join(choices)}"
    close = difflib.get_close_matches(text.lower(), choices, n=1, cutoff=0.6)
    if close:
        reason = f"unknown {what} {text!r}; did you mean {close[0]!r}? (expected one of: {', '.join(choices)})"
    raise ConfigError(file, key, reason)



# ------------------------------------------------------------------ values

def validate_port(value: object, key: str = "port") -> int:
    """A TCP port a socket can bind: an integer (not a boolean) in 1..65535."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(None, key, f"expected an integer port, got {_type_name(value)}")
    if not 1 <= value <= 65535:
        raise ConfigError(None, key, f"port {value} outside 1-65535")
    return value


def _port(value: object, file: str | None, key: str) -> int:
    try:
        return validate_port(value, key)
    except ConfigError as error:
        raise ConfigError(file, key, error.reason) from None


def resolve_path(base_dir: str, value: str) -> str:
    """Relative paths mean "next to the config file", never "wherever I was started"."""
    expanded = os.path.expanduser(value)
    return os.path.normpath(os.path.join(os.path.abspath(base_dir), expanded))



_HOSTNAME = re.compile(r"\A(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?\Z")


def _parse_host_port(text: str, file: str | None, key: str, *, allow_port_zero: bool) -> tuple[str, int]:
    """``HOST:PORT`` with IPv6 in brackets (``[::1]:9464``), as in a URL."""
    example = "e.g. 127.0.0.1:9464 or [::1]:9464"
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ConfigError(file, key, f"{text!r} is not [IPV6]:PORT ({example})")
        host, port_text = text[1:close], text[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(file, key, f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(file, key, f"{text!r} has no port; expected HOST:PORT ({example})")
        if ":" in host:
            raise ConfigError(file, key, f"IPv6 addresses need brackets: [{host}]:{port_text}")
        if not host:
            raise ConfigError(file, key, f"{text!r} has no host (use 0.0.0.0 for every interface)")
        if not _is_ip(host) and not _HOSTNAME.match(host):
            raise ConfigError(file, key, f"{host!r} is not an IP address or host name")
    if not port_text.isdigit() or not port_text.isascii():
        raise ConfigError(file, key, f"port {port_text!r} is not a number ({example})")
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ConfigError(file, key, f"port {port} outside {low}-65535")
    return host, port


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _parse_control(value: object, base_dir: str, file: str | None, key: str) -> str:
    text = _expect_str(value, file, key)
    if text.startswith("ipc://"):
        path = text[len("ipc://") :]
        if not path:
            raise ConfigError(file, key, "ipc:// needs a socket path, e.g. ipc://var/run/control.sock")
        if path.startswith("@"):  # Linux abstract namespace: not a file, nothing to resolve
            resolved = path
        else:
            resolved = resolve_path(base_dir, path)
        if len(resolved.encode()) > IPC_PATH_MAX_BYTES:
            raise ConfigError(
                file,
                key,
                f"socket path {resolved!r} is {len(resolved.encode())} bytes; "
                f"the system limit is {IPC_PATH_MAX_BYTES} (use a shorter path)",
            )
        return f"ipc://{resolved}"
    if text.startswith("tcp://"):
        rest = text[len("tcp://") :]
        if rest.startswith("*:"):
            raise ConfigError(
                file, key, "use an address instead of '*' (ctl connects to this endpoint too), e.g. tcp://0.0.0.0:5555"
            )
        _parse_host_port(rest, file, key, allow_port_zero=False)
        return text
    raise ConfigError(file, key, f"{text!r} must start with ipc:// or tcp://")


def _check_folder(path: str, file: str | None, key: str) -> None:
    """Refuse at start what would otherwise refuse every client later, silently."""
    try:
        is_folder = stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        raise ConfigError(file, key, f"folder {path} does not exist") from None
    except OSError as error:
        raise ConfigError(file, key, f"cannot use folder {path}: {error.strerror or error}") from None
    if not is_folder:
        raise ConfigError(file, key, f"{path} is not a folder (expected a folder of client *.key certificates)")



# ---------------------------------------------------------------- declarations


class Reload(enum.Enum):
    """What ``reload`` (SIGHUP, ``ctl reload``) does with a changed value."""

    LIVE = "live"  # the supervisor applies it at once, to every extension
    NEW_WORKERS = "new_workers"  # the supervisor uses it at once; each worker when it (re)starts
    RESTART = "restart"  # kept at its running value until the supervisor restarts


RELOAD_NOTES = {
    Reload.LIVE: "applied at once",
    Reload.NEW_WORKERS: "running workers keep the old value until they restart",
    Reload.RESTART: "takes effect at the next supervisor start",
}


@dataclass(frozen=True, slots=True)
class ParseContext:
    """Where a value comes from: the file (for errors) and its folder (for relative paths)."""

    file: str | None
    base_dir: str | None


Parser = Callable[[object, ParseContext, str], Any]


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of a section: everything the parser, the dataclass, the reload plan and
    the reference file need to know about it.

    ``parse(value, context, dotted_key)`` returns the attribute value, or a tuple of
    values when the key fills several attributes (``fields``; ``metrics`` fills
    ``metrics_host`` and ``metrics_port``). ``default`` is written as in TOML and goes
    through ``parse`` like a written value; None means "unset" (every field None).
    """

    section: str
    name: str
    doc: str
    reload: Reload
    parse: Parser
    fields: tuple[tuple[str, Any], ...]
    default: object = None
    bounds: str = ""  # for the reference: "> 0", "1-50", one of ...
    example: object = None  # for the reference, when there is no default
    relative_default: bool = False  # the default is a path next to the config file: no dataclass default

    @property
    def key(self) -> str:
        """The dotted key, as error messages and logs name it."""
        return f"{self.section}.{self.name}"

    def values(self, parsed: object) -> tuple[Any, ...]:
        """The parsed value spread over ``fields``."""
        if len(self.fields) == 1:
            return (parsed,)
        return tuple(parsed) if parsed is not None else (None,) * len(self.fields)

    def read(self, config_section: object) -> tuple[Any, ...]:
        """This key's attribute values in a parsed ``SupervisorSettings``/``AudioSocketSettings``."""
        return tuple(getattr(config_section, name) for name, _ in self.fields)


def number(section: str, name: str, default: float, doc: str, reload: Reload, *,
           positive: bool = False, minimum: float | None = None) -> Setting:
    """A finite number of seconds, stored as a float."""

    def parse(value: object, context: ParseContext, key: str) -> float:
        number_ = _expect_number(value, context.file, key)
        if positive and number_ <= 0:
            raise ConfigError(context.file, key, f"must be greater than 0 s, got {number_:g}")
        if minimum is not None and number_ < minimum:
            raise ConfigError(context.file, key, f"must be at least {minimum:g} s, got {number_:g}")
        return number_

    bounds = "> 0" if positive else f">= {minimum:g}" if minimum is not None else ""
    return Setting(section, name, doc, reload, parse, ((name, float),), float(default), bounds)


def integer(section: str, name: str, default: int, doc: str, reload: Reload, *,
            minimum: int, maximum: int | None = None) -> Setting:
    """An integer (not a boolean) in ``minimum..maximum``."""
    bound = f"{minimum}-{maximum}" if maximum is not None else f">= {minimum}"

    def parse(value: object, context: ParseContext, key: str) -> int:
        integer_ = _expect_int(value, context.file, key)
        if integer_ < minimum or (maximum is not None and integer_ > maximum):
            raise ConfigError(context.file, key, f"{integer_} outside {bound}")
        return integer_

    return Setting(section, name, doc, reload, parse, ((name, int),), default, bound)


def choice(section: str, name: str, default: str, choices: tuple[str, ...], what: str, doc: str,
           reload: Reload) -> Setting:
    """A word from a fixed set, case-insensitive, stored lower-case."""

    def parse(value: object, context: ParseContext, key: str) -> str:
        return _choice(value, choices, context.file, key, what)

    bounds = "one of " + ", ".join(json.dumps(item) for item in choices)
    return Setting(section, name, doc, reload, parse, ((name, str),), default, bounds)


def path(section: str, name: str, doc: str, reload: Reload, *, default: str | None = None,
         example: str | None = None) -> Setting:
    """A file or folder path, resolved against the config file's folder."""

    def parse(value: object, context: ParseContext, key: str) -> str:
        text = _expect_str(value, context.file, key)
        if not text:
            raise ConfigError(context.file, key, "empty path")
        return resolve_path(context.base_dir or os.getcwd(), text)

    kind = str if default is not None else str | None
    return Setting(section, name, doc, reload, parse, ((name, kind),), default,
                   example=example, relative_default=default is not None)


def _control(value: object, context: ParseContext, key: str) -> str:
    return _parse_control(value, context.base_dir or os.getcwd(), context.file, key)


def _host_port(*, allow_port_zero: bool) -> Parser:
    def parse(value: object, context: ParseContext, key: str) -> tuple[str, int]:
        text = _expect_str(value, context.file, key)
        return _parse_host_port(text, context.file, key, allow_port_zero=allow_port_zero)

    return parse


def _bind(value: object, context: ParseContext, key: str) -> str:
    text = _expect_str(value, context.file, key)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(context.file, key, f"{text!r} is not an IPv4 or IPv6 address") from None


def _port_range(value: object, context: ParseContext, key: str) -> tuple[int, int]:
    file = context.file
    items = _expect_array(value, file, key)
    if len(items) != 2:
        raise ConfigError(file, key, f"expected [LOW, HIGH], got {len(items)} values")
    low = _port(items[0], file, key)
    high = _port(items[1], file, key)
    if low > high:
        raise ConfigError(file, key, f"low port {low} is above high port {high}")
    return (low, high)


def _networks(value: object, context: ParseContext, key: str) -> tuple[str, ...]:
    file = context.file
    items = _expect_array(value, file, key)
    if not items:
        raise ConfigError(file, key, 'empty: no peer could connect (to accept everyone write ["0.0.0.0/0", "::/0"])')
    networks = []
    for index, item in enumerate(items):
        text = _expect_str(item, file, f"{key}[{index}]")
        try:
            networks.append(str(ipaddress.ip_network(text, strict=False)))
        except ValueError:
            raise ConfigError(file, f"{key}[{index}]", f"{text!r} is not an address or CIDR network") from None
    return tuple(networks)


_S, _A = "supervisor", "audiosocket"
LIVE, NEW_WORKERS, RESTART = Reload.LIVE, Reload.NEW_WORKERS, Reload.RESTART

SUPERVISOR: tuple[Setting, ...] = (
    Setting(_S, "control", "ZeroMQ control endpoint used by `audiogw ctl`: ipc://PATH (a Unix socket file),\n"
            "or tcp://HOST:PORT, which then requires the curve_server_* key files and the\n"
            "curve_authorized_clients folder below.", RESTART, _control, (("control", str),),
            "ipc://var/run/control.sock", relative_default=True),
    Setting(_S, "metrics", 'HOST:PORT for Prometheus /metrics and /healthz (IPv6 as "[::1]:9464").',
            RESTART, _host_port(allow_port_zero=True), (("metrics_host", str), ("metrics_port", int)),
            "127.0.0.1:9464"),
    path(_S, "state_dir", "Folder for persisted extensions (added with `ctl add-extension`) and the pid/lock file.",
         RESTART, default="var"),
    path(_S, "leg_records", "Folder where each worker appends one JSON line per ended call leg to\n"
         "EXTENSION.jsonl (end reason, duration, frames, underruns, drops by reason, DTMF,\n"
         "the app's figures): call records for people and programs. Written from a thread,\n"
         "never from the audio loop. Unset: none.", NEW_WORKERS, example="../var/legs"),
    number(_S, "heartbeat_interval", 1.0, "Seconds between worker heartbeats.", NEW_WORKERS, positive=True),
    number(_S, "heartbeat_timeout", 3.0, "Seconds without a heartbeat before a worker counts as hung and is restarted\n"
           "(must be longer than heartbeat_interval).", LIVE, positive=True),
    number(_S, "backoff_initial", 0.0, "Seconds to wait before the first restart of a failed worker (0 = at once).",
           LIVE, minimum=0.0),
    number(_S, "backoff_max", 30.0, "Upper bound, in seconds, of the growing wait between repeated restarts\n"
           "(at least backoff_initial).", LIVE, minimum=0.0),
    number(_S, "flap_window", 10.0, "Flap detection: more than flap_max_restarts restarts of one worker within\n"
           "flap_window seconds marks it as flapping (FATAL).", LIVE, positive=True),
    integer(_S, "flap_max_restarts", 5, "Restarts of one worker allowed within flap_window.", LIVE, minimum=1),
    number(_S, "fatal_retry", 60.0, "Seconds a fatal worker (flapping, or refused by its config) waits before one\n"
           "more try on its own (0 = only `ctl restart-extension`).", LIVE, minimum=0.0),
    number(_S, "drain_seconds", 10.0, "Seconds a graceful stop (SIGTERM, `ctl stop`) lets calls in progress finish.",
           LIVE, minimum=0.0),
    choice(_S, "log_format", "human", LOG_FORMATS, "log format",
           'Log lines: "human" (text) or "json" (one object per line).', NEW_WORKERS),
    choice(_S, "log_level", "info", LOG_LEVELS, "log level", "Least severe level logged.", NEW_WORKERS),
    path(_S, "curve_server_secret_key", "ZeroMQ CURVE server secret key file, required with a tcp:// control, refused\n"
         "with ipc://. `audiogw ctl keygen keys` writes a server and a client certificate pair\n"
         "and prints these lines.", RESTART, example="keys/server.key_secret"),
    path(_S, "curve_server_public_key", "The server's public key file (tcp:// control only).", RESTART,
         example="keys/server.key"),
    path(_S, "curve_authorized_clients", "Folder of the public certificates (*.key) of the clients allowed to send\n"
         "commands (tcp:// control only); any other client gets no reply (the supervisor\n"
         "logs a warning). Its files are re-read when they change.", RESTART, example="keys/authorized_clients"),
    path(_S, "curve_client_secret_key", "The secret certificate `audiogw ctl` uses (else --client-key PATH);\n"
         "the supervisor does not read it.", LIVE, example="keys/client.key_secret"),
    Setting(_S, "demo_agent", "HOST:PORT of the reference voice agent (`audiogw demo-agent`) the supervisor runs\n"
            "beside the workers, for extensions whose agent url points at it; unset: not run.", RESTART,
            _host_port(allow_port_zero=False), (("demo_agent", tuple[str, int] | None),), example="127.0.0.1:8765"),
)

AUDIOSOCKET: tuple[Setting, ...] = (
    Setting(_A, "bind", "Address the extensions' AudioSocket ports listen on (IPv4 or IPv6 literal).", RESTART,
            _bind, (("bind", str),), "0.0.0.0"),
    Setting(_A, "port_range", "Inclusive [LOW, HIGH] TCP ports that `ctl add-extension` hands out.\n"
            "Keep it outside the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by\n"
            "default): outgoing connections take those ports, and a port taken is an extension down.", LIVE,
            _port_range, (("port_range", tuple[int, int]),), [30000, 30999], "1-65535, LOW <= HIGH"),
    Setting(_A, "allow", "Peers (Asterisk hosts) allowed to connect, as addresses or CIDR networks.", NEW_WORKERS,
            _networks, (("allow", tuple[str, ...]),), ["127.0.0.0/8"], "not empty"),
    number(_A, "uuid_timeout", 5.0, "Seconds a new connection has to send its UUID frame before it is closed.",
           NEW_WORKERS, positive=True),
    integer(_A, "lead_frames", 3, "Frames (20 ms each) of outbound audio kept ready ahead of the send clock.",
            NEW_WORKERS, minimum=1, maximum=50),
    number(_A, "outbound_buffer_seconds", 2.0, "Seconds of outbound audio a leg may queue (the queue is bounded; it must\n"
           "hold lead_frames and max_latency_ms).", NEW_WORKERS, positive=True),
    integer(_A, "inbound_buffer_frames", 50, "Inbound frames (20 ms each) a leg may queue for its app (bounded).",
            NEW_WORKERS, minimum=1),
    integer(_A, "max_write_buffer", 65536, "Bytes of unsent data allowed for a peer that stopped reading; beyond it the\n"
            "leg is closed.", NEW_WORKERS, minimum=MIN_WRITE_BUFFER),
    integer(_A, "realtime_priority", 10, "SCHED_RR priority (1-99) for every worker, whose event loop is the audio clock; 0 keeps\n"
            "normal scheduling. Beside a busy Asterisk (real-time with `asterisk -p`, or not) a\n"
            "normal-priority worker waits for the CPU and its callers hear gaps. Needs root,\n"
            "CAP_SYS_NICE or LimitRTPRIO= for the supervisor; a worker that is refused says so once\n"
            "and serves at normal priority, in a scheduling group of its own.", NEW_WORKERS, minimum=0, maximum=99),
    integer(_A, "max_latency_ms", 100, "Live audio (echo, bridge, the caller's audio to an agent) is cut back to this delay,\n"
            "oldest first, within a second of any stall (counted as frames_dropped reason=latency).\n"
            "Prompts and agent speech are never cut.", NEW_WORKERS, minimum=20, maximum=10000),
    integer(_A, "listen_backlog", 512, "Connections each listening socket holds while its worker (re)starts (capped by the\n"
            "kernel's net.core.somaxconn).", RESTART, minimum=1, maximum=65535),
)

# ------------------------------------------------------------------ [cluster] (#15)
# A node's name is part of etcd keys (/audiogw/nodes/NAME, shared/cluster_keys.py) and of labels.
NODE_NAME_PATTERN: re.Pattern[str] = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
NODE_NAME_RULE = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"


def _etcd_urls(value: object, context: ParseContext, key: str) -> tuple[str, ...]:
    file = context.file
    items = _expect_array(value, file, key)
    if not items:
        raise ConfigError(file, key, 'empty: list the etcd client URLs, e.g. ["http://10.0.0.1:2379"] '
                          "(remove [cluster] for one host)")
    urls: list[str] = []
    for index, item in enumerate(items):
        where = f"{key}[{index}]"
        text = _expect_str(item, file, where)
        scheme, sep, rest = text.partition("://")
        if not sep or scheme.lower() not in ("http", "https"):
            raise ConfigError(file, where, f"{text!r} is not an etcd client URL (http://HOST:PORT)")
        if scheme.lower() == "https":
            raise ConfigError(file, where, f"{text!r}: TLS to etcd is not supported yet; use http:// on a private network")
        if rest.endswith("/"):
            rest = rest[:-1]
        if "/" in rest or "?" in rest:
            raise ConfigError(file, where, f"{text!r} has a path; etcd client URLs are http://HOST:PORT")
        host, port = _parse_host_port(rest, file, where, allow_port_zero=False)
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        if url in urls:
            raise ConfigError(file, where, f"{url} is listed twice")
        urls.append(url)
    return tuple(urls)


def _node_name(value: object, context: ParseContext, key: str) -> str:
    text = _expect_str(value, context.file, key)
    if not NODE_NAME_PATTERN.match(text):
        raise ConfigError(context.file, key, f"{text!r} is not a node name ({NODE_NAME_RULE})")
    return text


def _advertise(value: object, context: ParseContext, key: str) -> str:
    text = _expect_str(value, context.file, key)
    if _is_ip(text):
        if ipaddress.ip_address(text).is_unspecified:
            raise ConfigError(context.file, key, f"{text} is every interface, not an address Asterisk can reach")
        return str(ipaddress.ip_address(text))
    if not _HOSTNAME.match(text):
        raise ConfigError(context.file, key, f"{text!r} is not an IP address or host name (no port: each "
                          "extension keeps its own ports)")
    return text


_C = "cluster"

CLUSTER: tuple[Setting, ...] = (
    Setting(_C, "etcd", "etcd v3 client URLs (http://HOST:PORT, every member or a few): setting it turns cluster\n"
            "mode on. Extension definitions, their placement and each node's liveness then live\n"
            "in etcd; unset (the default): one host, the state file.", RESTART, _etcd_urls,
            (("etcd", tuple[str, ...] | None),), example=["http://127.0.0.1:2379"], bounds="not empty"),
    Setting(_C, "name", "This node's id in the cluster (its etcd key, the host `ctl list` shows); default: the\n"
            "host name.", RESTART, _node_name, (("name", str | None),), example="gw1", bounds="1-63 of A-Z a-z 0-9 . _ -"),
    Setting(_C, "advertise", "Address Asterisk reaches this node's AudioSocket ports at (/route answers it); default:\n"
            "audiosocket.bind, which then must not be 0.0.0.0 or ::.", RESTART, _advertise,
            (("advertise", str | None),), example="192.0.2.10"),
    integer(_C, "lease_ttl", 3, "Seconds this node's etcd lease lives without a keepalive: a dead node's extensions\n"
            "serve from another within lease_ttl + 2 s. etcd refuses leases shorter than its\n"
            "election timeout allows (2 s with its defaults).", RESTART, minimum=2, maximum=60),
)


def _text(*, pattern: str | None = None, meaning: str = "", min_length: int = 0) -> Parser:
    """A one-line string (no line break: it goes into AMI and HTTP headers), optionally matching ``pattern``."""

    def parse(value: object, context: ParseContext, key: str) -> str:
        text = _expect_str(value, context.file, key)
        if any(character in text for character in "\r\n\0"):
            raise ConfigError(context.file, key, "must be one line")
        if pattern is not None and not re.fullmatch(pattern, text):
            raise ConfigError(context.file, key, f"{text!r} is not {meaning}")
        if len(text) < min_length:
            raise ConfigError(context.file, key, f"must be at least {min_length} characters, got {len(text)}")
        return text

    return parse


_AST, _AG = "asterisk", "agent"
ASTERISK: tuple[Setting, ...] = (
    Setting(_AST, "manager", "HOST:PORT of Asterisk's manager interface (AMI, manager.conf), through which the\n"
            "agent rings the resident (audiogw.dial), sends DTMF and hangs legs up; unset: no AMI\n"
            "(audiogw.dial answers dial_status failed). `ctl dialplan ID` prints the manager.conf lines.",
            RESTART, _host_port(allow_port_zero=False), (("manager", tuple[str, int] | None),),
            example="127.0.0.1:5038"),
    Setting(_AST, "username", "The AMI user (a [section] of manager.conf).", RESTART,
            _text(pattern=r"[A-Za-z0-9_.@-]+", meaning="a manager.conf user name (letters, digits, _.@-)"),
            (("username", str),), "audiogw"),
    path(_AST, "secret_file", "File holding that user's secret (its first line), readable by its owner only;\n"
         "read again at each (re)connection. Required with manager.", RESTART, example="ami.secret"),
)
AGENT: tuple[Setting, ...] = (
    Setting(_AG, "account_sid", "The Twilio-style accountSid the agent app's start message carries (AC + 32 hex\n"
            "digits), and the account of the REST subset (POST /2010-04-01/Accounts/SID/Calls/CALL.json);\n"
            'empty: accountSid "".', NEW_WORKERS,
            _text(pattern=r"(AC[0-9a-fA-F]{32})?", meaning="empty or AC followed by 32 hex digits"),
            (("account_sid", str),), ""),
    Setting(_AG, "auth_token", "Password of the REST subset (HTTP basic auth account_sid:auth_token, as Twilio's\n"
            "API; at least 16 characters) on the supervisor.metrics listener, so an agent that hangs up\n"
            "through Twilio's API (Pipecat's auto_hang_up) can; unset: the REST subset answers 403.", LIVE,
            _text(min_length=16), (("auth_token", str | None),), example="a-long-random-token"),
)

SECTIONS: dict[str, tuple[Setting, ...]] = {_S: SUPERVISOR, _A: AUDIOSOCKET, _C: CLUSTER, _AST: ASTERISK, _AG: AGENT}


# ------------------------------------------------------------- cross-key checks


@dataclass(frozen=True, slots=True)
class Check:
    """A rule between keys of one section; it runs as soon as the last key it ``needs``
    is parsed (so a file with two mistakes reports the same one as before)."""

    section: str
    needs: tuple[str, ...]
    run: Callable[[Mapping[str, Any], ParseContext], None]  # parsed values by attribute name


def _heartbeat_check(values: Mapping[str, Any], context: ParseContext) -> None:
    interval, timeout = values["heartbeat_interval"], values["heartbeat_timeout"]
    if timeout <= interval:
        raise ConfigError(context.file, "supervisor.heartbeat_timeout",
                          f"{timeout:g} s must be longer than heartbeat_interval ({interval:g} s)")


def _backoff_check(values: Mapping[str, Any], context: ParseContext) -> None:
    initial, maximum = values["backoff_initial"], values["backoff_max"]
    if maximum < initial:
        raise ConfigError(context.file, "supervisor.backoff_max",
                          f"{maximum:g} s is less than backoff_initial ({initial:g} s)")


# Required with a tcp:// control; every CURVE key is refused with ipc://.
CURVE_REQUIRED = ("curve_server_secret_key", "curve_server_public_key", "curve_authorized_clients")
CURVE_KEYS = (*CURVE_REQUIRED, "curve_client_secret_key")
_CURVE_REQUIRED_REASONS = {
    "curve_server_secret_key": "required when control is tcp:// "
    "(without CURVE anyone who reaches the port controls the gateway)",
    "curve_server_public_key": "required when control is tcp:// "
    "(without CURVE anyone who reaches the port controls the gateway)",
    "curve_authorized_clients": "required when control is tcp://: a folder of the *.key public certificates "
    "of the clients allowed to send commands (without it anyone who knows the server's public key could)",
}


def _curve_check(values: Mapping[str, Any], context: ParseContext) -> None:
    """A tcp:// control needs the server keys and the clients folder; ipc:// takes none."""
    control = values["control"]
    for name in CURVE_KEYS:
        key = f"supervisor.{name}"
        if control.startswith("tcp://") and values[name] is None and name in CURVE_REQUIRED:
            raise ConfigError(context.file, key, _CURVE_REQUIRED_REASONS[name])
        if control.startswith("ipc://") and values[name] is not None:
            raise ConfigError(
                context.file, key,
                "only used with a tcp:// control endpoint; remove it (ipc:// is guarded by file permissions)",
            )
    if values["curve_authorized_clients"] is not None:
        _check_folder(values["curve_authorized_clients"], context.file, "supervisor.curve_authorized_clients")


def _manager_check(values: Mapping[str, Any], context: ParseContext) -> None:
    if values["manager"] is not None and values["secret_file"] is None:
        raise ConfigError(context.file, "asterisk.secret_file", "required with asterisk.manager "
                          "(a file holding the AMI user's secret)")


def _account_check(values: Mapping[str, Any], context: ParseContext) -> None:
    if values["auth_token"] is not None and not values["account_sid"]:
        raise ConfigError(context.file, "agent.auth_token", "needs agent.account_sid (the REST user name)")


def _lead_check(values: Mapping[str, Any], context: ParseContext) -> None:
    lead_frames, buffer_seconds = values["lead_frames"], values["outbound_buffer_seconds"]
    if lead_frames * FRAME_PERIOD > buffer_seconds + 1e-9:
        raise ConfigError(
            context.file,
            "audiosocket.outbound_buffer_seconds",
            f"{buffer_seconds:g} s cannot hold lead_frames ({lead_frames} frames = "
            f"{lead_frames * FRAME_PERIOD:g} s)",
        )


def _latency_check(values: Mapping[str, Any], context: ParseContext) -> None:
    latency_ms, buffer_seconds = values["max_latency_ms"], values["outbound_buffer_seconds"]
    if latency_ms / 1000 > buffer_seconds + 1e-9:
        raise ConfigError(context.file, "audiosocket.max_latency_ms",
                          f"{latency_ms} ms is more than outbound_buffer_seconds ({buffer_seconds:g} s) holds")


CHECKS: tuple[Check, ...] = (
    Check(_S, ("heartbeat_interval", "heartbeat_timeout"), _heartbeat_check),
    Check(_S, ("backoff_initial", "backoff_max"), _backoff_check),
    Check(_S, ("control", *CURVE_KEYS), _curve_check),
    Check(_A, ("lead_frames", "outbound_buffer_seconds"), _lead_check),
    Check(_A, ("outbound_buffer_seconds", "max_latency_ms"), _latency_check),
    Check(_AST, ("manager", "secret_file"), _manager_check),
    Check(_AG, ("account_sid", "auth_token"), _account_check),
)


# ------------------------------------------------------------------ the parser


def setting_names(section: str) -> tuple[str, ...]:
    """The keys a section accepts, in declaration order (the "known keys" of errors)."""
    return tuple(setting.name for setting in SECTIONS[section])


def parse_section(section: str, table: Mapping[str, Any], context: ParseContext) -> dict[str, Any]:
    """Validate one section's table into attribute values; absent keys take their default."""
    settings = SECTIONS[section]
    _check_keys(table, setting_names(section), context.file, section)
    order = {setting.name: index for index, setting in enumerate(settings)}
    due: dict[int, list[Check]] = {}
    for check in CHECKS:
        if check.section == section:
            due.setdefault(max(order[name] for name in check.needs), []).append(check)
    values: dict[str, Any] = {}
    for index, setting in enumerate(settings):
        if setting.name in table:
            parsed = setting.parse(table[setting.name], context, setting.key)
        else:
            parsed = None if setting.default is None else setting.parse(setting.default, context, setting.key)
        values.update(zip((name for name, _ in setting.fields), setting.values(parsed)))
        for check in due.get(index, ()):
            check.run(values, context)
    return values


# ----------------------------------------------------------------- dataclasses


def _settings_class(name: str, section: str, doc: str) -> type:
    """A frozen dataclass whose fields (and their defaults) are the section's declarations.

    Keyword-only: a default that is a path next to the config file (``control``,
    ``state_dir``) cannot be known here, so those fields have none."""
    fields: list[tuple[Any, ...]] = []
    context = ParseContext(None, None)
    for setting in SECTIONS[section]:
        if setting.relative_default:
            fields.extend(setting.fields)
            continue
        parsed = None if setting.default is None else setting.parse(setting.default, context, setting.key)
        for (attribute, kind), value in zip(setting.fields, setting.values(parsed)):
            fields.append((attribute, kind, value))
    return dataclasses.make_dataclass(
        name, fields, frozen=True, slots=True, kw_only=True,
        namespace={"__doc__": doc, "__module__": __name__},
    )


SupervisorSettings = _settings_class(
    "SupervisorSettings", _S, "The ``[supervisor]`` table, validated (attributes: see SUPERVISOR).")
AudioSocketSettings = _settings_class(
    "AudioSocketSettings", _A, "The ``[audiosocket]`` table, validated (attributes: see AUDIOSOCKET).")
AsteriskSettings = _settings_class(
    "AsteriskSettings", _AST, "The ``[asterisk]`` table, validated (attributes: see ASTERISK).")
AgentSettings = _settings_class("AgentSettings", _AG, "The ``[agent]`` table, validated (attributes: see AGENT).")
ClusterSettings = _settings_class(
    "ClusterSettings", _C, "The ``[cluster]`` table, validated (attributes: see CLUSTER); ``etcd`` None: one host.")


def resolve_cluster(cluster: Any, table: Mapping[str, Any], bind: str, file: str | None,
                    host_name: Callable[[], str] | None = None) -> Any:
    """``[cluster]`` with the defaults that depend on the host and on ``audiosocket.bind`` filled in.

    A key set away from its default does nothing without ``etcd``: refused rather than ignored
    (an empty ``[cluster]``, as the reference file has, or its defaults written out, is one host)."""
    if cluster.etcd is None:
        defaults = ClusterSettings()
        useless = sorted(name for name in table if getattr(cluster, name) != getattr(defaults, name))
        if useless:
            raise ConfigError(file, "cluster.etcd", f"required when [cluster] sets {', '.join(useless)} "
                              "(the etcd client URLs; remove [cluster] for one host)")
        return cluster
    name = cluster.name
    if name is None:
        import socket

        name = (host_name or socket.gethostname)()
        if not NODE_NAME_PATTERN.match(name):
            raise ConfigError(file, "cluster.name", f"the host name {name!r} is not a node name ({NODE_NAME_RULE}); "
                              "set cluster.name")
    advertise = cluster.advertise
    if advertise is None:
        if ipaddress.ip_address(bind).is_unspecified:
            raise ConfigError(file, "cluster.advertise", f"required: audiosocket.bind is {bind} (every interface), "
                              "so say which address Asterisk reaches this node at")
        advertise = bind
    return dataclasses.replace(cluster, name=name, advertise=advertise)


# ------------------------------------------------------------ the reference file

REFERENCE_PATH = "etc/audiogw.toml"

# What the shipped etc/audiogw.toml sets away from the defaults (the repository's
# var/ folder, the demo agent, loopback only); every other key is written commented.
REFERENCE_VALUES: dict[str, object] = {
    "supervisor.control": "ipc://../var/run/control.sock",
    "supervisor.state_dir": "../var",
    "supervisor.demo_agent": "127.0.0.1:8765",
    "audiosocket.bind": "127.0.0.1",
}

_REFERENCE_HEADER = """\
# audiogw configuration. Relative paths are relative to this file's folder (etc/),
# so "../var" is the repository's var/ folder. Unknown keys are refused at start.
# Every key is listed with its bounds, what `reload` does with a change, and its
# default (commented keys take it). Generated from shared/settings.py by
# `python -m audiogw.shared.settings etc/audiogw.toml`: edit the declarations there.
"""

_REFERENCE_TAIL = """\
[defaults]
# App an extension runs when its table names none: {apps}.
app = "echo"
# App options every extension starts from; an extension's own options win.
options = {{}}

# One [[extension]] table per phone extension.
#   id            dial string: digits, '*' and '#', 1 to 32 characters (quoted)
#   ia_port       TCP port for the visitor's call (answered by the app)
#   retorno_port  TCP port for the resident's call leg of the same conversation
#   app           {apps} (default: defaults.app)
#   options       app options, merged over defaults.options
"""

_REFERENCE_EXTENSIONS = """\
[[extension]]
id = "1201"
ia_port = 30000
retorno_port = 30001
app = "agent"
# The reference agent above: greets, plays back what the caller said, confirms DTMF 1.
options = { url = "ws://127.0.0.1:8765/media", barge_in = true }

[[extension]]
id = "1202"
ia_port = 30002
retorno_port = 30003
app = "bridge"

[[extension]]
id = "1210"
ia_port = 30004
retorno_port = 30005
app = "agent"
# The reference agent as the virtual doorman (README "The doorman demo"): greets the visitor,
# records who is there, rings the resident (with [asterisk] and a `resident` option, e.g.
# resident = "PJSIP/apt1210"), tells them, bridges on DTMF 1, opens the door on 9, goodbye on 2.
options = { url = "ws://127.0.0.1:8765/doorman" }
"""


def toml_value(value: object) -> str:
    """A TOML literal for a declared default (strings, numbers, booleans, arrays)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML literal for {type(value).__name__}")


def _reference_entry(setting: Setting, values: Mapping[str, object]) -> list[str]:
    lines = [f"# {line}" if line else "#" for line in setting.doc.split("\n")]
    facts = [setting.bounds] if setting.bounds else []
    facts.append(f"reload: {RELOAD_NOTES[setting.reload]}")
    shipped = values.get(setting.key)
    if shipped is not None:
        facts.append("default: " + (toml_value(setting.default) if setting.default is not None else "unset"))
        assignment = f"{setting.name} = {toml_value(shipped)}"
    elif setting.default is not None:
        assignment = f"# {setting.name} = {toml_value(setting.default)}"
    else:
        facts.append("unset by default")
        assignment = f"# {setting.name} = {toml_value(setting.example)}"
    lines.append("# (" + "; ".join(facts) + ")")
    lines.append(assignment)
    return lines


def reference_text(values: Mapping[str, object] = REFERENCE_VALUES, header: str = _REFERENCE_HEADER,
                   extensions: str = _REFERENCE_EXTENSIONS) -> str:
    """The commented reference config: every key with its doc, bounds, reload note and
    default, then ``[defaults]`` and the example extensions. ``etc/audiogw.toml`` is this
    text (a test compares them), so a declared key is documented by construction;
    ``audiogw init`` writes it with its own ``values`` (keys set away from the defaults),
    ``header`` and ``extensions`` (TOML text)."""
    from audiogw.shared.apps import BUILTIN_APPS

    names = tuple(BUILTIN_APPS)
    unknown = set(values) - {setting.key for settings in SECTIONS.values() for setting in settings}
    if unknown:
        raise ValueError(f"reference values name undeclared keys: {sorted(unknown)}")
    parts = [header]
    for section, settings in SECTIONS.items():
        lines = [f"[{section}]"]
        for setting in settings:
            lines.extend(_reference_entry(setting, values))
        parts.append("\n".join(lines) + "\n")
    apps = ", ".join(names) + ", or a module:Class reference"
    parts.append(_REFERENCE_TAIL.format(apps=apps) + extensions)
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """``python -m audiogw.shared.settings [PATH]``: write the reference config to PATH (or stdout)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1 or (args and args[0].startswith("-")):
        print("usage: python -m audiogw.shared.settings [PATH]  (default: print to stdout)", file=sys.stderr)
        return 2
    text = reference_text()
    if not args:
        sys.stdout.write(text)
        return 0
    with open(args[0], "w", encoding="utf-8") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Configuration: the TOML file, validated into frozen dataclasses.

Pure logic, no sockets. Every refusal is a :class:`ConfigError` naming the file,
the dotted key (``supervisor.metrics``, ``extension[2].id``) and a reason a person
can act on, because a gateway that starts on a half-understood config drops calls
later, at a worse time.
"""
from __future__ import annotations

import datetime
import difflib
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from audiogw.shared.apps import BUILTIN_APPS
from audiogw.shared.audiosocket import FRAME_PERIOD, LEG_KINDS

__all__ = [
    "KNOWN_APPS",
    "EXTENSION_ID_PATTERN",
    "OPTION_KEY_PATTERN",
    "ConfigError",
    "ExtensionConfig",
    "SupervisorSettings",
    "AudioSocketSettings",
    "Defaults",
    "Config",
    "validate_extension_id",
    "validate_port",
    "parse_option",
    "allocate_ports",
    "load_config",
    "parse_config",
    "default_config_path",
    "resolve_path",
]

KNOWN_APPS: tuple[str, ...] = tuple(BUILTIN_APPS)

# \A and \Z (not ^ and $) so that match(), search() and fullmatch() all agree and
# a trailing newline is not silently accepted.
EXTENSION_ID_PATTERN: re.Pattern[str] = re.compile(r"\A[0-9*#]{1,32}\Z")
OPTION_KEY_PATTERN: re.Pattern[str] = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")

DEFAULT_CONFIG_PATH = "etc/audiogw.toml"
CONFIG_ENV = "AUDIOGW_CONFIG"

# Linux sun_path holds 108 bytes including the terminating NUL.
IPC_PATH_MAX_BYTES = 107
MIN_WRITE_BUFFER = 4096
LOG_FORMATS = ("human", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")


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


# ------------------------------------------------------------------ small validators


def validate_extension_id(value: object) -> str:
    """Extension ids are dial strings: digits, '*' and '#' only, so they stay strings
    (a TOML integer would lose leading zeros)."""
    if not isinstance(value, str):
        hint = f' (quote it: id = "{value}")' if isinstance(value, int) and not isinstance(value, bool) else ""
        raise ConfigError(None, "id", f"expected a string, got {_type_name(value)}{hint}")
    if not value:
        raise ConfigError(None, "id", "empty extension id; use digits, '*' and '#', 1 to 32 characters")
    if len(value) > 32:
        raise ConfigError(None, "id", f"extension id is {len(value)} characters long; the limit is 32")
    if not EXTENSION_ID_PATTERN.match(value):
        bad = next((char for char in value if char not in "0123456789*#"), value)
        raise ConfigError(
            None, "id", f"extension id {value!r} contains {bad!r}; only digits, '*' and '#' are allowed"
        )
    return value


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


def _is_option_value(value: object) -> bool:
    """Option values must survive JSON (state file, ZeroMQ): no dates, no NaN."""
    if isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_is_option_value(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_option_value(v) for k, v in value.items())
    return False


def _plain_copy(value: Any) -> Any:
    """A deep copy with plain dicts and lists, so callers' later edits don't leak in."""
    if isinstance(value, Mapping):
        return {str(k): _plain_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_copy(item) for item in value]
    return value


def _validate_options(value: object, file: str | None, key: str) -> dict[str, Any]:
    table = _expect_table(value, file, key)
    for name, item in table.items():
        if not isinstance(name, str) or not OPTION_KEY_PATTERN.match(name):
            raise ConfigError(
                file,
                key,
                f"option name {name!r} must be letters, digits and '_', not starting with a digit",
            )
        if not _is_option_value(item):
            raise ConfigError(
                file,
                _join(key, name),
                f"{_type_name(item)} value {item!r} is not allowed in options "
                "(use strings, numbers, booleans, arrays or tables; quote dates)",
            )
    return _plain_copy(table)


def _app(value: object, known_apps: tuple[str, ...], file: str | None, key: str) -> str:
    name = _expect_str(value, file, key)
    if name in known_apps:
        return name
    reason = f"unknown app {name!r}; known apps: {', '.join(known_apps)}"
    close = difflib.get_close_matches(name, known_apps, n=1, cutoff=0.6)
    if close:
        reason = f"unknown app {name!r}; did you mean {close[0]!r}? (known apps: {', '.join(known_apps)})"
    raise ConfigError(file, key, reason)


def parse_option(text: str) -> tuple[str, object]:
    """Turn a CLI ``KEY=VALUE`` into an app option, typed like the TOML file would be,
    so ``--option loop=true`` and ``loop = true`` mean the same."""
    if not isinstance(text, str):
        raise ConfigError(None, "option", f"expected KEY=VALUE text, got {_type_name(text)}")
    name, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(None, "option", f"{text!r} is not KEY=VALUE (missing '=')")
    if not OPTION_KEY_PATTERN.match(name):
        raise ConfigError(
            None,
            "option",
            f"option name {name!r} must be letters, digits and '_', not starting with a digit",
        )
    value: object = raw
    try:
        parsed = tomllib.loads(f"value = {raw}") if "\n" not in raw and "\r" not in raw else None
    except tomllib.TOMLDecodeError:
        parsed = None
    if parsed is not None and list(parsed) == ["value"] and _is_option_value(parsed["value"]):
        value = parsed["value"]
    return name, value


def allocate_ports(port_range: tuple[int, int], used: set[int], count: int = 2) -> list[int]:
    """The lowest free ports of the range; pure, so the supervisor decides what
    "used" means (configured extensions plus anything else it knows about)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    low, high = port_range
    free: list[int] = []
    for port in range(low, high + 1):
        if port not in used:
            free.append(port)
            if len(free) == count:
                return free
    if count == 0:
        return []
    reason = f"no free ports left in {low}-{high}"
    if free:
        reason += f" (need {count}, {len(free)} free)"
    raise ConfigError(None, "audiosocket.port_range", reason)


# ------------------------------------------------------------------------- paths


def default_config_path() -> str:
    """``$AUDIOGW_CONFIG`` if set, else ``etc/audiogw.toml`` relative to the cwd."""
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def resolve_path(base_dir: str, value: str) -> str:
    """Relative paths mean "next to the config file", never "wherever I was started"."""
    expanded = os.path.expanduser(value)
    return os.path.normpath(os.path.join(os.path.abspath(base_dir), expanded))


# --------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class ExtensionConfig:
    """One extension: its two AudioSocket ports and the app that answers them."""

    id: str
    ia_port: int
    retorno_port: int
    app: str
    options: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Invariants hold even when built directly (not through from_dict).
        try:
            validate_extension_id(self.id)
        except ConfigError as error:
            raise ConfigError(None, "extension.id", error.reason) from None
        _port(self.ia_port, None, "extension.ia_port")
        _port(self.retorno_port, None, "extension.retorno_port")
        if self.ia_port == self.retorno_port:
            raise ConfigError(None, "extension.retorno_port", f"same port as ia_port ({self.ia_port})")
        if not isinstance(self.app, str) or not self.app:
            raise ConfigError(None, "extension.app", f"expected an app name, got {self.app!r}")
        object.__setattr__(self, "options", _validate_options(self.options, None, "extension.options"))

    def ports(self) -> dict[str, int]:
        """Each leg kind's listening port, in LEG_KINDS order."""
        return {kind: getattr(self, f"{kind}_port") for kind in LEG_KINDS}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the state file and ZeroMQ replies."""
        return {
            "id": self.id,
            "ia_port": self.ia_port,
            "retorno_port": self.retorno_port,
            "app": self.app,
            "options": _plain_copy(self.options),
        }

    @classmethod
    def from_dict(
        cls,
        data: Mapping[str, Any],
        *,
        known_apps: Iterable[str] = KNOWN_APPS,
        source: str | None = None,
        key: str = "extension",
        defaults: Defaults | None = None,
    ) -> ExtensionConfig:
        """Validate like the TOML path, for data that arrives as JSON (state file,
        ZeroMQ). With ``defaults``, ``app`` may be omitted and options merge over
        the default options, exactly as a ``[[extension]]`` table does."""
        known_apps = tuple(known_apps)
        table = _expect_table(data, source, key)
        _check_keys(table, ("id", "ia_port", "retorno_port", "app", "options"), source, key)
        for required in ("id", "ia_port", "retorno_port"):
            if required not in table:
                raise ConfigError(source, _join(key, required), f"missing required key {required!r}")
        try:
            extension_id = validate_extension_id(table["id"])
        except ConfigError as error:
            raise ConfigError(source, _join(key, "id"), error.reason) from None
        ia_port = _port(table["ia_port"], source, _join(key, "ia_port"))
        retorno_port = _port(table["retorno_port"], source, _join(key, "retorno_port"))
        if ia_port == retorno_port:
            raise ConfigError(
                source,
                _join(key, "retorno_port"),
                f"same port as ia_port ({ia_port}); the two legs need two ports",
            )
        if "app" in table:
            app = _app(table["app"], known_apps, source, _join(key, "app"))
        elif defaults is not None:
            app = _app(defaults.app, known_apps, source, _join(key, "app"))
        else:
            raise ConfigError(source, _join(key, "app"), "missing required key 'app'")
        options = _validate_options(table.get("options", {}), source, _join(key, "options"))
        if defaults is not None:
            options = {**_plain_copy(defaults.options), **options}
        return cls(extension_id, ia_port, retorno_port, app, options)


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    control: str
    metrics_host: str
    metrics_port: int
    state_dir: str
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 3.0
    backoff_initial: float = 0.0
    backoff_max: float = 30.0
    flap_window: float = 10.0
    flap_max_restarts: int = 5
    drain_seconds: float = 10.0
    log_format: str = "human"
    log_level: str = "info"
    curve_server_secret_key: str | None = None
    curve_server_public_key: str | None = None
    # Folder of the *.key public certificates of the clients allowed on a tcp:// control.
    curve_authorized_clients: str | None = None
    # `audiogw ctl`'s own secret certificate (the supervisor does not use it).
    curve_client_secret_key: str | None = None
    # HOST:PORT of the reference voice agent the supervisor runs beside the
    # workers (``audiogw demo-agent``); None: not run.
    demo_agent: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class AudioSocketSettings:
    bind: str = "0.0.0.0"
    port_range: tuple[int, int] = (40000, 40999)
    allow: tuple[str, ...] = ("127.0.0.0/8",)
    uuid_timeout: float = 5.0
    lead_frames: int = 3
    outbound_buffer_seconds: float = 2.0
    inbound_buffer_frames: int = 50
    max_write_buffer: int = 65536
    # SCHED_RR priority of each worker (the audio clock); 0: normal scheduling. On by
    # default where permitted: beside a busy Asterisk a normal-priority worker waits for
    # the CPU (see worker/realtime.py); a refused worker serves at normal priority.
    realtime_priority: int = 10
    # Live audio (echo, bridge, caller to agent) is cut back to this delay after a stall.
    max_latency_ms: int = 100
    # Connections that wait in each listening socket while a worker (re)starts.
    listen_backlog: int = 512


@dataclass(frozen=True, slots=True)
class Defaults:
    app: str = "echo"
    options: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", _plain_copy(self.options))


@dataclass(frozen=True, slots=True)
class Config:
    path: str | None
    base_dir: str
    supervisor: SupervisorSettings
    audiosocket: AudioSocketSettings
    defaults: Defaults
    extensions: tuple[ExtensionConfig, ...]

    def extension(self, extension_id: str) -> ExtensionConfig | None:
        for extension in self.extensions:
            if extension.id == extension_id:
                return extension
        return None


# ------------------------------------------------------------------------ parsing

DEFAULT_CONTROL = "ipc://var/run/control.sock"
DEFAULT_METRICS = "127.0.0.1:9464"
DEFAULT_STATE_DIR = "var"

_TOP_KEYS = ("supervisor", "audiosocket", "defaults", "extension")
_SUPERVISOR_KEYS = (
    "control",
    "metrics",
    "state_dir",
    "heartbeat_interval",
    "heartbeat_timeout",
    "backoff_initial",
    "backoff_max",
    "flap_window",
    "flap_max_restarts",
    "drain_seconds",
    "log_format",
    "log_level",
    "curve_server_secret_key",
    "curve_server_public_key",
    "curve_authorized_clients",
    "curve_client_secret_key",
    "demo_agent",
)
# Required with a tcp:// control; every CURVE key is refused with ipc://.
_CURVE_REQUIRED = ("curve_server_secret_key", "curve_server_public_key", "curve_authorized_clients")
_CURVE_KEYS = (*_CURVE_REQUIRED, "curve_client_secret_key")
_CURVE_REQUIRED_REASONS = {
    "curve_server_secret_key": "required when control is tcp:// "
    "(without CURVE anyone who reaches the port controls the gateway)",
    "curve_server_public_key": "required when control is tcp:// "
    "(without CURVE anyone who reaches the port controls the gateway)",
    "curve_authorized_clients": "required when control is tcp://: a folder of the *.key public certificates "
    "of the clients allowed to send commands (without it anyone who knows the server's public key could)",
}
_AUDIOSOCKET_KEYS = (
    "bind",
    "port_range",
    "allow",
    "uuid_timeout",
    "lead_frames",
    "outbound_buffer_seconds",
    "inbound_buffer_frames",
    "max_write_buffer",
    "realtime_priority",
    "max_latency_ms",
    "listen_backlog",
)
_DEFAULTS_KEYS = ("app", "options")

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


def _number(
    table: Mapping[str, Any],
    name: str,
    default: float,
    file: str | None,
    prefix: str,
    *,
    minimum: float | None = None,
    positive: bool = False,
    unit: str = "s",
) -> float:
    key = _join(prefix, name)
    if name not in table:
        return default
    value = _expect_number(table[name], file, key)
    if positive and value <= 0:
        raise ConfigError(file, key, f"must be greater than 0 {unit}, got {value:g}")
    if minimum is not None and value < minimum:
        raise ConfigError(file, key, f"must be at least {minimum:g} {unit}, got {value:g}")
    return value


def _integer(
    table: Mapping[str, Any],
    name: str,
    default: int,
    file: str | None,
    prefix: str,
    *,
    minimum: int,
    maximum: int | None = None,
) -> int:
    key = _join(prefix, name)
    if name not in table:
        return default
    value = _expect_int(table[name], file, key)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}-{maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(file, key, f"{value} outside {bound}")
    return value


def _parse_curve_paths(
    table: Mapping[str, Any], control: str, base_dir: str, file: str | None
) -> dict[str, str | None]:
    """The CURVE paths, resolved: a tcp:// control needs them all, ipc:// none."""
    keys: dict[str, str | None] = {}
    for name in _CURVE_KEYS:
        key = _join("supervisor", name)
        if name in table:
            path = _expect_str(table[name], file, key)
            if not path:
                raise ConfigError(file, key, "empty path")
            keys[name] = resolve_path(base_dir, path)
        else:
            keys[name] = None
    for name, path in keys.items():
        key = _join("supervisor", name)
        if control.startswith("tcp://") and path is None and name in _CURVE_REQUIRED:
            raise ConfigError(file, key, _CURVE_REQUIRED_REASONS[name])
        if control.startswith("ipc://") and path is not None:
            raise ConfigError(
                file, key, "only used with a tcp:// control endpoint; remove it (ipc:// is guarded by file permissions)"
            )
    folder = keys["curve_authorized_clients"]
    if folder is not None:
        _check_folder(folder, file, "supervisor.curve_authorized_clients")
    return keys


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


def _parse_supervisor(table: Mapping[str, Any], base_dir: str, file: str | None) -> SupervisorSettings:
    prefix = "supervisor"
    _check_keys(table, _SUPERVISOR_KEYS, file, prefix)
    control = _parse_control(table.get("control", DEFAULT_CONTROL), base_dir, file, "supervisor.control")
    metrics = _expect_str(table.get("metrics", DEFAULT_METRICS), file, "supervisor.metrics")
    metrics_host, metrics_port = _parse_host_port(metrics, file, "supervisor.metrics", allow_port_zero=True)
    state_dir = _expect_str(table.get("state_dir", DEFAULT_STATE_DIR), file, "supervisor.state_dir")
    if not state_dir:
        raise ConfigError(file, "supervisor.state_dir", "empty path")
    heartbeat_interval = _number(table, "heartbeat_interval", 1.0, file, prefix, positive=True)
    heartbeat_timeout = _number(table, "heartbeat_timeout", 3.0, file, prefix, positive=True)
    if heartbeat_timeout <= heartbeat_interval:
        raise ConfigError(
            file,
            "supervisor.heartbeat_timeout",
            f"{heartbeat_timeout:g} s must be longer than heartbeat_interval ({heartbeat_interval:g} s)",
        )
    backoff_initial = _number(table, "backoff_initial", 0.0, file, prefix, minimum=0.0)
    backoff_max = _number(table, "backoff_max", 30.0, file, prefix, minimum=0.0)
    if backoff_max < backoff_initial:
        raise ConfigError(
            file,
            "supervisor.backoff_max",
            f"{backoff_max:g} s is less than backoff_initial ({backoff_initial:g} s)",
        )
    flap_window = _number(table, "flap_window", 10.0, file, prefix, positive=True)
    flap_max_restarts = _integer(table, "flap_max_restarts", 5, file, prefix, minimum=1)
    drain_seconds = _number(table, "drain_seconds", 10.0, file, prefix, minimum=0.0)
    log_format = _choice(table.get("log_format", "human"), LOG_FORMATS, file, "supervisor.log_format", "log format")
    log_level = _choice(table.get("log_level", "info"), LOG_LEVELS, file, "supervisor.log_level", "log level")

    keys = _parse_curve_paths(table, control, base_dir, file)
    demo_agent = None
    if "demo_agent" in table:
        demo_text = _expect_str(table["demo_agent"], file, "supervisor.demo_agent")
        demo_agent = _parse_host_port(demo_text, file, "supervisor.demo_agent", allow_port_zero=False)
    return SupervisorSettings(
        control=control,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        state_dir=resolve_path(base_dir, state_dir),
        heartbeat_interval=heartbeat_interval,
        heartbeat_timeout=heartbeat_timeout,
        backoff_initial=backoff_initial,
        backoff_max=backoff_max,
        flap_window=flap_window,
        flap_max_restarts=flap_max_restarts,
        drain_seconds=drain_seconds,
        log_format=log_format,
        log_level=log_level,
        curve_server_secret_key=keys["curve_server_secret_key"],
        curve_server_public_key=keys["curve_server_public_key"],
        curve_authorized_clients=keys["curve_authorized_clients"],
        curve_client_secret_key=keys["curve_client_secret_key"],
        demo_agent=demo_agent,
    )


def _parse_audiosocket(table: Mapping[str, Any], file: str | None) -> AudioSocketSettings:
    prefix = "audiosocket"
    _check_keys(table, _AUDIOSOCKET_KEYS, file, prefix)
    bind = _expect_str(table.get("bind", "0.0.0.0"), file, "audiosocket.bind")
    try:
        bind = str(ipaddress.ip_address(bind))
    except ValueError:
        raise ConfigError(file, "audiosocket.bind", f"{bind!r} is not an IPv4 or IPv6 address") from None

    key = "audiosocket.port_range"
    port_range: tuple[int, int] = (40000, 40999)
    if "port_range" in table:
        items = _expect_array(table["port_range"], file, key)
        if len(items) != 2:
            raise ConfigError(file, key, f"expected [LOW, HIGH], got {len(items)} values")
        low = _port(items[0], file, key)
        high = _port(items[1], file, key)
        if low > high:
            raise ConfigError(file, key, f"low port {low} is above high port {high}")
        port_range = (low, high)

    key = "audiosocket.allow"
    allow: tuple[str, ...] = ("127.0.0.0/8",)
    if "allow" in table:
        items = _expect_array(table["allow"], file, key)
        if not items:
            raise ConfigError(
                file, key, 'empty: no peer could connect (to accept everyone write ["0.0.0.0/0", "::/0"])'
            )
        networks = []
        for index, item in enumerate(items):
            text = _expect_str(item, file, f"{key}[{index}]")
            try:
                networks.append(str(ipaddress.ip_network(text, strict=False)))
            except ValueError:
                raise ConfigError(file, f"{key}[{index}]", f"{text!r} is not an address or CIDR network") from None
        allow = tuple(networks)

    uuid_timeout = _number(table, "uuid_timeout", 5.0, file, prefix, positive=True)
    lead_frames = _integer(table, "lead_frames", 3, file, prefix, minimum=1, maximum=50)
    outbound_buffer_seconds = _number(table, "outbound_buffer_seconds", 2.0, file, prefix, positive=True)
    if lead_frames * FRAME_PERIOD > outbound_buffer_seconds + 1e-9:
        raise ConfigError(
            file,
            "audiosocket.outbound_buffer_seconds",
            f"{outbound_buffer_seconds:g} s cannot hold lead_frames ({lead_frames} frames = "
            f"{lead_frames * FRAME_PERIOD:g} s)",
        )
    inbound_buffer_frames = _integer(table, "inbound_buffer_frames", 50, file, prefix, minimum=1)
    max_write_buffer = _integer(table, "max_write_buffer", 65536, file, prefix, minimum=MIN_WRITE_BUFFER)
    realtime_priority = _integer(table, "realtime_priority", 10, file, prefix, minimum=0, maximum=99)
    max_latency_ms = _integer(table, "max_latency_ms", 100, file, prefix, minimum=20, maximum=10000)
    if max_latency_ms / 1000 > outbound_buffer_seconds + 1e-9:
        raise ConfigError(file, "audiosocket.max_latency_ms",
                          f"{max_latency_ms} ms is more than outbound_buffer_seconds ({outbound_buffer_seconds:g} s) holds")
    listen_backlog = _integer(table, "listen_backlog", 512, file, prefix, minimum=1, maximum=65535)
    return AudioSocketSettings(
        bind=bind,
        port_range=port_range,
        allow=allow,
        uuid_timeout=uuid_timeout,
        lead_frames=lead_frames,
        outbound_buffer_seconds=outbound_buffer_seconds,
        inbound_buffer_frames=inbound_buffer_frames,
        max_write_buffer=max_write_buffer,
        realtime_priority=realtime_priority,
        max_latency_ms=max_latency_ms,
        listen_backlog=listen_backlog,
    )


def _parse_defaults(table: Mapping[str, Any], known_apps: tuple[str, ...], file: str | None) -> Defaults:
    _check_keys(table, _DEFAULTS_KEYS, file, "defaults")
    app = _app(table.get("app", "echo"), known_apps, file, "defaults.app")
    options = _validate_options(table.get("options", {}), file, "defaults.options")
    return Defaults(app=app, options=options)


def _addresses_overlap(first: str, second: str) -> bool:
    """Two listeners on one port collide when either binds every interface or both bind the same one."""
    try:
        first_ip, second_ip = ipaddress.ip_address(first), ipaddress.ip_address(second)
    except ValueError:
        return first == second
    return first_ip.is_unspecified or second_ip.is_unspecified or first_ip == second_ip


def _parse_extensions(
    value: object,
    defaults: Defaults,
    known_apps: tuple[str, ...],
    file: str | None,
    reserved: dict[int, str],
) -> tuple[ExtensionConfig, ...]:
    if isinstance(value, Mapping):
        raise ConfigError(file, "extension", "expected an array of tables: write [[extension]], not [extension]")
    items = _expect_array(value, file, "extension")
    extensions: list[ExtensionConfig] = []
    id_owner: dict[str, int] = {}
    port_owner: dict[int, str] = {}
    for index, item in enumerate(items):
        key = f"extension[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(file, key, f"expected a table, got {_type_name(item)}")
        extension = ExtensionConfig.from_dict(item, known_apps=known_apps, source=file, key=key, defaults=defaults)
        if extension.id in id_owner:
            raise ConfigError(
                file, f"{key}.id", f"duplicate id {extension.id!r} (also extension[{id_owner[extension.id]}])"
            )
        id_owner[extension.id] = index
        for name in ("ia_port", "retorno_port"):
            port = getattr(extension, name)
            if port in port_owner:
                raise ConfigError(
                    file,
                    f"{key}.{name}",
                    f"port {port} is used twice: extension {extension.id!r} {name} ({key}) "
                    f"and {port_owner[port]}",
                )
            if port in reserved:
                raise ConfigError(file, f"{key}.{name}", f"port {port} is also {reserved[port]}")
            port_owner[port] = f"extension {extension.id!r} {name} ({key})"
        extensions.append(extension)
    return tuple(extensions)


def parse_config(
    data: Mapping[str, Any],
    *,
    path: str | None,
    base_dir: str,
    known_apps: Iterable[str] = KNOWN_APPS,
) -> Config:
    """Validate already-decoded TOML; missing tables and keys take the defaults."""
    known_apps = tuple(known_apps)
    file = path
    base_dir = os.path.abspath(base_dir)
    table = _expect_table(data, file, "")
    _check_keys(table, _TOP_KEYS, file, "")
    supervisor = _parse_supervisor(_expect_table(table.get("supervisor", {}), file, "supervisor"), base_dir, file)
    audiosocket = _parse_audiosocket(_expect_table(table.get("audiosocket", {}), file, "audiosocket"), file)
    defaults = _parse_defaults(_expect_table(table.get("defaults", {}), file, "defaults"), known_apps, file)

    # Other listeners that share the AudioSocket address: an extension may not take their port.
    reserved: dict[int, str] = {}
    if supervisor.metrics_port and _addresses_overlap(audiosocket.bind, supervisor.metrics_host):
        reserved[supervisor.metrics_port] = "supervisor.metrics"
    if supervisor.control.startswith("tcp://"):
        control_host, control_port = _parse_host_port(
            supervisor.control[len("tcp://") :], file, "supervisor.control", allow_port_zero=False
        )
        if _addresses_overlap(audiosocket.bind, control_host):
            reserved.setdefault(control_port, "supervisor.control")
    if supervisor.demo_agent is not None and _addresses_overlap(audiosocket.bind, supervisor.demo_agent[0]):
        reserved.setdefault(supervisor.demo_agent[1], "supervisor.demo_agent")

    extensions = _parse_extensions(table.get("extension", []), defaults, known_apps, file, reserved)
    return Config(
        path=path,
        base_dir=base_dir,
        supervisor=supervisor,
        audiosocket=audiosocket,
        defaults=defaults,
        extensions=extensions,
    )


_TOML_POSITION = re.compile(r"\A(?P<message>.*?)\s*\(at line (?P<line>\d+), column (?P<column>\d+)\)\Z", re.S)


def load_config(path: str | os.PathLike[str], *, known_apps: Iterable[str] = KNOWN_APPS) -> Config:
    """Read and validate a config file; relative paths in it resolve against its folder."""
    absolute = os.path.abspath(os.fspath(path))
    try:
        with open(absolute, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ConfigError(absolute, "", f"cannot read: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(absolute, "", f"cannot read: not UTF-8 (byte {error.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = _TOML_POSITION.match(message)
        if match:
            message = f"line {match['line']}, column {match['column']}: {match['message']}"
        elif message.endswith("(at end of document)"):
            last_line = len(text.splitlines()) or 1
            message = f"line {last_line} (end of file): {message[: -len('(at end of document)')].strip()}"
        raise ConfigError(absolute, "", f"invalid TOML: {message}") from None
    return parse_config(data, path=absolute, base_dir=os.path.dirname(absolute), known_apps=known_apps)

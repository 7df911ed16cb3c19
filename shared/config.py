"""Configuration: the TOML file, validated into frozen dataclasses.

Pure logic, no sockets. Every refusal is a :class:`ConfigError` naming the file,
the dotted key (``supervisor.metrics``, ``extension[2].id``) and a reason a person
can act on, because a gateway that starts on a half-understood config drops calls
later, at a worse time.

The ``[supervisor]`` and ``[audiosocket]`` keys are declared in ``shared/settings.py``
(one ``Setting`` each); this module adds ``[defaults]``, the ``[[extension]]`` tables
and the checks across sections (ports reserved by other listeners).
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from audiogw.shared.apps import AppOptionError, app_spec, parse_app_options
from audiogw.shared.audiosocket import LEG_KINDS
from audiogw.shared.settings import (
    AgentSettings,
    AsteriskSettings,
    AudioSocketSettings,
    ClusterSettings,
    ConfigError,
    ParseContext,
    SupervisorSettings,
    _check_keys,
    _expect_array,
    _expect_str,
    _expect_table,
    _join,
    _parse_host_port,
    _port,
    _type_name,
    SECTIONS,
    parse_section,
    resolve_cluster,
    resolve_path,
    validate_port,
)

__all__ = [
    "EXTENSION_ID_PATTERN",
    "OPTION_KEY_PATTERN",
    "ConfigError",
    "ExtensionConfig",
    "SupervisorSettings",
    "AudioSocketSettings",
    "AsteriskSettings",
    "AgentSettings",
    "Defaults",
    "Config",
    "validate_extension_id",
    "validate_port",
    "parse_option",
    "allocate_ports",
    "load_config",
    "load_control_config",
    "ControlConfig",
    "CONTROL_SETTINGS",
    "parse_config",
    "default_config_path",
    "config_search_paths",
    "CONFIG_SEARCH",
    "CONFIG_SEARCH_HELP",
    "resolve_path",
    "reserved_ports",
]

# \A and \Z (not ^ and $) so that match(), search() and fullmatch() all agree and
# a trailing newline is not silently accepted.
EXTENSION_ID_PATTERN: re.Pattern[str] = re.compile(r"\A[0-9*#]{1,32}\Z")
OPTION_KEY_PATTERN: re.Pattern[str] = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")

CONFIG_ENV = "AUDIOGW_CONFIG"
CONFIG_NAME = "audiogw.toml"
# Where a config file is looked for when neither --config nor $AUDIOGW_CONFIG names
# one, first match wins (the one list: commands, docs and errors all read it).
# "{xdg}" is $XDG_CONFIG_HOME, else ~/.config.
CONFIG_SEARCH: tuple[str, ...] = (
    "./audiogw.toml",
    "./etc/audiogw.toml",
    "{xdg}/audiogw/audiogw.toml",
    "/etc/audiogw/audiogw.toml",
)

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


def _app(value: object, file: str | None, key: str) -> str:
    """A registry name or a ``module:Class`` reference (shared/apps.py says why not)."""
    name = _expect_str(value, file, key)
    try:
        app_spec(name)
    except AppOptionError as error:
        raise ConfigError(file, key, str(error)) from None
    return name


def _app_options(app: str, options: dict[str, Any], base_dir: str, file: str | None, key: str) -> dict[str, Any]:
    """``options`` once the app accepts them, types and meaning (a file it can play, a ws:// url...)."""
    try:
        parse_app_options(app, options, base_dir)
    except AppOptionError as error:
        raise ConfigError(file, _join(key, error.option) if error.option else key, str(error)) from None
    return options


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


def config_search_paths() -> list[str]:
    """CONFIG_SEARCH with $XDG_CONFIG_HOME (else ~/.config) filled in, in order."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [candidate.format(xdg=xdg) for candidate in CONFIG_SEARCH]


CONFIG_SEARCH_HELP = (f"${CONFIG_ENV}, else the first of "
                      + ", ".join(path.replace("{xdg}", "$XDG_CONFIG_HOME") for path in CONFIG_SEARCH))


def default_config_path(explicit: str | None = None) -> str:
    """The config file a command uses: ``explicit`` (``--config``), else ``$AUDIOGW_CONFIG``,
    else the first existing file of CONFIG_SEARCH. A named file is used as given (a
    missing one is an error when read, not a reason to silently take another); when
    nothing is found the ConfigError lists where it looked, so the user knows what to create."""
    if explicit:
        return explicit
    named = os.environ.get(CONFIG_ENV)
    if named:
        return named
    candidates = config_search_paths()
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(
        None, "",
        f"no config file found (looked for ${CONFIG_ENV}, then {', '.join(candidates)}); "
        "write one with `audiogw init [DIR]`, or name it with --config PATH",
    )


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
        base_dir: str = ".",
        source: str | None = None,
        key: str = "extension",
        defaults: Defaults | None = None,
    ) -> ExtensionConfig:
        """Validate like the TOML path, for data that arrives as JSON (state file,
        ZeroMQ). With ``defaults``, ``app`` may be omitted and options merge over
        the default options, exactly as a ``[[extension]]`` table does. The app's
        options are checked by the app's model; relative file names resolve
        against ``base_dir`` (the config file's folder)."""
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
            app = _app(table["app"], source, _join(key, "app"))
        elif defaults is not None:
            app = _app(defaults.app, source, _join(key, "app"))
        else:
            raise ConfigError(source, _join(key, "app"), "missing required key 'app'")
        options = _validate_options(table.get("options", {}), source, _join(key, "options"))
        if defaults is not None:
            options = {**_plain_copy(defaults.options), **options}
        options = _app_options(app, options, base_dir, source, _join(key, "options"))
        return cls(extension_id, ia_port, retorno_port, app, options)


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
    cluster: ClusterSettings = field(default_factory=ClusterSettings)  # etcd None: one host (#15)
    asterisk: AsteriskSettings = AsteriskSettings()
    agent: AgentSettings = AgentSettings()

    def extension(self, extension_id: str) -> ExtensionConfig | None:
        for extension in self.extensions:
            if extension.id == extension_id:
                return extension
        return None


# ------------------------------------------------------------------------ parsing

_TOP_KEYS = ("supervisor", "audiosocket", "cluster", "asterisk", "agent", "defaults", "extension")
_DEFAULTS_KEYS = ("app", "options")


def _parse_defaults(table: Mapping[str, Any], file: str | None) -> Defaults:
    _check_keys(table, _DEFAULTS_KEYS, file, "defaults")
    app = _app(table.get("app", "echo"), file, "defaults.app")
    options = _validate_options(table.get("options", {}), file, "defaults.options")
    return Defaults(app=app, options=options)


def _addresses_overlap(first: str, second: str) -> bool:
    """Two listeners on one port collide when either binds every interface or both bind the same one."""
    try:
        first_ip, second_ip = ipaddress.ip_address(first), ipaddress.ip_address(second)
    except ValueError:
        return first == second
    return first_ip.is_unspecified or second_ip.is_unspecified or first_ip == second_ip


def reserved_ports(supervisor: SupervisorSettings, audiosocket: AudioSocketSettings,
                   file: str | None = None) -> dict[int, str]:
    """The other listeners that share the AudioSocket address (port -> dotted key): an
    extension may not take their port. Also checked by the reload plan, whose running
    values of these keys may differ from the file's."""
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
    return reserved


def _parse_extensions(
    value: object,
    defaults: Defaults,
    base_dir: str,
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
        extension = ExtensionConfig.from_dict(item, base_dir=base_dir, source=file, key=key, defaults=defaults)
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
) -> Config:
    """Validate already-decoded TOML; missing tables and keys take the defaults."""
    file = path
    base_dir = os.path.abspath(base_dir)
    table = _expect_table(data, file, "")
    _check_keys(table, _TOP_KEYS, file, "")
    context = ParseContext(file, base_dir)
    supervisor = SupervisorSettings(
        **parse_section("supervisor", _expect_table(table.get("supervisor", {}), file, "supervisor"), context))
    audiosocket = AudioSocketSettings(
        **parse_section("audiosocket", _expect_table(table.get("audiosocket", {}), file, "audiosocket"), context))
    cluster_table = _expect_table(table.get("cluster", {}), file, "cluster")
    cluster = resolve_cluster(ClusterSettings(**parse_section("cluster", cluster_table, context)), cluster_table,
                              audiosocket.bind, file)
    asterisk = AsteriskSettings(
        **parse_section("asterisk", _expect_table(table.get("asterisk", {}), file, "asterisk"), context))
    agent = AgentSettings(**parse_section("agent", _expect_table(table.get("agent", {}), file, "agent"), context))
    defaults = _parse_defaults(_expect_table(table.get("defaults", {}), file, "defaults"), file)

    reserved = reserved_ports(supervisor, audiosocket, file)
    extensions = _parse_extensions(table.get("extension", []), defaults, base_dir, file, reserved)
    return Config(
        path=path,
        base_dir=base_dir,
        supervisor=supervisor,
        audiosocket=audiosocket,
        defaults=defaults,
        extensions=extensions,
        cluster=cluster,
        asterisk=asterisk,
        agent=agent,
    )


_TOML_POSITION = re.compile(r"\A(?P<message>.*?)\s*\(at line (?P<line>\d+), column (?P<column>\d+)\)\Z", re.S)


def _read_text(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The file's absolute path and its text; unreadable or not UTF-8 is a ConfigError."""
    absolute = os.path.abspath(os.fspath(path))
    try:
        with open(absolute, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ConfigError(absolute, "", f"cannot read: {error.strerror or error}") from None
    try:
        return absolute, raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(absolute, "", f"cannot read: not UTF-8 (byte {error.start})") from None


def _decode_toml(text: str, file: str) -> dict[str, Any]:
    """Decoded TOML; a syntax error is a ConfigError with its line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = _TOML_POSITION.match(message)
        if match:
            message = f"line {match['line']}, column {match['column']}: {match['message']}"
        elif message.endswith("(at end of document)"):
            last_line = len(text.splitlines()) or 1
            message = f"line {last_line} (end of file): {message[: -len('(at end of document)')].strip()}"
        raise ConfigError(file, "", f"invalid TOML: {message}") from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; relative paths in it resolve against its folder."""
    absolute, text = _read_text(path)
    return parse_config(_decode_toml(text, absolute), path=absolute, base_dir=os.path.dirname(absolute))


# The [supervisor] keys `audiogw ctl` needs to reach the supervisor: all it validates.
CONTROL_SETTINGS: tuple[str, ...] = ("control", "curve_server_public_key", "curve_client_secret_key")


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """What a control client reads from the file, and the rest of the file's first error
    (``problem``), which must not lock the client out: the operator may be mid-edit."""

    path: str
    control: str
    curve_server_public_key: str | None
    curve_client_secret_key: str | None
    problem: ConfigError | None = None


def load_control_config(path: str | os.PathLike[str]) -> ControlConfig:
    """Only CONTROL_SETTINGS, each through its declaration in shared/settings.py; an error
    in them is raised, an error anywhere else is kept in ``problem``. A TOML syntax error
    outside ``[supervisor]`` is one too: that table alone is decoded then."""
    absolute, text = _read_text(path)
    base_dir = os.path.dirname(absolute)
    syntax: ConfigError | None = None
    try:
        data = _decode_toml(text, absolute)
    except ConfigError as error:
        syntax = error
        try:
            data = _decode_toml(_supervisor_table_text(text), absolute)
        except ConfigError:
            raise syntax from None  # the error is in [supervisor] itself: report it where it is
    supervisor = _expect_table(data.get("supervisor", {}), absolute, "supervisor")
    context = ParseContext(absolute, base_dir)
    declared = {setting.name: setting for setting in SECTIONS["supervisor"]}
    values: dict[str, Any] = {}
    for name in CONTROL_SETTINGS:
        setting = declared[name]
        raw = supervisor.get(name, setting.default)
        values[name] = None if raw is None else setting.parse(raw, context, setting.key)
    problem = syntax
    if problem is None:
        try:
            parse_config(data, path=absolute, base_dir=base_dir)
        except ConfigError as error:
            problem = error
    return ControlConfig(absolute, problem=problem, **values)


def _supervisor_table_text(text: str) -> str:
    """The ``[supervisor]`` table's lines (header to the next table header), to decode on its
    own when a syntax error elsewhere makes the whole file undecodable."""
    lines: list[str] = []
    inside = False
    for line in text.splitlines():
        header = line.split("#", 1)[0].strip()
        if header.startswith("["):
            inside = header == "[supervisor]"
        if inside:
            lines.append(line)
    return "\n".join(lines) + "\n" if lines else ""

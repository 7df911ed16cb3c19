"""Tests for audiogw.shared.config: the TOML contract in SPEC.md."""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import string
import textwrap
import wave
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiogw.shared.apps import BUILTIN_APPS
from audiogw.shared.config import (
    EXTENSION_ID_PATTERN,
    AudioSocketSettings,
    AsteriskSettings,
    AgentSettings,
    Config,
    ConfigError,
    Defaults,
    ExtensionConfig,
    SupervisorSettings,
    allocate_ports,
    default_config_path,
    load_config,
    parse_config,
    parse_option,
    resolve_path,
    validate_extension_id,
    validate_port,
)
from audiogw.shared.settings import REFERENCE_VALUES, RELOAD_NOTES, SECTIONS, ClusterSettings, reference_text, toml_value
from audiogw.shared.settings import main as settings_main

REPO = Path(__file__).resolve().parent.parent

FULL = """
[supervisor]
control = "ipc://var/run/control.sock"
metrics = "127.0.0.1:9464"
state_dir = "var"
heartbeat_interval = 0.25
heartbeat_timeout = 2
backoff_initial = 0.5
backoff_max = 20.0
flap_window = 30.0
flap_max_restarts = 3
drain_seconds = 4.5
log_format = "json"
log_level = "debug"

[audiosocket]
bind = "0.0.0.0"
port_range = [41000, 41099]
allow = ["127.0.0.0/8", "10.1.2.3/16", "::1"]
uuid_timeout = 2.5
lead_frames = 4
outbound_buffer_seconds = 1.5
inbound_buffer_frames = 25
max_write_buffer = 32768
realtime_priority = 10

[defaults]
app = "echo"
options = { rate = 16000 }

[[extension]]
id = "1201"
ia_port = 40000
retorno_port = 40001
app = "agent"
options = { url = "ws://127.0.0.1:8765/media", rate = 8000 }

[[extension]]
id = "*12#"
ia_port = 50000
retorno_port = 50001
"""


def write(tmp_path: Path, text: str, name: str = "audiogw.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str, **kwargs) -> ConfigError:
    """Load text that must be refused; check the error names the file."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    error = info.value
    assert error.file == str(path)
    assert str(path) in str(error)
    assert error.key in str(error)
    assert error.reason in str(error)
    return error


def extension_table(**overrides) -> dict:
    table = {"id": "1201", "ia_port": 40000, "retorno_port": 40001, "app": "echo"}
    table.update(overrides)
    return table


# ----------------------------------------------------------------- happy paths


def test_full_file_round_trips_into_dataclasses(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    config = load_config(path)
    assert isinstance(config, Config)
    assert config.path == str(path)
    assert config.base_dir == str(tmp_path)

    supervisor = config.supervisor
    assert isinstance(supervisor, SupervisorSettings)
    assert supervisor.control == f"ipc://{tmp_path}/var/run/control.sock"
    assert (supervisor.metrics_host, supervisor.metrics_port) == ("127.0.0.1", 9464)
    assert supervisor.state_dir == str(tmp_path / "var")
    assert supervisor.heartbeat_interval == 0.25
    assert supervisor.heartbeat_timeout == 2.0 and isinstance(supervisor.heartbeat_timeout, float)
    assert supervisor.backoff_initial == 0.5
    assert supervisor.backoff_max == 20.0
    assert supervisor.flap_window == 30.0
    assert supervisor.flap_max_restarts == 3
    assert supervisor.drain_seconds == 4.5
    assert supervisor.log_format == "json"
    assert supervisor.log_level == "debug"
    assert supervisor.curve_server_secret_key is None
    assert supervisor.curve_server_public_key is None
    assert supervisor.curve_authorized_clients is None
    assert supervisor.curve_client_secret_key is None

    audiosocket = config.audiosocket
    assert isinstance(audiosocket, AudioSocketSettings)
    assert audiosocket.bind == "0.0.0.0"
    assert audiosocket.port_range == (41000, 41099)
    assert audiosocket.allow == ("127.0.0.0/8", "10.1.0.0/16", "::1/128")
    assert audiosocket.uuid_timeout == 2.5
    assert audiosocket.lead_frames == 4
    assert audiosocket.outbound_buffer_seconds == 1.5
    assert audiosocket.inbound_buffer_frames == 25
    assert audiosocket.max_write_buffer == 32768
    assert audiosocket.realtime_priority == 10

    assert config.defaults == Defaults(app="echo", options={"rate": 16000})

    first, second = config.extensions
    assert first == ExtensionConfig(
        id="1201",
        ia_port=40000,
        retorno_port=40001,
        app="agent",
        # the extension's options win over defaults.options, the rest is inherited
        options={"rate": 8000, "url": "ws://127.0.0.1:8765/media"},
    )
    assert second.id == "*12#"
    assert second.app == "echo"  # from defaults.app
    assert second.options == {"rate": 16000}
    assert (second.ia_port, second.retorno_port) == (50000, 50001)  # outside port_range is fine

    assert config.extension("1201") is first
    assert config.extension("*12#") is second
    assert config.extension("9999") is None


def test_dataclasses_are_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.supervisor.metrics_port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.extensions[0].app = "echo"  # type: ignore[misc]
    assert not hasattr(config.extensions[0], "__dict__")  # slots


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    supervisor = config.supervisor
    assert supervisor.control == f"ipc://{tmp_path}/var/run/control.sock"
    assert (supervisor.metrics_host, supervisor.metrics_port) == ("127.0.0.1", 9464)
    assert supervisor.state_dir == str(tmp_path / "var")
    assert supervisor.heartbeat_interval == 1.0
    assert supervisor.heartbeat_timeout == 3.0
    assert supervisor.backoff_initial == 0.0
    assert supervisor.backoff_max == 30.0
    assert supervisor.flap_window == 10.0
    assert supervisor.flap_max_restarts == 5
    assert supervisor.drain_seconds == 10.0
    assert supervisor.log_format == "human"
    assert supervisor.log_level == "info"
    assert config.audiosocket == AudioSocketSettings(
        bind="0.0.0.0",
        port_range=(30000, 30999),
        allow=("127.0.0.0/8",),
        uuid_timeout=5.0,
        lead_frames=3,
        outbound_buffer_seconds=2.0,
        inbound_buffer_frames=50,
        max_write_buffer=65536,
        realtime_priority=10,
        max_latency_ms=100,
        listen_backlog=512,
    )
    assert config.defaults == Defaults(app="echo", options={})
    assert config.extensions == ()


def test_parse_config_from_mapping_without_file(tmp_path: Path) -> None:
    config = parse_config({"extension": [extension_table()]}, path=None, base_dir=str(tmp_path))
    assert config.path is None
    assert config.base_dir == str(tmp_path)
    assert config.extensions[0].id == "1201"
    with pytest.raises(ConfigError) as info:
        parse_config({"supervisor": {"metrics": 9464}}, path=None, base_dir=str(tmp_path))
    assert info.value.file is None
    assert info.value.key == "supervisor.metrics"
    assert str(info.value) == "supervisor.metrics: expected a string, got integer"


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "keys" / "clients").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    path = write(
        folder,
        """
        [supervisor]
        control = "tcp://127.0.0.1:5555"
        state_dir = "../state"
        curve_server_secret_key = "keys/server.key_secret"
        curve_server_public_key = "/abs/server.key"
        curve_authorized_clients = "keys/clients"
        curve_client_secret_key = "keys/client.key_secret"
        """,
    )
    config = load_config(os.path.relpath(path, elsewhere))
    assert config.path == str(path)
    assert config.base_dir == str(folder)
    assert config.supervisor.state_dir == str(tmp_path / "state")
    assert config.supervisor.curve_server_secret_key == str(folder / "keys" / "server.key_secret")
    assert config.supervisor.curve_server_public_key == "/abs/server.key"
    assert config.supervisor.curve_authorized_clients == str(folder / "keys" / "clients")
    assert config.supervisor.curve_client_secret_key == str(folder / "keys" / "client.key_secret")
    assert config.supervisor.control == "tcp://127.0.0.1:5555"


def test_ipc_control_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[supervisor]\ncontrol = "ipc:///run/audiogw/control.sock"\n'))
    assert config.supervisor.control == "ipc:///run/audiogw/control.sock"
    config = load_config(write(tmp_path, '[supervisor]\ncontrol = "ipc://../up/c.sock"\n'))
    assert config.supervisor.control == f"ipc://{tmp_path.parent}/up/c.sock"
    config = load_config(write(tmp_path, '[supervisor]\ncontrol = "ipc://@audiogw-control"\n'))
    assert config.supervisor.control == "ipc://@audiogw-control"  # abstract socket, left alone


def test_resolve_path_and_default_config_path(tmp_path: Path, monkeypatch) -> None:
    assert resolve_path("/etc/audiogw", "var") == "/etc/audiogw/var"
    assert resolve_path("/etc/audiogw", "../var/run") == "/etc/var/run"
    assert resolve_path("/etc/audiogw", "/srv/x") == "/srv/x"
    monkeypatch.chdir(tmp_path)
    assert resolve_path("conf", "x") == str(tmp_path / "conf" / "x")

    monkeypatch.delenv("AUDIOGW_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    if not os.path.exists("/etc/audiogw/audiogw.toml"):
        with pytest.raises(ConfigError, match="audiogw init"):
            default_config_path()
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "audiogw.toml").write_text("")
    assert default_config_path() == "./etc/audiogw.toml"
    assert default_config_path("given.toml") == "given.toml"
    monkeypatch.setenv("AUDIOGW_CONFIG", "/srv/gw.toml")
    assert default_config_path() == "/srv/gw.toml"


def test_metrics_forms(tmp_path: Path) -> None:
    cases = {
        "[::1]:9464": ("::1", 9464),
        "0.0.0.0:0": ("0.0.0.0", 0),
        "localhost:8000": ("localhost", 8000),
    }
    for text, expected in cases.items():
        config = load_config(write(tmp_path, f'[supervisor]\nmetrics = "{text}"\n'))
        assert (config.supervisor.metrics_host, config.supervisor.metrics_port) == expected


def test_log_choices_are_case_insensitive(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[supervisor]\nlog_level = "WARNING"\nlog_format = "Json"\n'))
    assert config.supervisor.log_level == "warning"
    assert config.supervisor.log_format == "json"


def test_shipped_config_loads() -> None:
    path = REPO / "etc" / "audiogw.toml"
    config = load_config(path)
    assert config.path == str(path)
    assert config.supervisor.control == f"ipc://{REPO}/var/run/control.sock"
    assert config.supervisor.state_dir == str(REPO / "var")
    assert (config.supervisor.metrics_host, config.supervisor.metrics_port) == ("127.0.0.1", 9464)
    assert config.supervisor.demo_agent == ("127.0.0.1", 8765)
    assert config.audiosocket.bind == "127.0.0.1"
    assert config.audiosocket.port_range == (30000, 30999)  # below Linux's ephemeral range (32768-60999)
    assert config.audiosocket.allow == ("127.0.0.0/8",)
    assert config.defaults.app == "echo"
    assert [ext.to_dict() for ext in config.extensions] == [
        {"id": "1201", "ia_port": 30000, "retorno_port": 30001, "app": "agent",
         "options": {"url": "ws://127.0.0.1:8765/media", "barge_in": True}},
        {"id": "1202", "ia_port": 30002, "retorno_port": 30003, "app": "bridge", "options": {}},
        {"id": "1210", "ia_port": 30004, "retorno_port": 30005, "app": "agent",
         "options": {"url": "ws://127.0.0.1:8765/doorman"}},
    ]


# ------------------------------------------------------------ file-level refusals


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert info.value.key == ""
    assert info.value.reason.startswith("cannot read: ")
    assert str(info.value).startswith(f"{path}: cannot read: ")


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    error = refused(tmp_path, '[supervisor]\nmetrics = "127.0.0.1:9464"\nstate_dir var\n')
    assert error.key == ""
    assert error.reason.startswith("invalid TOML: line 3")


def test_invalid_toml_at_end_of_file(tmp_path: Path) -> None:
    error = refused(tmp_path, '[supervisor]\nmetrics = "127.0.0.1')
    assert error.reason.startswith("invalid TOML: line 2")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[defaults]\napp = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "UTF-8" in info.value.reason


# ------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("text", "key", "suggestion"),
    [
        ("[supervisor]\nmetric = '127.0.0.1:1'\n", "supervisor.metric", "metrics"),
        ("[audiosocket]\nport_rang = [1, 2]\n", "audiosocket.port_rang", "port_range"),
        ("[defaults]\napps = 'echo'\n", "defaults.apps", "app"),
        ("[[extensions]]\nid = '1'\n", "extensions", "extension"),
        (
            "[[extension]]\nid = '1'\nia_port = 1\nretorno_port = 2\nretorno = 3\n",
            "extension[0].retorno",
            "retorno_port",
        ),
    ],
)
def test_unknown_key_suggests_the_closest(tmp_path: Path, text: str, key: str, suggestion: str) -> None:
    error = refused(tmp_path, text)
    assert error.key == key
    assert error.reason.startswith(f"unknown key '{key.rsplit('.', 1)[-1]}'")
    assert f"did you mean '{suggestion}'?" in error.reason


def test_unknown_key_without_close_match_lists_known(tmp_path: Path) -> None:
    error = refused(tmp_path, "[zzzz]\n")
    assert error.key == "zzzz"
    assert "unknown key 'zzzz'" in error.reason
    assert "did you mean" not in error.reason
    assert "supervisor" in error.reason


def test_single_extension_table_hints_double_brackets(tmp_path: Path) -> None:
    error = refused(tmp_path, "[extension]\nid = '1'\n")
    assert error.key == "extension"
    assert "[[extension]]" in error.reason


# ---------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[supervisor]\nheartbeat_interval = 'fast'\n", "supervisor.heartbeat_interval", "expected a number, got string"),
        ("[supervisor]\ndrain_seconds = true\n", "supervisor.drain_seconds", "expected a number, got boolean"),
        ("[supervisor]\nflap_max_restarts = 2.5\n", "supervisor.flap_max_restarts", "expected an integer, got float"),
        ("[supervisor]\nflap_max_restarts = true\n", "supervisor.flap_max_restarts", "expected an integer, got boolean"),
        ("[supervisor]\ncontrol = 5\n", "supervisor.control", "expected a string, got integer"),
        ("[supervisor]\nstate_dir = ['a']\n", "supervisor.state_dir", "expected a string, got array"),
        ("supervisor = 3\n", "supervisor", "expected a table, got integer"),
        ("[audiosocket]\nallow = '127.0.0.0/8'\n", "audiosocket.allow", "expected an array, got string"),
        ("[audiosocket]\nallow = [7]\n", "audiosocket.allow[0]", "expected a string, got integer"),
        ("[audiosocket]\nlead_frames = false\n", "audiosocket.lead_frames", "expected an integer, got boolean"),
        ("[audiosocket]\nmax_write_buffer = 1e6\n", "audiosocket.max_write_buffer", "expected an integer, got float"),
        ("[audiosocket]\nuuid_timeout = nan\n", "audiosocket.uuid_timeout", "finite"),
        ("[defaults]\noptions = 'x'\n", "defaults.options", "expected a table, got string"),
        ("[defaults]\napp = 1\n", "defaults.app", "expected a string, got integer"),
        ("extension = [1]\n", "extension[0]", "expected a table, got integer"),
    ],
)
def test_wrong_types_refused(tmp_path: Path, text: str, key: str, reason: str) -> None:
    error = refused(tmp_path, text)
    assert error.key == key
    assert reason in error.reason


@pytest.mark.parametrize("field", ["ia_port", "retorno_port"])
def test_bool_is_not_a_port(tmp_path: Path, field: str) -> None:
    table = extension_table(**{field: True})
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in table.items())
    error = refused(tmp_path, f"[[extension]]\n{lines}\n")
    assert error.key == f"extension[0].{field}"
    assert "boolean" in error.reason


def test_bool_port_in_port_range_refused(tmp_path: Path) -> None:
    error = refused(tmp_path, "[audiosocket]\nport_range = [true, 40999]\n")
    assert error.key == "audiosocket.port_range"
    assert "boolean" in error.reason


# ---------------------------------------------------------------- value refusals


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[supervisor]\nheartbeat_interval = 0\n", "supervisor.heartbeat_interval", "greater than 0"),
        (
            "[supervisor]\nheartbeat_interval = 1.0\nheartbeat_timeout = 1.0\n",
            "supervisor.heartbeat_timeout",
            "longer than heartbeat_interval",
        ),
        ("[supervisor]\nbackoff_initial = -1\n", "supervisor.backoff_initial", "at least 0"),
        (
            "[supervisor]\nbackoff_initial = 5\nbackoff_max = 2\n",
            "supervisor.backoff_max",
            "less than backoff_initial",
        ),
        ("[supervisor]\nflap_window = 0\n", "supervisor.flap_window", "greater than 0"),
        ("[supervisor]\nflap_max_restarts = 0\n", "supervisor.flap_max_restarts", "outside"),
        ("[supervisor]\ndrain_seconds = -0.1\n", "supervisor.drain_seconds", "at least 0"),
        ("[supervisor]\nlog_format = 'xml'\n", "supervisor.log_format", "human, json"),
        ("[supervisor]\nlog_level = 'inf'\n", "supervisor.log_level", "did you mean 'info'?"),
        ("[supervisor]\nstate_dir = ''\n", "supervisor.state_dir", "empty"),
        ("[audiosocket]\nbind = 'localhost'\n", "audiosocket.bind", "not an IPv4 or IPv6 address"),
        ("[audiosocket]\nbind = '300.1.1.1'\n", "audiosocket.bind", "not an IPv4 or IPv6 address"),
        ("[audiosocket]\nport_range = [40999, 40000]\n", "audiosocket.port_range", "above high port"),
        ("[audiosocket]\nport_range = [40000]\n", "audiosocket.port_range", "[LOW, HIGH]"),
        ("[audiosocket]\nport_range = [0, 10]\n", "audiosocket.port_range", "port 0 outside 1-65535"),
        ("[audiosocket]\nport_range = [1, 70000]\n", "audiosocket.port_range", "port 70000 outside 1-65535"),
        ("[audiosocket]\nallow = ['10.0.0.0/33']\n", "audiosocket.allow[0]", "not an address or CIDR"),
        ("[audiosocket]\nallow = ['asterisk.local']\n", "audiosocket.allow[0]", "not an address or CIDR"),
        ("[audiosocket]\nallow = []\n", "audiosocket.allow", "no peer could connect"),
        ("[audiosocket]\nuuid_timeout = 0\n", "audiosocket.uuid_timeout", "greater than 0"),
        ("[audiosocket]\nlead_frames = 0\n", "audiosocket.lead_frames", "0 outside 1-50"),
        ("[audiosocket]\nlead_frames = 51\n", "audiosocket.lead_frames", "51 outside 1-50"),
        ("[audiosocket]\noutbound_buffer_seconds = 0\n", "audiosocket.outbound_buffer_seconds", "greater than 0"),
        (
            "[audiosocket]\nlead_frames = 10\noutbound_buffer_seconds = 0.1\n",
            "audiosocket.outbound_buffer_seconds",
            "cannot hold lead_frames",
        ),
        ("[audiosocket]\ninbound_buffer_frames = 0\n", "audiosocket.inbound_buffer_frames", "outside"),
        ("[audiosocket]\nmax_write_buffer = 100\n", "audiosocket.max_write_buffer", "outside"),
        ("[audiosocket]\nrealtime_priority = 100\n", "audiosocket.realtime_priority", "100 outside 0-99"),
        ("[audiosocket]\nrealtime_priority = -1\n", "audiosocket.realtime_priority", "-1 outside 0-99"),
        ("[audiosocket]\nrealtime_priority = 'high'\n", "audiosocket.realtime_priority", "expected an integer"),
        ("[defaults]\napp = 'ecko'\n", "defaults.app", "did you mean 'echo'?"),
        ("[defaults]\noptions = { 1x = 2 }\n", "defaults.options", "option name '1x'"),
        ("[defaults]\noptions = { when = 2024-01-01 }\n", "defaults.options.when", "not allowed in options"),
    ],
)
def test_bad_values_refused(tmp_path: Path, text: str, key: str, reason: str) -> None:
    error = refused(tmp_path, text)
    assert error.key == key
    assert reason in error.reason


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ("9464", "has no port"),
        ("127.0.0.1", "has no port"),
        (":9464", "has no host"),
        ("::1:9464", "IPv6 addresses need brackets"),
        ("[::1]9464", "[IPV6]:PORT"),
        ("[127.0.0.1]:9464", "not an IPv6 address"),
        ("127.0.0.1:http", "is not a number"),
        ("127.0.0.1:65536", "port 65536 outside 0-65535"),
        ("bad host!:1", "not an IP address or host name"),
    ],
)
def test_bad_metrics_refused(tmp_path: Path, metrics: str, reason: str) -> None:
    error = refused(tmp_path, f'[supervisor]\nmetrics = "{metrics}"\n')
    assert error.key == "supervisor.metrics"
    assert reason in error.reason


@pytest.mark.parametrize(
    ("control", "reason"),
    [
        ("inproc://x", "must start with ipc:// or tcp://"),
        ("/var/run/control.sock", "must start with ipc:// or tcp://"),
        ("ipc://", "needs a socket path"),
        ("tcp://127.0.0.1", "has no port"),
        ("tcp://127.0.0.1:0", "port 0 outside 1-65535"),
        ("tcp://*:5555", "instead of '*'"),
        ("ipc://" + "x" * 120, "system limit"),
    ],
)
def test_bad_control_refused(tmp_path: Path, control: str, reason: str) -> None:
    error = refused(tmp_path, f'[supervisor]\ncontrol = "{control}"\n')
    assert error.key == "supervisor.control"
    assert reason in error.reason


def test_tcp_control_requires_both_curve_keys(tmp_path: Path) -> None:
    error = refused(tmp_path, '[supervisor]\ncontrol = "tcp://127.0.0.1:5555"\n')
    assert error.key == "supervisor.curve_server_secret_key"
    assert "required when control is tcp://" in error.reason
    error = refused(
        tmp_path,
        '[supervisor]\ncontrol = "tcp://127.0.0.1:5555"\ncurve_server_secret_key = "k"\n',
    )
    assert error.key == "supervisor.curve_server_public_key"
    assert "required" in error.reason


def test_ipc_control_refuses_curve_keys(tmp_path: Path) -> None:
    error = refused(tmp_path, '[supervisor]\ncurve_server_public_key = "k.pub"\n')
    assert error.key == "supervisor.curve_server_public_key"
    assert "only used with a tcp://" in error.reason


def test_tcp_ipv6_control(tmp_path: Path) -> None:
    (tmp_path / "clients").mkdir()
    config = load_config(
        write(
            tmp_path,
            '[supervisor]\ncontrol = "tcp://[::1]:5555"\n'
            'curve_server_secret_key = "s"\ncurve_server_public_key = "p"\ncurve_authorized_clients = "clients"\n',
        )
    )
    assert config.supervisor.control == "tcp://[::1]:5555"
    assert config.supervisor.curve_client_secret_key is None  # optional: ctl can take --client-key


TCP_WITH_SERVER_KEYS = '[supervisor]\ncontrol = "tcp://127.0.0.1:5555"\ncurve_server_secret_key = "s"\ncurve_server_public_key = "p"\n'


def test_tcp_control_requires_authorized_clients(tmp_path: Path) -> None:
    error = refused(tmp_path, TCP_WITH_SERVER_KEYS)
    assert error.key == "supervisor.curve_authorized_clients"
    assert "required when control is tcp://" in error.reason and "*.key" in error.reason


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda folder: None, "does not exist"),
        (lambda folder: folder.write_text("x"), "is not a folder"),
    ],
)
def test_authorized_clients_must_be_a_folder(tmp_path: Path, make, reason: str) -> None:
    make(tmp_path / "clients")
    error = refused(tmp_path, TCP_WITH_SERVER_KEYS + 'curve_authorized_clients = "clients"\n')
    assert error.key == "supervisor.curve_authorized_clients"
    assert reason in error.reason
    assert str(tmp_path / "clients") in error.reason


@pytest.mark.parametrize(
    ("line", "key", "reason"),
    [
        ('curve_authorized_clients = "clients"', "supervisor.curve_authorized_clients", "only used with a tcp://"),
        ('curve_client_secret_key = "c.key_secret"', "supervisor.curve_client_secret_key", "only used with a tcp://"),
        ('curve_authorized_clients = 3', "supervisor.curve_authorized_clients", "expected a string"),
        ('curve_authorized_clients = ""', "supervisor.curve_authorized_clients", "empty path"),
    ],
)
def test_ipc_control_refuses_client_curve_keys(tmp_path: Path, line: str, key: str, reason: str) -> None:
    (tmp_path / "clients").mkdir()
    error = refused(tmp_path, f"[supervisor]\n{line}\n")
    assert error.key == key
    assert reason in error.reason


# ---------------------------------------------------------------- extensions


def extensions_text(*tables: dict, extra: str = "") -> str:
    parts = [extra]
    for table in tables:
        lines = []
        for key, value in table.items():
            if key == "options" and isinstance(value, dict):
                inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                lines.append(f"options = {{ {inner} }}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
        parts.append("[[extension]]\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)


@pytest.mark.parametrize("missing", ["id", "ia_port", "retorno_port"])
def test_extension_required_keys(tmp_path: Path, missing: str) -> None:
    table = extension_table()
    del table[missing]
    error = refused(tmp_path, extensions_text(table))
    assert error.key == f"extension[0].{missing}"
    assert "missing required key" in error.reason


def test_extension_id_must_be_quoted(tmp_path: Path) -> None:
    error = refused(tmp_path, "[[extension]]\nid = 1201\nia_port = 1\nretorno_port = 2\n")
    assert error.key == "extension[0].id"
    assert "expected a string, got integer" in error.reason
    assert 'id = "1201"' in error.reason


@pytest.mark.parametrize("bad_id", ["", "12a", "1 2", "+1201", "1" * 33])
def test_extension_bad_id(tmp_path: Path, bad_id: str) -> None:
    table = extension_table(id=bad_id)
    error = refused(tmp_path, extensions_text(extension_table(id="1"), dict(table, ia_port=2, retorno_port=3)))
    assert error.key == "extension[1].id"
    assert error.reason


@pytest.mark.parametrize(("field", "port"), [("ia_port", 0), ("ia_port", 70000), ("retorno_port", -1)])
def test_extension_port_out_of_range(tmp_path: Path, field: str, port: int) -> None:
    error = refused(tmp_path, extensions_text(extension_table(**{field: port})))
    assert error.key == f"extension[0].{field}"
    assert f"port {port} outside 1-65535" in error.reason


def test_extension_same_port_for_both_legs(tmp_path: Path) -> None:
    error = refused(tmp_path, extensions_text(extension_table(ia_port=40000, retorno_port=40000)))
    assert error.key == "extension[0].retorno_port"
    assert "same port as ia_port (40000)" in error.reason


def test_extension_unknown_app(tmp_path: Path) -> None:
    error = refused(tmp_path, extensions_text(extension_table(app="agnet")))
    assert error.key == "extension[0].app"
    assert "unknown app 'agnet'" in error.reason
    assert "did you mean 'agent'?" in error.reason


def test_app_outside_the_registry_by_reference(tmp_path: Path) -> None:
    reference = "audiogw.bench.stall_app:StallApp"
    path = write(tmp_path, extensions_text(extension_table(app=reference)))
    assert load_config(path).extensions[0].app == reference
    error = refused(tmp_path, extensions_text(extension_table(app="karaoke")))
    assert error.key == "extension[0].app"
    assert set(BUILTIN_APPS) == {"echo", "playback", "bridge", "agent"}


def test_default_app_must_be_known_too(tmp_path: Path) -> None:
    error = refused(tmp_path, "[defaults]\napp = 'karaoke'\n")
    assert error.key == "defaults.app"


def test_duplicate_ids_refused(tmp_path: Path) -> None:
    text = extensions_text(
        extension_table(id="1201", ia_port=1, retorno_port=2),
        extension_table(id="1202", ia_port=3, retorno_port=4),
        extension_table(id="1201", ia_port=5, retorno_port=6),
    )
    error = refused(tmp_path, text)
    assert error.key == "extension[2].id"
    assert "duplicate id '1201'" in error.reason
    assert "extension[0]" in error.reason


@pytest.mark.parametrize(
    ("second", "key"),
    [
        ({"ia_port": 40001, "retorno_port": 40005}, "extension[1].ia_port"),
        ({"ia_port": 40005, "retorno_port": 40000}, "extension[1].retorno_port"),
    ],
)
def test_duplicate_ports_refused_naming_both(tmp_path: Path, second: dict, key: str) -> None:
    text = extensions_text(
        extension_table(id="1201", ia_port=40000, retorno_port=40001),
        extension_table(id="1202", **second),
    )
    error = refused(tmp_path, text)
    assert error.key == key
    assert "used twice" in error.reason
    assert "'1201'" in error.reason and "'1202'" in error.reason
    assert "extension[0]" in error.reason and "extension[1]" in error.reason


def test_extension_port_clashing_with_metrics(tmp_path: Path) -> None:
    extra = '[supervisor]\nmetrics = "0.0.0.0:40001"\n'
    error = refused(tmp_path, extensions_text(extension_table(), extra=extra))
    assert error.key == "extension[0].retorno_port"
    assert "supervisor.metrics" in error.reason
    # a different, specific address on each side does not collide
    extra = '[supervisor]\nmetrics = "127.0.0.1:40001"\n[audiosocket]\nbind = "10.0.0.5"\n'
    config = load_config(write(tmp_path, extensions_text(extension_table(), extra=extra)))
    assert config.extensions[0].retorno_port == 40001


def test_extension_options(tmp_path: Path) -> None:
    with wave.open(str(tmp_path / "a.wav"), "wb") as prompt:  # next to the config file
        prompt.setnchannels(1), prompt.setsampwidth(2), prompt.setframerate(8000), prompt.writeframes(b"\0\0" * 80)
    text = extensions_text(extension_table(app="playback", options={"file": "a.wav", "loop": True}))
    config = load_config(write(tmp_path, text))
    assert config.extensions[0].options == {"file": "a.wav", "loop": True}
    json.dumps(config.extensions[0].to_dict())  # JSON-able

    error = refused(tmp_path, extensions_text(extension_table(options="x")))
    assert error.key == "extension[0].options"
    assert "expected a table, got string" in error.reason


def test_extension_options_nested_values(tmp_path: Path) -> None:
    text = (
        "[[extension]]\nid = '1'\nia_port = 1\nretorno_port = 2\napp = 'agent'\n"
        "options = { url = 'ws://x', headers = { x = 'y' } }\n"
    )
    config = load_config(write(tmp_path, text))
    assert config.extensions[0].options == {"url": "ws://x", "headers": {"x": "y"}}


# ------------------------------------------------------ ExtensionConfig dicts


def test_extension_to_dict_from_dict_round_trip() -> None:
    extension = ExtensionConfig("1201", 40000, 40001, "agent", {"url": "ws://x", "headers": {"a": "b"}})
    data = extension.to_dict()
    assert data == {
        "id": "1201",
        "ia_port": 40000,
        "retorno_port": 40001,
        "app": "agent",
        "options": {"url": "ws://x", "headers": {"a": "b"}},
    }
    assert ExtensionConfig.from_dict(json.loads(json.dumps(data))) == extension
    data["options"]["headers"]["c"] = "d"  # a copy: the extension is not changed
    assert extension.options == {"url": "ws://x", "headers": {"a": "b"}}


def test_extension_options_are_copied_on_construction() -> None:
    options = {"a": 1}
    extension = ExtensionConfig("1", 1, 2, "echo", options)
    options["a"] = 2
    assert extension.options == {"a": 1}
    assert type(extension.options) is dict


def test_from_dict_refusals_name_source_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        ExtensionConfig.from_dict(
            extension_table(ia_port=40000.0), source="/var/state.json", key="extensions[3]"
        )
    assert info.value.file == "/var/state.json"
    assert info.value.key == "extensions[3].ia_port"
    assert "float" in info.value.reason

    with pytest.raises(ConfigError) as info:
        ExtensionConfig.from_dict(extension_table(colour="red"))
    assert info.value.key == "extension.colour"
    assert "unknown key 'colour'" in info.value.reason

    with pytest.raises(ConfigError) as info:
        ExtensionConfig.from_dict(extension_table(app="karaoke"))
    assert info.value.key == "extension.app"

    table = extension_table()
    del table["app"]
    with pytest.raises(ConfigError) as info:
        ExtensionConfig.from_dict(table)
    assert info.value.key == "extension.app"
    assert "missing" in info.value.reason

    with pytest.raises(ConfigError) as info:
        ExtensionConfig.from_dict(["1201"])  # type: ignore[arg-type]
    assert info.value.key == "extension"
    assert "expected a table, got array" in info.value.reason

    with pytest.raises(ConfigError) as info:
        ExtensionConfig.from_dict(extension_table(options={"x": None}))
    assert info.value.key == "extension.options.x"


def test_from_dict_with_defaults_fills_app_and_merges_options() -> None:
    table = extension_table(options={"url": "ws://b"})
    del table["app"]
    defaults = Defaults(app="agent", options={"url": "ws://a", "barge_in": True})
    extension = ExtensionConfig.from_dict(table, defaults=defaults)
    assert extension.app == "agent"
    assert extension.options == {"url": "ws://b", "barge_in": True}


def test_direct_construction_checks_invariants() -> None:
    with pytest.raises(ConfigError):
        ExtensionConfig("12a", 1, 2, "echo", {})
    with pytest.raises(ConfigError):
        ExtensionConfig("1", 1, 1, "echo", {})
    with pytest.raises(ConfigError):
        ExtensionConfig("1", True, 2, "echo", {})  # type: ignore[arg-type]


# ---------------------------------------------------------------- ConfigError


def test_config_error_text_and_pickling() -> None:
    error = ConfigError("/etc/gw.toml", "extension[1].ia_port", "port 70000 outside 1-65535")
    assert (error.file, error.key, error.reason) == ("/etc/gw.toml", "extension[1].ia_port", "port 70000 outside 1-65535")
    assert str(error) == "/etc/gw.toml: extension[1].ia_port: port 70000 outside 1-65535"
    assert isinstance(error, ValueError)
    assert str(ConfigError(None, "id", "bad")) == "id: bad"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.file, copy.key, copy.reason) == (error.file, error.key, error.reason)


# ------------------------------------------------------------ small validators


def test_validate_port() -> None:
    assert validate_port(1) == 1
    assert validate_port(65535) == 65535
    for bad in (0, 65536, -5):
        with pytest.raises(ConfigError) as info:
            validate_port(bad, "extension.ia_port")
        assert info.value.key == "extension.ia_port"
        assert info.value.reason == f"port {bad} outside 1-65535"
    for bad in (True, False, 1.0, "40000", None):
        with pytest.raises(ConfigError) as info:
            validate_port(bad)
        assert info.value.key == "port"
        assert info.value.file is None


VALID_ID = st.text(alphabet="0123456789*#", min_size=1, max_size=32)


@given(VALID_ID)
def test_valid_extension_ids_accepted(value: str) -> None:
    assert validate_extension_id(value) == value
    assert EXTENSION_ID_PATTERN.match(value)


@given(
    st.text(alphabet="0123456789*#", max_size=20),
    st.characters().filter(lambda char: char not in "0123456789*#"),
    st.text(alphabet="0123456789*#", max_size=11),
)
def test_ids_with_another_character_refused(prefix: str, bad: str, suffix: str) -> None:
    value = prefix + bad + suffix
    with pytest.raises(ConfigError) as info:
        validate_extension_id(value)
    assert info.value.key == "id"
    assert EXTENSION_ID_PATTERN.match(value) is None
    assert EXTENSION_ID_PATTERN.fullmatch(value) is None


@given(st.text(alphabet="0123456789*#", min_size=33, max_size=200))
def test_ids_longer_than_32_refused(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_extension_id(value)
    assert "32" in info.value.reason
    assert EXTENSION_ID_PATTERN.match(value) is None


@given(st.one_of(st.integers(), st.none(), st.booleans(), st.floats(), st.binary()))
def test_non_string_ids_refused(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        validate_extension_id(value)
    assert "expected a string" in info.value.reason


def test_trailing_newline_id_refused() -> None:
    with pytest.raises(ConfigError):
        validate_extension_id("1201\n")
    with pytest.raises(ConfigError):
        validate_extension_id("")


# ---------------------------------------------------------------- parse_option


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("loop=true", ("loop", True)),
        ("loop=false", ("loop", False)),
        ("count=3", ("count", 3)),
        ("gain=1.5", ("gain", 1.5)),
        ('name="x y"', ("name", "x y")),
        ("file=/tmp/hello.wav", ("file", "/tmp/hello.wav")),
        ("url=ws://127.0.0.1:8765/media", ("url", "ws://127.0.0.1:8765/media")),
        ("greeting=hello world", ("greeting", "hello world")),
        ("empty=", ("empty", "")),
        ("expr=a=b", ("expr", "a=b")),
        ("codes=[1, 2]", ("codes", [1, 2])),
        ("when=2024-01-01", ("when", "2024-01-01")),  # dates are not JSON: kept as text
        ("ratio=nan", ("ratio", "nan")),
        ("_private=1", ("_private", 1)),
        ("x=1\ny = 2", ("x", "1\ny = 2")),  # no smuggling a second key
    ],
)
def test_parse_option(text: str, expected: tuple[str, object]) -> None:
    result = parse_option(text)
    assert result == expected
    assert type(result[1]) is type(expected[1])


@pytest.mark.parametrize("text", ["loop", "=1", "1x=2", "a-b=1", "a.b=1", " a=1", "ñ=1"])
def test_parse_option_refused(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_option(text)
    assert info.value.file is None
    assert info.value.key == "option"
    assert info.value.reason


@settings(max_examples=200)
@given(st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z"), st.text(max_size=40))
def test_parse_option_never_crashes_and_keeps_the_key(key: str, value: str) -> None:
    name, parsed = parse_option(f"{key}={value}")
    assert name == key
    json.dumps(parsed)  # always JSON-able, ready for the state file
    if isinstance(parsed, str) and "\n" not in value and not value.strip().startswith(('"', "'")):
        assert parsed == value


# ---------------------------------------------------------------- allocate_ports


def test_allocate_ports_lowest_free() -> None:
    assert allocate_ports((40000, 40999), set()) == [40000, 40001]
    assert allocate_ports((40000, 40999), {40000, 40002}) == [40001, 40003]
    assert allocate_ports((40000, 40999), {40001}, count=3) == [40000, 40002, 40003]
    assert allocate_ports((5, 5), set(), count=1) == [5]
    assert allocate_ports((5, 5), {5}, count=0) == []


def test_allocate_ports_exhausted() -> None:
    with pytest.raises(ConfigError) as info:
        allocate_ports((40000, 40999), set(range(40000, 41000)))
    assert info.value.key == "audiosocket.port_range"
    assert info.value.reason.startswith("no free ports left in 40000-40999")
    with pytest.raises(ConfigError) as info:
        allocate_ports((40000, 40002), {40000, 40001})  # one free, two needed
    assert "no free ports left in 40000-40002" in info.value.reason
    assert "1 free" in info.value.reason


def test_allocate_ports_does_not_mutate_used() -> None:
    used = {40000}
    allocate_ports((40000, 40010), used)
    assert used == {40000}


@given(
    st.integers(1, 65535).flatmap(lambda low: st.tuples(st.just(low), st.integers(low, min(65535, low + 40)))),
    st.sets(st.integers(1, 65535), max_size=30),
    st.integers(1, 4),
)
def test_allocate_ports_property(port_range: tuple[int, int], used: set[int], count: int) -> None:
    low, high = port_range
    free = [port for port in range(low, high + 1) if port not in used]
    if len(free) >= count:
        assert allocate_ports(port_range, used, count) == free[:count]
    else:
        with pytest.raises(ConfigError):
            allocate_ports(port_range, used, count)


def test_every_character_class_checked() -> None:
    # the id alphabet is exactly digits, '*' and '#'
    allowed = {char for char in string.printable if EXTENSION_ID_PATTERN.match(char)}
    assert allowed == set("0123456789*#")


def test_demo_agent_address_is_validated(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).supervisor.demo_agent is None
    config = load_config(write(tmp_path, '[supervisor]\ndemo_agent = "127.0.0.1:8765"\n'))
    assert config.supervisor.demo_agent == ("127.0.0.1", 8765)
    for text, reason in (('demo_agent = "127.0.0.1"', "HOST:PORT"), ('demo_agent = "127.0.0.1:0"', "1-65535"),
                         ("demo_agent = 8765", "expected a string")):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, f"[supervisor]\n{text}\n"))
        assert info.value.key == "supervisor.demo_agent" and reason in info.value.reason, info.value
    clash = '[supervisor]\ndemo_agent = "127.0.0.1:40000"\n[audiosocket]\nbind = "127.0.0.1"\n' \
            '[[extension]]\nid = "1"\nia_port = 40000\nretorno_port = 40001\n'
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, clash))
    assert "supervisor.demo_agent" in info.value.reason


# ------------------------------------------------- declarations and the reference


def test_shipped_config_is_the_generated_reference() -> None:
    """etc/audiogw.toml is generated from the declarations: a new key cannot go undocumented.
    Regenerate with `python -m audiogw.shared.settings etc/audiogw.toml`."""
    assert (REPO / "etc" / "audiogw.toml").read_text(encoding="utf-8") == reference_text()


def test_reference_defaults_are_the_parsed_defaults(tmp_path: Path) -> None:
    """Uncommenting every default the reference shows changes nothing: the doc tells the truth."""
    text = reference_text()
    commented_defaults = [
        f"# {setting.name} = {toml_value(setting.default)}"
        for settings_ in SECTIONS.values() for setting in settings_
        if setting.default is not None and setting.key not in REFERENCE_VALUES
    ]
    assert commented_defaults and all(line in text.splitlines() for line in commented_defaults)
    uncommented = text
    for line in commented_defaults:
        uncommented = uncommented.replace(f"\n{line}\n", f"\n{line[2:]}\n")
    assert load_config(write(tmp_path, uncommented, "a.toml")) == dataclasses.replace(
        load_config(write(tmp_path, text, "b.toml")), path=str(tmp_path / "a.toml"))


def test_every_declared_key_is_documented_in_the_reference() -> None:
    text = reference_text()
    for section, settings_ in SECTIONS.items():
        body = text.split(f"[{section}]\n", 1)[1].split("\n[", 1)[0]
        for setting in settings_:
            assert f"\n{setting.name} = " in f"\n{body}" or f"\n# {setting.name} = " in f"\n{body}", setting.key
            assert f"reload: {RELOAD_NOTES[setting.reload]}" in body


def test_dataclass_defaults_are_the_declared_defaults(tmp_path: Path) -> None:
    empty = load_config(write(tmp_path, ""))
    assert empty.audiosocket == AudioSocketSettings()
    built = SupervisorSettings(control=empty.supervisor.control, state_dir=empty.supervisor.state_dir)
    assert built == empty.supervisor
    declared = [name for settings_ in SECTIONS.values() for setting in settings_ for name, _ in setting.fields]
    assert declared == [f.name for f in dataclasses.fields(SupervisorSettings)] + [
        f.name for f in dataclasses.fields(AudioSocketSettings)] + [f.name for f in dataclasses.fields(ClusterSettings)] + [
        f.name for f in dataclasses.fields(AsteriskSettings)] + [f.name for f in dataclasses.fields(AgentSettings)]
    assert empty.cluster == ClusterSettings()


def test_known_keys_come_from_the_declarations(tmp_path: Path) -> None:
    for section, settings_ in SECTIONS.items():
        error = refused(tmp_path, f"[{section}]\nzzzzzz = 1\n")
        assert error.reason == f"unknown key 'zzzzzz'; known keys: {', '.join(s.name for s in settings_)}"


def test_first_mistake_in_key_order_is_reported(tmp_path: Path) -> None:
    """Cross-key checks run as soon as their keys are read: the same error as before wins."""
    error = refused(tmp_path, "[supervisor]\nheartbeat_interval = 5\nbackoff_initial = -1\n")
    assert error.key == "supervisor.heartbeat_timeout"
    error = refused(tmp_path, "[audiosocket]\noutbound_buffer_seconds = 0.02\nmax_latency_ms = 5\n")
    assert error.key == "audiosocket.outbound_buffer_seconds"


def test_settings_entry_writes_the_reference(tmp_path: Path) -> None:
    target = tmp_path / "ref.toml"
    assert settings_main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == reference_text()
    assert settings_main(["--help"]) == 2

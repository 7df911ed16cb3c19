"""`audiogw ctl` against a scripted fake supervisor (a ZeroMQ ROUTER in a thread):
what goes on the wire, what people and scripts see, and every exit status."""
from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import zmq
import zmq.auth
from click.testing import CliRunner

from audiogw.client import ctl
from audiogw.client.cli import cli
from audiogw.client.ctl import (
    CtlProtocolError,
    CtlRefused,
    CtlUnreachable,
    ctl_group,
    format_bytes,
    format_duration,
    format_list_table,
    format_seconds_ms,
    format_status_table,
    request,
)


class Refuse:
    def __init__(self, error: str) -> None:
        self.error = error


SILENT = object()  # never answer this command


class FakeSupervisor:
    """A ROUTER answering per ``script``: command -> result | Refuse | SILENT |
    callable(request) -> list of raw reply frames (bytes)."""

    def __init__(
        self,
        endpoint: str,
        script: dict[str, Any],
        *,
        curve_secret: bytes | None = None,
        curve_public: bytes | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.frames: list[list[bytes]] = []
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        if curve_secret is not None:
            self._socket.curve_server = True
            self._socket.curve_secretkey = curve_secret
            self._socket.curve_publickey = curve_public
        self._socket.bind(endpoint)
        if endpoint.endswith(":*"):  # tcp://127.0.0.1:* -> the port the system chose
            self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(20):
                continue
            frames = self._socket.recv_multipart()
            self.frames.append(frames)
            identity, body = frames[0], frames[-1]
            message = orjson.loads(body)
            self.requests.append(message)
            answer = self.script.get(message["command"], Refuse(f"unknown command {message['command']!r}"))
            if answer is SILENT:
                continue
            if callable(answer) and not isinstance(answer, Refuse):
                replies = answer(message)
            elif isinstance(answer, Refuse):
                replies = [orjson.dumps({"id": message["id"], "ok": False, "error": answer.error})]
            else:
                replies = [orjson.dumps({"id": message["id"], "ok": True, "result": answer})]
            for reply in replies:
                self._socket.send_multipart([identity, reply])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._socket.close(linger=0)
        self._context.term()

    @property
    def last(self) -> dict[str, Any]:
        assert self.requests, "the fake supervisor received nothing"
        return self.requests[-1]


LIST_ROWS = [
    {"id": "1201", "ia_port": 40000, "retorno_port": 40001, "app": "echo", "state": "running", "pid": 4242,
     "source": "file"},
    {"id": "1202", "ia_port": 40002, "retorno_port": 40003, "app": "bridge", "state": "backoff", "pid": None,
     "source": "runtime", "reason": "exited with code 1; restart in 0.5 s"},
]

STATUS_ROWS = [
    {
        "id": "1201",
        "state": "running",
        "source": "file",
        "pid": 4242,
        "uptime": 192.7,
        "restarts": 0,
        "calls_active": 2,
        "frames_received": 15000,
        "frames_sent": 14990,
        "underruns": 3,
        "send_lateness_p99": 0.0012,
        "loop_lag_p99": 0.00045,
        "memory_bytes": 12.3 * 1024 * 1024,
        "cpu_percent": 3.25,
        "ia_port": 40000,
        "retorno_port": 40001,
        "app": "echo",
    },
    {
        "id": "1202",
        "state": "backoff",
        "source": "runtime",
        "pid": None,
        "uptime": None,
        "restarts": 7,
        "calls_active": 0,
        "frames_received": 0,
        "frames_sent": 0,
        "underruns": 0,
        "send_lateness_p99": None,
        "loop_lag_p99": None,
        "memory_bytes": None,
        "cpu_percent": None,
        "ia_port": 40002,
        "retorno_port": 40003,
        "app": "bridge",
    },
]

SCRIPT: dict[str, Any] = {
    "add-extension": lambda m: [
        orjson.dumps(
            {
                "id": m["id"],
                "ok": True,
                "result": {
                    "id": m["args"]["id"],
                    "ia_port": m["args"].get("ia_port", 40000),
                    "retorno_port": m["args"].get("retorno_port", 40001),
                    "app": m["args"].get("app", "echo"),
                    "options": m["args"].get("options", {}),
                },
            }
        )
    ],
    "remove-extension": {"id": "1201"},
    "restart-extension": {"id": "1201", "pid": 5151},
    "list": LIST_ROWS,
    "status": STATUS_ROWS,
    "reload": {"added": ["1203"], "removed": [], "changed": ["1201"], "unchanged": ["1202"]},
    "stop": {"stopping": True},
    "dialplan": {"text": "exten => 1201,1,Answer()\n same => n,AudioSocket(${UUID},127.0.0.1:40000)\n"},
}


@pytest.fixture
def endpoint(tmp_path) -> str:
    return f"ipc://{tmp_path}/c.sock"


@pytest.fixture
def supervisor(endpoint) -> Iterator[FakeSupervisor]:
    fake = FakeSupervisor(endpoint, dict(SCRIPT))
    yield fake
    fake.close()


@pytest.fixture
def run(endpoint) -> Callable[..., Any]:
    runner = CliRunner()

    def invoke(*args: str, timeout: str = "3") -> Any:
        return runner.invoke(ctl_group, ["--endpoint", endpoint, "--timeout", timeout, *args])

    return invoke


# ------------------------------------------------------------------- request()


def test_request_sends_one_frame_with_id_command_args_and_returns_result(supervisor, endpoint):
    result = request(endpoint, "list", {}, timeout=3)
    assert result == LIST_ROWS
    assert len(supervisor.frames[-1]) == 2  # [identity, body]: the client sent one frame
    sent = supervisor.last
    assert set(sent) == {"id", "command", "args"}
    assert re.fullmatch(r"[0-9a-f]{32}", sent["id"])
    assert sent["command"] == "list" and sent["args"] == {}


def test_request_ids_differ_between_calls(supervisor, endpoint):
    request(endpoint, "list", {}, timeout=3)
    request(endpoint, "list", {}, timeout=3)
    assert supervisor.requests[0]["id"] != supervisor.requests[1]["id"]


def test_request_raises_refused_with_the_supervisors_reason(supervisor, endpoint):
    supervisor.script["add-extension"] = Refuse("port 40000 in use")
    with pytest.raises(CtlRefused) as caught:
        request(endpoint, "add-extension", {"id": "1201"}, timeout=3)
    assert caught.value.message == "port 40000 in use"


def test_request_ignores_stale_and_garbage_replies(supervisor, endpoint):
    def answer(message):
        return [
            orjson.dumps({"id": "0" * 32, "ok": True, "result": "stale"}),
            b"not json at all",
            orjson.dumps(["not", "an", "object"]),
            orjson.dumps({"id": message["id"], "ok": True, "result": "fresh"}),
        ]

    supervisor.script["list"] = answer
    assert request(endpoint, "list", {}, timeout=3) == "fresh"


def test_request_times_out_when_only_stale_replies_come(supervisor, endpoint):
    supervisor.script["list"] = lambda m: [orjson.dumps({"id": "f" * 32, "ok": True, "result": []})]
    with pytest.raises(CtlUnreachable) as caught:
        request(endpoint, "list", {}, timeout=0.3)
    assert caught.value.endpoint == endpoint
    assert caught.value.timeout == 0.3


def test_request_unreachable_names_endpoint_and_timeout(tmp_path):
    endpoint = f"ipc://{tmp_path}/nobody.sock"
    with pytest.raises(CtlUnreachable) as caught:
        request(endpoint, "list", {}, timeout=0.3)
    assert f"no reply from {endpoint} within 0.3 s" in str(caught.value)
    assert "audiogw-supervisor" in str(caught.value)


def test_request_malformed_reply_to_our_id_is_a_protocol_error(supervisor, endpoint):
    supervisor.script["list"] = lambda m: [orjson.dumps({"id": m["id"], "ok": "yes"})]
    with pytest.raises(CtlProtocolError):
        request(endpoint, "list", {}, timeout=3)


def test_request_silent_supervisor_times_out(supervisor, endpoint):
    supervisor.script["stop"] = SILENT
    with pytest.raises(CtlUnreachable):
        request(endpoint, "stop", {}, timeout=0.3)
    assert supervisor.last["command"] == "stop"  # it was received, just not answered


def test_request_over_tcp_uses_curve(tmp_path):
    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    public_file, secret_file = zmq.auth.create_certificates(str(tmp_path), "server")
    _client_public_file, client_file = zmq.auth.create_certificates(str(tmp_path), "client")
    public, secret = zmq.auth.load_certificate(secret_file)
    _client_public, client_secret = zmq.auth.load_certificate(client_file)
    fake = FakeSupervisor("tcp://127.0.0.1:*", {"list": []}, curve_secret=secret, curve_public=public)
    endpoint = fake.endpoint
    try:
        keys = {"server_public_key": public_file, "client_secret_key": client_file}
        assert request(endpoint, "list", {}, timeout=3, **keys) == []
        assert request(
            endpoint, "list", {}, timeout=3, server_public_key=public.decode(), client_secret_key=client_secret.decode()
        ) == []
        runner = CliRunner()
        ok = runner.invoke(
            ctl_group,
            ["--endpoint", endpoint, "--server-key", public_file, "--client-key", client_file, "--json", "list"],
        )
        assert ok.exit_code == 0, ok.output
        assert orjson.loads(ok.stdout) == []
        # Without a key: a usage error before anything is sent.
        missing = runner.invoke(ctl_group, ["--endpoint", endpoint, "--client-key", client_file, "list"])
        assert missing.exit_code == 2
        assert "--server-key" in missing.stderr
        # With the wrong key the CURVE handshake fails: nothing answers.
        wrong_public, _ = zmq.curve_keypair()
        with pytest.raises(CtlUnreachable):
            request(endpoint, "list", {}, timeout=0.3, server_public_key=wrong_public, client_secret_key=client_file)
    finally:
        fake.close()


def test_tcp_needs_a_client_secret_key(tmp_path):
    """Usage errors (exit 2, nothing sent) for a missing or unusable client key."""
    public_file, _secret_file = zmq.auth.create_certificates(str(tmp_path), "server")
    endpoint = "tcp://127.0.0.1:9"  # never contacted
    with pytest.raises(ctl.CtlEndpointError, match="client's CURVE secret key is required"):
        request(endpoint, "list", {}, timeout=0.3, server_public_key=public_file)
    with pytest.raises(ctl.CtlEndpointError, match="no secret-key found"):
        request(endpoint, "list", {}, timeout=0.3, server_public_key=public_file, client_secret_key=public_file)
    with pytest.raises(ctl.CtlEndpointError, match="40-character Z85"):
        request(endpoint, "list", {}, timeout=0.3, server_public_key=public_file, client_secret_key="~" * 40)
    runner = CliRunner()
    base = ["--endpoint", endpoint, "--server-key", public_file, "--timeout", "0.3"]
    missing = runner.invoke(ctl_group, [*base, "list"])
    assert missing.exit_code == 2
    assert "--client-key" in missing.stderr and "curve_authorized_clients" in missing.stderr
    unreadable = runner.invoke(ctl_group, [*base, "--client-key", str(tmp_path / "nope.key_secret"), "list"])
    assert unreadable.exit_code == 2
    assert "nope.key_secret" in unreadable.stderr
    public_only = runner.invoke(ctl_group, [*base, "--client-key", public_file, "list"])
    assert public_only.exit_code == 2
    assert ".key_secret" in public_only.stderr


def test_client_key_comes_from_config(tmp_path):
    """curve_client_secret_key in the config plays --client-key's part, like curve_server_public_key."""
    public_file, secret_file = zmq.auth.create_certificates(str(tmp_path), "server")
    _client_public, client_file = zmq.auth.create_certificates(str(tmp_path), "client")
    public, secret = zmq.auth.load_certificate(secret_file)
    fake = FakeSupervisor("tcp://127.0.0.1:*", {"list": []}, curve_secret=secret, curve_public=public)
    (tmp_path / "clients").mkdir()
    try:
        config = _write_config(
            tmp_path,
            f'control = "{fake.endpoint}"\ncurve_server_secret_key = "server.key_secret"\n'
            'curve_server_public_key = "server.key"\ncurve_authorized_clients = "clients"\n'
            'curve_client_secret_key = "client.key_secret"',
        )
        result = CliRunner().invoke(ctl_group, ["--config", config, "--timeout", "3", "list"])
        assert result.exit_code == 0, result.output
        assert fake.last["command"] == "list"
    finally:
        fake.close()


def test_keygen_writes_a_usable_pair_and_refuses_to_overwrite(tmp_path):
    folder = tmp_path / "keys"
    result = CliRunner().invoke(ctl_group, ["keygen", str(folder)])
    assert result.exit_code == 0, result.output
    assert f'curve_authorized_clients = "{folder / "authorized_clients"}"' in result.stdout
    server_public, server_secret = zmq.auth.load_certificate(str(folder / "server.key_secret"))
    assert server_secret and zmq.auth.load_certificate(str(folder / "server.key"))[0] == server_public
    client_public, client_secret = zmq.auth.load_certificate(str(folder / "client.key_secret"))
    assert client_secret and zmq.auth.load_certificates(str(folder / "authorized_clients")) == {client_public: True}
    assert (folder / "client.key_secret").stat().st_mode & 0o077 == 0
    again = CliRunner().invoke(ctl_group, ["keygen", str(folder)])
    assert again.exit_code == 2
    assert "not overwriting" in again.stderr


# ------------------------------------------------------------------ commands


def test_add_extension_sends_args_and_prints_ports(supervisor, run):
    result = run(
        "add-extension", "1201", "--ia-port", "40010", "--retorno-port", "40011", "--app", "agent",
        "--option", "url=ws://127.0.0.1:8765/media", "--option", "loop=true",
    )
    assert result.exit_code == 0, result.output
    assert supervisor.last["command"] == "add-extension"
    assert supervisor.last["args"] == {
        "id": "1201",
        "ia_port": 40010,
        "retorno_port": 40011,
        "app": "agent",
        "options": {"url": "ws://127.0.0.1:8765/media", "loop": True},
    }
    assert result.stdout.splitlines()[0] == "extension 1201: ia port 40010, retorno port 40011 (app agent)"


def test_add_extension_minimal_omits_optional_args(supervisor, run):
    result = run("add-extension", "*12#")
    assert result.exit_code == 0, result.output
    assert supervisor.last["args"] == {"id": "*12#"}
    assert result.stdout == "extension *12#: ia port 40000, retorno port 40001 (app echo)\n"


def test_add_extension_json(supervisor, run):
    result = run("--json", "add-extension", "1201")
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.stdout) == {
        "id": "1201", "ia_port": 40000, "retorno_port": 40001, "app": "echo", "options": {}
    }
    assert "\n  " in result.stdout  # indented


@pytest.mark.parametrize(
    "argv",
    [
        ["add-extension", "12a"],
        ["add-extension", ""],
        ["add-extension", "1" * 33],
        ["add-extension", "1201", "--ia-port", "0"],
        ["add-extension", "1201", "--retorno-port", "70000"],
        ["add-extension", "1201", "--ia-port", "forty"],
        ["add-extension", "1201", "--ia-port", "40000", "--retorno-port", "40000"],
        ["add-extension", "1201", "--option", "noequals"],
        ["add-extension", "1201", "--option", "1bad=x"],
        ["add-extension", "1201", "--option", "a=1", "--option", "a=2"],
        ["remove-extension", "12a"],
        ["remove-extension", "1201", "--drain", "-1"],
        ["remove-extension", "1201", "--drain", "nan"],
        ["stop", "--drain", "-0.5"],
        ["status", "x"],
        ["dialplan", "12 01"],
        ["restart-extension"],
        ["top", "--iterations", "0"],
        ["no-such-command"],
    ],
)
def test_bad_arguments_are_usage_errors_and_nothing_is_sent(supervisor, run, argv):
    result = run(*argv)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ")
    assert supervisor.requests == []


def test_bad_id_message_says_what_is_wrong(supervisor, run):
    result = run("add-extension", "12a")
    assert "'a'" in result.stderr and "digits" in result.stderr


def test_bad_port_message_names_the_range(supervisor, run):
    result = run("add-extension", "1201", "--ia-port", "70000")
    assert "1-65535" in result.stderr


def test_refusal_exits_1_with_the_reason_on_stderr(supervisor, run):
    supervisor.script["add-extension"] = Refuse("duplicate extension '1201'")
    result = run("add-extension", "1201")
    assert result.exit_code == 1
    assert result.stderr == "error: duplicate extension '1201'\n"
    assert result.stdout == ""


def test_no_reply_exits_3_naming_the_endpoint(tmp_path):
    endpoint = f"ipc://{tmp_path}/c.sock"
    fake = FakeSupervisor(endpoint, {"list": SILENT})
    try:
        result = CliRunner().invoke(ctl_group, ["--endpoint", endpoint, "--timeout", "0.3", "list"])
    finally:
        fake.close()
    assert result.exit_code == 3
    assert f"no reply from {endpoint} within 0.3 s" in result.stderr
    assert "audiogw-supervisor running" in result.stderr
    assert result.stdout == ""


def test_remove_extension(supervisor, run):
    result = run("remove-extension", "1201", "--drain", "2.5")
    assert result.exit_code == 0, result.output
    assert supervisor.last["command"] == "remove-extension"
    assert supervisor.last["args"] == {"id": "1201", "drain": 2.5}
    assert "1201" in result.stdout and "removed" in result.stdout
    result = run("remove-extension", "1201")
    assert supervisor.last["args"] == {"id": "1201"}


def test_restart_extension(supervisor, run):
    result = run("restart-extension", "1201")
    assert result.exit_code == 0, result.output
    assert supervisor.last == {"id": supervisor.last["id"], "command": "restart-extension", "args": {"id": "1201"}}
    assert result.stdout == "extension 1201 restarted (pid 5151)\n"


def test_list_human_and_json(supervisor, run):
    result = run("list")
    assert result.exit_code == 0, result.output
    assert supervisor.last["command"] == "list" and supervisor.last["args"] == {}
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["EXT", "IA", "RETORNO", "APP", "STATE", "SOURCE", "PID", "REASON"]
    assert lines[1].split() == ["1201", "40000", "40001", "echo", "running", "file", "4242", "-"]
    assert lines[2].split(maxsplit=7) == ["1202", "40002", "40003", "bridge", "backoff", "runtime", "-",
                                          "exited with code 1; restart in 0.5 s"]
    as_json = run("--json", "list")
    assert orjson.loads(as_json.stdout) == LIST_ROWS
    after = run("list", "--json")  # also accepted after the subcommand
    assert orjson.loads(after.stdout) == LIST_ROWS


def test_status_all_and_one(supervisor, run):
    result = run("status")
    assert result.exit_code == 0, result.output
    assert supervisor.last["command"] == "status" and supervisor.last["args"] == {}
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "EXT", "STATE", "SOURCE", "PID", "UPTIME", "RESTARTS", "CALLS", "IN", "OUT",
        "UNDERRUNS", "LATE_P99", "LAG_P99", "MEM", "CPU", "REASON",
    ]
    assert lines[1].split() == [
        "1201", "running", "file", "4242", "3m12s", "0", "2", "15000", "14990", "3", "1.2ms", "0.5ms", "12.3M", "3.2%",
        "-",
    ]
    assert lines[2].split() == ["1202", "backoff", "runtime", "-", "-", "7", "0", "0", "0", "0", "-", "-", "-", "-", "-"]
    run("status", "1201")
    assert supervisor.last["args"] == {"id": "1201"}
    as_json = run("--json", "status")
    assert orjson.loads(as_json.stdout) == STATUS_ROWS


def test_reload(supervisor, run):
    result = run("reload")
    assert result.exit_code == 0, result.output
    assert supervisor.last["command"] == "reload" and supervisor.last["args"] == {}
    assert "added: 1203" in result.stdout
    assert "removed: -" in result.stdout
    assert "changed: 1201" in result.stdout
    assert "unchanged: 1202" in result.stdout


def test_stop(supervisor, run):
    result = run("stop", "--drain", "0")
    assert result.exit_code == 0, result.output
    assert supervisor.last["command"] == "stop" and supervisor.last["args"] == {"drain": 0.0}
    assert "stopping" in result.stdout
    run("stop")
    assert supervisor.last["args"] == {}
    as_json = run("--json", "stop")
    assert orjson.loads(as_json.stdout) == {"stopping": True}


def test_dialplan_prints_text_as_is(supervisor, run):
    result = run("dialplan", "1201")
    assert result.exit_code == 0, result.output
    assert supervisor.last["command"] == "dialplan" and supervisor.last["args"] == {"id": "1201"}
    assert result.stdout == SCRIPT["dialplan"]["text"]


def test_top_iterations_prints_one_table_per_refresh(supervisor, run):
    result = run("top", "--interval", "0.05", "--iterations", "2")
    assert result.exit_code == 0, result.output
    statuses = [r for r in supervisor.requests if r["command"] == "status"]
    assert len(statuses) == 2
    tables = result.stdout.split("\n\n")
    assert len(tables) == 2
    for table in tables:
        assert table.splitlines()[0].startswith("EXT")
        assert "3m12s" in table
    assert "\x1b[" not in result.stdout  # not a terminal: no escape codes


def test_top_on_a_terminal_clears_the_screen(supervisor, run, monkeypatch):
    monkeypatch.setattr(ctl, "_stdout_is_tty", lambda: True)
    result = run("top", "1201", "--interval", "0.05", "--iterations", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\x1b[H\x1b[2J") == 2
    assert supervisor.last["args"] == {"id": "1201"}


def test_top_stops_on_ctrl_c_with_status_0(supervisor, run, monkeypatch):
    def interrupt(seconds):
        raise KeyboardInterrupt

    monkeypatch.setattr(ctl, "_sleep", interrupt)
    result = run("top")
    assert result.exit_code == 0, result.output
    assert len(supervisor.requests) == 1


def test_top_unreachable_exits_3(tmp_path):
    endpoint = f"ipc://{tmp_path}/none.sock"
    result = CliRunner().invoke(ctl_group, ["--endpoint", endpoint, "--timeout", "0.3", "top", "--iterations", "3"])
    assert result.exit_code == 3
    assert endpoint in result.stderr


# ---------------------------------------------------- endpoint from the config


def _write_config(tmp_path, control: str = 'control = "ipc://c.sock"') -> str:
    path = tmp_path / "audiogw.toml"
    path.write_text(f"[supervisor]\n{control}\n")
    return str(path)


def test_endpoint_comes_from_config_file(supervisor, tmp_path):
    config = _write_config(tmp_path)  # relative to the file: tmp_path/c.sock
    result = CliRunner().invoke(ctl_group, ["--config", config, "--timeout", "3", "list"])
    assert result.exit_code == 0, result.output
    assert supervisor.last["command"] == "list"


def test_endpoint_comes_from_audiogw_config_env(supervisor, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOGW_CONFIG", _write_config(tmp_path))
    result = CliRunner().invoke(cli, ["ctl", "--timeout", "3", "status"])
    assert result.exit_code == 0, result.output
    assert supervisor.last["command"] == "status"


def test_unreadable_config_is_exit_2_with_the_config_error(tmp_path):
    result = CliRunner().invoke(ctl_group, ["--config", str(tmp_path / "missing.toml"), "list"])
    assert result.exit_code == 2
    assert "missing.toml" in result.stderr and "cannot read" in result.stderr


def test_invalid_config_is_exit_2_naming_the_key(tmp_path):
    config = _write_config(tmp_path, 'control = "udp://x"')
    result = CliRunner().invoke(ctl_group, ["--config", config, "list"])
    assert result.exit_code == 2
    assert "supervisor.control" in result.stderr


def test_config_and_endpoint_are_mutually_exclusive(tmp_path, endpoint):
    result = CliRunner().invoke(ctl_group, ["--config", _write_config(tmp_path), "--endpoint", endpoint, "list"])
    assert result.exit_code == 2
    assert "mutually exclusive" in result.stderr


@pytest.mark.parametrize("value", ["udp://x:1", "ipc://", "/tmp/c.sock"])
def test_bad_endpoint_is_a_usage_error(value):
    result = CliRunner().invoke(ctl_group, ["--endpoint", value, "list"])
    assert result.exit_code == 2


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_bad_timeout_is_a_usage_error(endpoint, value):
    result = CliRunner().invoke(ctl_group, ["--endpoint", endpoint, "--timeout", value, "list"])
    assert result.exit_code == 2


# ------------------------------------------------------------------ formatting


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0, "0s"), (59.9, "59s"), (192, "3m12s"), (3600 + 300, "1h05m"), (2 * 86400 + 3 * 3600, "2d03h")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(None, "-"), (0.0012, "1.2ms"), (0.00004, "0.0ms"), (0.25, "250.0ms"), (1.5, "1.50s")]
)
def test_format_seconds_ms(seconds, text):
    assert format_seconds_ms(seconds) == text


@pytest.mark.parametrize(
    ("count", "text"), [(None, "-"), (512, "512B"), (2048, "2.0K"), (12.3 * 1024**2, "12.3M"), (3 * 1024**3, "3.0G")]
)
def test_format_bytes(count, text):
    assert format_bytes(count) == text


def test_status_table_aligns_columns_and_tolerates_missing_keys():
    table = format_status_table([*STATUS_ROWS, {"id": "9"}])
    lines = table.splitlines()
    assert len(lines) == 4
    # Right-aligned numeric columns: every line's numbers end at the same column (REASON, text, follows).
    reason_at = lines[0].index("REASON")
    assert len({len(line[:reason_at].rstrip()) for line in lines}) == 1
    assert lines[3].split() == ["9"] + ["-"] * 14
    assert lines[0].index("STATE") == lines[1].index("running")


def test_list_table_and_empty_tables():
    table = format_list_table(LIST_ROWS)
    lines = table.splitlines()
    assert lines[0].index("APP") == lines[1].index("echo") == lines[2].index("bridge")
    assert format_list_table([]) == "no extensions"
    assert format_status_table([]) == "no extensions"


def test_status_without_id_in_cluster_mode_says_the_rows_are_one_nodes():
    from audiogw.client.ctl import HUMAN
    from audiogw.shared.commands import STATUS

    rows = [{"id": "1201", "state": "running", "host": "gw2"}]
    assert "(cluster mode: the extensions node gw2 serves;" in HUMAN[STATUS](rows, {})
    assert "cluster mode" not in HUMAN[STATUS](rows, {"id": "1201"})
    assert "cluster mode" not in HUMAN[STATUS]([{"id": "1201", "state": "running"}], {})

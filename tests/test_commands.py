"""The control commands' declarations (shared/commands.py), in-process: each argument's
validation on both sides with one reason, the declaration/handler pairing, dispatch with
config defaults (a fake supervisor), and ctl's click commands generated from the
declarations (CliRunner against a fake ``request``, no supervisor). One real supervisor
checks that every reply has its declared result type."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import click
import msgspec
import orjson
import pytest
from click.testing import CliRunner

from audiogw.client import ctl
from audiogw.shared import commands as declarations
from audiogw.shared.commands import DECLARATIONS, STATUS, Arg, ArgumentInvalid, CommandSpec, ConfigDefault
from audiogw.shared.config import load_config
from audiogw.shared.net import free_port_block
from audiogw.supervisor import commands as supervisor_commands
from audiogw.supervisor.commands import COMMANDS, HANDLERS, CommandRefused, dispatch, pair

# command -> (args that pass, the clean args the handler gets with no config)
GOOD: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("add-extension", {"id": "1201"}, {"id": "1201"}),
    ("add-extension", {"id": "*12#", "ia_port": 40010, "retorno_port": 40011, "app": "agent",
                       "options": {"url": "ws://x", "loop": True}},
     {"id": "*12#", "ia_port": 40010, "retorno_port": 40011, "app": "agent", "options": {"url": "ws://x", "loop": True}}),
    ("add-extension", {"id": "0042", "app": None}, {"id": "0042"}),  # null is "not given"
    ("remove-extension", {"id": "1201", "drain": 2}, {"id": "1201", "drain": 2.0}),
    ("remove-extension", {"id": "1201", "drain": 0}, {"id": "1201", "drain": 0.0}),
    ("restart-extension", {"id": "1201"}, {"id": "1201"}),
    ("list", {}, {}),
    ("list", None, {}),
    ("status", {}, {}),
    ("status", {"id": "1201"}, {"id": "1201"}),
    ("reload", {}, {}),
    ("stop", {"drain": 86400}, {"drain": 86400.0}),
    ("dialplan", {"id": "1201"}, {"id": "1201"}),
    ("reset", {"id": "1201"}, {"id": "1201"}),
]

# command -> (args the supervisor refuses, its whole refusal text)
BAD: list[tuple[str, Any, str]] = [
    ("add-extension", {}, "add-extension: missing argument 'id'"),
    ("add-extension", {"id": "12a"},
     "invalid extension id '12a': extension id '12a' contains 'a'; only digits, '*' and '#' are allowed"),
    ("add-extension", {"id": 1201}, "invalid extension id 1201: expected a string, got integer (quote it: id = \"1201\")"),
    ("add-extension", {"id": "1" * 33}, f"invalid extension id '{'1' * 33}': extension id is 33 characters long; "
                                        "the limit is 32"),
    ("add-extension", {"id": "1201", "ia_port": 70000}, "port 70000 outside 1-65535"),
    ("add-extension", {"id": "1201", "retorno_port": "40001"}, "expected an integer port, got string"),
    ("add-extension", {"id": "1201", "ia_port": True}, "expected an integer port, got boolean"),
    ("add-extension", {"id": "1201", "ia_port": 40000, "retorno_port": 40000},
     "retorno_port: same port as ia_port (40000); the two legs need two ports"),
    ("add-extension", {"id": "1201", "app": " "}, "empty app name"),
    ("add-extension", {"id": "1201", "app": 3}, "expected a non-empty string, got 3"),
    ("add-extension", {"id": "1201", "options": ["a=1"]}, "options must be an object of KEY: VALUE, got list"),
    ("add-extension", {"id": "1201", "colour": "red"}, "add-extension: unknown argument(s) colour"),
    ("add-extension", ["1201"], "add-extension: args must be an object"),
    ("remove-extension", {"id": "1201", "drain": -1}, "drain must be a number of seconds from 0 to 86400, got -1"),
    ("remove-extension", {"id": "1201", "drain": 86401}, "drain must be a number of seconds from 0 to 86400, got 86401"),
    ("remove-extension", {"id": "1201", "drain": "5"}, "drain must be a number of seconds from 0 to 86400, got '5'"),
    ("remove-extension", {"id": "1201", "drain": True}, "drain must be a number of seconds from 0 to 86400, got True"),
    ("restart-extension", {}, "restart-extension: missing argument 'id'"),
    ("list", {"bogus": 1}, "list: unknown argument(s) bogus"),
    ("status", {"id": "x"}, "invalid extension id 'x': extension id 'x' contains 'x'; only digits, '*' and '#' are allowed"),
    ("reload", {"id": "1201"}, "reload: unknown argument(s) id"),
    ("stop", {"drain": -0.5}, "drain must be a number of seconds from 0 to 86400, got -0.5"),
    ("dialplan", {"id": ""}, "invalid extension id '': empty extension id; use digits, '*' and '#', 1 to 32 characters"),
    ("reset", {}, "reset: missing argument 'id'"),
]


@pytest.mark.parametrize(("name", "raw", "clean"), GOOD)
def test_good_arguments_are_cleaned(name, raw, clean):
    assert DECLARATIONS[name].parse(raw) == clean
    assert supervisor_commands.parse_args(name, COMMANDS[name], raw) == clean


@pytest.mark.parametrize(("name", "raw", "refusal"), BAD)
def test_bad_arguments_are_refused_with_a_reason(name, raw, refusal):
    with pytest.raises(CommandRefused) as caught:
        supervisor_commands.parse_args(name, COMMANDS[name], raw)
    assert str(caught.value) == refusal


def test_every_command_is_tried_good_and_bad():
    assert {name for name, _, _ in GOOD} == set(DECLARATIONS)
    assert {name for name, _, _ in BAD} == set(DECLARATIONS)


def test_config_defaults_are_filled_from_the_supervisors_config(tmp_path):
    path = tmp_path / "audiogw.toml"
    path.write_text('[supervisor]\ncontrol = "ipc://c.sock"\ndrain_seconds = 7.5\n[defaults]\napp = "bridge"\n')
    config = load_config(path)
    assert DECLARATIONS["stop"].parse({}, config) == {"drain": 7.5}
    assert DECLARATIONS["remove-extension"].parse({"id": "1"}, config) == {"id": "1", "drain": 7.5}
    assert DECLARATIONS["remove-extension"].parse({"id": "1", "drain": 0}, config)["drain"] == 0.0
    assert DECLARATIONS["add-extension"].parse({"id": "1"}, config) == {"id": "1", "app": "bridge"}
    # Every declared config default names a key the config has.
    for spec in DECLARATIONS.values():
        for arg in spec.args:
            if isinstance(arg.default, ConfigDefault):
                arg.default.resolve(config)


# ------------------------------------------------------------------ pairing


def test_every_declaration_has_one_handler():
    assert set(COMMANDS) == set(DECLARATIONS)
    for name, command in COMMANDS.items():
        assert command.spec is DECLARATIONS[name]
        assert asyncio.iscoroutinefunction(command.handler)


def test_a_declaration_without_a_handler_fails_loudly():
    handlers = dict(HANDLERS)
    del handlers[DECLARATIONS["dialplan"]]
    with pytest.raises(RuntimeError, match=r"declared without a handler \['dialplan'\]"):
        pair(handlers)


def test_a_handler_without_a_declaration_fails_loudly():
    async def orphan(supervisor, args):
        return None

    stray = CommandSpec("frobnicate", "Not declared in DECLARATIONS.")
    with pytest.raises(RuntimeError, match=r"handled without a declaration \['frobnicate'\]"):
        pair({**HANDLERS, stray: orphan})


# ---------------------------------------------------- dispatch (fake supervisor)


class FakeSupervisor:
    """Just what remove-extension and stop touch: the drain they are given is recorded."""

    def __init__(self, drain_seconds: float) -> None:
        self.config = SimpleNamespace(supervisor=SimpleNamespace(drain_seconds=drain_seconds))
        self.extensions = {"1201": SimpleNamespace(id="1201", lock=asyncio.Lock())}
        self.drains: list[float] = []

    def forget_extension(self, extension_id: str) -> None:
        pass

    def remove_in_background(self, runtime: Any, drain: float) -> None:
        self.drains.append(drain)

    def request_stop(self, drain: float) -> None:
        self.drains.append(drain)


def test_dispatch_applies_the_declared_config_default_and_refuses_unknown_commands():
    async def scenario() -> FakeSupervisor:
        fake = FakeSupervisor(drain_seconds=7.5)
        assert await dispatch(fake, "remove-extension", {"id": "1201"}) == {"id": "1201", "drain": 7.5}
        fake.extensions["1201"] = SimpleNamespace(id="1201", lock=asyncio.Lock())
        await dispatch(fake, "remove-extension", {"id": "1201", "drain": 0})
        await dispatch(fake, "stop", None)
        await dispatch(fake, "stop", {"drain": 2})
        with pytest.raises(CommandRefused, match=r"unknown command 'explode' \(known: add-extension, dialplan"):
            await dispatch(fake, "explode", {})
        with pytest.raises(CommandRefused, match="unknown command 3"):
            await dispatch(fake, 3, {})
        with pytest.raises(CommandRefused, match="unknown extension 9999"):
            await dispatch(fake, "dialplan", {"id": "9999"})
        return fake

    # SPEC: remove-extension without --drain drains for supervisor.drain_seconds.
    assert asyncio.run(scenario()).drains == [7.5, 0.0, 7.5, 2.0]


# ------------------------------------------- ctl's commands, from the declarations


class FakeRequest:
    """Stands in for ctl.request: records (command, args), answers from ``results`` or refuses."""

    def __init__(self, results: dict[str, Any]) -> None:
        self.results = results
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, endpoint: str, command: str, args: Any = None, **_keys: Any) -> Any:
        self.sent.append((command, dict(args or {})))
        answer = self.results[command]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def fake(monkeypatch) -> FakeRequest:
    transport = FakeRequest({})
    monkeypatch.setattr(ctl, "request", transport)
    return transport


def invoke(group: click.Group, *argv: str) -> Any:
    return CliRunner().invoke(group, ["--endpoint", "ipc:///nowhere/c.sock", *argv])


def test_each_declaration_is_a_ctl_command_with_its_help_and_arguments():
    for name, spec in DECLARATIONS.items():
        command = ctl.ctl_group.commands[name]
        assert spec.summary.startswith(command.get_short_help_str(200))  # click keeps the first sentence
        assert command.help == (spec.help or spec.summary)
        params = {param.name: param for param in command.params}
        assert set(params) == {arg.name for arg in spec.args} | {"json_flag"}
        for arg in spec.args:
            param = params[arg.name]
            if arg.is_option:
                assert arg.cli in param.opts and param.help == arg.help_text()
            else:
                assert param.human_readable_name == arg.cli and param.required == arg.required


# the command line, and the same values as the supervisor would receive them
CLI_BAD: list[tuple[list[str], dict[str, Any]]] = [
    (["add-extension", "12a"], {"id": "12a"}),
    (["add-extension", "1201", "--ia-port", "70000"], {"id": "1201", "ia_port": 70000}),
    (["add-extension", "1201", "--app", " "], {"id": "1201", "app": " "}),
    (["add-extension", "1201", "--ia-port", "4000", "--retorno-port", "4000"],
     {"id": "1201", "ia_port": 4000, "retorno_port": 4000}),
    (["remove-extension", "1201", "--drain", "-1"], {"id": "1201", "drain": -1}),
    (["remove-extension", "1201", "--drain", "86401"], {"id": "1201", "drain": 86401}),
    (["restart-extension", "1" * 33], {"id": "1" * 33}),
    (["status", "x"], {"id": "x"}),
    (["stop", "--drain", "-0.5"], {"drain": -0.5}),
    (["dialplan", "12 01"], {"id": "12 01"}),
    (["reset", "12a"], {"id": "12a"}),
]


@pytest.mark.parametrize(("argv", "raw"), CLI_BAD)
def test_ctl_refuses_what_the_supervisor_refuses_for_the_same_reason(fake, argv, raw):
    """A value the supervisor refuses is, typed on the command line, a usage error
    (exit 2, nothing sent) giving the same validator's reason."""
    with pytest.raises(ArgumentInvalid) as caught:
        DECLARATIONS[argv[0]].parse(raw)
    result = invoke(ctl.ctl_group, *argv)
    assert result.exit_code == 2, result.output
    assert fake.sent == []
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: Invalid value for ")
    reason = message.split("': ", 1)[1].replace("--ia-port", "ia_port")
    assert caught.value.reason.endswith(reason), (caught.value.reason, reason)


def test_every_command_line_check_is_tried():
    assert {argv[0] for argv, _ in CLI_BAD} >= {name for name, spec in DECLARATIONS.items() if spec.args}


def test_generated_command_sends_declared_args_and_prints_human_or_json(fake):
    fake.results["add-extension"] = {"id": "1201", "ia_port": 40010, "retorno_port": 40011, "app": "echo",
                                     "options": {"loop": True}, "state": "running", "pid": 7}
    result = invoke(ctl.ctl_group, "add-extension", "1201", "--ia-port", "40010", "--option", "loop=true")
    assert result.exit_code == 0, result.output
    assert fake.sent == [("add-extension", {"id": "1201", "ia_port": 40010, "options": {"loop": True}})]
    assert result.stdout == "extension 1201: ia port 40010, retorno port 40011 (app echo)\noptions: loop=true\n"
    as_json = invoke(ctl.ctl_group, "add-extension", "1201", "--json")
    assert orjson.loads(as_json.stdout) == fake.results["add-extension"]


def test_generated_command_exit_statuses(fake):
    fake.results["restart-extension"] = ctl.CtlRefused("unknown extension 1201")
    refused = invoke(ctl.ctl_group, "restart-extension", "1201")
    assert (refused.exit_code, refused.stderr) == (1, "error: unknown extension 1201\n")
    fake.results["restart-extension"] = ctl.CtlUnreachable("ipc:///nowhere/c.sock", 0.5)
    unreachable = invoke(ctl.ctl_group, "restart-extension", "1201")
    assert unreachable.exit_code == 3 and "no reply from ipc:///nowhere/c.sock" in unreachable.stderr


def test_a_new_declaration_is_a_command_without_ctl_code(fake):
    """What "adding a command is one declaration plus its handler" means on ctl's side."""
    spec = CommandSpec(
        "drain-extension", "Drain extension ID without removing it.",
        (declarations._ID, Arg("seconds", float, declarations.drain_seconds, "--seconds", "How long")),
    )
    group = click.Group("ctl", params=ctl.ctl_group.params, callback=ctl.ctl_group.callback)
    group.add_command(ctl.declared_command(spec))
    fake.results["drain-extension"] = {"id": "1201", "draining": True}
    result = invoke(group, "drain-extension", "1201", "--seconds", "3")
    assert result.exit_code == 0, result.output
    assert fake.sent == [("drain-extension", {"id": "1201", "seconds": 3.0})]
    assert orjson.loads(result.stdout) == {"id": "1201", "draining": True}  # no formatter: JSON
    bad = invoke(group, "drain-extension", "1201", "--seconds", "-3")
    assert bad.exit_code == 2 and "from 0 to 86400" in bad.stderr and len(fake.sent) == 1
    assert "Drain extension ID without removing it." in invoke(group, "--help").stdout


def test_top_takes_the_status_id_argument(fake, monkeypatch):
    fake.results["status"] = [{"id": "1201", "state": "running"}]
    result = invoke(ctl.ctl_group, "top", "1201", "--iterations", "1")
    assert result.exit_code == 0, result.output
    assert fake.sent == [(STATUS.name, {"id": "1201"})]
    bad = invoke(ctl.ctl_group, "top", "12a")
    assert bad.exit_code == 2 and "contains 'a'" in bad.stderr


def test_every_declared_command_keeps_its_human_output():
    """Today's commands each have a formatter; an entry for an undeclared command would never run."""
    assert set(ctl.HUMAN) == set(DECLARATIONS.values())


def test_check_errors_name_the_cli_spelling():
    with pytest.raises(ArgumentInvalid) as caught:
        DECLARATIONS["add-extension"].check({"ia_port": 5, "retorno_port": 5}, lambda name: f"--{name}")
    assert caught.value.arg == "retorno_port" and "same port as --ia_port (5)" in caught.value.reason


# --------------------------------------------- replies have their declared types


def test_every_reply_of_a_real_supervisor_has_its_declared_result_type(tmp_path):
    from supervisor_fixture import SupervisorProcess, kill_tree, write_config

    base = free_port_block(20)
    supervisor = SupervisorProcess(tmp_path, write_config(tmp_path, base), base)
    supervisor.start()
    try:
        calls = [
            ("add-extension", {"id": "1300", "ia_port": base + 10, "retorno_port": base + 11}),
            ("list", {}), ("status", {}), ("status", {"id": "1300"}), ("restart-extension", {"id": "1300"}),
            ("dialplan", {"id": "1300"}), ("reload", {}), ("reset", {"id": "1300"}),
            ("remove-extension", {"id": "1201"}), ("stop", {"drain": 0}),
        ]
        assert {name for name, _ in calls} == set(DECLARATIONS)
        for name, args in calls:
            reply = supervisor.ctl(name, args)
            msgspec.convert(reply, DECLARATIONS[name].result, strict=True)
    finally:
        supervisor.stop()
        if supervisor.process is not None:
            kill_tree(supervisor.process.pid)

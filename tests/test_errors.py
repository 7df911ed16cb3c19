"""Every error path prints one line, no traceback; under --json a JSON error on stdout, same exit status."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from audiogw.client.call import call_command
from audiogw.client.ctl import EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, ctl_group
from audiogw.shared.errors import ERROR_KINDS, error_text
from audiogw.shared.net import free_port_block
from supervisor_fixture import supervisor_process, write_config

supervisor = pytest.fixture(name="supervisor")(supervisor_process)


def test_error_text_is_one_line_human_or_json() -> None:
    assert error_text("usage", "bad\n  thing", as_json=False) == "error: bad thing"
    assert orjson.loads(error_text("config", "x.toml: oops", as_json=True)) == {
        "error": {"kind": "config", "message": "x.toml: oops"}}
    assert "refused" in ERROR_KINDS
    with pytest.raises(ValueError):
        error_text("nonsense", "x", as_json=False)


def check(result, code: int, kind: str, as_json: bool) -> str:
    """The one line this failure printed, in the right place and shape; returns its message."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    if as_json:
        assert result.stderr == ""
        error = orjson.loads(result.stdout)["error"]
        assert error["kind"] == kind
        return error["message"]
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0][len("error: "):]


def ctl(*argv: str):
    return CliRunner().invoke(ctl_group, list(argv))


@pytest.mark.parametrize("as_json", [False, True])
def test_ctl_client_side_errors(tmp_path: Path, as_json: bool) -> None:
    flag = ["--json"] if as_json else []
    # Unreachable (no supervisor on this endpoint): exit 3.
    message = check(ctl("--endpoint", f"ipc://{tmp_path}/none.sock", "--timeout", "0.2", *flag, "list"),
                    EXIT_UNREACHABLE, "unreachable", as_json)
    assert "no reply from" in message
    # Usage: click's own errors, before and after the subcommand, --json in either place.
    message = check(ctl("--timeout", "-1", *flag, "list"), EXIT_USAGE, "usage", as_json)
    assert "--timeout" in message
    message = check(ctl("--endpoint", f"ipc://{tmp_path}/x", "restart-extension", "12a", *flag),
                    EXIT_USAGE, "usage", as_json)
    assert "12a" in message
    check(ctl(*flag, "no-such-command"), EXIT_USAGE, "usage", as_json)
    # A bad config file: exit 2, the file named.
    bad = tmp_path / "bad.toml"
    bad.write_text('[supervisor]\ncontrol = "bogus://x"\n')  # the control settings themselves (ctl needs them)
    message = check(ctl("--config", str(bad), *flag, "list"), EXIT_USAGE, "config", as_json)
    assert str(bad) in message
    # A tcp endpoint without keys.
    check(ctl("--endpoint", "tcp://127.0.0.1:1", *flag, "list"), EXIT_USAGE, "usage", as_json)


@pytest.mark.parametrize("as_json", [False, True])
def test_ctl_refused_by_a_real_supervisor(supervisor, as_json: bool) -> None:
    flag = ["--json"] if as_json else []
    message = check(ctl("--endpoint", supervisor.endpoint, *flag, "restart-extension", "9999"),
                    EXIT_REFUSED, "refused", as_json)
    assert message == "unknown extension 9999"
    ok = ctl("--endpoint", supervisor.endpoint, *flag, "list")
    assert ok.exit_code == 0 and ok.stderr == ""


@pytest.mark.parametrize("as_json", [False, True])
def test_call_bad_record_path_and_unreachable(tmp_path: Path, as_json: bool) -> None:
    flag = ["--json"] if as_json else []
    port = free_port_block(1)  # nothing listens there
    runner = CliRunner()
    missing = tmp_path / "no" / "such" / "folder" / "x.wav"
    message = check(runner.invoke(call_command, [f"127.0.0.1:{port}", "--record", str(missing), *flag]),
                    EXIT_USAGE, "usage", as_json)
    assert str(missing) in message and "does not exist" in message
    check(runner.invoke(call_command, [f"127.0.0.1:{port}", "--record", str(tmp_path), *flag]),
          EXIT_USAGE, "usage", as_json)
    message = check(runner.invoke(call_command, [f"127.0.0.1:{port}", "--seconds", "0.1", "--timeout", "0.5",
                                                  *flag]), 1, "unreachable", as_json)
    assert f"127.0.0.1:{port}" in message


@pytest.mark.parametrize("content", ["garbage{", "[1]", '{"removed": 3}', '{"added": ["x"]}'])
def test_corrupt_state_file_at_supervisor_start_is_one_line(tmp_path: Path, content: str) -> None:
    config = write_config(tmp_path, free_port_block(20), extensions=1)
    (tmp_path / "state").mkdir(mode=0o700)  # owner-only: no warning about its mode
    (tmp_path / "state" / "extensions.json").write_text(content)
    done = subprocess.run([sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start",
                           "--config", str(config)], capture_output=True, text=True, cwd=tmp_path, timeout=30)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip() and " INFO " not in line]  # start-up facts aside
    assert len(lines) == 1 and "extensions.json" in lines[0], lines


def test_supervisor_bad_config_is_one_error_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[supervisor]\nheartbeat_interval = -1\n")
    done = subprocess.run([sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start",
                           "--config", str(bad)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1, done.stderr


ENTRY_POINTS = {"audiogw.client.cli": "audiogw", "audiogw.supervisor.cli": "audiogw-supervisor"}


def run_entry(module: str, *argv: str) -> subprocess.CompletedProcess:
    """A console entry point as a user runs it (its own process, click's standalone mode, its name)."""
    code = f"import sys; sys.argv[0] = {ENTRY_POINTS[module]!r}; from {module} import main; main()"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("module, prog, argv, expected", [
    ("audiogw.client.cli", "audiogw", ["nosuch"], "No such command 'nosuch'. Try 'audiogw --help' for help."),
    ("audiogw.client.cli", "audiogw", ["--bogus"], "No such option '--bogus'. Try 'audiogw --help' for help."),
    ("audiogw.client.cli", "audiogw", ["init", "--json"],  # init takes no --json: plain text
     "No such option '--json'. Try 'audiogw init --help' for help."),
    ("audiogw.client.cli", "audiogw", ["ctl", "lst"],
     "No such command 'lst'. Did you mean 'list'? Try 'audiogw ctl --help' for help."),
    ("audiogw.client.cli", "audiogw", ["ctl", "restart-extension"],
     "Missing argument 'ID'. Try 'audiogw ctl restart-extension --help' for help."),
    ("audiogw.client.cli", "audiogw", ["call"], "Missing argument 'HOST:PORT'. Try 'audiogw call --help' for help."),
    ("audiogw.supervisor.cli", "audiogw-supervisor", ["nosuch"],
     "No such command 'nosuch'. Try 'audiogw-supervisor --help' for help."),
    ("audiogw.supervisor.cli", "audiogw-supervisor", ["start", "--bogus"],
     "No such option '--bogus'. Try 'audiogw-supervisor start --help' for help."),
])
def test_click_usage_errors_are_one_line_with_the_hint(module, prog, argv, expected) -> None:
    done = run_entry(module, *argv)
    assert done.returncode == 2, done
    assert done.stdout == "" and done.stderr == f"error: {expected}\n", done.stderr


def test_usage_errors_are_json_where_json_applies() -> None:
    done = run_entry("audiogw.client.cli", "ctl", "--json", "lst")
    assert done.returncode == 2 and done.stderr == "", done
    assert orjson.loads(done.stdout) == {"error": {"kind": "usage", "message":
                                                   "No such command 'lst'. Did you mean 'list'? "
                                                   "Try 'audiogw ctl --help' for help."}}
    done = run_entry("audiogw.client.cli", "ctl", "restart-extension", "--json")
    assert done.returncode == 2 and orjson.loads(done.stdout)["error"]["kind"] == "usage", done


@pytest.mark.parametrize("module, argv", [("audiogw.client.cli", []), ("audiogw.client.cli", ["ctl"]),
                                          ("audiogw.supervisor.cli", [])])
def test_a_bare_group_prints_its_help_not_an_error(module, argv) -> None:
    done = run_entry(module, *argv)
    assert done.returncode == 2 and "Usage: " in done.stderr and "Commands:" in done.stderr, done
    assert not done.stderr.startswith("error: ")


@pytest.mark.parametrize("as_json", [False, True])
def test_ctl_partly_broken_config_warns_in_the_error_form(tmp_path: Path, as_json: bool) -> None:
    """An error elsewhere than the control settings: one warning line (JSON under --json, on stderr:
    stdout stays the result alone), then the command goes on (here: nobody answers, exit 3)."""
    config = tmp_path / "audiogw.toml"
    config.write_text(f'[supervisor]\ncontrol = "ipc://{tmp_path}/none.sock"\n[audiosocket]\nbindd = "x"\n')
    result = ctl("--config", str(config), "--timeout", "0.2", *(["--json"] if as_json else []), "list")
    assert result.exit_code == EXIT_UNREACHABLE, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    if as_json:
        warning = orjson.loads(lines[0])["warning"]
        assert warning["kind"] == "config" and "audiosocket.bindd" in warning["message"], lines
        assert len(lines) == 1 and orjson.loads(result.stdout)["error"]["kind"] == "unreachable"
    else:
        assert len(lines) == 2 and lines[0].startswith("warning: the config file has an error"), lines
        assert "audiosocket.bindd" in lines[0] and lines[1].startswith("error: no reply"), lines

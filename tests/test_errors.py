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

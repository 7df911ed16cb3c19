"""Config discovery and a ctl that survives a typo: real `audiogw` / `audiogw-supervisor` processes
in a temporary cwd, HOME and XDG_CONFIG_HOME, so nothing of the machine's own config leaks in."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from audiogw.shared.config import CONFIG_SEARCH, config_search_paths, default_config_path
from audiogw.shared.net import free_port_block
from supervisor_fixture import SupervisorProcess, kill_tree, write_config

CTL = [sys.executable, "-c", "from audiogw.client.cli import main; main()"]
SUPERVISOR = [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> dict[str, str]:
    """An environment whose HOME, XDG_CONFIG_HOME and cwd are empty temp folders."""
    env = {key: value for key, value in os.environ.items() if key not in ("AUDIOGW_CONFIG", "XDG_CONFIG_HOME")}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    for key in ("AUDIOGW_CONFIG", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", env["HOME"])
    return env


def run(command: list[str], env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)


def control_config(path: Path, name: str) -> Path:
    """A file whose only distinguishing value is its control socket, named ``name``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[supervisor]\ncontrol = "ipc://{name}.sock"\n')
    return path


def chosen(env: dict[str, str], cwd: Path, *args: str) -> str:
    """Which file `audiogw ctl list` read: the socket it tried (there is no supervisor)."""
    result = run(CTL, env, "ctl", *args, "--timeout", "0.2", "list", cwd=cwd)
    assert result.returncode == 3, result.stderr
    return Path(result.stderr.split("ipc://", 1)[1].split()[0].rstrip(":;,.)")).stem


@pytest.mark.skipif(os.path.exists("/etc/audiogw/audiogw.toml"), reason="this machine has /etc/audiogw/audiogw.toml")
def test_no_config_lists_where_it_looked(home: dict[str, str], tmp_path: Path) -> None:
    for command, args in ((CTL, ("ctl", "list")), (SUPERVISOR, ("start",))):
        result = run(command, home, *args, cwd=tmp_path / "cwd")
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        for candidate in config_search_paths():
            assert candidate in result.stderr
        assert str(tmp_path / "home" / ".config" / "audiogw" / "audiogw.toml") in result.stderr
        assert "audiogw init" in result.stderr


def test_search_order(home: dict[str, str], tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    xdg = tmp_path / "xdg"
    control_config(tmp_path / "home" / ".config" / "audiogw" / "audiogw.toml", "home")
    assert chosen(home, cwd) == "home"  # ~/.config without XDG_CONFIG_HOME
    env = {**home, "XDG_CONFIG_HOME": str(xdg)}
    control_config(xdg / "audiogw" / "audiogw.toml", "xdg")
    assert chosen(env, cwd) == "xdg"
    control_config(cwd / "etc" / "audiogw.toml", "etc")
    assert chosen(env, cwd) == "etc"
    control_config(cwd / "audiogw.toml", "here")
    assert chosen(env, cwd) == "here"
    named = control_config(tmp_path / "named.toml", "named")
    assert chosen({**env, "AUDIOGW_CONFIG": str(named)}, cwd) == "named"
    flag = control_config(tmp_path / "flag.toml", "flag")
    assert chosen({**env, "AUDIOGW_CONFIG": str(named)}, cwd, "--config", str(flag)) == "flag"
    assert len(CONFIG_SEARCH) == 4 and CONFIG_SEARCH[-1] == "/etc/audiogw/audiogw.toml"


def test_named_file_missing_is_an_error_not_a_fallback(home: dict[str, str], tmp_path: Path) -> None:
    control_config(tmp_path / "cwd" / "audiogw.toml", "here")
    missing = tmp_path / "missing.toml"
    os.environ["AUDIOGW_CONFIG"] = str(missing)
    try:
        assert default_config_path() == str(missing)
    finally:
        del os.environ["AUDIOGW_CONFIG"]
    result = run(CTL, {**home, "AUDIOGW_CONFIG": str(missing)}, "ctl", "list", cwd=tmp_path / "cwd")
    assert result.returncode == 2 and str(missing) in result.stderr and "cannot read" in result.stderr


@pytest.fixture
def served(home: dict[str, str], tmp_path: Path):
    """A supervisor started from a folder with ./audiogw.toml and no --config."""
    folder = tmp_path / "cwd"
    base = free_port_block(20)
    process = SupervisorProcess(folder, write_config(folder, base, extensions=1), base)
    log = open(folder / "supervisor.log", "ab")
    process.process = subprocess.Popen([*SUPERVISOR, "start"], env=home, cwd=folder, stdout=log, stderr=log)
    from conftest import wait_for

    wait_for(process.running_states, 15, what="supervisor found ./audiogw.toml and serves")
    yield process
    process.stop()
    kill_tree(process.process.pid)


def test_ctl_survives_a_typo_elsewhere(served: SupervisorProcess, home: dict[str, str]) -> None:
    folder = served.folder
    result = run(CTL, home, "ctl", "list", "--json", cwd=folder)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    path = folder / "audiogw.toml"
    good = path.read_text()
    path.write_text(good.replace("[audiosocket]\n", "[audiosocket]\nbindd = \"127.0.0.1\"\n"))
    result = run(CTL, home, "ctl", "list", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "1201" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "audiosocket.bindd" in lines[0], result.stderr
    # `top` reads the file once: one warning, not one per refresh
    result = run(CTL, home, "ctl", "top", "--iterations", "3", "--interval", "0.05", cwd=folder)
    assert result.returncode == 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    # from elsewhere, through --config, the same
    result = run(CTL, home, "ctl", "--config", str(path), "list", cwd=folder.parent)
    assert result.returncode == 0 and "audiosocket.bindd" in result.stderr
    # a typo in the control setting itself still stops ctl: it cannot know where to go
    path.write_text(good.replace('control = "ipc://run/control.sock"', 'control = "icp://run/control.sock"'))
    result = run(CTL, home, "ctl", "list", cwd=folder)
    assert result.returncode == 2, result.stderr
    assert "supervisor.control" in result.stderr and "Traceback" not in result.stderr


def test_control_config_reads_only_the_control_settings(tmp_path: Path) -> None:
    from audiogw.shared.config import ConfigError, load_control_config

    path = tmp_path / "audiogw.toml"
    text = '[supervisor]\ncontrol = "ipc://run/c.sock"\nstate_dir = "var"\n\n[audiosocket]\nbind = "127.0.0.1"\n'
    path.write_text(text)
    config = load_control_config(path)
    assert config.control == f"ipc://{tmp_path}/run/c.sock" and config.problem is None
    path.write_text(text.replace('bind = "127.0.0.1"', "bind = 127.0.0.1"))  # TOML syntax error elsewhere
    config = load_control_config(path)
    assert config.control == f"ipc://{tmp_path}/run/c.sock"
    assert "invalid TOML" in str(config.problem) and "line 6" in str(config.problem)
    path.write_text(text.replace("state_dir", "stat_dir"))  # a typo in [supervisor], not a control key
    assert "supervisor.stat_dir" in str(load_control_config(path).problem)
    path.write_text(text.replace('control = "ipc://run/c.sock"', "control = ipc://run/c.sock"))
    with pytest.raises(ConfigError, match="line 2"):
        load_control_config(path)
    path.write_text(text.replace('control = "ipc://run/c.sock"', 'control = "tcp://127.0.0.1:5555"'))
    config = load_control_config(path)  # the missing server keys are the supervisor's concern, not ctl's
    assert config.control == "tcp://127.0.0.1:5555" and "curve_server_secret_key" in str(config.problem)

"""`audiogw init`: the starter config from the installed console scripts, served by a real supervisor."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from audiogw.client.ctl import request
from audiogw.shared.config import load_config
from audiogw.shared.net import free_port_block
from conftest import wait_for
from supervisor_fixture import kill_tree

BIN = Path(sys.executable).parent  # the venv's console scripts, as `pip install` made them


def init(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "audiogw"), "init", *args], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_init_writes_refuses_and_forces(tmp_path: Path) -> None:
    result = init("conf", cwd=tmp_path)
    path = tmp_path / "conf" / "audiogw.toml"
    assert result.returncode == 0, result.stderr
    assert str(path) in result.stdout and f"audiogw-supervisor start --config {path}" in result.stdout
    config = load_config(path)
    assert [extension.app for extension in config.extensions] == ["echo"]
    assert config.supervisor.demo_agent is None
    assert config.supervisor.state_dir == str(tmp_path / "conf" / "var")
    assert config.supervisor.control == f"ipc://{tmp_path}/conf/var/run/control.sock"
    path.write_text("# mine\n")
    result = init("conf", cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "already exists" in result.stderr and "--force" in result.stderr
    assert path.read_text() == "# mine\n"
    result = init("--force", "--demo-agent", str(tmp_path / "conf"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = load_config(path)
    assert config.supervisor.demo_agent is not None and config.extensions[0].app == "agent"
    shipped = {ext.id: ext for ext in load_config(Path(__file__).resolve().parent.parent / "etc" / "audiogw.toml").extensions}
    doorman = config.extension("1210")  # the doorman, on the same ports as in etc/audiogw.toml (README's steps)
    assert doorman.options["url"].endswith("/doorman")
    assert (doorman.ia_port, doorman.retorno_port, doorman.options) == (
        shipped["1210"].ia_port, shipped["1210"].retorno_port, shipped["1210"].options)
    result = init(cwd=tmp_path)  # default: the current folder, where discovery looks first
    assert result.returncode == 0 and (tmp_path / "audiogw.toml").is_file()


def test_started_config_serves(tmp_path: Path) -> None:
    assert init("conf", cwd=tmp_path).returncode == 0
    path = tmp_path / "conf" / "audiogw.toml"
    config = load_config(path)
    extension = config.extensions[0]
    # Only the ports move (other tests share this machine); everything else is as written.
    base = free_port_block(3)
    text = path.read_text()
    text = text.replace(f"ia_port = {extension.ia_port}\n", f"ia_port = {base}\n")
    text = text.replace(f"retorno_port = {extension.retorno_port}\n", f"retorno_port = {base + 1}\n")
    text = text.replace("[supervisor]\n", f'[supervisor]\nmetrics = "127.0.0.1:{base + 2}"\n', 1)
    path.write_text(text)
    log = open(tmp_path / "supervisor.log", "wb")
    process = subprocess.Popen([str(BIN / "audiogw-supervisor"), "start", "--config", str(path)],
                               cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    endpoint = load_config(path).supervisor.control
    try:
        def serving():
            assert process.poll() is None, (tmp_path / "supervisor.log").read_text()
            try:
                rows = request(endpoint, "list", {}, timeout=1.0)
            except Exception:
                return None
            return rows if rows and rows[0]["state"] == "running" else None

        rows = wait_for(serving, 15, what="the init config to serve")
        assert [(row["id"], row["ia_port"]) for row in rows] == [("1201", base)]
        ctl = subprocess.run([str(BIN / "audiogw"), "ctl", "list"], cwd=tmp_path / "conf",
                             capture_output=True, text=True, timeout=30)
        assert ctl.returncode == 0 and "1201" in ctl.stdout, ctl.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            pass
        kill_tree(process.pid)


def test_init_refuses_a_folder_the_config_could_not_start_from(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    result = init(str(deep), cwd=tmp_path)
    assert result.returncode == 2 and "supervisor.control" in result.stderr and "Traceback" not in result.stderr
    assert not (deep / "audiogw.toml").exists()

"""Where each extension comes from (``source``), reload reporting what a runtime change hides,
and ``ctl reset``: a real supervisor, changed at run time and through its file."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import orjson
import pytest

from audiogw.client.ctl import CtlRefused
from audiogw.shared.config import load_config
from audiogw.supervisor.reload_plan import hidden_by_overrides
from conftest import wait_for
from supervisor_fixture import supervisor_process

gateway = pytest.fixture(name="gateway")(supervisor_process)

CTL = [sys.executable, "-c", "from audiogw.client.cli import main; main()", "ctl"]


def rows(gateway) -> dict[str, dict]:
    return {row["id"]: row for row in gateway.ctl("list")}


def ctl(gateway, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CTL, "--config", str(gateway.config_path), *args],
                          capture_output=True, text=True, timeout=30)


def state_file(gateway) -> dict:
    return orjson.loads((gateway.folder / "state" / "extensions.json").read_bytes())


def append_extension(gateway, extension_id: str, ia_port: int, app: str = "bridge") -> None:
    with open(gateway.config_path, "a") as handle:
        handle.write(f'[[extension]]\nid = "{extension_id}"\nia_port = {ia_port}\nretorno_port = {ia_port + 1}\n'
                     f'app = "{app}"\n')


def test_source_reload_report_and_reset(gateway) -> None:
    base = gateway.base_port
    assert {row["source"] for row in rows(gateway).values()} == {"file"}
    added = gateway.ctl("add-extension", {"id": "1203", "ia_port": base + 4, "retorno_port": base + 5})
    assert added["source"] == "runtime"
    assert rows(gateway)["1203"]["source"] == "runtime"
    assert gateway.ctl("status", {"id": "1203"})[0]["source"] == "runtime"
    listed = ctl(gateway, "list")
    assert listed.returncode == 0 and "SOURCE" in listed.stdout.splitlines()[0]
    assert any(line.split()[0] == "1203" and "runtime" in line.split() for line in listed.stdout.splitlines())

    # The file now defines 1203 too, differently: reload says the runtime definition wins.
    append_extension(gateway, "1203", base + 6)
    result = ctl(gateway, "reload")
    assert result.returncode == 0, result.stderr
    assert ("1203: defined in the file and at run time; the runtime definition wins until `ctl reset 1203`"
            in result.stdout)
    assert rows(gateway)["1203"]["ia_port"] == base + 4
    assert "wins until `ctl reset 1203`" in gateway.log()

    result = ctl(gateway, "reset", "1203")
    assert result.returncode == 0, result.stderr
    assert "replaced" in result.stdout
    row = rows(gateway)["1203"]
    assert (row["ia_port"], row["app"], row["source"], row["state"]) == (base + 6, "bridge", "file", "running")
    assert state_file(gateway)["added"] == []
    assert gateway.ctl("reload")["overridden"] == []  # nothing hidden any more

    # Nothing to reset: refused with a reason (exit 1).
    result = ctl(gateway, "reset", "1201")
    assert result.returncode == 1 and "no runtime override" in result.stderr


def test_removed_at_run_time_comes_back_after_reset(gateway) -> None:
    gateway.ctl("remove-extension", {"id": "1202", "drain": 0})
    assert "1202" not in rows(gateway)
    assert state_file(gateway)["removed"] == ["1202"]
    reloaded = gateway.ctl("reload")
    assert reloaded["added"] == [] and [item["id"] for item in reloaded["overridden"]] == ["1202"]
    assert "removed at run time" in reloaded["overridden"][0]["reason"]
    assert "1202" not in rows(gateway)
    reset = gateway.ctl("reset", {"id": "1202"})
    assert reset == {"id": "1202", "action": "started", "source": "file"}
    row = rows(gateway)["1202"]
    assert row["source"] == "file" and row["state"] == "running"
    assert state_file(gateway)["removed"] == []


def test_reset_of_a_runtime_only_extension_removes_it(gateway) -> None:
    base = gateway.base_port
    gateway.ctl("add-extension", {"id": "1300", "ia_port": base + 10, "retorno_port": base + 11})
    assert gateway.ctl("reset", {"id": "1300"})["action"] == "removed"
    assert "1300" not in rows(gateway)
    with pytest.raises(CtlRefused, match="no runtime override"):
        gateway.ctl("reset", {"id": "1300"})


def test_reset_refuses_a_file_definition_whose_ports_are_taken(gateway) -> None:
    base = gateway.base_port
    gateway.ctl("remove-extension", {"id": "1202", "drain": 0})
    # A runtime extension takes the removed one's ports; the file's 1202 cannot come back on them.
    gateway.ctl("add-extension", {"id": "1400", "ia_port": base + 2, "retorno_port": base + 3})
    with pytest.raises(CtlRefused, match="used by another extension"):
        gateway.ctl("reset", {"id": "1202"})
    assert state_file(gateway)["removed"] == ["1202"]  # nothing changed


def test_hidden_by_overrides_is_pure(tmp_path) -> None:
    path = tmp_path / "audiogw.toml"
    path.write_text('[[extension]]\nid = "1"\nia_port = 41000\nretorno_port = 41001\n'
                    '[[extension]]\nid = "2"\nia_port = 41002\nretorno_port = 41003\n')
    config = load_config(path)
    same = config.extension("1")
    assert hidden_by_overrides(config, {"1": same}) == ()  # the runtime definition is the file's: nothing hidden
    assert hidden_by_overrides(config, {"9": None}) == ()  # not in the file: nothing hidden
    hidden = dict(hidden_by_overrides(config, {"2": None, "1": config.extension("2")}))
    assert sorted(hidden) == ["1", "2"]
    assert "runtime definition wins" in hidden["1"] and "removed at run time" in hidden["2"]


def test_state_files_are_owner_only(gateway) -> None:
    base = gateway.base_port
    gateway.ctl("add-extension", {"id": "1500", "ia_port": base + 12, "retorno_port": base + 13,
                                  "options": {}})
    folder = gateway.folder / "state"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    files = [name for name in os.listdir(folder) if os.path.isfile(folder / name)]
    assert "extensions.json" in files and "workers.json" in files
    for name in files:
        assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600, name


def test_reset_whose_port_another_program_holds_changes_nothing(gateway) -> None:
    import socket

    gateway.ctl("remove-extension", {"id": "1202", "drain": 0})
    config = load_config(gateway.config_path)
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def bound() -> bool:  # the removal answers at once; the draining worker closes its copy on Drain
        try:
            holder.bind(("127.0.0.1", config.extension("1202").ia_port))
            return True
        except OSError:
            return False

    wait_for(bound, 5, what="the removed extension's port to be free")
    holder.listen()
    try:
        with pytest.raises(CtlRefused, match="reset of 1202 failed"):
            gateway.ctl("reset", {"id": "1202"})
    finally:
        holder.close()
    assert state_file(gateway)["removed"] == ["1202"] and "1202" not in rows(gateway)
    assert gateway.ctl("reset", {"id": "1202"})["action"] == "started"

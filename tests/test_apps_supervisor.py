"""A real supervisor refuses an app or option it cannot run before it binds, starts or saves
anything: `audiogw ctl add-extension` and `reload` say why (exit 1), the extension is neither
listed nor in the state file, and a good `module:Class` app outside the registry runs."""
from __future__ import annotations

import subprocess
import sys
import wave

import orjson
import pytest

from audiogw.shared.net import free_port_block
from supervisor_fixture import SupervisorProcess, kill_tree, write_config

pytestmark = pytest.mark.timeout(120)

STALL = "audiogw.bench.stall_app:StallApp"


@pytest.fixture
def supervisor(tmp_path):
    base = free_port_block(20)
    process = SupervisorProcess(tmp_path, write_config(tmp_path, base, extensions=1), base)
    process.start()
    yield process
    process.stop()
    if process.process is not None:
        kill_tree(process.process.pid)


def ctl(supervisor: SupervisorProcess, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from audiogw.client.cli import main; main()", "ctl", "--config",
         str(supervisor.config_path), *argv],
        capture_output=True, text=True, timeout=30, cwd=supervisor.folder,
    )


def saved_ids(supervisor: SupervisorProcess) -> set[str]:
    path = supervisor.folder / "state" / "extensions.json"
    if not path.exists():
        return set()
    return {entry["id"] for entry in orjson.loads(path.read_bytes())["added"]}


def test_bad_apps_and_options_are_refused_before_anything_is_saved(supervisor):
    refusals = [
        (["--app", "playback", "--option", "file=/nonexistent.wav"], "option file cannot be used: /nonexistent.wav"),
        (["--app", "playback"], "missing option(s) file"),
        (["--app", "agent", "--option", "url=http://x"], "option url 'http://x' must start with ws:// or wss://"),
        (["--app", "agent", "--option", "url=ws://x", "--option", "media_rate=16000"], "mulaw runs at 8000 Hz"),
        (["--option", "rate=11025"], "option rate must be"),
        (["--option", "volume=3"], "unknown option(s) volume"),
        (["--app", "karaoke"], "unknown app 'karaoke'"),
        (["--app", "stall"], "unknown app 'stall'"),  # benchmarks only: not in the production registry
        (["--app", "audiogw.nowhere:App"], "cannot import module audiogw.nowhere"),
        (["--app", "json:dumps"], "dumps is not an App subclass"),
    ]
    for number, (argv, reason) in enumerate(refusals):
        extension = str(1500 + number)
        result = ctl(supervisor, "add-extension", extension, *argv)
        assert result.returncode == 1, (argv, result)
        assert reason in result.stderr, (argv, result.stderr)
        assert extension not in {row["id"] for row in supervisor.ctl("list")}
    assert saved_ids(supervisor) == set(), "a refusal persists nothing"
    assert [row["id"] for row in supervisor.ctl("list")] == ["1201"]
    assert supervisor.process.poll() is None


def test_good_options_run_a_registry_app_and_an_app_by_reference(supervisor):
    with wave.open(str(supervisor.folder / "prompt.wav"), "wb") as prompt:  # next to the config file
        prompt.setnchannels(1), prompt.setsampwidth(2), prompt.setframerate(8000), prompt.writeframes(b"\0\0" * 800)
    for extension, argv in (("1601", ["--app", "playback", "--option", "file=prompt.wav", "--option", "loop=true"]),
                            ("1602", ["--app", STALL, "--option", "stall_seconds=0"])):
        result = ctl(supervisor, "add-extension", extension, *argv)
        assert result.returncode == 0, result
    rows = {row["id"]: row for row in supervisor.ctl("list")}
    assert rows["1601"]["options"] == {"file": "prompt.wav", "loop": True} and rows["1601"]["state"] == "running"
    assert rows["1602"]["app"] == STALL and rows["1602"]["state"] == "running"
    assert saved_ids(supervisor) == {"1601", "1602"}


def test_reload_refuses_a_config_with_a_bad_option_and_changes_nothing(supervisor):
    before = supervisor.ctl("list")
    text = supervisor.config_path.read_text()
    supervisor.config_path.write_text(
        text + '[[extension]]\nid = "1299"\nia_port = %d\nretorno_port = %d\napp = "agent"\n'
        'options = { url = "http://x" }\n' % (supervisor.base_port + 10, supervisor.base_port + 11)
    )
    result = subprocess.run(
        [sys.executable, "-c", "from audiogw.client.cli import main; main()", "ctl", "--endpoint",
         supervisor.endpoint, "reload"], capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1, result
    assert "extension[1].options.url" in result.stderr and "ws://" in result.stderr
    assert [row["id"] for row in supervisor.ctl("list")] == [row["id"] for row in before]
    assert saved_ids(supervisor) == set()


def test_a_state_file_entry_the_app_refuses_stops_the_start_with_the_reason(tmp_path):
    """Checked like the config file, before any worker or socket: exit 2 (config error), no traceback."""
    base = free_port_block(20)
    config_path = write_config(tmp_path, base, extensions=1)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "extensions.json").write_bytes(orjson.dumps({"added": [
        {"id": "1300", "ia_port": base + 10, "retorno_port": base + 11, "app": "playback",
         "options": {"file": "gone.wav"}}], "removed": []}))
    result = subprocess.run(
        [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start", "--config", str(config_path)],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert result.returncode == 2, result
    assert "added[0].options.file" in result.stderr and str(tmp_path / "gone.wav") in result.stderr
    assert "Traceback" not in result.stderr

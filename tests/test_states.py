"""Extension states and truthful replies, with a real supervisor (SPEC "Extension states and
truthful replies"): states with reasons in list/status, add/restart-extension that answer only
with the truth, busy ports that are `failed` and retried, `fatal` retried on a slow timer."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path

import orjson
import pytest

from audiogw.shared.commands import ADD_EXTENSION, RESTART_EXTENSION
from audiogw.shared.net import free_port_block
from audiogw.supervisor.lifecycle import RestartPolicy
from conftest import wait_for
from supervisor_fixture import SupervisorProcess, kill_tree, write_config

pytestmark = pytest.mark.timeout(120)

FAILING = "failing_app:FailingApp"  # tests/failing_app.py
TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _failing_app_importable(monkeypatch):
    """The supervisor (which checks the app) and its workers import tests/failing_app.py."""
    monkeypatch.setenv("PYTHONPATH", str(TESTS))


def configure(tmp_path: Path, base: int, supervisor_lines: list[str], extensions: int = 2, extra: str = "") -> Path:
    path = write_config(tmp_path, base, extensions=extensions)
    text = path.read_text().replace("[supervisor]\n", "[supervisor]\n" + "".join(f"{l}\n" for l in supervisor_lines))
    path.write_text(text + extra)
    return path


def launch(tmp_path: Path, config: Path, base: int) -> SupervisorProcess:
    """A supervisor started without waiting for every extension to serve (some are meant not to)."""
    log = open(tmp_path / "supervisor.log", "ab")
    process = SupervisorProcess(tmp_path, config, base)
    process.process = subprocess.Popen(
        [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start", "--config", str(config)],
        stdout=log, stderr=log, cwd=tmp_path,
    )
    wait_for(lambda: _answers(process), 20, what="supervisor to answer list")
    return process


def _answers(process: SupervisorProcess) -> bool:
    if process.process.poll() is not None:
        raise AssertionError(f"supervisor exited {process.process.returncode}:\n{process.log()}")
    try:
        process.ctl("list", timeout=1.0)
    except Exception:  # not listening yet
        return False
    return True


@pytest.fixture
def started():
    made: list[SupervisorProcess] = []
    yield made
    for process in made:
        process.stop()
        if process.process is not None:
            kill_tree(process.process.pid)


def ctl(supervisor: SupervisorProcess, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from audiogw.client.cli import main; main()", "ctl", "--config",
         str(supervisor.config_path), *argv],
        capture_output=True, text=True, timeout=timeout, cwd=supervisor.folder,
    )


def rows(supervisor: SupervisorProcess) -> dict[str, dict]:
    return {row["id"]: row for row in supervisor.ctl("list", timeout=2.0)}


def healthz(supervisor: SupervisorProcess) -> tuple[int, dict]:
    url = supervisor.metrics_url.replace("/metrics", "/healthz")
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def extension_up(supervisor: SupervisorProcess) -> dict[str, float]:
    return {s.labels["extension"]: s.value for s in supervisor.scrape()["audiogw_extension_up"].samples}


def saved_ids(supervisor: SupervisorProcess) -> set[str]:
    path = supervisor.folder / "state" / "extensions.json"
    if not path.exists():
        return set()
    return {entry["id"] for entry in orjson.loads(path.read_bytes())["added"]}


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def occupy(port: int) -> socket.socket:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen(1)
    return blocker


# ------------------------------------------------------------------- timeouts that cannot cross
def test_the_server_answers_before_ctl_gives_up_and_after_a_start_timeout():
    for spec in (ADD_EXTENSION, RESTART_EXTENSION):
        assert spec.server_wait is not None and spec.server_wait < spec.reply_timeout
        assert spec.client_timeout(1.0) == spec.reply_timeout > spec.server_wait, "a short --timeout cannot cross"
        assert spec.client_timeout(spec.reply_timeout * 2) == spec.reply_timeout * 2
        # the start timeout's kill, and its exit, are seen before the server stops waiting
        assert spec.server_wait > RestartPolicy().start_timeout + 1.0


# ------------------------------------------------------------------- 3. busy ports at start
def test_a_busy_port_at_start_is_failed_visible_and_retried_until_it_serves(tmp_path, started):
    base = free_port_block(20)
    config = configure(tmp_path, base, ["backoff_max = 1.0"])
    blocker = occupy(base + 2)  # extension 1202's ia port, held by another program
    try:
        supervisor = launch(tmp_path, config, base)
        started.append(supervisor)
        listed = wait_for(lambda: (r := rows(supervisor)).get("1202", {}).get("state") == "failed"
                          and r["1201"]["state"] == "running" and r, 15, what="1202 failed, 1201 running")
        reason = listed["1202"]["reason"]
        assert f"cannot listen on 127.0.0.1:{base + 2}" in reason and "Address already in use" in reason, reason
        human = ctl(supervisor, "list")
        assert human.returncode == 0 and "failed" in human.stdout and "Address already in use" in human.stdout
        status = orjson.loads(ctl(supervisor, "status", "1202", "--json").stdout)
        assert status[0]["state"] == "failed" and status[0]["reason"] == reason
        code, body = healthz(supervisor)
        assert code == 503 and body["down"] == ["1202"], body
        assert body["why"]["1202"]["state"] == "failed" and "Address already in use" in body["why"]["1202"]["reason"]
        wait_for(lambda: extension_up(supervisor) == {"1201": 1.0, "1202": 0.0}, 5, what="extension_up 1/0")
        first = rows(supervisor)["1202"]
        wait_for(lambda: supervisor.ctl("status", {"id": "1202"})[0]["restarts"] >= 2, 10,
                 what="the bind retried with backoff")
        assert rows(supervisor)["1202"]["state"] == "failed" and first["pid"] is None
    finally:
        blocker.close()
    wait_for(lambda: rows(supervisor)["1202"]["state"] == "running", 10, what="1202 serving once the port is free")
    wait_for(lambda: healthz(supervisor)[0] == 200, 5, what="healthz 200")
    wait_for(lambda: extension_up(supervisor) == {"1201": 1.0, "1202": 1.0}, 5, what="extension_up 1/1")
    with socket.create_connection(("127.0.0.1", base + 2), timeout=2):
        pass  # the worker's socket now


def test_an_explicit_busy_port_is_refused_as_such(tmp_path, started):
    base = free_port_block(20)
    supervisor = launch(tmp_path, configure(tmp_path, base, [], extensions=1), base)
    started.append(supervisor)
    busy = base + 10
    blocker = occupy(busy)
    try:
        for argv in (["--ia-port", str(busy), "--retorno-port", str(base + 11)],
                     ["--retorno-port", str(busy)]):  # the other port from the range
            result = ctl(supervisor, "add-extension", "1300", *argv)
            assert result.returncode == 1, result
            assert f"port {busy} is in use (cannot listen on 127.0.0.1:{busy}" in result.stderr, result.stderr
            assert "Address already in use" in result.stderr and "no two free ports" not in result.stderr
            assert "1300" not in rows(supervisor)
    finally:
        blocker.close()
    assert saved_ids(supervisor) == set()


# ------------------------------------------------------------------- 2. replies with the truth
def test_add_extension_answers_with_the_failure_and_leaves_nothing(tmp_path, started):
    base = free_port_block(20)
    supervisor = launch(tmp_path, configure(tmp_path, base, [], extensions=1), base)
    started.append(supervisor)
    cases = (("exit", "exited with code 3", []),
             ("config", "option until:  does not exist yet", []),  # the option error itself (Failed), not the code
             ("hang", "start timeout", ["--timeout", "1"]))  # ctl waits for the truth, whatever --timeout says
    for number, (mode, expected, before) in enumerate(cases):
        extension, ia, retorno = str(1400 + number), base + 10, base + 11
        begun = time.monotonic()
        result = ctl(supervisor, *before, "add-extension", extension, "--app", FAILING, "--option", f"mode={mode}",
                     "--ia-port", str(ia), "--retorno-port", str(retorno))
        took = time.monotonic() - begun
        assert result.returncode == 1, (mode, result)
        assert f"extension {extension} failed: " in result.stderr and expected in result.stderr, result.stderr
        assert "not added" in result.stderr and "no reply" not in result.stderr
        assert took < ADD_EXTENSION.reply_timeout
        assert extension not in rows(supervisor)
        assert port_is_free(ia) and port_is_free(retorno), "its ports are freed before the reply"
    assert saved_ids(supervisor) == set()
    assert list(rows(supervisor)) == ["1201"] and supervisor.process.poll() is None
    marker = tmp_path / "ready.marker"
    marker.touch()
    result = ctl(supervisor, "--json", "add-extension", "1410", "--app", FAILING, "--option", "mode=config",
                 "--option", f"until={marker}")
    assert result.returncode == 0, result
    answer = orjson.loads(result.stdout)
    assert answer["state"] == "running" and answer["pid"] and answer["reason"] is None
    assert saved_ids(supervisor) == {"1410"}


# ------------------------------------------------------------------- 4. fatal on a slow timer
def test_fatal_is_retried_on_the_slow_timer_counted_and_recovers_on_its_own(tmp_path, started):
    base = free_port_block(20)
    marker = tmp_path / "ready.marker"
    extra = (f'[[extension]]\nid = "1300"\nia_port = {base + 10}\nretorno_port = {base + 11}\napp = "{FAILING}"\n'
             f'options = {{ mode = "config", until = "{marker}" }}\n')
    supervisor = launch(tmp_path, configure(tmp_path, base, ["fatal_retry = 1.0"], extensions=1, extra=extra), base)
    started.append(supervisor)
    row = wait_for(lambda: (r := rows(supervisor)["1300"])["state"] == "fatal" and r, 15, what="1300 fatal")
    assert row["reason"] == f"option until: {marker} does not exist yet", row  # the worker's own error (Failed)
    wait_for(lambda: supervisor.ctl("status", {"id": "1300"})[0]["fatal_retries"] >= 2, 10,
             what="two slow retries")
    assert rows(supervisor)["1300"]["state"] in ("fatal", "starting")
    counted = {s.labels["extension"]: s.value for s in supervisor.scrape()["audiogw_worker_fatal_retries"].samples}
    assert counted["1300"] >= 2 and counted["1201"] == 0
    marker.touch()
    wait_for(lambda: rows(supervisor)["1300"]["state"] == "running", 10, what="1300 serving on its own")


def test_restart_extension_clears_fatal_at_once_and_says_when_it_fails_again(tmp_path, started):
    base = free_port_block(20)
    marker = tmp_path / "ready.marker"
    extra = (f'[[extension]]\nid = "1300"\nia_port = {base + 10}\nretorno_port = {base + 11}\napp = "{FAILING}"\n'
             f'options = {{ mode = "config", until = "{marker}" }}\n')
    supervisor = launch(tmp_path, configure(tmp_path, base, [], extensions=1, extra=extra), base)  # fatal_retry 60 s
    started.append(supervisor)
    wait_for(lambda: rows(supervisor)["1300"]["state"] == "fatal", 15, what="1300 fatal")
    result = ctl(supervisor, "restart-extension", "1300")
    assert result.returncode == 1 and "restarted but failed" in result.stderr, result
    assert f"option until: {marker} does not exist yet" in result.stderr and "code 78" not in result.stderr, result
    assert rows(supervisor)["1300"]["state"] == "fatal"
    marker.touch()
    begun = time.monotonic()
    result = ctl(supervisor, "--json", "restart-extension", "1300")
    assert result.returncode == 0, result
    assert orjson.loads(result.stdout)["state"] == "running"
    assert time.monotonic() - begun < RestartPolicy().start_timeout, "at once, not on the 60 s timer"


def test_a_playback_file_that_vanished_is_the_reason_of_fatal_and_of_the_refusal(tmp_path, started):
    """The file was there when the extension was added; a worker restart finds it gone and exits 78.
    Its reason (list, status, the restart-extension refusal) is the option error, not the exit code."""
    base = free_port_block(20)
    supervisor = launch(tmp_path, configure(tmp_path, base, [], extensions=1), base)
    started.append(supervisor)
    prompt = tmp_path / "prompt.wav"
    with wave.open(str(prompt), "wb") as file:
        file.setnchannels(1), file.setsampwidth(2), file.setframerate(8000), file.writeframes(b"\0\0" * 800)
    result = ctl(supervisor, "add-extension", "1300", "--app", "playback", "--option", f"file={prompt}")
    assert result.returncode == 0, result
    prompt.unlink()
    os.kill(rows(supervisor)["1300"]["pid"], signal.SIGKILL)  # its restart reads the options again
    row = wait_for(lambda: (r := rows(supervisor)["1300"])["state"] == "fatal" and r, 15, what="1300 fatal")
    assert str(prompt) in row["reason"] and "option file" in row["reason"] and "code 78" not in row["reason"], row
    assert supervisor.ctl("status", {"id": "1300"})[0]["reason"] == row["reason"]
    result = ctl(supervisor, "restart-extension", "1300")
    assert result.returncode == 1 and row["reason"] in result.stderr, result


def test_reload_of_an_extension_whose_port_is_busy_lists_it_failed_then_serves(tmp_path, started):
    base = free_port_block(20)
    config = configure(tmp_path, base, ["backoff_max = 1.0"], extensions=1)
    supervisor = launch(tmp_path, config, base)
    started.append(supervisor)
    blocker = occupy(base + 11)  # the retorno port of the extension the reload adds
    try:
        config.write_text(config.read_text() + f'[[extension]]\nid = "1300"\nia_port = {base + 10}\n'
                                               f'retorno_port = {base + 11}\n')
        result = ctl(supervisor, "reload")
        assert result.returncode == 0, result
        row = wait_for(lambda: (r := rows(supervisor).get("1300")) and r["state"] == "failed" and r, 10,
                       what="1300 failed after the reload")
        assert f"cannot listen on 127.0.0.1:{base + 11} (retorno leg of extension 1300)" in row["reason"]
        assert port_is_free(base + 10), "nothing half-bound while it waits"
        assert healthz(supervisor)[0] == 503
    finally:
        blocker.close()
    wait_for(lambda: rows(supervisor)["1300"]["state"] == "running", 10, what="1300 serving once the port is free")


def test_readiness_is_not_held_back_by_a_busy_port_and_status_names_it(tmp_path, started, monkeypatch):
    """A fake $NOTIFY_SOCKET: READY=1 arrives although 1202 cannot serve, with STATUS= saying why."""
    base = free_port_block(20)
    config = configure(tmp_path, base, [])
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(15)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    blocker = occupy(base + 2)
    try:
        supervisor = launch(tmp_path, config, base)
        started.append(supervisor)
        while True:
            message = notify.recv(4096).decode()
            if "READY=1" in message:
                break
        status = dict(line.split("=", 1) for line in message.splitlines())["STATUS"]
        assert status.startswith("serving 1/2; 1202 failed: cannot listen on"), status
        assert rows(supervisor)["1201"]["state"] == "running"
    finally:
        blocker.close()
        notify.close()

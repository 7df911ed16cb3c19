"""The reload plan (a pure function of two configs), the live restart policy, and
Supervisor.reload carrying a plan out in-process (no worker is started)."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from audiogw.shared.config import Config, ConfigError, ExtensionConfig, load_config
from audiogw.shared.settings import RELOAD_NOTES, SECTIONS, Reload, Setting
from audiogw.supervisor.daemon import Supervisor, restart_policy
from audiogw.supervisor.extension import ExtensionRuntime
from audiogw.supervisor.lifecycle import RestartPolicy, WorkerLifecycle, WorkerState
from audiogw.supervisor.metrics import heartbeat_timeout_of
from audiogw.supervisor.reload_plan import plan_reload
from supervisor_fixture import METRICS_OFFSET, supervisor_process

BASE = """
[supervisor]
{supervisor}
[audiosocket]
{audiosocket}
[cluster]
{cluster}
{extensions}
"""

TWO = """
[[extension]]
id = "1201"
ia_port = 40000
retorno_port = 40001
app = "echo"

[[extension]]
id = "1202"
ia_port = 40002
retorno_port = 40003
app = "bridge"
"""


def config(tmp_path: Path, *, supervisor: str = "", audiosocket: str = "", extensions: str = TWO,
           name: str = "audiogw.toml", cluster: str = "") -> Config:
    """The same file (same path) each time, as a reload re-reads it."""
    path = tmp_path / name
    supervisor = _with_base(supervisor, control='"ipc://run/control.sock"', metrics='"127.0.0.1:9464"',
                            state_dir='"var"')
    audiosocket = _with_base(audiosocket, bind='"127.0.0.1"')
    cluster = _with_base(cluster, etcd='["http://127.0.0.1:2379"]', name='"gw1"') if cluster else ""
    path.write_text(textwrap.dedent(BASE.format(supervisor=supervisor, audiosocket=audiosocket, cluster=cluster,
                                                extensions=extensions)))
    return load_config(path)


def _with_base(lines: str, **base: str) -> str:
    """The section's lines plus the base values of the keys they do not set."""
    named = {line.split("=", 1)[0].strip() for line in lines.splitlines() if "=" in line}
    return "\n".join([lines, *(f"{key} = {value}" for key, value in base.items() if key not in named)])


def running_of(cfg: Config) -> dict[str, ExtensionConfig]:
    return {extension.id: extension for extension in cfg.extensions}


def keys(changes) -> list[str]:
    return [change.key for change in changes]


# ---------------------------------------------------------------- extensions


def test_nothing_changed_touches_nothing(tmp_path: Path) -> None:
    old = config(tmp_path)
    plan = plan_reload(old, config(tmp_path), running_of(old))
    assert plan.result() == {"added": [], "removed": [], "changed": [], "unchanged": ["1201", "1202"], "overridden": []}
    assert not (plan.live or plan.new_workers or plan.restart or plan.keep_old or plan.log_lines())
    assert plan.config == old


def test_extensions_added_removed_replaced(tmp_path: Path) -> None:
    old = config(tmp_path)
    new = config(tmp_path, extensions=TWO.replace('app = "bridge"', 'app = "echo"').replace('id = "1201"', 'id = "1203"'))
    plan = plan_reload(old, new, running_of(old))
    assert plan.result() == {"added": ["1203"], "removed": ["1201"], "changed": ["1202"], "unchanged": [], "overridden": []}
    assert plan.replace[0].app == "echo" and plan.add[0].ia_port == 40000


def test_only_extensions_the_old_config_wanted_are_removed(tmp_path: Path) -> None:
    old = config(tmp_path)
    stray = ExtensionConfig("1300", 40100, 40101, "echo")
    plan = plan_reload(old, config(tmp_path, extensions=""), {**running_of(old), "1300": stray})
    assert plan.remove == ("1201", "1202")


def test_the_stores_view_decides_what_is_wanted(tmp_path: Path) -> None:
    """The supervisor passes its store's ``effective``: ctl-added extensions stay, ctl-removed stay away."""
    old = config(tmp_path)
    added = ExtensionConfig("1300", 40100, 40101, "echo")

    def effective(extensions):
        result = {e.id: e for e in extensions if e.id != "1202"}
        result["1300"] = added
        return result

    running = {"1201": old.extensions[0], "1300": added}
    plan = plan_reload(old, config(tmp_path), running, effective)
    assert plan.result() == {"added": [], "removed": [], "changed": [], "unchanged": ["1201", "1300"], "overridden": []}


# ------------------------------------------------------------------ settings


def test_changes_are_sorted_by_their_declared_policy(tmp_path: Path) -> None:
    old = config(tmp_path)
    new = config(tmp_path, supervisor='heartbeat_timeout = 6.0\nmetrics = "127.0.0.1:9500"',
                 audiosocket="realtime_priority = 5")
    plan = plan_reload(old, new, running_of(old))
    assert keys(plan.live) == ["supervisor.heartbeat_timeout"]
    assert keys(plan.new_workers) == ["audiosocket.realtime_priority"]
    assert keys(plan.restart) == ["supervisor.metrics"]
    assert plan.restart[0].old == ("127.0.0.1", 9464) and plan.restart[0].new == ("127.0.0.1", 9500)
    # The config run afterwards: live and new-worker values in, the restart value kept.
    assert plan.config.supervisor.heartbeat_timeout == 6.0
    assert plan.config.audiosocket.realtime_priority == 5
    assert (plan.config.supervisor.metrics_host, plan.config.supervisor.metrics_port) == ("127.0.0.1", 9464)
    assert plan.keep_old == ("1201", "1202")


def _changed_value(setting: Setting) -> str | None:
    """A valid value other than the default, for the keys that have a plain numeric one."""
    if isinstance(setting.default, float):
        return repr(setting.default + 1.0)
    if isinstance(setting.default, int) and not isinstance(setting.default, bool):
        return str(setting.default + 1)
    return None


NUMERIC = [setting for settings in SECTIONS.values() for setting in settings if _changed_value(setting) is not None]


@pytest.mark.parametrize("setting", NUMERIC, ids=lambda setting: setting.key)
def test_each_changed_key_lands_in_its_policy(tmp_path: Path, setting: Setting) -> None:
    assert len(NUMERIC) >= 10  # the generic test covers most keys
    # [cluster] keys change within cluster mode (its etcd list and name come from config()).
    old = config(tmp_path, **({"cluster": f"{setting.name} = {setting.default}"} if setting.section == "cluster" else {}))
    line = f"{setting.name} = {_changed_value(setting)}"
    new = config(tmp_path, **{setting.section: line})
    plan = plan_reload(old, new, running_of(old))
    lists = {Reload.LIVE: plan.live, Reload.NEW_WORKERS: plan.new_workers, Reload.RESTART: plan.restart}
    assert {policy: keys(changes) for policy, changes in lists.items()} == {
        policy: [setting.key] if policy is setting.reload else [] for policy in Reload}
    in_effect = setting.read(getattr(plan.config, setting.section))
    expected = setting.read(getattr(old if setting.reload is Reload.RESTART else new, setting.section))
    assert in_effect == expected


def test_restart_keys_keep_their_running_values(tmp_path: Path) -> None:
    old = config(tmp_path)
    new = config(tmp_path, supervisor='state_dir = "elsewhere"\ncontrol = "ipc://other.sock"',
                 audiosocket='bind = "0.0.0.0"\nlisten_backlog = 64')
    plan = plan_reload(old, new, running_of(old))
    assert keys(plan.restart) == ["supervisor.control", "supervisor.state_dir", "audiosocket.bind",
                                  "audiosocket.listen_backlog"]
    assert plan.config.supervisor == old.supervisor and plan.config.audiosocket == old.audiosocket
    assert [line for _, line in plan.log_lines()] == [
        f"reload: {key} changed; it takes effect at the next start" for key in keys(plan.restart)]


def test_log_lines_follow_the_policy(tmp_path: Path) -> None:
    old = config(tmp_path)
    new = config(tmp_path, supervisor="backoff_max = 5.0", audiosocket="lead_frames = 4")
    lines = plan_reload(old, new, running_of(old)).log_lines()
    assert lines == [
        (logging.INFO, "reload: supervisor.backoff_max changed; applied"),
        (logging.WARNING, f"reload: audiosocket.lead_frames changed; {RELOAD_NOTES[Reload.NEW_WORKERS]}"),
    ]
    # No worker keeps the old value when every one is replaced: nothing to warn about.
    replaced = config(tmp_path, audiosocket="lead_frames = 4", extensions=TWO.replace('"echo"', '"agent"\noptions = { url = "ws://x" }')
                      .replace('"bridge"', '"echo"'))
    plan = plan_reload(old, replaced, running_of(old))
    assert plan.keep_old == () and plan.log_lines() == [(logging.INFO, "reload: audiosocket.lead_frames changed; applied")]


def test_a_timeout_the_running_workers_interval_would_trip_is_refused(tmp_path: Path) -> None:
    old = config(tmp_path, supervisor="heartbeat_interval = 2.0\nheartbeat_timeout = 6.0")
    new = config(tmp_path, supervisor="heartbeat_interval = 0.5\nheartbeat_timeout = 1.5")
    with pytest.raises(ConfigError) as info:
        plan_reload(old, new, running_of(old))
    assert info.value.key == "supervisor.heartbeat_timeout" and "(2 s)" in info.value.reason
    # With no worker left running on the old interval the same change is fine.
    assert plan_reload(old, new, {}).config.supervisor.heartbeat_timeout == 1.5


def test_a_port_the_running_metrics_listener_holds_is_refused(tmp_path: Path) -> None:
    old = config(tmp_path)
    extra = TWO + '\n[[extension]]\nid = "1203"\nia_port = 9464\nretorno_port = 9465\napp = "echo"\n'
    new = config(tmp_path, supervisor='metrics = "127.0.0.1:9500"', extensions=extra)
    with pytest.raises(ConfigError) as info:
        plan_reload(old, new, running_of(old))
    assert info.value.key == "extension[2].ia_port"
    assert info.value.reason == "port 9464 is also supervisor.metrics until the supervisor restarts"


# ------------------------------------------------------- the live restart policy


def test_set_policy_moves_the_heartbeat_deadline_at_once() -> None:
    life = WorkerLifecycle(RestartPolicy(heartbeat_timeout=3.0))
    life.start(0.0)
    life.spawned(0.0)
    life.ready(0.1)
    life.heartbeat(1.0)
    assert life.next_deadline() == pytest.approx(4.0)
    life.set_policy(RestartPolicy(heartbeat_timeout=10.0), now=2.0)
    assert life.next_deadline() == pytest.approx(11.0)
    assert life.tick(5.0).value == "none"  # the old timeout would have killed it here
    assert life.state is WorkerState.RUNNING


def test_set_policy_cuts_a_running_backoff_to_the_new_maximum() -> None:
    life = WorkerLifecycle(RestartPolicy(backoff_initial=20.0, backoff_max=30.0))
    life.start(0.0)
    life.spawned(0.0)
    life.exited(1.0, code=1, signal=None)
    assert life.state is WorkerState.BACKOFF and life.retry_at == pytest.approx(21.0)
    life.set_policy(RestartPolicy(backoff_initial=1.0, backoff_max=2.0), now=3.0)
    assert life.retry_at == pytest.approx(5.0)
    life.set_policy(RestartPolicy(backoff_initial=1.0, backoff_max=60.0), now=4.0)
    assert life.retry_at == pytest.approx(5.0)  # never lengthened


def test_set_policy_changes_the_flap_limit() -> None:
    life = WorkerLifecycle(RestartPolicy(flap_max_restarts=5, flap_window=100.0))
    life.start(0.0)
    for attempt in range(2):
        life.spawned(attempt * 1.0)
        life.exited(attempt * 1.0 + 0.5, code=1, signal=None)
        if life.state is WorkerState.BACKOFF:
            life.tick(life.retry_at)
        assert life.state is WorkerState.STARTING  # 2 exits: within the old limit
    life.set_policy(RestartPolicy(flap_max_restarts=2, flap_window=100.0), now=3.0)
    life.spawned(3.0)
    life.exited(3.5, code=1, signal=None)
    assert life.state is WorkerState.FATAL


# ------------------------------------------------- Supervisor.reload, in-process


class NoZygote:
    def spawn(self, *args, **kwargs):
        raise AssertionError("this reload must not start a worker")


def test_reload_applies_the_policy_to_every_runtime_and_healthz_agrees(tmp_path: Path) -> None:
    folder = tmp_path / "gw"
    folder.mkdir()
    old = config(folder, supervisor="heartbeat_timeout = 3.0\nbackoff_max = 30.0")
    supervisor = Supervisor(old, NoZygote())
    try:
        for extension in old.extensions:  # as if their workers ran: unchanged, so not restarted
            supervisor.extensions[extension.id] = ExtensionRuntime(extension, {}, restart_policy(old))
        config(folder, supervisor='heartbeat_timeout = 7.5\nbackoff_max = 4.0\nmetrics = "127.0.0.1:9999"')
        result = asyncio.run(supervisor.reload())
        assert result == {"added": [], "removed": [], "changed": [], "unchanged": ["1201", "1202"], "overridden": []}
        for runtime in supervisor.extensions.values():
            assert runtime.lifecycle.policy == restart_policy(supervisor.config)
            assert runtime.lifecycle.policy.heartbeat_timeout == heartbeat_timeout_of(supervisor) == 7.5
            assert runtime.lifecycle.policy.backoff_max == 4.0
        assert supervisor.config.supervisor.metrics_port == 9464  # a restart setting stays as it runs
    finally:
        supervisor._bus.close(linger=0)
        supervisor._zmq.term()


def test_reload_applies_a_new_log_level_to_the_supervisor(tmp_path: Path) -> None:
    folder = tmp_path / "gw"
    folder.mkdir()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    old = config(folder, supervisor='log_level = "info"', extensions="")
    supervisor = Supervisor(old, NoZygote())
    try:
        config(folder, supervisor='log_level = "debug"', extensions="")
        asyncio.run(supervisor.reload())
        assert supervisor.config.supervisor.log_level == "debug" and root.level == logging.DEBUG
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        supervisor._bus.close(linger=0)
        supervisor._zmq.term()


# ---------------------------------------------- a real supervisor carries it out


gateway = pytest.fixture(name="gateway")(supervisor_process)


def _healthz(gateway) -> tuple[int, dict]:
    url = gateway.metrics_url.removesuffix("/metrics") + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_reloaded_heartbeat_timeout_governs_lifecycle_and_healthz_alike(gateway) -> None:
    """A worker silent for longer than the old timeout (1 s) but well within the reloaded one
    is neither killed nor reported down; an extension moved away frees its ports for a new
    one listed before it; a moved metrics listener waits for a restart."""
    assert _healthz(gateway)[0] == 200
    base = gateway.base_port
    text = gateway.config_path.read_text().replace("heartbeat_timeout = 1.0", "heartbeat_timeout = 30.0")
    metrics_line = f'metrics = "127.0.0.1:{base + METRICS_OFFSET}"'
    assert metrics_line in text
    text = text.replace(metrics_line, 'metrics = "127.0.0.1:1"')
    text = text.replace(f'id = "1202"\nia_port = {base + 2}\nretorno_port = {base + 3}',
                        f'id = "1203"\nia_port = {base + 2}\nretorno_port = {base + 3}\n'
                        f'[[extension]]\nid = "1202"\nia_port = {base + 4}\nretorno_port = {base + 5}')
    gateway.config_path.write_text(text)
    result = gateway.ctl("reload")
    assert result == {"added": ["1203"], "removed": [], "changed": ["1202"], "unchanged": ["1201"], "overridden": []}
    log = gateway.log()
    assert "reload: supervisor.heartbeat_timeout changed; applied" in log
    assert "reload: supervisor.metrics changed; it takes effect at the next start" in log

    pid = gateway.pids()["1201"]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(2.0)  # twice the old timeout
        status, body = _healthz(gateway)  # the old listener still answers (a restart setting)
        rows = {row["id"]: row for row in gateway.ctl("list")}
    finally:
        with contextlib.suppress(ProcessLookupError):  # killed as hung: the assertion below says so
            os.kill(pid, signal.SIGCONT)
    assert rows["1201"]["pid"] == pid and rows["1201"]["state"] == "running", rows["1201"]
    assert status == 200 or "1201" not in body.get("down", []), body

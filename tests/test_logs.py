"""Logs: every line JSON under log_format = "json" (ours, websockets', the demo agent's, warnings),
main events as fields, and secrets redacted at every level."""
from __future__ import annotations

import asyncio
import io
import logging
import warnings
from pathlib import Path

import orjson
import pytest

from audiogw.client.softphone import place_call
from audiogw.shared import logs
from audiogw.shared.net import free_port_block
from supervisor_fixture import SupervisorProcess, kill_tree

TOKEN = "Bearer s3cr3t-t0ken-for-the-agent"


@pytest.fixture
def captured():
    """configure_logging() writing to a buffer; the root logger restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    buffer = io.StringIO()

    def configure(log_format: str, level: str = "debug") -> io.StringIO:
        logs.configure_logging(log_format, level)
        for handler in root.handlers:
            handler.setStream(buffer)  # type: ignore[attr-defined]
        return buffer

    yield configure
    root.handlers[:], _ = saved
    root.setLevel(saved[1])
    logging.captureWarnings(False)


def test_json_lines_carry_extra_fields_warnings_and_redaction(captured) -> None:
    buffer = captured("json")
    logs.register_secret("another-secret-value")
    log = logging.getLogger("audiogw.test")
    log.info("worker ready extension=%s", "1201", extra={"event": "worker_ready", "extension": "1201"})
    logging.getLogger("websockets.client").debug("> %s: %s", "Authorization", TOKEN)
    log.debug("headers {'Authorization': 'x'} and a value another-secret-value inside")
    warnings.warn("a python warning", UserWarning, stacklevel=1)
    try:
        raise RuntimeError("boom with another-secret-value")
    except RuntimeError:
        log.exception("failed")
    entries = [orjson.loads(line) for line in buffer.getvalue().splitlines()]  # every line is JSON
    assert len(entries) == 5
    assert entries[0]["event"] == "worker_ready" and entries[0]["extension"] == "1201"
    assert entries[0]["message"] == "worker ready extension=1201"
    assert entries[1]["message"] == "> Authorization: [redacted]"
    assert "another-secret-value" not in buffer.getvalue() and TOKEN not in buffer.getvalue()
    assert entries[3]["logger"] == "py.warnings" and "a python warning" in entries[3]["message"]
    assert "RuntimeError" in entries[4]["exception"]


def test_human_format_prints_todays_text(captured) -> None:
    buffer = captured("human")
    logging.getLogger("audiogw.test").info("leg start extension=%s", "1201", extra={"event": "leg_start"})
    assert buffer.getvalue().rstrip().endswith("INFO audiogw.test[%d] leg start extension=1201" % __import__("os").getpid())


def test_a_json_debug_supervisor_with_an_agent_logs_only_json_and_never_the_token(tmp_path: Path) -> None:
    base = free_port_block(4)
    demo_port = base + 3
    config = tmp_path / "audiogw.toml"
    config.write_text(
        '[supervisor]\ncontrol = "ipc://run/control.sock"\nmetrics = "127.0.0.1:0"\nstate_dir = "state"\n'
        'log_format = "json"\nlog_level = "debug"\n'
        f'demo_agent = "127.0.0.1:{demo_port}"\n'
        f'[audiosocket]\nbind = "127.0.0.1"\nport_range = [{base}, {base + 2}]\n'
        f'[[extension]]\nid = "1201"\nia_port = {base}\nretorno_port = {base + 1}\napp = "agent"\n'
        f'options = {{ url = "ws://127.0.0.1:{demo_port}/media", headers = {{ Authorization = "{TOKEN}" }} }}\n'
    )
    supervisor = SupervisorProcess(tmp_path, config, base).start()
    try:
        result = asyncio.run(place_call("127.0.0.1", base, seconds=1.0))
        assert result.frames_received > 0
    finally:
        supervisor.stop()
        kill_tree(supervisor.process.pid)
    text = supervisor.log()
    assert TOKEN not in text and "s3cr3t" not in text
    entries = []
    for line in text.splitlines():
        try:
            entries.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    loggers = {entry["logger"] for entry in entries}
    assert "audiogw.demo_agent" in loggers, loggers  # the demo agent's lines too
    assert any(name.startswith("websockets") for name in loggers), loggers  # its debug handshake lines
    assert any("Authorization: [redacted]" in entry["message"] for entry in entries)
    events = {entry.get("event") for entry in entries}
    assert {"worker_ready", "leg_start", "leg_end"} <= events, events
    leg_end = next(entry for entry in entries if entry.get("event") == "leg_end")
    assert leg_end["extension"] == "1201" and isinstance(leg_end["frames_in"], int)


def test_a_dead_weak_proxy_in_extra_neither_breaks_the_line_nor_the_log(captured) -> None:
    import weakref

    class Connection:
        pass

    buffer = captured("json")
    connection = Connection()
    proxy = weakref.proxy(connection)
    del connection  # websockets passes its connection as a weak proxy; it may be gone when the line is written
    logging.getLogger("websockets.client").debug("> EOF", extra={"websocket": proxy})
    [entry] = [orjson.loads(line) for line in buffer.getvalue().splitlines()]
    assert entry["message"] == "> EOF" and entry["websocket"] is None

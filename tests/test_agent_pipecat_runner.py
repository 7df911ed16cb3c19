"""Pipecat 1.14's own runner, unchanged, against a real worker (skipped without pipecat-ai).

- Without TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN the runner's serializer raises on every
  connection (its default ``auto_hang_up`` needs them): the worker's reconnect delay grows.
- With them, the bot's whole reply is heard, then the leg hangs up when the bot closes (its
  REST hang-up goes to api.twilio.com, which the runner cannot be pointed away from, and fails).
  Pipecat paces long audio at about real time and ends with 2 s of silence, so what is still
  queued at its close is mostly that silence: the play-out's own proof is tests/test_agent_close.py.
"""
from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

pytest.importorskip("pipecat.runner.run", reason="pipecat-ai[websocket,runner] is not installed")

from audiogw.client.softphone import place_call  # noqa: E402
from audiogw.shared.mulaw import decode_mulaw, encode_mulaw  # noqa: E402
from audiogw.shared.net import free_port_block  # noqa: E402
from audiogw.worker.apps import agent as agent_module  # noqa: E402
from conftest import wait_for  # noqa: E402
from pipecat_runner_bot import reply  # noqa: E402  (the bot's words, to compare with what was heard)

BOT = Path(__file__).with_name("pipecat_runner_bot.py")


@pytest.fixture
def runner(tmp_path):
    """Starts ``pipecat_runner_bot.py -t twilio`` with the given TWILIO_* variables; returns its /ws url."""
    started: list[subprocess.Popen] = []

    def start(**twilio: str) -> str:
        port = free_port_block(1)
        env = {key: value for key, value in os.environ.items() if not key.startswith("TWILIO_")}
        env.update(twilio)
        log = open(tmp_path / f"runner-{len(started)}.log", "wb")
        process = subprocess.Popen([sys.executable, str(BOT), "-t", "twilio", "--host", "127.0.0.1",
                                    "--port", str(port)], stdout=log, stderr=log, env=env, cwd=tmp_path)
        started.append(process)

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the runner exited with {process.returncode}")
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 60, what="Pipecat's runner to listen")
        return f"ws://127.0.0.1:{port}/ws"

    yield start
    for process in started:
        process.terminate()
        process.wait(10)


def test_without_twilio_credentials_the_runner_fails_every_connection_and_the_backoff_grows(start_worker, runner):
    url = runner()
    worker = start_worker("agent", f"url={url}")
    result = asyncio.run(place_call("127.0.0.1", worker.ia_port, seconds=4.0))
    assert result.hung_up_by == "client" and not numpy.abs(result.recorded).any(), "silence meanwhile"
    delays = [float(value) for value in re.findall(r"agent connection lost .*?; retry in ([0-9.]+)s", worker.log())]
    first = agent_module.FIRST_RETRY_DELAY
    assert len(delays) >= 3, worker.log()
    assert delays == [first * 2 ** index for index in range(len(delays))], "doubling, not 0.5 s forever"


def test_with_twilio_credentials_the_whole_reply_is_heard_before_the_bot_hangs_up(start_worker, runner):
    url = runner(TWILIO_ACCOUNT_SID="AC" + "0" * 32, TWILIO_AUTH_TOKEN="not-a-real-token")
    worker = start_worker("agent", f"url={url}")
    result = asyncio.run(place_call("127.0.0.1", worker.ia_port, seconds=10.0))
    assert result.hung_up_by == "server"
    expected = decode_mulaw(encode_mulaw(reply()))[1:]  # from its first non-zero sample
    heard = result.recorded
    start = int(numpy.flatnonzero(heard)[0])
    assert numpy.array_equal(heard[start : start + expected.size], expected), "the whole reply, no hole"
    worker.wait_log("reason=agent_hangup")

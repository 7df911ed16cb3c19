"""examples/pipecat_doorman.py for real: Pipecat's runner and Twilio serializer, driven by the
same fake gateway as the demo agent's doorman (tests/doorman_gateway.py), with a REST
endpoint of the Twilio shape to receive the serializer's ``auto_hang_up``."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import subprocess
import sys
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy
import pytest

pytest.importorskip("pipecat.runner.run", reason="pipecat-ai[websocket,runner] is not installed (extra `pipecat`)")

from audiogw.client.softphone import place_call  # noqa: E402
from audiogw.shared.net import free_port_block  # noqa: E402
from audiogw.shared.wav import tone  # noqa: E402

from doorman_gateway import (  # noqa: E402
    FakeLeg, assert_told_bridged_and_hung_up, at, call_sid, heard_tone, tone_power, visitor_and_resident, write_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pipecat_doorman.py"
from doorman_gateway import RATE, VISITOR_HZ  # noqa: E402

ACCOUNT_SID, AUTH_TOKEN = "AC" + "1" * 32, "secret-token-0123456789"  # audiogw wants >= 16 characters
START_SECONDS = 60.0  # importing pipecat (numba, onnxruntime) is slow on a loaded 2-core machine


class RestRecorder(ThreadingHTTPServer):
    """Twilio's Calls resource, as far as a hang-up goes: records each POST, answers 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict]] = []

        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                recorder.requests.append((self.path, self.headers.get("Authorization", ""),
                                          dict(urllib.parse.parse_qsl(body))))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "completed"}')

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture(scope="module")
def rest():
    server = RestRecorder()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@dataclass
class Bot:
    url: str
    log_path: Path
    by_rest: bool  # TWILIO_* set: auto_hang_up (REST) ends calls; else audiogw.hangup events


@contextlib.contextmanager
def running_bot(folder: Path, twilio: dict[str, str]):
    """examples/pipecat_doorman.py under Pipecat's runner on a free port, with these TWILIO_* only."""
    port = free_port_block(1)
    log_path = folder / "pipecat.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("TWILIO_")}
    env.update(twilio, NO_COLOR="1")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, str(EXAMPLE), "-t", "twilio", "--host", "127.0.0.1",
                                    "--port", str(port)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   env=env, cwd=folder)
    try:
        asyncio.run(_wait_listening(port, process, log_path))
        yield Bot(f"ws://127.0.0.1:{port}/ws", log_path, bool(twilio))
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module", params=["rest", "events"])
def pipecat_bot(request, tmp_path_factory, rest):
    """One bot per hang-up mode for the module (starting Pipecat takes seconds); each test
    clears ``rest.requests``."""
    twilio = {}
    if request.param == "rest":
        twilio = dict(TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=AUTH_TOKEN,
                      TWILIO_BASE_URL=f"http://127.0.0.1:{rest.server_address[1]}")
    with running_bot(tmp_path_factory.mktemp("pipecat"), twilio) as bot:
        yield bot


async def _wait_listening(port: int, process: subprocess.Popen, log_path: Path) -> None:
    async with asyncio.timeout(START_SECONDS):
        while True:
            assert process.poll() is None, f"the bot exited: {log_path.read_text(errors='replace')[-2000:]}"
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.2)
                continue
            writer.close()
            return


def test_pipecat_doorman_runs_the_flow_on_pipecats_twilio_serializer(pipecat_bot, rest):
    url, log_path = pipecat_bot.url, pipecat_bot.log_path
    rest.requests.clear()
    turn = numpy.concatenate([tone(VISITOR_HZ, 0.8, RATE, 0.3), numpy.zeros(RATE, dtype=numpy.int16)])

    async def scenario():
        call = call_sid()
        visitor = await FakeLeg(url, "ia", call).open()
        greeting = await visitor.wait_audio_seconds(1.4)  # greeting (0.92 s) + who (0.53 s)
        assert not visitor.events("audiogw.dial")
        assert tone_power(greeting, VISITOR_HZ, RATE) < 0.05
        await visitor.say(turn, paced=True)  # a phone sends in real time
        dial = await visitor.wait_event("audiogw.dial")
        assert dial == {"event": "audiogw.dial", "streamSid": visitor.session.stream_sid, "dial": {"timeout": 30.0}}
        await visitor.dial_status("ringing")
        await visitor.dial_status("answered")

        resident = await FakeLeg(url, "retorno", call).open()
        told = await resident.wait_audio_seconds(0.71 + 0.8 + 0.71 - 0.1)  # announce, the recording, menu
        announce = int(0.71 * RATE)
        recording = told[announce + RATE // 10 : announce + int(0.7 * RATE)]
        assert tone_power(recording, VISITOR_HZ, RATE) > 0.9, "the resident hears the visitor's own turn"

        await resident.dtmf("1")
        assert (await visitor.wait_event("audiogw.bridge"))["streamSid"] == visitor.session.stream_sid
        await resident.dtmf("9")
        assert (await visitor.wait_event("audiogw.send_dtmf"))["send_dtmf"] == {"leg": "ia", "digits": "9"}
        await resident.dtmf("2")
        await visitor.wait_closed()
        await resident.wait_closed()
        hangups = sorted(event["hangup"]["leg"] for event in visitor.events("audiogw.hangup"))
        assert hangups == ([] if pipecat_bot.by_rest else ["ia", "retorno"])  # with REST, that hangs up
        assert not resident.events("audiogw.hangup")  # audiogw's events travel on the visitor's stream
        return call

    call = asyncio.run(scenario())
    if not pipecat_bot.by_rest:
        assert not rest.requests
        return
    # Each leg's pipeline ended with Pipecat's auto_hang_up against TWILIO_BASE_URL.
    expected_auth = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
    path = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls/{call}.json"
    assert rest.requests, log_path.read_text(errors="replace")[-3000:]
    assert {request[0] for request in rest.requests} == {path}
    assert all(auth == expected_auth and form == {"Status": "completed"} for _, auth, form in rest.requests)


def test_pipecat_doorman_tells_the_visitor_when_nobody_answers(pipecat_bot, rest):
    url = pipecat_bot.url
    rest.requests.clear()
    turn = numpy.concatenate([tone(VISITOR_HZ, 0.6, RATE, 0.3), numpy.zeros(RATE, dtype=numpy.int16)])

    async def scenario():
        visitor = await FakeLeg(url, "ia", call_sid()).open()
        await visitor.wait_audio_seconds(1.4)
        await visitor.say(turn, paced=True)
        await visitor.wait_event("audiogw.dial")
        before = len(visitor.received)
        await visitor.dial_status("busy")
        await visitor.wait_closed()
        expected = [] if pipecat_bot.by_rest else [{"leg": "ia"}]
        assert [event["hangup"] for event in visitor.events("audiogw.hangup")] == expected
        # "nobody answers" (falling to 392 Hz, which "wait" has not) before the hang-up
        assert heard_tone(visitor.audio(before), 392.0, RATE) > 0.8

    asyncio.run(scenario())
    assert len(rest.requests) == (1 if pipecat_bot.by_rest else 0)


def test_pipecat_doorman_through_a_real_supervisor_and_worker(pipecat_bot, rest, tmp_path):
    """The Pipecat bot as an agent extension's agent: two softphone legs with one UUID."""
    from supervisor_fixture import SupervisorProcess, kill_tree

    url, log_path = pipecat_bot.url, pipecat_bot.log_path
    rest.requests.clear()
    base = write_config(tmp_path, url)
    supervisor = SupervisorProcess(tmp_path, tmp_path / "audiogw.toml", base).start()
    # Room for Pipecat's way to end: its EndFrame flushes 2 s of silence before the socket closes.
    seconds = 18.0
    try:
        visitor, resident = visitor_and_resident(base, seconds)
    finally:
        kill_tree(supervisor.process.pid)
        supervisor.stop()
    log = supervisor.log()
    assert_told_bridged_and_hung_up(visitor, resident, log + log_path.read_text(errors="replace"), seconds)
    if pipecat_bot.by_rest:  # the bot's pipeline ended first: Pipecat posted its REST hang-up
        assert rest.requests and all(form == {"Status": "completed"} for _, _, form in rest.requests)
    else:
        assert "agent hangs up leg=ia" in log and not rest.requests  # the bot's audiogw.hangup


@pytest.mark.parametrize("token", [AUTH_TOKEN, "not-the-token-0123456789"], ids=["right", "wrong"])
def test_pipecat_doorman_auto_hang_up_against_audiogws_rest_subset(tmp_path, token):
    """TWILIO_* pointed at a real supervisor's REST subset: the bot's auto_hang_up ends the call.

    A lone visitor: the dial fails (no [asterisk] here), "nobody answers", then the bot's pipeline
    ends and Pipecat posts Status=completed with basic auth to audiogw, which hangs the call up.
    With a wrong token audiogw answers 401 (Pipecat logs it) and the bot's close ends the leg."""
    from supervisor_fixture import SupervisorProcess, kill_tree

    base = free_port_block(5)
    metrics = base + 4  # base + 3: the (unused) reference agent's
    with running_bot(tmp_path, dict(TWILIO_ACCOUNT_SID=ACCOUNT_SID, TWILIO_AUTH_TOKEN=token,
                                     TWILIO_BASE_URL=f"http://127.0.0.1:{metrics}")) as bot:
        write_config(tmp_path, bot.url, base=base, metrics=f"127.0.0.1:{metrics}", account=(ACCOUNT_SID, AUTH_TOKEN))
        supervisor = SupervisorProcess(tmp_path, tmp_path / "audiogw.toml", base).start()
        seconds = 20.0
        try:
            visitor = asyncio.run(place_call("127.0.0.1", base, source=at(1.6, VISITOR_HZ, 1.0, seconds),
                                             seconds=seconds))
        finally:
            kill_tree(supervisor.process.pid)
            supervisor.stop()
        bot_log = bot.log_path.read_text(errors="replace")
    log = supervisor.log()
    call = "CA" + visitor.call_uuid.hex
    if token == AUTH_TOKEN:
        assert f"Successfully terminated Twilio call {call}" in bot_log, bot_log[-3000:]  # audiogw answered 200
        assert "reason=rest_hangup" in log, log[-3000:]
    else:
        assert f"Failed to terminate Twilio call {call}: Status 401" in bot_log, bot_log[-3000:]
        assert "reason=rest_hangup" not in log and "reason=agent_hangup" in log, log[-3000:]
    assert visitor.hung_up_by == "server" and visitor.duration < seconds, (visitor.hung_up_by, log[-3000:])
    assert heard_tone(visitor.recorded[int(2.6 * RATE) :], 392.0, RATE) > 0.8  # "nobody answers" first

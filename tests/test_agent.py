"""The `agent` app against scripted WebSocket agents: a real worker process, real
AudioSocket calls from the softphone, a real websockets server in this process."""
from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable

import numpy
import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from audiogw.client.softphone import place_call
from audiogw.shared.media_streams import agent_clear_message, agent_mark_message, agent_media_message
from audiogw.shared.mulaw import encode_mulaw
from audiogw.shared.wav import tone
from conftest import assert_clock_kept, wait_for

Script = Callable[[ServerConnection, "ScriptedAgent"], Awaitable[None]]
FRAME = 160  # samples per 20 ms at 8 kHz
LOUD_RMS = 1000.0


class ScriptedAgent:
    """A voice agent whose behaviour each test writes as a coroutine; it records every message."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.messages: list[tuple[float, dict]] = []
        self.sessions = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._events: dict[str, asyncio.Event] = {}
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/media"

    def start(self) -> "ScriptedAgent":
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._handle, "127.0.0.1", 0) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    async def _handle(self, websocket: ServerConnection) -> None:
        self.sessions += 1
        reader = asyncio.ensure_future(self._read(websocket))
        try:
            await self.script(websocket, self)
            await reader
        finally:
            reader.cancel()

    async def _read(self, websocket: ServerConnection) -> None:
        async for raw in websocket:
            message = orjson.loads(raw)
            self.messages.append((time.time(), message))
            self._event(message.get("event")).set()

    def _event(self, name: str) -> asyncio.Event:
        return self._events.setdefault(name, asyncio.Event())

    async def wait(self, name: str, timeout: float = 5.0) -> None:
        await asyncio.wait_for(self._event(name).wait(), timeout)

    def events(self, name: str) -> list[dict]:
        return [message for _, message in self.messages if message.get("event") == name]

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)


@pytest.fixture
def agent_server():
    started: list[ScriptedAgent] = []

    def start(script: Script) -> ScriptedAgent:
        agent = ScriptedAgent(script).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def burst(samples: numpy.ndarray, stream_sid: str, chunk: int) -> list[bytes]:
    """One reply as µ-law media messages of ``chunk`` samples, to be sent all at once."""
    return [agent_media_message(stream_sid, encode_mulaw(samples[offset : offset + chunk]))
            for offset in range(0, samples.size, chunk)]


def stream_sid(agent: ScriptedAgent) -> str:
    return agent.events("start")[-1]["streamSid"]


def loud_frames(recorded: numpy.ndarray) -> numpy.ndarray:
    """Per 20 ms frame: True where the caller heard audio (not silence)."""
    usable = recorded[: recorded.size - recorded.size % FRAME].astype(numpy.float64).reshape(-1, FRAME)
    return numpy.sqrt((usable ** 2).mean(axis=1)) > LOUD_RMS


def call(port: int, seconds: float, **kwargs):
    return asyncio.run(place_call("127.0.0.1", port, seconds=seconds, **kwargs))


# ----------------------------------------------------------------------------- tests
def test_stream_handshake_media_dtmf_marks_and_stop(start_worker, agent_server):
    reply = tone(440, 1.0, 8000)
    mark_sent_at: list[float] = []

    async def script(websocket, agent):
        await agent.wait("start")
        for message in burst(reply, stream_sid(agent), chunk=296):  # 37 ms chunks: not frame-sized
            await websocket.send(message.decode())
        await websocket.send(agent_mark_message(stream_sid(agent), "reply-1").decode())
        mark_sent_at.append(time.time())

    agent = agent_server(script)
    worker = start_worker("agent", f"url={agent.url}")
    call_uuid = uuid.uuid4()
    result = call(worker.ia_port, 3.0, call_uuid=call_uuid, dtmf="5", dtmf_at=1.5)

    wait_for(lambda: agent.events("stop"), 5, what="the stop message")
    connected, start = agent.messages[0][1], agent.messages[1][1]
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["event"] == "start" and start["sequenceNumber"] == "1"
    assert start["start"]["callSid"] == "CA" + call_uuid.hex
    assert start["start"]["customParameters"] == {"extension": "1201", "leg": "ia"}
    assert start["start"]["mediaFormat"] == {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
    media = agent.events("media")
    assert len(media) >= 140  # ~150 frames of caller audio in 3 s
    assert [int(m["media"]["chunk"]) for m in media] == list(range(1, len(media) + 1))
    assert [int(m["media"]["timestamp"]) for m in media[:3]] == [0, 20, 40]
    assert all(m["media"]["track"] == "inbound" and m["streamSid"] == start["streamSid"] for m in media)
    numbers = [int(message["sequenceNumber"]) for _, message in agent.messages[1:]]
    assert numbers == list(range(1, len(numbers) + 1))
    assert [m["dtmf"]["digit"] for m in agent.events("dtmf")] == ["5"]
    marks = [(at, m) for at, m in agent.messages if m.get("event") == "mark"]
    assert [m["mark"]["name"] for _, m in marks] == ["reply-1"]
    # Echoed when playback reached it: about one second of audio after the burst was sent.
    assert 0.8 <= marks[0][0] - mark_sent_at[0] <= 1.5

    heard = loud_frames(result.recorded)
    assert 45 <= heard.sum() <= 52  # the one-second reply, paced out, nothing lost or doubled
    assert_clock_kept(result)
    assert result.hung_up_by == "client"
    [record] = worker.wait_legs()
    assert record.underruns == 0


def test_clear_drops_what_was_not_played_and_echoes_pending_marks(start_worker, agent_server):
    async def script(websocket, agent):
        await agent.wait("start")
        sid = stream_sid(agent)
        for message in burst(tone(300, 5.0, 8000), sid, chunk=800):
            await websocket.send(message.decode())
        await websocket.send(agent_mark_message(sid, "long-reply").decode())
        await asyncio.sleep(0.6)
        await websocket.send(agent_clear_message(sid).decode())

    agent = agent_server(script)
    worker = start_worker("agent", f"url={agent.url}")
    result = call(worker.ia_port, 3.0)
    heard = loud_frames(result.recorded)
    assert 20 <= heard.sum() <= 45, heard.sum()  # ~0.6 s, then the clear stopped it
    assert not heard[-50:].any()  # the last second is silence: the rest of the 5 s reply was dropped
    assert [m["mark"]["name"] for m in agent.events("mark")] == ["long-reply"]


def test_agent_closing_the_socket_hangs_up_the_leg(start_worker, agent_server):
    async def script(websocket, agent):
        await agent.wait("start")
        await websocket.close()

    agent = agent_server(script)
    worker = start_worker("agent", f"url={agent.url}")
    result = call(worker.ia_port, 5.0)
    assert result.hung_up_by == "server"
    assert result.duration < 2.0
    worker.wait_log("reason=agent_hangup")


def test_bad_agent_messages_are_refused_and_the_leg_survives(start_worker, agent_server):
    async def script(websocket, agent):
        await agent.wait("start")
        sid = stream_sid(agent)
        for junk in ("{not json", "[1, 2]", '{"event": "dance"}', '{"event": "media", "media": {"payload": "@@@"}}',
                     '{"event": "mark", "mark": {}}'):
            await websocket.send(junk)
        await websocket.send(b"\x00\x01binary")
        for message in burst(tone(500, 0.5, 8000), sid, chunk=160):
            await websocket.send(message.decode())

    agent = agent_server(script)
    worker = start_worker("agent", f"url={agent.url}")
    result = call(worker.ia_port, 2.0)
    assert result.hung_up_by == "client"
    assert 22 <= loud_frames(result.recorded).sum() <= 27  # the valid reply after the junk still plays
    log = worker.wait_log("further ones are only counted", "leg end")
    for reason in ("bad_json", "not_an_object", "unknown_event", "bad_base64"):
        assert f"reason={reason}" in log, reason
    assert "further ones are only counted" in log  # the sixth bad message was not logged
    assert log.count("agent message refused") == 5
    assert str(result.call_uuid) in log.split("agent message refused")[1].splitlines()[0]


def test_l16_payload_of_odd_length_is_refused(start_worker, agent_server):
    async def script(websocket, agent):
        await agent.wait("start")
        assert agent.events("start")[0]["start"]["mediaFormat"] == {"encoding": "audio/L16", "sampleRate": 16000, "channels": 1}
        sid = stream_sid(agent)
        await websocket.send(orjson.dumps({"event": "media", "streamSid": sid, "media": {"payload": "AAAA"}}).decode())
        samples = tone(440, 0.5, 16000)
        await websocket.send(agent_media_message(sid, samples.astype(">i2").tobytes()).decode())

    agent = agent_server(script)
    worker = start_worker("agent", f"url={agent.url}", "encoding=l16", "media_rate=16000")
    result = call(worker.ia_port, 1.5)
    worker.wait_log("reason=odd_length")
    assert 22 <= loud_frames(result.recorded).sum() <= 27  # 0.5 s at 16 kHz, resampled to the 8 kHz leg
    # The caller's 8 kHz audio reached the agent as 16 kHz big-endian L16, all of it.
    payloads = [base64.b64decode(m["media"]["payload"]) for m in agent.events("media")]
    samples = sum(len(payload) // 2 for payload in payloads)
    assert 0.9 * 1.5 * 16000 <= samples <= 1.02 * 1.5 * 16000, samples


def test_a_flooding_agent_is_bounded_and_the_newest_audio_plays(start_worker, agent_server):
    async def script(websocket, agent):
        await agent.wait("start")
        sid = stream_sid(agent)
        quiet = (tone(400, 9.0, 8000) * 0).astype(numpy.int16)  # nine seconds the caller must never hear
        for message in burst(quiet, sid, chunk=8000):
            await websocket.send(message.decode())
        for message in burst(tone(400, 1.0, 8000), sid, chunk=8000):
            await websocket.send(message.decode())

    agent = agent_server(script)
    worker = start_worker("agent", f"url={agent.url}", "max_buffer_seconds=1.5")
    result = call(worker.ia_port, 2.5)
    heard = loud_frames(result.recorded)
    # 10 s pushed into a 1.5 s buffer: the oldest 8.5 s were dropped, so the loud
    # second arrives after half a second of the kept silence, not after nine.
    first_loud = int(numpy.argmax(heard))
    assert heard.any() and first_loud <= 40, first_loud
    assert 45 <= heard.sum() <= 52


def test_unreachable_agent_means_silence_a_logged_failure_and_retries(start_worker, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    worker = start_worker("agent", f"url=ws://127.0.0.1:{dead_port}/media")
    result = call(worker.ia_port, 2.5)
    assert result.hung_up_by == "client"
    assert not loud_frames(result.recorded).any()
    assert result.frames_received >= 120
    assert_clock_kept(result)
    log = worker.wait_log("retry in 1.0s")
    assert log.count("agent unreachable") >= 2  # it kept trying while the call lasted
    assert "retry in 0.5s" in log and "retry in 1.0s" in log


def test_fallback_prompt_plays_while_the_agent_is_down(start_worker, tmp_path):
    from audiogw.shared.wav import write_wav

    write_wav(tmp_path / "sorry.wav", tone(600, 0.6, 16000), 16000)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    worker = start_worker("agent", f"url=ws://127.0.0.1:{dead_port}/media", f"fallback={tmp_path / 'sorry.wav'}")
    result = call(worker.ia_port, 2.0)
    assert 27 <= loud_frames(result.recorded).sum() <= 33  # played once, not looped per retry
    [record] = worker.wait_legs()
    assert record.underruns == 0  # the silence after a finished prompt is no underrun


def test_an_agent_that_never_answers_the_handshake_times_out(start_worker):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts TCP, never speaks HTTP
    try:
        worker = start_worker("agent", f"url=ws://127.0.0.1:{silent.getsockname()[1]}/media", "connect_timeout=0.3")
        result = call(worker.ia_port, 1.5)
        assert result.hung_up_by == "client" and result.frames_received >= 70
        worker.wait_log("agent unreachable", "TimeoutError")
    finally:
        silent.close()


def test_a_dropped_connection_is_reopened_with_a_new_stream(start_worker, agent_server):
    async def script(websocket, agent):
        await agent.wait("start")
        if agent.sessions == 1:
            websocket.transport.abort()  # no close frame: the connection is lost, not closed
            return
        for message in burst(tone(440, 0.4, 8000), stream_sid(agent), chunk=800):
            await websocket.send(message.decode())

    agent = agent_server(script)
    worker = start_worker("agent", f"url={agent.url}")
    result = call(worker.ia_port, 2.5)
    assert agent.sessions == 2
    starts = agent.events("start")
    assert len(starts) == 2 and starts[0]["streamSid"] != starts[1]["streamSid"]
    assert starts[0]["start"]["callSid"] == starts[1]["start"]["callSid"] == "CA" + result.call_uuid.hex
    assert 17 <= loud_frames(result.recorded).sum() <= 22
    worker.wait_log("agent connection lost")


def test_barge_in_stops_playback_and_tells_the_agent(start_worker, agent_server):
    async def script(websocket, agent):
        await agent.wait("start")
        for message in burst(tone(300, 6.0, 8000), stream_sid(agent), chunk=1600):
            await websocket.send(message.decode())
        await websocket.send(agent_mark_message(stream_sid(agent), "reply").decode())

    agent = agent_server(script)
    worker = start_worker("agent", f"url={agent.url}", "barge_in=true")
    speech_starts = 1.0
    caller = numpy.concatenate([numpy.zeros(int(8000 * speech_starts), numpy.int16), tone(1000, 1.0, 8000, amplitude=0.5)])
    result = call(worker.ia_port, 3.0, source=caller)
    heard = loud_frames(result.recorded)
    stopped = int(numpy.argmin(heard[5:])) + 5  # first silent frame after playback began
    assert heard[5:40].all()  # the agent was talking...
    assert 50 <= stopped <= 55, stopped  # ...and stopped within ~100 ms of the caller's speech at frame 50
    assert not heard[stopped:].any()  # the rest of the reply never played
    barge_ins = agent.events("barge_in")
    assert len(barge_ins) == 1 and barge_ins[0]["streamSid"] == stream_sid(agent)
    assert [m["mark"]["name"] for m in agent.events("mark")] == ["reply"]  # pending mark echoed on the clear
    [record] = worker.wait_legs()
    [reaction] = record.app["barge_in_ms"]  # the worker's own view: speech onset to playback stop
    assert 0 < reaction < 200, reaction
    assert "barge-in" in worker.log()


def test_supervisor_runs_the_demo_agent_for_its_agent_extension(tmp_path):
    from audiogw.shared.net import free_port_block
    from supervisor_fixture import SupervisorProcess, kill_tree

    base = free_port_block(4)
    demo_port = base + 3
    config = tmp_path / "audiogw.toml"
    config.write_text(
        '[supervisor]\ncontrol = "ipc://run/control.sock"\nmetrics = "127.0.0.1:0"\nstate_dir = "state"\n'
        f'demo_agent = "127.0.0.1:{demo_port}"\n'
        f'[audiosocket]\nbind = "127.0.0.1"\nport_range = [{base}, {base + 2}]\n'
        f'[[extension]]\nid = "1201"\nia_port = {base}\nretorno_port = {base + 1}\napp = "agent"\n'
        f'options = {{ url = "ws://127.0.0.1:{demo_port}/media" }}\n'
    )
    supervisor = SupervisorProcess(tmp_path, config, base).start()
    try:
        result = call(base, 3.0)
        heard = loud_frames(result.recorded)
        assert 35 <= heard.sum() <= 50, heard.sum()  # the 0.92 s greeting chime, then silence
        assert_clock_kept(result)
        demo = [process for process in psutil_children(supervisor.process.pid)
                if "audiogw.client.demo_agent" in " ".join(process.cmdline())]
        assert len(demo) == 1
        supervisor.process.kill()  # kill -9: the demo agent notices it lost its parent and exits
        supervisor.process.wait()
        wait_for(lambda: not demo[0].is_running() or demo[0].status() == "zombie", 5, what="the demo agent to exit")
    finally:
        kill_tree(supervisor.process.pid)
        supervisor.stop()


def psutil_children(pid: int):
    import psutil

    return psutil.Process(pid).children(recursive=True)

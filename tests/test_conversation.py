"""The agent-driven conversation across processes: a real worker started through the WorkerSpec path
with a calls endpoint, a ZeroMQ ROUTER in this test playing the supervisor's calls socket, a
WebSocket agent in this test, and two softphone legs (ia and retorno) with one UUID.

The agent dials (the ROUTER receives Dial), the "supervisor" answers with DialStatus (the agent
receives audiogw.dial_status), the agent bridges (each caller hears the other, the resident also
hears the agent's speech mixed in), unbridges (the voices stop), sends DTMF (SendDtmf at the
ROUTER) and hangs up the retorno leg only; bad events, from the agent and from the "supervisor",
are refused with reasons and the legs survive.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy
import orjson
import pytest
import zmq

from audiogw.client.softphone import place_call
from audiogw.shared.media_streams import (
    agent_bridge_message, agent_dial_message, agent_hangup_message, agent_media_message, agent_send_dtmf_message,
)
from audiogw.shared.messages import (
    Dial, DialStatus, LegEnded, LegStarted, SendDtmf, decode_call_request, encode_call_message,
)
from audiogw.shared.mulaw import encode_mulaw
from audiogw.shared.records import read_leg_records, read_ready
from audiogw.shared.wav import tone
from conftest import wait_for
from test_agent import ScriptedAgent

RATE = 8000
WINDOW = 1600  # 0.2 s: every tone below has whole cycles in it
VISITOR_HZ, RESIDENT_HZ, AGENT_HZ = 700, 400, 1500
AMPLITUDE = 0.2
HEARD = 0.5  # a tone is heard in a window when its level is at least this fraction of what was sent
SILENT = 0.05


class ConversationAgent(ScriptedAgent):
    """A WebSocket agent that keeps each leg's stream (by customParameters.leg) for the test to speak on."""

    def __init__(self) -> None:
        super().__init__(script=None)
        self.streams: dict[str, tuple[object, str]] = {}
        self.by_leg: dict[str, list[dict]] = defaultdict(list)

    async def _handle(self, websocket) -> None:
        self.sessions += 1
        leg = "?"
        async for raw in websocket:
            message = orjson.loads(raw)
            if message.get("event") == "start":
                leg = message["start"]["customParameters"]["leg"]
                self.streams[leg] = (websocket, message["streamSid"])
            self.by_leg[leg].append(message)

    def sid(self, leg: str) -> str:
        return self.streams[leg][1]

    def send(self, leg: str, message: bytes | str) -> None:
        text = message.decode() if isinstance(message, bytes) else message
        asyncio.run_coroutine_threadsafe(self.streams[leg][0].send(text), self._loop).result(5)

    def events(self, leg: str, name: str) -> list[dict]:
        return [message for message in list(self.by_leg[leg]) if message.get("event") == name]


class FakeSupervisor:
    """The supervisor's calls ROUTER: what the worker requests, and events back to it."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(endpoint)
        self.received: list = []
        self.identity: bytes | None = None

    def _poll(self, timeout: float) -> None:
        if self.socket.poll(int(timeout * 1000)):
            identity, raw = self.socket.recv_multipart()
            self.identity = identity
            self.received.append(decode_call_request(raw))

    def expect(self, kind: type, timeout: float = 5.0, **fields):
        def found():
            self._poll(0.05)
            return next((request for request in self.received if isinstance(request, kind)
                         and all(getattr(request, name) == value for name, value in fields.items())), None)

        return wait_for(found, timeout, interval=0, what=f"{kind.__name__} {fields} at the ROUTER")

    def send(self, event) -> None:
        self.socket.send_multipart([self.identity, encode_call_message(event)])

    def send_raw(self, raw: bytes) -> None:
        self.socket.send_multipart([self.identity, raw])

    def close(self) -> None:
        self.socket.close()
        self.context.term()


def tone_level(samples: numpy.ndarray, frequency: float) -> float:
    """The amplitude of ``frequency`` in ``samples`` (fraction of full scale), by correlation with it."""
    t = numpy.arange(samples.size) / RATE
    reference = numpy.exp(-2j * numpy.pi * frequency * t)
    return float(abs(numpy.dot(samples.astype(numpy.float64), reference)) * 2 / samples.size / 32767)


def windows(recorded: numpy.ndarray) -> list[numpy.ndarray]:
    usable = recorded[: recorded.size - recorded.size % WINDOW]
    return list(usable.reshape(-1, WINDOW))


def call_in_thread(port: int, call_uuid: uuid.UUID, source: numpy.ndarray, seconds: float, results: dict, name: str):
    def run() -> None:
        results[name] = asyncio.run(place_call("127.0.0.1", port, call_uuid=call_uuid, source=source,
                                               seconds=seconds))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def conversation_worker(tmp_path: Path):
    started: list[tuple[subprocess.Popen, FakeSupervisor, ConversationAgent]] = []

    def start():
        supervisor = FakeSupervisor(f"ipc://{tmp_path}/calls.sock")
        agent = ConversationAgent().start()
        log_path = tmp_path / "worker.log"
        ready, records = tmp_path / "ready.json", tmp_path / "legs.jsonl"
        helper = Path(__file__).with_name("calls_worker.py")
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, str(helper), f"ipc://{tmp_path}/calls.sock", str(ready), str(records), "agent",
                 f"url={agent.url}"], stdout=log_file, stderr=log_file, cwd=tmp_path)
        started.append((process, supervisor, agent))

        def serving():
            if process.poll() is not None:
                raise AssertionError(f"worker exited with {process.returncode}:\n{log_path.read_text()}")
            return read_ready(ready)

        found = wait_for(serving, 15, what="the worker to serve")
        return found.ports, supervisor, agent, log_path, records

    yield start
    for process, supervisor, agent in started:
        if process.poll() is None:
            process.terminate()
            process.wait(10)
        supervisor.close()
        agent.stop()


def test_the_agent_dials_bridges_unbridges_sends_dtmf_and_hangs_up_the_resident(conversation_worker) -> None:
    ports, supervisor, agent, log_path, records = conversation_worker()
    call_uuid = uuid.uuid4()
    key = str(call_uuid)
    results: dict = {}
    visitor = call_in_thread(ports["ia"], call_uuid, tone(VISITOR_HZ, 12.0, RATE, AMPLITUDE), 7.0, results, "ia")
    supervisor.expect(LegStarted, leg="ia", uuid=key)
    wait_for(lambda: "ia" in agent.streams, 5, what="the ia stream")

    # Bad events first: refused with reasons, the leg lives on.
    agent.send("ia", '{"event": "audiogw.hangup", "hangup": {"leg": "lobby"}}')
    agent.send("ia", agent_send_dtmf_message(agent.sid("ia"), "ia", "open"))
    agent.send("ia", '{"event": "audiogw.dial", "dial": {"timeout": 9999}}')

    agent.send("ia", agent_dial_message(agent.sid("ia"), 20))
    dial = supervisor.expect(Dial)
    assert dial == Dial(extension="1201", uuid=key, timeout=20.0)
    supervisor.send_raw(b'{"type": "dial_status", "status": "ringing"}')  # malformed: refused, counted
    supervisor.send(DialStatus(extension="1201", uuid=key, status="ringing"))
    wait_for(lambda: agent.events("ia", "audiogw.dial_status"), 5, what="ringing at the agent")
    assert agent.events("ia", "audiogw.dial_status")[0]["dial_status"] == {"status": "ringing", "leg": "retorno"}

    resident = call_in_thread(ports["retorno"], call_uuid, tone(RESIDENT_HZ, 12.0, RATE, AMPLITUDE), 10.0,
                              results, "retorno")
    supervisor.expect(LegStarted, leg="retorno", uuid=key)
    wait_for(lambda: "retorno" in agent.streams, 5, what="the retorno stream")
    supervisor.send(DialStatus(extension="1201", uuid=key, status="answered"))
    wait_for(lambda: agent.events("retorno", "audiogw.dial_status")
             and len(agent.events("ia", "audiogw.dial_status")) == 2, 5, what="answered on both streams")
    assert agent.events("retorno", "audiogw.dial_status")[0]["dial_status"]["status"] == "answered"
    time.sleep(0.6)  # not bridged yet: the resident hears only the agent (nothing)

    agent.send("ia", agent_bridge_message(agent.sid("ia")))
    speech = tone(AGENT_HZ, 1.2, RATE, AMPLITUDE)
    for offset in range(0, speech.size, 160):
        agent.send("retorno", agent_media_message(agent.sid("retorno"), encode_mulaw(speech[offset : offset + 160])))
    time.sleep(1.6)  # bridged a while
    agent.send("retorno", agent_bridge_message(agent.sid("retorno"), bridge=False))
    time.sleep(1.2)  # unbridged a while
    agent.send("ia", agent_send_dtmf_message(agent.sid("ia"), "ia", "9"))
    assert supervisor.expect(SendDtmf) == SendDtmf(extension="1201", uuid=key, leg="ia", digits="9")
    agent.send("ia", agent_hangup_message(agent.sid("ia"), "retorno"))
    supervisor.expect(LegEnded, leg="retorno", uuid=key)
    resident.join(10)
    visitor.join(10)

    heard_by_resident, heard_by_visitor = results["retorno"], results["ia"]
    assert heard_by_resident.hung_up_by == "server", "the agent's hangup ended the resident's leg"
    assert heard_by_visitor.hung_up_by == "client", "the visitor's leg lived on to its end"
    [retorno_record] = [record for record in read_leg_records(records) if record.leg == "retorno"]
    assert retorno_record.reason == "agent_hangup"

    resident_windows = windows(heard_by_resident.recorded)
    visitor_windows = windows(heard_by_visitor.recorded)
    # Bridged: the resident heard the visitor, with the agent's speech mixed in; the visitor heard the resident.
    assert any(tone_level(w, VISITOR_HZ) > HEARD * AMPLITUDE and tone_level(w, AGENT_HZ) > HEARD * AMPLITUDE
               for w in resident_windows), "visitor and agent mixed at the resident"
    assert any(tone_level(w, RESIDENT_HZ) > HEARD * AMPLITUDE for w in visitor_windows)
    # Before the bridge nobody heard the other; after the unbridge neither did.
    assert tone_level(resident_windows[0], VISITOR_HZ) < SILENT * AMPLITUDE
    for w in resident_windows[-3:]:  # the last 0.6 s before the agent's hangup: unbridged
        assert tone_level(w, VISITOR_HZ) < SILENT * AMPLITUDE
    for w in visitor_windows[-5:]:  # the visitor's last second: the resident is gone
        assert tone_level(w, RESIDENT_HZ) < SILENT * AMPLITUDE

    log = log_path.read_text()
    for reason in ("reason=bad_leg", "reason=bad_digits", "reason=bad_dial"):
        assert reason in log, f"{reason} refused and logged"
    assert "call event refused" in log
    assert "Traceback" not in log

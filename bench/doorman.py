"""Benchmark the doorman conversation: the agent rings the resident, bridges the two, speaks over the bridge.

    python -m audiogw.bench.doorman [--conversations 20] [--pacing-conversations 10]
                                    [--pacing-seconds 10] [--json]

A real supervisor (``audiogw-supervisor start``, default config but for the
private addresses) serves one ``agent`` extension whose agent is a scripted
WebSocket server in this process. Two parts, one after the other:

1. **Through a real Asterisk** (AMI on, the extension's own ``ctl dialplan``
   lines): a visitor is originated into the generated dialplan and reaches the
   ia port; its other half is a fake phone here sending a 500 Hz tone. On the
   ia stream's ``start`` the agent sends ``audiogw.dial``; the resident (a Local
   channel into a context that answers at once and runs ``AudioSocket()`` to a
   second fake phone, 900 Hz) joins on the retorno port and its stream
   ``start`` reaches the agent: **dial -> start**. 0.3 s later the agent sends
   ``audiogw.bridge``: **bridge -> first bridged frame** at each phone (the
   first received frame loud with the other side's tone; before the bridge
   each phone hears silence). Conversations run one at a time. Moments on this
   side are ``time.time()`` at the read (the phones are plain asyncio servers,
   so the bench's own loop lag counts against audiogw here).
2. **Pacing while bridged** (softphones straight on the ports, as Asterisk's
   ``AudioSocket()`` would connect, kernel receive timestamps): N
   conversations at once, visitor on ia and resident on retorno with one UUID;
   the agent bridges them as soon as both streams started and speaks a 1 s
   tone burst to the visitor's leg every 2 s (mixed with the resident's
   voice). Targets: p99 deviation of arrival intervals from 20 ms <= 2 ms and
   no gap over 40 ms on both legs.

Exit status: 0 when the run completed (PASS or FAIL), 1 when it broke.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from audiogw.bench.asterisk import BenchError, Supervisor
from audiogw.client.asterisk import PrivateAsterisk, find_asterisk, manager_conf
from audiogw.client.softphone import place_call
from audiogw.shared.audiosocket import FRAME_PERIOD, KIND_FOR_RATE, Kind, encode_header, frame_bytes
from audiogw.shared.config import load_config
from audiogw.shared.pacing import pacing_stats_many
from audiogw.shared.twilio_ids import call_sid_for
from audiogw.shared.mulaw import encode_mulaw
from audiogw.shared.net import free_port_block
from audiogw.supervisor.dialplan import dialplan_for

EXTENSION = "1201"
AMI_USER, AMI_SECRET = "audiogw", "bench-secret"
RATE = 8000
VISITOR_HZ, RESIDENT_HZ, AGENT_HZ = 500.0, 900.0, 1400.0
LOUD_RMS = 300.0  # a tone at -20 dBFS is ~2300 RMS; silence is 0
BRIDGE_AFTER = 0.3


def tone(hz: float, seconds: float, amplitude: float = 3000.0) -> numpy.ndarray:
    t = numpy.arange(round(seconds * RATE)) / RATE
    return (amplitude * numpy.sin(2 * numpy.pi * hz * t)).astype(numpy.int16)


def summary_ms(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    array = numpy.asarray(values) * 1000.0
    return {"n": len(values), "p50": round(float(numpy.percentile(array, 50)), 1),
            "p95": round(float(numpy.percentile(array, 95)), 1), "max": round(float(array.max()), 1)}


# --------------------------------------------------------------------------
# The scripted agent
# --------------------------------------------------------------------------
@dataclass
class Conversation:
    """What the agent saw of one conversation (one callSid), with time.time() moments."""

    ia: ServerConnection | None = None
    retorno: ServerConnection | None = None
    stream_sids: dict[str, str] = field(default_factory=dict)
    ia_started: asyncio.Future | None = None
    retorno_started: asyncio.Future | None = None
    dial_sent_at: float = 0.0
    retorno_start_at: float = 0.0
    statuses: list[tuple[float, str]] = field(default_factory=list)


class Agent:
    """A WebSocket agent that follows the bench's script for each conversation (by callSid)."""

    def __init__(self, dial_on_start: bool, speech: numpy.ndarray | None = None) -> None:
        self.dial_on_start = dial_on_start
        self.speech = speech
        self.conversations: dict[str, Conversation] = {}
        self.bad_events: list[str] = []
        self.tasks: set[asyncio.Task] = set()

    def conversation(self, call_sid: str) -> Conversation:
        found = self.conversations.get(call_sid)
        if found is None:
            loop = asyncio.get_running_loop()
            found = self.conversations[call_sid] = Conversation(ia_started=loop.create_future(),
                                                                retorno_started=loop.create_future())
        return found

    async def handle(self, websocket: ServerConnection) -> None:
        conversation: Conversation | None = None
        leg = ""
        try:
            async for raw in websocket:
                message = orjson.loads(raw)
                event = message.get("event")
                if event == "start":
                    start = message["start"]
                    leg = start.get("customParameters", {}).get("leg", "ia")
                    conversation = self.conversation(start["callSid"])
                    conversation.stream_sids[leg] = message.get("streamSid") or start.get("streamSid")
                    if leg == "ia":
                        conversation.ia = websocket
                        if self.dial_on_start:
                            conversation.dial_sent_at = time.time()
                            await self.send(conversation, "ia", {"event": "audiogw.dial", "dial": {"timeout": 10}})
                        conversation.ia_started.set_result(time.time())
                    else:
                        conversation.retorno = websocket
                        conversation.retorno_start_at = time.time()
                        conversation.retorno_started.set_result(conversation.retorno_start_at)
                elif event == "audiogw.dial_status" and conversation is not None:
                    conversation.statuses.append((time.time(), message["dial_status"]["status"]))
                elif event == "audiogw.error" or event == "error":
                    self.bad_events.append(raw if isinstance(raw, str) else raw.decode())
        except ConnectionClosed:
            pass

    async def send(self, conversation: Conversation, leg: str, message: dict[str, Any]) -> None:
        websocket = conversation.ia if leg == "ia" else conversation.retorno
        message = {"streamSid": conversation.stream_sids.get(leg, ""), **message}
        await websocket.send(orjson.dumps(message).decode())

    async def speak(self, conversation: Conversation, leg: str, samples: numpy.ndarray) -> None:
        """One burst of agent speech (µ-law 8 kHz, 20 ms chunks, sent at once)."""
        payload = encode_mulaw(samples)
        chunk = frame_bytes(RATE) // 2
        for offset in range(0, len(payload), chunk):
            await self.send(conversation, leg, {"event": "media", "media": {
                "payload": base64.b64encode(payload[offset:offset + chunk]).decode()}})


# --------------------------------------------------------------------------
# Part 1: through Asterisk
# --------------------------------------------------------------------------
class Phone:
    """A fake phone: an AudioSocket server Asterisk dials; sends a tone, notes when the first loud frame arrives."""

    def __init__(self, hz: float) -> None:
        self.frame = tone(hz, FRAME_PERIOD * 50)  # 1 s of tone, looped by frame
        self.loud_after: float = 0.0  # only frames read after this moment count
        self.first_loud: asyncio.Future | None = None
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def expect(self, after: float) -> asyncio.Future:
        self.loud_after = after
        self.first_loud = asyncio.get_running_loop().create_future()
        return self.first_loud

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sender = asyncio.create_task(self._send(writer))
        try:
            while True:
                header = await reader.readexactly(3)
                payload = await reader.readexactly(int.from_bytes(header[1:3], "big"))
                now = time.time()
                if header[0] == Kind.HANGUP:
                    break
                if header[0] != KIND_FOR_RATE[RATE] or not payload:
                    continue
                waiter = self.first_loud
                if waiter is not None and not waiter.done() and now >= self.loud_after:
                    samples = numpy.frombuffer(payload, dtype="<i2").astype(numpy.float64)
                    if numpy.sqrt(numpy.mean(samples * samples)) > LOUD_RMS:
                        waiter.set_result(now)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            sender.cancel()
            writer.close()

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        """One tone frame per 20 ms on absolute deadlines (Asterisk paces nothing)."""
        payload_size = frame_bytes(RATE)
        pcm = self.frame.astype("<i2").tobytes()
        header = encode_header(KIND_FOR_RATE[RATE], payload_size)
        frames = [header + pcm[offset:offset + payload_size] for offset in range(0, len(pcm), payload_size)]
        loop = asyncio.get_running_loop()
        start = loop.time()
        index = 0
        while True:
            writer.write(frames[index % len(frames)])
            index += 1
            await asyncio.sleep(max(0.0, start + index * FRAME_PERIOD - loop.time()))


def asterisk_dialplan(folder: Path, config_path: Path, visitor_port: int, resident_port: int) -> str:
    config = load_config(str(config_path))
    extension = next(ext for ext in config.extensions if ext.id == EXTENSION)
    generated = dialplan_for(extension, config.audiosocket.bind)
    return "\n".join([
        "[general]", "[globals]", "",
        "[visitor-phone]", "exten => s,1,Answer()",
        f" same => n,AudioSocket({uuid.uuid4()},127.0.0.1:{visitor_port})", " same => n,Hangup()", "",
        "[resident-phone]", "exten => s,1,Answer()",
        f" same => n,AudioSocket({uuid.uuid4()},127.0.0.1:{resident_port})", " same => n,Hangup()", "",
        generated,
    ]) + "\n"


async def run_asterisk_part(asterisk: PrivateAsterisk, agent: Agent, visitor: Phone, resident: Phone,
                            conversations: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    dial_to_start: list[float] = []
    bridge_to: dict[str, list[float]] = {"visitor": [], "resident": []}
    failures: list[str] = []
    for index in range(conversations):
        known = set(agent.conversations)
        await loop.run_in_executor(None, lambda: asterisk.originate(
            f"Local/{EXTENSION}@audiogw-{EXTENSION}", extension="s@visitor-phone"))
        try:
            conversation = await _new_conversation(agent, known, 10.0)
        except TimeoutError:
            failures.append(f"conversation {index}: the visitor's stream never started")
            await loop.run_in_executor(None, _hang_up_all, asterisk)
            continue
        try:
            await asyncio.wait_for(conversation.retorno_started, 15.0)
        except TimeoutError:
            statuses = [status for _, status in conversation.statuses]
            failures.append(f"conversation {index}: the resident's stream never started (dial statuses {statuses})")
            await loop.run_in_executor(None, _hang_up_all, asterisk)
            continue
        dial_to_start.append(conversation.retorno_start_at - conversation.dial_sent_at)
        await asyncio.sleep(BRIDGE_AFTER)
        bridge_at = time.time()
        heard = {"visitor": visitor.expect(bridge_at), "resident": resident.expect(bridge_at)}
        await agent.send(conversation, "ia", {"event": "audiogw.bridge"})
        for side, waiter in heard.items():
            try:
                bridge_to[side].append(await asyncio.wait_for(waiter, 5.0) - bridge_at)
            except TimeoutError:
                failures.append(f"conversation {index}: the {side} never heard the other side")
        await agent.send(conversation, "ia", {"event": "audiogw.hangup", "hangup": {"leg": "retorno"}})
        await agent.send(conversation, "ia", {"event": "audiogw.hangup", "hangup": {"leg": "ia"}})
        if not await loop.run_in_executor(None, asterisk.wait_no_channels, 10.0):
            failures.append(f"conversation {index}: channels left after the hangups")
            await loop.run_in_executor(None, _hang_up_all, asterisk)
    return {"conversations": conversations, "dial_to_start_ms": summary_ms(dial_to_start),
            "bridge_to_first_frame_ms": {side: summary_ms(values) for side, values in bridge_to.items()},
            "failures": failures}


async def _new_conversation(agent: Agent, known: set[str], timeout: float) -> Conversation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for call_sid, conversation in agent.conversations.items():
            if call_sid not in known:
                await conversation.ia_started
                return conversation
        await asyncio.sleep(0.005)
    raise TimeoutError


def _hang_up_all(asterisk: PrivateAsterisk) -> None:
    asterisk.cli("channel request hangup all")
    asterisk.wait_no_channels(10.0)


# --------------------------------------------------------------------------
# Part 2: pacing while bridged (softphones, kernel timestamps)
# --------------------------------------------------------------------------
async def run_pacing_part(agent: Agent, ports: dict[str, int], conversations: int, seconds: float) -> dict[str, Any]:
    async def one(index: int) -> tuple[Any, Any]:
        call_uuid = uuid.uuid4()
        await asyncio.sleep(index * 0.037)  # spread the starts over the 20 ms phase
        visitor = asyncio.create_task(place_call("127.0.0.1", ports["ia"], call_uuid=call_uuid,
                                                 source=tone(VISITOR_HZ, seconds), seconds=seconds))
        await asyncio.sleep(0.2)
        resident = asyncio.create_task(place_call("127.0.0.1", ports["retorno"], call_uuid=call_uuid,
                                                  source=tone(RESIDENT_HZ, seconds - 0.2), seconds=seconds - 0.2))
        speaker = asyncio.create_task(_bridge_and_speak(agent, call_sid_for(call_uuid), seconds))
        results = await asyncio.gather(visitor, resident)
        speaker.cancel()
        await asyncio.gather(speaker, return_exceptions=True)
        return results[0], results[1]

    pairs = await asyncio.gather(*(one(index) for index in range(conversations)))
    report: dict[str, Any] = {"conversations": conversations, "seconds": seconds}
    for position, side in enumerate(("visitor", "resident")):
        results = [pair[position] for pair in pairs]
        merged = _merged_pacing(results)
        heard_other = sum(1 for result in results if _hears(result.recorded, RESIDENT_HZ if side == "visitor" else VISITOR_HZ))
        report[side] = {**merged, "legs": len(results), "heard_the_other_side": heard_other,
                        "late_reads": sum(result.late_reads for result in results),
                        "errors": [result.error for result in results if result.error]}
    return report


async def _bridge_and_speak(agent: Agent, sid: str, seconds: float) -> None:
    conversation = agent.conversation(sid)
    await asyncio.gather(conversation.ia_started, conversation.retorno_started)
    await agent.send(conversation, "ia", {"event": "audiogw.bridge"})
    speech = tone(AGENT_HZ, 1.0, amplitude=2000.0)
    while True:
        await agent.speak(conversation, "ia", speech)
        await asyncio.sleep(2.0)


def _merged_pacing(results: list[Any]) -> dict[str, Any]:
    """Pacing pooled over every leg (each leg's first second, while the bridge settles in, left out)."""
    return pacing_stats_many(result.arrivals[50:] for result in results).to_dict()


def _hears(recorded: numpy.ndarray | None, hz: float) -> bool:
    """True when the other side's tone is in what this leg heard (a correlation at ``hz``)."""
    if recorded is None or recorded.size < RATE:
        return False
    samples = recorded[-RATE:].astype(numpy.float64)
    t = numpy.arange(samples.size) / RATE
    power = abs(numpy.dot(samples, numpy.exp(-2j * numpy.pi * hz * t))) / samples.size
    return power > 200.0


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------
def write_config(folder: Path, agent_port: int, ami_port: int, base_port: int) -> Path:
    """Default config but for the private addresses, AMI, and one agent extension ringing ``resident-phone``."""
    secret = folder / "ami.secret"
    secret.write_text(AMI_SECRET + "\n")
    secret.chmod(0o600)
    lines = ["[supervisor]", f'control = "ipc://{folder}/run/control.sock"', 'metrics = "127.0.0.1:0"',
             f'state_dir = "{folder}/state"',
             "[audiosocket]", f"port_range = [{base_port}, {base_port + 1}]",
             "[asterisk]", f'manager = "127.0.0.1:{ami_port}"', f'username = "{AMI_USER}"',
             f'secret_file = "{secret}"',
             "[[extension]]", f'id = "{EXTENSION}"', 'app = "agent"', f"ia_port = {base_port}",
             f"retorno_port = {base_port + 1}",
             f'options = {{ url = "ws://127.0.0.1:{agent_port}/media", resident = "Local/s@resident-phone" }}']
    (folder / "run").mkdir(parents=True, exist_ok=True)
    path = folder / "audiogw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _run(settings: argparse.Namespace, folder: Path) -> dict[str, Any]:
    binary = find_asterisk()
    if binary is None:
        raise BenchError("no Asterisk: set AUDIOGW_ASTERISK or run `bash ../shared/asterisk/build.sh`")
    agent = Agent(dial_on_start=True)
    server = await serve(agent.handle, "127.0.0.1", 0)
    agent_port = server.sockets[0].getsockname()[1]
    visitor, resident = Phone(VISITOR_HZ), Phone(RESIDENT_HZ)
    await visitor.start()
    await resident.start()
    base_port = free_port_block(2)  # the extension's ia and retorno
    asterisk = PrivateAsterisk(binary, folder / "asterisk", "[general]\n",
                               manager_conf(AMI_USER, AMI_SECRET, "{ami_port}"))
    loop = asyncio.get_running_loop()
    supervisor = None
    try:
        await loop.run_in_executor(None, asterisk.start)
        config = write_config(folder, agent_port, asterisk.ami_port, base_port)
        await loop.run_in_executor(None, asterisk.reload_dialplan,
                                   asterisk_dialplan(folder, config, visitor.port, resident.port))
        supervisor = Supervisor(folder, config)
        await loop.run_in_executor(None, supervisor.start, 1)
        load = os.getloadavg()[0]
        through = await run_asterisk_part(asterisk, agent, visitor, resident, settings.conversations)
        agent.dial_on_start = False
        pacing = await run_pacing_part(agent, {"ia": base_port, "retorno": base_port + 1},
                                       settings.pacing_conversations, settings.pacing_seconds)
        restarts = supervisor.restarts()
    finally:
        if supervisor is not None:
            await loop.run_in_executor(None, supervisor.stop)
        await loop.run_in_executor(None, asterisk.stop)
        server.close()
    return {"benchmark": "doorman", "load_average_1m_at_start": round(load, 2), "cpu_count": os.cpu_count(),
            "asterisk": through, "bridged_pacing": pacing, "worker_restarts": restarts,
            "supervisor_log_errors": [line for line in supervisor.log().splitlines() if "ERROR" in line][-5:]}


def checks(report: dict[str, Any]) -> list[tuple[str, str, bool]]:
    bridge = report["asterisk"]["bridge_to_first_frame_ms"]
    rows = [(f"bridge -> first bridged frame p95 at the {side}", f"{bridge[side].get('p95', '-')} ms <= 40",
             bridge[side].get("n", 0) > 0 and bridge[side]["p95"] <= 40.0) for side in ("visitor", "resident")]
    for side in ("visitor", "resident"):
        stats = report["bridged_pacing"][side]
        rows.append((f"bridged pacing p99 ({side})", f"{stats.get('p99_deviation_ms', '-'):.2f} ms <= 2",
                     stats.get("frames", 0) > 0 and stats["p99_deviation_ms"] <= 2.0))
        rows.append((f"bridged gaps > 40 ms ({side})", f"{stats.get('gaps_over_40ms', '-')} == 0",
                     stats.get("frames", 0) > 0 and stats["gaps_over_40ms"] == 0))
    return rows


def format_report(report: dict[str, Any]) -> str:
    through = report["asterisk"]
    dial = through["dial_to_start_ms"]
    lines = [f"doorman benchmark ({report['cpu_count']} CPUs, load {report['load_average_1m_at_start']} at start)",
             f"through Asterisk, {through['conversations']} conversations one at a time:",
             f"  audiogw.dial -> resident's stream start: p50 {dial.get('p50', '-')} ms, p95 {dial.get('p95', '-')} ms,"
             f" max {dial.get('max', '-')} ms (n={dial['n']})"]
    for side, stats in through["bridge_to_first_frame_ms"].items():
        lines.append(f"  audiogw.bridge -> first bridged frame at the {side}: p50 {stats.get('p50', '-')} ms,"
                     f" p95 {stats.get('p95', '-')} ms (n={stats['n']})")
    for failure in through["failures"]:
        lines.append(f"  FAILED: {failure}")
    pacing = report["bridged_pacing"]
    lines.append(f"bridged with agent speech, {pacing['conversations']} conversations x {pacing['seconds']:g} s, "
                 "softphones, kernel timestamps:")
    for side in ("visitor", "resident"):
        stats = pacing[side]
        lines.append(f"  {side}: p99 {stats.get('p99_deviation_ms', 0):.2f} ms, max gap {stats.get('max_gap_ms', 0):.1f} ms,"
                     f" gaps > 40 ms {stats.get('gaps_over_40ms', 0)}, heard the other side {stats['heard_the_other_side']}"
                     f"/{stats['legs']}, late reads {stats['late_reads']}")
    lines.append(f"worker restarts: {report['worker_restarts']}")
    for name, value, passed in checks(report):
        lines.append(f"  [{'PASS' if passed else 'FAIL'}] {name}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audiogw.bench.doorman", description=__doc__.split("\n\n")[0])
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--pacing-conversations", type=int, default=10)
    parser.add_argument("--pacing-seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (logs, configs) and say where")
    settings = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="audiogw-bench-doorman-"))
    try:
        report = uvloop.run(_run(settings, folder))
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if settings.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(report, indent=2) if settings.json else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

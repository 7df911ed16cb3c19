"""Benchmark the ``agent`` app: a real worker, a scripted voice agent in this process.

    python -m audiogw.bench.agent [--calls 20] [--seconds 10] [--barge-calls 30]
                                         [--latency-calls 10] [--latency-seconds 8] [--json]

One worker (``python -m audiogw.worker --app agent --option barge_in=true``)
streams every call to a WebSocket agent served by this process on 127.0.0.1
(port 0). The agent is a script per call, found by the call's UUID (in the
``callSid`` of the ``start`` message, ``CA`` + its hex). Calls come from the softphone, which
behaves like Asterisk's AudioSocket(); every frame's arrival is the kernel's
receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME), and every moment taken on
this side is ``time.time()``, the same clock. Three scenarios run one after
the other, on the same worker:

1. **pacing**: N concurrent calls (alternating ia/retorno). The agent sends
   each 3 s reply as ONE burst of media messages (20 ms chunks, 37 ms chunks or
   the whole reply in one message, by call), at 0.3 s (empty buffer), 2.0 s
   (queued behind the first) and 6.5 s (after a pause). Target: p99 deviation
   of arrival intervals from 20 ms <= 2 ms, no gap over 40 ms. Also checked:
   every reply is heard whole and unaltered, every mark is echoed.
2. **barge-in**: the agent sends an 8 s reply at once; the caller sends
   silence, then a loud tone (its "speech") from 1.5 s. Reaction = from the
   moment the caller wrote its first loud frame to the arrival of the first
   frame without agent audio. Target p95 <= 60 ms.
3. **latency**: the agent sends one 20 ms chunk every 200-300 ms (random), so
   the leg's buffer is always empty when it arrives; latency = from
   ``time.time()`` just before the send to the arrival of the frame carrying
   it. Target p95 <= 25 ms (a frame waits up to one 20 ms tick by design).

Exit status: 0 when the run completed (PASS or FAIL), 1 when it broke.
Everything runs on one event loop (agent and calls): the client's own lag
shows up only where it matters, and is reported (late reads, late sends).
"""
from __future__ import annotations

import argparse
import array
import asyncio
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy
import orjson
import uvloop
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from audiogw.bench.worker import (
    BenchError,
    ResourceSampler,
    Worker,
    start_worker,
    worker_legs,
)
from audiogw.client.softphone import Call, CallConnectError, CallResult, kernel_timestamps_supported
from audiogw.shared.audiosocket import LEG_KINDS
from audiogw.shared.media_streams import (
    GatewayStart,
    MediaStreamsError,
    agent_mark_message,
    agent_media_message,
    parse_gateway_message,
)
from audiogw.shared.mulaw import decode_mulaw, encode_mulaw
from audiogw.shared.pacing import FRAME_PERIOD, GAP_THRESHOLD, pacing_stats_many, window_arrivals
from audiogw.shared.records import LegRecord
from audiogw.shared.twilio_ids import uuid_for_call_sid
from audiogw.shared.wav import tone

RATE = 8000
FRAME = 160  # samples per 20 ms frame at 8 kHz
LOUD_RMS = 1000.0  # about -30 dBFS: agent tone and caller "speech" are ~-13 dBFS, silence is 0
TARGET_PACING_P99_MS = 2.0
TARGET_GAPS = 0
TARGET_BARGE_P95_MS = 60.0
TARGET_LATENCY_P95_MS = 25.0

AGENT_TONE_HZ = 1000.0
CALLER_TONE_HZ = 300.0
REPLY_SECONDS = 3.0
REPLY_TIMES = (0.3, 2.0, 6.5)  # per 10 s of call, after the agent's `start`
CHUNKS = {"20ms": 160, "37ms": 296, "whole": 0}  # samples per media message; 0: the reply in one message
STARTUP_EXCLUDED = 0.2
BARGE_CALL_SECONDS = 3.0
BARGE_ONSET_SECONDS = 1.5
BARGE_REPLY_SECONDS = 8.0
LATENCY_FIRST = 0.5
LATENCY_GAP = (0.2, 0.3)
CLIENT_ON_TIME = 0.005  # a speech frame written this late after its schedule still counts as on time
BURST_HORIZON = 0.2  # intervals ending this soon after an agent burst count as "near" it
CALL_END_MARGIN = 0.1  # a chunk sent this close to the last arrival may never have been played
PROBLEM_LOG = re.compile(r"^.*\b(?:WARNING|ERROR|CRITICAL|Traceback)\b.*$", re.MULTILINE)


# ==========================================================================
# Pure statistics: plain arrays in, plain numbers out (tested on synthetic data)
# ==========================================================================
def loud_frames(recorded: numpy.ndarray, threshold_rms: float = LOUD_RMS) -> numpy.ndarray:
    """Per received 20 ms frame: True where it carried audio (agent tone), False for silence."""
    usable = recorded[: recorded.size - recorded.size % FRAME].astype(numpy.float64).reshape(-1, FRAME)
    return numpy.sqrt((usable ** 2).mean(axis=1)) > threshold_rms


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int]:
    """count, min, p50, p95, max of durations given in seconds, in ms (zeros when empty)."""
    values = numpy.asarray(seconds, dtype=numpy.float64) * 1000.0
    if values.size == 0:
        return {"count": 0, "min": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    p50, p95 = numpy.percentile(values, [50.0, 95.0])
    return {"count": int(values.size), "min": float(values.min()), "p50": float(p50),
            "p95": float(p95), "max": float(values.max())}


def spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max, zeros when empty."""
    if not values:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def reply_schedule(seconds: float, reply_seconds: float = REPLY_SECONDS) -> list[float]:
    """When the agent sends its replies in a call of ``seconds``: only replies that finish playing
    (queued behind earlier ones) half a second before the hangup, so all of them must be heard."""
    times: list[float] = []
    playing_until = 0.0
    block = 0
    while True:
        for offset in REPLY_TIMES:
            at = block * 10.0 + offset
            end = max(at, playing_until) + reply_seconds
            if at >= seconds or end > seconds - 0.5:
                return times
            times.append(at)
            playing_until = end
        block += 1


def heard_audio(recorded: numpy.ndarray, loud: numpy.ndarray) -> numpy.ndarray:
    """The samples of every frame that carried audio, in order."""
    frames = recorded[: loud.size * FRAME].reshape(-1, FRAME)
    return frames[loud].ravel()


def audio_intact(recorded: numpy.ndarray, loud: numpy.ndarray, reply: numpy.ndarray, replies: int) -> bool:
    """Whether the caller heard exactly ``replies`` copies of ``reply`` (as decoded µ-law), nothing
    lost, repeated or reordered. ``reply`` must be whole frames of loud audio."""
    return numpy.array_equal(heard_audio(recorded, loud), numpy.tile(reply, replies))


@dataclass(frozen=True)
class BargeMeasure:
    """One barge-in call: ``reaction`` seconds, or None with ``problem`` saying why."""

    reaction: float | None
    problem: str | None = None
    leaked_frames: int = 0  # agent audio heard after playback had stopped


def barge_reaction(arrivals: numpy.ndarray, loud: numpy.ndarray, onset_sent: float) -> BargeMeasure:
    """From the caller's first loud frame written (``onset_sent``) to the arrival of the first
    frame without agent audio; agent audio must have been playing when the caller began."""
    count = min(arrivals.size, loud.size)
    arrivals, loud = arrivals[:count], loud[:count]
    first_after = int(numpy.searchsorted(arrivals, onset_sent, side="left"))
    if first_after == 0 or not loud[first_after - 1]:
        return BargeMeasure(None, "agent audio was not playing at the onset")
    quiet = numpy.flatnonzero(~loud[first_after:])
    if quiet.size == 0:
        return BargeMeasure(None, "agent audio never stopped")
    stopped = first_after + int(quiet[0])
    leaked = int(numpy.count_nonzero(loud[stopped:]))
    return BargeMeasure(float(arrivals[stopped] - onset_sent), None, leaked)


@dataclass(frozen=True)
class ChunkLatencies:
    """Empty-buffer latencies of one call (seconds); ``unheard``: chunks no frame carried."""

    latencies: list[float]
    unheard: int
    after_call: int  # sent too close to the end of the call to be judged


def chunk_latencies(arrivals: numpy.ndarray, loud: numpy.ndarray, sent: Sequence[float]) -> ChunkLatencies:
    """For each chunk sent at ``sent[i]``: the first loud frame arriving after it and before the next."""
    count = min(arrivals.size, loud.size)
    arrivals, loud = arrivals[:count], loud[:count]
    last_arrival = float(arrivals[-1]) if count else -numpy.inf
    latencies: list[float] = []
    unheard = after_call = 0
    sent_sorted = sorted(sent)
    for index, at in enumerate(sent_sorted):
        if at > last_arrival - CALL_END_MARGIN:
            after_call += 1
            continue
        until = sent_sorted[index + 1] if index + 1 < len(sent_sorted) else numpy.inf
        low = int(numpy.searchsorted(arrivals, at, side="left"))
        high = int(numpy.searchsorted(arrivals, until, side="left"))
        carrying = numpy.flatnonzero(loud[low:high])
        if carrying.size == 0:
            unheard += 1
        else:
            latencies.append(float(arrivals[low + int(carrying[0])] - at))
    return ChunkLatencies(latencies, unheard, after_call)


def gap_contexts(arrivals: numpy.ndarray, origin: float, bursts: Sequence[float],
                 threshold: float = GAP_THRESHOLD) -> list[dict[str, float]]:
    """Each gap over ``threshold``: when it began (s after ``origin``), how long it was, and how long
    after the agent's latest burst (ms; None before the first), to tell burst-caused gaps from noise."""
    if arrivals.size < 2:
        return []
    intervals = numpy.diff(arrivals)
    found = []
    ordered = sorted(bursts)
    for index in numpy.flatnonzero(intervals > threshold):
        began = float(arrivals[index])
        before = [at for at in ordered if at <= began]
        found.append({"at_s": began - origin, "gap_ms": float(intervals[index] * 1000.0),
                      "after_burst_ms": (began - before[-1]) * 1000.0 if before else None})
    return found


def split_near_bursts(windows: Sequence[numpy.ndarray], bursts: Sequence[float],
                      horizon: float = BURST_HORIZON) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Arrival intervals (s) ending within ``horizon`` after any call's burst, and all the others.

    The worker has one loop for every leg, so one call's burst can delay every
    call's frames: comparing the two sets shows whether bursts hurt pacing."""
    ordered = numpy.sort(numpy.asarray(bursts, dtype=numpy.float64))
    near: list[numpy.ndarray] = []
    away: list[numpy.ndarray] = []
    for arrivals in windows:
        if arrivals.size < 2:
            continue
        intervals = numpy.diff(arrivals)
        ends = arrivals[1:]
        latest = numpy.searchsorted(ordered, ends, side="right") - 1
        since = numpy.where(latest >= 0, ends - ordered[numpy.maximum(latest, 0)], numpy.inf)
        close = since <= horizon
        near.append(intervals[close])
        away.append(intervals[~close])
    empty = numpy.empty(0, dtype=numpy.float64)
    return (numpy.concatenate(near) if near else empty), (numpy.concatenate(away) if away else empty)


def interval_summary(intervals: numpy.ndarray) -> dict[str, float | int]:
    """Deviation from 20 ms (p50/p99, ms), largest interval and gaps over 40 ms of pooled intervals."""
    if intervals.size == 0:
        return {"intervals": 0, "p50_deviation_ms": 0.0, "p99_deviation_ms": 0.0, "max_gap_ms": 0.0,
                "gaps_over_40ms": 0}
    deviation = numpy.abs(intervals - FRAME_PERIOD) * 1000.0
    p50, p99 = numpy.percentile(deviation, [50.0, 99.0])
    return {"intervals": int(intervals.size), "p50_deviation_ms": float(p50), "p99_deviation_ms": float(p99),
            "max_gap_ms": float(intervals.max() * 1000.0),
            "gaps_over_40ms": int(numpy.count_nonzero(intervals > GAP_THRESHOLD))}


def check(value: float | int | str, target: str, passed: bool) -> dict[str, Any]:
    return {"value": value, "target": target, "pass": bool(passed)}


# ==========================================================================
# What a run leaves behind (plain data, filled by the I/O below)
# ==========================================================================
@dataclass
class AgentLog:
    """What the agent did and saw in one call (CLOCK_REALTIME seconds)."""

    call_sid: str
    leg: str = ""
    started: float = 0.0  # when its `start` was read
    sent: list[float] = field(default_factory=list)  # time.time() just before each reply/chunk went out
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (read at, event, mark name)
    media_in: int = 0
    error: str | None = None

    def event_times(self, name: str) -> list[float]:
        return [at for at, event, _ in self.events if event == name]


@dataclass
class CallRun:
    """One call as this side saw it."""

    call_uuid: uuid.UUID
    leg: str
    seconds: float
    variant: str = ""
    result: CallResult | None = None
    uuid_sent: float | None = None
    send_times: numpy.ndarray = field(default_factory=lambda: numpy.empty(0))  # each audio frame written
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None and self.result is not None and self.uuid_sent is not None

    def loud(self) -> numpy.ndarray:
        recorded = self.result.recorded if self.result is not None else None
        return loud_frames(recorded) if recorded is not None else numpy.zeros(0, dtype=bool)


def _calls_section(runs: Sequence[CallRun], logs: dict[str, AgentLog]) -> dict[str, Any]:
    failures: dict[str, int] = {}
    for run in runs:
        if not run.ok:
            reason = run.failure or "no result"
            failures[reason] = failures.get(reason, 0) + 1
    completed = [run for run in runs if run.ok]
    return {
        "placed": len(runs), "completed": len(completed), "failed": len(runs) - len(completed),
        "failure_reasons": failures,
        "agent_sessions": sum(1 for run in runs if str(run.call_uuid) in logs),
        "agent_script_errors": [logs[key].error for key in (str(run.call_uuid) for run in runs)
                                if key in logs and logs[key].error],
        "calls_with_late_reads": sum(1 for run in completed if run.result.late_reads),
        "late_sends_total": sum(run.result.late_sends for run in completed),
        "user_timestamps_total": sum(run.result.user_timestamps for run in completed),
    }


def analyse_pacing(runs: Sequence[CallRun], logs: dict[str, AgentLog], reply: numpy.ndarray) -> dict[str, Any]:
    """Pacing over each call's window [UUID written, + call length], and whether every reply was heard whole."""
    completed = [run for run in runs if run.ok]
    windows = [window_arrivals(run.result.arrivals, run.uuid_sent, run.seconds) for run in completed]
    late_starts = [window[window >= run.uuid_sent + STARTUP_EXCLUDED] for run, window in zip(completed, windows)]
    clean = [window for run, window in zip(completed, windows) if not run.result.late_reads]
    intact = 0
    heard: list[int] = []
    marks_missing = 0
    by_variant: dict[str, list[numpy.ndarray]] = {}
    gaps: list[dict[str, Any]] = []
    for run, window in zip(completed, windows):
        log = logs.get(str(run.call_uuid))
        replies = len(log.sent) if log is not None else 0
        loud = run.loud()
        heard.append(int(loud.sum()))
        if replies and audio_intact(run.result.recorded, loud, reply, replies):
            intact += 1
        echoed = len(log.event_times("mark")) if log is not None else 0
        marks_missing += max(0, replies - echoed)
        by_variant.setdefault(run.variant, []).append(window)
        for gap in gap_contexts(window, run.uuid_sent, log.sent if log is not None else []):
            gaps.append({"chunks": run.variant, "leg": run.leg, **gap})
    replies_sent = [len(logs[str(run.call_uuid)].sent) for run in completed if str(run.call_uuid) in logs]
    bursts = [at for run in runs if str(run.call_uuid) in logs for at in logs[str(run.call_uuid)].sent]
    near, away = split_near_bursts(windows, bursts)
    return {
        "calls": _calls_section(runs, logs),
        "whole_call": pacing_stats_many(windows, FRAME_PERIOD, GAP_THRESHOLD).to_dict(),
        f"after_first_{STARTUP_EXCLUDED:g}s": pacing_stats_many(late_starts, FRAME_PERIOD, GAP_THRESHOLD).to_dict(),
        "whole_call_without_late_read_calls": pacing_stats_many(clean, FRAME_PERIOD, GAP_THRESHOLD).to_dict(),
        "near_bursts": interval_summary(near),
        "away_from_bursts": interval_summary(away),
        "by_chunk": {name: pacing_stats_many(arrays, FRAME_PERIOD, GAP_THRESHOLD).to_dict()
                     for name, arrays in sorted(by_variant.items())},
        "agent_audio": {
            "replies_sent_per_call": spread(replies_sent),
            "frames_per_reply": int(reply.size // FRAME),
            "frames_heard_per_call": spread(heard),
            "calls_intact": intact,
            "marks_not_echoed": marks_missing,
        },
        "gaps": gaps,
    }


def analyse_barge(runs: Sequence[CallRun], logs: dict[str, AgentLog], worker_records: Sequence[LegRecord],
                  onset_frame: int) -> dict[str, Any]:
    """Reaction per call from the caller's side, with the worker's (its leg records) and the agent's views beside it."""
    reactions: list[float] = []
    on_time: list[float] = []  # calls where this client wrote its speech on schedule and read on time
    second_frame_late: list[float] = []
    problems: dict[str, int] = {}
    leaked = 0
    agent_view: list[float] = []
    onsets: dict[str, float] = {}
    for run in (run for run in runs if run.ok):
        if run.send_times.size <= onset_frame + 1:
            problems["caller never sent its speech"] = problems.get("caller never sent its speech", 0) + 1
            continue
        onset = float(run.send_times[onset_frame])
        onsets[str(run.call_uuid)] = onset
        # The VAD decides on the second loud frame: a client that writes it late delays the reaction.
        lag = max(0.0, float(run.send_times[onset_frame + 1]) - onset - FRAME_PERIOD)
        second_frame_late.append(lag)
        measure = barge_reaction(run.result.arrivals, run.loud(), onset)
        if measure.reaction is None:
            problems[measure.problem] = problems.get(measure.problem, 0) + 1
        else:
            reactions.append(measure.reaction)
            leaked += measure.leaked_frames
            if lag <= CLIENT_ON_TIME and not run.result.late_reads:
                on_time.append(measure.reaction)
        log = logs.get(str(run.call_uuid))
        told = log.event_times("barge_in") if log is not None else []
        if told:
            agent_view.append(told[0] - onset)
    worker_view = [ms / 1000.0 for record in worker_records if record.uuid in onsets
                   for ms in record.app.get("barge_in_ms", ())]
    return {
        "calls": _calls_section(runs, logs),
        "reaction_ms": summary_ms(reactions),
        "reaction_ms_client_on_time": summary_ms(on_time),
        "client_second_speech_frame_late_ms": summary_ms(second_frame_late),
        "unmeasured": problems,
        "agent_frames_after_stop": leaked,
        "worker_view_ms": summary_ms(worker_view),
        "agent_told_ms": summary_ms(agent_view),
    }


def analyse_latency(runs: Sequence[CallRun], logs: dict[str, AgentLog]) -> dict[str, Any]:
    """Empty-buffer latency of every chunk the agent sent, pooled over calls."""
    latencies: list[float] = []
    unheard = after_call = 0
    for run in (run for run in runs if run.ok):
        log = logs.get(str(run.call_uuid))
        if log is None:
            continue
        measured = chunk_latencies(run.result.arrivals, run.loud(), log.sent)
        latencies += measured.latencies
        unheard += measured.unheard
        after_call += measured.after_call
    return {
        "calls": _calls_section(runs, logs),
        "latency_ms": summary_ms(latencies),
        "chunks_unheard": unheard,
        "chunks_at_call_end": after_call,
    }


def checks_for(pacing: dict[str, Any], barge: dict[str, Any], latency: dict[str, Any]) -> dict[str, Any]:
    whole = pacing["whole_call"]
    audio = pacing["agent_audio"]
    reaction = barge["reaction_ms"]
    added = latency["latency_ms"]
    placed = pacing["calls"]["placed"]
    measured_barge = reaction["count"]
    return {
        "pacing_p99_deviation_ms": check(whole["p99_deviation_ms"], f"<= {TARGET_PACING_P99_MS:g}",
                                         whole["frames"] > 0 and whole["p99_deviation_ms"] <= TARGET_PACING_P99_MS),
        "pacing_gaps_over_40ms": check(whole["gaps_over_40ms"], f"== {TARGET_GAPS}",
                                       whole["frames"] > 0 and whole["gaps_over_40ms"] == TARGET_GAPS),
        "pacing_replies_heard_intact": check(f"{audio['calls_intact']}/{placed}", f"all {placed}",
                                             audio["calls_intact"] == placed),
        "barge_in_reaction_p95_ms": check(reaction["p95"], f"<= {TARGET_BARGE_P95_MS:g}",
                                          measured_barge > 0 and reaction["p95"] <= TARGET_BARGE_P95_MS),
        "barge_in_calls_measured": check(f"{measured_barge}/{barge['calls']['placed']}",
                                         f"all {barge['calls']['placed']}",
                                         measured_barge == barge["calls"]["placed"]),
        "latency_p95_ms": check(added["p95"], f"<= {TARGET_LATENCY_P95_MS:g}",
                                added["count"] > 0 and added["p95"] <= TARGET_LATENCY_P95_MS),
    }


# ==========================================================================
# The scripted agent (WebSocket server on this process's loop)
# ==========================================================================
class AgentSession:
    """One WebSocket stream: a script talks on it while its reader logs what the gateway says."""

    def __init__(self, websocket: ServerConnection, start: GatewayStart) -> None:
        self.websocket = websocket
        self.stream_sid = start.stream_sid
        self.log = AgentLog(start.call_sid, str(start.custom_parameters.get("leg", "")), time.time())

    async def send(self, message: bytes) -> None:
        await self.websocket.send(message, text=True)

    async def burst(self, messages: Sequence[bytes]) -> None:
        """All at once: ``send`` writes to the socket at once, waiting only on flow control."""
        for message in messages:
            await self.send(message)

    async def read_until_closed(self) -> None:
        log = self.log
        try:
            async for raw in self.websocket:
                message = orjson.loads(raw)
                event = message.get("event")
                if event == "media":
                    log.media_in += 1
                    continue
                mark = message.get("mark") if event == "mark" else None
                log.events.append((time.time(), str(event), mark.get("name", "") if isinstance(mark, dict) else ""))
        except ConnectionClosed:
            pass


Script = Callable[[AgentSession], Awaitable[None]]


class ScriptedAgent:
    """Runs the script registered for each call's UUID; keeps every session's log."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}
        self.logs: dict[str, AgentLog] = {}
        self.refused: list[str] = []
        self.server: Server | None = None

    async def start(self, host: str = "127.0.0.1") -> str:
        self.server = await serve(self._handle, host, 0, compression=None)
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://{host}:{port}/media"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def expect(self, call_uuid: uuid.UUID, script: Script) -> None:
        self.scripts[str(call_uuid)] = script

    async def _handle(self, websocket: ServerConnection) -> None:
        try:
            start = await asyncio.wait_for(_read_start(websocket), 5.0)
        except (TimeoutError, ConnectionClosed, MediaStreamsError) as error:
            self.refused.append(f"{type(error).__name__}: {error}")
            return
        session = AgentSession(websocket, start)
        call_uuid = uuid_for_call_sid(start.call_sid)  # CA + the UUID's hex
        key = str(call_uuid) if call_uuid is not None else start.call_sid
        self.logs[key] = session.log
        script = self.scripts.get(key)
        runner = asyncio.create_task(_run_script(script, session)) if script is not None else None
        try:
            await session.read_until_closed()
        finally:
            if runner is not None:
                runner.cancel()
                await asyncio.gather(runner, return_exceptions=True)


async def _read_start(websocket: ServerConnection) -> GatewayStart:
    while True:
        message = parse_gateway_message(await websocket.recv())
        if isinstance(message, GatewayStart):
            return message


async def _run_script(script: Script, session: AgentSession) -> None:
    try:
        await script(session)
    except ConnectionClosed:
        pass  # the call ended while the script was still talking
    except Exception as error:  # noqa: BLE001 - a broken script is reported, not raised
        session.log.error = f"{type(error).__name__}: {error}"


async def _sleep_until(at: float) -> None:
    delay = at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def _chunk_payloads(samples: numpy.ndarray, chunk: int) -> list[bytes]:
    """µ-law payloads of ``chunk`` samples (0: one payload for everything)."""
    encoded = encode_mulaw(samples)
    size = chunk or len(encoded)
    return [encoded[offset: offset + size] for offset in range(0, len(encoded), size)]


def burst_script(payloads: list[bytes], schedule: Sequence[float]) -> Script:
    """Pacing: each reply as one burst of media messages at its time, then a mark."""
    async def script(session: AgentSession) -> None:
        for index, at in enumerate(schedule):
            messages = [agent_media_message(session.stream_sid, payload) for payload in payloads]
            await _sleep_until(session.log.started + at)
            session.log.sent.append(time.time())
            await session.burst(messages)
            await session.send(agent_mark_message(session.stream_sid, f"reply-{index}"))
    return script


def long_reply_script(payloads: list[bytes]) -> Script:
    """Barge-in: one long reply at once, right after `start`."""
    async def script(session: AgentSession) -> None:
        messages = [agent_media_message(session.stream_sid, payload) for payload in payloads]
        session.log.sent.append(time.time())
        await session.burst(messages)
        await session.send(agent_mark_message(session.stream_sid, "long-reply"))
    return script


def chunk_script(payload: bytes, seed: int) -> Script:
    """Latency: one short chunk (and a mark) every 200-300 ms, so the buffer is empty each time."""
    async def script(session: AgentSession) -> None:
        rng = random.Random(seed)
        media = agent_media_message(session.stream_sid, payload)
        mark = agent_mark_message(session.stream_sid, "chunk")
        await asyncio.sleep(LATENCY_FIRST)
        while True:
            await asyncio.sleep(rng.uniform(*LATENCY_GAP))
            session.log.sent.append(time.time())
            await session.send(media)
            await session.send(mark)
    return script


# ==========================================================================
# Calls: the softphone, noting when each audio frame was written
# ==========================================================================
async def place_timed_call(host: str, port: int, run: CallRun, source: bytes) -> None:
    """Place one recorded call, noting time.time() just before each audio frame's write; fill ``run``
    (call-level failures are recorded, not raised)."""
    send_times = array.array("d")
    clock = time.time
    call = Call(host, port, call_uuid=run.call_uuid, source=source, rate=RATE, seconds=run.seconds,
                on_frame_sent=lambda frame: send_times.append(clock()))
    try:
        result = await call.run(5.0)
    except CallConnectError as error:
        run.failure = f"connect: {error.reason}"
        return
    except Exception as error:  # noqa: BLE001 - a broken call is a measured failure
        run.failure = f"{type(error).__name__}: {error}"
        return
    run.result = result
    run.uuid_sent = result.uuid_sent_at
    run.send_times = numpy.array(send_times, dtype=numpy.float64)
    if result.hung_up_by != "client":
        run.failure = f"call ended by {result.hung_up_by}: {result.error or 'no error given'}"
    elif result.error:
        run.failure = result.error


@dataclass
class PlannedCall:
    run: CallRun
    port: int
    offset: float
    source: bytes
    script: Script


async def run_planned(agent: ScriptedAgent, host: str, plan: list[PlannedCall]) -> list[CallRun]:
    """Register every call's script, then place the calls at their offsets, concurrently."""
    for planned in plan:
        agent.expect(planned.run.call_uuid, planned.script)
    begin = time.monotonic() + 0.05

    async def one(planned: PlannedCall) -> None:
        await asyncio.sleep(max(0.0, begin + planned.offset - time.monotonic()))
        await place_timed_call(host, planned.port, planned.run, planned.source)

    await asyncio.gather(*(one(planned) for planned in plan))
    return [planned.run for planned in plan]


def _offset(spread_seconds: float, index: int, calls: int) -> float:
    """Start offset of call ``index``: evenly spread, plus a sub-frame jitter (seeded, so runs repeat).

    Without the jitter, offsets that are multiples of 20 ms would put every call's
    send schedule at the same phase of the worker's tick, and a reaction that
    depends on that phase (barge-in) would be measured at one point of its range."""
    even = spread_seconds * index / calls if calls > 1 else 0.0
    return even + random.Random(index).uniform(0.0, FRAME_PERIOD)


def _leg(ports: dict[str, int], index: int) -> tuple[str, int]:
    leg = LEG_KINDS[index % 2]
    return leg, ports[leg]


def _pcm(samples: numpy.ndarray | None) -> bytes:
    return b"" if samples is None else samples.astype("<i2", copy=False).tobytes()


def plan_pacing(ports: dict[str, int], calls: int, seconds: float, spread_seconds: float,
                reply: numpy.ndarray) -> list[PlannedCall]:
    schedule = reply_schedule(seconds)
    variants = list(CHUNKS)
    plan = []
    for index in range(calls):
        leg, port = _leg(ports, index)
        variant = variants[index % len(variants)]
        run = CallRun(uuid.uuid4(), leg, seconds, variant)
        script = burst_script(_chunk_payloads(reply, CHUNKS[variant]), schedule)
        plan.append(PlannedCall(run, port, _offset(spread_seconds, index, calls), b"", script))
    return plan


def plan_barge(ports: dict[str, int], calls: int, spread_seconds: float) -> tuple[list[PlannedCall], int]:
    """Calls whose caller starts 'speaking' at a frame boundary; returns the plan and that frame's index."""
    onset_frame = int(round(BARGE_ONSET_SECONDS / FRAME_PERIOD))
    speech = tone(CALLER_TONE_HZ, BARGE_CALL_SECONDS - BARGE_ONSET_SECONDS, RATE)
    source = _pcm(numpy.concatenate([numpy.zeros(onset_frame * FRAME, dtype=numpy.int16), speech]))
    payloads = _chunk_payloads(tone(AGENT_TONE_HZ, BARGE_REPLY_SECONDS, RATE), CHUNKS["20ms"])
    plan = []
    for index in range(calls):
        leg, port = _leg(ports, index)
        run = CallRun(uuid.uuid4(), leg, BARGE_CALL_SECONDS, "20ms")
        plan.append(PlannedCall(run, port, _offset(spread_seconds, index, calls), source, long_reply_script(payloads)))
    return plan, onset_frame


def plan_latency(ports: dict[str, int], calls: int, seconds: float, spread_seconds: float) -> list[PlannedCall]:
    payload = _chunk_payloads(tone(AGENT_TONE_HZ, FRAME_PERIOD, RATE), CHUNKS["20ms"])[0]
    plan = []
    for index in range(calls):
        leg, port = _leg(ports, index)
        run = CallRun(uuid.uuid4(), leg, seconds, "20ms")
        plan.append(PlannedCall(run, port, _offset(spread_seconds, index, calls), b"", chunk_script(payload, index)))
    return plan


# ==========================================================================
# The worker process
# ==========================================================================
def start_agent_worker(url: str, workdir: Path, timeout: float = 15.0) -> Worker:
    return start_worker("agent", workdir, timeout, options=(f"url={url}", "barge_in=true"))


def _usage(sampler: ResourceSampler) -> dict[str, float]:
    return {
        "worker_cpu_percent_mean": (100.0 * sampler.cpu_seconds / sampler.wall_seconds) if sampler.wall_seconds else 0.0,
        "worker_rss_mb_max": max(sampler.worker_rss, default=sampler.rss_before) / 2**20,
        "client_cpu_percent_mean": statistics.fmean(sampler.client_cpu) if sampler.client_cpu else 0.0,
        "seconds": sampler.wall_seconds,
    }


@dataclass
class Settings:
    calls: int = 20
    seconds: float = 10.0
    spread: float = 1.0
    barge_calls: int = 30
    latency_calls: int = 10
    latency_seconds: float = 8.0
    host: str = "127.0.0.1"
    worker_log: Path | None = None  # where to keep the worker's log


@dataclass
class RawRun:
    """Everything the scenarios produced, before analysis."""

    pacing: list[CallRun]
    barge: list[CallRun]
    latency: list[CallRun]
    onset_frame: int
    logs: dict[str, AgentLog]
    refused_sessions: list[str]
    usage: dict[str, dict[str, float]]
    worker_pid: int
    ports: dict[str, int]
    worker_records: list[LegRecord]  # the worker's own figures per leg (its --leg-records)


async def _scenario(name: str, worker: Worker, agent: ScriptedAgent, host: str, plan: list[PlannedCall],
                    usage: dict[str, dict[str, float]]) -> list[CallRun]:
    sampler = ResourceSampler(worker.process.pid, interval=0.5)
    sampler.start()
    try:
        runs = await run_planned(agent, host, plan)
    finally:
        sampler.finish()
    usage[name] = _usage(sampler)
    if worker.process.poll() is not None:
        raise BenchError(f"worker exited with status {worker.process.returncode} during {name}:\n{worker.log()[-3000:]}")
    await asyncio.sleep(0.3)  # let the agent sessions see their `stop`
    return runs


async def _run(settings: Settings, workdir: Path) -> tuple[RawRun, str]:
    agent = ScriptedAgent()
    url = await agent.start(settings.host)
    loop = asyncio.get_running_loop()
    worker = await loop.run_in_executor(None, start_agent_worker, url, workdir)
    usage: dict[str, dict[str, float]] = {}
    try:
        reply = tone(AGENT_TONE_HZ, REPLY_SECONDS, RATE)
        pacing = await _scenario("pacing", worker, agent, settings.host, plan_pacing(
            worker.ports, settings.calls, settings.seconds, settings.spread, reply), usage)
        barge_plan, onset_frame = plan_barge(worker.ports, settings.barge_calls, min(3.0, 0.1 * settings.barge_calls))
        barge = await _scenario("barge_in", worker, agent, settings.host, barge_plan, usage)
        latency = await _scenario("latency", worker, agent, settings.host, plan_latency(
            worker.ports, settings.latency_calls, settings.latency_seconds, min(0.5, 0.05 * settings.latency_calls)),
            usage)
    finally:
        await loop.run_in_executor(None, worker.stop)
        await agent.close()
    raw = RawRun(pacing, barge, latency, onset_frame, agent.logs, agent.refused, usage,
                 worker.process.pid, worker.ports, worker.leg_records())
    return raw, worker.log()


def analyse(raw: RawRun, worker_log: str, settings: Settings) -> dict[str, Any]:
    reply = decode_mulaw(encode_mulaw(tone(AGENT_TONE_HZ, REPLY_SECONDS, RATE)))
    pacing = analyse_pacing(raw.pacing, raw.logs, reply)
    barge = analyse_barge(raw.barge, raw.logs, raw.worker_records, raw.onset_frame)
    latency = analyse_latency(raw.latency, raw.logs)
    checks = checks_for(pacing, barge, latency)
    problems = [line[:300] for line in PROBLEM_LOG.findall(worker_log)]
    worker = worker_legs(raw.worker_records)
    worker.update({
        "pid": raw.worker_pid, "ports": raw.ports, "usage": raw.usage,
        "problem_lines": len(problems),
        "problem_examples": problems[:5],
    })
    return {
        "config": {
            **{key: value for key, value in settings.__dict__.items() if key != "worker_log"},
            "reply_seconds": REPLY_SECONDS, "reply_schedule_s": reply_schedule(settings.seconds),
            "chunk_variants": list(CHUNKS), "barge_call_seconds": BARGE_CALL_SECONDS,
            "barge_onset_s": BARGE_ONSET_SECONDS, "latency_gap_s": list(LATENCY_GAP),
            "cpus": os.cpu_count(), "kernel_timestamps": kernel_timestamps_supported(),
            "load_average": list(os.getloadavg()),
        },
        "pacing": pacing,
        "barge_in": barge,
        "latency": latency,
        "agent_refused_sessions": raw.refused_sessions,
        "worker": worker,
        "checks": checks,
        "verdict": "PASS" if all(item["pass"] for item in checks.values()) else "FAIL",
    }


def run_benchmark(settings: Settings) -> dict[str, Any]:
    """Start the agent and a worker, run the three scenarios, stop; the report (BenchError if broken)."""
    with tempfile.TemporaryDirectory(prefix="audiogw-bench-agent-") as directory:
        raw, worker_log = uvloop.run(_run(settings, Path(directory)))
    if settings.worker_log is not None:
        settings.worker_log.write_text(worker_log)
    report = analyse(raw, worker_log, settings)
    completed = sum(report[name]["calls"]["completed"] for name in ("pacing", "barge_in", "latency"))
    if completed == 0:
        raise BenchError(f"no call completed:\n{worker_log[-3000:]}")
    return report


# ==========================================================================
# Text report
# ==========================================================================
def _ms(summary: dict[str, float | int]) -> str:
    return (f"p50 {summary['p50']:.1f} / p95 {summary['p95']:.1f} / max {summary['max']:.1f} ms "
            f"(min {summary['min']:.1f}, n={summary['count']})")


def _calls_line(calls: dict[str, Any]) -> str:
    line = (f"  calls: {calls['completed']}/{calls['placed']} completed, agent sessions {calls['agent_sessions']}; "
            f"client: calls with late reads {calls['calls_with_late_reads']}, send re-anchors "
            f"{calls['late_sends_total']}, unstamped frames {calls['user_timestamps_total']}")
    for reason, count in calls["failure_reasons"].items():
        line += f"\n    failed x{count}: {reason}"
    for error in calls["agent_script_errors"]:
        line += f"\n    agent script error: {error}"
    return line


def _pacing_line(label: str, stats: dict[str, Any]) -> str:
    return (f"  {label:<34} p50 {stats['p50_deviation_ms']:.3f} / p99 {stats['p99_deviation_ms']:.3f} / max "
            f"{stats['max_deviation_ms']:.3f} ms; largest gap {stats['max_gap_ms']:.1f} ms; gaps > 40 ms "
            f"{stats['gaps_over_40ms']}; {stats['frames']} frames")


def _usage_line(name: str, usage: dict[str, float]) -> str:
    return (f"  {name:<9} worker CPU {usage['worker_cpu_percent_mean']:.1f} % of a core, RSS max "
            f"{usage['worker_rss_mb_max']:.1f} MB; client (agent + calls) CPU {usage['client_cpu_percent_mean']:.1f} %"
            f"; {usage['seconds']:.1f} s")


def format_report(report: dict[str, Any]) -> str:
    config, pacing, barge, latency, worker = (report[key] for key in ("config", "pacing", "barge_in", "latency", "worker"))
    audio = pacing["agent_audio"]
    lines = [
        f"audiogw agent benchmark: one worker (app agent, barge_in=true, pid {worker['pid']}), the agent and the "
        f"calls in this process; {config['cpus']} CPUs, load average {config['load_average'][0]:.2f}; kernel "
        f"timestamps: {config['kernel_timestamps']}",
        "",
        f"1. pacing: {config['calls']} calls x {config['seconds']:g} s (ia/retorno alternating), replies of "
        f"{config['reply_seconds']:g} s sent as one burst at {config['reply_schedule_s']} s, chunks "
        f"{'/'.join(config['chunk_variants'])} by call",
        _calls_line(pacing["calls"]),
        _pacing_line("whole call", pacing["whole_call"]),
        _pacing_line(f"after first {STARTUP_EXCLUDED:g} s", pacing[f"after_first_{STARTUP_EXCLUDED:g}s"]),
        _pacing_line("without late-read calls", pacing["whole_call_without_late_read_calls"]),
    ]
    lines += [_pacing_line(f"chunks {name}", stats) for name, stats in pacing["by_chunk"].items()]
    for key, label in (("near_bursts", f"<= {BURST_HORIZON * 1000:g} ms after any burst"),
                       ("away_from_bursts", "elsewhere")):
        stats = pacing[key]
        lines.append(f"  {label:<34} p50 {stats['p50_deviation_ms']:.3f} / p99 {stats['p99_deviation_ms']:.3f} ms; "
                     f"largest gap {stats['max_gap_ms']:.1f} ms; gaps > 40 ms {stats['gaps_over_40ms']}; "
                     f"{stats['intervals']} intervals")
    heard = audio["frames_heard_per_call"]
    lines += [
        f"  agent audio: {audio['calls_intact']}/{pacing['calls']['placed']} calls heard every reply whole and "
        f"unaltered; frames heard per call min/median/max {heard['min']}/{heard['median']}/{heard['max']} "
        f"({audio['frames_per_reply']} per reply); marks not echoed {audio['marks_not_echoed']}",
    ]
    if pacing["by_chunk"]:
        lines.append("  (one worker loop serves every call: one call's burst delays every call's frames, so the "
                     "near/elsewhere split says more than the split by chunk size)")
    for gap in sorted(pacing["gaps"], key=lambda gap: -gap["gap_ms"])[:10]:
        since = "before any burst" if gap["after_burst_ms"] is None else f"{gap['after_burst_ms']:.0f} ms after a burst"
        lines.append(f"  gap of {gap['gap_ms']:.1f} ms at {gap['at_s']:.2f} s ({gap['leg']}, chunks {gap['chunks']}; "
                     f"{since})")
    lines += [
        "",
        f"2. barge-in: {config['barge_calls']} calls x {config['barge_call_seconds']:g} s; {BARGE_REPLY_SECONDS:g} s "
        f"reply at once; caller speaks from {config['barge_onset_s']:g} s",
        _calls_line(barge["calls"]),
        f"  caller's onset -> first frame without agent audio: {_ms(barge['reaction_ms'])}",
        f"  same, calls where this client wrote its 2nd speech frame <= {CLIENT_ON_TIME * 1000:g} ms late and had "
        f"no late reads: {_ms(barge['reaction_ms_client_on_time'])}",
        f"  this client's lateness writing the 2nd speech frame (the VAD's trigger): "
        f"{_ms(barge['client_second_speech_frame_late_ms'])}",
        f"  worker's own view (its leg records; from its processing of the 1st loud frame): {_ms(barge['worker_view_ms'])}",
        f"  caller's onset -> agent read the barge_in event: {_ms(barge['agent_told_ms'])}",
        f"  agent frames heard after playback stopped: {barge['agent_frames_after_stop']}",
    ]
    lines += [f"  not measured x{count}: {problem}" for problem, count in barge["unmeasured"].items()]
    lines += [
        "",
        f"3. latency with an empty buffer: {config['latency_calls']} calls x {config['latency_seconds']:g} s, one "
        f"20 ms chunk every {config['latency_gap_s'][0]:g}-{config['latency_gap_s'][1]:g} s",
        _calls_line(latency["calls"]),
        f"  agent send -> arrival of the frame carrying it: {_ms(latency['latency_ms'])}",
        f"  chunks never heard: {latency['chunks_unheard']} (sent at the very end of a call, not judged: "
        f"{latency['chunks_at_call_end']})",
        "",
        "resources:",
    ]
    lines += [_usage_line(name, usage) for name, usage in worker["usage"].items()]
    if worker.get("legs_logged"):
        lines.append(f"worker's leg records: {worker['legs_logged']} legs; underruns {worker['underruns_total']}; "
                     f"late frames {worker['late_frames_total']}; end reasons {worker['end_reasons']}")
    lines.append(f"worker log warnings/errors: {worker['problem_lines']}")
    lines += [f"  {line}" for line in worker["problem_examples"]]
    if report["agent_refused_sessions"]:
        lines.append(f"agent sessions refused: {report['agent_refused_sessions'][:5]}")
    lines += ["", "targets (measured on a possibly busy machine; re-run on a quiet one):"]
    for name, item in report["checks"].items():
        value = item["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(f"  {name:<30} {shown:>10}  target {item['target']:<8} {'PASS' if item['pass'] else 'FAIL'}")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)


# ==========================================================================
# Entry point
# ==========================================================================
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audiogw.bench.agent",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20, help="concurrent calls in the pacing scenario (default 20)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a pacing call (default 10)")
    parser.add_argument("--spread", type=float, default=1.0, help="seconds over which pacing calls start")
    parser.add_argument("--barge-calls", type=int, default=30, help="barge-in calls (default 30)")
    parser.add_argument("--latency-calls", type=int, default=10, help="calls in the latency scenario (default 10)")
    parser.add_argument("--latency-seconds", type=float, default=8.0, help="length of a latency call (default 8)")
    parser.add_argument("--worker-log", type=Path, help="keep the worker's log in this file")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if min(args.calls, args.barge_calls, args.latency_calls) < 1 or not args.seconds > 0 \
            or not args.latency_seconds > 0 or args.spread < 0:
        parser.error("call counts must be >= 1, lengths > 0, --spread >= 0")
    if not reply_schedule(args.seconds):
        parser.error(f"--seconds {args.seconds:g} leaves no time for one {REPLY_SECONDS:g} s reply to play; use 4 or more")
    settings = Settings(args.calls, args.seconds, args.spread, args.barge_calls, args.latency_calls,
                        args.latency_seconds, worker_log=args.worker_log)
    try:
        report = run_benchmark(settings)
    except BenchError as error:
        print(f"benchmark broke: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001
        print(f"benchmark broke: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, default=float) if args.json else format_report(report))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

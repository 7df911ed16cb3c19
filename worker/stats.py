"""A worker's cumulative counters, shipped whole in every heartbeat.

Counters only grow inside one worker process; the supervisor keeps the totals
across restarts. Plain attributes and dicts: incrementing must cost nothing on
the per-frame path.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from audiogw.shared.audiosocket import LEG_KINDS
from audiogw.shared.histogram import Histogram


class LegKindStats:
    """Totals for all legs of one kind (ia or retorno) of this extension."""

    __slots__ = (
        "calls_active", "calls_total", "frames_received", "frames_sent", "underruns",
        "late_frames", "protocol_errors", "frames_dropped",
    )

    def __init__(self) -> None:
        self.calls_active = 0
        self.calls_total = 0
        self.frames_received = 0
        self.frames_sent = 0
        self.underruns = 0
        self.late_frames = 0
        self.protocol_errors: Counter[str] = Counter()
        self.frames_dropped: Counter[str] = Counter()

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls_active": self.calls_active,
            "calls_total": self.calls_total,
            "frames_received": self.frames_received,
            "frames_sent": self.frames_sent,
            "underruns": self.underruns,
            "late_frames": self.late_frames,
            "protocol_errors": dict(self.protocol_errors),
            "frames_dropped": dict(self.frames_dropped),
        }


class AgentStats:
    """The agent connector's figures (only a worker running the `agent` app has them)."""

    __slots__ = ("connect_failures", "audio_received_seconds", "audio_dropped_seconds", "bad_messages",
                 "barge_ins", "barge_in_reaction", "buffers")

    def __init__(self) -> None:
        self.connect_failures: Counter[str] = Counter()  # by leg kind
        self.audio_received_seconds: Counter[str] = Counter()  # by leg kind
        self.audio_dropped_seconds: Counter[str] = Counter()  # by reason
        self.bad_messages: Counter[str] = Counter()  # by reason
        self.barge_ins = 0
        self.barge_in_reaction = Histogram()
        # Live legs' playout buffers (leg kind, buffer): read at snapshot time for the depth gauge.
        self.buffers: dict[object, str] = {}

    def snapshot(self) -> dict[str, Any]:
        depth = dict.fromkeys(LEG_KINDS, 0.0)
        for buffer, leg_kind in self.buffers.items():
            depth[leg_kind] = depth.get(leg_kind, 0.0) + buffer.buffered_seconds
        return {
            "connect_failures": dict(self.connect_failures),
            "audio_received_seconds": dict(self.audio_received_seconds),
            "audio_dropped_seconds": dict(self.audio_dropped_seconds),
            "bad_messages": dict(self.bad_messages),
            "barge_ins": self.barge_ins,
            "barge_in_reaction": self.barge_in_reaction.snapshot(),
            "playback_buffer_seconds": depth,
        }


class WorkerStats:
    __slots__ = ("legs", "send_lateness", "loop_lag", "app_counters", "agent")

    def __init__(self) -> None:
        self.legs = {kind: LegKindStats() for kind in LEG_KINDS}
        # One per worker, not per leg: every leg's frames leave on the same ticker's deadlines.
        self.send_lateness = Histogram()
        self.loop_lag = Histogram()
        # Counters an app exposes (e.g. agent connect failures), by name.
        self.app_counters: Counter[str] = Counter()
        self.agent: AgentStats | None = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "legs": {kind: stats.snapshot() for kind, stats in self.legs.items()},
            "send_lateness": self.send_lateness.snapshot(),
            "loop_lag": self.loop_lag.snapshot(),
            "app": dict(self.app_counters),
            **({"agent": self.agent.snapshot()} if self.agent is not None else {}),
        }

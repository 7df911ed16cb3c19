"""The agent connector's figures: its stats section and the object that holds them.

A module of its own, outside ``worker/apps/`` (whose package imports every app and
their numpy and websockets): the supervisor and ``ctl`` import this section to
expose it, and the schema finds it through ``APP_SECTIONS`` in
:mod:`audiogw.shared.stats_schema`. Only a worker running the ``agent`` app ships it.
"""
from __future__ import annotations

from typing import Protocol

from audiogw.shared.audiosocket import LEG_KINDS
from audiogw.shared.stats_schema import Field, Section


class _Buffered(Protocol):
    buffered_seconds: float


SECTION = Section("agent", always=False, fields=(
    Field("connect_failures", "audiogw_agent_connect_failures", "counter",
          "Failed attempts to open the WebSocket to the voice agent.", by="leg"),
    Field("reconnects", "audiogw_agent_reconnects", "counter",
          "Attempts to reopen the WebSocket after a failed attempt or a lost connection (delayed by a "
          "backoff that grows while sessions keep ending young).", by="leg"),
    Field("audio_received_seconds", "audiogw_agent_audio_received_seconds", "counter",
          "Audio received from the agent.", unit="seconds", by="leg"),
    Field("audio_dropped_seconds", "audiogw_agent_audio_dropped_seconds", "counter",
          "Audio dropped by the connector, by reason (buffer_full, barge_in, agent_closed: "
          "left when the play-out after the agent's close reached its bound; caller audio an agent did not "
          "read in time is frames_dropped{reason='latency'}).", unit="seconds", by="reason"),
    Field("bad_messages", "audiogw_agent_bad_messages", "counter", "Agent messages refused, by reason.", by="reason"),
    Field("playback_buffer_seconds", "audiogw_agent_playback_buffer_seconds", "gauge",
          "Agent audio queued for playout on live legs.", unit="seconds", by="leg", computed=True),
    Field("barge_in_reaction", "audiogw_agent_barge_in_reaction_seconds", "histogram",
          "From the caller's speech onset to the stop of agent playback (gateway barge-in).", unit="seconds"),
))


class AgentStats:
    """The section's values: Counters by leg kind or reason, the barge-in histogram, live buffers."""

    __slots__ = (*SECTION.attributes(), "buffers")

    def __init__(self) -> None:
        SECTION.init(self)
        # Live legs' playout buffers (buffer -> leg kind): read at snapshot time for the depth gauge.
        self.buffers: dict[_Buffered, str] = {}

    @property
    def playback_buffer_seconds(self) -> dict[str, float]:
        depth = dict.fromkeys(LEG_KINDS, 0.0)
        for buffer, leg_kind in self.buffers.items():
            depth[leg_kind] = depth.get(leg_kind, 0.0) + buffer.buffered_seconds
        return depth

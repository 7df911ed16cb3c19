"""The agent-driven conversation in-process: two legs of one UUID, fake agent sockets, a fake call link.

The agent app streams each leg (ia and retorno) to its own fake WebSocket; the
test speaks as the agent (``audiogw.*`` events) and as the supervisor (events
into the fake call link), feeds the callers' frames through ``data_received``
and drives both legs' ticks on a manual clock. The real-process version (a real
worker, a ZeroMQ ROUTER as the supervisor, softphone legs) is
tests/test_conversation.py.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy

from audiogw.shared.audiosocket import FRAME_PERIOD, Kind, encode_audio, encode_uuid
from audiogw.shared.config import AudioSocketSettings
from audiogw.shared.media_streams import (
    GatewayDialStatus,
    GatewayMedia,
    StreamFormat,
    agent_bridge_message,
    agent_dial_message,
    agent_hangup_message,
    agent_send_dtmf_message,
    parse_gateway_message,
)
from audiogw.shared.messages import (
    CallEvent, Dial, DialStatus, HangupLeg, HangupRemote, LegEnded, LegStarted, SendDtmf,
)
from audiogw.worker.apps import AppContext, create_app
from audiogw.worker.apps.conversation import NO_CALL_CONTROL
from audiogw.worker.leg import FIRST_AUDIO_GRACE, LegProtocol
from audiogw.worker.server import ExtensionWorker
from test_agent_inprocess import URL, FakeAgent, FakeAgentSocket, in_loop, settle, until
from test_leg_inprocess import FakeTransport, ManualClock

L16 = StreamFormat("l16", 8000)  # exact on the wire: sums can be checked sample for sample
FRAME = 160


class FakeCalls:
    """What the apps use of worker/calls.py CallLink; ``deliver`` plays the supervisor."""

    def __init__(self, accept: bool = True) -> None:
        self.sent: list = []
        self.handlers: dict = {}
        self.accept = accept

    def send(self, request) -> bool:
        if self.accept:
            self.sent.append(request)
        return self.accept

    def register(self, call_uuid, handler) -> None:
        self.handlers[call_uuid] = handler

    def unregister(self, call_uuid, handler) -> None:
        if self.handlers.get(call_uuid) == handler:
            del self.handlers[call_uuid]

    def deliver(self, event: CallEvent) -> None:
        self.handlers[uuid.UUID(event.uuid)](event)

    def of(self, kind: type) -> list:
        return [request for request in self.sent if isinstance(request, kind)]


@dataclass
class Conversation:
    clock: ManualClock
    agent: FakeAgent
    worker: ExtensionWorker
    calls: FakeCalls | None
    uuid: uuid.UUID
    protocols: dict[str, LegProtocol] = field(default_factory=dict)
    transports: dict[str, FakeTransport] = field(default_factory=dict)
    sockets: dict[str, FakeAgentSocket] = field(default_factory=dict)

    @property
    def app(self):
        return self.worker.app

    def leg(self, kind: str):
        return self.protocols[kind].leg

    async def connect(self, kind: str) -> FakeAgentSocket:
        """A leg of this UUID arrives; returns its agent stream once ``start`` was sent."""
        protocol = LegProtocol(self.worker, kind)
        transport = FakeTransport()
        protocol.connection_made(transport)
        before = len(self.agent.sockets)
        protocol.data_received(encode_uuid(self.uuid))
        self.protocols[kind], self.transports[kind] = protocol, transport
        await until(lambda: len(self.agent.sockets) > before and len(self.agent.sockets[before].sent) >= 2,
                    f"the {kind} stream started")
        socket = self.sockets[kind] = self.agent.sockets[before]
        return socket

    def feed(self, kind: str, value: int, frames: int = 1) -> None:
        pcm = numpy.full(FRAME, value, dtype="<i2").tobytes()
        for _ in range(frames):
            self.protocols[kind].data_received(encode_audio(pcm, 8000))

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            for protocol in self.protocols.values():
                if protocol.leg is not None and not protocol.leg.closed.is_set():
                    protocol.leg.on_tick(self.clock.now)
            self.clock.advance(FRAME_PERIOD)

    def heard(self, kind: str) -> list[numpy.ndarray]:
        """Each audio frame the leg's caller received, as int16 samples."""
        return [numpy.frombuffer(frame.payload, dtype="<i2") for frame in self.transports[kind].frames()
                if frame.kind == Kind.SLIN_8K]

    def bad(self) -> dict[str, int]:
        return dict(self.app.stats.bad_messages)


async def _conversation(calls: FakeCalls | None) -> Conversation:
    clock = ManualClock()
    agent = FakeAgent()
    context = AppContext(extension="1201", options={"url": URL, "rate": 8000, "encoding": "l16", "media_rate": 8000})
    context.calls = calls
    app = create_app("agent", context)
    app.connect = agent.connect
    await app.start()
    worker = ExtensionWorker("1201", app, AudioSocketSettings(), clock=clock)
    return Conversation(clock, agent, worker, calls, uuid.uuid4())


def _dial_statuses(socket: FakeAgentSocket) -> list[GatewayDialStatus]:
    return [message for message in socket.messages() if isinstance(message, GatewayDialStatus)]


def _media(socket: FakeAgentSocket) -> list[GatewayMedia]:
    return [message for message in (parse_gateway_message(raw, L16) for raw in socket.sent)
            if isinstance(message, GatewayMedia)]


def _say(socket: FakeAgentSocket, value: int, frames: int = 1) -> None:
    socket.push_media(numpy.full(FRAME * frames, value, dtype="<i2").tobytes(), L16)


async def _hang_up_all(conversation: Conversation) -> None:
    for protocol in conversation.protocols.values():
        protocol.end("test_over")
    await until(lambda: all(p._app_task.done() for p in conversation.protocols.values()), "the legs ended")


# -- no call control (a worker run alone) ---------------------------------------

@in_loop
async def test_without_call_control_dial_answers_failed_and_send_dtmf_is_refused_with_a_reason() -> None:
    conversation = await _conversation(None)
    ia = await conversation.connect("ia")
    ia.push_text(agent_dial_message(ia.stream_sid, 20))
    await until(lambda: _dial_statuses(ia), "a dial status")
    [status] = _dial_statuses(ia)
    assert (status.status, status.leg, status.reason) == ("failed", "retorno", NO_CALL_CONTROL)
    assert status.stream_sid == ia.stream_sid
    ia.push_text(agent_send_dtmf_message(ia.stream_sid, "ia", "#"))
    ia.push_text(agent_hangup_message(ia.stream_sid, "retorno"))  # not connected, nobody to cancel it
    await until(lambda: sum(conversation.bad().values()) == 2, "two refusals counted")
    assert conversation.bad() == {"no_call_control": 1, "no_such_leg": 1}
    await settle()
    assert not conversation.leg("ia").closed.is_set(), "a refused event leaves the leg alone"
    await _hang_up_all(conversation)


# -- with call control ---------------------------------------------------------

@in_loop
async def test_dial_goes_to_the_supervisor_and_its_statuses_come_back_on_both_streams() -> None:
    calls = FakeCalls()
    conversation = await _conversation(calls)
    ia = await conversation.connect("ia")
    key = str(conversation.uuid)
    assert calls.of(LegStarted) == [LegStarted(extension="1201", uuid=key, leg="ia")]
    ia.push_text(agent_dial_message(ia.stream_sid, 12.5))
    await until(lambda: calls.of(Dial), "the Dial request")
    assert calls.of(Dial) == [Dial(extension="1201", uuid=key, timeout=12.5)]
    calls.deliver(DialStatus(extension="1201", uuid=key, status="ringing"))
    await until(lambda: _dial_statuses(ia), "ringing at the agent")
    assert [(s.status, s.leg) for s in _dial_statuses(ia)] == [("ringing", "retorno")]

    retorno = await conversation.connect("retorno")
    assert retorno.messages()[1].custom_parameters == {"extension": "1201", "leg": "retorno"}
    assert calls.of(LegStarted)[-1] == LegStarted(extension="1201", uuid=key, leg="retorno")
    calls.deliver(DialStatus(extension="1201", uuid=key, status="answered"))
    await until(lambda: len(_dial_statuses(ia)) == 2 and _dial_statuses(retorno), "answered on both streams")
    assert _dial_statuses(ia)[-1].status == _dial_statuses(retorno)[-1].status == "answered"
    assert _dial_statuses(retorno)[-1].stream_sid == retorno.stream_sid
    await _hang_up_all(conversation)
    assert {request.leg for request in calls.of(LegEnded)} == {"ia", "retorno"}
    assert calls.handlers == {}, "the ended conversation no longer takes events"


@in_loop
async def test_bridge_mixes_the_other_legs_voice_with_the_agents_and_the_agent_still_hears_both() -> None:
    calls = FakeCalls()
    conversation = await _conversation(calls)
    ia = await conversation.connect("ia")
    retorno = await conversation.connect("retorno")
    conversation.clock.advance(FIRST_AUDIO_GRACE)
    conversation.tick(1)  # before the bridge: silence both ways
    ia.push_text(agent_bridge_message(ia.stream_sid))
    await until(lambda: conversation.leg("retorno").live is not None
                and conversation.leg("ia").live is not None, "bridged")
    _say(retorno, 1000)  # the agent speaks to the resident...
    await until(lambda: len(conversation.leg("retorno").outbound) == 1, "agent audio queued for the resident")
    conversation.feed("ia", 2000)  # ...while the visitor speaks
    conversation.feed("retorno", -300)  # and the resident
    conversation.tick(1)
    resident, visitor = conversation.heard("retorno")[-1], conversation.heard("ia")[-1]
    assert numpy.array_equal(resident, numpy.full(FRAME, 3000)), "visitor + agent, mixed"
    assert numpy.array_equal(visitor, numpy.full(FRAME, -300)), "the resident alone"
    # The agent keeps receiving both legs' own audio (not the mix).
    await until(lambda: _media(ia) and _media(retorno), "both legs streamed to the agent")
    assert numpy.frombuffer(_media(ia)[-1].payload, ">i2")[0] == 2000
    assert numpy.frombuffer(_media(retorno)[-1].payload, ">i2")[0] == -300

    retorno.push_text(agent_bridge_message(retorno.stream_sid, bridge=False))  # either stream may say it
    await until(lambda: conversation.leg("ia")._relay is None, "unbridged")
    conversation.feed("ia", 2000)
    conversation.feed("retorno", -300)
    conversation.tick(1)
    assert not conversation.heard("retorno")[-1].any() and not conversation.heard("ia")[-1].any()
    await _hang_up_all(conversation)


@in_loop
async def test_loud_voices_mixed_never_wrap() -> None:
    conversation = await _conversation(FakeCalls())
    ia = await conversation.connect("ia")
    retorno = await conversation.connect("retorno")
    conversation.clock.advance(FIRST_AUDIO_GRACE)
    ia.push_text(agent_bridge_message(ia.stream_sid))
    await until(lambda: conversation.leg("retorno").live is not None, "bridged")
    _say(retorno, 30000, frames=3)
    await until(lambda: len(conversation.leg("retorno").outbound) == 3, "agent audio queued")
    for _ in range(3):
        conversation.feed("ia", 30000)
        conversation.tick(1)
    for frame in conversation.heard("retorno")[-3:]:
        assert frame.min() > 0, "a wrapped sum turns negative"
    await _hang_up_all(conversation)


@in_loop
async def test_hangup_ends_only_that_leg_and_a_ringing_retorno_is_cancelled_through_the_supervisor() -> None:
    calls = FakeCalls()
    conversation = await _conversation(calls)
    ia = await conversation.connect("ia")
    key = str(conversation.uuid)
    ia.push_text(agent_hangup_message(ia.stream_sid, "retorno"))  # still ringing: not here yet
    await until(lambda: calls.of(HangupRemote), "HangupRemote")
    assert calls.of(HangupRemote) == [HangupRemote(extension="1201", uuid=key, leg="retorno")]
    await conversation.connect("retorno")
    ia.push_text(agent_hangup_message(ia.stream_sid, "retorno"))
    await until(lambda: conversation.leg("retorno").closed.is_set(), "the retorno leg hung up")
    assert conversation.leg("retorno").end_reason == "agent_hangup"
    assert conversation.transports["retorno"].closed
    await until(lambda: calls.of(LegEnded), "LegEnded")
    assert calls.of(LegEnded) == [LegEnded(extension="1201", uuid=key, leg="retorno")]
    await settle()
    assert not conversation.leg("ia").closed.is_set(), "the visitor stays"
    await _hang_up_all(conversation)


@in_loop
async def test_an_agent_hangup_plays_out_what_the_agent_said_first() -> None:
    """The doorman says goodbye, then asks for the hang-up: the goodbye is heard whole."""
    calls = FakeCalls()
    conversation = await _conversation(calls)
    ia = await conversation.connect("ia")
    retorno = await conversation.connect("retorno")
    conversation.tick(5)  # past the first-audio grace
    _say(retorno, 1234, frames=4)
    await until(lambda: len(conversation.leg("retorno").outbound) == 4, "the goodbye queued")
    ia.push_text(agent_hangup_message(ia.stream_sid, "retorno"))
    await settle()
    assert not conversation.leg("retorno").closed.is_set(), "hung up before the goodbye played"
    for _ in range(6):
        conversation.tick(1)
        await settle()
    await until(lambda: conversation.leg("retorno").closed.is_set(), "the retorno leg hung up")
    assert sum(1 for frame in conversation.heard("retorno") if (frame == 1234).all()) == 4
    assert conversation.leg("retorno").end_reason == "agent_hangup"
    await _hang_up_all(conversation)


@in_loop
async def test_send_dtmf_goes_to_the_supervisor_and_a_hangup_leg_event_ends_every_leg() -> None:
    calls = FakeCalls()
    conversation = await _conversation(calls)
    ia = await conversation.connect("ia")
    await conversation.connect("retorno")
    key = str(conversation.uuid)
    ia.push_text(agent_send_dtmf_message(ia.stream_sid, "ia", "9#"))
    await until(lambda: calls.of(SendDtmf), "SendDtmf")
    assert calls.of(SendDtmf) == [SendDtmf(extension="1201", uuid=key, leg="ia", digits="9#")]
    calls.deliver(HangupLeg(extension="1201", uuid=key, leg="retorno", reason="rest_hangup"))
    await until(lambda: conversation.leg("retorno").closed.is_set(), "retorno hung up")
    assert not conversation.leg("ia").closed.is_set()
    calls.deliver(HangupLeg(extension="1201", uuid=key))
    await until(lambda: conversation.leg("ia").closed.is_set(), "every leg hung up")
    assert conversation.leg("ia").end_reason == "rest_hangup"
    await until(lambda: all(p._app_task.done() for p in conversation.protocols.values()), "the apps ended")


@in_loop
async def test_bad_call_control_events_are_refused_with_reasons_and_the_leg_survives() -> None:
    calls = FakeCalls(accept=False)  # and a supervisor that does not read
    conversation = await _conversation(calls)
    ia = await conversation.connect("ia")
    for raw in ('{"event": "audiogw.dial", "dial": {"timeout": -1}}',
                '{"event": "audiogw.dial", "dial": {"timeout": "soon"}}',
                '{"event": "audiogw.hangup", "hangup": {"leg": "lobby"}}',
                '{"event": "audiogw.hangup"}',
                '{"event": "audiogw.send_dtmf", "send_dtmf": {"leg": "ia", "digits": "open"}}',
                '{"event": "audiogw.send_dtmf", "send_dtmf": {"leg": "both", "digits": "1"}}',
                '{"event": "audiogw.transfer"}'):
        ia.push(raw)
    ia.push_text(agent_send_dtmf_message(ia.stream_sid, "ia", "1"))  # valid, but not deliverable
    ia.push_text(agent_dial_message(ia.stream_sid))
    await until(lambda: sum(conversation.bad().values()) == 8 and _dial_statuses(ia), "refusals and a dial status")
    assert conversation.bad() == {"bad_dial": 2, "bad_leg": 2, "missing_field": 1, "bad_digits": 1,
                                  "unknown_event": 1, "calls_unreachable": 1}
    [status] = _dial_statuses(ia)
    assert status.status == "failed" and "not reading" in status.reason
    await settle()
    assert not conversation.leg("ia").closed.is_set()
    await _hang_up_all(conversation)


@in_loop
async def test_the_bridged_voice_is_held_to_max_latency_and_an_unbridge_drops_what_waits() -> None:
    conversation = await _conversation(FakeCalls())
    ia = await conversation.connect("ia")
    await conversation.connect("retorno")
    conversation.clock.advance(FIRST_AUDIO_GRACE)
    ia.push_text(agent_bridge_message(ia.stream_sid))
    await until(lambda: conversation.leg("retorno").live is not None, "bridged")
    live = conversation.leg("retorno").live
    bound = conversation.leg("ia").max_latency_frames
    conversation.feed("ia", 1500, frames=bound + 40)  # a stall upstream: a burst of the visitor's voice
    conversation.tick(45)  # two latency windows
    assert len(live) <= bound
    assert conversation.worker.stats.legs["retorno"].frames_dropped["latency"] > 0
    conversation.feed("ia", 1500, frames=5)
    ia.push_text(agent_bridge_message(ia.stream_sid, bridge=False))
    await until(lambda: len(live) == 0, "the unbridge drops the queued voice at once")
    await _hang_up_all(conversation)


@in_loop
async def test_the_bridge_app_pairs_by_uuid_and_a_second_leg_of_a_kind_replaces_the_first() -> None:
    clock = ManualClock()
    worker = ExtensionWorker("1201", create_app("bridge", AppContext(extension="1201", options={"rate": 8000})),
                             AudioSocketSettings(), clock=clock)
    call_uuid = uuid.uuid4()
    protocols = {}
    for name, kind in (("ia", "ia"), ("retorno", "retorno"), ("ia2", "ia")):
        protocol = protocols[name] = LegProtocol(worker, kind)
        protocol.connection_made(FakeTransport())
        protocol.data_received(encode_uuid(call_uuid))
        await settle()
    assert protocols["ia"].leg.end_reason == "replaced_by_new_leg"
    clock.advance(FIRST_AUDIO_GRACE)
    pcm = numpy.full(FRAME, 4321, dtype="<i2").tobytes()
    protocols["ia2"].data_received(encode_audio(pcm, 8000))
    protocols["retorno"].leg.on_tick(clock.now)
    [frame] = [f for f in protocols["retorno"].transport.frames() if f.kind == Kind.SLIN_8K][-1:]
    assert frame.payload == pcm, "the new visitor is heard, unchanged (a lone source)"
    for protocol in protocols.values():
        protocol.end("test_over")
    await until(lambda: all(p._app_task.done() for p in protocols.values()), "the legs ended")
    assert len(worker.app.conversations) == 0


@in_loop
async def test_a_stopping_worker_announces_every_leg_still_here_as_ended() -> None:
    calls = FakeCalls()
    conversation = await _conversation(calls)
    await conversation.connect("ia")
    await conversation.connect("retorno")
    await conversation.app.close()
    assert {(request.uuid, request.leg) for request in calls.of(LegEnded)} == {
        (str(conversation.uuid), "ia"), (str(conversation.uuid), "retorno")}
    assert calls.handlers == {}
    await _hang_up_all(conversation)
    assert len(calls.of(LegEnded)) == 2, "announced once"

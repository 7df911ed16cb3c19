"""agent: each leg talks to a voice agent over WebSocket, in Twilio Media Streams' format.

Options: ``url`` (ws:// or wss://), ``encoding`` (``mulaw`` at 8 kHz, or ``l16``
with ``media_rate`` 8000/16000/24000; the extension option ``rate`` is the AudioSocket leg's), ``connect_timeout``, ``headers``, ``barge_in``
(and ``barge_in_threshold_dbfs``), ``fallback`` (a WAV played while the agent is
unreachable), ``reconnect_max_delay``, ``max_buffer_seconds``, ``jitter_ms`` (a pre-roll:
each utterance's start waits until that much agent audio is queued; worker/playout.py).

The audio clock never waits for the agent: its audio is pushed into the leg's
playout buffer as it arrives, in any chunk or burst size, and the worker's
ticker plays it out at exactly 20 ms per frame. When the buffer is empty the
line carries silence. The buffer holds ``max_buffer_seconds``; an agent that
sends more loses its *oldest* queued audio first (counted as
``audio_dropped_seconds{reason="buffer_full"}``), so what plays is always the
most recent thing it said.

Per leg (:class:`AgentLeg`): connect (``connect_timeout`` covers TCP, TLS and
the handshake), send ``connected`` and ``start``, then stream the caller's
audio as ``media`` and DTMF as ``dtmf``; play the agent's ``media``; echo each
``mark`` when playback reaches it; ``clear`` drops everything not yet played
(and echoes pending marks, as Twilio does). The agent closing the socket
cleanly hangs up the leg once the audio it sent has played (bounded: see
:meth:`AgentLeg.play_out_and_hang_up`). An unreachable agent, or a connection
that drops, means silence (or the fallback prompt) and reconnection with backoff
(0.5 s doubling to ``reconnect_max_delay``; a session that ended within
STABLE_SESSION_SECONDS counts as a failure, worker/reconnect.py) while the leg lives.
Identities are Twilio's shape: ``callSid`` ``CA`` + the leg UUID's hex, a new
``streamSid`` per session, ``accountSid`` from ``agent.account_sid``.

Barge-in (``barge_in = true``): an energy VAD over the caller's frames; when the
caller starts speaking while agent audio is queued, the worker clears the
queue itself (effective on the next tick), echoes pending marks and sends a
custom event ``{"event": "barge_in", "streamSid", "sequenceNumber",
"barge_in": {"timestamp": ms}}``. Agent audio that arrives while that caller
keeps speaking is discarded (counted as ``reason="barge_in"``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, WebSocketException

from audiogw.shared.apps import AgentOptions
from audiogw.shared.audiosocket import Kind
from audiogw.shared.config import resolve_path
from audiogw.shared.logs import register_header_secrets
from audiogw.shared.media_streams import (
    MAX_MESSAGE_BYTES,
    AgentBridge,
    AgentClear,
    AgentDial,
    AgentHangup,
    AgentMark,
    AgentMedia,
    AgentSendDtmf,
    MediaStreamsError,
    StreamFormat,
    StreamSession,
    parse_agent_message,
)
from audiogw.shared.resample import StreamResampler
from audiogw.shared.vad import EnergyVad, VadEvent
from audiogw.worker.apps.base import App, AppContext, AppOptionError
from audiogw.worker.apps.conversation import Conversation, Conversations, Refused
from audiogw.worker.apps.prompt import Prompt
from audiogw.worker.clock import FRAME_PERIOD
from audiogw.worker.apps.outbox import Outbox
from audiogw.worker.reconnect import ReconnectBackoff
from audiogw.worker.agent_stats import SECTION as STATS_SECTION, AgentStats

if TYPE_CHECKING:
    from audiogw.worker.leg import Leg

log = logging.getLogger("audiogw.worker.agent")

OUTBOX_CONTROL_MESSAGES = 100  # dtmf, mark echoes and events waiting beside the caller's audio
FIRST_RETRY_DELAY = 0.5
# A session that lived this long was healthy: its end resets the reconnect delay. One that
# ended sooner (an agent that accepts, then closes or crashes at once) counts as a failure.
STABLE_SESSION_SECONDS = 5.0
# The agent closed its stream: its queued audio plays out first, for at most this long
# (beside the queue's own bound, max_buffer_seconds); PLAYOUT_MARGIN covers a late tick.
PLAYOUT_ON_CLOSE_MAX = 10.0
PLAYOUT_MARGIN = 0.5
CLOSE_READ_SECONDS = 2.0  # to read what an agent sent before its close frame
WRITE_LIMIT_BYTES = 4096  # about 13 media messages (260 ms of µ-law)
TAIL_FLUSH_SECONDS = 0.06  # no agent audio for this long: the reply ended, flush the resampler
BAD_MESSAGES_LOGGED = 5
MESSAGES_PER_TURN = 8  # agent messages handled before the loop gets a turn (clock ticks, other legs)  # per leg; the rest are only counted


class AgentApp(App):
    name = "agent"
    options: AgentOptions
    # How a leg opens its WebSocket: websockets' connect (a test sets a fake on the app).
    connect = staticmethod(connect)
    # The clock a session's lifetime is measured on (reconnect backoff; a test sets a manual one).
    clock = staticmethod(time.monotonic)

    def __init__(self, context: AppContext, options: AgentOptions) -> None:
        super().__init__(context, options)
        self.stream_format = StreamFormat(options.encoding, options.media_rate)
        self.headers = dict(options.headers)
        register_header_secrets(self.headers)  # never logged, at any level (websockets logs headers at debug)
        self.fallback_path = resolve_path(context.base_dir, options.fallback) if options.fallback else ""
        self.fallback = Prompt(self.fallback_path) if options.fallback else None
        self.stats = AgentStats()
        self.conversations = Conversations(context)  # ia + retorno of one UUID: dial, bridge, hangup

    async def start(self) -> None:
        if self.context.stats is not None:
            self.context.stats.add_section(STATS_SECTION, self.stats)
        if self.fallback is not None:
            try:
                await self.fallback.pcm(8000)
            except Exception as error:
                raise AppOptionError(f"app 'agent': cannot use fallback {self.fallback_path}: {error}") from error

    async def run_leg(self, leg: "Leg") -> None:
        await AgentLeg(self, leg).run()

    async def close(self) -> None:
        self.conversations.close()


class AgentLeg:
    """One call leg's conversation with the agent, across reconnections."""

    def __init__(self, app: AgentApp, leg: "Leg") -> None:
        self.app = app
        self.leg = leg
        self.stats = app.stats
        self.options = app.options
        self.stream_format = app.stream_format
        self.log_prefix = f"extension={leg.extension} leg={leg.kind} uuid={leg.uuid}"
        self.session: StreamSession | None = None
        # Caller audio is live: at most max_latency_ms of it waits for the agent.
        max_media = leg.max_latency_frames
        self.outbox = Outbox(max_media, max_media + OUTBOX_CONTROL_MESSAGES)
        self.to_agent: StreamResampler | None = None
        self.from_agent: StreamResampler | None = None
        self.vad: EnergyVad | None = None
        self.onset_at: float | None = None
        self.suppressing = False  # barge-in: the caller is still talking over the agent
        self.bad_messages = 0
        self.fallback_played = False
        self._tail_timer: asyncio.TimerHandle | None = None
        self.conversation: Conversation | None = None
        self._hangup_task: asyncio.Task | None = None

    # -- the leg's life -------------------------------------------------------
    async def run(self) -> None:
        leg = self.leg
        rate = await leg.wait_rate()
        leg.outbound.capacity = max(1, round(self.options.max_buffer_seconds / FRAME_PERIOD))
        self.to_agent = StreamResampler(rate, self.stream_format.rate)
        self.from_agent = StreamResampler(self.stream_format.rate, rate)
        if self.options.barge_in:
            self.vad = EnergyVad(rate, self.options.barge_in_threshold_dbfs, onset_frames=2, hangover_ms=400)
        self.stats.buffers[leg.outbound] = leg.kind
        conversation = self.conversation = self.app.conversations.join(leg)
        conversation.listeners[leg.kind] = self._on_dial_status
        conversation.hangups[leg.kind] = self._hang_up_after_playout
        pump = asyncio.create_task(self._pump_caller_audio(), name=f"agent-in-{leg.kind}")
        try:
            await self._converse_until_done()
        finally:
            if conversation.listeners.get(leg.kind) == self._on_dial_status:
                del conversation.listeners[leg.kind]
            if conversation.hangups.get(leg.kind) == self._hang_up_after_playout:
                del conversation.hangups[leg.kind]
            self.app.conversations.leave(leg)
            self.stats.buffers.pop(leg.outbound, None)
            if self._tail_timer is not None:
                self._tail_timer.cancel()
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def _converse_until_done(self) -> None:
        leg = self.leg
        options = self.options
        leg.outbound.set_preroll(-(-options.jitter_ms // round(FRAME_PERIOD * 1000)))
        backoff = ReconnectBackoff(FIRST_RETRY_DELAY, options.reconnect_max_delay, STABLE_SESSION_SECONDS,
                                   clock=self.app.clock)
        attempts = 0
        while not leg.closed.is_set():
            if backoff.delay and await _closed_within(leg, backoff.delay):
                return
            attempts += 1
            if attempts > 1:
                self.stats.reconnects[leg.kind] += 1
            try:
                websocket = await self.app.connect(
                    options.url,
                    additional_headers=self.app.headers or None,
                    open_timeout=options.connect_timeout,
                    max_size=MAX_MESSAGE_BYTES,
                    # Little in the socket's own buffer: a slow agent shows in the outbox,
                    # where old caller audio gives way to new, not as hidden seconds of delay.
                    write_limit=WRITE_LIMIT_BYTES,
                    compression=None,
                    ping_interval=20,
                    ping_timeout=20,
                )
            except (OSError, TimeoutError, WebSocketException) as error:
                self.stats.connect_failures[leg.kind] += 1
                # One line per change of the delay; a leg stuck at the maximum only counts.
                (log.warning if backoff.refused() else log.debug)(
                    "agent unreachable %s url=%s: %s; retry in %.1fs (failed attempts in a row: %d)",
                    self.log_prefix, options.url, _describe(error), backoff.delay, backoff.failures)
                await self._play_fallback()
                continue
            backoff.opened()
            ended_by, error = await self._converse(websocket, quiet=backoff.failing)
            if ended_by == "agent":
                await self.play_out_and_hang_up("agent_hangup")
                return
            if ended_by == "leg":
                return
            (log.warning if backoff.ended() else log.debug)(
                "agent connection lost %s after %.1fs: %s; retry in %.1fs%s", self.log_prefix,
                backoff.last_lived, _describe(error), backoff.delay,
                f" (sessions or attempts failed in a row: {backoff.failures})" if backoff.failing else "")

    def _hang_up_after_playout(self, reason: str) -> None:
        """A hang-up the agent asked for (``audiogw.hangup``, a REST hang-up): what it said first is heard."""
        if self._hangup_task is None or self._hangup_task.done():
            self._hangup_task = asyncio.get_running_loop().create_task(self.play_out_and_hang_up(reason))

    async def play_out_and_hang_up(self, reason: str = "agent_hangup") -> None:
        """The agent is done (it closed its stream; also usable for a hang-up it asks for): what it
        said is still queued (Pipecat sends at about twice real time), so it plays out before the
        hang-up, the reply's last words not cut, bounded by the queue itself (at most
        ``max_buffer_seconds``) and by PLAYOUT_ON_CLOSE_MAX; what is left then is dropped and counted."""
        leg = self.leg
        if leg.closed.is_set():
            return
        if not self.suppressing:
            self._flush_tail()  # the resampler's held-back tail is part of the reply
            leg.finish()  # pads the last partial frame; a held pre-roll plays now
        outbound = leg.outbound
        queued = outbound.buffered_seconds
        if queued:
            log.info("agent done %s (%s): playing out %.2fs of queued audio, then hanging up",
                     self.log_prefix, reason, queued)
            played = asyncio.get_running_loop().create_future()
            leg.mark(lambda: played.done() or played.set_result(None))
            closed = asyncio.ensure_future(leg.closed.wait())
            try:
                await asyncio.wait((played, closed), timeout=min(queued + PLAYOUT_MARGIN, PLAYOUT_ON_CLOSE_MAX),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                closed.cancel()
                played.cancel()
            if leg.closed.is_set():
                return
            left = outbound.buffered_seconds
            if left:
                self.stats.audio_dropped_seconds["agent_closed"] += left
                log.warning("agent audio cut at the hang-up %s: %.2fs still queued after the play-out bound",
                            self.log_prefix, left)
        else:
            log.info("agent done %s (%s): hanging up the leg", self.log_prefix, reason)
        leg.hangup(reason)

    async def _converse(self, websocket: ClientConnection, *, quiet: bool = False
                        ) -> tuple[str, BaseException | None]:
        """One WebSocket session; returns who ended it ("leg", "agent" or "lost") and the error
        that ended it, if any. ``quiet``: attempts keep failing, the connect is logged at debug."""
        leg = self.leg
        if self.fallback_played:
            leg.clear()
            self.fallback_played = False
        session = StreamSession.for_leg(
            self.stream_format, leg.uuid, self.app.context.account_sid,
            custom_parameters={"extension": leg.extension, "leg": leg.kind},
        )
        self.outbox.clear()  # caller audio from a previous session is stale
        self.session = session
        (log.debug if quiet else log.info)(
            "agent connected %s url=%s stream=%s call=%s format=%s/%d", self.log_prefix, self.options.url,
            session.stream_sid, session.call_sid, self.stream_format.encoding, self.stream_format.rate)
        sender = asyncio.create_task(self._send_outbox(websocket, [session.connected(), session.start()]))
        receiver = asyncio.create_task(self._receive(websocket))
        closed = asyncio.create_task(leg.closed.wait())
        try:
            await asyncio.wait((sender, receiver, closed), return_when=asyncio.FIRST_COMPLETED)
            if sender.done() and not receiver.done() and not closed.done():
                # The send failed because the agent closed (or the connection broke): what it sent
                # before its close frame is still buffered, the end of its reply. Read it all.
                await asyncio.wait((receiver, closed), timeout=CLOSE_READ_SECONDS,
                                   return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.session = None
            for task in (sender, receiver, closed):
                task.cancel()
            await asyncio.gather(sender, receiver, closed, return_exceptions=True)
        if leg.closed.is_set():
            try:
                await asyncio.wait_for(websocket.send(session.stop(), text=True), 1.0)
                await asyncio.wait_for(websocket.close(), 2.0)
            except (ConnectionClosed, OSError, TimeoutError):
                pass
            log.info("agent stream ended %s stream=%s by=leg", self.log_prefix, session.stream_sid)
            return "leg", None
        errors = [task.exception() for task in (receiver, sender) if task.done() and not task.cancelled()]
        error = next((error for error in errors if error is not None), None)
        agent_closed = (receiver.done() and not receiver.cancelled() and receiver.exception() is None) \
            or isinstance(error, ConnectionClosedOK)
        if agent_closed:
            log.debug("agent closed the stream %s stream=%s", self.log_prefix, session.stream_sid)
            return "agent", None
        try:
            await asyncio.wait_for(websocket.close(), 2.0)
        except (ConnectionClosed, OSError, TimeoutError):
            pass
        return "lost", error

    # -- caller -> agent --------------------------------------------------------
    async def _pump_caller_audio(self) -> None:
        """Caller audio and DTMF into the outbox; barge-in detection on the way."""
        leg = self.leg
        vad = self.vad
        to_agent = self.to_agent
        while True:
            frame = await leg.receive()
            if frame is None:
                return
            session = self.session
            if frame.kind == Kind.DTMF:
                if session is not None:
                    self._enqueue(session.dtmf(frame.payload.decode("ascii")))
                continue
            if frame.rate != to_agent.in_rate:  # "auto" learned the leg's rate from this frame
                to_agent = self.to_agent = StreamResampler(frame.rate, self.stream_format.rate)
                if vad is not None:
                    vad = self.vad = EnergyVad(frame.rate, self.options.barge_in_threshold_dbfs,
                                               onset_frames=2, hangover_ms=400)
            samples = numpy.frombuffer(frame.payload, dtype="<i2")
            if vad is not None:
                self._detect_barge_in(vad, samples)
            if session is None:
                continue  # no agent connected: the caller's audio has nowhere to go
            converted = to_agent(samples)
            if converted.size:
                self._enqueue(session.media(converted.astype("<i2", copy=False).tobytes()), media=True)

    def _enqueue(self, message: bytes, *, media: bool = False) -> None:
        outbox = self.outbox
        dropped_before = outbox.dropped_media
        if not outbox.put(message, media=media):
            log.warning("agent not reading %s: control message dropped", self.log_prefix)
        if outbox.dropped_media != dropped_before:
            self.leg.count_dropped("latency", outbox.dropped_media - dropped_before)

    async def _send_outbox(self, websocket: ClientConnection, first: list[bytes]) -> None:
        for message in first:
            await websocket.send(message, text=True)
        outbox = self.outbox
        while True:
            await websocket.send(await outbox.get(), text=True)

    def _detect_barge_in(self, vad: EnergyVad, samples: numpy.ndarray) -> None:
        was_loud = vad.last_loud
        event = vad.feed(samples)
        if vad.last_loud and not was_loud:
            self.onset_at = time.monotonic()
        if event is VadEvent.SPEECH_END:
            self.suppressing = False
            return
        if event is not VadEvent.SPEECH_START or len(self.leg.outbound) == 0:
            return
        leg = self.leg
        leg.clear()  # the next tick sends silence
        stopped_at = leg.next_send_time()
        onset = self.onset_at if self.onset_at is not None else time.monotonic()
        self.stats.barge_in_reaction.observe(max(0.0, stopped_at - onset))
        self.suppressing = True
        session = self.session
        if session is not None:
            self._enqueue(session.custom("barge_in", {"timestamp": str(session.timestamp_ms)}))
        leg.app_figures.setdefault("barge_in_ms", []).append(round((stopped_at - onset) * 1000, 1))
        log.info("barge-in %s: playback stopped %.0f ms after speech onset", self.log_prefix,
                 (stopped_at - onset) * 1000)

    # -- agent -> caller --------------------------------------------------------
    async def _receive(self, websocket: ClientConnection) -> None:
        handled = 0
        async for raw in websocket:
            handled += 1
            if handled % MESSAGES_PER_TURN == 0:
                # A burst arrives as hundreds of buffered messages that the iterator
                # hands over without ever yielding: give the ticker its turn.
                await asyncio.sleep(0)
            if isinstance(raw, bytes):
                self._bad_message("binary_frame", "a binary WebSocket frame (the protocol is JSON text)")
                continue
            try:
                message = parse_agent_message(raw, self.stream_format)
            except MediaStreamsError as error:
                self._bad_message(error.reason, str(error))
                continue
            if isinstance(message, AgentMedia):
                self._play(message.payload)
            elif isinstance(message, AgentMark):
                self._mark(message.name)
            elif isinstance(message, AgentClear):
                self._restart_resampler()
                self.leg.clear()
            else:  # audiogw.dial / bridge / unbridge / hangup / send_dtmf
                self._call_control(message)

    def _call_control(self, message: AgentDial | AgentBridge | AgentHangup | AgentSendDtmf) -> None:
        conversation = self.conversation
        if conversation is None:
            return
        try:
            conversation.control(message)
        except Refused as refusal:
            self._bad_message(refusal.reason, str(refusal))

    def _on_dial_status(self, status: str, leg: str, reason: str) -> None:
        """The conversation's dial progressed: tell this leg's agent stream, if one is open."""
        session = self.session
        if session is None:
            log.info("dial_status %s leg=%s not delivered %s: no agent stream open", status, leg, self.log_prefix)
            return
        self._enqueue(session.dial_status(status, leg, reason))

    def _play(self, payload: bytes) -> None:
        samples = self.stream_format.from_wire(payload)
        seconds = samples.size / self.stream_format.rate
        self.stats.audio_received_seconds[self.leg.kind] += seconds
        if self.suppressing:
            self.stats.audio_dropped_seconds["barge_in"] += seconds
            return
        if self.from_agent.out_rate != self.leg.rate:
            self._follow_leg_rate()
        self._push(self.from_agent(samples))
        if self.from_agent.resampling:
            # The filter holds the last few ms back until more input comes; if none
            # comes soon, the reply has ended and its tail must still be heard.
            if self._tail_timer is not None:
                self._tail_timer.cancel()
            self._tail_timer = asyncio.get_running_loop().call_later(TAIL_FLUSH_SECONDS, self._flush_tail)

    def _push(self, samples: numpy.ndarray) -> None:
        if samples.size:
            dropped = self.leg.push(samples.astype("<i2", copy=False).tobytes(), self.from_agent.out_rate)
            if dropped:
                self.stats.audio_dropped_seconds["buffer_full"] += dropped * FRAME_PERIOD

    def _flush_tail(self) -> None:
        self._tail_timer = None
        if not self.suppressing and not self.leg.closed.is_set():
            self._push(self.from_agent.flush())
        self._restart_resampler()

    def _follow_leg_rate(self) -> None:
        """"auto" learned the leg's rate: what the old filter holds goes out (the leg converts
        it), and the agent's audio is converted for the new rate from here on."""
        old = self.from_agent
        tail = old.flush()
        if tail.size:
            self.leg.push(tail.astype("<i2", copy=False).tobytes(), old.out_rate)
        self._restart_resampler()

    def _restart_resampler(self) -> None:
        """Forget audio held in the resampler's filter (after a clear: it must not play)."""
        if self._tail_timer is not None:
            self._tail_timer.cancel()
            self._tail_timer = None
        self.from_agent = StreamResampler(self.stream_format.rate, self.leg.rate)

    def _mark(self, name: str) -> None:
        session = self.session
        if session is None:
            return
        if self._tail_timer is not None:
            self._tail_timer.cancel()
        self._flush_tail()
        self.leg.finish()  # a mark ends an utterance: the silence after it is no underrun
        # The echo belongs to this session: after a reconnection it is not sent.
        self.leg.mark(lambda: self._echo_mark(session, name))

    def _echo_mark(self, session: StreamSession, name: str) -> None:
        if self.session is session:
            self._enqueue(session.mark(name))

    def _bad_message(self, reason: str, message: str) -> None:
        self.stats.bad_messages[reason] += 1
        self.bad_messages += 1
        if self.bad_messages <= BAD_MESSAGES_LOGGED:
            log.warning("agent message refused %s reason=%s: %s%s", self.log_prefix, reason, message,
                        " (further ones are only counted)" if self.bad_messages == BAD_MESSAGES_LOGGED else "")

    async def _play_fallback(self) -> None:
        if self.app.fallback is None or self.fallback_played:
            return
        self.fallback_played = True
        try:
            rate = self.leg.rate
            pcm = await self.app.fallback.pcm(rate)
        except Exception as error:
            log.warning("fallback prompt unavailable %s: %s", self.log_prefix, error)
            return
        self.leg.push(pcm, rate)
        self.leg.finish()


async def _closed_within(leg: "Leg", seconds: float) -> bool:
    """Wait up to ``seconds``; True if the leg closed meanwhile."""
    try:
        await asyncio.wait_for(leg.closed.wait(), seconds)
        return True
    except TimeoutError:
        return False


def _describe(error: Any) -> str:
    if error is None:
        return "closed without a close frame"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__

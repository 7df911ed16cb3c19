"""One AudioSocket connection (a call leg): protocol handling and the app-facing API.

The protocol object reads and validates frames; after the UUID frame it
becomes a live :class:`Leg` that the worker's ticker drives every 20 ms and an
app task feeds. A bad frame ends this leg only, with a logged, counted reason.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import socket
import uuid as uuid_module
from collections import deque
from typing import TYPE_CHECKING, Any, Callable

import numpy

from audiogw.shared.audiosocket import (
    AUDIO_RATES,
    HANGUP_FRAME,
    HEADER_SIZE,
    AudioSocketError,
    Frame,
    FrameDecoder,
    Kind,
    decode_uuid,
    describe_error,
)
from audiogw.shared.resample import StreamResampler
from audiogw.worker.clock import FRAME_PERIOD
from audiogw.worker.flood import InboundGuard
from audiogw.worker.mixer import Mixer
from audiogw.worker.playout import PlayoutBuffer

if TYPE_CHECKING:
    from audiogw.worker.server import ExtensionWorker

log = logging.getLogger("audiogw.worker.leg")

KERNEL_SEND_BUFFER = 16384  # Linux doubles it: about 1 s of 8 kHz audio in flight
# Frames decoded per read: a worker's own stall of a second comes back as ~50 frames
# in one read; more than this only a flood sends, and the rest waits a tick.
FRAMES_PER_READ = 64
PARTIAL_FRAME_TIMEOUT = 2.0  # seconds a frame's payload may lag its header
# How long a new leg holds its first audio back while it waits for the caller's first frame
# (Asterisk's follows the UUID within ~25 ms once the call is up). Measured with Asterisk
# 22.10.1: the channel driver (Dial(AudioSocket/...)) drops a frame that arrives at once
# after the connect, so a prompt's first frame sent on the first tick was never heard.
# A known rate sends silence on those ticks (the first frame still leaves on the first
# tick); "auto" sends nothing, since the wait also tells the caller's rate and spares
# Asterisk a switch of rates mid-prompt (its translator loses ~20 ms when the rate changes).
# A silent caller hears the prompt 60 ms after the connect.
FIRST_AUDIO_GRACE = 0.06
BYTES_PER_SECOND = {kind: rate * 2 for kind, rate in AUDIO_RATES.items()}


class Leg:
    """What an app sees of one call leg. Every method is non-blocking or async."""

    def __init__(self, protocol: "LegProtocol", call_uuid: uuid_module.UUID) -> None:
        worker = protocol.worker
        settings = worker.settings
        self.uuid = call_uuid
        self.kind = protocol.leg_kind
        self.extension = worker.extension
        self.peer = protocol.peer
        self._protocol = protocol
        self._stats = worker.stats.legs[self.kind]
        self._lateness = worker.stats.send_lateness
        self._ticker = worker.ticker
        self._loop = worker.loop
        self._clock = clock = worker.clock
        capacity = max(1, round(settings.outbound_buffer_seconds / FRAME_PERIOD))
        # A known rate (extension option ``rate``) is used from the first tick; ``auto``
        # starts at 8 kHz (the dialplan app's only rate) and learns from the first
        # inbound audio frame, converting whatever was queued meanwhile.
        self.outbound = PlayoutBuffer(worker.rate or 8000, capacity, settings.lead_frames)
        self.outbound.drop_counts = self._stats.frames_dropped
        self.max_latency_frames = max(1, -(-settings.max_latency_ms // round(FRAME_PERIOD * 1000)))
        self._configured_rate = worker.rate
        self._resamplers: dict[tuple[int, int], StreamResampler] = {}
        self._inbound: deque[Frame] = deque(maxlen=settings.inbound_buffer_frames)
        self._inbound_waiter: asyncio.Future[None] | None = None
        self._forward: Callable[[bytes, int], int | None] | None = None
        # A conversation's bridge: this leg's inbound audio is also copied to ``_relay``'s live
        # source, and ``live`` (once a partner relays to this leg) holds the partner's voice,
        # mixed on the tick with what this leg's app plays (worker/mixer.py).
        self._relay: Leg | None = None
        self.live: PlayoutBuffer | None = None
        self._live_resamplers: dict[tuple[int, int], StreamResampler] = {}
        self._mixer: Mixer | None = None
        self._mixed = bytearray()  # the mixed wire frame, reused (header + payload)
        self._mixed_payload = numpy.zeros(0, dtype="<i2")
        self._rate_learned = False
        self._finished_at = -1  # queue position where the app last finished a prompt
        self._rate_waiter: asyncio.Future[None] | None = None
        self.started_at = clock()
        self._hold_until = self.started_at + FIRST_AUDIO_GRACE
        self.closed = asyncio.Event()
        self.frames_received = 0
        self.frames_sent = 0
        self.underruns = 0
        self.late_frames = 0
        self.flood_dropped = 0
        self.max_send_gap = 0.0
        self.dtmf_received = ""
        self.app_figures: dict[str, Any] = {}  # what the app adds to this leg's record (--leg-records)
        self._last_send = 0.0
        self._was_playing = False
        self._finished = False  # the app ended a prompt: the silence after it is no underrun
        self.end_reason = ""

    # -- audio format ---------------------------------------------------
    @property
    def rate(self) -> int:
        return self.outbound.rate

    async def wait_rate(self) -> int:
        """The leg's sample rate: a known one at once; with "auto", once the caller's first
        audio frame tells it, or 8 kHz after FIRST_AUDIO_GRACE (60 ms) without one.

        A rate learned later still converts what was queued, and audio pushed at
        the old rate from then on; nothing is lost.
        """
        remaining = self._hold_until - self._clock()
        if not self._rate_learned and not self._configured_rate and remaining > 0:
            waiter = self._rate_waiter = self._loop.create_future()
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                pass
            finally:
                self._rate_waiter = None
        return self.rate

    # -- outbound -------------------------------------------------------
    def push(self, pcm: bytes | bytearray | memoryview, rate: int = 0) -> int:
        """Queue audio now (at ``rate``, default the leg's); a full queue drops its oldest audio (counted, returned)."""
        outbound = self.outbound
        if rate and rate != outbound.rate:
            pcm = self._convert(pcm, rate, outbound.rate)
            if not pcm:
                return 0
        elif self._resamplers:  # the producer follows the new rate now: what the filters hold goes first
            self._flush_resamplers()
        dropped = outbound.push(pcm)
        if dropped:
            self._stats.frames_dropped["outbound_overflow"] += dropped
        return dropped

    def _convert(self, pcm: bytes | bytearray | memoryview, in_rate: int, out_rate: int) -> bytes:
        """Audio at another rate than the leg's (a voice relayed from a leg at another rate, a
        producer's audio until it follows the leg's new rate): one stream resampler per rate pair."""
        resampler = self._resamplers.get((in_rate, out_rate))
        if resampler is None:
            resampler = self._resamplers[(in_rate, out_rate)] = StreamResampler(in_rate, out_rate)
        return resampler(numpy.frombuffer(pcm, dtype="<i2")).astype("<i2", copy=False).tobytes()

    async def play(self, pcm: bytes | bytearray | memoryview, rate: int = 0) -> None:
        """Queue audio (at ``rate``, default the leg's), waiting while ``lead`` frames are already ahead of the clock."""
        outbound = self.outbound
        while not outbound.has_room_for_lead() and not self.closed.is_set():
            await outbound.wait_for_room(self._loop)
        if not self.closed.is_set():
            self.push(pcm, rate)

    def finish(self) -> None:
        """End of a prompt: its converted tail, its last partial frame padded; the silence after it is no underrun."""
        if self._resamplers:
            self._flush_resamplers()
        self.outbound.flush_partial()
        self._finished = True
        self._finished_at = self.outbound.appended

    def _flush_resamplers(self) -> None:
        resamplers, self._resamplers = self._resamplers, {}
        for (_in_rate, out_rate), resampler in resamplers.items():
            tail = resampler.flush()
            if tail.size and out_rate == self.outbound.rate:
                self.outbound.push(tail.astype("<i2", copy=False).tobytes())

    def clear(self) -> int:
        """Drop all queued audio at once (takes effect on the next tick)."""
        self._was_playing = False
        return self.outbound.clear()

    def count_dropped(self, reason: str, frames: int = 1) -> None:
        """Frames of this leg's audio an app dropped (metric ``frames_dropped{reason}``)."""
        self._stats.frames_dropped[reason] += frames

    def mark(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (cheap, non-blocking) once the audio queued so far has played or been dropped."""
        self.outbound.mark(callback)

    def next_send_time(self) -> float:
        """Monotonic time at which this leg's next frame leaves."""
        return self._ticker.next_send_time(self)

    # -- inbound --------------------------------------------------------
    def forward_to(self, target: "Leg | None") -> None:
        """Send this leg's inbound audio straight into ``target``'s queue (echo; a bridge is :meth:`relay_to`).

        ``None`` discards inbound audio (an app that only talks). Until an app
        calls this, inbound audio queues for :meth:`receive`. Forwarded audio is
        live: ``target``'s queue is held to ``audiosocket.max_latency_ms``, and
        converted when the two legs' rates differ.
        """
        if target is None:
            self._forward = _discard
        else:
            target.outbound.max_latency_frames = self.max_latency_frames
            self._forward = target.push
        # Audio that arrived before the app chose a route is not lost.
        if self._inbound:
            kept = [frame for frame in self._inbound if frame.kind not in AUDIO_RATES]
            for frame in self._inbound:
                if frame.kind in AUDIO_RATES:
                    self._forward(frame.payload, AUDIO_RATES[frame.kind])
            self._inbound.clear()
            self._inbound.extend(kept)

    def relay_to(self, target: "Leg | None") -> None:
        """Also copy this leg's inbound audio to ``target``'s live source (a bridge that keeps
        :meth:`receive` / :meth:`forward_to` as they are); ``None`` stops it.

        ``target`` hears it mixed with whatever its own app plays, held to
        ``audiosocket.max_latency_ms`` and converted when the rates differ.
        """
        if target is not None:
            target._open_live()
        elif self._relay is not None:
            self._relay._drain_live()
        self._relay = target

    def _open_live(self) -> None:
        live = self.live
        if live is None:
            live = self.live = PlayoutBuffer(self.outbound.rate, self.outbound.capacity, self.outbound.lead)
            live.drop_counts = self._stats.frames_dropped
        live.max_latency_frames = self.max_latency_frames

    def _drain_live(self) -> None:
        """The partner stopped relaying: what it queued is no longer live (an unbridge is immediate)."""
        if self.live is not None:
            self.live.clear()
        self._live_resamplers.clear()

    def push_live(self, pcm: bytes | bytearray | memoryview, rate: int) -> None:
        """Queue another leg's voice (at ``rate``) on this leg's live source, if it has one."""
        live = self.live
        if live is None:
            return
        if rate != live.rate:
            resampler = self._live_resamplers.get((rate, live.rate))
            if resampler is None:
                resampler = self._live_resamplers[(rate, live.rate)] = StreamResampler(rate, live.rate)
            pcm = resampler(numpy.frombuffer(pcm, dtype="<i2")).astype("<i2", copy=False).tobytes()
            if not pcm:
                return
        dropped = live.push(pcm)
        if dropped:
            self._stats.frames_dropped["outbound_overflow"] += dropped

    def _mix(self, first: bytes, second: bytes | None) -> bytes:
        """Two wire frames at the leg's rate into one (the agent's speech and the partner's voice);
        a lone ``first`` while the limiter's gain returns to 1."""
        samples = (len(first) - HEADER_SIZE) // 2
        mixer = self._mixer
        if mixer is None or mixer.frame_samples != samples:  # first mix, or the rate changed
            mixer = self._mixer = Mixer(samples)
            self._mixed = bytearray(first)  # the header stays: it depends only on the frame's size
            self._mixed_payload = numpy.frombuffer(self._mixed, dtype="<i2", offset=HEADER_SIZE)
        mixed = self._mixed
        self._mixed_payload[:] = mixer.mix(
            numpy.frombuffer(first, dtype="<i2", offset=HEADER_SIZE),
            None if second is None else numpy.frombuffer(second, dtype="<i2", offset=HEADER_SIZE))
        return bytes(mixed)  # the transport may keep what it is given: never the reused buffer

    async def receive(self) -> Frame | None:
        """Next inbound audio or DTMF frame (not forwarded ones); None once the leg is closed."""
        inbound = self._inbound
        while not inbound:
            if self.closed.is_set():
                return None
            waiter = self._inbound_waiter = self._loop.create_future()
            await waiter
        return inbound.popleft()

    # -- control --------------------------------------------------------
    def hangup(self, reason: str = "app_hangup") -> None:
        self._protocol.end(reason, send_hangup=True)

    async def wait_closed(self) -> None:
        await self.closed.wait()

    async def run_blocking(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run synchronous work off the event loop so it cannot stall the audio clock."""
        return await self._loop.run_in_executor(None, functools.partial(function, *args, **kwargs))

    # -- called by the protocol and the ticker --------------------------
    def _deliver(self, frame: Frame) -> None:
        if frame.kind in AUDIO_RATES:
            rate = AUDIO_RATES[frame.kind]
            if not self._rate_learned:
                self._learn_rate(rate)
            relay = self._relay
            if relay is not None:
                relay.push_live(frame.payload, rate)
            forward = self._forward
            if forward is not None:
                forward(frame.payload, rate)
                return
        else:
            self.dtmf_received += frame.payload.decode("ascii")
        inbound = self._inbound
        if len(inbound) == inbound.maxlen:
            self._stats.frames_dropped["inbound_overflow"] += 1
        inbound.append(frame)
        self._wake_receiver()

    def _learn_rate(self, rate: int) -> None:
        """The first inbound audio frame fixes the rate the leg answers at (Asterisk expects its own)."""
        self._rate_learned = True
        self._hold_until = 0.0
        waiter = self._rate_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if rate == self.outbound.rate:
            return
        if self._configured_rate:
            log.warning("extension=%s leg=%s uuid=%s: rate=%d configured, but the peer sends %d Hz: answering at %d Hz",
                        self.extension, self.kind, self.uuid, self._configured_rate, rate, rate)
        old_rate = self.outbound.rate
        ends_prompt = self._finished_at == self.outbound.appended

        def convert(pcm: bytes) -> bytes:
            # The producer's next old-rate pushes continue this stream; if the queue ends
            # with a finished prompt, nothing follows it and the filter's tail goes out now.
            stream = self._resamplers[(old_rate, rate)] = StreamResampler(old_rate, rate)
            converted = stream(numpy.frombuffer(pcm, dtype="<i2"))
            if ends_prompt:
                converted = numpy.concatenate((converted, stream.flush()))
            return converted.astype("<i2", copy=False).tobytes()

        self.outbound.set_rate(rate, convert)
        if ends_prompt:
            self.outbound.flush_partial()
        if self.live is not None:
            self.live.set_rate(rate)
            self._live_resamplers.clear()

    def _wake_receiver(self) -> None:
        waiter = self._inbound_waiter
        if waiter is not None:
            self._inbound_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def on_tick(self, deadline: float) -> None:
        held = False
        if self._hold_until:
            if deadline < self._hold_until:
                if not self._configured_rate:
                    return  # "auto": no frame at a rate the caller may not use (FIRST_AUDIO_GRACE)
                frame = None  # silence, and no underrun: nothing was playing yet
                held = True
            else:
                self._hold_until = 0.0
                frame = self.outbound.pop()
        else:
            frame = self.outbound.pop()
        live = self.live
        if live is not None and not held:
            voice = live.pop()
            if frame is not None and voice is not None:
                frame = self._mix(frame, voice)
            elif frame is None:
                frame = voice
            if voice is None or frame is voice:  # one source: unchanged, unless the limiter is still releasing
                mixer = self._mixer
                if frame is not None and mixer is not None and mixer.gain < 1.0:
                    frame = self._mix(frame, None)
        protocol = self._protocol
        transport = protocol.transport
        stats = self._stats
        if frame is None:
            frame = self.outbound.silence
            if self._was_playing and not self._finished:
                self.underruns += 1
                stats.underruns += 1
            self._was_playing = False
            self._finished = False
        else:
            self._was_playing = True
        now = self._clock()
        transport.write(frame)
        self.frames_sent += 1
        stats.frames_sent += 1
        lateness = now - deadline
        if lateness < 0.0:
            lateness = 0.0
        self._lateness.observe(lateness)
        if lateness > FRAME_PERIOD:
            self.late_frames += 1
            stats.late_frames += 1
        last = self._last_send
        if last and now - last > self.max_send_gap:
            self.max_send_gap = now - last
        self._last_send = now
        if transport.get_write_buffer_size() > protocol.max_write_buffer:
            protocol.fail("slow_reader", "peer stopped reading: write buffer over the limit")

    def _closed(self, reason: str) -> None:
        self.end_reason = reason
        self.closed.set()
        self._relay = None
        self._wake_receiver()
        self.outbound._wake_producer()


def _discard(pcm: bytes, rate: int) -> None:
    return None


class LegProtocol(asyncio.Protocol):
    """asyncio protocol for one accepted AudioSocket connection."""

    def __init__(self, worker: "ExtensionWorker", leg_kind: str) -> None:
        self.worker = worker
        self.leg_kind = leg_kind
        self.max_write_buffer = worker.settings.max_write_buffer
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.leg: Leg | None = None
        self._decoder = FrameDecoder()
        self._uuid_timer: asyncio.TimerHandle | None = None
        self._ended = False
        self._app_task: asyncio.Task | None = None
        self._clock = worker.clock
        self._guard = InboundGuard(worker.clock())
        self._held = False  # reading paused: a read's frames beyond FRAMES_PER_READ wait a tick
        self._partial_since = 0.0  # when the incomplete frame now held began to arrive (0: none)
        self._partial_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peername = transport.get_extra_info("peername")
        self.peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        if peername and not self.worker.peer_allowed(peername[0]):
            self.fail("peer_not_allowed", f"peer {peername[0]} is not in audiosocket.allow")
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # A small kernel send buffer: a peer that stops reading shows up in
                # our write buffer within seconds instead of hiding megabytes in the kernel.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_SEND_BUFFER)
            except OSError:
                pass
        self.worker.connections.add(self)
        self._uuid_timer = self.worker.loop.call_later(self.worker.settings.uuid_timeout, self._uuid_timeout)

    def _uuid_timeout(self) -> None:
        self._uuid_timer = None
        if self.leg is None:
            self.fail("uuid_timeout", f"no UUID frame within {self.worker.settings.uuid_timeout:g} s")

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        decoder = self._decoder
        try:
            frames = decoder.feed(data, FRAMES_PER_READ)
        except AudioSocketError as error:
            self.fail(error.reason, str(error))
            return
        if decoder.pending:
            self._note_partial(bool(frames))
        elif self._partial_since:
            self._partial_since = 0.0
        if frames:
            self._handle(frames)
        if decoder.backlog and not self._ended:
            self._hold_reading()

    def _handle(self, frames: list[Frame]) -> None:
        leg = self.leg
        guard = self._guard
        now = self._clock()
        for frame in frames:
            kind = frame.kind
            if leg is not None and kind in AUDIO_RATES:
                leg.frames_received += 1
                stats = leg._stats
                stats.frames_received += 1
                if guard.admit_audio(len(frame.payload) / BYTES_PER_SECOND[kind], now):
                    leg._deliver(frame)
                else:
                    stats.frames_dropped["inbound_flood"] += 1
                    leg.flood_dropped += 1
            elif kind == Kind.UUID:
                if leg is not None:
                    self.fail("duplicate_uuid", "a second UUID frame on a live leg")
                    return
                leg = self._start_leg(frame.payload)
                if leg is None:
                    return
            elif leg is None:
                self.fail("no_uuid", f"frame kind 0x{kind:02x} before the UUID frame")
                return
            elif kind == Kind.DTMF:
                if guard.admit_other(now):
                    leg._deliver(frame)
                else:
                    leg._stats.frames_dropped["inbound_flood"] += 1
                    leg.flood_dropped += 1
            elif kind == Kind.HANGUP:
                self.end("peer_hangup")
                return
            elif kind == Kind.ERROR:
                self.end(f"peer_error: {describe_error(frame.payload)}")
                return

    def _hold_reading(self) -> None:
        """A read brought more frames than one turn handles: pause the socket, decode the rest next tick.

        The peer is then held back by TCP itself, and its worker spends at
        most FRAMES_PER_READ frames' work on it per period.
        """
        if self._held:
            return
        self._held = True
        self.transport.pause_reading()
        self.worker.loop.call_later(FRAME_PERIOD, self._release_reading)

    def _release_reading(self) -> None:
        self._held = False
        if self._ended:
            return
        self.data_received(b"")  # the next batch of what is already buffered
        if not self._held and not self._ended:
            self.transport.resume_reading()

    def _note_partial(self, completed: bool) -> None:
        """An incomplete frame is held: start its clock (anew if frames completed in this read)."""
        if completed or not self._partial_since:
            self._partial_since = self._clock()
        if self._partial_timer is None:
            self._partial_timer = self.worker.loop.call_later(PARTIAL_FRAME_TIMEOUT, self._check_partial)

    def _check_partial(self) -> None:
        self._partial_timer = None
        since = self._partial_since
        if self._ended or not since:
            return
        waited = self._clock() - since
        if waited >= PARTIAL_FRAME_TIMEOUT - 0.001:
            self.fail("partial_frame_timeout",
                      f"{self._decoder.pending} bytes of a frame held for {waited:.1f} s waiting for the rest")
            return
        self._partial_timer = self.worker.loop.call_later(PARTIAL_FRAME_TIMEOUT - waited, self._check_partial)

    def _start_leg(self, payload: bytes) -> Leg | None:
        try:
            call_uuid = decode_uuid(payload)
        except AudioSocketError as error:
            self.fail(error.reason, str(error))
            return None
        if self._uuid_timer is not None:
            self._uuid_timer.cancel()
            self._uuid_timer = None
        worker = self.worker
        leg = self.leg = Leg(self, call_uuid)
        stats = leg._stats
        stats.calls_active += 1
        stats.calls_total += 1
        log.info(
            "leg start extension=%s leg=%s uuid=%s peer=%s app=%s",
            worker.extension, self.leg_kind, call_uuid, self.peer, worker.app.name,
            extra={"event": "leg_start", "extension": worker.extension, "leg": self.leg_kind,
                   "uuid": str(call_uuid), "peer": str(self.peer), "app": worker.app.name},
        )
        # The app's first step runs before the clock's: a prompt that is ready is
        # queued by then, and the first tick already carries it.
        self._app_task = worker.loop.create_task(self._run_app(leg))
        worker.ticker.add(leg)
        return leg

    async def _run_app(self, leg: Leg) -> None:
        try:
            await self.worker.app.run_leg(leg)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("app %s failed on leg %s uuid=%s", self.worker.app.name, leg.kind, leg.uuid)
            self.worker.stats.app_counters["app_errors"] += 1
            self.end("app_error", send_hangup=True)

    def fail(self, reason: str, message: str) -> None:
        """Refuse this leg: log, count, close. Nothing beyond this connection is touched."""
        stats = self.worker.stats.legs[self.leg_kind]
        stats.protocol_errors[reason] += 1
        log.warning(
            "leg refused extension=%s leg=%s peer=%s uuid=%s reason=%s: %s",
            self.worker.extension, self.leg_kind, self.peer,
            self.leg.uuid if self.leg else "-", reason, message,
            extra={"event": "leg_refused", "extension": self.worker.extension, "leg": self.leg_kind,
                   "peer": str(self.peer), "uuid": str(self.leg.uuid) if self.leg else None, "reason": reason},
        )
        self.end(reason, send_hangup=self.leg is not None, abort=reason == "slow_reader")

    def end(self, reason: str, *, send_hangup: bool = False, abort: bool = False) -> None:
        if self._ended:
            return
        self._ended = True
        if self._uuid_timer is not None:
            self._uuid_timer.cancel()
            self._uuid_timer = None
        if self._partial_timer is not None:
            self._partial_timer.cancel()
            self._partial_timer = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if abort:
                transport.abort()
            else:
                if send_hangup:
                    transport.write(HANGUP_FRAME)
                transport.close()
        worker = self.worker
        worker.connections.discard(self)
        leg = self.leg
        if leg is None:
            return
        worker.ticker.discard(leg)
        leg._stats.calls_active -= 1
        leg._closed(reason)
        if self._app_task is not None and not self._app_task.done():
            # Give the app a moment to see `closed` and tidy up, then stop it.
            worker.loop.call_later(1.0, self._app_task.cancel)
        log.info(
            "leg end extension=%s leg=%s uuid=%s reason=%s duration=%.2fs frames_in=%d frames_out=%d "
            "underruns=%d late=%d max_send_gap_ms=%.1f dropped_flood=%d dropped_latency=%d dtmf=%r",
            worker.extension, leg.kind, leg.uuid, reason, self._clock() - leg.started_at,
            leg.frames_received, leg.frames_sent, leg.underruns, leg.late_frames,
            leg.max_send_gap * 1000, leg.flood_dropped, leg.outbound.latency_dropped, leg.dtmf_received[:64],
            extra={"event": "leg_end", "extension": worker.extension, "leg": leg.kind, "uuid": str(leg.uuid),
                   "reason": reason, "duration": round(self._clock() - leg.started_at, 3),
                   "frames_in": leg.frames_received, "frames_out": leg.frames_sent, "underruns": leg.underruns,
                   "late": leg.late_frames, "max_send_gap_ms": round(leg.max_send_gap * 1000, 1),
                   "dropped_flood": leg.flood_dropped, "dropped_latency": leg.outbound.latency_dropped,
                   "dtmf": leg.dtmf_received[:64]},
        )
        if worker.on_leg_end is not None:
            worker.on_leg_end(leg)

    def connection_lost(self, exc: Exception | None) -> None:
        self.end("peer_closed" if exc is None else f"connection_lost: {exc}")

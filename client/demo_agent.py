"""`audiogw demo-agent`: a reference voice agent speaking Twilio Media Streams.

For trying the ``agent`` app without an AI service, and for its tests and the
benchmark. Per connection: on ``start`` it greets the caller (the greeting
prompt as one burst of media messages, then a ``greeting`` mark), records the
caller's turn until the voice-activity detector hears it end, and plays that
recording back the same way (mark ``playback``); DTMF 1 plays the confirmation
prompt (mark ``confirm``). Like a real agent it sends whole prompts at once and
leaves the 20 ms pacing to the gateway, so it also exercises the gateway's
buffering. Anything new interrupts what is still playing with ``clear``.

On the URL path ``/doorman`` (``?door=DIGITS``: what opens the door, default
``9``) it plays the virtual doorman instead, across both legs of a
conversation (their streams share the callSid): see :class:`Doorman` for the
flow, the pure state machine that :class:`DoormanSession` (and
``examples/pipecat_doorman.py``) drive.

Prompts are read and resampled once, at start-up, off the event loop; nothing
on the loop blocks. Bad messages from the gateway are logged and ignored.
"""
from __future__ import annotations

import asyncio
import os
import collections
import logging
import signal
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import click
import numpy
import soxr
import uvloop
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from audiogw.shared.logs import configure_logging
from audiogw.shared.settings import LOG_FORMATS, LOG_LEVELS
from audiogw.shared.media_streams import (
    DIAL_TIMEOUT_DEFAULT,
    DTMF_DIGITS,
    LEG_NAMES,
    MAX_MESSAGE_BYTES,
    RATES,
    AgentBridge,
    AgentDial,
    AgentHangup,
    AgentSendDtmf,
    GatewayConnected,
    GatewayDialStatus,
    GatewayDtmf,
    GatewayBargeIn,
    GatewayMark,
    GatewayMedia,
    GatewayStart,
    GatewayStop,
    MediaStreamsError,
    StreamFormat,
    agent_bridge_message,
    agent_clear_message,
    agent_dial_message,
    agent_hangup_message,
    agent_mark_message,
    agent_media_message,
    agent_send_dtmf_message,
    parse_gateway_message,
)
from audiogw.shared.vad import EnergyVad, VadEvent
from audiogw.shared.wav import WavError, read_wav

log = logging.getLogger("audiogw.demo_agent")

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "prompts"
PROMPT_NAMES = ("greeting", "confirm", "who", "wait", "announce", "menu", "unavailable", "goodbye")
PROMPT_RATES = tuple(sorted({rate for rates in RATES.values() for rate in rates}))
FRAME_MS = 20  # VAD frame
BURST_CHUNK_MS = 20  # audio per outbound media message, as Twilio itself sends
MAX_TURN_SECONDS = 30  # a caller who never pauses still gets an answer
MAX_LOGGED_BAD_MESSAGES = 5  # per session; the rest are only counted
CONFIRM_DIGIT = "1"


@dataclass(frozen=True)
class Prompts:
    """Every prompt at every rate a stream may use, as int16 arrays."""

    audio: dict[tuple[str, int], numpy.ndarray]

    def get(self, name: str, rate: int) -> numpy.ndarray:
        return self.audio[(name, rate)]


def load_prompts(folder: Path) -> Prompts:
    """Read every prompt, ``NAME.wav`` (blocking: call at start-up); a folder that lacks
    one of the doorman's gets the built-in one, so ``greeting``/``confirm`` alone still work."""
    audio = {}
    for name in PROMPT_NAMES:
        path = folder / f"{name}.wav"
        if not path.exists() and name not in ("greeting", "confirm"):
            path = DEFAULT_PROMPTS / f"{name}.wav"
        for rate in PROMPT_RATES:
            audio[(name, rate)] = read_wav(path, rate)
    return Prompts(audio)


def burst_messages(
    stream_format: StreamFormat, stream_sid: str, samples: numpy.ndarray, mark_name: str,
    chunk_ms: int = BURST_CHUNK_MS,
) -> list[bytes]:
    """All media messages for ``samples`` followed by a mark: one burst, nothing paced."""
    chunk = stream_format.rate * chunk_ms // 1000
    pcm = numpy.asarray(samples, dtype="<i2")
    messages = [
        agent_media_message(stream_sid, stream_format.to_wire(pcm[offset : offset + chunk].tobytes()))
        for offset in range(0, len(pcm), chunk)
    ]
    messages.append(agent_mark_message(stream_sid, mark_name))
    return messages


class TurnRecorder:
    """Caller audio in, one utterance out when the VAD hears the turn end.

    Audio arrives in chunks of any length and is cut into 20 ms VAD frames.
    The frames that triggered the onset are kept (the start of the first word),
    and the quiet hangover after the last loud frame is trimmed.
    """

    def __init__(self, rate: int, vad: EnergyVad | None = None, max_seconds: float = MAX_TURN_SECONDS) -> None:
        self.vad = vad or EnergyVad(rate)
        self.frame_samples = rate * FRAME_MS // 1000
        self.max_frames = int(max_seconds * 1000 // FRAME_MS)
        self._carry = numpy.empty(0, dtype=numpy.int16)
        self._onset: collections.deque[numpy.ndarray] = collections.deque(maxlen=self.vad.onset_frames)
        self._recorded: list[numpy.ndarray] = []
        self._loud_end = 0  # frames recorded up to the last loud one

    def feed(self, samples: numpy.ndarray) -> numpy.ndarray | None:
        """The finished utterance, or None while the turn goes on."""
        pending = numpy.concatenate((self._carry, samples)) if self._carry.size else samples
        whole = len(pending) - len(pending) % self.frame_samples
        self._carry = pending[whole:].copy()
        utterance = None
        for offset in range(0, whole, self.frame_samples):
            finished = self._feed_frame(pending[offset : offset + self.frame_samples])
            if finished is not None:
                utterance = finished  # a second turn in one chunk replaces the first: rare, harmless
        return utterance

    def _feed_frame(self, frame: numpy.ndarray) -> numpy.ndarray | None:
        vad = self.vad
        if not vad.speaking:
            self._onset.append(frame)
            if vad.feed(frame) is VadEvent.SPEECH_START:
                self._recorded = list(self._onset)
                self._loud_end = len(self._recorded)
                self._onset.clear()
            return None
        self._recorded.append(frame)
        event = vad.feed(frame)
        if vad.last_loud:
            self._loud_end = len(self._recorded)
        if event is VadEvent.SPEECH_END or len(self._recorded) >= self.max_frames:
            vad.reset()
            utterance = numpy.concatenate(self._recorded[: self._loud_end])
            self._recorded = []
            return utterance
        return None


class DemoSession:
    """One gateway connection: one call leg."""

    def __init__(self, connection: ServerConnection, prompts: Prompts) -> None:
        self.connection = connection
        self.prompts = prompts
        self.stream_format: StreamFormat | None = None
        self.stream_sid = "-"
        self.recorder: TurnRecorder | None = None
        self.pending_marks: set[str] = set()
        self.counts: collections.Counter[str] = collections.Counter()

    async def run(self) -> None:
        ending = "closed"
        try:
            async for raw in self.connection:
                if await self.handle(raw):
                    ending = "stop"
                    break
        except ConnectionClosed:
            pass
        finally:
            log.info(
                "session end stream=%s reason=%s media_in=%d turns=%d bad_messages=%d",
                self.stream_sid, ending, self.counts["media"], self.counts["turns"], self.counts["bad"],
            )

    async def handle(self, raw: str | bytes) -> bool:
        """Act on one message; True when the stream has stopped."""
        try:
            message = parse_gateway_message(raw, self.stream_format)
            if isinstance(message, GatewayMedia):
                await self.on_media(message)
            elif isinstance(message, GatewayStart):
                await self.on_start(message)
            elif isinstance(message, GatewayDtmf):
                await self.on_dtmf(message.digit)
            elif isinstance(message, GatewayMark):
                await self.on_mark(message.name)
            elif isinstance(message, GatewayStop):
                return True
            elif isinstance(message, GatewayBargeIn):
                # The gateway already cleared playback (and echoed its marks): nothing plays now.
                self.pending_marks.clear()
                log.info("barge-in stream=%s: the caller interrupted", self.stream_sid)
            elif isinstance(message, GatewayDialStatus):
                await self.on_dial_status(message)
            elif isinstance(message, GatewayConnected):
                log.debug("connected protocol=%s version=%s", message.protocol, message.version)
        except MediaStreamsError as exc:
            self.bad_message(exc.reason, str(exc))
        return False

    def bad_message(self, reason: str, text: str) -> None:
        self.counts["bad"] += 1
        if self.counts["bad"] <= MAX_LOGGED_BAD_MESSAGES:
            log.warning("ignored message stream=%s reason=%s: %s", self.stream_sid, reason, text)

    async def on_start(self, start: GatewayStart) -> None:
        if self.stream_format is not None:
            raise MediaStreamsError("second_start", "a second start message on one stream")
        self.stream_format = start.stream_format
        self.stream_sid = start.stream_sid
        self.recorder = TurnRecorder(start.stream_format.rate)
        log.info(
            "session start stream=%s call=%s format=%s/%d path=%s",
            start.stream_sid, start.call_sid, start.stream_format.encoding, start.stream_format.rate,
            self.connection.request.path if self.connection.request else "-",
        )
        await self.play(self.prompts.get("greeting", start.stream_format.rate), "greeting")

    async def on_media(self, media: GatewayMedia) -> None:
        if self.stream_format is None or self.recorder is None:
            raise MediaStreamsError("before_start", "media before the start message")
        self.counts["media"] += 1
        utterance = self.recorder.feed(self.stream_format.from_wire(media.payload))
        if utterance is not None and utterance.size:
            self.counts["turns"] += 1
            await self.play(utterance, "playback")

    async def on_dtmf(self, digit: str) -> None:
        if self.stream_format is None:
            raise MediaStreamsError("before_start", "dtmf before the start message")
        if digit == CONFIRM_DIGIT:
            await self.play(self.prompts.get("confirm", self.stream_format.rate), "confirm")
        else:
            log.info("dtmf ignored stream=%s digit=%s", self.stream_sid, digit)

    async def on_dial_status(self, message: GatewayDialStatus) -> None:
        log.info("dial_status ignored stream=%s status=%s: this agent dials nobody", self.stream_sid, message.status)

    async def on_mark(self, name: str) -> None:
        self.pending_marks.discard(name)
        log.info("mark played stream=%s name=%s", self.stream_sid, name)

    async def play(self, samples: numpy.ndarray, mark_name: str) -> None:
        """Send ``samples`` as one burst and a mark, clearing what still plays."""
        if self.stream_format is None:
            return
        if self.pending_marks:
            await self.connection.send(agent_clear_message(self.stream_sid), text=True)
            self.pending_marks.clear()
        for message in burst_messages(self.stream_format, self.stream_sid, samples, mark_name):
            await self.connection.send(message, text=True)
        self.pending_marks.add(mark_name)


# ---- the doorman: a pure state machine, then its WebSocket I/O ----------------

IA, RETORNO = LEG_NAMES
LEGS = LEG_NAMES
DOORMAN_PATH = "/doorman"  # the URL path that selects the doorman (any other path: the echo demo)
DOOR_DIGITS = "9"  # sent towards the visitor's leg (the door panel) when the resident presses OPEN_DIGIT
TALK_DIGIT, OPEN_DIGIT, DECLINE_DIGIT = "1", "9", "2"  # the resident's menu
DIAL_TIMEOUT_SECONDS = DIAL_TIMEOUT_DEFAULT  # audiogw.dial's timeout: the resident has this long to answer
END_GRACE_SECONDS = 2.0  # a last prompt's mark may never come back: hang up this long after it should end
GIVE_UP_STATUSES = frozenset({"busy", "no_answer", "failed", "hangup"})


@dataclass(frozen=True, eq=False)  # compared by identity: numpy arrays have no truth value
class Recording:
    """The visitor's turn, as recorded (played to the resident, resampled if their rate differs)."""

    samples: numpy.ndarray
    rate: int


@dataclass(frozen=True)
class Play:
    """Send ``parts`` (prompt names or a :class:`Recording`) to ``leg`` as one burst, then ``mark``."""

    leg: str
    parts: tuple[str | Recording, ...]
    mark: str


# The gateway's call-control events, as audiogw.shared.media_streams declares them (sent on the ia stream).
CallControl = AgentDial | AgentBridge | AgentHangup | AgentSendDtmf


def call_control_message(event: CallControl, stream_sid: str) -> bytes:
    """The wire JSON of a call-control action, from audiogw.shared.media_streams' builders."""
    if isinstance(event, AgentDial):
        return agent_dial_message(stream_sid, event.timeout)
    if isinstance(event, AgentBridge):
        return agent_bridge_message(stream_sid, event.bridge)
    if isinstance(event, AgentHangup):
        return agent_hangup_message(stream_sid, event.leg)
    return agent_send_dtmf_message(stream_sid, event.leg, event.digits)


@dataclass(frozen=True)
class Close:
    """End ``leg``'s stream: the gateway hangs that leg up."""

    leg: str


@dataclass(frozen=True)
class After:
    """Call :meth:`Doorman.timer` with ``name`` after ``seconds`` (the machine has no clock of its own)."""

    seconds: float
    name: str


Action = Play | AgentDial | AgentBridge | AgentHangup | AgentSendDtmf | Close | After


class Doorman:
    """One conversation of the virtual doorman, with no I/O: events in, :data:`Action` lists out.

    Visitor (ia leg): greeting and "who is there?", their turn recorded until the
    VAD hears it end, then ``audiogw.dial`` and "please wait". Call control comes out as
    audiogw.shared.media_streams' ``AgentDial`` / ``AgentBridge`` / ``AgentSendDtmf`` /
    ``AgentHangup`` (:func:`call_control_message` makes their JSON). Resident (the
    retorno leg, same callSid): "someone is at the door", the visitor's recording,
    the menu; DTMF 1 ``audiogw.bridge``, 9 ``audiogw.send_dtmf`` of ``door_digits``
    towards the visitor's leg (and a confirmation), 2 goodbye to both and
    ``audiogw.hangup`` of both. busy / no answer / failed, or the resident hanging
    up first: the visitor hears "nobody answers" and is hung up. Hang-ups wait for
    the last prompt's mark (it has played) or, failing that, a timer.
    A resident who is already on the line when the turn ends is told at once (no dial).
    """

    def __init__(
        self,
        prompt_seconds: Mapping[str, float],
        door_digits: str = DOOR_DIGITS,
        dial_timeout: float = DIAL_TIMEOUT_SECONDS,
        max_turn_seconds: float = MAX_TURN_SECONDS,
    ) -> None:
        self.prompt_seconds = dict(prompt_seconds)
        self.door_digits = door_digits
        self.dial_timeout = dial_timeout
        self.max_turn_seconds = max_turn_seconds
        self.state = "waiting"  # waiting -> listening -> dialing -> asking -> bridged -> ending -> ended
        self.legs: set[str] = set()  # streams started and not yet stopped
        self.recorder: TurnRecorder | None = None
        self.recording: Recording | None = None
        self.ending: set[str] = set()  # legs whose goodbye has not played yet
        self.dial_statuses: list[str] = []

    # -- events -----------------------------------------------------------------
    def start(self, leg: str, rate: int) -> list[Action]:
        """A leg's stream started at ``rate`` Hz."""
        self.legs.add(leg)
        if self.state in ("ending", "ended"):
            return [Close(leg)]  # too late: the conversation is over
        if leg == IA:
            if self.recorder is not None:
                return []
            self.recorder = TurnRecorder(rate, max_seconds=self.max_turn_seconds)
            if self.state == "waiting":
                self.state = "listening"
            return [Play(IA, ("greeting", "who"), "who")]
        if self.recording is not None and self.state == "dialing":
            return self._announce()
        return []  # the resident is early: told as soon as the visitor's turn ends

    def audio(self, leg: str, samples: numpy.ndarray) -> list[Action]:
        """Decoded int16 audio from ``leg``; only the visitor's turn is listened to."""
        if leg != IA or self.state != "listening" or self.recorder is None:
            return []
        utterance = self.recorder.feed(samples)
        if utterance is None or not utterance.size:
            return []
        self.recording = Recording(utterance, self.recorder.vad.rate)
        self.state = "dialing"
        if RETORNO in self.legs:
            return self._announce()
        return [AgentDial(self.dial_timeout), Play(IA, ("wait",), "wait")]

    def dial_status(self, status: str) -> list[Action]:
        """``audiogw.dial_status`` from the gateway."""
        self.dial_statuses.append(status)
        if self.state == "dialing" and status in GIVE_UP_STATUSES:
            return self._unavailable()
        return []  # ringing / answered: the retorno stream's start is what counts

    def dtmf(self, leg: str, digit: str) -> list[Action]:
        """A digit pressed on ``leg``; the resident's menu, the visitor's keys are ignored."""
        if leg != RETORNO or self.state not in ("asking", "bridged"):
            return []
        if digit == TALK_DIGIT:
            if self.state == "bridged":
                return []
            self.state = "bridged"
            return [AgentBridge()]
        if digit == OPEN_DIGIT:
            return [AgentSendDtmf(IA, self.door_digits), Play(RETORNO, ("confirm",), "door")]
        if digit == DECLINE_DIGIT:
            return self._goodbye(self.legs)
        return []

    def mark(self, leg: str, name: str) -> list[Action]:
        """The gateway echoed a mark: what was sent before it has played."""
        if self.state == "ending" and name == "bye":
            self.ending.discard(leg)
            if not self.ending:
                return self._finish()
        return []

    def stop(self, leg: str) -> list[Action]:
        """A leg's stream ended (the gateway's ``stop``, or the connection closed)."""
        self.legs.discard(leg)
        if self.state == "ended":
            return []
        if not self.legs:
            self.state = "ended"
            return []
        if self.state == "ending":
            return self.mark(leg, "bye")
        if leg == IA:  # the visitor left: the resident, if there, is told goodbye
            return self._goodbye({RETORNO}) if self.state in ("asking", "bridged") else self._finish()
        if self.state == "asking":  # the resident hung up without a word
            return self._unavailable()
        if self.state == "bridged":
            return self._goodbye({IA})
        return []  # an early resident left before being told: nothing changes for the visitor

    def timer(self, name: str) -> list[Action]:
        """A timer asked for with :class:`After` has run out."""
        if name == "end" and self.state == "ending":
            return self._finish()
        return []

    # -- steps ------------------------------------------------------------------
    def _announce(self) -> list[Action]:
        assert self.recording is not None
        self.state = "asking"
        return [Play(RETORNO, ("announce", self.recording, "menu"), "menu")]

    def _unavailable(self) -> list[Action]:
        return self._ending({IA}, "unavailable")

    def _goodbye(self, legs: set[str]) -> list[Action]:
        return self._ending(legs, "goodbye")

    def _ending(self, legs: set[str], prompt: str) -> list[Action]:
        self.state = "ending"
        self.ending = set(legs) & self.legs
        plays: list[Action] = [Play(leg, (prompt,), "bye") for leg in LEGS if leg in self.ending]
        return plays + [After(self.prompt_seconds.get(prompt, 0.0) + END_GRACE_SECONDS, "end")]

    def _finish(self) -> list[Action]:
        self.state = "ended"
        legs = [leg for leg in (RETORNO, IA) if leg in self.legs]
        return [*(AgentHangup(leg) for leg in legs), *(Close(leg) for leg in legs)]


class DoormanConversation:
    """The I/O side of one :class:`Doorman`: the streams of its legs (one callSid), actions carried out."""

    def __init__(self, call_sid: str, prompts: Prompts, door_digits: str, forget: Callable[[str], None]) -> None:
        self.call_sid = call_sid
        self.prompts = prompts
        self.machine = Doorman(prompt_seconds(prompts), door_digits)
        self.streams: dict[str, DoormanSession] = {}
        self._forget = forget
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task] = set()

    async def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Play):
                stream = self.streams.get(action.leg)
                if stream is not None:
                    await stream.play(render_parts(self.prompts, action.parts, stream.rate), action.mark)
            elif isinstance(action, CallControl):
                stream = self.streams.get(IA)
                if stream is None:
                    log.info("doorman call=%s: %s not sent, the visitor's stream is gone", self.call_sid, action)
                    continue
                message = call_control_message(action, stream.stream_sid)
                log.info("doorman call=%s send %s", self.call_sid, message.decode())
                await stream.send(message)
            elif isinstance(action, Close):
                stream = self.streams.get(action.leg)
                if stream is not None:
                    await stream.close()
            elif isinstance(action, After):
                handle = asyncio.get_running_loop().call_later(action.seconds, self._timer_fired, action.name)
                self._timers.add(handle)

    def _timer_fired(self, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self.apply(self.machine.timer(name)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def detach(self, leg: str) -> None:
        self.streams.pop(leg, None)
        if not self.streams:
            for handle in self._timers:
                handle.cancel()
            self._forget(self.call_sid)


def render_parts(prompts: Prompts, parts: tuple[str | Recording, ...], rate: int) -> numpy.ndarray:
    """A :class:`Play`'s audio at ``rate``: its prompts and recordings one after the other."""
    pieces = []
    for part in parts:
        if isinstance(part, Recording):
            samples = part.samples if part.rate == rate else numpy.round(
                soxr.resample(part.samples.astype(numpy.float32), part.rate, rate)).clip(-32768, 32767)
            pieces.append(numpy.asarray(samples, dtype=numpy.int16))
        else:
            pieces.append(prompts.get(part, rate))
    return numpy.concatenate(pieces)


def prompt_seconds(prompts: Prompts) -> dict[str, float]:
    """Each prompt's length, which the doorman's hang-up timers need."""
    return {name: len(audio) / rate for (name, rate), audio in prompts.audio.items()}


class DoormanSession(DemoSession):
    """One stream of a doorman conversation: the visitor's (ia) or the resident's (retorno)."""

    def __init__(self, connection: ServerConnection, prompts: Prompts,
                 conversations: dict[str, DoormanConversation], door_digits: str = DOOR_DIGITS) -> None:
        super().__init__(connection, prompts)
        self.conversations = conversations
        self.door_digits = door_digits
        self.conversation: DoormanConversation | None = None
        self.leg = "-"

    @property
    def rate(self) -> int:
        assert self.stream_format is not None
        return self.stream_format.rate

    async def run(self) -> None:
        try:
            await super().run()
        finally:
            conversation, self.conversation = self.conversation, None
            if conversation is not None:
                conversation.detach(self.leg)
                await conversation.apply(conversation.machine.stop(self.leg))

    async def on_dial_status(self, message: GatewayDialStatus) -> None:
        if self.conversation is not None:
            log.info("doorman call=%s dial_status %s %s", self.conversation.call_sid, message.status, message.reason)
            await self.conversation.apply(self.conversation.machine.dial_status(message.status))

    async def on_start(self, start: GatewayStart) -> None:
        if self.stream_format is not None:
            raise MediaStreamsError("second_start", "a second start message on one stream")
        leg = start.custom_parameters.get("leg", IA)
        if leg not in LEGS:
            raise MediaStreamsError("bad_leg", f"customParameters.leg {str(leg)[:20]!r} is not 'ia' or 'retorno'")
        conversation = self.conversations.get(start.call_sid)
        if conversation is None:
            conversation = self.conversations[start.call_sid] = DoormanConversation(
                start.call_sid, self.prompts, self.door_digits, self._forget)
        if leg in conversation.streams:
            raise MediaStreamsError("second_leg", f"call {start.call_sid} already has a {leg} stream")
        self.stream_format = start.stream_format
        self.stream_sid = start.stream_sid
        self.leg = leg
        self.conversation = conversation
        conversation.streams[leg] = self
        log.info("doorman start call=%s leg=%s stream=%s format=%s/%d", start.call_sid, leg, start.stream_sid,
                 start.stream_format.encoding, start.stream_format.rate)
        await conversation.apply(conversation.machine.start(leg, start.stream_format.rate))

    def _forget(self, call_sid: str) -> None:
        self.conversations.pop(call_sid, None)

    async def on_media(self, media: GatewayMedia) -> None:
        if self.stream_format is None or self.conversation is None:
            raise MediaStreamsError("before_start", "media before the start message")
        self.counts["media"] += 1
        actions = self.conversation.machine.audio(self.leg, self.stream_format.from_wire(media.payload))
        if actions:
            self.counts["turns"] += 1
            await self.conversation.apply(actions)

    async def on_dtmf(self, digit: str) -> None:
        if self.conversation is None:
            raise MediaStreamsError("before_start", "dtmf before the start message")
        log.info("doorman call=%s leg=%s dtmf %s", self.conversation.call_sid, self.leg, digit)
        await self.conversation.apply(self.conversation.machine.dtmf(self.leg, digit))

    async def on_mark(self, name: str) -> None:
        if self.conversation is not None:
            await self.conversation.apply(self.conversation.machine.mark(self.leg, name))

    async def send(self, message: bytes) -> None:
        try:
            await self.connection.send(message, text=True)
        except ConnectionClosed:
            pass

    async def close(self) -> None:
        await self.connection.close()


def doorman_digits(path: str) -> str | None:
    """For a doorman URL path (``/doorman``, optionally ``?door=DIGITS``) the door digits, else None."""
    parts = urllib.parse.urlsplit(path)
    if parts.path.rstrip("/") != DOORMAN_PATH:
        return None
    digits = urllib.parse.parse_qs(parts.query).get("door", [DOOR_DIGITS])[-1]
    if not digits or any(digit not in DTMF_DIGITS for digit in digits):
        log.warning("doorman: door digits %r are not DTMF; using %s", digits[:16], DOOR_DIGITS)
        return DOOR_DIGITS
    return digits


async def serve_demo_agent(host: str = "127.0.0.1", port: int = 0, prompts_dir: Path | str | None = None) -> Server:
    """Start the demo agent on the running loop; ``bound_port(server)`` tells the port."""
    folder = Path(prompts_dir) if prompts_dir is not None else DEFAULT_PROMPTS
    prompts = await asyncio.get_running_loop().run_in_executor(None, load_prompts, folder)

    conversations: dict[str, DoormanConversation] = {}  # callSid -> its doorman conversation

    async def handler(connection: ServerConnection) -> None:
        door_digits = doorman_digits(connection.request.path) if connection.request else None
        if door_digits is None:
            await DemoSession(connection, prompts).run()
        else:
            await DoormanSession(connection, prompts, conversations, door_digits).run()

    return await serve(handler, host, port, max_size=MAX_MESSAGE_BYTES)


def bound_port(server: Server) -> int:
    """The TCP port the server listens on (useful after ``port=0``)."""
    return server.sockets[0].getsockname()[1]


async def _serve_until_signalled(host: str, port: int, prompts_dir: Path | None, parent_pid: int | None) -> None:
    server = await serve_demo_agent(host, port, prompts_dir)
    log.info("demo agent listening on ws://%s:%d/", host, bound_port(server))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stopping.set)
    watch = loop.create_task(_watch_parent(parent_pid, stopping)) if parent_pid else None
    await stopping.wait()
    if watch is not None:
        watch.cancel()
    server.close()
    await server.wait_closed()


async def _watch_parent(parent_pid: int, stopping: asyncio.Event) -> None:
    """Run by a supervisor: end when it is gone (re-parented), so no orphan keeps the port."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1.0)
    log.info("demo agent: parent %d is gone, stopping", parent_pid)
    stopping.set()


@click.command("demo-agent")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="TCP port (0: any free port, logged).")
@click.option("--prompts", "prompts_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=None, help="Folder with greeting.wav and confirm.wav, optionally the doorman's "
                   "(who, wait, announce, menu, unavailable, goodbye; default: the built-in chimes).")
@click.option("--parent-pid", type=click.IntRange(1), default=None, hidden=True,
              help="Exit when this process (the supervisor) is no longer the parent.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="human", show_default=True,
              help="Log line format (the supervisor passes its supervisor.log_format).")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="info",
              show_default=True, help="Log level (the supervisor passes its supervisor.log_level).")
def demo_agent_command(host: str, port: int, prompts_dir: Path | None, parent_pid: int | None,
                       log_format: str, log_level: str) -> None:
    """Run a reference voice agent speaking Twilio Media Streams over WebSocket."""
    configure_logging(log_format, log_level)
    try:
        uvloop.run(_serve_until_signalled(host, port, prompts_dir, parent_pid))
    except WavError as exc:
        raise click.ClickException(f"cannot load prompts: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


__all__ = [
    "demo_agent_command", "serve_demo_agent", "bound_port", "load_prompts", "burst_messages",
    "Prompts", "TurnRecorder", "DemoSession",
    "Doorman", "DoormanSession", "DoormanConversation", "Recording", "Play", "Close", "After", "Action",
    "CallControl", "call_control_message",
    "doorman_digits", "prompt_seconds", "render_parts", "GIVE_UP_STATUSES", "LEGS", "DOORMAN_PATH", "DOOR_DIGITS", "IA", "RETORNO",
]


if __name__ == "__main__":
    demo_agent_command()

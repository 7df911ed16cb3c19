"""`audiogw demo-agent`: a reference voice agent speaking Twilio Media Streams.

For trying the ``agent`` app without an AI service, and for its tests and the
benchmark. Per connection: on ``start`` it greets the caller (the greeting
prompt as one burst of media messages, then a ``greeting`` mark), records the
caller's turn until the voice-activity detector hears it end, and plays that
recording back the same way (mark ``playback``); DTMF 1 plays the confirmation
prompt (mark ``confirm``). Like a real agent it sends whole prompts at once and
leaves the 20 ms pacing to the gateway, so it also exercises the gateway's
buffering. Anything new interrupts what is still playing with ``clear``.

Prompts are read and resampled once, at start-up, off the event loop; nothing
on the loop blocks. Bad messages from the gateway are logged and ignored.
"""
from __future__ import annotations

import asyncio
import os
import collections
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import click
import numpy
import uvloop
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from audiogw.shared.logs import configure_logging
from audiogw.shared.settings import LOG_FORMATS, LOG_LEVELS
from audiogw.shared.media_streams import (
    MAX_MESSAGE_BYTES,
    RATES,
    GatewayConnected,
    GatewayDtmf,
    GatewayBargeIn,
    GatewayMark,
    GatewayMedia,
    GatewayStart,
    GatewayStop,
    MediaStreamsError,
    StreamFormat,
    agent_clear_message,
    agent_mark_message,
    agent_media_message,
    parse_gateway_message,
)
from audiogw.shared.vad import EnergyVad, VadEvent
from audiogw.shared.wav import WavError, read_wav

log = logging.getLogger("audiogw.demo_agent")

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "prompts"
PROMPT_NAMES = ("greeting", "confirm")
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
    """Read ``greeting.wav`` and ``confirm.wav`` (blocking: call at start-up)."""
    audio = {}
    for name in PROMPT_NAMES:
        for rate in PROMPT_RATES:
            audio[(name, rate)] = read_wav(folder / f"{name}.wav", rate)
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
                self.pending_marks.discard(message.name)
                log.info("mark played stream=%s name=%s", self.stream_sid, message.name)
            elif isinstance(message, GatewayStop):
                return True
            elif isinstance(message, GatewayBargeIn):
                # The gateway already cleared playback (and echoed its marks): nothing plays now.
                self.pending_marks.clear()
                log.info("barge-in stream=%s: the caller interrupted", self.stream_sid)
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


async def serve_demo_agent(host: str = "127.0.0.1", port: int = 0, prompts_dir: Path | str | None = None) -> Server:
    """Start the demo agent on the running loop; ``bound_port(server)`` tells the port."""
    folder = Path(prompts_dir) if prompts_dir is not None else DEFAULT_PROMPTS
    prompts = await asyncio.get_running_loop().run_in_executor(None, load_prompts, folder)

    async def handler(connection: ServerConnection) -> None:
        await DemoSession(connection, prompts).run()

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
              default=None, help="Folder with greeting.wav and confirm.wav (default: the built-in chimes).")
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
]


if __name__ == "__main__":
    demo_agent_command()

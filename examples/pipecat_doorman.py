"""The virtual doorman as a Pipecat bot on Pipecat's own Twilio serializer, for audiogw.

No cloud service and no key: the flow is audiogw's reference doorman
(``audiogw.client.demo_agent.Doorman``, a pure state machine) and the audio is its
shipped prompts, so this shows what a Pipecat bot does with audiogw's events,
with local processors only:

- caller audio (``InputAudioRawFrame``) feeds the doorman's energy VAD, which ends
  the visitor's turn; prompts and the visitor's recording go out as
  ``OutputAudioRawFrame`` (the serializer sends them as µ-law 8 kHz media);
- the resident's keys arrive as ``InputDTMFFrame`` (the serializer maps ``dtmf``);
- audiogw's call-control events (``audiogw.dial``, ``audiogw.bridge``,
  ``audiogw.send_dtmf``, ``audiogw.hangup``) are ``OutputTransportMessageUrgentFrame``\\ s,
  which ``TwilioFrameSerializer.serialize`` sends verbatim as JSON;
- ``audiogw.dial_status`` is the one event the stock serializer drops
  (it reads only ``media`` and ``dtmf``): :class:`AudiogwTwilioSerializer` turns it
  into an ``InputTransportMessageFrame``;
- each leg (the visitor's ``ia`` stream, the resident's ``retorno`` stream: one
  callSid, ``customParameters.leg``) is its own WebSocket and pipeline; the two
  meet in one :class:`Conversation`, found by callSid.

Run it (``pip install 'audiogw[pipecat]'``, i.e. ``pipecat-ai[websocket,runner]==1.14.0``)
with Pipecat's development runner, which serves the Twilio WebSocket on ``/ws``::

    python examples/pipecat_doorman.py -t twilio --host 127.0.0.1 --port 7860

and point an ``agent`` extension at it: ``options = { url = "ws://127.0.0.1:7860/ws" }``
(µ-law 8 kHz, the default: Pipecat speaks nothing else).

Hang-up: with ``TWILIO_ACCOUNT_SID`` and ``TWILIO_AUTH_TOKEN`` set (audiogw's
``agent.account_sid`` / ``agent.auth_token``) the serializer's ``auto_hang_up`` is on:
when a pipeline ends it POSTs ``Status=completed`` to
``{TWILIO_BASE_URL}/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`` with basic
auth, which hangs up every leg of that callSid (so the bot sends no ``audiogw.hangup``
then). ``TWILIO_BASE_URL`` is read by this bot, not by Pipecat's runner (which has no
such variable and would post to api.twilio.com): set it to audiogw's HTTP listener,
e.g. ``http://127.0.0.1:9100`` (``supervisor.metrics``). Without the pair,
``auto_hang_up`` is off: the bot sends ``audiogw.hangup`` for each leg and closes its
streams. ``DOORMAN_DOOR_DIGITS`` (default ``9``) is what the door panel
receives when the resident presses 9.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys

import numpy
from loguru import logger
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InputDTMFFrame,
    InputTransportMessageFrame,
    OutputAudioRawFrame,
    OutputTransportMessageUrgentFrame,
    StartFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.runner.types import RunnerArguments
from pipecat.runner.utils import parse_telephony_websocket
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from pipecat.workers.runner import WorkerRunner

from audiogw.client.demo_agent import (
    DEFAULT_PROMPTS,
    DOOR_DIGITS,
    IA,
    LEGS,
    After,
    Close,
    Doorman,
    CallControl,
    Play,
    call_control_message,
    load_prompts,
    prompt_seconds,
    render_parts,
)
from audiogw.shared.media_streams import (
    DIAL_STATUS_EVENT,
    AgentHangup,
    GatewayDialStatus,
    MediaStreamsError,
    parse_gateway_message,
)

# With both, the serializer's auto_hang_up (Twilio's REST API, here audiogw's) ends the call.
HANG_UP_BY_REST = bool(os.getenv("TWILIO_ACCOUNT_SID") and os.getenv("TWILIO_AUTH_TOKEN"))
RATE = 8000  # Twilio's (and so Pipecat's) µ-law 8 kHz; the pipeline runs at it, nothing resampled
PROMPTS = load_prompts(DEFAULT_PROMPTS)  # at import, before any call: nothing blocks a pipeline later


class AudiogwTwilioSerializer(TwilioFrameSerializer):
    """Pipecat's Twilio serializer, plus audiogw's ``audiogw.dial_status`` as an input message
    (``message`` = the event's JSON, checked by audiogw's own parser)."""

    async def deserialize(self, data: str | bytes) -> Frame | None:
        frame = await super().deserialize(data)
        text = data if isinstance(data, str) else data.decode("utf-8", "replace")
        if frame is not None or DIAL_STATUS_EVENT not in text:
            return frame
        try:
            if isinstance(parse_gateway_message(text), GatewayDialStatus):
                return InputTransportMessageFrame(message=json.loads(text))
        except MediaStreamsError as error:
            logger.warning(f"doorman: {DIAL_STATUS_EVENT} refused ({error.reason}): {error}")
        return None


class Conversation:
    """Both legs of one callSid: the doorman's state machine and each leg's processor."""

    def __init__(self, call_sid: str, door_digits: str) -> None:
        self.call_sid = call_sid
        self.machine = Doorman(prompt_seconds(PROMPTS), door_digits)
        self.legs: dict[str, DoormanLeg] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task] = set()

    async def apply(self, actions: list) -> None:
        """Carry the machine's actions out as Pipecat frames."""
        for action in actions:
            if isinstance(action, Play):
                leg = self.legs.get(action.leg)
                if leg is not None:  # no marks in Pipecat: the machine's own timers cover their absence
                    audio = render_parts(PROMPTS, action.parts, RATE)
                    await leg.push_frame(OutputAudioRawFrame(audio=audio.tobytes(), sample_rate=RATE, num_channels=1))
            elif isinstance(action, CallControl):
                if isinstance(action, AgentHangup) and HANG_UP_BY_REST:
                    continue  # its Close follows: the pipeline's end posts the REST hang-up (every leg)
                leg = self.legs.get(IA)  # audiogw's events travel on the visitor's stream
                if leg is not None:
                    message = json.loads(call_control_message(action, leg.stream_sid))
                    logger.info(f"doorman {self.call_sid}: {message}")
                    await leg.push_frame(OutputTransportMessageUrgentFrame(message=message))
            elif isinstance(action, Close):
                leg = self.legs.get(action.leg)
                if leg is not None and leg.worker is not None:
                    await leg.worker.queue_frame(EndFrame())  # plays out, auto_hang_up, closes the socket
            elif isinstance(action, After):
                self._timers.add(asyncio.get_running_loop().call_later(action.seconds, self._timer, action.name))

    def _timer(self, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self.apply(self.machine.timer(name)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def leave(self, leg: str) -> None:
        """A leg's pipeline has finished."""
        self.legs.pop(leg, None)
        await self.apply(self.machine.stop(leg))
        if not self.legs:
            for handle in self._timers:
                handle.cancel()
            CONVERSATIONS.pop(self.call_sid, None)


CONVERSATIONS: dict[str, Conversation] = {}


class DoormanLeg(FrameProcessor):
    """One leg's frames into the doorman: audio (the visitor's turn), DTMF, dial status."""

    def __init__(self, conversation: Conversation, leg: str, stream_sid: str) -> None:
        super().__init__(name=f"doorman-{leg}")
        self.conversation = conversation
        self.leg = leg
        self.stream_sid = stream_sid
        self.worker: PipelineWorker | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        machine = self.conversation.machine
        if isinstance(frame, InputAudioRawFrame):
            samples = numpy.frombuffer(frame.audio, dtype=numpy.int16)
            await self.conversation.apply(machine.audio(self.leg, samples))
            return  # the caller's audio is listened to, not echoed
        if isinstance(frame, InputDTMFFrame):
            logger.info(f"doorman {self.conversation.call_sid}: {self.leg} pressed {frame.button.value}")
            await self.conversation.apply(machine.dtmf(self.leg, frame.button.value))
            return
        if isinstance(frame, InputTransportMessageFrame) and isinstance(frame.message, dict) \
                and frame.message.get("event") == DIAL_STATUS_EVENT:  # checked by the serializer
            await self.conversation.apply(machine.dial_status(frame.message["dial_status"]["status"]))
            return
        await self.push_frame(frame, direction)
        if isinstance(frame, StartFrame):  # after it is on its way: the output transport starts first
            await self.conversation.apply(machine.start(self.leg, RATE))
        elif isinstance(frame, (EndFrame, CancelFrame)):
            pass  # the leg is left once its pipeline has finished (bot() below)


def _serializer(stream_sid: str, call_sid: str) -> AudiogwTwilioSerializer:
    return AudiogwTwilioSerializer(
        stream_sid=stream_sid, call_sid=call_sid,
        account_sid=os.getenv("TWILIO_ACCOUNT_SID") or None, auth_token=os.getenv("TWILIO_AUTH_TOKEN") or None,
        base_url=os.getenv("TWILIO_BASE_URL") or None,
        params=TwilioFrameSerializer.InputParams(auto_hang_up=HANG_UP_BY_REST),
    )


async def bot(runner_args: RunnerArguments) -> None:
    """Pipecat runner entry point: one call leg's WebSocket (``/ws``)."""
    _, call_data = await parse_telephony_websocket(runner_args.websocket)
    stream_sid, call_sid = call_data["stream_id"], call_data["call_id"]
    leg = (call_data.get("body") or {}).get("leg", IA)
    if leg not in LEGS:
        logger.warning(f"doorman {call_sid}: customParameters.leg {str(leg)[:20]!r} is not ia/retorno; closing")
        await runner_args.websocket.close()
        return
    conversation = CONVERSATIONS.get(call_sid)
    if conversation is None:
        conversation = CONVERSATIONS[call_sid] = Conversation(call_sid, os.getenv("DOORMAN_DOOR_DIGITS", DOOR_DIGITS))
    if leg in conversation.legs:
        logger.warning(f"doorman {call_sid}: a second {leg} stream; closing it")
        await runner_args.websocket.close()
        return

    transport = FastAPIWebsocketTransport(
        websocket=runner_args.websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False,
            serializer=_serializer(stream_sid, call_sid),
        ),
    )
    processor = DoormanLeg(conversation, leg, stream_sid)
    worker = PipelineWorker(
        Pipeline([transport.input(), processor, transport.output()]),
        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE),
        enable_rtvi=False, idle_timeout_secs=None,
    )
    processor.worker = worker
    conversation.legs[leg] = processor
    logger.info(f"doorman {call_sid}: {leg} stream {stream_sid}")

    @transport.event_handler("on_client_disconnected")
    async def on_client_disconnected(transport, websocket):  # the gateway ended the leg
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    try:
        await runner.run()
    finally:
        await conversation.leave(leg)


if __name__ == "__main__":
    if len(sys.argv) == 1:
        sys.argv += ["-t", "twilio"]
    from pipecat.runner.run import main

    main()

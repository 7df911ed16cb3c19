"""A bot for Pipecat's own development runner, unchanged (``python pipecat_runner_bot.py -t twilio``):
it says a 0.8 s tone at once and ends its pipeline (EndFrame), the way a bot ends a call.

Used by tests/test_agent_pipecat_runner.py; it imports nothing from audiogw. The runner
builds the TwilioFrameSerializer from the ``start`` message and the TWILIO_* environment.
"""
import numpy
from pipecat.frames.frames import EndFrame, OutputAudioRawFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.runner.utils import create_transport
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams

RATE = 8000
REPLY_SECONDS = 0.8


def reply() -> numpy.ndarray:
    """The bot's words: a 440 Hz tone that starts on a zero sample (its first heard sample is the second)."""
    t = numpy.arange(int(REPLY_SECONDS * RATE)) / RATE
    return (numpy.sin(2 * numpy.pi * 440 * t) * 8000).astype(numpy.int16)


async def bot(runner_args) -> None:
    transport = await create_transport(runner_args, {
        "twilio": lambda: FastAPIWebsocketParams(audio_in_enabled=True, audio_out_enabled=True),
    })
    task = PipelineTask(Pipeline([transport.input(), transport.output()]),
                        params=PipelineParams(audio_in_sample_rate=RATE, audio_out_sample_rate=RATE))

    @transport.event_handler("on_client_connected")
    async def on_connected(_transport, _client) -> None:
        await task.queue_frames([
            OutputAudioRawFrame(audio=reply().astype("<i2").tobytes(), sample_rate=RATE, num_channels=1),
            EndFrame(),
        ])

    await PipelineRunner(handle_sigint=False).run(task)


if __name__ == "__main__":
    from pipecat.runner.run import main

    main()

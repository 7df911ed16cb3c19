"""playback: play a WAV file to each leg, paced by the worker's clock.

The file is read and converted (soxr) in a thread at worker start, and once
per other leg rate on first use; the loop only slices ready PCM.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from audiogw.shared.apps import PlaybackOptions
from audiogw.shared.audiosocket import frame_bytes
from audiogw.shared.config import resolve_path
from audiogw.worker.apps.base import App, AppContext, AppOptionError
from audiogw.worker.apps.prompt import Prompt

if TYPE_CHECKING:
    from audiogw.worker.leg import Leg

CHUNK_FRAMES = 5  # 100 ms per push: few wake-ups, still well inside the lead


class PlaybackApp(App):
    name = "playback"
    options: PlaybackOptions

    def __init__(self, context: AppContext, options: PlaybackOptions) -> None:
        super().__init__(context, options)
        self.path = resolve_path(context.base_dir, options.file)
        self.prompt = Prompt(self.path)

    async def start(self) -> None:
        try:
            await self.prompt.pcm(self.rate or 8000)
            if not self.rate:  # "auto": the channel driver's usual rate too, ready before a call needs it
                await self.prompt.pcm(16000)
        except Exception as error:  # a bad file is refused at start, with the reason
            raise AppOptionError(f"app 'playback': cannot use file {self.path}: {error}") from error

    async def run_leg(self, leg: "Leg") -> None:
        leg.forward_to(None)
        rate = await leg.wait_rate()
        pcm = await self.prompt.pcm(rate)
        # Pushed at the rate it was converted to: should "auto" learn another rate later
        # (a caller silent at first), the leg converts the rest on its way in.
        chunk = CHUNK_FRAMES * frame_bytes(rate)
        while not leg.closed.is_set():
            for offset in range(0, len(pcm), chunk):
                await leg.play(pcm[offset : offset + chunk], rate)
                if leg.closed.is_set():
                    return
            leg.finish()
            if not self.options.loop:
                break
        await leg.wait_closed()

"""stall: echo plus a deliberate blocking call on the event loop, for benchmarks only.

This app exists to prove isolation in ``audiogw bench``: every ``stall_every``
seconds it calls ``time.sleep(stall_seconds)`` on the worker's event loop, as
an app that made a synchronous AI or TTS request would. Every leg on that loop
stops getting frames for the length of the stall. The benchmark then shows
whether any *other* extension noticed.

Never use it in production: it breaks the audio of every call it serves, on
purpose.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from audiogw.worker.apps.base import App, AppContext, AppOptionError

if TYPE_CHECKING:
    from audiogw.worker.leg import Leg

log = logging.getLogger("audiogw.worker.apps.stall")


class StallApp(App):
    name = "stall"
    options_schema = {"stall_seconds": ((int, float), 0.3), "stall_every": ((int, float), 1.0)}

    def __init__(self, context: AppContext) -> None:
        super().__init__(context)
        self.stall_seconds = float(self.options["stall_seconds"])
        self.stall_every = float(self.options["stall_every"])
        if not 0.0 <= self.stall_seconds <= 10.0:
            raise AppOptionError(f"app 'stall': stall_seconds must be 0-10, not {self.stall_seconds:g}")
        if not self.stall_every > 0.0:
            raise AppOptionError(f"app 'stall': stall_every must be positive, not {self.stall_every:g}")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        log.warning("app 'stall' on extension %s blocks its event loop %.3f s every %.3f s: benchmarks only",
                    self.context.extension, self.stall_seconds, self.stall_every)
        self._task = asyncio.get_running_loop().create_task(self._stall_forever(), name="stall")

    async def _stall_forever(self) -> None:
        while True:
            await asyncio.sleep(self.stall_every)
            time.sleep(self.stall_seconds)  # the point of this app: block the loop
            self.context.counters["stalls"] += 1

    async def run_leg(self, leg: "Leg") -> None:
        leg.forward_to(leg)
        await leg.wait_closed()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

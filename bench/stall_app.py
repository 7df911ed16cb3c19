"""stall: echo plus a deliberate blocking call on the event loop, for benchmarks only.

This app (``audiogw.bench.stall_app:StallApp``, not in the production registry)
exists to prove isolation in ``audiogw bench``: every ``stall_every``
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

from audiogw.shared.apps import AppOptionError, AppOptions
from audiogw.worker.apps.base import App, AppContext

if TYPE_CHECKING:
    from audiogw.worker.leg import Leg

log = logging.getLogger("audiogw.bench.stall_app")


class StallOptions(AppOptions):
    """``stall_seconds`` blocked (0-10) every ``stall_every`` seconds (> 0)."""

    stall_seconds: float = 0.3
    stall_every: float = 1.0

    def check(self, base_dir: str) -> None:
        super().check(base_dir)
        if not 0.0 <= self.stall_seconds <= 10.0:
            raise AppOptionError(f"option stall_seconds must be 0-10, not {self.stall_seconds:g}", "stall_seconds")
        if not self.stall_every > 0.0:
            raise AppOptionError(f"option stall_every must be positive, not {self.stall_every:g}", "stall_every")


class StallApp(App):
    """Outside the registry on purpose: run it as ``--app audiogw.bench.stall_app:StallApp``."""

    name = "stall"
    Options = StallOptions
    options: StallOptions

    def __init__(self, context: AppContext, options: StallOptions) -> None:
        super().__init__(context, options)
        self.stall_seconds = options.stall_seconds
        self.stall_every = options.stall_every
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

"""One 20 ms clock per worker that sends every live leg its next frame.

A single deadline loop instead of a timer per leg: 200 legs cost one wake-up
per tick, and every leg's frames leave on the same absolute schedule. The
loop sleeps only while at least one leg is up.
"""
from __future__ import annotations

import asyncio
import time
from typing import Protocol

from audiogw.worker.clock import FRAME_PERIOD, DeadlineClock, aligned_start
from audiogw.worker.timer import DeadlineTimer


class Ticking(Protocol):
    def on_tick(self, deadline: float) -> None: ...


class FrameTicker:
    def __init__(self, period: float = FRAME_PERIOD, phase: float | None = None) -> None:
        self.period = period
        self.phase = phase  # where in the period this worker ticks (None: when the first leg starts)
        self._legs: dict[Ticking, None] = {}  # insertion-ordered set
        self._wake = asyncio.Event()
        self.clock: DeadlineClock | None = None

    def add(self, leg: Ticking) -> None:
        self._legs[leg] = None
        self._wake.set()

    def discard(self, leg: Ticking) -> None:
        self._legs.pop(leg, None)

    def __len__(self) -> int:
        return len(self._legs)

    async def run(self) -> None:
        monotonic = time.monotonic
        timer = DeadlineTimer()
        try:
            await self._run(timer, monotonic)
        finally:
            timer.close()

    async def _run(self, timer: DeadlineTimer, monotonic) -> None:
        while True:
            if not self._legs:
                self._wake.clear()
                await self._wake.wait()
                self.clock = DeadlineClock(aligned_start(monotonic(), self.period, self.phase), self.period)
            clock = self.clock
            await timer.wait_until(clock.deadline)
            deadline = clock.deadline
            clock.tick(monotonic())
            # A leg may end (and leave the dict) while we send: iterate a copy.
            for leg in tuple(self._legs):
                leg.on_tick(deadline)

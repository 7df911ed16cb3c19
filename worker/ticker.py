"""One 20 ms clock per worker that sends every live leg its next frame.

A single deadline loop instead of a timer per leg: 200 legs cost a handful of
wake-ups per period, and every leg's frames leave on the same absolute
schedule. Legs sit in up to ``SLOTS`` groups spaced evenly over the period,
each group filled to ``LEGS_PER_SLOT`` before the next is opened: a worker with
few legs wakes once per period, one with many never writes more than
``LEGS_PER_SLOT`` frames in one burst, so the last leg of a tick does not wait
behind the other 199. A leg keeps its slot for life, so its own frames stay
exactly one period apart. The loop sleeps only while at least one leg is up.
"""
from __future__ import annotations

import asyncio
import time
from typing import Protocol

from audiogw.worker.clock import FRAME_PERIOD, DeadlineClock, aligned_start
from audiogw.worker.timer import DeadlineTimer

SLOTS = 4
LEGS_PER_SLOT = 50


class Ticking(Protocol):
    def on_tick(self, deadline: float) -> None: ...


class FrameTicker:
    def __init__(self, period: float = FRAME_PERIOD, phase: float | None = None) -> None:
        self.period = period
        self.phase = phase  # where in the period this worker ticks (None: when the first leg starts)
        self.slot_offset = period / SLOTS
        self._slots: list[dict[Ticking, None]] = [{} for _ in range(SLOTS)]  # insertion-ordered sets
        self._slot_of: dict[Ticking, int] = {}
        self._wake = asyncio.Event()
        self.clock: DeadlineClock | None = None

    def add(self, leg: Ticking) -> None:
        sizes = [len(group) for group in self._slots]
        slot = next((index for index, size in enumerate(sizes) if size < LEGS_PER_SLOT), None)
        if slot is None:
            slot = sizes.index(min(sizes))
        self._slots[slot][leg] = None
        self._slot_of[leg] = slot
        self._wake.set()

    def discard(self, leg: Ticking) -> None:
        slot = self._slot_of.pop(leg, None)
        if slot is not None:
            self._slots[slot].pop(leg, None)

    def __len__(self) -> int:
        return len(self._slot_of)

    def next_send_time(self, leg: Ticking, now: float | None = None) -> float:
        """Monotonic time of ``leg``'s next frame (now, if the clock is not running)."""
        if now is None:
            now = time.monotonic()
        clock = self.clock
        if clock is None:
            return now
        moment = clock.deadline - self.period + self._slot_of.get(leg, 0) * self.slot_offset
        if moment < now:
            moment += self.period
        return moment if moment > now else now

    async def run(self) -> None:
        monotonic = time.monotonic
        timer = DeadlineTimer()
        try:
            await self._run(timer, monotonic)
        finally:
            timer.close()

    async def _run(self, timer: DeadlineTimer, monotonic) -> None:
        slots = self._slots
        while True:
            if not self._slot_of:
                self._wake.clear()
                await self._wake.wait()
                self.clock = DeadlineClock(aligned_start(monotonic(), self.period, self.phase), self.period)
            clock = self.clock
            base = clock.deadline
            await timer.wait_until(base)
            clock.tick(monotonic())
            for slot, group in enumerate(slots):
                if not group:
                    continue
                deadline = base + slot * self.slot_offset
                if slot:
                    await timer.wait_until(deadline)
                # A leg may end (and leave its group) while we send: iterate a copy.
                for leg in tuple(group):
                    leg.on_tick(deadline)

"""Wake the event loop at an absolute monotonic deadline, with sub-millisecond precision.

uvloop timers round to whole milliseconds and read a clock cached once per loop
pass, so a 20 ms tick wakes up to ~1 ms early or late. A Linux timerfd armed
with an absolute CLOCK_MONOTONIC deadline (the clock ``time.monotonic`` reads)
fires on the kernel's high-resolution timer; the loop just watches its fd.
Falls back to ``asyncio.sleep`` where timerfd is unavailable.
"""
from __future__ import annotations

import asyncio
import ctypes
import os
import time

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = 0o4000
TFD_CLOEXEC = 0o2000000
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class DeadlineTimer:
    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self._settime = libc.timerfd_settime
            fd = libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        except (OSError, AttributeError):
            fd = -1
        if fd >= 0:
            self._fd = fd
            self._spec = _Itimerspec()
            self._loop.add_reader(fd, self._fired)

    @property
    def precise(self) -> bool:
        return self._fd >= 0

    async def wait_until(self, deadline: float) -> None:
        """Return at ``deadline`` (a time.monotonic reading), never before it."""
        if self._fd < 0:
            delay = deadline - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            return
        if deadline <= time.monotonic():
            return
        seconds = int(deadline)
        self._spec.it_value.tv_sec = seconds
        self._spec.it_value.tv_nsec = int((deadline - seconds) * 1e9)
        if self._settime(self._fd, TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) != 0:
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            return
        waiter = self._waiter = self._loop.create_future()
        await waiter

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(None)

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

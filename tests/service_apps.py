"""Apps that misbehave on purpose, for the service tests (named ``service_apps:CrashApp``; tests put
this folder on the supervisor's PYTHONPATH)."""
from __future__ import annotations

import asyncio
import time

from audiogw.shared.apps import AppOptions
from audiogw.worker.apps.base import App


class CrashApp(App):
    """Exits 1 at start (an unexpected exception), as a worker with a broken dependency would."""

    name = "crash"

    async def start(self) -> None:
        raise RuntimeError("crash app: fails at start on purpose")

    async def run_leg(self, leg) -> None:
        await leg.wait_closed()


class HangOptions(AppOptions):
    hang_after: float = 0.5  # seconds after start
    hang_seconds: float = 30.0


def blocked_here(seconds: float) -> None:
    """The frame a hung worker's traceback must name."""
    time.sleep(seconds)


class HangApp(App):
    """Echo, then blocks its event loop ``hang_seconds`` (no heartbeats: the supervisor kills it)."""

    name = "hang"
    Options = HangOptions
    options: HangOptions

    async def start(self) -> None:
        asyncio.get_running_loop().call_later(self.options.hang_after, blocked_here, self.options.hang_seconds)

    async def run_leg(self, leg) -> None:
        leg.forward_to(leg)
        await leg.wait_closed()


class CloseHangOptions(AppOptions):
    close_blocks: float = 30.0  # seconds its close() blocks the loop (0: a clean close)


class CloseHangApp(App):
    """Echo, then at the end of a drain (a stop, a removal, a reload's handover) blocks its event
    loop in ``blocked_here``: the supervisor's drain deadline kills it, thread dump first."""

    name = "close-hang"
    Options = CloseHangOptions
    options: CloseHangOptions

    async def run_leg(self, leg) -> None:
        leg.forward_to(leg)
        await leg.wait_closed()

    async def close(self) -> None:
        if self.options.close_blocks:
            blocked_here(self.options.close_blocks)


class BusyOptions(AppOptions):
    spin: float = 0.02  # seconds of CPU work per 50 ms while a leg is up


class BusyApp(App):
    """Echo, and spends CPU while a leg is up (``spin`` s of every 50 ms): a worker whose CPU time
    grows while it drains a call, for the CPU totals across a reload's handover."""

    name = "busy"
    Options = BusyOptions
    options: BusyOptions

    async def run_leg(self, leg) -> None:
        leg.forward_to(leg)
        while not leg.closed.is_set():
            until = time.monotonic() + self.options.spin
            while time.monotonic() < until:
                pass
            await asyncio.sleep(max(0.0, 0.05 - self.options.spin))

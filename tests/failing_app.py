"""An app that fails at start on purpose, for the supervisor's "truthful replies" tests.

Run as ``--app failing_app:FailingApp`` (tests/ on PYTHONPATH). ``mode``:
``exit`` the worker exits with code 3 before it is ready; ``hang`` start never
returns (the start timeout kills it); ``config`` start refuses its options
(exit 78, EX_CONFIG) unless the file ``until`` exists, then it echoes.
"""
from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from audiogw.shared.apps import AppOptionError, AppOptions
from audiogw.worker.apps.base import App

if TYPE_CHECKING:
    from audiogw.worker.leg import Leg


class FailingOptions(AppOptions):
    mode: str = "exit"
    until: str = ""


class FailingApp(App):
    name = "failing"
    Options = FailingOptions
    options: FailingOptions

    async def start(self) -> None:
        mode = self.options.mode
        if mode == "exit":
            os._exit(3)
        if mode == "hang":
            time.sleep(3600)  # blocks the loop: never ready, never a heartbeat
        if mode == "config" and not (self.options.until and os.path.exists(self.options.until)):
            raise AppOptionError(f"option until: {self.options.until} does not exist yet", "until")

    async def run_leg(self, leg: "Leg") -> None:
        leg.forward_to(leg)
        await leg.wait_closed()

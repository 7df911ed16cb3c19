"""echo: each leg hears itself, paced by the worker's clock."""
from __future__ import annotations

from typing import TYPE_CHECKING

from audiogw.worker.apps.base import App

if TYPE_CHECKING:
    from audiogw.worker.leg import Leg


class EchoApp(App):
    name = "echo"

    async def run_leg(self, leg: "Leg") -> None:
        leg.forward_to(leg)
        await leg.wait_closed()

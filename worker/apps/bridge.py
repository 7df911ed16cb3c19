"""bridge: the ia and retorno legs with the same UUID hear each other.

A lone leg hears silence; when its partner hangs up it hears silence again
until a new partner with the same UUID arrives.
"""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from audiogw.shared.audiosocket import other_leg
from audiogw.worker.apps.base import App, AppContext, AppOptions

if TYPE_CHECKING:
    from audiogw.worker.leg import Leg


class BridgeApp(App):
    name = "bridge"

    def __init__(self, context: AppContext, options: AppOptions) -> None:
        super().__init__(context, options)
        self._legs: dict[uuid.UUID, dict[str, "Leg"]] = {}

    async def run_leg(self, leg: "Leg") -> None:
        pair = self._legs.setdefault(leg.uuid, {})
        previous = pair.get(leg.kind)
        if previous is not None:
            previous.hangup("replaced_by_new_leg")
        pair[leg.kind] = leg
        await leg.wait_rate()
        partner = pair.get(other_leg(leg.kind))
        if partner is not None and not partner.closed.is_set():
            leg.forward_to(partner)
            partner.forward_to(leg)
        else:
            leg.forward_to(None)
        try:
            await leg.wait_closed()
        finally:
            if pair.get(leg.kind) is leg:
                del pair[leg.kind]
            partner = pair.get(other_leg(leg.kind))
            if partner is not None:
                partner.forward_to(None)
            if not pair:
                self._legs.pop(leg.uuid, None)

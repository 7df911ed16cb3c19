"""bridge: the ia and retorno legs with the same UUID hear each other.

A lone leg hears silence; when its partner hangs up it hears silence again
until a new partner with the same UUID arrives. The pairing and the bridge are
worker/apps/conversation.py's, shared with the ``agent`` app's ``audiogw.bridge``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from audiogw.worker.apps.base import App, AppContext, AppOptions
from audiogw.worker.apps.conversation import Conversations

if TYPE_CHECKING:
    from audiogw.worker.leg import Leg


class BridgeApp(App):
    name = "bridge"

    def __init__(self, context: AppContext, options: AppOptions) -> None:
        super().__init__(context, options)
        self.conversations = Conversations(context)

    async def run_leg(self, leg: "Leg") -> None:
        leg.forward_to(None)  # nobody reads this leg's audio but its partner (through the bridge)
        conversation = self.conversations.join(leg)
        conversation.bridge()
        try:
            await leg.wait_closed()
        finally:
            self.conversations.leave(leg)

    async def close(self) -> None:
        self.conversations.close()

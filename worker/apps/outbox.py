"""The messages waiting for an agent's WebSocket: caller audio with bounded latency, control kept.

Caller audio is live: when the agent (or the network to it) reads slower than
real time, the queue would grow into seconds of delay. Past ``max_media``
messages the **oldest** media is dropped, so the agent always hears the caller
as of now. Control messages (``dtmf``, ``mark`` echoes, custom events) are
never dropped for media's sake; past ``max_messages`` in all, new ones are
refused (the caller counts them).
"""
from __future__ import annotations

import asyncio
from collections import deque


class Outbox:
    __slots__ = ("max_media", "max_messages", "_items", "_media", "_waiter", "dropped_media")

    def __init__(self, max_media: int, max_messages: int) -> None:
        self.max_media = max_media
        self.max_messages = max_messages
        self._items: deque[tuple[bool, bytes]] = deque()
        self._media = 0
        self._waiter: asyncio.Future[None] | None = None
        self.dropped_media = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: bytes, *, media: bool = False) -> bool:
        """Queue ``message``; False when it was refused (a full queue of control messages)."""
        items = self._items
        if media and self._media >= self.max_media:
            self._drop_oldest_media()
        if len(items) >= self.max_messages:
            if not media and self._media:
                self._drop_oldest_media()
            else:
                return False
        items.append((media, message))
        if media:
            self._media += 1
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return True

    def _drop_oldest_media(self) -> None:
        items = self._items
        for index, (media, _message) in enumerate(items):
            if media:
                del items[index]
                self._media -= 1
                self.dropped_media += 1
                return

    async def get(self) -> bytes:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        media, message = self._items.popleft()
        if media:
            self._media -= 1
        return message

    def clear(self) -> None:
        self._items.clear()
        self._media = 0

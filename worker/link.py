"""The worker's ZeroMQ link to its supervisor: heartbeats out, drain/stop in.

Heartbeats are sent from the worker's own event loop (never a side thread), so
a stuck loop stops them and the supervisor sees the worker as hung. Each one
carries the cumulative counters: one small message per interval, never one
per frame. The same loop notices a dead parent and ends the worker.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable

import zmq
import zmq.asyncio

from audiogw.shared.messages import MessageError, decode, encode
from audiogw.worker.server import ExtensionWorker

log = logging.getLogger("audiogw.worker.link")


class SupervisorLink:
    def __init__(
        self,
        endpoint: str,
        worker: ExtensionWorker,
        interval: float,
        on_command: Callable[[dict], None],
        parent_pid: int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.worker = worker
        self.interval = interval
        self.on_command = on_command
        self.parent_pid = parent_pid if parent_pid is not None else os.getppid()
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 200)
        self._socket.setsockopt(zmq.SNDHWM, 20)
        self._socket.setsockopt(zmq.IDENTITY, f"{worker.extension}:{os.getpid()}".encode())
        self._socket.connect(endpoint)
        self._seq = 0
        self._tasks: list[asyncio.Task] = []

    def send(self, kind: str) -> None:
        """Queue one status message without blocking; dropped if the supervisor is not reading."""
        self._seq += 1
        message = {
            "type": kind,
            "extension": self.worker.extension,
            "pid": os.getpid(),
            "seq": self._seq,
            "time": time.time(),
            "serving": self.worker.serving,
            "active_legs": self.worker.active_legs,
            "stats": self.worker.stats.snapshot(),
        }
        try:
            self._socket.send(encode(message), zmq.NOBLOCK)
        except zmq.Again:
            pass

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._beat()), loop.create_task(self._listen())]

    async def _beat(self) -> None:
        while True:
            self.send("heartbeat")
            await asyncio.sleep(self.interval)
            if os.getppid() != self.parent_pid:
                log.error("extension=%s supervisor is gone (parent changed): stopping", self.worker.extension)
                self.on_command({"type": "stop", "reason": "parent_gone"})
                return

    async def _listen(self) -> None:
        while True:
            raw = await self._socket.recv()
            try:
                command = decode(raw, required=("type",))
            except MessageError as error:
                log.warning("extension=%s refused a bus message: %s", self.worker.extension, error)
                continue
            if command["type"] not in ("drain", "stop"):
                log.warning("extension=%s refused unknown bus command %r", self.worker.extension, command["type"])
                continue
            self.on_command(command)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.send("stopping")
        self._socket.close(linger=200)
        self._context.term()

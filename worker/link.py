"""The worker's ZeroMQ link to its supervisor: heartbeats out, drain/stop in.

Heartbeats are sent from the worker's own event loop (never a side thread), so
a stuck loop stops them and the supervisor sees the worker as hung. Each one
carries the cumulative counters: one small message per interval, never one
per frame. The same loop notices a dead supervisor and ends the worker: its
pid is watched through a pidfd (at once), and its parent (the forkserver) is
checked at each heartbeat. Both back up the kernel's parent-death signal, which
needs the forkserver to exit (see supervisor/zygote.py).
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

import zmq
import zmq.asyncio

from audiogw.shared.messages import (
    Heartbeat, MessageError, Stop, Stopping, WorkerCommand, WorkerMessage, decode_worker_command,
    encode_worker_message,
)
from audiogw.worker.server import ExtensionWorker
from audiogw.worker.zmq_nowait import send_nowait

log = logging.getLogger("audiogw.worker.link")


class SupervisorLink:
    def __init__(
        self,
        endpoint: str,
        worker: ExtensionWorker,
        interval: float,
        on_command: Callable[[WorkerCommand], None],
        parent_pid: int | None = None,
        supervisor_pid: int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.worker = worker
        self.interval = interval
        self.on_command = on_command
        self.parent_pid = parent_pid if parent_pid is not None else os.getppid()
        self.supervisor_pid = supervisor_pid
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 200)
        self._socket.setsockopt(zmq.SNDHWM, 20)
        self._socket.setsockopt(zmq.IDENTITY, f"{worker.extension}:{os.getpid()}".encode())
        self._socket.connect(endpoint)
        self._tasks: list[asyncio.Task] = []
        self._pidfd: int | None = None

    def send(self, kind: type[WorkerMessage]) -> None:
        """Queue one status message (Ready, Heartbeat or Stopping) without blocking;
        dropped if the supervisor is not reading."""
        message = kind(extension=self.worker.extension, pid=os.getpid(), stats=self.worker.stats.snapshot())
        error = send_nowait(self._socket, encode_worker_message(message))
        if error is not None and not isinstance(error, zmq.Again):  # Again: the supervisor is not reading
            log.warning("extension=%s %s not sent: %s", self.worker.extension, kind.__name__, error)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._watch_supervisor(loop)
        self._tasks = [loop.create_task(self._beat()), loop.create_task(self._listen())]

    def _watch_supervisor(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop the moment the supervisor's process ends (a pidfd turns readable)."""
        if self.supervisor_pid is None:
            return
        try:
            self._pidfd = os.pidfd_open(self.supervisor_pid)
        except ProcessLookupError:
            self._supervisor_gone()
            return
        except (OSError, AttributeError) as error:  # kernel < 5.3: the heartbeat's parent check remains
            log.warning("extension=%s cannot watch the supervisor's pid %d (%s); relying on the parent check",
                        self.worker.extension, self.supervisor_pid, error)
            return
        loop.add_reader(self._pidfd, self._supervisor_gone)

    def _supervisor_gone(self) -> None:
        self._unwatch()
        log.error("extension=%s supervisor pid %s is gone: stopping", self.worker.extension, self.supervisor_pid)
        self.on_command(Stop(reason="supervisor_gone"))

    def _unwatch(self) -> None:
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def _beat(self) -> None:
        while True:
            self.send(Heartbeat)
            await asyncio.sleep(self.interval)
            if os.getppid() != self.parent_pid:
                log.error("extension=%s supervisor is gone (parent changed): stopping", self.worker.extension)
                self.on_command(Stop(reason="parent_gone"))
                return

    async def _listen(self) -> None:
        while True:
            raw = await self._socket.recv()
            try:
                command = decode_worker_command(raw)
            except MessageError as error:
                log.warning("extension=%s refused a bus message: %s", self.worker.extension, error)
                continue
            self.on_command(command)

    async def close(self) -> None:
        self._unwatch()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.send(Stopping)
        self._socket.close(linger=200)
        self._context.term()

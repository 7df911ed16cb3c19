"""The control endpoint: a ZeroMQ ROUTER serving `audiogw ctl`, one task per request.

ipc endpoints live in a folder only the owner can enter; a tcp endpoint
requires CURVE (encryption and server authentication).
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

import zmq
import zmq.asyncio
import zmq.auth

from audiogw.shared.messages import MessageError, decode, encode
from audiogw.supervisor.commands import COMMANDS, CommandRefused, parse_args

if TYPE_CHECKING:
    from audiogw.supervisor.daemon import Supervisor

log = logging.getLogger("audiogw.supervisor.control")


def prepare_ipc_folder(endpoint: str) -> None:
    """Create the ipc socket's folder owner-only (0700) so no other user can reach the control socket."""
    if endpoint.startswith("ipc://") and not endpoint.startswith("ipc://@"):
        folder = os.path.dirname(endpoint[len("ipc://"):])
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)


class ControlServer:
    def __init__(self, supervisor: "Supervisor", context: zmq.asyncio.Context) -> None:
        self.supervisor = supervisor
        settings = supervisor.config.supervisor
        self.endpoint = settings.control
        self.socket = context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if self.endpoint.startswith("tcp://"):
            public, secret = zmq.auth.load_certificate(settings.curve_server_secret_key)
            if secret is None:
                raise ValueError(f"{settings.curve_server_secret_key} holds no secret key")
            self.socket.curve_secretkey = secret
            self.socket.curve_publickey = public
            self.socket.curve_server = True
        else:
            prepare_ipc_folder(self.endpoint)
        self.socket.bind(self.endpoint)
        self._tasks: set[asyncio.Task] = set()
        self.requests = 0
        self.refused = 0

    async def serve(self) -> None:
        while True:
            frames = await self.socket.recv_multipart()
            if len(frames) != 2:
                self.refused += 1
                log.warning("control: refused a message of %d frames (expected identity + body)", len(frames))
                if frames:
                    await self._reply(frames[0], {"id": None, "ok": False, "error": "expected exactly one message frame"})
                continue
            task = asyncio.get_running_loop().create_task(self._handle(frames[0], frames[1]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, identity: bytes, raw: bytes) -> None:
        self.requests += 1
        request_id: Any = None
        try:
            request = decode(raw, required=("command",))
            request_id = request.get("id")
            name = request["command"]
            command = COMMANDS.get(name) if isinstance(name, str) else None
            if command is None:
                raise CommandRefused(f"unknown command {name!r} (known: {', '.join(sorted(COMMANDS))})")
            args = parse_args(name, command, request.get("args"))
            result = await command.handler(self.supervisor, args)
            reply = {"id": request_id, "ok": True, "result": result}
        except (MessageError, CommandRefused) as error:
            self.refused += 1
            log.warning("control: refused: %s", error)
            reply = {"id": request_id, "ok": False, "error": str(error)}
        except Exception as error:  # a bug in one command must not take the supervisor down
            self.refused += 1
            log.exception("control: command failed")
            reply = {"id": request_id, "ok": False, "error": f"internal error: {error}"}
        await self._reply(identity, reply)

    async def _reply(self, identity: bytes, reply: dict[str, Any]) -> None:
        try:
            await self.socket.send_multipart([identity, encode(reply)])
        except zmq.ZMQError as error:
            log.warning("control: could not reply: %s", error)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.socket.close(linger=100)

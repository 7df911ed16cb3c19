"""A ZeroMQ send that never waits: what the audio loop's links (heartbeats, call control) use."""
from __future__ import annotations

import zmq
import zmq.asyncio


def send_nowait(socket: zmq.asyncio.Socket, data: bytes) -> BaseException | None:
    """Queue ``data`` now; the error (``zmq.Again`` when the peer is not reading) or None.

    zmq.asyncio's send with NOBLOCK tries at once and returns a finished future: its
    exception is read here, never raised, never awaited, never left "unretrieved".
    """
    sent = socket.send(data, zmq.NOBLOCK)
    if not sent.done():  # cannot happen with NOBLOCK; never leave a send pending on the audio loop
        sent.cancel()
        return zmq.Again()
    return sent.exception()

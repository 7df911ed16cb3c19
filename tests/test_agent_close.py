"""An agent that closes its stream right after its reply, against a real worker process:
the whole reply reaches the caller before the hang-up (real sockets, real websockets server)."""
from __future__ import annotations

import asyncio

import numpy

from audiogw.client.softphone import place_call
from audiogw.shared.mulaw import decode_mulaw, encode_mulaw
from test_agent import agent_server, burst, stream_sid  # noqa: F401  (agent_server is a fixture)

FRAME = 160  # samples per 20 ms at 8 kHz


def _reply(frames: int) -> numpy.ndarray:
    """A reply with no zero sample, so where it starts and ends in the recording is exact."""
    ramp = (numpy.arange(frames * FRAME - 37) * 53 % 16000 + 500).astype(numpy.int16)
    ramp[1::2] *= -1
    return ramp


def test_every_frame_of_the_reply_is_heard_before_the_hang_up_when_the_agent_closes(start_worker, agent_server):
    reply = _reply(frames=40)  # 0.8 s, sent in one burst: all of it is queued when the close arrives

    async def script(websocket, agent):
        await agent.wait("start")
        for message in burst(reply, stream_sid(agent), chunk=296):
            await websocket.send(message.decode())
        await websocket.close()

    agent = agent_server(script)
    worker = start_worker("agent", f"url={agent.url}")
    result = asyncio.run(place_call("127.0.0.1", worker.ia_port, seconds=5.0))
    assert result.hung_up_by == "server"
    heard = result.recorded
    expected = decode_mulaw(encode_mulaw(reply))
    loud = numpy.flatnonzero(heard)
    assert loud.size, "nothing of the reply was heard"
    start = int(loud[0])
    assert numpy.array_equal(heard[start : start + expected.size], expected), "the reply, whole and in order"
    assert not heard[start + expected.size :].any(), "then the padding of its last frame, nothing else"
    worker.wait_log("playing out")
    worker.wait_log("reason=agent_hangup")

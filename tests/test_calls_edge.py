"""The calls ROUTER never misses a request whose arrival a send of its own swallowed.

A ZeroMQ socket's FD is edge-triggered, and a send processes the socket's pending
commands, so a request that arrived just before an event was sent (an AMI event
handled between two reads) may never make the FD readable again. Found by
``bench/doorman.py``: after three conversations every later ``Dial`` went unanswered.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace

import zmq
import zmq.asyncio

from audiogw.shared.messages import Dial, DialStatus, LegStarted, decode_call_event, encode_call_message
from audiogw.supervisor.calls import CallControl

EXTENSION = "1201"


def test_a_request_that_arrives_before_an_event_is_sent_is_still_read(tmp_path) -> None:
    async def scenario() -> list[DialStatus]:
        context = zmq.Context()
        endpoint = f"ipc://{tmp_path}/calls.sock"
        supervisor = SimpleNamespace(extensions={EXTENSION: SimpleNamespace(config=SimpleNamespace(options={}))})
        control = CallControl(supervisor, context, endpoint)
        control.start()
        worker_context = zmq.asyncio.Context()
        worker = worker_context.socket(zmq.DEALER)
        identity = f"{EXTENSION}:4242".encode()
        worker.setsockopt(zmq.IDENTITY, identity)
        worker.connect(endpoint)
        statuses: list[DialStatus] = []
        try:
            for _ in range(5):
                call = str(uuid.uuid4())
                await worker.send(encode_call_message(LegStarted(extension=EXTENSION, uuid=call, leg="ia")))
                await asyncio.sleep(0.05)  # read by the ROUTER: the worker's identity is known
                await worker.send(encode_call_message(Dial(extension=EXTENSION, uuid=call, timeout=5)))
                time.sleep(0.05)  # the Dial reaches the ROUTER while its loop is busy ...
                control.send(identity, DialStatus(extension=EXTENSION, uuid=call, status="ringing"))  # ... then a send
                for _ in range(2):  # the ringing, then the Dial's own answer (no AMI: failed)
                    statuses.append(decode_call_event(await asyncio.wait_for(worker.recv(), 5.0)))
        finally:
            worker.close(linger=0)
            worker_context.term()
            await control.close()
            context.term()
        return statuses

    statuses = asyncio.run(scenario())
    assert [status.status for status in statuses] == ["ringing", "failed"] * 5
    assert all(status.reason == "no [asterisk] manager configured" for status in statuses[1::2])

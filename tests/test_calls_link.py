"""worker/calls.py CallLink: events dispatched by UUID, bad ones refused and counted, sends never block."""
from __future__ import annotations

import asyncio
import uuid

from audiogw.shared.messages import DialStatus, HangupLeg, LegStarted, encode_call_message
from audiogw.worker.calls import SEND_HIGH_WATER, CallLink


def test_events_reach_their_conversation_and_bad_ones_are_counted(tmp_path) -> None:
    async def body() -> None:
        link = CallLink(f"ipc://{tmp_path}/nobody.sock", "1201")
        call_uuid = uuid.uuid4()
        got: list = []
        link.register(call_uuid, got.append)
        event = DialStatus(extension="1201", uuid=str(call_uuid), status="busy")
        link.dispatch(encode_call_message(event))
        assert got == [event]
        link.dispatch(b"{not json")
        link.dispatch(b'{"type": "dial_status", "extension": "1201", "uuid": "x", "status": "busy"}')
        link.dispatch(encode_call_message(HangupLeg(extension="1202", uuid=str(call_uuid))))
        assert link.counters["calls_bad_events"] == 3 and len(got) == 1
        link.dispatch(encode_call_message(HangupLeg(extension="1201", uuid=str(uuid.uuid4()))))
        assert link.counters["calls_unknown_uuid"] == 1
        link.unregister(call_uuid, got.append)
        link.dispatch(encode_call_message(event))
        assert len(got) == 1 and link.counters["calls_unknown_uuid"] == 2
        await link.close()

    asyncio.run(body())


def test_a_send_with_no_supervisor_reading_returns_at_once_and_is_counted(tmp_path) -> None:
    async def body() -> None:
        link = CallLink(f"ipc://{tmp_path}/nobody.sock", "1201")  # nothing bound there: nobody reads
        request = LegStarted(extension="1201", uuid=str(uuid.uuid4()), leg="ia")
        # Requests queue up to the high-water mark (a supervisor that starts late still gets them),
        # then are refused at once, never waited for.
        results = [link.send(request) for _ in range(3 * SEND_HIGH_WATER)]
        assert results[0] is True and results[-1] is False
        assert link.counters["calls_dropped"] == results.count(False) > 0
        await link.close()

    asyncio.run(body())

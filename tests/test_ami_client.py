"""The AMI connection (supervisor/ami.py) against a fake AMI server on a local socket,
and call control's event logic (supervisor/calls.py) against a fake AMI."""
from __future__ import annotations

import asyncio
import os
import uuid
from types import SimpleNamespace

import pytest
import zmq

from audiogw.shared.messages import Dial, DialStatus, LegStarted, decode_call_event, encode_call_message
from audiogw.supervisor.ami import AmiClient, AmiError, AmiUnavailable, read_secret
from audiogw.supervisor.ami_protocol import AmiMessage, AmiParser
from audiogw.supervisor.calls import CallControl


class FakeAmi:
    """An AMI server: accepts one login (secret ``good``), answers Ping, records actions."""

    def __init__(self, secret: str = "good") -> None:
        self.secret = secret
        self.actions: list[AmiMessage] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader, writer) -> None:
        self.connections += 1
        self.writers.append(writer)
        writer.write(b"Asterisk Call Manager/9.0.0\r\n")
        parser = AmiParser(expect_banner=False)
        while data := await reader.read(65536):
            for action in parser.feed(data):
                self.actions.append(action)
                name, action_id = action.get("Action"), action.action_id
                if name == "Login":
                    ok = action.get("Secret") == self.secret
                    writer.write((f"Response: {'Success' if ok else 'Error'}\r\nActionID: {action_id}\r\n"
                                  f"Message: {'Authentication accepted' if ok else 'Authentication failed'}\r\n\r\n").encode())
                elif name == "Hang":
                    continue  # never answered
                else:
                    writer.write(f"Response: Success\r\nActionID: {action_id}\r\nPing: Pong\r\n\r\n".encode())
        writer.close()

    def event(self, text: str) -> None:
        for writer in self.writers:
            if not writer.is_closing():
                writer.write(text.encode())

    def drop(self) -> None:
        for writer in self.writers:
            writer.close()

    async def close(self) -> None:
        self.drop()
        self.server.close()


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def secret_file(tmp_path, secret: str = "good", mode: int = 0o600) -> str:
    path = tmp_path / "ami.secret"
    path.write_text(secret + "\n")
    os.chmod(path, mode)
    return str(path)


def test_read_secret_refuses_a_file_others_can_read(tmp_path):
    assert read_secret(secret_file(tmp_path)) == "good"
    with pytest.raises(PermissionError, match="readable by others"):
        read_secret(secret_file(tmp_path, mode=0o640))


def test_login_actions_events_and_reconnect(tmp_path):
    async def main() -> None:
        server = FakeAmi()
        port = await server.start()
        events: list[AmiMessage] = []
        states: list[str] = []
        client = AmiClient("127.0.0.1", port, "audiogw", secret_file(tmp_path), on_event=events.append,
                           on_state=states.append, backoff_initial=0.05, backoff_max=0.2)
        with pytest.raises(AmiUnavailable, match="is connecting"):
            client.send("Ping")  # never waits for a connection
        client.start()
        await until(lambda: client.connected)
        login = server.actions[0]
        assert login.get("Action") == "Login" and login.get("Username") == "audiogw" and login.get("Events") == "call,user"
        response = await client.action("Ping")
        assert response.get("Ping") == "Pong"
        server.event("Event: UserEvent\r\nUserEvent: AudiogwLeg\r\nLeg: ia\r\n\r\n")
        await until(lambda: events)
        assert events[0].get("Leg") == "ia"
        pending = client.send("Hang")  # never answered: the drop fails it
        server.drop()
        with pytest.raises(AmiUnavailable, match="connection lost"):
            await pending
        await until(lambda: client.connected and server.connections == 2)  # logged in again
        assert "down" in states and client.connects == 2
        with pytest.raises(TimeoutError, match="no answer"):
            await client.action("Hang", timeout=0.1)
        await client.close()
        await server.close()

    asyncio.run(main())


def test_a_refused_login_is_reported_and_retried(tmp_path, caplog):
    async def main() -> None:
        server = FakeAmi(secret="other")
        port = await server.start()
        client = AmiClient("127.0.0.1", port, "audiogw", secret_file(tmp_path), backoff_initial=0.05, backoff_max=0.1)
        client.start()
        await until(lambda: client.state == "login_failed")
        assert client.reason == "login refused: Authentication failed"
        server.secret = "good"  # the operator fixes manager.conf: the next try logs in
        await until(lambda: client.connected)
        await client.close()
        await server.close()

    asyncio.run(main())
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert refused and refused[0].levelname == "ERROR" and "Authentication failed" in refused[0].getMessage()
    assert all("good" not in r.getMessage() for r in caplog.records)


def test_nobody_listening_is_down_with_a_reason(tmp_path):
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        client = AmiClient("127.0.0.1", port, "audiogw", secret_file(tmp_path), backoff_initial=0.05)
        client.start()
        await until(lambda: client.state == "down")
        assert "connection refused" in client.reason
        with pytest.raises(AmiUnavailable, match="is down: connection refused"):
            await client.action("Ping")
        await client.close()

    asyncio.run(main())


# -- call control's dial logic, with a fake AMI ------------------------------------
class ScriptedAmi:
    def __init__(self) -> None:
        self.connected, self.state, self.reason, self.address = True, "connected", "", "127.0.0.1:5038"
        self.sent: list[tuple[str, list]] = []
        self.on_event = self.on_state = None
        self.refuse: str | None = None

    def new_action_id(self) -> str:
        return f"id-{len(self.sent)}"

    async def action(self, name, fields=(), *, action_id=None, timeout=5.0):
        self.sent.append((name, list(fields.items()) if isinstance(fields, dict) else list(fields)))
        if self.refuse:
            raise AmiError(name, AmiMessage((("Response", "Error"), ("Message", self.refuse))))
        return AmiMessage((("Response", "Success"),))

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


def event(**headers) -> AmiMessage:
    return AmiMessage(tuple(headers.items()))


def dial_setup(tmp_path):
    supervisor = SimpleNamespace(extensions={"1201": SimpleNamespace(config=SimpleNamespace(
        options={"resident": "PJSIP/a&PJSIP/b"}))})
    context = zmq.Context()
    ami = ScriptedAmi()
    calls = CallControl(supervisor, context, f"ipc://{tmp_path}/calls.sock", ami)
    worker = context.socket(zmq.DEALER)
    worker.setsockopt(zmq.IDENTITY, b"1201:7")
    worker.connect(f"ipc://{tmp_path}/calls.sock")
    # The ROUTER knows a peer once it has heard from it (ROUTER_MANDATORY: before that, an event
    # to it is undeliverable): the worker speaks first, as a real one does (LegStarted).
    worker.send(encode_call_message(LegStarted(extension="1201", uuid=str(uuid.uuid4()), leg="ia")))
    assert calls.socket.poll(5000)
    calls._read()
    return context, ami, calls, worker


def statuses(worker) -> list[str]:
    got = []
    while worker.poll(200):
        got.append(decode_call_event(worker.recv()).status)
    return got


def test_two_destinations_one_busy_one_answers_and_the_originate_fields(tmp_path):
    context, ami, calls, worker = dial_setup(tmp_path)
    call = str(uuid.uuid4())

    async def main() -> None:
        calls.handle(b"1201:7", encode_call_message(Dial(extension="1201", uuid=call, timeout=20)))
        await until(lambda: ami.sent)
        await until(lambda: worker.poll(0) or True)
        name, fields = ami.sent[0]
        assert name == "Originate"
        values = dict(fields)
        assert values["Channel"] == f"Local/{call}@audiogw-1201-resident"
        assert (values["Context"], values["Exten"], values["Async"]) == ("audiogw-1201-retorno", call, "true")
        assert ("Variable", "AUDIOGW_RESIDENT=PJSIP/a&PJSIP/b") in fields
        assert ("Variable", "AUDIOGW_DIAL_TIMEOUT=20") in fields
        dial = calls.dials[call]
        for _ in range(2):
            calls.on_ami_event(event(Event="DialBegin", Uniqueid=dial.other_id))
        calls.on_ami_event(event(Event="DialEnd", Uniqueid=dial.other_id, DialStatus="BUSY"))  # one of two
        calls.on_ami_event(event(Event="DialEnd", Uniqueid=dial.other_id, DialStatus="ANSWER"))
        calls.on_ami_event(event(Event="OriginateResponse", ActionID=dial.action_id, Response="Success"))
        calls.on_ami_event(event(Event="Hangup", Uniqueid=dial.channel_id, Channel="Local/x;1"))
        calls.on_ami_event(event(Event="Hangup", Uniqueid=dial.channel_id, Channel="Local/x;1"))  # once only

    asyncio.run(main())
    assert statuses(worker) == ["ringing", "answered", "hangup"]
    assert call not in calls.dials and not calls.dial_by_id
    assert calls.outcomes == {"ringing": 1, "answered": 1, "hangup": 1}
    worker.close(0)
    calls.socket.close(0)
    context.term()


def test_dials_own_outcome_wins_over_an_originate_response_that_overtook_it(tmp_path):
    """Seen through the real Asterisk under load: a busy resident's OriginateResponse (Reason 0, sent
    straight from the originating thread) arrived before Dial()'s DialEnd BUSY (through Stasis)."""
    from audiogw.supervisor.calls import ORIGINATE_SETTLE

    context, ami, calls, worker = dial_setup(tmp_path)
    busy, failing = str(uuid.uuid4()), str(uuid.uuid4())

    async def main() -> None:
        calls.handle(b"1201:7", encode_call_message(Dial(extension="1201", uuid=busy, timeout=20)))
        await until(lambda: busy in calls.dials)
        dial = calls.dials[busy]
        calls.on_ami_event(event(Event="DialBegin", Uniqueid=dial.other_id))
        calls.on_ami_event(event(Event="OriginateResponse", ActionID=dial.action_id, Response="Failure", Reason="0"))
        await asyncio.sleep(ORIGINATE_SETTLE / 5)
        calls.on_ami_event(event(Event="DialEnd", Uniqueid=dial.other_id, DialStatus="BUSY"))
        # An Originate that fails with no Dial() to say otherwise fails after the settle.
        calls.handle(b"1201:7", encode_call_message(Dial(extension="1201", uuid=failing, timeout=20)))
        await until(lambda: failing in calls.dials)
        dial = calls.dials[failing]
        calls.on_ami_event(event(Event="OriginateResponse", ActionID=dial.action_id, Response="Failure", Reason="0"))
        await asyncio.sleep(ORIGINATE_SETTLE * 2)

    asyncio.run(main())
    events = []
    while worker.poll(200):
        events.append(decode_call_event(worker.recv()))
    assert [(e.uuid, e.status) for e in events] == [(busy, "ringing"), (busy, "busy"), (failing, "failed")], events
    assert events[-1].reason == "originate failed: cannot create the channel (no such extension or context?)"
    assert not calls.dials and not calls.dial_by_id
    worker.close(0)
    calls.socket.close(0)
    context.term()


def test_a_refused_originate_and_a_lost_connection_fail_the_dial(tmp_path):
    context, ami, calls, worker = dial_setup(tmp_path)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())

    async def main() -> None:
        ami.refuse = "Originate failed"
        calls.handle(b"1201:7", encode_call_message(Dial(extension="1201", uuid=first)))
        await until(lambda: first not in calls.dials and ami.sent)
        ami.refuse = None
        calls.handle(b"1201:7", encode_call_message(Dial(extension="1201", uuid=second)))
        await until(lambda: len(ami.sent) == 2 and second in calls.dials)
        await asyncio.sleep(0)
        ami.connected, ami.state, ami.reason = False, "down", "connection refused"
        calls.on_ami_state("down")

    asyncio.run(main())
    events = []
    while worker.poll(200):
        events.append(decode_call_event(worker.recv()))
    assert events == [
        DialStatus(extension="1201", uuid=first, status="failed", reason="originate: Originate: Originate failed"),
        DialStatus(extension="1201", uuid=second, status="failed", reason="AMI connection lost (connection refused)"),
    ]
    assert not calls.dials and not calls.dial_by_id
    worker.close(0)
    calls.socket.close(0)
    context.term()


def test_the_visitor_leaving_hangs_up_the_resident_still_ringing(tmp_path):
    from audiogw.shared.messages import LegEnded

    context, ami, calls, worker = dial_setup(tmp_path)
    call = str(uuid.uuid4())

    async def main() -> None:
        calls.handle(b"1201:7", encode_call_message(LegStarted(extension="1201", uuid=call, leg="ia")))
        calls.handle(b"1201:7", encode_call_message(Dial(extension="1201", uuid=call)))
        await until(lambda: ami.sent)
        dial = calls.dials[call]
        calls.on_ami_event(event(Event="DialBegin", Uniqueid=dial.other_id))
        calls.handle(b"1201:7", encode_call_message(LegEnded(extension="1201", uuid=call, leg="ia")))
        await until(lambda: len(ami.sent) == 2)
        assert ami.sent[1] == ("Hangup", [("Channel", dial.channel_id), ("Cause", "16")])

    asyncio.run(main())
    assert statuses(worker) == ["ringing"]
    worker.close(0)
    calls.socket.close(0)
    context.term()

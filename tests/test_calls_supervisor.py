"""Call control in a real supervisor, without Asterisk: the calls socket, REST hangup, AMI absent or down."""
from __future__ import annotations

import time
import uuid

import pytest

from audiogw.client.asterisk import free_tcp_port
from audiogw.shared.messages import Dial, DialStatus, HangupLeg, LegEnded, LegStarted, SendDtmf
from audiogw.shared.net import free_port_block
from calls_fixture import (
    ACCOUNT, EXTENSION, FakeWorker, ami_connected, counter, healthz, rest_hangup, write_calls_config,
)
from conftest import wait_for
from supervisor_fixture import SupervisorProcess, kill_tree


@pytest.fixture
def calls_supervisor(tmp_path):
    started = []

    def start(**options) -> SupervisorProcess:
        base = free_port_block(20)
        folder = tmp_path / f"s{len(started)}"
        folder.mkdir()
        supervisor = SupervisorProcess(folder, write_calls_config(folder, base, **options), base)
        started.append(supervisor)
        return supervisor.start()

    yield start
    for supervisor in started:
        supervisor.stop()
        if supervisor.process is not None:
            kill_tree(supervisor.process.pid)


def test_dial_without_a_manager_fails_with_the_reason_and_rest_hangs_up_the_conversation(calls_supervisor):
    supervisor = calls_supervisor(manager=None)
    worker = FakeWorker(supervisor)
    call = str(uuid.uuid4())
    try:
        worker.send(Dial(extension=EXTENSION, uuid=call, timeout=5))
        status = worker.receive()
        assert status == DialStatus(extension=EXTENSION, uuid=call, status="failed",
                                    reason="no [asterisk] manager configured")
        # Unknown conversation: 404 (Pipecat reads it as "already ended").
        code, body, _ = rest_hangup(supervisor, call)
        assert code == 404, body
        worker.send(LegStarted(extension=EXTENSION, uuid=call, leg="ia"))
        worker.send(LegStarted(extension=EXTENSION, uuid=call, leg="retorno"))
        code, body, headers = rest_hangup(supervisor, call, password="wrong-token-0123456789")
        assert code == 401 and "WWW-Authenticate" in headers, body
        assert worker.nothing_within(0.3)  # a refused request hangs nothing up
        code, body, _ = rest_hangup(supervisor, call)
        assert code == 200, body
        assert body["sid"] == "CA" + uuid.UUID(call).hex and body["account_sid"] == ACCOUNT
        assert worker.receive() == HangupLeg(extension=EXTENSION, uuid=call, leg=None)
        assert worker.nothing_within(0.3)  # one worker holds both legs: one HangupLeg
        code, body, _ = rest_hangup(supervisor, call, body=b"Status=ringing")
        assert code == 400, body
        worker.send(LegEnded(extension=EXTENSION, uuid=call, leg="ia"))
        worker.send(LegEnded(extension=EXTENSION, uuid=call, leg="retorno"))
        wait_for(lambda: rest_hangup(supervisor, call)[0] == 404, 5, what="the ended conversation to be forgotten")
        assert counter(supervisor, "audiogw_dial_outcomes", status="failed") == 1
        assert counter(supervisor, "audiogw_rest_requests", code="401") == 1
        assert ami_connected(supervisor) is None  # no manager: no series
        assert "ami" not in healthz(supervisor)[1]
    finally:
        worker.close()


def test_bad_call_messages_are_refused_and_counted(calls_supervisor):
    supervisor = calls_supervisor(manager=None)
    worker = FakeWorker(supervisor)
    try:
        worker.socket.send(b"{not json")
        worker.send(Dial(extension="1299", uuid=str(uuid.uuid4())))  # another extension than the worker's
        worker.send(SendDtmf(extension=EXTENSION, uuid=str(uuid.uuid4()), leg="ia", digits="1"))  # no AMI
        wait_for(lambda: counter(supervisor, "audiogw_calls_refused") >= 3, 5, what="three refusals counted")
        assert counter(supervisor, "audiogw_calls_refused", reason="malformed") == 1
        assert counter(supervisor, "audiogw_calls_refused", reason="wrong_extension") == 1
        assert worker.nothing_within(0.2)
        log = supervisor.log()
        # The first refusal of a peer is logged in full; its next ones are summed (rate-limited).
        assert "calls: refused from 1201:4242 (malformed): call request is not JSON" in log
        # The supervisor still serves the next request.
        call = str(uuid.uuid4())
        worker.send(Dial(extension=EXTENSION, uuid=call))
        assert worker.receive().status == "failed"
    finally:
        worker.close()


def test_rest_is_403_without_an_auth_token(calls_supervisor):
    supervisor = calls_supervisor(manager=None, auth_token=None)
    code, body, _ = rest_hangup(supervisor, str(uuid.uuid4()))
    assert code == 403 and "auth_token" in body["message"]


def test_ami_down_fails_a_dial_at_once_with_the_reason(calls_supervisor):
    port = free_tcp_port()  # nobody listens
    supervisor = calls_supervisor(manager=f"127.0.0.1:{port}")
    worker = FakeWorker(supervisor)
    try:
        code, body = healthz(supervisor)
        assert code == 200, body  # AMI down costs dial and DTMF, not the audio: named, not a 503
        assert body["ami"]["state"] in ("down", "connecting") and body["ami"]["address"] == f"127.0.0.1:{port}"
        wait_for(lambda: healthz(supervisor)[1]["ami"]["state"] == "down", 5, what="AMI reported down")
        assert "connection refused" in healthz(supervisor)[1]["ami"]["reason"]
        call = str(uuid.uuid4())
        started = time.monotonic()
        worker.send(Dial(extension=EXTENSION, uuid=call, timeout=30))
        status = worker.receive(timeout=5)
        assert status.status == "failed" and f"AMI 127.0.0.1:{port} is down" in status.reason, status
        assert time.monotonic() - started < 5  # never waits for the dial's own timeout
        assert ami_connected(supervisor) == 0
    finally:
        worker.close()

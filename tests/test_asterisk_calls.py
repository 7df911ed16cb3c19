"""Call control through a real Asterisk: AMI Originate, dial statuses, DTMF, remote hang-up, login errors.

A real supervisor serves one ``agent`` extension (its agent unreachable: the legs stay up
in silence) with ``[asterisk] manager`` pointing at a private Asterisk whose
``manager.conf`` is the block ``ctl dialplan`` prints, and whose dialplan is the generated
agent-driven variant plus the test's contexts. The test plays the worker on the calls
socket (``calls_fixture.FakeWorker``). The resident is a Local channel into
``[fake-resident]`` (answers and runs AudioSocket() to a fake phone, or Busy(), or rings
for ever, as the global ``RESIDENT_MODE`` says); the visitor is a Local channel whose
``;2`` runs the generated ``[audiogw-1201]`` and whose ``;1`` runs AudioSocket() to the
visitor's fake phone.
"""
from __future__ import annotations

import time
import uuid

import pytest

from asterisk_fixture import assert_no_asterisk_errors
from asterisk_phone import Script
from audiogw.shared.messages import Dial, HangupRemote, SendDtmf
from audiogw.shared.net import free_port_block
from audiogw.supervisor.dialplan import manager_conf_lines
from calls_fixture import (
    AMI_SECRET, AMI_USER, EXTENSION, FakeWorker, ami_connected, counter, healthz, write_calls_config,
)
from conftest import wait_for
from supervisor_fixture import SupervisorProcess, kill_tree

TEST_CONTEXTS = """
[fake-resident]
exten => s,1,GotoIf($["${{RESIDENT_MODE}}" = "busy"]?busy)
 same => n,GotoIf($["${{RESIDENT_MODE}}" = "noanswer"]?noanswer)
 same => n,Answer()
 same => n,AudioSocket(${{RESIDENT_UUID}},{resident})
 same => n,Hangup()
 same => n(busy),Busy(5)
 same => n,Hangup()
 same => n(noanswer),Ringing()
 same => n,Wait(30)
 same => n,Hangup()

[visitor-phone]
exten => s,1,Answer()
 same => n,AudioSocket(${{VISITOR_UUID}},{visitor})
 same => n,Hangup()
"""


class Setup:
    def __init__(self, asterisk, supervisor: SupervisorProcess, worker: FakeWorker, resident, visitor):
        self.asterisk, self.supervisor, self.worker = asterisk, supervisor, worker
        self.resident, self.visitor = resident, visitor

    def legs_seen(self) -> dict[str, list[str]]:
        """uuid -> leg kinds the worker logged ("leg start") so far."""
        legs: dict[str, list[str]] = {}
        for line in self.supervisor.log().splitlines():
            if "leg start" in line and f"extension={EXTENSION}" in line:
                fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
                legs.setdefault(fields["uuid"], []).append(fields["leg"])
        return legs


@pytest.fixture
def calls_setup(tmp_path, private_asterisk, phone):
    started: list[SupervisorProcess] = []
    workers: list[FakeWorker] = []

    def start(secret: str = AMI_SECRET) -> Setup:
        resident, visitor = phone(), phone()
        asterisk = private_asterisk("[general]\n[globals]\n",
                                    manager_conf_lines(AMI_USER, "{ami_port}", secret=AMI_SECRET))
        base = free_port_block(20)
        config = write_calls_config(tmp_path, base, manager=f"127.0.0.1:{asterisk.ami_port}", secret=secret)
        supervisor = SupervisorProcess(tmp_path, config, base)
        started.append(supervisor)
        supervisor.start()
        generated = supervisor.ctl("dialplan", {"id": EXTENSION})["text"]
        assert "Originate(" not in generated and f"[audiogw-{EXTENSION}-resident]" in generated
        asterisk.reload_dialplan("[general]\n[globals]\nRESIDENT_MODE = answer\n\n" + generated + "\n"
                                 + TEST_CONTEXTS.format(resident=resident.address, visitor=visitor.address))
        worker = FakeWorker(supervisor)
        workers.append(worker)
        return Setup(asterisk, supervisor, worker, resident, visitor)

    yield start
    for worker in workers:
        worker.close()
    for supervisor in started:
        supervisor.stop()
        if supervisor.process is not None:
            kill_tree(supervisor.process.pid)


def connected(setup: Setup) -> Setup:
    wait_for(lambda: ami_connected(setup.supervisor) == 1, 15, what="the supervisor to log in to AMI")
    return setup


def test_dial_rings_the_resident_into_the_retorno_port_with_the_visitors_uuid(calls_setup):
    setup = connected(calls_setup())
    call, resident_call = str(uuid.uuid4()), str(uuid.uuid4())
    setup.asterisk.set_global("RESIDENT_UUID", resident_call)
    setup.resident.expect(resident_call, Script(rate=8000, seconds=2.0))  # the resident hangs up after 2 s
    setup.worker.send(Dial(extension=EXTENSION, uuid=call, timeout=10))
    events = setup.worker.statuses({"hangup", "busy", "no_answer", "failed"}, timeout=15)
    assert [event.status for event in events] == ["ringing", "answered", "hangup"], events
    assert all(event.uuid == call and event.leg == "retorno" for event in events)
    setup.resident.wait_call(resident_call, 5)
    assert setup.legs_seen().get(call) == ["retorno"], setup.legs_seen()  # the retorno port, the visitor's UUID
    assert counter(setup.supervisor, "audiogw_dial_outcomes", status="answered") == 1
    assert setup.asterisk.wait_no_channels(5), setup.asterisk.channels()
    assert_no_asterisk_errors(setup.asterisk)


def test_busy_and_no_answer(calls_setup):
    setup = connected(calls_setup())
    setup.asterisk.set_global("RESIDENT_MODE", "busy")
    busy = str(uuid.uuid4())
    setup.worker.send(Dial(extension=EXTENSION, uuid=busy, timeout=10))
    events = setup.worker.statuses({"answered", "hangup", "busy", "no_answer", "failed"})
    assert events[-1].status == "busy" and {e.status for e in events[:-1]} <= {"ringing"}, events
    setup.asterisk.set_global("RESIDENT_MODE", "noanswer")
    unanswered = str(uuid.uuid4())
    setup.worker.send(Dial(extension=EXTENSION, uuid=unanswered, timeout=1.5))
    events = setup.worker.statuses({"answered", "hangup", "busy", "no_answer", "failed"})
    assert [e.status for e in events] == ["ringing", "no_answer"], events
    assert setup.worker.nothing_within(0.5)  # nothing after the outcome
    assert setup.asterisk.wait_no_channels(5), setup.asterisk.channels()
    assert busy not in setup.legs_seen() and unanswered not in setup.legs_seen()
    assert_no_asterisk_errors(setup.asterisk)


def test_hangup_remote_cancels_a_resident_still_ringing(calls_setup):
    setup = connected(calls_setup())
    setup.asterisk.set_global("RESIDENT_MODE", "noanswer")
    call = str(uuid.uuid4())
    setup.worker.send(Dial(extension=EXTENSION, uuid=call, timeout=30))
    assert setup.worker.receive().status == "ringing"
    started = time.monotonic()
    setup.worker.send(HangupRemote(extension=EXTENSION, uuid=call, leg="retorno"))
    events = setup.worker.statuses({"answered", "hangup", "busy", "no_answer", "failed"}, timeout=10)
    assert (events[-1].status, events[-1].reason) == ("hangup", "cancelled"), events
    assert time.monotonic() - started < 10  # not the dial's 30 s
    assert counter(setup.supervisor, "audiogw_calls_refused") == 0  # Asterisk took the Hangup
    assert setup.asterisk.wait_no_channels(5), setup.asterisk.channels()
    assert_no_asterisk_errors(setup.asterisk)


def test_send_dtmf_reaches_the_visitors_phone(calls_setup):
    setup = connected(calls_setup())
    visitor_call = str(uuid.uuid4())
    setup.asterisk.set_global("VISITOR_UUID", visitor_call)
    setup.visitor.expect(visitor_call, Script(rate=8000, seconds=6.0))
    setup.asterisk.originate(f"Local/{EXTENSION}@audiogw-{EXTENSION}", extension="s@visitor-phone")
    legs = wait_for(lambda: setup.legs_seen() or None, 10, what="the visitor's leg at the worker")
    [(call, kinds)] = legs.items()
    assert kinds == ["ia"]
    setup.visitor.wait_call(visitor_call, 5)
    setup.worker.send(SendDtmf(extension=EXTENSION, uuid=call, leg="ia", digits="1#"))
    phone_call = setup.visitor.wait_call(visitor_call)
    wait_for(lambda: phone_call.dtmf() == "1#", 10, what=f"DTMF 1# at the visitor's phone (got {phone_call.dtmf()!r})")
    setup.visitor.wait_ended(visitor_call)
    assert counter(setup.supervisor, "audiogw_calls_refused") == 0
    assert setup.asterisk.wait_no_channels(5), setup.asterisk.channels()
    assert_no_asterisk_errors(setup.asterisk)


def test_wrong_secret_is_reported_as_a_login_error(calls_setup):
    setup = calls_setup(secret="not-the-secret")
    wait_for(lambda: healthz(setup.supervisor)[1].get("ami", {}).get("state") == "login_failed", 15,
             what="the refused login in /healthz")
    code, body = healthz(setup.supervisor)
    assert code == 200 and "login refused: Authentication failed" in body["ami"]["reason"], body
    assert ami_connected(setup.supervisor) == 0
    assert f"login as '{AMI_USER}' refused: Authentication failed" in setup.supervisor.log()
    assert "not-the-secret" not in setup.supervisor.log()
    call = str(uuid.uuid4())
    setup.worker.send(Dial(extension=EXTENSION, uuid=call))
    status = setup.worker.receive(5)
    assert status.status == "failed" and "login_failed" in status.reason, status
    # Asterisk logs the refused login as a NOTICE, not an ERROR.
    assert_no_asterisk_errors(setup.asterisk)


def test_asterisk_stopped_fails_the_next_dial_at_once(calls_setup):
    setup = connected(calls_setup())
    setup.asterisk.stop()
    call = str(uuid.uuid4())
    started = time.monotonic()
    setup.worker.send(Dial(extension=EXTENSION, uuid=call, timeout=30))
    status = setup.worker.receive(5)
    assert status.status == "failed" and "AMI" in status.reason, status
    assert time.monotonic() - started < 5
    wait_for(lambda: healthz(setup.supervisor)[1].get("ami", {}).get("state") == "down", 10, what="AMI down in /healthz")

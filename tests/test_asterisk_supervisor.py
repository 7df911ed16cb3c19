"""A real supervisor behind a real Asterisk: the dialplan audiogw generates, and a worker's kill -9.

The visitor is a Local channel whose ``;2`` runs the generated ``[audiogw-ID]``
context and whose ``;1`` reaches the test's visitor phone; the resident's dial
string (``AUDIOGW_RESIDENT_ID``) is another Local channel to a resident phone.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import numpy
import pytest

from asterisk_fixture import assert_no_asterisk_errors
from asterisk_phone import PhoneCall, Script, frames_of, locate_frames, noise
from audiogw.shared.net import free_port_block
from conftest import wait_for
from supervisor_fixture import SupervisorProcess, write_config

EXTENSION = "1201"


@pytest.fixture
def real_supervisor(tmp_path):
    started: list[SupervisorProcess] = []

    def start(app: str) -> SupervisorProcess:
        base = free_port_block(20)
        supervisor = SupervisorProcess(tmp_path, write_config(tmp_path, base, extensions=1, app=app), base).start()
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        supervisor.stop()


def ctl_dialplan(supervisor: SupervisorProcess) -> str:
    """What a user pastes into extensions.conf: ``audiogw ctl dialplan ID``."""
    result = subprocess.run(
        [sys.executable, "-c", "from audiogw.client.cli import main; main()", "ctl", "--config",
         str(supervisor.config_path), "dialplan", EXTENSION],
        capture_output=True, text=True, timeout=20, cwd=supervisor.folder,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def phone_context(name: str, phone_address: str, call_uuid: str) -> str:
    return (f"[{name}]\n"
            f"exten => s,1,Answer()\n"
            f" same => n,AudioSocket({call_uuid},{phone_address})\n"
            f" same => n,Hangup()\n")


def assert_heard(listener: PhoneCall, said: numpy.ndarray, what: str) -> None:
    """Every 20 ms frame of ``said`` reached ``listener`` unchanged and in order."""
    found = locate_frames(listener, frames_of(said, 8000))
    missing = [index for index, where in enumerate(found) if where is None]
    assert not missing, f"{what}: {len(missing)} of {len(found)} frames not heard unchanged (first {missing[:5]})"
    steps = numpy.diff(found)
    assert (steps >= 1).all(), f"{what}: frames out of order"


def test_generated_dialplan_bridges_visitor_and_resident(real_supervisor, private_asterisk, phone):
    supervisor = real_supervisor("bridge")
    generated = ctl_dialplan(supervisor)
    assert f"[audiogw-{EXTENSION}]" in generated and f"[audiogw-{EXTENSION}-retorno]" in generated
    visitor, resident = phone(), phone()
    visitor_uuid, resident_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    lead = 1.0  # the resident joins once the Originate in the dialplan has rung and answered them
    visitor_says = noise(1.5, 8000, seed=21)
    resident_says = noise(1.5, 8000, seed=22)
    silence = numpy.zeros(int(lead * 8000), numpy.int16)
    visitor.expect(visitor_uuid, Script(rate=8000, audio=numpy.concatenate([silence, visitor_says]), seconds=lead + 2.3))
    resident.expect(resident_uuid, Script(rate=8000, audio=numpy.concatenate([silence, resident_says]), seconds=lead + 2.5))
    asterisk = private_asterisk(
        "[general]\n[globals]\n"
        f"AUDIOGW_RESIDENT_{EXTENSION} = Local/s@fake-resident\n\n"
        + generated + "\n"
        + phone_context("visitor-phone", visitor.address, visitor_uuid) + "\n"
        + phone_context("fake-resident", resident.address, resident_uuid)
    )
    asterisk.originate(f"Local/{EXTENSION}@audiogw-{EXTENSION}", extension="s@visitor-phone")
    try:
        visitor_call = visitor.wait_call(visitor_uuid, 5)
        resident_call = resident.wait_call(resident_uuid, 5)
    except AssertionError as error:
        raise AssertionError(f"{error}\nAsterisk's log:\n{asterisk.log_text()}\nchannels: {asterisk.channels()}") from None
    visitor.wait_ended(visitor_uuid)
    resident.wait_ended(resident_uuid)
    log = supervisor.log()
    legs = {}
    for line in log.splitlines():
        if "leg start" in line and f"extension={EXTENSION}" in line:
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            legs[fields["leg"]] = fields["uuid"]
    assert set(legs) == {"ia", "retorno"}, f"legs seen by audiogw: {legs}\n{log[-3000:]}"
    assert legs["ia"] == legs["retorno"], f"the two legs carry different UUIDs: {legs}"
    assert_heard(resident_call, visitor_says, "visitor -> resident")
    assert_heard(visitor_call, resident_says, "resident -> visitor")
    assert asterisk.wait_no_channels(5), asterisk.channels()
    assert_no_asterisk_errors(asterisk)


def test_kill_9_of_a_worker_mid_call_hangs_up_cleanly_and_the_next_call_is_served(real_supervisor, private_asterisk, phone):
    supervisor = real_supervisor("echo")
    caller = phone()
    asterisk = private_asterisk(f"""[general]
[gateway]
exten => _[0-9a-f].,1,Answer()
 same => n,AudioSocket(${{EXTEN}},127.0.0.1:{supervisor.base_port})
 same => n,Hangup()

[phone]
exten => _[0-9a-f].,1,Answer()
 same => n,AudioSocket(${{EXTEN}},{caller.address})
 same => n,Hangup()
""")
    doomed = str(uuid.uuid4())
    caller.expect(doomed, Script(rate=8000, audio=noise(8.0, 8000, seed=31), seconds=8.0))
    asterisk.originate(f"Local/{doomed}@gateway", extension=f"{doomed}@phone")
    call = caller.wait_call(doomed)
    wait_for(lambda: len(call.audio_frames()) >= 25, 5, what="the echo to flow")
    old_pid = supervisor.pids()[EXTENSION]
    os.kill(old_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    assert call.ended.wait(5), "Asterisk kept the call up after its worker died"
    assert call.closed_by == "asterisk"
    hung_up_after = time.monotonic() - killed_at
    assert asterisk.wait_no_channels(5), f"channels left after the worker died: {asterisk.channels()}"
    wait_for(lambda: supervisor.running_states() and supervisor.pids()[EXTENSION] != old_pid, 10,
             what="the supervisor to restart the worker")

    served = str(uuid.uuid4())
    spoken = noise(1.0, 8000, seed=32)
    caller.expect(served, Script(rate=8000, audio=numpy.concatenate([numpy.zeros(1600, numpy.int16), spoken]), seconds=1.8))
    asterisk.originate(f"Local/{served}@gateway", extension=f"{served}@phone")
    next_call = caller.wait_ended(served)
    assert next_call.closed_by == "phone", "the next call did not last"
    assert_heard(next_call, spoken, "echo on the next call")
    assert asterisk.wait_no_channels(5), asterisk.channels()
    assert hung_up_after < 5
    # A process killed with frames still unread in its socket makes the kernel reset the
    # connection (RST), and Asterisk logs that one read as an ERROR (seen about 1 run in 6:
    # it depends on where the kill lands between two frames). The call itself ends cleanly,
    # as asserted above. Any other ERROR, or more than that one, fails.
    reset = "Failed to read header from AudioSocket because: Connection reset by peer"
    assert sum(reset in line for line in asterisk.errors()) <= 1
    assert_no_asterisk_errors(asterisk, expected=(reset,))

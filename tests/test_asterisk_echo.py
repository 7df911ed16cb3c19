"""Echo and DTMF through a real Asterisk: the app form, AudioSocket() at 8 kHz.

A Local channel carries each call: ``;2`` runs ``AudioSocket()`` to a real
worker, ``;1`` runs ``AudioSocket()`` to the test's fake phone, and Asterisk
relays the audio between the two.
"""
from __future__ import annotations

import uuid

import numpy

from asterisk_fixture import assert_no_asterisk_errors
from asterisk_phone import Script, frames_of, locate_frames, noise

LEAD_IN = 0.2  # seconds of silence frames before the noise: the first frames may precede the far half


def app_dialplan(worker_port: int, phone_address: str, before_phone: str = "") -> str:
    return f"""[general]
[gateway]
exten => _[0-9a-f].,1,Answer()
 same => n,AudioSocket(${{EXTEN}},127.0.0.1:{worker_port})
 same => n,Hangup()

[phone]
exten => _[0-9a-f].,1,Answer()
{before_phone} same => n,AudioSocket(${{EXTEN}},{phone_address})
 same => n,Hangup()
"""


def test_app_form_echo_is_bit_exact(start_worker, private_asterisk, phone):
    worker = start_worker("echo")
    caller = phone()
    asterisk = private_asterisk(app_dialplan(worker.ia_port, caller.address))
    spoken = noise(1.5, 8000, seed=11)
    call = str(uuid.uuid4())
    caller.expect(call, Script(rate=8000, audio=numpy.concatenate([numpy.zeros(int(LEAD_IN * 8000), numpy.int16), spoken]),
                               seconds=LEAD_IN + 2.2))
    asterisk.originate(f"Local/{call}@gateway", extension=f"{call}@phone")
    heard_call = caller.wait_ended(call)
    assert heard_call.closed_by == "phone"
    assert heard_call.rates() == {8000}
    # Bit-exact: every frame the phone said comes back unchanged, once, in order. The worker may
    # send a silence frame where an inbound frame came late (an underrun), which shifts what
    # follows by one frame: that is jitter, not a changed sample.
    said = frames_of(spoken, 8000)
    found = locate_frames(heard_call, said)
    missing = [index for index, where in enumerate(found) if where is None]
    assert not missing, f"{len(missing)} of {len(said)} frames did not come back unchanged, first {missing[:5]}"
    steps = numpy.diff(found)
    assert (steps >= 1).all(), f"frames came back out of order: {found}"
    inserted = int((steps - 1).sum())
    assert inserted <= 5, f"{inserted} frames inserted between the echoed ones"
    arrivals = heard_call.audio_frames()
    sent_at = heard_call.sent[int(LEAD_IN * 50)][0]
    delay_ms = (arrivals[found[0]][0] - sent_at) * 1000
    assert 0 < delay_ms < 200, f"echo delay {delay_ms:.1f} ms"
    [record] = worker.wait_legs(uuid=call)
    assert record.reason == "peer_closed"
    assert asterisk.wait_no_channels(5), asterisk.channels()
    assert_no_asterisk_errors(asterisk)


def test_dtmf_from_asterisk_reaches_the_worker(start_worker, private_asterisk, phone):
    """SendDTMF() on the phone's half: the digits cross the Local channel and reach audiogw as 0x03."""
    worker = start_worker("echo")
    caller = phone()
    digits = "12#9*"
    asterisk = private_asterisk(app_dialplan(worker.ia_port, caller.address,
                                             before_phone=f" same => n,SendDTMF({digits},80,60)\n"))
    call = str(uuid.uuid4())
    caller.expect(call, Script(rate=8000, seconds=1.0))
    asterisk.originate(f"Local/{call}@gateway", extension=f"{call}@phone")
    caller.wait_ended(call)
    [record] = worker.wait_legs(uuid=call)
    assert record.dtmf == digits, record
    assert asterisk.wait_no_channels(5), asterisk.channels()
    assert_no_asterisk_errors(asterisk)

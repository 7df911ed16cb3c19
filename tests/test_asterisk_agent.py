"""The agent app with the reference agent (`audiogw demo-agent`) through a real Asterisk.

The demo agent greets every stream with ``greeting.wav`` as one burst of µ-law
media messages; the caller must hear all of it, whichever way Asterisk reaches
the worker.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import uuid

import numpy
import pytest

from asterisk_fixture import assert_no_asterisk_errors
from asterisk_phone import Script, find_offset, frame_scores
from audiogw.client.asterisk import free_tcp_port
from audiogw.client.demo_agent import DEFAULT_PROMPTS
from audiogw.shared.wav import read_wav
from conftest import wait_for


@pytest.fixture
def demo_agent(tmp_path):
    log_path = tmp_path / "demo-agent.log"
    port = free_tcp_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "audiogw.client.demo_agent", "--port", str(port)],
                                   stdout=log, stderr=log)

    def url():
        if process.poll() is not None:
            raise AssertionError(f"demo agent exited {process.returncode}:\n{log_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return None
        return f"ws://127.0.0.1:{port}/"

    yield wait_for(url, 15, what="the demo agent to listen"), log_path
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


FORMS = {
    # app form: AudioSocket() at 8 kHz, the phone talks (silence frames) at once
    "app-8k": ("Answer()\n same => n,AudioSocket(${{EXTEN}},127.0.0.1:{port})", 8000, 0.0, 0),
    # channel driver at 16 kHz, the phone talks at once: "auto" learns 16 kHz before the greeting
    "driver-slin16-talking": ("Dial(AudioSocket/127.0.0.1:{port}/${{EXTEN}}/c(slin16))", 16000, 0.0, 0),
    # channel driver at 16 kHz, and a caller who says nothing for the first 0.3 s: the greeting
    # starts at 8 kHz and the worker switches at 0.3 s. What the worker sends is whole (checked
    # without Asterisk, every frame scores 1.0), but after Asterisk has translated 8 kHz for a
    # while, the last frame of each note (a frame half silence) comes out altered: 3 frames allowed.
    "driver-slin16-silent-start": ("Dial(AudioSocket/127.0.0.1:{port}/${{EXTEN}}/c(slin16))", 16000, 0.3, 3),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_caller_hears_the_demo_agents_whole_greeting(start_worker, private_asterisk, phone, demo_agent, form):
    reach, rate, silent_for, asterisk_may_alter = FORMS[form]
    url, agent_log = demo_agent
    worker = start_worker("agent", f"url={url}")
    caller = phone()
    phone_reach = ("Answer()\n same => n,AudioSocket(${EXTEN}," + caller.address + ")" if rate == 8000
                   else f"Dial(AudioSocket/{caller.address}/${{EXTEN}}/c(slin16))")
    asterisk = private_asterisk(f"""[general]
[gateway]
exten => _[0-9a-f].,1,{reach.format(port=worker.ia_port)}
 same => n,Hangup()

[phone]
exten => _[0-9a-f].,1,{phone_reach}
 same => n,Hangup()
""")
    greeting = read_wav(DEFAULT_PROMPTS / "greeting.wav", rate)
    call = str(uuid.uuid4())
    caller.expect(call, Script(rate=rate, silent_for=silent_for, seconds=silent_for + len(greeting) / rate + 1.2))
    asterisk.originate(f"Local/{call}@gateway/n", extension=f"{call}@phone")
    heard_call = caller.wait_ended(call)
    heard = heard_call.heard()
    assert heard_call.rates() == {rate}
    # The greeting is tonal: a 20 ms frame of it matches one period away too, so the frames are
    # judged from the offset where the whole greeting matches best, each within a few samples
    # of where the previous one ended (under half a period of its highest note, 784 Hz).
    offset, score = find_offset(heard, greeting, probe=len(greeting))
    scores = frame_scores(heard, greeting, offset, rate, window=rate // 2700)
    # Frames quieter than -40 dBFS are left out: µ-law's noise floor is of their order.
    size = rate // 50
    loud = numpy.array([numpy.sqrt(numpy.mean(greeting[i : i + size].astype(float) ** 2)) > 328
                        for i in range(0, len(greeting) - size + 1, size)])
    heard_frames, greeting_frames = int((scores[loud] > 0.9).sum()), int(loud.sum())
    assert heard_frames >= greeting_frames - asterisk_may_alter, (
        f"{form}: {heard_frames} of {greeting_frames} greeting frames heard "
        f"(whole-greeting match {score:.2f} at {offset / rate:.3f} s; {len(heard) / rate:.2f} s received)"
    )
    worker.wait_legs(uuid=call)
    assert asterisk.wait_no_channels(5), asterisk.channels()
    assert_no_asterisk_errors(asterisk)

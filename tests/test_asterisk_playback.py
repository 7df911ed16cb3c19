"""Prompts through a real Asterisk: the caller hears the whole prompt, frame for frame.

The prompt is seeded noise (band-limited to 4 kHz) written as a WAV at the
leg's rate, so every 20 ms frame of it is unlike any other. At 8 kHz (the app
form) nothing converts it: each frame must arrive bit-exact. At 16 kHz the
worker may have queued the start at 8 kHz before it learned the rate (SPEC: a
learned rate never loses queued audio, it converts it), so there each frame
must be found, recognisable (correlation > 0.9), in order and back to back.
"""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy
import pytest

from asterisk_fixture import assert_no_asterisk_errors
from asterisk_phone import PhoneCall, Script, band_limited_noise, frames_of, noise, track_frames
from audiogw.shared.wav import read_wav, write_wav

PROMPT_SECONDS = 2.0


def prompt_file(folder: Path, rate: int) -> tuple[Path, numpy.ndarray]:
    """A noise prompt at ``rate`` and the samples the worker will play from it."""
    path = folder / f"prompt-{rate}.wav"
    write_wav(path, band_limited_noise(PROMPT_SECONDS, rate, seed=rate), rate)
    return path, read_wav(path, rate)


def assert_whole_prompt_exact(found: list[int | None], what: str) -> None:
    """Every prompt frame was heard once, unchanged, in order, with nothing between them."""
    located = [index for index in found if index is not None]
    missing = len(found) - len(located)
    assert missing == 0, (
        f"{what}: {missing} of {len(found)} prompt frames never arrived unchanged "
        f"(first missing frame {next(i for i, where in enumerate(found) if where is None)})"
    )
    assert (numpy.diff(located) == 1).all(), f"{what}: prompt frames out of order or with gaps between them: {found}"


def assert_whole_prompt(heard: numpy.ndarray, prompt: numpy.ndarray, rate: int, what: str,
                        asterisk_may_drop: int = 0) -> None:
    """Every prompt frame recognisable, each starting where the previous one ended (a few samples' slack).

    ``asterisk_may_drop``: frames Asterisk itself may lose (its own rate translator), never
    more, and never a break in the prompt anywhere but next to them.
    """
    tracked = track_frames(heard, prompt, rate)
    ok = tracked.heard()
    frames = len(ok)
    lost = [int(index) for index in numpy.flatnonzero(~ok)]
    if asterisk_may_drop and len(lost) <= asterisk_may_drop:
        near_lost = {neighbour for index in lost for neighbour in (index, index + 1)}
        breaks = [index for index in tracked.breaks() if index not in near_lost]
        assert not breaks, f"{what}: the prompt is not continuous: frames {breaks[:10]} do not follow their predecessor"
        return
    if not ok.all():
        first_lost = int(numpy.argmin(ok))
        raise AssertionError(
            f"{what}: {int(ok.sum())} of {frames} prompt frames heard ({int(ok.sum()) * 20} ms of {frames * 20} ms; "
            f"first missing frame {first_lost} at {first_lost * 20} ms; {len(heard) / rate:.2f} s of audio received)"
        )
    breaks = tracked.breaks()
    assert not breaks, f"{what}: the prompt is not continuous: frames {breaks[:10]} do not follow their predecessor"


def driver_dialplan(worker_port: int, phone_address: str) -> str:
    """``;2`` dials audiogw with the channel driver at 16 kHz, ``;1`` dials the phone the same way."""
    return f"""[general]
[gateway]
exten => _[0-9a-f].,1,Dial(AudioSocket/127.0.0.1:{worker_port}/${{EXTEN}}/c(slin16))
 same => n,Hangup()

[phone]
exten => _[0-9a-f].,1,Dial(AudioSocket/{phone_address}/${{EXTEN}}/c(slin16))
 same => n,Hangup()
"""


# A caller silent at first with rate "auto": the worker plays at 8 kHz until the caller's first
# frame says 16 kHz, and converts what it queued (tests/test_worker_inputs.py shows every frame
# leaves the worker, in order). Asterisk, sent 8 kHz on a slin16 channel, translates it; measured
# with this Asterisk, that translator loses about one frame when the rate changes. So that case
# allows Asterisk 2 frames; a known rate (option rate=16000) must lose none. The Local channel is
# not optimised away (/n): its optimisation, between two AudioSocket channels, loses frames of
# its own that no production call (a SIP caller dialling AudioSocket) goes through.
@pytest.mark.parametrize(("silent_for", "rate_option", "asterisk_may_drop"), [
    (0.0, "auto", 0), (0.3, "auto", 2), (0.3, "16000", 0), (0.0, "16000", 0),
], ids=["auto-caller-talks-at-once", "auto-caller-silent-0.3s", "rate16000-caller-silent-0.3s",
        "rate16000-caller-talks-at-once"])
def test_channel_driver_slin16_caller_hears_the_whole_prompt(start_worker, private_asterisk, phone, tmp_path,
                                                             silent_for, rate_option, asterisk_may_drop):
    path, prompt = prompt_file(tmp_path, 16000)
    worker = start_worker("playback", f"file={path}", f"rate={rate_option}")
    caller = phone()
    asterisk = private_asterisk(driver_dialplan(worker.ia_port, caller.address))
    call = str(uuid.uuid4())
    caller.expect(call, Script(rate=16000, audio=noise(3.0, 16000, seed=5, amplitude=300.0), silent_for=silent_for,
                               seconds=silent_for + PROMPT_SECONDS + 1.2))
    asterisk.originate(f"Local/{call}@gateway/n", extension=f"{call}@phone")
    heard: PhoneCall = caller.wait_ended(call)
    assert heard.rates() == {16000}, f"the phone got rates {heard.rates()}"
    assert_whole_prompt(heard.heard(), prompt, 16000,
                        f"channel driver c(slin16), rate={rate_option}, caller silent for {silent_for} s",
                        asterisk_may_drop)
    worker.wait_legs(uuid=call)
    assert asterisk.wait_no_channels(5), asterisk.channels()
    assert_no_asterisk_errors(asterisk)


class _Recording:
    """What Record() wrote, cut into frames the way the worker's frames arrive."""

    def __init__(self, path: Path, rate: int) -> None:
        self.samples = read_wav(path, rate)
        self.payloads = frames_of(self.samples, rate)

    def locate(self, prompt: numpy.ndarray, rate: int) -> list[int | None]:
        """Record() writes a continuous stream whose frame boundaries need not be the worker's:
        align on the prompt's first frame, then compare frame by frame."""
        head = prompt[: rate // 50]
        starts = [int(i) for i in numpy.flatnonzero(self.samples == head[0])
                  if numpy.array_equal(self.samples[i : i + len(head)], head)]
        if not starts:
            return [None] * len(frames_of(prompt, rate))
        base = starts[0]
        found: list[int | None] = []
        for index, payload in enumerate(frames_of(prompt, rate)):
            start = base + index * (rate // 50)
            got = self.samples[start : start + rate // 50].astype("<i2").tobytes()
            found.append(index if got == payload else None)
        return found


@pytest.mark.parametrize("form", ["app-8k", "driver-slin16"])
def test_prompt_recorded_by_asterisk_is_complete_to_the_frame(start_worker, private_asterisk, tmp_path, form):
    """Asterisk's own Record() on the far half of the call: the prompt is in the file, every frame."""
    rate = 8000 if form == "app-8k" else 16000
    path, prompt = prompt_file(tmp_path, rate)
    worker = start_worker("playback", f"file={path}")
    recording = tmp_path / f"recorded-{form}"
    extension = "wav" if rate == 8000 else "wav16"
    if form == "app-8k":
        reach = (" same => n,Answer()\n"
                 f" same => n,AudioSocket(${{EXTEN}},127.0.0.1:{worker.ia_port})\n")
    else:
        reach = f" same => n,Dial(AudioSocket/127.0.0.1:{worker.ia_port}/${{EXTEN}}/c(slin16))\n"
    seconds = int(PROMPT_SECONDS + 2)
    asterisk = private_asterisk(f"""[general]
[gateway]
exten => _[0-9a-f].,1,NoOp()
{reach} same => n,Hangup()

[recorder]
exten => _[0-9a-f].,1,Answer()
 same => n,Record({recording}.{extension},0,{seconds},qk)
 same => n,Hangup()
""")
    call = str(uuid.uuid4())
    asterisk.originate(f"Local/{call}@gateway", extension=f"{call}@recorder")
    worker.wait_legs(uuid=call, timeout=seconds + 5)
    assert asterisk.wait_no_channels(5), asterisk.channels()
    file = Path(f"{recording}.{extension}")
    assert file.exists(), f"Record() wrote nothing; Asterisk's log:\n{asterisk.log_text()}"
    recorded = _Recording(file, rate)
    if rate == 8000:
        assert_whole_prompt_exact(recorded.locate(prompt, rate), f"Record() of a {form} call")
    else:
        assert_whole_prompt(recorded.samples, prompt, rate, f"Record() of a {form} call")
    assert_no_asterisk_errors(asterisk)

"""Regenerate the demo agent's prompts: ``python client/prompts/make_prompts.py [DIR]``.

No text-to-speech is available offline, so the prompts are distinct chimes that
a listener (or a test) tells apart: a rising three-note greeting and a quick
high double beep for "confirmed"; the doorman's (client/demo_agent.py Doorman)
are a questioning low-high "who is there?", a soft "please wait", a bright
"someone is at the door" for the resident, a three-beep menu ("1 talk, 9 door,
2 no"), a falling "nobody answers" and a falling "goodbye". Deterministic: same
files every run.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy

from audiogw.shared.wav import tone, write_wav

RATE = 8000
FADE_SECONDS = 0.01  # raised-cosine edges, so notes start and stop without clicks

# (frequency Hz, seconds) per note; a frequency of 0 is a pause.
GREETING = [(523.25, 0.22), (0, 0.04), (659.25, 0.22), (0, 0.04), (783.99, 0.40)]
CONFIRM = [(1200.0, 0.12), (0, 0.06), (1600.0, 0.18)]
WHO = [(392.0, 0.18), (0, 0.03), (587.33, 0.32)]
WAIT = [(440.0, 0.30), (0, 0.20), (440.0, 0.30)]
ANNOUNCE = [(880.0, 0.10), (0, 0.03), (1046.5, 0.10), (0, 0.03), (1318.5, 0.20), (0, 0.25)]
MENU = [(0, 0.25), (700.0, 0.10), (0, 0.08), (900.0, 0.10), (0, 0.08), (700.0, 0.10)]
UNAVAILABLE = [(659.25, 0.22), (0, 0.04), (523.25, 0.22), (0, 0.04), (392.0, 0.40)]
GOODBYE = [(783.99, 0.18), (0, 0.04), (523.25, 0.30)]
PROMPTS = {"greeting": GREETING, "confirm": CONFIRM, "who": WHO, "wait": WAIT, "announce": ANNOUNCE,
           "menu": MENU, "unavailable": UNAVAILABLE, "goodbye": GOODBYE}


def note(frequency: float, seconds: float, rate: int = RATE) -> numpy.ndarray:
    """One faded tone, or silence for frequency 0."""
    if frequency == 0:
        return numpy.zeros(int(round(seconds * rate)), dtype=numpy.int16)
    samples = tone(frequency, seconds, rate, amplitude=0.35).astype(numpy.float64)
    fade = min(int(FADE_SECONDS * rate), len(samples) // 2)
    ramp = 0.5 - 0.5 * numpy.cos(numpy.linspace(0.0, numpy.pi, fade))
    samples[:fade] *= ramp
    samples[len(samples) - fade:] *= ramp[::-1]
    return numpy.round(samples).astype(numpy.int16)


def sequence(notes: list[tuple[float, float]], rate: int = RATE) -> numpy.ndarray:
    return numpy.concatenate([note(frequency, seconds, rate) for frequency, seconds in notes])


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, notes in PROMPTS.items():
        samples = sequence(notes)
        write_wav(folder / f"{name}.wav", samples, RATE)
        print(f"{folder / name}.wav: {len(samples) / RATE:.2f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)

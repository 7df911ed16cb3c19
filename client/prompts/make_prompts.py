"""Regenerate the demo agent's prompts: ``python client/prompts/make_prompts.py [DIR]``.

No text-to-speech is available offline, so the prompts are two distinct chimes
that a listener (or a test) tells apart: a rising three-note greeting and a
quick high double beep for "confirmed". Deterministic: same files every run.
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
    for name, notes in (("greeting", GREETING), ("confirm", CONFIRM)):
        samples = sequence(notes)
        write_wav(folder / f"{name}.wav", samples, RATE)
        print(f"{folder / name}.wav: {len(samples) / RATE:.2f} s")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)

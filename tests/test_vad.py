"""Energy VAD on synthetic signals: events land on the frames the parameters predict."""
from __future__ import annotations

import math

import numpy
import pytest

from audiogw.shared.vad import EnergyVad, VadEvent, level_dbfs
from audiogw.shared.wav import tone

RATE = 8000
FRAME = RATE // 50  # 20 ms


def frames_of(samples: numpy.ndarray) -> list[numpy.ndarray]:
    whole = len(samples) - len(samples) % FRAME
    return [samples[offset : offset + FRAME] for offset in range(0, whole, FRAME)]


def run(vad: EnergyVad, samples: numpy.ndarray) -> list[tuple[int, VadEvent]]:
    """(frame index, event) for every event the signal produces."""
    events = []
    for index, frame in enumerate(frames_of(samples)):
        event = vad.feed(frame)
        if event is not None:
            events.append((index, event))
    return events


def silence(seconds: float) -> numpy.ndarray:
    return numpy.zeros(int(seconds * RATE), dtype=numpy.int16)


def noise_at(dbfs: float, seconds: float, seed: int = 1) -> numpy.ndarray:
    """Gaussian noise whose RMS is ``dbfs``."""
    rms = 32768.0 * 10.0 ** (dbfs / 20.0)
    values = numpy.random.default_rng(seed).normal(0.0, rms, int(seconds * RATE))
    return numpy.clip(numpy.round(values), -32768, 32767).astype(numpy.int16)


def test_level_of_a_sine_is_3_db_below_its_peak():
    amplitude = 0.5
    expected = 20.0 * math.log10(amplitude * 32767 / 32768) - 10.0 * math.log10(2.0)
    assert level_dbfs(tone(1000.0, 1.0, RATE, amplitude)) == pytest.approx(expected, abs=0.01)
    assert level_dbfs(silence(0.02)) == -math.inf
    assert level_dbfs(numpy.empty(0, dtype=numpy.int16)) == -math.inf


def test_silence_gives_no_events():
    vad = EnergyVad(RATE)
    assert run(vad, silence(5.0)) == []
    assert not vad.speaking


def test_tone_burst_starts_after_onset_and_ends_after_hangover():
    vad = EnergyVad(RATE, threshold_dbfs=-35.0, onset_frames=3, hangover_ms=600)
    lead_frames, burst_frames = 10, 50
    signal = numpy.concatenate([
        silence(lead_frames * 0.02), tone(440.0, burst_frames * 0.02, RATE, 0.3), silence(2.0),
    ])
    events = run(vad, signal)
    hangover_frames = vad.hangover_ms // 20
    assert events == [
        (lead_frames + vad.onset_frames - 1, VadEvent.SPEECH_START),
        (lead_frames + burst_frames + hangover_frames - 1, VadEvent.SPEECH_END),
    ]
    assert not vad.speaking


def test_speaking_is_true_between_start_and_end():
    vad = EnergyVad(RATE, onset_frames=2, hangover_ms=100)
    states = [vad.feed(frame) or vad.speaking for frame in frames_of(tone(440.0, 0.1, RATE, 0.3))]
    assert states == [False, VadEvent.SPEECH_START, True, True, True]


def test_a_click_shorter_than_the_onset_is_ignored():
    vad = EnergyVad(RATE, onset_frames=3)
    click = tone(440.0, (vad.onset_frames - 1) * 0.02, RATE, 0.5)
    assert run(vad, numpy.concatenate([silence(0.2), click, silence(0.2)] * 5)) == []


def test_a_pause_shorter_than_the_hangover_does_not_end_speech():
    vad = EnergyVad(RATE, hangover_ms=600)
    word = tone(300.0, 0.3, RATE, 0.3)
    pause = silence(vad.hangover_ms / 1000 / 2)
    events = run(vad, numpy.concatenate([word, pause, word, silence(1.0)]))
    assert [event for _, event in events] == [VadEvent.SPEECH_START, VadEvent.SPEECH_END]


@pytest.mark.parametrize("threshold", [-35.0, -50.0])
def test_noise_below_the_threshold_gives_nothing_and_above_it_starts(threshold):
    quiet = EnergyVad(RATE, threshold_dbfs=threshold)
    assert run(quiet, noise_at(threshold - 6.0, 3.0)) == []
    loud = EnergyVad(RATE, threshold_dbfs=threshold)
    assert run(loud, noise_at(threshold + 6.0, 1.0))[:1] == [(loud.onset_frames - 1, VadEvent.SPEECH_START)]


def test_bytes_frames_work_like_arrays():
    signal = numpy.concatenate([tone(440.0, 0.5, RATE, 0.3), silence(1.0)])
    from_arrays = run(EnergyVad(RATE), signal)
    vad = EnergyVad(RATE)
    from_bytes = [(index, event) for index, frame in enumerate(frames_of(signal))
                  if (event := vad.feed(frame.astype("<i2").tobytes())) is not None]
    assert from_bytes == from_arrays and len(from_arrays) == 2


def test_frames_longer_than_20_ms_are_measured_whole():
    vad = EnergyVad(RATE, onset_frames=1)
    long_frame = numpy.concatenate([silence(0.05), tone(440.0, 0.05, RATE, 0.5)])
    assert vad.is_loud(long_frame)
    assert vad.feed(long_frame) is VadEvent.SPEECH_START


@pytest.mark.parametrize(
    "arguments",
    [{"rate": 0}, {"rate": 8000, "threshold_dbfs": 3.0}, {"rate": 8000, "onset_frames": 0},
     {"rate": 8000, "hangover_ms": -1}],
)
def test_bad_parameters_are_refused(arguments):
    with pytest.raises(ValueError):
        EnergyVad(**arguments)


def test_bad_frames_are_refused():
    vad = EnergyVad(RATE)
    with pytest.raises(ValueError):
        vad.feed(b"\x00\x00\x00")
    with pytest.raises(TypeError):
        vad.feed(numpy.zeros(FRAME, dtype=numpy.float32))
    assert vad.feed(b"") is None

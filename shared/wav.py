"""WAV files in and out as int16 mono at the rate a leg runs at.

Synchronous on purpose: decoding and resampling a file is CPU work, so the
worker calls these through ``run_in_executor``, never on its event loop.
Resampling uses soxr (band-limited), because linear interpolation aliases
audibly when a 44.1/48 kHz prompt is brought down to 8 kHz telephony.
"""
from __future__ import annotations

import os
import wave

import numpy
import soxr

# The header reader and format checks are numpy-free, so the supervisor probes files with them.
from audiogw.shared.wav_header import WAVE_FORMAT_IEEE_FLOAT, WavError, WavFormat, read_wav_data


def read_wav(path: str | os.PathLike[str], rate: int = 8000) -> numpy.ndarray:
    """The file's audio as int16 mono at ``rate`` Hz.

    Accepts 8-, 16-, 24- and 32-bit integer PCM (and 32/64-bit float) at any
    rate and channel count; channels are averaged and the result resampled.
    Raises :class:`WavError` saying why a file cannot be used.
    """
    if rate <= 0:
        raise ValueError(f"target rate must be positive, not {rate}")
    source_rate, samples = _read_float(path)
    if samples.size and source_rate != rate:
        samples = soxr.resample(samples, source_rate, rate, quality="HQ")
    return _to_int16(samples)


def write_wav(path: str | os.PathLike[str], samples_int16: numpy.ndarray, rate: int) -> None:
    """Write int16 mono PCM as a plain 16-bit WAV file."""
    samples = numpy.asarray(samples_int16)
    if samples.dtype != numpy.int16:
        raise ValueError(f"write_wav expects int16 samples, not {samples.dtype}")
    if samples.ndim != 1:
        raise ValueError(f"write_wav expects mono (1-D) samples, not shape {samples.shape}")
    # Our own open(): a path that cannot be opened raises OSError cleanly (wave.open's
    # half-built writer would print a second traceback from its __del__).
    with open(path, "wb") as handle, wave.open(handle, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(int(rate))
        writer.writeframes(samples.astype("<i2", copy=False).tobytes())


def tone(frequency: float, seconds: float, rate: int = 8000, amplitude: float = 0.3) -> numpy.ndarray:
    """A sine wave as int16; ``amplitude`` is a fraction of full scale."""
    if not 0 < frequency < rate / 2:
        raise ValueError(f"tone frequency {frequency} Hz must be between 0 and {rate / 2:g} Hz")
    if not 0.0 <= amplitude <= 1.0:
        raise ValueError(f"amplitude {amplitude} must be between 0 and 1")
    if seconds < 0:
        raise ValueError(f"tone length {seconds} s must not be negative")
    count = int(round(seconds * rate))
    phase = 2.0 * numpy.pi * frequency * numpy.arange(count, dtype=numpy.float64) / rate
    return numpy.round(amplitude * 32767.0 * numpy.sin(phase)).astype(numpy.int16)


def _to_int16(samples: numpy.ndarray) -> numpy.ndarray:
    scaled = numpy.round(numpy.asarray(samples, dtype=numpy.float64) * 32768.0)
    return numpy.clip(scaled, -32768, 32767).astype(numpy.int16)


def _read_float(path: str | os.PathLike[str]) -> tuple[int, numpy.ndarray]:
    """(rate, mono float64 samples in [-1, 1)) from the file."""
    wav, data = read_wav_data(path)
    return wav.rate, _decode(wav, data)


def _decode(wav: WavFormat, data: bytes) -> numpy.ndarray:
    """Samples of a format :func:`~audiogw.shared.wav_header.check_format` accepted."""
    channels, width = wav.channels, wav.width
    block = channels * width
    data = data[: len(data) - len(data) % block]  # a truncated last frame is dropped
    if wav.encoding == WAVE_FORMAT_IEEE_FLOAT:
        samples = numpy.frombuffer(data, dtype="<f4" if width == 4 else "<f8").astype(numpy.float64)
        samples = numpy.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=-1.0)
    elif width == 1:  # 8-bit WAV is unsigned with 128 as zero
        samples = (numpy.frombuffer(data, dtype=numpy.uint8).astype(numpy.float64) - 128.0) / 128.0
    elif width == 2:
        samples = numpy.frombuffer(data, dtype="<i2") / 32768.0
    elif width == 3:
        raw = numpy.frombuffer(data, dtype=numpy.uint8).reshape(-1, 3).astype(numpy.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        value = numpy.where(value >= 1 << 23, value - (1 << 24), value)
        samples = value / float(1 << 23)
    else:  # width 4
        samples = numpy.frombuffer(data, dtype="<i4") / float(1 << 31)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return numpy.clip(samples, -1.0, 1.0)


__all__ = ["WavError", "read_wav", "write_wav", "tone"]

"""WAV files in and out as int16 mono at the rate a leg runs at.

Synchronous on purpose: decoding and resampling a file is CPU work, so the
worker calls these through ``run_in_executor``, never on its event loop.
Resampling uses soxr (band-limited), because linear interpolation aliases
audibly when a 44.1/48 kHz prompt is brought down to 8 kHz telephony.
"""
from __future__ import annotations

import os
import struct
import wave

import numpy
import soxr

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE

_MAX_CHANNELS = 64
_MAX_RATE = 768_000


class WavError(ValueError):
    """The file cannot be used as audio: missing, unreadable, malformed or unsupported."""


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
    with wave.open(os.fspath(path), "wb") as writer:
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
    name = os.fspath(path)
    try:
        with wave.open(name, "rb") as reader:
            channels = reader.getnchannels()
            width = reader.getsampwidth()
            source_rate = reader.getframerate()
            data = reader.readframes(reader.getnframes())
        encoding = WAVE_FORMAT_PCM
    except wave.Error as exc:
        # Python < 3.12's wave refuses WAVE_FORMAT_EXTENSIBLE (what sox and
        # ffmpeg write for 24-bit or multichannel audio) and float files.
        if "unknown format" not in str(exc):
            raise WavError(f"{name}: not a usable WAV file ({exc})") from exc
        encoding, channels, width, source_rate, data = _read_riff(name)
    except EOFError as exc:
        raise WavError(f"{name}: truncated WAV file") from exc
    except OSError as exc:
        raise WavError(f"{name}: cannot read ({exc.strerror or exc})") from exc
    return source_rate, _decode(name, encoding, channels, width, source_rate, data)


def _decode(name: str, encoding: int, channels: int, width: int, source_rate: int, data: bytes) -> numpy.ndarray:
    if not 1 <= channels <= _MAX_CHANNELS:
        raise WavError(f"{name}: {channels} channels is not supported")
    if not 1 <= source_rate <= _MAX_RATE:
        raise WavError(f"{name}: sample rate {source_rate} Hz is not supported")
    block = channels * width
    data = data[: len(data) - len(data) % block]  # a truncated last frame is dropped
    if encoding == WAVE_FORMAT_IEEE_FLOAT:
        if width not in (4, 8):
            raise WavError(f"{name}: {width * 8}-bit float is not supported (32 or 64 only)")
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
    elif width == 4:
        samples = numpy.frombuffer(data, dtype="<i4") / float(1 << 31)
    else:
        raise WavError(f"{name}: {width * 8}-bit PCM is not supported (8, 16, 24 or 32 only)")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return numpy.clip(samples, -1.0, 1.0)


def _read_riff(name: str) -> tuple[int, int, int, int, bytes]:
    """(encoding, channels, width, rate, data) for the formats Python 3.11's wave refuses."""
    with open(name, "rb") as file:
        blob = file.read()
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise WavError(f"{name}: not a RIFF/WAVE file")
    fmt: bytes | None = None
    data: bytes | None = None
    offset = 12
    while offset + 8 <= len(blob) and (fmt is None or data is None):
        chunk_id = blob[offset : offset + 4]
        (size,) = struct.unpack_from("<I", blob, offset + 4)
        body = blob[offset + 8 : offset + 8 + size]
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            data = body
        offset += 8 + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise WavError(f"{name}: WAV file without a valid fmt chunk")
    if data is None:
        raise WavError(f"{name}: WAV file without a data chunk")
    encoding, channels, source_rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if encoding == WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise WavError(f"{name}: WAVE_FORMAT_EXTENSIBLE fmt chunk is too short")
        (encoding,) = struct.unpack_from("<H", fmt, 24)  # first two bytes of the SubFormat GUID
    if encoding not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT):
        raise WavError(f"{name}: WAV encoding 0x{encoding:04x} is not supported (PCM or float only)")
    if bits == 0 or bits % 8:
        raise WavError(f"{name}: {bits}-bit samples are not supported")
    return encoding, channels, bits // 8, source_rate, data


__all__ = ["WavError", "read_wav", "write_wav", "tone"]

"""A WAV file's format, read from its header without numpy: can the gateway play it?

:func:`probe_wav` is what the supervisor runs before it accepts a ``file`` or
``fallback`` option (it must not import the audio stack); :mod:`audiogw.shared.wav`
decodes through the same reader and the same format checks, so a file the
probe accepts is one ``read_wav`` plays.
"""
from __future__ import annotations

import os
import struct
import wave
from typing import NamedTuple

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE

MAX_CHANNELS = 64
MAX_RATE = 768_000


class WavError(ValueError):
    """The file cannot be used as audio: missing, unreadable, malformed or unsupported."""


class WavFormat(NamedTuple):
    encoding: int  # WAVE_FORMAT_PCM or WAVE_FORMAT_IEEE_FLOAT
    channels: int
    width: int  # bytes per sample
    rate: int


def check_format(name: str, wav: WavFormat) -> None:
    """WavError unless ``read_wav`` decodes this format."""
    if not 1 <= wav.channels <= MAX_CHANNELS:
        raise WavError(f"{name}: {wav.channels} channels is not supported")
    if not 1 <= wav.rate <= MAX_RATE:
        raise WavError(f"{name}: sample rate {wav.rate} Hz is not supported")
    if wav.encoding == WAVE_FORMAT_IEEE_FLOAT:
        if wav.width not in (4, 8):
            raise WavError(f"{name}: {wav.width * 8}-bit float is not supported (32 or 64 only)")
    elif wav.width not in (1, 2, 3, 4):
        raise WavError(f"{name}: {wav.width * 8}-bit PCM is not supported (8, 16, 24 or 32 only)")


def read_wav_data(path: str | os.PathLike[str], *, with_data: bool = True) -> tuple[WavFormat, bytes]:
    """The file's format (checked) and, ``with_data``, its sample bytes; WavError says why not."""
    name = os.fspath(path)
    try:
        with wave.open(name, "rb") as reader:
            wav = WavFormat(WAVE_FORMAT_PCM, reader.getnchannels(), reader.getsampwidth(), reader.getframerate())
            data = reader.readframes(reader.getnframes()) if with_data else b""
    except wave.Error as exc:
        # Python < 3.12's wave refuses WAVE_FORMAT_EXTENSIBLE (what sox and
        # ffmpeg write for 24-bit or multichannel audio) and float files.
        if "unknown format" not in str(exc):
            raise WavError(f"{name}: not a usable WAV file ({exc})") from exc
        wav, data = _read_riff(name, with_data)
    except EOFError as exc:
        raise WavError(f"{name}: truncated WAV file") from exc
    except OSError as exc:
        raise WavError(f"{name}: cannot read ({exc.strerror or exc})") from exc
    check_format(name, wav)
    return wav, data


def probe_wav(path: str | os.PathLike[str]) -> WavFormat:
    """The format of a WAV file the gateway can play (header only); WavError says why not."""
    return read_wav_data(path, with_data=False)[0]


def _read_riff(name: str, with_data: bool) -> tuple[WavFormat, bytes]:
    """The formats Python 3.11's wave refuses, walking the RIFF chunks."""
    try:
        with open(name, "rb") as file:
            head = file.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                raise WavError(f"{name}: not a RIFF/WAVE file")
            fmt: bytes | None = None
            data: bytes | None = None
            while fmt is None or data is None:
                header = file.read(8)
                if len(header) < 8:
                    break
                chunk_id = header[:4]
                (size,) = struct.unpack_from("<I", header, 4)
                if chunk_id == b"fmt ":
                    fmt = file.read(size)
                    file.seek(size & 1, os.SEEK_CUR)
                elif chunk_id == b"data":
                    data = file.read(size) if with_data else b""
                    if not with_data:
                        file.seek(size + (size & 1), os.SEEK_CUR)
                    elif size & 1:
                        file.seek(1, os.SEEK_CUR)
                else:
                    file.seek(size + (size & 1), os.SEEK_CUR)
    except OSError as exc:
        raise WavError(f"{name}: cannot read ({exc.strerror or exc})") from exc
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
    return WavFormat(encoding, channels, bits // 8, source_rate), data


__all__ = ["WavError", "WavFormat", "check_format", "probe_wav", "read_wav_data"]

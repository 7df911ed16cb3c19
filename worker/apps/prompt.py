"""A WAV prompt, converted (soxr) once per leg rate in a thread and shared by every leg.

Reading and resampling a file is blocking work: it never runs on the audio loop,
and the loop only ever slices the ready PCM.
"""
from __future__ import annotations

import asyncio

import numpy

from audiogw.shared.wav import read_wav


class Prompt:
    def __init__(self, path: str) -> None:
        self.path = path
        self._by_rate: dict[int, asyncio.Future[bytes]] = {}

    def pcm(self, rate: int) -> "asyncio.Future[bytes]":
        """16-bit little-endian PCM at ``rate``; the first request per rate starts the conversion."""
        future = self._by_rate.get(rate)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._by_rate[rate] = loop.run_in_executor(None, _load, self.path, rate)
        return future


def _load(path: str, rate: int) -> bytes:
    return numpy.ascontiguousarray(read_wav(path, rate), dtype="<i2").tobytes()

"""Outbound audio queue of one leg: ready-to-write wire frames, bounded.

Producers push PCM of any length; it is cut into 20 ms frames and encoded
(header + payload in one bytes object) at push time, so the clock's tick only
pops a prebuilt frame and writes it. A full queue drops its oldest audio: the
clock never waits and memory never grows.
"""
from __future__ import annotations

import asyncio
from collections import deque

from audiogw.shared.audiosocket import KIND_FOR_RATE, encode_header, frame_bytes


class PlayoutBuffer:
    __slots__ = (
        "rate", "frame_size", "capacity", "lead", "_frames", "_partial", "_header",
        "_silence", "dropped", "_space_waiter",
    )

    def __init__(self, rate: int = 8000, capacity_frames: int = 100, lead_frames: int = 3) -> None:
        self.capacity = capacity_frames
        self.lead = lead_frames
        self._frames: deque[bytes] = deque()
        self._partial = bytearray()
        self.dropped = 0
        self._space_waiter = None
        self.set_rate(rate)

    def set_rate(self, rate: int) -> None:
        """Change the leg's audio rate (learned from the first inbound frame); drops queued audio."""
        self.rate = rate
        self.frame_size = frame_bytes(rate)
        self._header = encode_header(KIND_FOR_RATE[rate], self.frame_size)
        self._silence = self._header + bytes(self.frame_size)
        self._frames.clear()
        self._partial.clear()

    @property
    def silence(self) -> bytes:
        return self._silence

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def buffered_seconds(self) -> float:
        return (len(self._frames) * self.frame_size + len(self._partial)) / (2 * self.rate)

    def push(self, pcm: bytes | bytearray | memoryview) -> int:
        """Queue PCM (16-bit LE at ``rate``); returns frames dropped to stay bounded."""
        frame_size = self.frame_size
        if not self._partial and len(pcm) == frame_size:
            self._frames.append(self._header + pcm)
        else:
            partial = self._partial
            partial += pcm
            whole = len(partial) - len(partial) % frame_size
            header = self._header
            for offset in range(0, whole, frame_size):
                self._frames.append(header + partial[offset : offset + frame_size])
            del partial[:whole]
        overflow = len(self._frames) - self.capacity
        if overflow > 0:
            for _ in range(overflow):
                self._frames.popleft()
            self.dropped += overflow
            return overflow
        return 0

    def flush_partial(self) -> None:
        """Pad a trailing partial frame with silence so the end of a prompt is heard."""
        if self._partial:
            missing = self.frame_size - len(self._partial)
            self.push(bytes(missing))

    def clear(self) -> int:
        """Drop everything not yet played (barge-in); returns frames dropped."""
        dropped = len(self._frames)
        self._frames.clear()
        self._partial.clear()
        self._wake_producer()
        return dropped

    def pop(self) -> bytes | None:
        """The next wire frame, or None when nothing is ready (the caller sends silence)."""
        frames = self._frames
        if frames:
            frame = frames.popleft()
            if self._space_waiter is not None and len(frames) < self.lead:
                self._wake_producer()
            return frame
        return None

    def has_room_for_lead(self) -> bool:
        return len(self._frames) < self.lead

    def wait_for_room(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future done when fewer than ``lead`` frames are queued (producer backpressure)."""
        waiter = loop.create_future()
        self._space_waiter = waiter
        return waiter

    def _wake_producer(self) -> None:
        waiter = self._space_waiter
        if waiter is not None:
            self._space_waiter = None
            if not waiter.done():
                waiter.set_result(None)

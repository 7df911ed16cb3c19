"""Outbound audio queue of one leg: ready-to-write wire frames, bounded.

Producers push PCM of any length; it is cut into 20 ms frames and encoded
(header + payload in one bytes object) at push time, so the clock's tick only
pops a prebuilt frame and writes it. A full queue drops its oldest audio: the
clock never waits and memory never grows.

Marks (``mark(callback)``) are positions in the frame stream: the callback
runs once every frame queued before it has left the queue, whether played,
dropped for room or cleared, which is what an agent's ``mark`` echo means.

Live audio (echo, bridge: a caller's voice relayed as it arrives) has bounded
latency. A stall anywhere upstream arrives as a burst, and since frames leave
at exactly one per tick a burst would stay in the queue, as delay, for the rest
of the call. So while ``max_latency_frames`` is set, the queue's shortest
length over each ``LATENCY_WINDOW_TICKS`` window is its standing delay; past
the bound, the oldest frames are dropped down to it (``drop_counts["latency"]``). A
short burst that drains by itself within the window is left alone. Prompts
and agent speech (``max_latency_frames = 0``) are never cut.

Pre-roll (``set_preroll(frames)``, the agent's ``jitter_ms``): an input-driven
stream (an agent that sends one chunk per chunk it hears) arrives with the
network's jitter, and a chunk one tick late is a 20 ms hole. So once the queue
has run dry (the start of an utterance), its audio waits until ``preroll``
frames are queued, or the end of the utterance is marked (``flush_partial``:
a mark, a finished prompt), or the first frame has waited as long, before it
plays. The cushion then absorbs the jitter for the rest of the utterance.
Off (0) by default: nothing waits.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from typing import Callable

import numpy
import soxr

from audiogw.shared.audiosocket import HEADER_SIZE, KIND_FOR_RATE, encode_header, frame_bytes

log = logging.getLogger("audiogw.worker.playout")

LATENCY_WINDOW_TICKS = 20  # 0.4 s: a standing delay is cut within two windows of the burst that made it


class PlayoutBuffer:
    __slots__ = (
        "rate", "frame_size", "capacity", "lead", "_frames", "_partial", "_header",
        "_silence", "dropped", "_space_waiter", "appended", "removed", "_marks",
        "max_latency_frames", "drop_counts", "latency_dropped", "_last", "_window_ticks", "_window_min",
        "preroll", "_holding", "_held",
    )

    def __init__(self, rate: int = 8000, capacity_frames: int = 100, lead_frames: int = 3) -> None:
        self.capacity = capacity_frames
        self.lead = lead_frames
        self._frames: deque[bytes] = deque()
        self._partial = bytearray()
        self.dropped = 0
        self._space_waiter = None
        self.appended = 0  # frames ever queued
        self.removed = 0  # frames ever taken off the head (played, dropped or cleared)
        self._marks: deque[tuple[int, Callable[[], None]]] = deque()
        self.max_latency_frames = 0  # 0: not live audio, never cut for latency
        self.drop_counts: Counter[str] = Counter()  # the leg's frames_dropped by reason (latency cuts)
        self.latency_dropped = 0  # this buffer's own share of them
        self._window_ticks = 0
        self._window_min = 0
        self._last = b""  # the frame that left last: context for converting what follows it
        self.preroll = 0  # frames an utterance's start waits for (set_preroll); 0: none
        self._holding = False  # the queue ran dry: the next utterance waits for its pre-roll
        self._held = 0  # ticks the held utterance has waited
        self.rate = 0
        self.set_rate(rate)

    def set_rate(self, rate: int, convert: Callable[[bytes], bytes] | None = None) -> None:
        """Change the leg's audio rate (learned from inbound audio). Queued audio is converted, not lost.

        ``convert`` (old-rate PCM in, new-rate PCM out) is the stream resampler the
        producer's next old-rate audio will go through, so the queue and what
        follows it are one continuous stream; it is primed with the frame that
        left last, so the converted queue starts without a filter transient.
        Without it, one soxr call converts the queue. Marks keep their places in
        the audio; a waiting producer is woken.
        """
        old_rate = self.rate
        if rate == old_rate:
            return
        self.rate = rate
        self.frame_size = frame_bytes(rate)
        self._header = encode_header(KIND_FOR_RATE[rate], self.frame_size)
        self._silence = self._header + bytes(self.frame_size)
        frames = self._frames
        if not old_rate or not (frames or self._partial):
            return
        count = len(frames)
        old_pcm = b"".join(frame[HEADER_SIZE:] for frame in frames) + self._partial
        if convert is not None:
            primer = self._last[HEADER_SIZE:]
            converted = convert(primer + old_pcm)[round(len(primer) // 2 * rate / old_rate) * 2:]
        else:
            # int16 in, int16 out: soxr converts (and clips) in one call, off the per-frame path.
            converted = soxr.resample(numpy.frombuffer(old_pcm, dtype="<i2"), old_rate, rate).astype("<i2").tobytes()
            whole = count * self.frame_size
            if len(converted) < whole:  # the filter may come out a few samples short
                converted += bytes(whole - len(converted))
        frame_size = self.frame_size
        whole = len(converted) - len(converted) % frame_size
        header = self._header
        frames.clear()
        for offset in range(0, whole, frame_size):
            frames.append(header + converted[offset : offset + frame_size])
        self._partial = bytearray(converted[whole:])
        if len(frames) != count:  # a stream holds its last ~2 ms back: positions move with the audio
            self.appended = self.removed + len(frames)
            limit = self.appended
            self._marks = deque((min(position, limit), callback) for position, callback in self._marks)
        self._wake_producer()

    def set_preroll(self, frames: int) -> None:
        """Hold each utterance's start until ``frames`` are queued (0: play at once)."""
        self.preroll = max(0, frames)
        self._holding = bool(self.preroll) and not self._frames
        self._held = 0

    @property
    def holding(self) -> bool:
        """True while queued audio waits for its pre-roll."""
        return self._holding and bool(self._frames)

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
        frames = self._frames
        before = len(frames)
        if not self._partial and len(pcm) == frame_size:
            frames.append(self._header + pcm)
        else:
            partial = self._partial
            partial += pcm
            whole = len(partial) - len(partial) % frame_size
            header = self._header
            for offset in range(0, whole, frame_size):
                frames.append(header + partial[offset : offset + frame_size])
            del partial[:whole]
        self.appended += len(frames) - before
        overflow = len(frames) - self.capacity
        if overflow > 0:
            for _ in range(overflow):
                frames.popleft()
            self.dropped += overflow
            self.removed += overflow
            if self._marks:
                self._fire_marks()
            return overflow
        return 0

    def flush_partial(self) -> None:
        """Pad a trailing partial frame with silence so the end of a prompt is heard.

        It ends an utterance (a mark, a finished prompt): a held pre-roll plays now."""
        if self._partial:
            missing = self.frame_size - len(self._partial)
            self.push(bytes(missing))
        if self._holding and self._frames:
            self._holding = False

    def clear(self) -> int:
        """Drop everything not yet played (barge-in); returns frames dropped."""
        dropped = len(self._frames)
        self.removed += dropped
        self._frames.clear()
        self._partial.clear()
        if self.preroll:
            self._holding, self._held = True, 0
        self._fire_marks()
        self._wake_producer()
        return dropped

    def mark(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` once everything queued so far has left the queue.

        A trailing partial frame is padded first so the mark falls on a frame
        boundary. With nothing queued the callback runs at once. It runs on the
        clock's path: it must only record or enqueue, never wait.
        """
        self.flush_partial()
        self._marks.append((self.appended, callback))
        self._fire_marks()

    @property
    def pending_marks(self) -> int:
        return len(self._marks)

    def _fire_marks(self) -> None:
        marks = self._marks
        while marks and marks[0][0] <= self.removed:
            _position, callback = marks.popleft()
            try:
                callback()
            except Exception:
                log.exception("playout mark callback failed")

    def pop(self) -> bytes | None:
        """The next wire frame, or None when nothing is ready (the caller sends silence)."""
        frames = self._frames
        if self.max_latency_frames:
            self._bound_latency()
        if frames:
            if self._holding:
                self._held += 1
                if len(frames) < self.preroll and self._held <= self.preroll:
                    return None  # the utterance's start waits for its cushion (pre-roll)
                self._holding = False
            frame = self._last = frames.popleft()
            self.removed += 1
            if self._marks and self._marks[0][0] <= self.removed:
                self._fire_marks()
            if self._space_waiter is not None and len(frames) < self.lead:
                self._wake_producer()
            return frame
        if self.preroll and not self._holding:
            self._holding, self._held = True, 0  # ran dry: the next utterance waits for its pre-roll
        if self._space_waiter is not None:
            self._wake_producer()
        return None

    def _bound_latency(self) -> None:
        """Once a window: cut the queue's standing delay (its shortest length in the window) to the bound."""
        length = len(self._frames)
        if self._window_ticks == 0 or length < self._window_min:
            self._window_min = length
        self._window_ticks += 1
        if self._window_ticks < LATENCY_WINDOW_TICKS:
            return
        excess = self._window_min - self.max_latency_frames
        self._window_ticks = 0
        if excess > 0:
            frames = self._frames
            for _ in range(excess):
                frames.popleft()
            self.removed += excess
            self.drop_counts["latency"] += excess
            self.latency_dropped += excess
            if self._marks:
                self._fire_marks()

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

"""Energy voice-activity detection over 20 ms int16 frames: pure numpy, no I/O.

An agent needs to know when a caller's turn ends. The level of each frame is
the RMS in dBFS (0 dBFS = a full-scale square wave); speech starts after
``onset_frames`` consecutive frames at or above the threshold, which ignores
clicks, and ends after ``hangover_ms`` of quiet, which bridges the pauses
between words. The threshold is compared as a mean square, so a frame costs
one copy into a preallocated buffer and one dot product: no log, no allocation.
"""
from __future__ import annotations

import enum
import math

import numpy

FULL_SCALE = 32768.0


class VadEvent(enum.Enum):
    SPEECH_START = "speech_start"
    SPEECH_END = "speech_end"


def level_dbfs(samples: numpy.ndarray) -> float:
    """RMS level of int16 samples in dBFS; ``-inf`` for silence or no samples."""
    values = numpy.asarray(samples, dtype=numpy.float64)
    if values.size == 0:
        return -math.inf
    mean_square = float(numpy.dot(values, values)) / values.size
    if mean_square == 0.0:
        return -math.inf
    return 10.0 * math.log10(mean_square / (FULL_SCALE * FULL_SCALE))


class EnergyVad:
    """Turns a stream of frames into SPEECH_START / SPEECH_END events."""

    __slots__ = (
        "rate", "threshold_dbfs", "onset_frames", "hangover_ms",
        "_threshold_energy", "_hangover_samples", "_buffer",
        "_loud_run", "_quiet_samples", "_speaking", "_last_loud",
    )

    def __init__(
        self,
        rate: int,
        threshold_dbfs: float = -35.0,
        onset_frames: int = 3,
        hangover_ms: int = 600,
    ) -> None:
        if not isinstance(rate, int) or rate <= 0:
            raise ValueError(f"VAD rate must be a positive whole number of Hz, not {rate!r}")
        if not -120.0 <= threshold_dbfs <= 0.0:
            raise ValueError(f"VAD threshold {threshold_dbfs} dBFS must be between -120 and 0")
        if not isinstance(onset_frames, int) or onset_frames < 1:
            raise ValueError(f"VAD onset must be at least 1 frame, not {onset_frames!r}")
        if hangover_ms < 0:
            raise ValueError(f"VAD hangover {hangover_ms} ms must not be negative")
        self.rate = rate
        self.threshold_dbfs = float(threshold_dbfs)
        self.onset_frames = onset_frames
        self.hangover_ms = hangover_ms
        # Sum of squares per sample at the threshold, in int16 units squared.
        self._threshold_energy = (FULL_SCALE * 10.0 ** (threshold_dbfs / 20.0)) ** 2
        self._hangover_samples = rate * hangover_ms // 1000
        self._buffer = numpy.empty(rate // 50, dtype=numpy.float64)  # one 20 ms frame
        self._loud_run = 0
        self._quiet_samples = 0
        self._speaking = False
        self._last_loud = False

    @property
    def last_loud(self) -> bool:
        """Whether the last frame fed reached the threshold (to trim a recording's quiet tail)."""
        return self._last_loud

    @property
    def speaking(self) -> bool:
        """True between SPEECH_START and SPEECH_END."""
        return self._speaking

    def reset(self) -> None:
        """Forget any speech in progress (e.g. after the agent has taken its turn)."""
        self._loud_run = 0
        self._quiet_samples = 0
        self._speaking = False

    def is_loud(self, frame_pcm: bytes | bytearray | memoryview | numpy.ndarray) -> bool:
        """Whether one frame's RMS reaches the threshold (no state change)."""
        samples = _as_int16(frame_pcm)
        count = samples.size
        if count == 0:
            return False
        if count > self._buffer.size:
            self._buffer = numpy.empty(count, dtype=numpy.float64)
        buffer = self._buffer[:count]
        numpy.copyto(buffer, samples, casting="unsafe")
        return float(numpy.dot(buffer, buffer)) >= self._threshold_energy * count

    def feed(self, frame_pcm: bytes | bytearray | memoryview | numpy.ndarray) -> VadEvent | None:
        """Advance by one frame (int16 little-endian bytes or an int16 array)."""
        samples = _as_int16(frame_pcm)
        if samples.size == 0:
            return None
        loud = self._last_loud = self.is_loud(samples)
        if not self._speaking:
            self._loud_run = self._loud_run + 1 if loud else 0
            if self._loud_run >= self.onset_frames:
                self._speaking = True
                self._quiet_samples = 0
                return VadEvent.SPEECH_START
            return None
        if loud:
            self._quiet_samples = 0
            return None
        self._quiet_samples += samples.size
        if self._quiet_samples >= self._hangover_samples:
            self.reset()
            return VadEvent.SPEECH_END
        return None


def _as_int16(frame_pcm: bytes | bytearray | memoryview | numpy.ndarray) -> numpy.ndarray:
    """A view of the frame as int16 samples, without copying."""
    if isinstance(frame_pcm, numpy.ndarray):
        if frame_pcm.dtype != numpy.int16:
            raise TypeError(f"VAD frames must be int16 samples, not {frame_pcm.dtype}")
        return frame_pcm
    if len(frame_pcm) % 2:
        raise ValueError(f"VAD frame of {len(frame_pcm)} bytes is not whole 16-bit samples")
    return numpy.frombuffer(frame_pcm, dtype="<i2")


__all__ = ["EnergyVad", "VadEvent", "level_dbfs", "FULL_SCALE"]

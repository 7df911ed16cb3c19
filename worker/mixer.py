"""Mix two 20 ms int16 frames into one without ever clipping: pure numpy, no I/O.

A bridged leg hears two live sources at once: what the agent says to it (its
playout buffer) and the other leg's voice. Their sum can exceed int16; a hard
clip there is an audible crackle. So the frames are summed in int32 and scaled
by a gain that is at most 1 and never lets a sample leave int16's range:

- the gain a frame needs is ``min(1, 32767/max, 32768/-min)`` of its sum;
- within a frame the gain moves linearly from the previous frame's gain to the
  new one, so it never steps at a frame boundary (no click); when that ramp
  would still push a sample out of range the whole ramp is scaled down to fit
  (a louder attack only lowers the ramp's start a little);
- going back up (release) is slow: at most ``release_per_frame`` per frame, so
  a limiter that reacted to a shout does not pump.

A lone source with the gain at 1 passes unchanged, bit for bit. The work
buffers are allocated once per frame size (a leg's rate); :meth:`Mixer.mix`
returns a view into the mixer's own output buffer, valid until the next call.
"""
from __future__ import annotations

import numpy

INT16_MAX = 32767
INT16_MIN_MAGNITUDE = 32768
RELEASE_PER_FRAME = 0.02  # gain regained per 20 ms frame: from 0.5 back to 1 in 0.5 s


class Mixer:
    """Two sources into one frame of ``frame_samples`` int16 samples, limited smoothly."""

    __slots__ = ("frame_samples", "gain", "release_per_frame", "_sum", "_work", "_ramp", "_steps", "_out")

    def __init__(self, frame_samples: int, release_per_frame: float = RELEASE_PER_FRAME) -> None:
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, not {frame_samples}")
        self.frame_samples = frame_samples
        self.release_per_frame = release_per_frame
        self.gain = 1.0  # the gain the last frame ended at
        self._sum = numpy.zeros(frame_samples, dtype=numpy.int32)
        self._work = numpy.zeros(frame_samples, dtype=numpy.float64)
        self._ramp = numpy.zeros(frame_samples, dtype=numpy.float64)
        # 1/n .. n/n: the ramp reaches the frame's gain on its last sample.
        self._steps = numpy.arange(1, frame_samples + 1, dtype=numpy.float64) / frame_samples
        self._out = numpy.zeros(frame_samples, dtype=numpy.int16)

    def mix(self, first: numpy.ndarray, second: numpy.ndarray | None = None) -> numpy.ndarray:
        """``first + second`` (int16 arrays of ``frame_samples``; ``second`` may be None), limited.

        Returns the mixer's output buffer (int16, ``frame_samples`` long): copy it
        (``.tobytes()``) before the next call."""
        total = self._sum
        out = self._out
        if first.shape != out.shape or (second is not None and second.shape != out.shape):
            raise ValueError(f"frames must be {self.frame_samples} samples")
        numpy.copyto(total, first, casting="safe")
        if second is not None:
            numpy.add(total, second, out=total, casting="safe")
        needed = _fitting_gain(float(total.max()), float(total.min()))
        previous = self.gain
        target = min(needed, previous + self.release_per_frame)
        if previous == 1.0 and target == 1.0:
            numpy.copyto(out, total, casting="unsafe")  # in range by the check above: exact
            return out
        ramp = self._ramp
        numpy.multiply(self._steps, target - previous, out=ramp)
        ramp += previous
        work = self._work
        numpy.multiply(total, ramp, out=work)
        if target < previous:  # an attack: the ramp from the higher gain may overshoot
            scale = _fitting_gain(float(work.max()), float(work.min()))
            if scale < 1.0:  # lower all of the ramp (its start a little, its end to fit)
                work *= scale
                target *= scale
        # (A release ramps up to ``target`` at most, which fits the whole frame by its choice.)
        numpy.rint(work, out=work)
        # Defensive only: by construction every value is already within int16's range.
        numpy.clip(work, -INT16_MIN_MAGNITUDE, INT16_MAX, out=work)
        numpy.copyto(out, work, casting="unsafe")
        self.gain = target
        return out


def _fitting_gain(highest: float, lowest: float) -> float:
    """The largest gain (at most 1) that keeps samples between ``lowest`` and ``highest`` within int16."""
    gain = 1.0
    if highest > INT16_MAX:
        gain = INT16_MAX / highest
    if -lowest > INT16_MIN_MAGNITUDE:
        gain = min(gain, INT16_MIN_MAGNITUDE / -lowest)
    return gain


__all__ = ["Mixer", "RELEASE_PER_FRAME"]

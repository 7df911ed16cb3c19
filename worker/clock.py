"""The 20 ms deadline clock: pure arithmetic on monotonic readings.

Asterisk plays each frame the moment it arrives, so the gateway owns the clock.
Deadlines are absolute (``anchor + n * period``) so sleep overshoot never
accumulates into drift, and a tick that is far behind re-anchors instead of
sending a catch-up burst.
"""
from __future__ import annotations

from audiogw.shared.audiosocket import FRAME_PERIOD

GOLDEN_FRACTION = 0.6180339887498949


def clock_phase(slot: int, period: float = FRAME_PERIOD) -> float:
    """Phase (offset within the period) for the ``slot``-th worker's clock.

    Workers whose ticks fall on the same instant queue for the same CPU; the
    golden-ratio sequence spreads any number of them evenly over the period.
    """
    return (slot * GOLDEN_FRACTION) % 1.0 * period


def aligned_start(now: float, period: float, phase: float | None) -> float:
    """The first instant at or after ``now`` on the grid ``phase + n * period`` (``now`` if no phase)."""
    if phase is None:
        return now
    return now + (phase - now) % period


class DeadlineClock:
    """Deadlines ``anchor + n * period``; re-anchors when more than ``max_late`` behind."""

    __slots__ = ("period", "max_late", "anchor", "index", "reanchors")

    def __init__(self, start: float, period: float = FRAME_PERIOD, max_late: float = FRAME_PERIOD) -> None:
        self.period = period
        self.max_late = max_late
        self.anchor = start
        self.index = 0
        self.reanchors = 0

    @property
    def deadline(self) -> float:
        """When the next tick is due."""
        return self.anchor + self.index * self.period

    def tick(self, now: float) -> float:
        """Consume the due tick at ``now``; return how late it fired (>= 0).

        If the tick is more than ``max_late`` behind, the missed ticks are
        dropped (not sent in a burst): the next deadline is the first one of the
        original grid after ``now``, so the clock keeps its phase.
        """
        deadline = self.anchor + self.index * self.period
        lateness = now - deadline
        if lateness > self.max_late:
            index = int((now - self.anchor) // self.period) + 1
            if self.anchor + index * self.period <= now:
                index += 1
            self.index = index
            self.reanchors += 1
            return lateness
        self.index += 1
        return lateness if lateness > 0.0 else 0.0

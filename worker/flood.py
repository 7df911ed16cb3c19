"""Holding a peer to real time: token buckets for inbound frames, pure (the clock is passed in).

Asterisk sends one 20 ms frame per 20 ms. A peer that sends faster (a broken
or hostile client, a replayed capture) must not take its worker's loop: every
frame it sends beyond real time plus a small burst is dropped before any app
or queue sees it, and counted (``inbound_flood``). The burst covers jitter and
a worker's own short stall, after which the kernel hands over what queued
meanwhile in one read: those frames are on time, only read late.
"""
from __future__ import annotations

AUDIO_BURST_SECONDS = 1.0  # audio allowed ahead of real time
OTHER_PER_SECOND = 10.0  # DTMF and other non-audio frames: Asterisk sends one per digit
OTHER_BURST = 20.0


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def take(self, amount: float, now: float) -> bool:
        """Spend ``amount`` if it is there; False (nothing spent) when the peer is over its budget."""
        tokens = self.tokens + (now - self.updated) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.updated = now
        if tokens >= amount - 1e-9:  # float sums of 20 ms frames
            self.tokens = tokens - amount
            return True
        self.tokens = tokens
        return False


class InboundGuard:
    """One leg's budgets: seconds of audio, and a count of other frames."""

    __slots__ = ("audio", "other")

    def __init__(self, now: float, audio_burst: float = AUDIO_BURST_SECONDS,
                 other_rate: float = OTHER_PER_SECOND, other_burst: float = OTHER_BURST) -> None:
        self.audio = TokenBucket(1.0, audio_burst, now)
        self.other = TokenBucket(other_rate, other_burst, now)

    def admit_audio(self, seconds: float, now: float) -> bool:
        return self.audio.take(seconds, now)

    def admit_other(self, now: float) -> bool:
        return self.other.take(1.0, now)

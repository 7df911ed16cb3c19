"""When an agent leg reconnects: a small pure policy, its clock injected so tests drive it.

The delay before the next attempt starts at ``first`` and doubles up to
``maximum`` while attempts keep failing. A failure is a connect that fails *or*
a connection that ends before it lived ``stable_after`` seconds: an agent that
accepts and then closes or crashes at once (Pipecat's runner without Twilio
credentials raises on every connection) is as broken as one that refuses, and
must not be reconnected every ``first`` seconds forever. Only a connection that
lived that long resets the delay, so a healthy agent that drops once is
reconnected soon.

Each outcome says whether the delay changed, so the caller logs once per change
(the growth, the reset), not once per attempt; a leg stuck at ``maximum`` only
counts its attempts.
"""
from __future__ import annotations

import time
from typing import Callable


class ReconnectBackoff:
    """The reconnect delay of one leg across its WebSocket sessions."""

    __slots__ = ("first", "maximum", "stable_after", "_clock", "delay", "failures", "_opened_at", "last_lived")

    def __init__(self, first: float, maximum: float, stable_after: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.first = first
        self.maximum = max(first, maximum)
        self.stable_after = stable_after
        self._clock = clock
        self.delay = 0.0  # to wait before the next attempt (0: connect at once)
        self.failures = 0  # failed attempts in a row (refused, or closed young)
        self._opened_at: float | None = None
        self.last_lived = 0.0  # seconds the last session lived

    @property
    def failing(self) -> bool:
        """True while attempts keep failing (the last session, if any, did not live)."""
        return self.failures > 0

    def opened(self) -> None:
        """A connection opened: its lifetime is measured from now."""
        self._opened_at = self._clock()

    def refused(self) -> bool:
        """A connect attempt failed. Returns True if the delay changed."""
        self._opened_at = None
        return self._fail()

    def ended(self) -> bool:
        """An open connection ended (not by the leg). Returns True if the delay changed;
        a healthy session's end always counts as a change (the leg starts reconnecting)."""
        opened_at, self._opened_at = self._opened_at, None
        self.last_lived = self._clock() - opened_at if opened_at is not None else 0.0
        if self.last_lived >= self.stable_after:
            self.failures = 0
            self.delay = self.first
            return True
        return self._fail()

    def _fail(self) -> bool:
        self.failures += 1
        before = self.delay
        self.delay = min(max(self.delay * 2, self.first), self.maximum)
        return self.delay != before


__all__ = ["ReconnectBackoff"]

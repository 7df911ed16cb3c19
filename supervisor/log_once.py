"""Log a repeated refusal once: the cluster's refusals come from etcd values and peers that may repeat them
at every watch event or question, and the log is for people."""
from __future__ import annotations

from collections.abc import Hashable

__all__ = ["FirstSeen"]


class FirstSeen:
    """True the first time a key is seen (log it), False after; at most ``limit`` keys are remembered, then
    nothing more is logged (the counters keep counting)."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self._seen: set[Hashable] = set()

    def __call__(self, key: Hashable) -> bool:
        if key in self._seen or len(self._seen) >= self.limit:
            return False
        self._seen.add(key)
        return True

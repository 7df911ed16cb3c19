"""Fixed-bucket histograms cheap enough for the per-frame path.

Workers observe into these (a bisect and two additions, no allocation) and ship
cumulative snapshots in heartbeats; the supervisor turns them into Prometheus
histograms. Buckets resolve 0.5 ms to 1 s, as the metrics contract asks.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Any

# Upper bounds in seconds (Prometheus "le"); +Inf is implicit as the last slot.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.1, 0.25, 1.0,
)
# Ten bounds, not more: every bucket is a line per extension in each /metrics
# scrape. Kept: 2 ms (pacing target), 5 ms (the lateness alert), 20 ms (one frame)
# and 40 ms (an audible gap).


class Histogram:
    __slots__ = ("bounds", "counts", "total", "count", "maximum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0
        self.maximum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1
        if value > self.maximum:
            self.maximum = value

    def snapshot(self) -> dict[str, Any]:
        """Non-cumulative bucket counts, sum and count (JSON-able)."""
        return {"counts": list(self.counts), "sum": self.total, "count": self.count, "max": self.maximum}


def quantile(snapshot: dict[str, Any], q: float, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> float | None:
    """Upper bound of the bucket holding quantile ``q`` (what `status` shows as p99).

    Returns None with no observations; the last finite bound stands for +Inf.
    """
    counts = snapshot.get("counts") or []
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    running = 0
    for index, bucket_count in enumerate(counts):
        running += bucket_count
        if running >= rank:
            return bounds[min(index, len(bounds) - 1)]
    return bounds[-1]

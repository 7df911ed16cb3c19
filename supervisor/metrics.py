"""Placeholder replaced by the metrics work (issue 4)."""
from __future__ import annotations


class MetricsServer:
    def __init__(self, supervisor) -> None:
        self.supervisor = supervisor

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

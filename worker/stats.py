"""A worker's cumulative figures, shipped whole in every heartbeat.

What the figures are (names, kinds, units, labels) is declared once, in
:mod:`audiogw.shared.stats_schema`; these classes only hold them. Plain
attributes and ``Counter`` objects: incrementing must cost nothing on the
per-frame path. The snapshot is built from the schema once per heartbeat.
Counters only grow inside one worker process; the supervisor keeps the totals
across restarts.
"""
from __future__ import annotations

from typing import Any

from audiogw.shared.audiosocket import LEG_KINDS
from audiogw.shared.stats_schema import LEGS, WORKER, Section


class LegKindStats:
    """Totals for all legs of one kind (ia or retorno) of this extension: the ``legs`` section's fields."""

    __slots__ = LEGS.attributes()

    def __init__(self) -> None:
        LEGS.init(self)


class WorkerStats:
    """The worker's own figures (the top-level section), its legs', and the sections its app adds."""

    __slots__ = ("legs", "sections", *WORKER.attributes())

    def __init__(self) -> None:
        self.legs = {kind: LegKindStats() for kind in LEG_KINDS}
        # send_lateness and loop_lag are one per worker, not per leg: every leg's frames
        # leave on the same ticker's deadlines. app_counters: events an app counts, by name.
        WORKER.init(self)
        self.sections: dict[Section, object] = {}

    def add_section(self, section: Section, stats: object) -> None:
        """An app's own figures (its section, declared in the schema's way), shipped from now on."""
        self.sections[section] = stats

    def snapshot(self) -> dict[str, Any]:
        snapshot = WORKER.snapshot(self)
        snapshot["legs"] = LEGS.snapshot(self.legs)
        for section, stats in self.sections.items():
            snapshot[section.key] = section.snapshot(stats)  # type: ignore[index]
        return snapshot

"""What the supervisor hands a new worker: declared in shared/ so neither side imports the other.

The supervisor builds one per spawn and pickles it across the forkserver; the
worker (or ``python -m audiogw.worker``) runs from it. Building it must not
import the worker's audio stack (numpy, soxr, websockets) into the supervisor.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from audiogw.shared.config import AudioSocketSettings

# A worker writes every thread's stack to its stderr on this signal (faulthandler); the
# supervisor sends it shortly before it SIGKILLs a worker that stopped answering.
DUMP_SIGNAL = signal.SIGUSR2


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to start; frozen and picklable (it crosses the forkserver)."""

    extension: str
    app: str
    settings: AudioSocketSettings
    options: dict[str, Any] = field(default_factory=dict)
    base_dir: str = "."
    bus_endpoint: str | None = None  # None: no supervisor (a worker run alone)
    heartbeat_interval: float = 1.0
    drain_seconds: float = 10.0
    log_format: str = "human"
    log_level: str = "info"
    # This worker's slot in the supervisor's staggering of 20 ms ticks; the
    # worker turns it into a phase (worker.clock.clock_phase). None: no stagger.
    clock_slot: int | None = None
    # The supervisor's pid: the worker ends itself if that process goes away.
    supervisor_pid: int | None = None
    # File this worker appends one JSON line (shared/records.py LegRecord) per ended leg to; None: none.
    leg_records: str | None = None
    # The supervisor's call-control socket (shared/messages.py CallRequest/CallEvent); None: no
    # call control (a worker run alone: audiogw.dial answers "failed").
    calls_endpoint: str | None = None
    # Twilio identity the agent app's ``start`` message carries (``agent.account_sid``).
    account_sid: str = ""


__all__ = ["WorkerSpec"]

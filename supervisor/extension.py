"""The supervisor's view of one extension: its sockets, its worker process and its counters."""
from __future__ import annotations

import asyncio
import os
import socket
import time
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from audiogw.shared.config import ExtensionConfig
from audiogw.shared.net import bind_listener
from audiogw.shared.stats_schema import combine
from audiogw.supervisor.lifecycle import RestartPolicy, WorkerLifecycle


class PortInUse(OSError):
    """A leg's port could not be bound; ``port`` names it."""

    def __init__(self, errno: int | None, message: str, port: int) -> None:
        super().__init__(errno, message)
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


def bind_extension_sockets(bind: str, extension: ExtensionConfig, backlog: int) -> dict[str, socket.socket]:
    """Bind both legs' listening sockets, or neither (nothing half-created)."""
    sockets: dict[str, socket.socket] = {}
    try:
        for leg_kind, port in extension.ports().items():
            try:
                sockets[leg_kind] = bind_listener(bind, port, backlog)
            except OSError as error:
                raise PortInUse(
                    error.errno, f"cannot listen on {bind}:{port} ({leg_kind} leg of extension {extension.id}): "
                    f"{error.strerror}", port,
                ) from None
    except OSError:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


class Predecessor:
    """A replaced worker that still drains its calls (a reload's handover) beside the new one on
    the same sockets. Not the runtime's process: its exit is no crash and starts nothing; its
    heartbeats keep its counters, carried into the totals when it ends."""

    def __init__(self, process: BaseProcess, identity: bytes, stats: dict[str, Any],
                 kernel: psutil.Process | None = None, cpu: float = 0.0) -> None:
        self.process = process
        self.pid: int = process.pid  # type: ignore[assignment]
        self.identity = identity
        self.stats = stats
        self.exited = asyncio.Event()
        self._psutil = kernel
        self.cpu = cpu  # its cpu seconds at the last reading: part of the totals now, carried at its exit

    def read(self) -> tuple[int | None, float]:
        """(resident bytes, cpu seconds) from psutil; once it is gone, no memory and its last cpu reading."""
        if self._psutil is not None:
            try:
                with self._psutil.oneshot():
                    rss = self._psutil.memory_info().rss
                    times = self._psutil.cpu_times()
                self.cpu = max(self.cpu, times.user + times.system)
                return rss, self.cpu
            except psutil.Error:
                self._psutil = None
        return None, self.cpu


class ExtensionRuntime:
    def __init__(self, config: ExtensionConfig, sockets: dict[str, socket.socket], policy: RestartPolicy) -> None:
        self.config = config
        self.sockets = sockets
        self.lifecycle = WorkerLifecycle(policy)
        self.process: BaseProcess | None = None
        # Set on attach, cleared when the exit is handled. Not derived from
        # process.exitcode: that polls with a fresh selector on every heartbeat.
        self.pid: int | None = None
        self.identity: bytes | None = None  # the worker's ZeroMQ identity, for commands
        self.source = "file"  # where its definition comes from: "file" or "runtime" (set by the supervisor)
        self.started_at: float | None = None  # monotonic, current incarnation
        self._stats: dict[str, Any] = {}  # latest heartbeat's snapshot (this incarnation)
        self.carried: dict[str, Any] = {}  # what previous incarnations leave: their counters and histograms
        self._totals: dict[str, Any] | None = None  # carried + live, built on first use after a change
        self.last_heartbeat_wall: float | None = None
        self.lock = asyncio.Lock()  # one command at a time per extension, never a global lock
        self.ready_event = asyncio.Event()
        self.exited_event = asyncio.Event()
        # How the current start ends: None (it serves) or the reason it failed; see expect_outcome().
        self.outcome: asyncio.Future[str | None] | None = None
        self.predecessor: Predecessor | None = None  # the old worker draining apart after a handover
        self.failure_report: str | None = None  # why the live worker cannot start (its Failed message)
        # (totals, kernel figures, lifecycle key, ExtensionSample): the metrics sample and what it was
        # built from (supervisor/metrics.py sample_runtime), built again only when one of those changed.
        self.metrics_sample: tuple | None = None
        self._psutil: psutil.Process | None = None
        self._last_cpu = 0.0  # cpu seconds of the live incarnation at the last reading
        self.cpu_carried = 0.0  # cpu seconds of previous incarnations
        # ((pid, state), monotonic time, (rss, cpu seconds, real-time priority)) of the last kernel reading.
        self._kernel_figures: tuple[tuple, float, tuple[int | None, float | None, int | None]] | None = None

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def stats(self) -> dict[str, Any]:
        return self._stats

    @stats.setter
    def stats(self, snapshot: dict[str, Any]) -> None:
        """A heartbeat's snapshot; replaced whole, never changed in place (a published total may share it)."""
        self._stats = snapshot
        self._totals = None

    def expect_outcome(self) -> None:
        """Before an operator start: the next ready, or the next failure (an exit before or after
        ready, a port that cannot be bound), settles ``outcome`` for whoever waits for the truth."""
        self.outcome = asyncio.get_running_loop().create_future()

    def settle(self, failure: str | None) -> None:
        """The current start served (``None``) or failed (the reason); only the first word counts."""
        if self.outcome is not None and not self.outcome.done():
            self.outcome.set_result(failure)

    @property
    def state(self) -> str:
        """The public state name (SPEC), from the lifecycle's one mapping."""
        return self.lifecycle.public_state

    @property
    def reason(self) -> str | None:
        """The last failure, as the lifecycle recorded it."""
        return self.lifecycle.last_failure

    def attach(self, process: BaseProcess) -> None:
        self.process = process
        self.pid = process.pid
        self.identity = f"{self.id}:{process.pid}".encode()
        self.started_at = time.monotonic()
        self.stats = {}
        self.failure_report = None
        self.ready_event.clear()
        self.exited_event.clear()
        try:
            self._psutil = psutil.Process(process.pid)
        except psutil.Error:
            self._psutil = None

    def detach(self) -> None:
        """The process exited: keep its counters so totals never go backwards (gauges go)."""
        self.carried = combine(self.carried, self._stats, gauges=False)
        self._release_process()

    def hand_over(self) -> Predecessor:
        """The live process becomes the draining predecessor; the runtime has no process until the
        next attach (its sockets stay: the new worker gets them)."""
        assert self.process is not None and self.identity is not None and self.predecessor is None
        # Its cpu seconds go with it (counted as the predecessor's until it exits, never twice).
        predecessor = self.predecessor = Predecessor(self.process, self.identity, self._stats, self._psutil,
                                                     self._last_cpu)
        self._last_cpu = 0.0
        self._release_process()
        return predecessor

    def _release_process(self) -> None:
        """The runtime no longer has a live process (it exited, or drains as a predecessor)."""
        self.stats = {}
        self.cpu_carried += self._last_cpu
        self._last_cpu = 0.0
        self.process = None
        self.pid = None
        self.identity = None
        self._psutil = None
        self.exited_event.set()

    def predecessor_heartbeat(self, stats: dict[str, Any]) -> None:
        """Its counters, and its cpu seconds read now: what its exit carries is at most one heartbeat old."""
        assert self.predecessor is not None
        self.predecessor.stats = stats
        self.predecessor.read()
        self._totals = None

    def predecessor_exited(self) -> None:
        """The drained predecessor ended: its counters carry (totals never go backwards)."""
        predecessor = self.predecessor
        assert predecessor is not None
        self.carried = combine(self.carried, predecessor.stats, gauges=False)
        self.cpu_carried += predecessor.cpu
        self.predecessor = None
        self._totals = None
        predecessor.exited.set()

    def totals(self) -> dict[str, Any]:
        """Figures over every incarnation of this extension's worker (the schema says what carries).

        Built once per heartbeat at most; callers must not change the result.
        """
        if self._totals is None:
            carried = self.carried
            if self.predecessor is not None:
                carried = combine(carried, self.predecessor.stats, gauges=False)
            self._totals = combine(carried, self._stats, gauges=True)
        return self._totals

    def resources(self) -> tuple[int | None, float | None]:
        """(resident bytes, cpu seconds over every incarnation) from psutil.

        A reload's predecessor still draining counts in both (its memory is the extension's too,
        and its cpu seconds must not vanish from the total at the handover nor at its exit)."""
        rss: int | None = None
        cpu = self.cpu_carried
        process = self._psutil
        if process is not None:
            try:
                with process.oneshot():
                    rss = process.memory_info().rss
                    times = process.cpu_times()
                self._last_cpu = times.user + times.system
            except psutil.Error:
                pass  # exiting: its last reading stands until detach() carries it
            cpu += self._last_cpu
        if self.predecessor is not None:
            old_rss, old_cpu = self.predecessor.read()
            cpu += old_cpu
            if old_rss is not None:
                rss = old_rss + (rss or 0)
        known = process is not None or self.predecessor is not None or cpu > 0
        return rss, cpu if known else None

    def kernel_figures(self, now: float, max_age: float) -> tuple[int | None, float | None, int | None]:
        """(resident bytes, cpu seconds, real-time priority), read from the kernel at most every ``max_age`` s.

        The metrics snapshot is rebuilt several times a second; reading /proc and
        sched_* for every worker each time would cost more than everything else.
        A new or gone worker, or a new state, is read at once: a worker takes its
        real-time priority itself before it reports ready.
        """
        key = (self.pid, self.lifecycle.state, self.predecessor)
        cached = self._kernel_figures
        if cached is None or cached[0] != key or now - cached[1] >= max_age:
            rss, cpu_seconds = self.resources()
            cached = self._kernel_figures = (key, now, (rss, cpu_seconds, self.realtime_priority()))
        return cached[2]

    def realtime_priority(self) -> int | None:
        """The worker's real-time priority as the kernel has it (0: normal scheduling); None without a worker.

        Read from the kernel, not the config: a worker refused SCHED_RR shows 0.
        """
        pid = self.pid
        if not pid:
            return None
        try:
            if os.sched_getscheduler(pid) not in (os.SCHED_RR, os.SCHED_FIFO):
                return 0
            return os.sched_getparam(pid).sched_priority
        except OSError:
            return None

    def cpu_percent(self) -> float | None:
        """CPU use since the previous call, in percent of one core."""
        process = self._psutil
        if process is None:
            return None
        try:
            return process.cpu_percent(None)
        except psutil.Error:
            return None

    def close_sockets(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets = {}

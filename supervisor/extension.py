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
from audiogw.supervisor.lifecycle import RestartPolicy, WorkerLifecycle


class PortInUse(OSError):
    pass


def bind_extension_sockets(bind: str, extension: ExtensionConfig, backlog: int) -> dict[str, socket.socket]:
    """Bind both legs' listening sockets, or neither (nothing half-created)."""
    sockets: dict[str, socket.socket] = {}
    try:
        for leg_kind, port in extension.ports().items():
            try:
                sockets[leg_kind] = bind_listener(bind, port, backlog)
            except OSError as error:
                raise PortInUse(
                    error.errno, f"cannot listen on {bind}:{port} ({leg_kind} leg of extension {extension.id}): {error.strerror}"
                ) from None
    except OSError:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


def _add_counts(total: dict[str, Any], part: dict[str, Any]) -> None:
    """Add a stats snapshot into running totals (numbers add, dicts merge, lists add element-wise)."""
    for key, value in part.items():
        if isinstance(value, dict):
            _add_counts(total.setdefault(key, {}), value)
        elif isinstance(value, list):
            current = total.setdefault(key, [0] * len(value))
            for index, item in enumerate(value):
                current[index] += item
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            if key in ("calls_active", "max"):
                continue  # gauges and maxima are not carried across incarnations
            total[key] = total.get(key, 0) + value


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
        self.started_at: float | None = None  # monotonic, current incarnation
        self.stats: dict[str, Any] = {}  # latest heartbeat's cumulative counters (this incarnation)
        self.carried: dict[str, Any] = {}  # counters of previous incarnations
        self.last_heartbeat_wall: float | None = None
        self.active_legs = 0
        self.lock = asyncio.Lock()  # one command at a time per extension, never a global lock
        self.ready_event = asyncio.Event()
        self.exited_event = asyncio.Event()
        self._psutil: psutil.Process | None = None
        self._last_cpu = 0.0  # cpu seconds of the live incarnation at the last reading
        self.cpu_carried = 0.0  # cpu seconds of previous incarnations

    @property
    def id(self) -> str:
        return self.config.id

    def attach(self, process: BaseProcess) -> None:
        self.process = process
        self.pid = process.pid
        self.identity = f"{self.id}:{process.pid}".encode()
        self.started_at = time.monotonic()
        self.stats = {}
        self.active_legs = 0
        self.ready_event.clear()
        self.exited_event.clear()
        try:
            self._psutil = psutil.Process(process.pid)
        except psutil.Error:
            self._psutil = None

    def detach(self) -> None:
        """The process exited: keep its counters so totals never go backwards."""
        _add_counts(self.carried, self.stats)
        self.stats = {}
        self.active_legs = 0
        self.cpu_carried += self._last_cpu
        self._last_cpu = 0.0
        self.process = None
        self.pid = None
        self.identity = None
        self._psutil = None
        self.exited_event.set()

    def totals(self) -> dict[str, Any]:
        """Counters over every incarnation of this extension's worker."""
        total: dict[str, Any] = {}
        _add_counts(total, self.carried)
        _add_counts(total, self.stats)
        # calls_active is a gauge: only the live worker's value counts.
        for leg_kind, leg_stats in (self.stats.get("legs") or {}).items():
            total.setdefault("legs", {}).setdefault(leg_kind, {})["calls_active"] = leg_stats.get("calls_active", 0)
        # So is the agent's playback buffer depth.
        if "agent" in total:
            live = (self.stats.get("agent") or {}).get("playback_buffer_seconds") or {}
            total["agent"]["playback_buffer_seconds"] = dict(live) if isinstance(live, dict) else {}
        return total

    def resources(self) -> tuple[int | None, float | None]:
        """(resident bytes, cpu seconds over every incarnation) from psutil."""
        process = self._psutil
        if process is None:
            return None, self.cpu_carried or None
        try:
            with process.oneshot():
                rss = process.memory_info().rss
                times = process.cpu_times()
        except psutil.Error:
            return None, self.cpu_carried or None
        self._last_cpu = times.user + times.system
        return rss, self.cpu_carried + self._last_cpu

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

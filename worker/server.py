"""One extension's worker: two listening sockets, one clock, one app.

Each listening socket is served by its own ``serve_forever()`` task. The
sockets may be bound here (standalone) or handed in already bound by the
supervisor, which keeps them open across worker restarts.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Callable

from audiogw.shared.histogram import Histogram
from audiogw.worker.apps import App
from audiogw.worker.leg import Leg, LegProtocol
from audiogw.worker.stats import WorkerStats
from audiogw.worker.ticker import FrameTicker

if TYPE_CHECKING:
    import socket

    from audiogw.shared.config import AudioSocketSettings

log = logging.getLogger("audiogw.worker")

LOOP_LAG_INTERVAL = 0.05


class ExtensionWorker:
    def __init__(self, extension: str, app: App, settings: "AudioSocketSettings",
                 clock_phase: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.extension = extension
        # The legs read time through this (tests drive a manual clock); the ticker keeps its own.
        self.clock = clock
        self.app = app
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.stats = WorkerStats()
        self.ticker = FrameTicker(phase=clock_phase)
        self.rate = app.rate  # the legs' AudioSocket rate; 0: learn it from the first inbound frame
        self.connections: set[LegProtocol] = set()
        self.servers: dict[str, asyncio.base_events.Server] = {}
        self._allow = tuple(ipaddress.ip_network(network, strict=False) for network in settings.allow)
        self._allowed_cache: dict[str, bool] = {}
        self._tasks: list[asyncio.Task] = []
        self.serving = False
        # Called with each leg as it ends (after its `leg end` line): a standalone worker's leg records.
        self.on_leg_end: "Callable[[Leg], None] | None" = None

    def peer_allowed(self, host: str) -> bool:
        allowed = self._allowed_cache.get(host)
        if allowed is None:
            try:
                address = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                allowed = False
            else:
                if address.version == 6 and address.ipv4_mapped is not None:
                    address = address.ipv4_mapped
                allowed = any(address in network for network in self._allow)
            if len(self._allowed_cache) < 4096:
                self._allowed_cache[host] = allowed
        return allowed

    async def serve(self, sockets: dict[str, "socket.socket"]) -> None:
        """Start serving the already-bound listening sockets ({'ia': sock, 'retorno': sock})."""
        await self.app.start()
        self._tasks.append(self.loop.create_task(self.ticker.run(), name="ticker"))
        self._tasks.append(self.loop.create_task(self._measure_loop_lag(self.stats.loop_lag), name="loop-lag"))
        for leg_kind, sock in sockets.items():
            # asyncio listens again with its own backlog (100) unless told ours.
            server = await self.loop.create_server(
                lambda leg_kind=leg_kind: LegProtocol(self, leg_kind), sock=sock, start_serving=True,
                backlog=self.settings.listen_backlog,
            )
            self.servers[leg_kind] = server
            self._tasks.append(self.loop.create_task(server.serve_forever(), name=f"serve-{leg_kind}"))
        self.serving = True
        for leg_kind, server in self.servers.items():
            address = server.sockets[0].getsockname()
            log.info("serving extension=%s leg=%s address=%s:%s app=%s",
                     self.extension, leg_kind, address[0], address[1], self.app.name)

    async def _measure_loop_lag(self, histogram: Histogram) -> None:
        """How late a short timer fires: the figure that shows a stalled loop."""
        monotonic = time.monotonic
        while True:
            expected = monotonic() + LOOP_LAG_INTERVAL
            await asyncio.sleep(LOOP_LAG_INTERVAL)
            lag = monotonic() - expected
            histogram.observe(lag if lag > 0.0 else 0.0)

    @property
    def active_legs(self) -> int:
        return len(self.ticker)

    def stop_accepting(self) -> None:
        for server in self.servers.values():
            server.close()

    async def drain(self, seconds: float) -> None:
        """Stop accepting, let calls run up to ``seconds``, then hang up whatever is left.

        ``shorten_drain`` may bring the end nearer meanwhile (a removal or stop that comes
        while this worker drains after a reload's handover: the later, shorter drain wins)."""
        self.stop_accepting()
        self._drain_deadline = time.monotonic() + max(0.0, seconds)
        self._drain_changed = asyncio.Event()
        legs = [protocol.leg for protocol in self.connections if protocol.leg is not None]
        if legs:
            log.info("draining extension=%s active_legs=%d for up to %.1fs", self.extension, len(legs), seconds)
            waits = [asyncio.ensure_future(leg.closed.wait()) for leg in legs]
            all_closed = asyncio.ensure_future(asyncio.wait(waits))
            while (remaining := self._drain_deadline - time.monotonic()) > 0 and not all_closed.done():
                self._drain_changed.clear()
                changed = asyncio.ensure_future(self._drain_changed.wait())
                await asyncio.wait((all_closed, changed), timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
            all_closed.cancel()
            for wait in waits:
                wait.cancel()
        self.hangup_all("drain_timeout" if self.active_legs else "drained")

    _drain_deadline = float("inf")
    _drain_changed: asyncio.Event | None = None

    def shorten_drain(self, seconds: float) -> None:
        """End a drain under way within ``seconds`` from now, if that is sooner than planned."""
        deadline = time.monotonic() + max(0.0, seconds)
        if deadline < self._drain_deadline:
            self._drain_deadline = deadline
            if self._drain_changed is not None:
                self._drain_changed.set()

    def hangup_all(self, reason: str) -> None:
        for protocol in list(self.connections):
            protocol.end(reason, send_hangup=protocol.leg is not None)

    async def close(self) -> None:
        self.stop_accepting()
        self.hangup_all("worker_stop")
        # Let the transports flush their hangup frames before the loop ends.
        await asyncio.sleep(0.05)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.app.close()


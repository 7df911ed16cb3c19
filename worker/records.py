"""A standalone worker's ready file and leg records (``--ready-file``, ``--leg-records``), written off the loop.

The loop only builds each document and queues it; a thread of its own
encodes and writes it, so the audio clock never waits for a disk. The thread
starts once the worker serves: after the worker entered real-time, so it
inherits the policy like the worker's other threads (see worker/realtime.py).
The documents' shapes are declared in shared/records.py.
"""
from __future__ import annotations

import errno
import os
import queue
import threading
import time
from typing import TYPE_CHECKING

from audiogw.shared.records import LegRecord, WorkerReady, encode, write_ready

if TYPE_CHECKING:
    from audiogw.worker.leg import Leg
    from audiogw.worker.server import ExtensionWorker

_STOP = object()


class RecordWriter:
    """Writes what a standalone worker reports to files; ``close()`` writes what is still queued."""

    def __init__(self, ready_file: str | None = None, leg_records: str | None = None) -> None:
        """Open the files now, so a path the worker cannot write fails at start (OSError), not in the thread."""
        self.ready_file = ready_file
        self.leg_records = leg_records
        if ready_file is not None:
            folder = os.path.dirname(os.path.abspath(ready_file))
            if not os.path.isdir(folder):
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), ready_file)
            if not os.access(folder, os.W_OK):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), ready_file)
        self._records = open(leg_records, "ab") if leg_records is not None else None
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def attach(self, worker: "ExtensionWorker") -> None:
        """The worker serves: start writing, the ready file first, then a record per leg that ends."""
        if self.ready_file is None and self.leg_records is None:
            return
        self._thread = threading.Thread(target=self._run, name="records", daemon=True)
        self._thread.start()
        if self.leg_records is not None:
            worker.on_leg_end = self._leg_ended
        if self.ready_file is not None:
            ports = {kind: server.sockets[0].getsockname()[1] for kind, server in worker.servers.items()}
            self._queue.put(WorkerReady(extension=worker.extension, pid=os.getpid(), app=worker.app.name, ports=ports))

    def _leg_ended(self, leg: "Leg") -> None:
        self._queue.put(LegRecord(
            extension=leg.extension, leg=leg.kind, uuid=str(leg.uuid), reason=leg.end_reason,
            duration=round(time.monotonic() - leg.started_at, 3),
            frames_received=leg.frames_received, frames_sent=leg.frames_sent, underruns=leg.underruns,
            late_frames=leg.late_frames, max_send_gap_ms=round(leg.max_send_gap * 1000, 3),
            dropped={"inbound_flood": leg.flood_dropped, "latency": leg.outbound.latency_dropped},
            dtmf=leg.dtmf_received, app=dict(leg.app_figures),
        ))

    def _run(self) -> None:
        records = self._records
        try:
            while (item := self._queue.get()) is not _STOP:
                if isinstance(item, WorkerReady):
                    write_ready(self.ready_file, item)
                elif records is not None:
                    records.write(encode(item) + b"\n")
                    records.flush()
        finally:
            if records is not None:
                records.close()

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
        elif self._records is not None:
            self._records.close()

"""Run one extension's worker: from the supervisor's zygote, or alone from the command line.

The process installs uvloop, serves its two listening sockets and waits for a
stop: a signal (the handler only enqueues it) or a drain/stop command from the
supervisor link. It never forks.
"""
from __future__ import annotations

import asyncio
import ctypes
import faulthandler
import gc
import logging
import os
import signal
import socket
import sys

import uvloop

from audiogw.shared.logs import configure_logging
from audiogw.shared.proctitle import set_title, worker_title
from audiogw.shared.messages import Drain, Failed, Ready, WorkerCommand, encode_worker_message
from audiogw.shared.worker_spec import DUMP_SIGNAL, WorkerSpec
from audiogw.worker.apps import AppContext, AppOptionError, create_app
from audiogw.worker.clock import clock_phase
from audiogw.worker.realtime import realtime_before_logging
from audiogw.worker.records import RecordWriter
from audiogw.worker.server import ExtensionWorker

log = logging.getLogger("audiogw.worker")

PR_SET_PDEATHSIG = 1


def set_parent_death_signal() -> None:
    """Ask Linux to kill us when our parent dies, so no orphan keeps a port."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        log.warning("prctl(PR_SET_PDEATHSIG) unavailable; relying on the heartbeat parent check")


async def serve_worker(spec: WorkerSpec, sockets: dict[str, socket.socket],
                       records: RecordWriter | None = None) -> int:
    """The worker's whole life on the running loop; returns the exit status.

    ``records``: a standalone worker's ready file and leg records (worker/records.py)."""
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[WorkerCommand] = asyncio.Queue()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, commands.put_nowait,
                                Drain(seconds=spec.drain_seconds, reason=signal.Signals(signum).name))
    context = AppContext(extension=spec.extension, options=spec.options, base_dir=spec.base_dir,
                         account_sid=spec.account_sid)
    app = create_app(spec.app, context)
    phase = clock_phase(spec.clock_slot) if spec.clock_slot is not None else None
    worker = ExtensionWorker(spec.extension, app, spec.settings, phase)
    context.counters = worker.stats.app_counters
    context.stats = worker.stats
    if spec.calls_endpoint:  # call control (dial, DTMF, hangups) through the supervisor's AMI
        from audiogw.worker.calls import CallLink

        context.calls = CallLink(spec.calls_endpoint, spec.extension, worker.stats.app_counters)
        context.calls.start()
    link = None
    if spec.bus_endpoint:
        from audiogw.worker.link import SupervisorLink

        link = SupervisorLink(spec.bus_endpoint, worker, spec.heartbeat_interval, commands.put_nowait,
                              supervisor_pid=spec.supervisor_pid)
    await worker.serve(sockets)
    if records is not None:
        records.attach(worker)
    # Everything loaded so far lives for the whole process: keep it out of the
    # collector's scans so a collection pause on the audio loop stays short.
    gc.freeze()
    if link is not None:
        link.start()
        link.send(Ready)
    log.info("worker ready extension=%s pid=%d", spec.extension, os.getpid(),
             extra={"event": "worker_ready", "extension": spec.extension})
    command = await commands.get()
    if isinstance(command, Drain):
        log.info("worker stopping extension=%s reason=%s drain=%.1fs", spec.extension, command.reason, command.seconds,
                 extra={"event": "worker_stopping", "extension": spec.extension, "reason": command.reason,
                        "drain": command.seconds})
        drain = loop.create_task(worker.drain(command.seconds))
        while True:  # a later command (a removal's or stop's drain) may end the drain sooner
            later = loop.create_task(commands.get())
            await asyncio.wait((drain, later), return_when=asyncio.FIRST_COMPLETED)
            if not later.done():
                later.cancel()
                break
            worker.shorten_drain(later.result().seconds if isinstance(later.result(), Drain) else 0.0)
        await drain
    else:  # Stop
        log.info("worker stopping extension=%s reason=%s", spec.extension, command.reason,
                 extra={"event": "worker_stopping", "extension": spec.extension, "reason": command.reason})
    await worker.close()
    if context.calls is not None:
        await context.calls.close()
    if link is not None:
        await link.close()
    return 0


def report_failed(spec: WorkerSpec, reason: str) -> None:
    """Tell the supervisor why this worker cannot start (``Failed``) before it exits 78, so its
    reason is the option error itself. A socket of its own, no identity (the supervisor reads
    extension and pid from the message): the link may never have been made, or not closed."""
    if not spec.bus_endpoint:
        return
    import zmq

    context = zmq.Context()
    bus = context.socket(zmq.DEALER)
    bus.setsockopt(zmq.LINGER, 500)  # the term below waits at most that for the message to leave
    try:
        bus.connect(spec.bus_endpoint)
        bus.send(encode_worker_message(Failed(extension=spec.extension, pid=os.getpid(), stats={}, reason=reason)),
                 zmq.NOBLOCK)
    except zmq.ZMQError as error:
        log.warning("worker extension=%s could not report its failure to the supervisor: %s", spec.extension, error)
    finally:
        bus.close()
        context.term()


def run_worker(spec: WorkerSpec, sockets: dict[str, socket.socket], records: RecordWriter | None = None) -> int:
    """Process entry point (the zygote calls this in a fresh child; `python -m audiogw.worker` with ``records``)."""
    set_parent_death_signal()
    set_title(worker_title(spec.extension))
    # A hung loop cannot log: the C-level handler writes every thread's stack to stderr (the log).
    faulthandler.register(DUMP_SIGNAL, all_threads=True)
    listener = realtime_before_logging(
        spec.settings.realtime_priority, spec.extension,
        lambda: configure_logging(spec.log_format, spec.log_level, off_loop=True),
    )
    own_records = None
    if records is None and spec.leg_records is not None:
        try:
            records = own_records = RecordWriter(leg_records=spec.leg_records)
        except OSError as error:  # the calls matter more than their records: serve without
            log.error("worker extension=%s cannot write leg records to %s: %s; serving without them",
                      spec.extension, spec.leg_records, error.strerror or error)
    try:
        return uvloop.run(serve_worker(spec, sockets, records))
    except AppOptionError as error:
        log.error("worker extension=%s cannot start: %s", spec.extension, error)
        report_failed(spec, str(error))
        return 78  # EX_CONFIG: the supervisor must not restart it in a loop
    finally:
        if own_records is not None:
            own_records.close()
        listener.stop()  # writes what is still queued


def main(argv: list[str] | None = None) -> int:
    from audiogw.worker.cli import worker_command

    return worker_command.main(args=argv, prog_name="python -m audiogw.worker", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())

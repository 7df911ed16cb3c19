"""The single-loop baseline: every extension of a config served by ONE event loop in ONE process.

    python -m audiogw.bench.baseline --config PATH

This is the design audiogw replaces, rebuilt from the same worker code so the
benchmark compares designs, not implementations: one ``ExtensionWorker`` per
extension (its app, its 20 ms ticker, its two ``serve_forever()`` tasks), all
on one uvloop. A stall in any app blocks every extension's clock. It prints
``ready`` on stdout once every port serves and stops on SIGTERM/SIGINT.
Benchmarks only.
"""
from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys

import click
import uvloop

from audiogw.shared.config import Config, ConfigError, load_config
from audiogw.shared.logs import configure_logging
from audiogw.shared.net import bind_listener
from audiogw.shared.records import leg_records_file
from audiogw.worker.apps import AppContext, create_app
from audiogw.worker.main import set_parent_death_signal
from audiogw.worker.clock import clock_phase
from audiogw.worker.realtime import realtime_before_logging
from audiogw.worker.records import RecordWriter
from audiogw.worker.server import ExtensionWorker


async def serve_all(config: Config) -> None:
    """Serve every extension on the running loop until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    workers: list[ExtensionWorker] = []
    writers: list[RecordWriter] = []
    folder = config.supervisor.leg_records
    if folder is not None:
        os.makedirs(folder, exist_ok=True)
    for slot, extension in enumerate(config.extensions):
        backlog = config.audiosocket.listen_backlog
        sockets = {kind: bind_listener(config.audiosocket.bind, port, backlog) for kind, port in extension.ports().items()}
        context = AppContext(extension=extension.id, options=extension.options, base_dir=config.base_dir)
        # Staggered clocks, as the supervisor gives its workers: the same worker code, fairly compared.
        worker = ExtensionWorker(extension.id, create_app(extension.app, context), config.audiosocket,
                                 clock_phase(slot))
        context.counters = worker.stats.app_counters
        context.stats = worker.stats
        await worker.serve(sockets)
        workers.append(worker)
        if folder is not None:  # the same leg records a supervisor's workers write
            writers.append(writer := RecordWriter(leg_records=leg_records_file(folder, extension.id)))
            writer.attach(worker)
    gc.freeze()  # as serve_worker does: the same collector behaviour as a real worker
    print("ready", flush=True)
    await stop.wait()
    for worker in workers:
        worker.stop_accepting()
    await asyncio.gather(*(worker.close() for worker in workers), return_exceptions=True)
    for writer in writers:
        writer.close()


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False))
def main(config_path: str) -> None:
    """Serve every extension in CONFIG from one event loop (benchmark baseline)."""
    set_parent_death_signal()  # a benchmark that dies must not leave ports behind
    try:
        config = load_config(config_path)
    except ConfigError as error:
        click.echo(f"bench_baseline: {error}", err=True)
        sys.exit(2)
    realtime_before_logging(  # as run_worker does
        config.audiosocket.realtime_priority, "all",
        lambda: configure_logging(config.supervisor.log_format, config.supervisor.log_level),
    )
    uvloop.run(serve_all(config))


if __name__ == "__main__":
    main()

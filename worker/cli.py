"""`python -m audiogw.worker`: one worker alone, binding its own sockets (development, debugging)."""
from __future__ import annotations

import os
import sys

import click

from audiogw.shared.apps import BUILTIN_APPS
from audiogw.shared.audiosocket import LEG_KINDS
from audiogw.shared.config import AudioSocketSettings, ConfigError, parse_config, parse_option, validate_extension_id


def _extension_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return validate_extension_id(value)
    except ConfigError as error:
        raise click.BadParameter(error.reason) from None


def _options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict:
    options = {}
    for text in values:
        try:
            key, value = parse_option(text)
        except ConfigError as error:
            raise click.BadParameter(f"{text!r}: {error.reason}") from None
        options[key] = value
    return options


@click.command("worker")
@click.option("--extension", required=True, callback=_extension_id, help="Extension id (digits, * and #).")
@click.option("--ia-port", required=True, type=click.IntRange(0, 65535), help="Port for the visitor's (ia) leg; 0 picks one.")
@click.option("--retorno-port", required=True, type=click.IntRange(0, 65535), help="Port for the resident's (retorno) leg; 0 picks one.")
@click.option("--app", default="echo", show_default=True,
              help=f"{', '.join(BUILTIN_APPS)}, or an app outside the registry as module:Class.")
@click.option("--option", "options", multiple=True, callback=_options, metavar="KEY=VALUE", help="App option (repeatable).")
@click.option("--bind", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--allow", multiple=True, default=("127.0.0.0/8",), show_default=True, help="Peer networks that may connect (repeatable).")
@click.option("--realtime-priority", type=click.IntRange(0, 99), default=AudioSocketSettings().realtime_priority,
              show_default=True,
              help="SCHED_RR priority of the worker (audiosocket.realtime_priority); 0: normal. Refused: normal.")
@click.option("--log-format", type=click.Choice(["human", "json"]), default="human", show_default=True)
@click.option("--ready-file", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write {extension, pid, app, ports by leg} here as JSON once both legs serve.")
@click.option("--leg-records", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Append each ended leg's figures here, one JSON line per leg.")
def worker_command(extension: str, ia_port: int, retorno_port: int, app: str, options: dict,
                   bind: str, allow: tuple[str, ...], realtime_priority: int, log_format: str,
                   ready_file: str | None, leg_records: str | None) -> None:
    """Serve one extension's ia and retorno AudioSocket ports in this process.

    A program that starts it on port 0 learns the ports from ``--ready-file`` and
    each leg's figures from ``--leg-records`` (shapes: audiogw.shared.records),
    not from the log, which is for people.
    """
    from audiogw.shared.net import bind_listener
    from audiogw.shared.worker_spec import WorkerSpec
    from audiogw.worker.main import run_worker
    from audiogw.worker.records import RecordWriter

    if ia_port and ia_port == retorno_port:
        raise click.BadParameter("--ia-port and --retorno-port must differ", param_hint="--retorno-port")
    try:
        settings = parse_config(
            {"audiosocket": {"bind": bind, "allow": list(allow), "realtime_priority": realtime_priority}},
            path=None, base_dir=os.getcwd()
        ).audiosocket
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    sockets = {}
    for leg_kind, port in zip(LEG_KINDS, (ia_port, retorno_port)):
        try:
            sockets[leg_kind] = bind_listener(bind, port, settings.listen_backlog)
        except OSError as error:
            click.echo(f"cannot listen on {bind}:{port} for the {leg_kind} leg: {error.strerror}", err=True)
            sys.exit(1)
    spec = WorkerSpec(extension=extension, app=app, settings=settings, options=options,
                      base_dir=os.getcwd(), log_format=log_format)
    try:
        records = RecordWriter(ready_file, leg_records)
    except OSError as error:
        click.echo(f"cannot write {error.filename}: {error.strerror}", err=True)
        sys.exit(1)
    try:
        status = run_worker(spec, sockets, records)
    finally:
        records.close()  # what is still queued
    sys.exit(status)

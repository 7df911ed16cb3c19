"""`audiogw call HOST:PORT`: place one test call like Asterisk's AudioSocket() would.

For trying a gateway without Asterisk: it plays a WAV file, a tone or silence,
optionally records what the gateway sent back, and prints the pacing it
observed from kernel receive timestamps (what a caller would hear as choppy).
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys
import uuid
from pathlib import Path

import click
import numpy
import uvloop

from audiogw.shared.audiosocket import KIND_FOR_RATE
from audiogw.shared.errors import OneLineErrors, report_error
from audiogw.shared.wav import WavError, read_wav, tone, write_wav

from .softphone import (
    CallConnectError,
    CallResult,
    dtmf_plan,
    format_address,
    kernel_timestamps_supported,
    place_call,
)


def parse_host_port(text: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT); ValueError says what is wrong."""
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{text!r} is not [IPV6]:PORT")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} inside brackets is not an IPv6 address") from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{text!r} is not HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:{port_text}")
        if any(character.isspace() for character in host):
            raise ValueError(f"{host!r} is not a host name")
    if not port_text.isdigit():
        raise ValueError(f"port {port_text!r} is not a number")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is outside 1-65535")
    return host, port


class HostPort(click.ParamType):
    name = "HOST:PORT"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        try:
            return parse_host_port(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class UuidType(click.ParamType):
    name = "UUID"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> uuid.UUID:
        if isinstance(value, uuid.UUID):
            return value
        try:
            return uuid.UUID(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a UUID", param, ctx)


class _CallCommand(OneLineErrors, click.Command):
    """Errors as one line, JSON under --json (see audiogw.shared.errors)."""


def _check_record_path(path: Path) -> None:
    """A --record file that cannot be written is a usage error before the call, not after it."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise click.BadParameter(f"cannot write {path}: folder {folder} does not exist", param_hint="--record")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise click.BadParameter(f"cannot write {path}: permission denied", param_hint="--record")


@click.command("call", cls=_CallCommand)
@click.argument("address", metavar="HOST:PORT", type=HostPort())
@click.option("--uuid", "call_uuid", type=UuidType(), default=None, help="Call UUID (default: random).")
@click.option("--play", "play_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="WAV file to send (any PCM rate/channels; converted).")
@click.option("--tone", "tone_hz", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Send a sine tone of this frequency instead of silence.")
@click.option("--tone-at", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds of silence before the tone starts (a caller who first listens).")
@click.option("--tone-seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="How long the tone lasts (default: to the end of the call); silence after it.")
@click.option("--record", "record_path", type=click.Path(dir_okay=False, writable=True, path_type=Path),
              help="Write the audio the gateway sent to this WAV file.")
@click.option("--seconds", type=click.FloatRange(min=0.02), default=5.0, show_default=True,
              help="Call length.")
@click.option("--dtmf", default="", help="DTMF digits to send (0-9 * # A-D), one per 100 ms.")
@click.option("--dtmf-at", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds into the call when the first digit goes out.")
@click.option("--rate", type=click.Choice([str(rate) for rate in sorted(KIND_FOR_RATE)]), default="8000",
              show_default=True, help="Sample rate (the AudioSocket() app always uses 8000).")
@click.option("--timeout", "connect_timeout", type=click.FloatRange(min=0, min_open=True), default=5.0,
              show_default=True, help="Seconds to wait for the connection.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def call_command(
    address: tuple[str, int],
    call_uuid: uuid.UUID | None,
    play_path: Path | None,
    tone_hz: float | None,
    tone_at: float,
    tone_seconds: float | None,
    record_path: Path | None,
    seconds: float,
    dtmf: str,
    dtmf_at: float,
    rate: str,
    connect_timeout: float,
    as_json: bool,
) -> None:
    """Place a test call to an AudioSocket gateway and print the pacing it observed."""
    host, port = address
    sample_rate = int(rate)
    if play_path is not None and tone_hz is not None:
        raise click.UsageError("--play and --tone are alternatives; give one")
    if tone_hz is None and (tone_at or tone_seconds is not None):
        raise click.UsageError("--tone-at and --tone-seconds shape a --tone; give --tone too")
    source: numpy.ndarray | None = None
    if play_path is not None:
        try:
            source = read_wav(play_path, sample_rate)
        except WavError as exc:
            raise click.BadParameter(str(exc), param_hint="--play") from None
    elif tone_hz is not None:
        if tone_at >= seconds:
            raise click.BadParameter(f"{tone_at:g} s is not inside a {seconds:g} s call", param_hint="--tone-at")
        length = min(tone_seconds or seconds, seconds - tone_at)
        try:
            source = numpy.concatenate([numpy.zeros(int(tone_at * sample_rate), numpy.int16),
                                        tone(tone_hz, length, sample_rate)])
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--tone") from None
    try:
        dtmf_plan(dtmf, dtmf_at, seconds)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--dtmf") from None
    if record_path is not None:
        _check_record_path(record_path)
    try:
        result = uvloop.run(place_call(
            host, port, call_uuid=call_uuid, source=source, rate=sample_rate, seconds=seconds,
            dtmf=dtmf, dtmf_at=dtmf_at, record=record_path is not None, connect_timeout=connect_timeout,
        ))
    except CallConnectError as exc:
        report_error("unreachable", str(exc), as_json=as_json)
        sys.exit(1)
    if record_path is not None and result.recorded is not None:
        try:
            write_wav(record_path, result.recorded, sample_rate)
        except OSError as exc:
            report_error("io", f"cannot write {record_path}: {exc.strerror or exc}", as_json=as_json)
            sys.exit(1)
    if as_json:
        click.echo(json.dumps(_as_dict(result, host, port)))
    else:
        click.echo(_as_text(result, host, port, record_path))
    if result.hung_up_by == "error":
        report_error("refused", str(result.error), as_json=False)  # the JSON result above carries it
        sys.exit(1)


def _as_dict(result: CallResult, host: str, port: int) -> dict[str, object]:
    return {
        "uuid": str(result.call_uuid),
        "address": format_address(host, port),
        "rate": result.rate,
        "frames_sent": result.frames_sent,
        "frames_received": result.frames_received,
        "late_sends": result.late_sends,
        "dtmf_sent": result.dtmf_sent,
        "hung_up_by": result.hung_up_by,
        "error": result.error,
        "connect_time": result.connect_time,
        "duration": result.duration,
        "kernel_timestamps": kernel_timestamps_supported(),
        "user_timestamps": result.user_timestamps,
        "late_reads": result.late_reads,
        "pacing": result.pacing().to_dict(),
    }


def _as_text(result: CallResult, host: str, port: int, record_path: Path | None) -> str:
    pacing = result.pacing()
    lines = [
        f"call {result.call_uuid} to {format_address(host, port)} at {result.rate} Hz: "
        f"hung up by {result.hung_up_by} after {result.duration:.2f} s",
        f"frames: sent {result.frames_sent}, received {result.frames_received}"
        + (f", late sends {result.late_sends}" if result.late_sends else "")
        + (f", DTMF {result.dtmf_sent}" if result.dtmf_sent else ""),
        f"pacing: {pacing.frames} frames, deviation from 20 ms p50 {pacing.p50_deviation_ms:.2f} ms, "
        f"p99 {pacing.p99_deviation_ms:.2f} ms, max {pacing.max_deviation_ms:.2f} ms; "
        f"largest gap {pacing.max_gap_ms:.1f} ms; gaps over 40 ms: {pacing.gaps_over_40ms}",
    ]
    if result.user_timestamps:
        lines.append(f"note: {result.user_timestamps} frames had no kernel timestamp (read time used)")
    if result.late_reads:
        lines.append(f"note: {result.late_reads} frames were read late: this softphone was behind")
    if result.error and result.hung_up_by != "error":
        lines.append(f"warning: {result.error}")
    if record_path is not None:
        lines.append(f"recorded {0 if result.recorded is None else len(result.recorded)} samples to {record_path}")
    return "\n".join(lines)

"""`audiogw ctl`: control a running supervisor over ZeroMQ.

One request, one reply: a DEALER socket sends a ``Request`` (shared/messages.py) to the
supervisor's ROUTER and waits (with a deadline) for the reply carrying the same
id; replies with another id are stale answers to an earlier, timed-out request
and are skipped. :func:`request` is the whole protocol and is importable on its
own (tests, the benchmark). The supervisor's commands are not written here: each
is built from its declaration in ``shared/commands.py`` (arguments, validators,
help) by :func:`declared_command`, which checks the arguments with the same
validators the supervisor runs, calls :func:`request` once and prints the result
(``HUMAN`` says how it reads for a person). ``top`` and ``keygen`` are ctl's own.

Exit statuses (SPEC.md): 0 done, 1 refused by the supervisor (``error: ...`` on
stderr), 2 usage or configuration error, 3 no reply within the timeout (the
message names the endpoint tried).
"""
from __future__ import annotations

import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click
import orjson
import zmq

from audiogw.shared.commands import (
    ADD_EXTENSION,
    DECLARATIONS,
    DIALPLAN,
    LIST,
    RELOAD,
    REMOVE_EXTENSION,
    RESET,
    RESTART_EXTENSION,
    STATUS,
    STOP,
    Arg,
    ArgumentInvalid,
    CommandSpec,
)
from audiogw.shared.config import (
    CONFIG_SEARCH_HELP,
    ConfigError,
    ControlConfig,
    default_config_path,
    load_control_config,
)
from audiogw.shared.errors import OneLineErrors, json_requested, report_error, report_warning
from audiogw.shared.settings import CURVE_KEYS
from audiogw.shared.messages import MessageError, Reply, Request, decode_reply, encode_request

__all__ = [
    "DEFAULT_TIMEOUT",
    "EXIT_OK",
    "EXIT_REFUSED",
    "EXIT_USAGE",
    "EXIT_UNREACHABLE",
    "CtlError",
    "CtlRefused",
    "CtlUnreachable",
    "CtlProtocolError",
    "CtlEndpointError",
    "request",
    "load_server_public_key",
    "load_client_keypair",
    "format_duration",
    "format_seconds_ms",
    "format_bytes",
    "format_percent",
    "format_table",
    "format_list_table",
    "format_status_table",
    "format_extension",
    "format_reload",
    "ctl_group",
]

DEFAULT_TIMEOUT = 5.0
EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

CLEAR_SCREEN = "\x1b[H\x1b[2J"


# ----------------------------------------------------------------------- errors


class CtlError(Exception):
    """Base of everything :func:`request` raises on purpose."""


class CtlRefused(CtlError):
    """The supervisor answered ``ok: false``; ``message`` is its reason, for a person."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CtlUnreachable(CtlError):
    """No reply to this request from ``endpoint`` within ``timeout`` seconds."""

    def __init__(self, endpoint: str, timeout: float, hint: str | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.hint = hint
        detail = "is audiogw-supervisor running?"
        if hint:
            detail = f"{detail} {hint}"
        super().__init__(f"no reply from {endpoint} within {self.timeout} s ({detail})")


class CtlProtocolError(CtlError):
    """A reply carrying our id but not of the documented shape."""


class CtlEndpointError(CtlError, ValueError):
    """The endpoint or CURVE key cannot be used (a usage problem, not a network one)."""


# ---------------------------------------------------------------------- request


def load_server_public_key(path: str) -> bytes:
    """The Z85 public key from a ZeroMQ certificate file (``zmq.auth`` format)."""
    import zmq.auth  # noqa: PLC0415 - only tcp:// endpoints need it

    try:
        public, _secret = zmq.auth.load_certificate(path)
    except OSError as error:
        raise CtlEndpointError(
            f"cannot read CURVE server public key {path}: {error.strerror or error}"
        ) from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CtlEndpointError(f"cannot read CURVE server public key {path}: {error}") from None
    if not public:
        raise CtlEndpointError(f"cannot read CURVE server public key {path}: no public-key found")
    return public


def _server_key_bytes(server_public_key: str | bytes) -> bytes:
    """Accept the Z85 key itself (40 characters), raw 32 bytes, or a certificate file path."""
    if isinstance(server_public_key, bytes):
        if len(server_public_key) in (32, 40):
            return server_public_key
        raise CtlEndpointError(f"CURVE server public key must be 40 Z85 characters, got {len(server_public_key)} bytes")
    if os.path.isfile(server_public_key):
        return load_server_public_key(server_public_key)
    if len(server_public_key) == 40:
        return server_public_key.encode("ascii", "replace")
    raise CtlEndpointError(f"CURVE server public key {server_public_key!r} is neither a file nor a 40-character Z85 key")


def load_client_keypair(path: str) -> tuple[bytes, bytes]:
    """This client's (public, secret) Z85 keys from its secret certificate (``*.key_secret``)."""
    import zmq.auth  # noqa: PLC0415 - only tcp:// endpoints need it

    try:
        _public, secret = zmq.auth.load_certificate(path)
    except OSError as error:
        raise CtlEndpointError(f"cannot read CURVE client secret key {path}: {error.strerror or error}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise CtlEndpointError(f"cannot read CURVE client secret key {path}: {error}") from None
    if not secret:
        raise CtlEndpointError(
            f"cannot read CURVE client secret key {path}: no secret-key found (give the .key_secret file, not the .key)"
        )
    return _keypair_from_secret(secret, f"CURVE client secret key in {path} is not a 40-character Z85 key")


def _keypair_from_secret(secret: bytes, refusal: str) -> tuple[bytes, bytes]:
    """Derive the public key, which also proves the secret is a valid Z85 CURVE key."""
    try:
        return zmq.curve_public(secret), secret
    except (zmq.ZMQError, ValueError, TypeError):
        raise CtlEndpointError(refusal) from None


def _client_keypair(client_secret_key: str | bytes) -> tuple[bytes, bytes]:
    """Accept a secret certificate file path, or the 40-character Z85 secret key itself."""
    if isinstance(client_secret_key, bytes):
        return _keypair_from_secret(client_secret_key, "CURVE client secret key must be 40 Z85 characters")
    if os.path.isfile(client_secret_key):
        return load_client_keypair(client_secret_key)
    if len(client_secret_key) != 40:
        raise CtlEndpointError(f"CURVE client secret key {client_secret_key!r} is not a file")
    return _keypair_from_secret(  # the text is not echoed: it may be a real secret with a typo
        client_secret_key.encode("ascii", "replace"),
        "CURVE client secret key given as text is neither a file nor a 40-character Z85 key",
    )


def _check_endpoint(endpoint: str) -> None:
    for scheme in ("ipc://", "tcp://"):
        if endpoint.startswith(scheme) and len(endpoint) > len(scheme):
            return
    raise CtlEndpointError(f"endpoint {endpoint!r} must be ipc://PATH or tcp://HOST:PORT")


def _unreachable_hint(endpoint: str, skipped: int) -> str | None:
    hints = []
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://") :]
        if not path.startswith("@") and not os.path.exists(path):
            hints.append(f"{path} does not exist")
    elif endpoint.startswith("tcp://"):
        hints.append(
            "Is the CURVE server key the supervisor's, and is this client's public key authorized "
            "(its .key file in the supervisor's curve_authorized_clients folder)?"
        )
    if skipped:
        hints.append(f"{skipped} unreadable or stale replies were ignored")
    return "; ".join(hints) or None


def request(
    endpoint: str,
    command: str,
    args: Mapping[str, Any] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    server_public_key: str | bytes | None = None,
    client_secret_key: str | bytes | None = None,
    context: zmq.Context | None = None,
) -> Any:
    """Send one control command and return the supervisor's ``result``.

    ``server_public_key`` (required for ``tcp://``): the supervisor's CURVE public
    key, as a certificate file path (``zmq.auth`` format) or the 40-character Z85
    key. ``client_secret_key`` (required for ``tcp://``): this client's secret
    certificate file path (``*.key_secret``) or 40-character Z85 secret key; the
    supervisor answers only clients whose public key it has authorized, and
    silently drops the others (:class:`CtlUnreachable` after ``timeout``).

    Raises :class:`CtlRefused` on ``ok: false``, :class:`CtlUnreachable` when no
    reply with this request's id arrives within ``timeout`` seconds (for a command
    that waits for a worker, at least its declared ``reply_timeout``: the supervisor
    answers before that),
    :class:`CtlProtocolError` on a malformed reply to this request, and
    :class:`CtlEndpointError` for an unusable endpoint or key.
    """
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
    if (spec := DECLARATIONS.get(command)) is not None:  # never shorter than the supervisor's own wait
        timeout = spec.client_timeout(timeout)
    _check_endpoint(endpoint)
    curve_key: bytes | None = None
    client_keys: tuple[bytes, bytes] | None = None
    if endpoint.startswith("tcp://"):
        if server_public_key is None:
            raise CtlEndpointError(
                f"{endpoint} is a tcp:// endpoint: the supervisor's CURVE public key is required"
            )
        if client_secret_key is None:
            raise CtlEndpointError(
                f"{endpoint} is a tcp:// endpoint: this client's CURVE secret key is required "
                "(its public key must be in the supervisor's curve_authorized_clients folder)"
            )
        curve_key = _server_key_bytes(server_public_key)
        client_keys = _client_keypair(client_secret_key)

    request_id = uuid.uuid4().hex
    payload = encode_request(Request(command=command, id=request_id, args=dict(args or {})))
    deadline = time.monotonic() + timeout

    own_context = context is None
    ctx = zmq.Context() if context is None else context
    socket = ctx.socket(zmq.DEALER)
    try:
        socket.setsockopt(zmq.LINGER, 0)
        if curve_key is not None and client_keys is not None:
            public, secret = client_keys
            try:
                socket.curve_serverkey = curve_key
                socket.curve_publickey = public
                socket.curve_secretkey = secret
            except zmq.ZMQError as error:
                raise CtlEndpointError(f"cannot use CURVE server public key: {error}") from None
        try:
            socket.connect(endpoint)
        except zmq.ZMQError as error:
            raise CtlEndpointError(f"cannot connect to {endpoint}: {error}") from None

        poller = zmq.Poller()
        poller.register(socket, zmq.POLLOUT)
        if not poller.poll(max(0, int((deadline - time.monotonic()) * 1000))):
            raise CtlUnreachable(endpoint, timeout, _unreachable_hint(endpoint, 0))
        try:
            socket.send(payload, zmq.NOBLOCK)
        except zmq.Again:
            raise CtlUnreachable(endpoint, timeout, _unreachable_hint(endpoint, 0)) from None

        poller.modify(socket, zmq.POLLIN)
        skipped = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(max(1, int(remaining * 1000))):
                raise CtlUnreachable(endpoint, timeout, _unreachable_hint(endpoint, skipped))
            frames = socket.recv_multipart(zmq.NOBLOCK)
            # One frame from a ROUTER reply; tolerate a REQ-style empty delimiter before it.
            try:
                reply = decode_reply(frames[-1])
            except MessageError as error:
                if error.request_id == request_id:
                    raise CtlProtocolError(f"malformed reply from the supervisor: {error}") from None
                skipped += 1
                continue
            if reply.id != request_id:
                skipped += 1  # stale: the answer to an earlier request that timed out
                continue
            return _result_of(reply)
    finally:
        socket.close(linger=0)
        if own_context:
            ctx.term()


def _result_of(reply: Reply) -> Any:
    if reply.ok:
        return reply.result
    raise CtlRefused(reply.error or "refused (the supervisor gave no reason)")


# ------------------------------------------------------------------- formatting


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_duration(seconds: object) -> str:
    """Uptime for a person: ``42s``, ``3m12s``, ``2h05m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if not _is_number(seconds):
        return str(seconds)
    total = int(max(0.0, float(seconds)))  # type: ignore[arg-type]
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_seconds_ms(seconds: object) -> str:
    """A short delay (lateness, loop lag): ``1.2ms``, or ``1.50s`` from one second up."""
    if seconds is None:
        return "-"
    if not _is_number(seconds):
        return str(seconds)
    value = float(seconds)  # type: ignore[arg-type]
    if abs(value) >= 1.0:
        return f"{value:.2f}s"
    return f"{value * 1000:.1f}ms"


def format_bytes(count: object) -> str:
    """Memory in 1024 units like top: ``512B``, ``12.3K``, ``12.3M``, ``1.2G``."""
    if count is None:
        return "-"
    if not _is_number(count):
        return str(count)
    value = float(count)  # type: ignore[arg-type]
    if abs(value) < 1024:
        return f"{int(value)}B"
    for unit in ("K", "M", "G", "T"):
        value /= 1024
        if abs(value) < 1024 or unit == "T":
            return f"{value:.1f}{unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def format_percent(value: object) -> str:
    if value is None:
        return "-"
    if not _is_number(value):
        return str(value)
    return f"{float(value):.1f}%"  # type: ignore[arg-type]


def _plain(value: object) -> str:
    if value is None:
        return "-"
    return str(value)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, right: Iterable[int] = ()) -> str:
    """Columns two spaces apart, padded to the widest cell; ``right`` lists right-aligned columns."""
    right_aligned = set(right)
    table = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[index]) for row in table) for index in range(len(headers))]
    lines = []
    for row in table:
        cells = [
            cell.rjust(width) if index in right_aligned else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


LIST_HEADERS = ("EXT", "IA", "RETORNO", "APP", "STATE", "SOURCE", "PID", "REASON")


def format_list_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """``ctl list`` for people: one line per extension, or ``no extensions``."""
    if not rows:
        return "no extensions"
    cells = [
        [
            _plain(row.get("id")),
            _plain(row.get("ia_port")),
            _plain(row.get("retorno_port")),
            _plain(row.get("app")),
            _plain(row.get("state")),
            _plain(row.get("source")),
            _plain(row.get("pid")),
            _plain(row.get("reason")),  # the last failure
        ]
        for row in rows
    ]
    if any(row.get("host") for row in rows):  # [cluster] mode: the node that serves each extension
        return format_table((*LIST_HEADERS[:7], "HOST", LIST_HEADERS[7]),
                            [[*cell[:7], _plain(row.get("host")), cell[7]] for cell, row in zip(cells, rows)],
                            right=(1, 2, 6))
    return format_table(LIST_HEADERS, cells, right=(1, 2, 6))


# How each stats_schema Column format is shown.
_COLUMN_FORMATS: dict[str, Callable[[object], str]] = {
    "text": _plain, "plain": _plain, "duration": format_duration, "ms": format_seconds_ms,
    "bytes": format_bytes, "percent": format_percent,
}


def format_status_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """``ctl status`` / ``ctl top`` for people; missing or null values show as ``-``.

    The columns (header, format, alignment) are the stats schema's (``status_columns()``).
    """
    if not rows:
        return "no extensions"
    from audiogw.shared.stats_schema import status_columns  # loads the apps' sections: only when a table is drawn

    columns = status_columns()
    cells = [[_COLUMN_FORMATS[column.format](row.get(column.key)) for column in columns] for row in rows]
    return format_table([column.header for column in columns], cells,
                        right=[index for index, column in enumerate(columns) if column.right_aligned])


def _format_option_value(value: object) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def format_extension(result: Mapping[str, Any]) -> str:
    """``add-extension``'s answer: the two ports (what the dialplan needs), app and options."""
    line = (
        f"extension {_plain(result.get('id'))}: ia port {_plain(result.get('ia_port'))}, "
        f"retorno port {_plain(result.get('retorno_port'))} (app {_plain(result.get('app'))})"
    )
    options = result.get("options")
    if isinstance(options, Mapping) and options:
        line += "\noptions: " + ", ".join(f"{key}={_format_option_value(value)}" for key, value in options.items())
    return line


def format_reload(result: Mapping[str, Any]) -> str:
    lines = []
    for key in ("added", "removed", "changed", "unchanged"):
        items = result.get(key) or []
        text = ", ".join(str(item) for item in items) if isinstance(items, list) else str(items)
        lines.append(f"{key}: {text or '-'}")
    for override in result.get("overridden") or []:
        if isinstance(override, Mapping):
            lines.append(f"{_plain(override.get('id'))}: {_plain(override.get('reason'))}")
    return "\n".join(lines)


def _dump_json(result: Any, *, indent: bool = True) -> str:
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(result, option=option).decode()


# ------------------------------------------------------------------------ click


# An exit status's error kind when the caller names none.
_KIND_OF_EXIT = {EXIT_REFUSED: "refused", EXIT_USAGE: "usage", EXIT_UNREACHABLE: "unreachable"}


def _json_requested() -> bool:
    ctx = click.get_current_context(silent=True)
    settings = ctx.find_object(_Settings) if ctx is not None else None
    return json_requested() or (settings is not None and settings.json)


def _fail(code: int, message: str, kind: str | None = None) -> NoReturn:
    """One line (``error: ...``, or a JSON error under --json), then exit ``code``."""
    report_error(kind or _KIND_OF_EXIT.get(code, "internal"), message, as_json=_json_requested())
    raise click.exceptions.Exit(code)


class _CtlGroup(OneLineErrors, click.Group):
    """Usage errors (click's own included) print as every other error: one line, JSON under --json."""


@dataclass
class _Target:
    """Where to send, and for tcp:// the CURVE keys: the server's public key and this client's secret key."""

    endpoint: str
    server_key: bytes | None = None
    client_secret: bytes | None = None


@dataclass
class _Settings:
    config_path: str | None
    endpoint: str | None
    json: bool
    timeout: float
    server_key: str | None
    client_key: str | None = None
    _target: _Target | None = None  # read once: `top` must not re-read the file (and re-warn) every refresh

    def target(self) -> _Target:
        """The endpoint to use and, for tcp://, both CURVE keys; exit 2 if unusable."""
        if self._target is None:
            self._target = self._resolve_target()
        return self._target

    def _resolve_target(self) -> _Target:
        if self.endpoint is not None:
            endpoint, server_path, client_path = self.endpoint, self.server_key, self.client_key
        else:
            supervisor = self._config()
            endpoint = supervisor.control
            server_path = self.server_key or supervisor.curve_server_public_key
            client_path = self.client_key or supervisor.curve_client_secret_key
        if not endpoint.startswith("tcp://"):
            return _Target(endpoint)
        if server_path is None:
            _fail(EXIT_USAGE, f"{endpoint} is a tcp:// endpoint: give the supervisor's CURVE public key "
                  "with --server-key PATH")
        if client_path is None:
            _fail(EXIT_USAGE, f"{endpoint} is a tcp:// endpoint: give this client's CURVE secret key "
                  "with --client-key PATH (its public .key must be in the supervisor's curve_authorized_clients "
                  "folder)")
        try:
            return _Target(endpoint, load_server_public_key(server_path), load_client_keypair(client_path)[1])
        except CtlEndpointError as error:
            _fail(EXIT_USAGE, str(error))

    def _config(self) -> ControlConfig:
        """The control settings only: an error elsewhere in the file is one warning line,
        so ctl still reaches the supervisor (to list, reload or stop) while the file is edited."""
        try:
            config = load_control_config(default_config_path(self.config_path))
        except ConfigError as error:
            hint = ""
            if self.config_path is None:
                hint = " (or give the endpoint: --endpoint URL)"
            _fail(EXIT_USAGE, f"{error}{hint}", "config")
        if config.problem is not None:
            report_warning("config", f"the config file has an error (the supervisor would refuse it): "
                           f"{config.problem}", as_json=_json_requested())
        return config


def _call(settings: _Settings, command: str, args: Mapping[str, Any]) -> Any:
    target = settings.target()
    try:
        return request(
            target.endpoint, command, args, timeout=settings.timeout,
            server_public_key=target.server_key, client_secret_key=target.client_secret,
        )
    except CtlRefused as error:
        _fail(EXIT_REFUSED, error.message)
    except CtlUnreachable as error:
        _fail(EXIT_UNREACHABLE, str(error))
    except CtlEndpointError as error:
        _fail(EXIT_USAGE, str(error))
    except CtlProtocolError as error:
        _fail(EXIT_REFUSED, str(error), "protocol")


def _settings(ctx: click.Context, json_flag: bool) -> _Settings:
    settings: _Settings = ctx.find_object(_Settings)  # type: ignore[assignment]
    if json_flag:
        settings.json = True
    return settings


def _echo(text: str) -> None:
    click.echo(text, nl=not text.endswith("\n"))  # a dialplan already ends its lines


# ---- client-only parameter callbacks: a bad value is a usage error (exit 2) before anything is sent


def _positive_seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise click.BadParameter(f"{value:g} is not a number of seconds > 0", ctx=ctx, param=param)
    return float(value)


def _endpoint(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        _check_endpoint(value)
    except CtlEndpointError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from None
    return value


JSON_HELP = "Print the result as JSON."


def _json_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` is accepted after the subcommand too (``ctl list --json``)."""
    return click.option("--json", "json_flag", is_flag=True, help=JSON_HELP)(function)


@click.group(name="ctl", cls=_CtlGroup)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help=f"Config file naming the control endpoint [default: {CONFIG_SEARCH_HELP}].",
)
@click.option("--endpoint", callback=_endpoint, help="Control endpoint (ipc://PATH or tcp://HOST:PORT) instead of --config.")
@click.option(
    "--server-key",
    type=click.Path(dir_okay=False),
    help="Supervisor's CURVE public key file, for tcp:// [default: supervisor.curve_server_public_key].",
)
@click.option(
    "--client-key",
    type=click.Path(dir_okay=False),
    help="This client's CURVE secret key file (*.key_secret), for tcp://; its public .key must be in the "
    "supervisor's curve_authorized_clients folder [default: supervisor.curve_client_secret_key].",
)
@click.option("--json", "json_flag", is_flag=True, help="Print results as JSON for scripts.")
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_TIMEOUT,
    show_default=True,
    callback=_positive_seconds,
    help="Seconds to wait for the supervisor's reply.",
)
@click.pass_context
def ctl_group(
    ctx: click.Context,
    config_path: str | None,
    endpoint: str | None,
    server_key: str | None,
    client_key: str | None,
    json_flag: bool,
    timeout: float,
) -> None:
    """Control a running audiogw supervisor.

    Exit status: 0 done, 1 refused by the supervisor, 2 usage error,
    3 supervisor not reachable within the timeout.
    """
    if config_path is not None and endpoint is not None:
        raise click.UsageError("--config and --endpoint are mutually exclusive", ctx=ctx)
    ctx.obj = _Settings(
        config_path=config_path,
        endpoint=endpoint,
        json=json_flag,
        timeout=timeout,
        server_key=server_key,
        client_key=client_key,
    )


# ---- the supervisor's commands, built from their declarations (shared/commands.py)

Human = Callable[[Any, Mapping[str, Any]], str]


def _mapping(result: Any) -> Mapping[str, Any]:
    return result if isinstance(result, Mapping) else {}


def _result_id(result: Any, fallback: str) -> str:
    if isinstance(result, Mapping) and result.get("id") is not None:
        return str(result["id"])
    return fallback


def _rows(result: Any) -> list[Mapping[str, Any]]:
    if isinstance(result, list):
        return [row for row in result if isinstance(row, Mapping)]
    if isinstance(result, Mapping):
        return [result]
    return []


def _restarted(result: Any, args: Mapping[str, Any]) -> str:
    text = f"extension {_result_id(result, args['id'])} restarted"
    if _mapping(result).get("pid") is not None:
        text += f" (pid {result['pid']})"
    return text


def _status_text(result: Any, args: Mapping[str, Any]) -> str:
    """The status table; in cluster mode (rows name their ``host``) without ID, a note that they are one node's."""
    rows = _rows(result)
    text = format_status_table(rows)
    hosts = sorted({str(row["host"]) for row in rows if row.get("host")})
    if "id" not in args and hosts:
        text += (f"\n(cluster mode: the extensions node {', '.join(hosts)} serves; "
                 "`ctl list` shows the whole cluster, `ctl status ID` asks the node serving ID)")
    return text


def _dialplan_text(result: Any, args: Mapping[str, Any]) -> str:
    text = result.get("text") if isinstance(result, Mapping) else result
    return "" if text is None else str(text)


# How each command's result reads for a person (the declaration says what it is);
# a command with no entry prints its result as JSON, so a new command needs none.
HUMAN: dict[CommandSpec, Human] = {
    ADD_EXTENSION: lambda result, args: format_extension(_mapping(result)),
    REMOVE_EXTENSION: lambda result, args: f"extension {_result_id(result, args['id'])} removed"
                      + (f" (calls in progress may go on for {result['drain']:g} s)"
                         if isinstance(result, dict) and result.get("drain") else ""),
    RESTART_EXTENSION: _restarted,
    LIST: lambda result, args: format_list_table(_rows(result)),
    STATUS: lambda result, args: _status_text(result, args),
    RELOAD: lambda result, args: format_reload(_mapping(result)),
    STOP: lambda result, args: "supervisor stopping" + (f" (drain {args['drain']:g} s)" if "drain" in args else ""),
    DIALPLAN: _dialplan_text,
    RESET: lambda result, args: (f"extension {_result_id(result, args['id'])}: runtime change dropped, "
                                 f"the file's definition counts ({_mapping(result).get('action', '?')})"),
}


def declared_param(arg: Arg) -> click.Parameter:
    """The click argument or option for a declared argument; the declared validator is its callback."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None or value == ():
            return None  # not given: not sent (the supervisor applies its default)
        try:
            return arg.validate(arg.from_cli(value) if arg.from_cli is not None else value)
        except ArgumentInvalid as error:
            raise click.BadParameter(error.reason, ctx=ctx, param=param) from None

    if not arg.is_option:
        return click.Argument([arg.name], metavar=arg.cli, required=arg.required, type=arg.type, callback=check)
    if arg.type is bool:
        return click.Option([arg.cli, arg.name], is_flag=True, default=None, help=arg.help_text(), callback=check)
    if arg.from_cli is not None:
        return click.Option([arg.cli, arg.name], multiple=True, metavar=arg.metavar, help=arg.help_text(),
                            callback=check)
    return click.Option([arg.cli, arg.name], type=arg.type, metavar=arg.metavar, help=arg.help_text(),
                        callback=check)


def declared_command(spec: CommandSpec, human: Human | None = None) -> click.Command:
    """``ctl NAME``: check the arguments as the supervisor will, send them once, print the result."""

    def spell(name: str) -> str:
        return spec.arg(name).cli

    @click.pass_context
    def run(ctx: click.Context, json_flag: bool, **values: Any) -> None:
        args = {name: value for name, value in values.items() if value is not None}
        if spec.check is not None:
            try:
                spec.check(args, spell)
            except ArgumentInvalid as error:
                hint = f"'{spell(error.arg)}'" if error.arg else None
                raise click.BadParameter(error.reason, ctx=ctx, param_hint=hint) from None
        settings = _settings(ctx, json_flag)
        result = _call(settings, spec.name, args)
        _echo(_dump_json(result) if settings.json or human is None else human(result, args))

    params = [*map(declared_param, spec.args), click.Option(["--json", "json_flag"], is_flag=True, help=JSON_HELP)]
    return click.Command(spec.name, callback=run, params=params, help=spec.help or spec.summary,
                         short_help=spec.summary if spec.help else None)


for _spec in DECLARATIONS.values():
    ctl_group.add_command(declared_command(_spec, HUMAN.get(_spec)))


# ---- client-only commands


def _stdout_is_tty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


_sleep = time.sleep  # tests replace it


@ctl_group.command("top", short_help="Status, refreshed in place until Ctrl-C.")
@click.option(
    "--interval",
    type=float,
    default=1.0,
    show_default=True,
    callback=_positive_seconds,
    help="Seconds between refreshes.",
)
@click.option("--iterations", type=click.IntRange(min=1), help="Stop after N refreshes [default: until Ctrl-C].")
@_json_option
@click.pass_context
def top_command(ctx: click.Context, interval: float, iterations: int | None, json_flag: bool, **target: Any) -> None:
    """Status, refreshed in place every --interval seconds until Ctrl-C.

    On a terminal the screen is redrawn; otherwise one table per refresh is
    printed, separated by a blank line. With --json, one JSON line per refresh.
    """
    settings = _settings(ctx, json_flag)
    args = {name: value for name, value in target.items() if value is not None}
    endpoint = settings.target().endpoint  # config problems surface before the loop
    tty = _stdout_is_tty()
    count = 0
    try:
        while True:
            started = time.monotonic()
            result = _call(settings, STATUS.name, args)
            count += 1
            if settings.json:
                click.echo(_dump_json(result, indent=False))
            elif tty:
                title = (
                    f"audiogw top - {endpoint} - {time.strftime('%H:%M:%S')} - every {interval:g} s, Ctrl-C to quit"
                )
                # color=True: click would strip the escape codes from a stream it thinks is no terminal.
                click.echo(f"{CLEAR_SCREEN}{title}\n\n{format_status_table(_rows(result))}", color=True)
            else:
                if count > 1:
                    click.echo("")
                click.echo(format_status_table(_rows(result)))
            if iterations is not None and count >= iterations:
                break
            _sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        if tty and not settings.json:
            click.echo("")


top_command.params.insert(0, declared_param(STATUS.arg("id")))  # `top [ID]` takes status's ID


@ctl_group.command("keygen", short_help="Write CURVE certificates for a tcp:// control.")
@click.argument("folder", type=click.Path(file_okay=False))
def keygen_command(folder: str) -> None:
    """Write server.key, server.key_secret, client.key_secret and authorized_clients/client.key into FOLDER."""
    import zmq.auth  # noqa: PLC0415 - only this command writes certificates

    names = ("server.key", "server.key_secret", "client.key_secret", "client.key", "authorized_clients/client.key")
    existing = [name for name in names if os.path.exists(os.path.join(folder, name))]
    if existing:
        _fail(EXIT_USAGE, f"{os.path.join(folder, existing[0])} exists; not overwriting keys")
    old_umask = os.umask(0o077)  # owner-only from the first byte: secret keys are never readable by others
    try:
        os.makedirs(os.path.join(folder, "authorized_clients"), exist_ok=True)
        zmq.auth.create_certificates(folder, "server")
        client_public, _ = zmq.auth.create_certificates(folder, "client")
        os.replace(client_public, os.path.join(folder, "authorized_clients", "client.key"))
    finally:
        os.umask(old_umask)
    click.echo("# [supervisor] lines for a tcp:// control; the ctl host needs server.key and client.key_secret")
    for key, name in zip(CURVE_KEYS, ("server.key_secret", "server.key", "authorized_clients", "client.key_secret")):
        click.echo(f"{key} = {orjson.dumps(os.path.abspath(os.path.join(folder, name))).decode()}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(ctl_group())

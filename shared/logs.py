"""Log set-up shared by supervisor, workers and the demo agent: one line per event, human or JSON.

Under ``log_format = "json"`` every line on stderr is one JSON object, whoever logs it:
our loggers, libraries (``websockets``), Python warnings (``logging.captureWarnings``)
and uncaught exceptions. A main event passes its fields with ``extra=`` (e.g.
``extra={"event": "worker_ready", "extension": "1201"}``): the human format prints
the message text as before, the JSON format adds the fields.

Secrets are redacted at every level, before any formatter sees the record: the values
of sensitive headers (``Authorization``, cookies, API keys: :data:`SENSITIVE_HEADERS`),
whoever logs them (``websockets`` logs every handshake header at debug), and every
value registered with :func:`register_secret` (an agent's configured ``headers``).
"""
from __future__ import annotations

import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import orjson

REDACTED = "[redacted]"
# Header names whose values are secrets wherever they are logged (lower case).
SENSITIVE_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "x-auth-token",
})
# A secret shorter than this is not searched for in text (it would redact ordinary words).
MIN_SECRET_LENGTH = 6

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secret_pattern: re.Pattern[str] | None = None
_HEADER_LINE = re.compile(
    r"(?i)\b(" + "|".join(re.escape(name) for name in sorted(SENSITIVE_HEADERS)) + r")(\s*[:=]\s*)([^\r\n,;]+)")

# What every LogRecord has: anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def register_secret(value: str) -> None:
    """Never log ``value`` (e.g. a configured header's value), at any level, in any logger."""
    global _secret_pattern
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        _secrets.add(value)
        # Longest first, so a secret containing another is replaced whole.
        _secret_pattern = re.compile("|".join(re.escape(secret) for secret in sorted(_secrets, key=len, reverse=True)))


def register_header_secrets(headers: Iterable[tuple[str, str]] | dict[str, str]) -> None:
    """Register the values of configured headers: an agent's tokens must not reach a log."""
    items = headers.items() if isinstance(headers, dict) else headers
    for _name, value in items:
        register_secret(str(value))


def redact(text: str) -> str:
    """``text`` with registered secrets and sensitive header values replaced by ``[redacted]``."""
    pattern = _secret_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    return _HEADER_LINE.sub(lambda match: match.group(1) + match.group(2) + REDACTED, text)


class RedactingFilter(logging.Filter):
    """On the handler: redacts the formatted message (and a header logged as ``"%s: %s"``) of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            self._redact(record)
        except Exception:  # noqa: BLE001 - never lose a record (or kill the log thread) over redaction
            record.msg, record.args = redact(str(record.msg)), None
        return True

    def _redact(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, tuple) and len(args) == 2 and isinstance(args[0], str) \
                and args[0].strip().lower() in SENSITIVE_HEADERS:
            record.args = (args[0], REDACTED)  # websockets: logger.debug("> %s: %s", key, value)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let the formatter report it as logging does
            return
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        for key, value in extra_fields(record).items():
            if isinstance(value, str):
                setattr(record, key, redact(value))


def _plain(value: Any) -> Any:
    """A field value JSON can carry: a library's object (websockets passes its connection,
    a weak proxy that may be dead by now) becomes its text, or is left out."""
    try:
        if value is None or isinstance(value, (str, int, float, bool)):
            return value
        if isinstance(value, (list, tuple)):
            return [_plain(item) for item in value]
        if isinstance(value, dict):
            return {str(key): _plain(item) for key, item in value.items()}
        return str(value)
    except Exception:  # noqa: BLE001 - a dead weakref proxy raises ReferenceError even on isinstance()
        return None


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a call passed with ``extra=``, as plain JSON values."""
    return {key: _plain(value) for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return orjson.dumps(entry, default=_plain).decode()


HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


def _log_uncaught(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("audiogw").critical("uncaught exception", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("audiogw").critical("uncaught exception in thread %s", name,
                                          exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def configure_logging(
    log_format: str = "human", level: str = "info", *, off_loop: bool = False
) -> logging.handlers.QueueListener | None:
    """Log to stderr. With ``off_loop`` the write happens in a thread: a worker's event
    loop only enqueues the record, so a slow stderr reader (a full pipe to journald)
    can never hold up the audio clock. Returns that thread's listener (stop it to flush).

    Not for the supervisor before its zygote is forked: the thread must not exist then.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(HUMAN_FORMAT))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings.warn() lines in the same format (py.warnings logger)
    if log_format == "json":
        sys.excepthook = _log_uncaught  # a crash's traceback is one JSON line too
        threading.excepthook = _log_uncaught_in_thread
    if not off_loop:
        root.handlers[:] = [handler]
        return None
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    queue_handler = logging.handlers.QueueHandler(records)
    queue_handler.addFilter(RedactingFilter())  # before the record crosses to the thread: no secret queued
    root.handlers[:] = [queue_handler]
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    return listener

"""Log set-up shared by supervisor and workers: one line per event, human or JSON."""
from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import time

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


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
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not off_loop:
        root.handlers[:] = [handler]
        return None
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root.handlers[:] = [logging.handlers.QueueHandler(records)]
    listener = logging.handlers.QueueListener(records, handler)
    listener.start()
    return listener

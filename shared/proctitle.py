"""Process titles that name what each process is, as ``ps`` and ``top`` show them.

Without them every worker and the zygote show as ``python3 -B -c from
multiprocessing.forkserver import main…``: nothing says which extension a
process serves. ``setproctitle`` rewrites /proc/PID/cmdline (and the 15-character
/proc/PID/comm that ``top`` and ``pkill`` read).
"""
from __future__ import annotations

from setproctitle import setproctitle

SUPERVISOR = "audiogw-supervisor"
ZYGOTE = "audiogw-zygote"
WORKER = "audiogw-worker"


def set_title(title: str) -> None:
    """Name this process ``title`` from now on (its children inherit it until they set their own)."""
    setproctitle(title)


def worker_title(extension: str) -> str:
    """``audiogw-worker 1201``: the worker of extension 1201."""
    return f"{WORKER} {extension}"

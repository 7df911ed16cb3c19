"""Starting workers from a clean zygote.

The supervisor runs an event loop and a ZeroMQ context, so it must never
fork itself. multiprocessing's forkserver is forked first, before either
exists, with the worker modules (uvloop, pyzmq, numpy, soxr) preloaded: each
worker is then a fork of that clean, single-threaded process, ready in
milliseconds and sharing the preloaded pages copy-on-write. Listening sockets
travel to the child over the forkserver's Unix socket (SCM_RIGHTS).

The supervisor itself never imports the worker's modules: the child finds its
entry point by name (:data:`WORKER_ENTRY`), already loaded in the forkserver.

No orphans after a ``kill -9`` of the supervisor: each worker closes its copy
of the forkserver's "supervisor alive" pipe, so the forkserver sees the
supervisor die, exits, and the kernel's parent-death signal kills the workers
(even one whose loop is stuck). multiprocessing has no public way to reach that
pipe (CPython 3.11 keeps it in ``ForkServer._forkserver_alive_fd``), so
:meth:`Zygote.start` checks the private name loudly; should it vanish, the
workers still end through their own watch of the supervisor's pid
(worker/link.py), only not while their loop is stuck.
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import socket
import sys
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

from audiogw.shared.worker_spec import WorkerSpec

log = logging.getLogger("audiogw.supervisor.zygote")

WORKER_ENTRY = "audiogw.worker.main:run_worker"
# The zygote's own setup (it outlives a SIGTERM to the whole unit: zygote_init), the worker's
# modules, and this one (the child's entry point lives here: unloaded, every spawn would import
# it again, some 7 ms).
PRELOAD = ["audiogw.supervisor.zygote_init", "audiogw.worker.main", "audiogw.worker.link", "audiogw.supervisor.zygote"]
ALIVE_FD = "_forkserver_alive_fd"  # multiprocessing.forkserver.ForkServer's private attribute


class Zygote:
    def __init__(self) -> None:
        self._context: ForkServerContext = multiprocessing.get_context("forkserver")  # type: ignore[assignment]
        self._context.set_forkserver_preload(PRELOAD)
        self.releases_alive_fd = False  # known after start()

    def start(self) -> None:
        """Fork the forkserver now; call before any event loop, thread or ZeroMQ context exists."""
        multiprocessing.forkserver.ensure_running()
        problem = forkserver_alive_fd_problem()
        self.releases_alive_fd = problem is None
        if problem is not None:
            log.error("%s: if the supervisor is killed (kill -9), its workers are not killed by the kernel; "
                      "each ends when it sees the supervisor's pid gone (not while its loop is stuck)", problem)

    def spawn(self, spec: WorkerSpec, sockets: dict[str, socket.socket], name: str) -> BaseProcess:
        process = self._context.Process(target=_worker_entry, args=(WORKER_ENTRY, spec, sockets), name=name,
                                        daemon=False)
        process.start()
        return process


def forkserver_alive_fd_problem() -> str | None:
    """Why this Python's forkserver does not expose its alive pipe where we close it, or None.

    Called after ``ensure_running()``: the supervisor's own ForkServer then holds
    the pipe's write end under the same name each child's copy has.
    """
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    fd = getattr(server, ALIVE_FD, None)
    if isinstance(fd, int) and not isinstance(fd, bool) and fd >= 0:
        return None
    version = ".".join(map(str, sys.version_info[:3]))
    if server is None:
        return f"Python {version}'s multiprocessing.forkserver has no _forkserver object"
    if not hasattr(server, ALIVE_FD):
        return f"Python {version}'s multiprocessing.forkserver.ForkServer has no {ALIVE_FD}"
    return f"Python {version}'s multiprocessing.forkserver.ForkServer.{ALIVE_FD} is {fd!r}, not a file descriptor"


def _worker_entry(entry: str, spec: WorkerSpec, sockets: dict[str, socket.socket]) -> None:  # runs in the child
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # only the zygote ignores it (zygote_init); the worker drains on it
    _release_forkserver_alive_fd()
    module, _, function = entry.partition(":")
    run_worker = getattr(importlib.import_module(module), function)
    raise SystemExit(run_worker(spec, sockets))


def _release_forkserver_alive_fd() -> None:
    """Close the child's copy of the forkserver's "supervisor alive" pipe.

    multiprocessing hands every forkserver child the pipe's write end; while
    any worker holds it the forkserver never sees the supervisor die, and so
    never exits to fire the workers' parent-death signal.
    """
    server = multiprocessing.forkserver._forkserver
    alive_fd = getattr(server, ALIVE_FD, None)
    if alive_fd is not None:
        try:
            os.close(alive_fd)
        except OSError:
            pass
        setattr(server, ALIVE_FD, None)

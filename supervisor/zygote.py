"""Starting workers from a clean zygote.

The supervisor runs an event loop and a ZeroMQ context, so it must never
fork itself. multiprocessing's forkserver is forked first, before either
exists, with the worker modules (uvloop, pyzmq, numpy, soxr) preloaded: each
worker is then a fork of that clean, single-threaded process, ready in
milliseconds and sharing the preloaded pages copy-on-write. Listening sockets
travel to the child over the forkserver's Unix socket (SCM_RIGHTS).
"""
from __future__ import annotations

import multiprocessing
import os
import multiprocessing.forkserver
import socket
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

PRELOAD = ["audiogw.worker.main", "audiogw.worker.link"]


class Zygote:
    def __init__(self) -> None:
        self._context: ForkServerContext = multiprocessing.get_context("forkserver")  # type: ignore[assignment]
        self._context.set_forkserver_preload(PRELOAD)

    def start(self) -> None:
        """Fork the forkserver now; call before any event loop, thread or ZeroMQ context exists."""
        multiprocessing.forkserver.ensure_running()

    def spawn(self, spec: object, sockets: dict[str, socket.socket], name: str) -> BaseProcess:
        from audiogw.worker.main import run_worker

        process = self._context.Process(target=_worker_entry, args=(run_worker, spec, sockets), name=name, daemon=False)
        process.start()
        return process


def _worker_entry(run_worker, spec, sockets) -> None:  # runs in the child
    _release_forkserver_alive_fd()
    raise SystemExit(run_worker(spec, sockets))


def _release_forkserver_alive_fd() -> None:
    """Close the child's copy of the forkserver's "supervisor alive" pipe.

    multiprocessing hands every forkserver child the pipe's write end; while
    any worker holds it the forkserver never sees the supervisor die, and so
    never exits to fire the workers' parent-death signal.
    """
    server = multiprocessing.forkserver._forkserver
    alive_fd = getattr(server, "_forkserver_alive_fd", None)
    if alive_fd is not None:
        try:
            os.close(alive_fd)
        except OSError:
            pass
        server._forkserver_alive_fd = None

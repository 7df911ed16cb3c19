"""Listening sockets for AudioSocket legs, bound by the supervisor or a standalone worker."""
from __future__ import annotations

import socket

LISTEN_BACKLOG = 512


def free_port_block(size: int, host: str = "127.0.0.1") -> int:
    """A base port whose next ``size`` ports were free a moment ago (for tests and benchmarks)."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            base = sock.getsockname()[1]
        if base + size <= 65000:
            return base


def bind_listener(host: str, port: int, backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A non-blocking listening TCP socket; port 0 picks a free port.

    The backlog is generous: while a worker restarts, Asterisk's connections
    wait in it instead of being refused.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock

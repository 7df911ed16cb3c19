"""Listening sockets for AudioSocket legs, bound by the supervisor or a standalone worker."""
from __future__ import annotations

import random
import socket



def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low, high = handle.read().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port_block(size: int, host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A base port whose next ``size`` ports can all be listened on now (for tests and benchmarks).

    The block is taken outside the kernel's ephemeral range: outgoing connections
    (a load client's hundreds of calls) take ports from there, and would
    collide with a block chosen inside it.
    """
    low, high = _ephemeral_range()
    ranges = [pair for pair in ((1024, low - 1), (high + 1, 65535)) if pair[1] - pair[0] > size] or [(1024, 65535)]
    for _ in range(attempts):
        first, last = random.choice(ranges)
        base = random.randint(first, last - size)
        probes: list[socket.socket] = []
        try:
            for port in range(base, base + size):
                probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
                probes.append(probe)
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise OSError(f"no block of {size} free ports found on {host}")


def bind_listener(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking listening TCP socket; port 0 picks a free port.

    The backlog (``audiosocket.listen_backlog``) is generous: while a worker
    restarts, Asterisk's connections wait in it instead of being refused.
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

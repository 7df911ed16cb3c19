"""File descriptors: the supervisor's limit raised at start, and an extension refused before it runs out.

Running out is not a clean error here: libzmq aborts the whole process
("Too many open files") when its I/O thread cannot accept, taking every
extension down. So ``add-extension`` is refused while a reserve is still free.
"""
from __future__ import annotations

import os
import resource

# What one extension costs the supervisor: its 2 listening sockets, the worker's process
# sentinel and the forkserver's pipe, and the worker's bus connection: 4 to 6 measured
# (tests/test_limits.py counts /proc/<pid>/fd around each add); the rest is margin.
FDS_PER_EXTENSION = 8
# Kept free for everything else: ZeroMQ's own (I/O thread, control clients' connections),
# the metrics server's clients, log and state files, a reload's extra sockets.
FD_RESERVE = 64

NR_OPEN_FILE = "/proc/sys/fs/nr_open"  # the kernel's ceiling for a soft limit when the hard one is unlimited


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (capped at the kernel's nr_open); (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open(NR_OPEN_FILE) as file:
                target = int(file.read())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError):
            return soft, soft
        return soft, target
    return soft, soft


def fds_in_use() -> int:
    """Open file descriptors of this process (the listing's own descriptor not counted)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return len(os.listdir("/dev/fd")) - 1


def fd_shortage(needed: int = FDS_PER_EXTENSION, reserve: int = FD_RESERVE) -> str | None:
    """Why taking ``needed`` more descriptors would bring the limit too near, or None if there is room."""
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    in_use = fds_in_use()
    if limit - in_use - needed >= reserve:
        return None
    return (f"would leave fewer than {reserve} file descriptors free (limit {limit}, in use {in_use}); "
            f"raise the limit (LimitNOFILE= in the unit, ulimit -n) or remove an extension")

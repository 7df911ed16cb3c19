"""sd_notify without libsystemd: READY=1, STATUS=, WATCHDOG=1, STOPPING=1 to $NOTIFY_SOCKET.

Does nothing when the supervisor is not started by systemd (no NOTIFY_SOCKET).
"""
from __future__ import annotations

import os
import socket
from typing import Mapping

from audiogw.supervisor.lifecycle import WorkerState

STATUS_MAX = 400  # characters of STATUS=: systemctl status shows one line


def notify(state: str) -> bool:
    """Send one sd_notify datagram (``KEY=VALUE`` lines); False when there is no systemd to tell."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
        return True
    except OSError:
        return False


def status_line(extensions: Mapping[str, tuple[str, str]]) -> str:
    """The one-line STATUS= text: ``serving 19/20; 1202 fatal: <reason>``.

    ``extensions`` maps each id to (its public state, as ``ctl list`` shows it, and
    the reason of its last failure); only the extensions that do not serve are
    named, starting ones without a reason (it says nothing yet).
    """
    serving = sum(1 for state, _ in extensions.values() if state == WorkerState.RUNNING.value)
    parts = [f"serving {serving}/{len(extensions)}"]
    for extension_id, (state, reason) in sorted(extensions.items()):
        if state == WorkerState.RUNNING.value:
            continue
        reason = " ".join(reason.split())
        parts.append(f"{extension_id} {state}: {reason}" if reason and state != WorkerState.STARTING.value else f"{extension_id} {state}")
    line = "; ".join(parts)
    return line if len(line) <= STATUS_MAX else line[:STATUS_MAX - 1] + "…"


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (from $WATCHDOG_USEC), or None when no watchdog is set for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None

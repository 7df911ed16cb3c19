"""Real-time scheduling for a worker's audio clock (``audiosocket.realtime_priority``).

Asterisk is often run real-time (``asterisk -p`` puts it under SCHED_RR 10), and a
real-time process always runs before a normal one. On a small machine, a
gateway at normal priority then waits behind Asterisk's bursts. The capacity
benchmark shows it: with the load client under SCHED_RR and the workers not,
the workers' own largest gap between two frames was 32, 65 and 78 ms in three
runs at 400 calls.

The whole worker goes real-time before it starts any thread, so every
thread inherits the policy: the log writer, ZeroMQ's threads and
``Leg.run_blocking``'s. Raising only the event loop's thread would leave a
priority inversion. A thread of the same process that holds the GIL at normal
priority can be kept off the CPU by other real-time processes, and the clock
would wait for the GIL meanwhile. So ``run_blocking`` work runs real-time
too, which is one more reason to keep it I/O-bound.

SCHED_RR rather than SCHED_FIFO, as Asterisk does: a runaway loop at the same
priority gets time slices instead of a CPU of its own.

Where real-time is refused (an unprivileged user), the worker still leaves the
supervisor's session. Linux's autogroup scheduling gives each session one share
of the CPU: with all workers in the supervisor's session, 200 calls' workers
shared one share against a busy Asterisk's and waited ~650 ms of every second
for a CPU while using ~35 ms. In a session of its own, each worker gets a share
like any other session's.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TypeVar

Started = TypeVar("Started")

log = logging.getLogger("audiogw.worker")


def enter_realtime(priority: int) -> None:
    """Run the calling thread, and every thread it starts from now on, under SCHED_RR at ``priority``.

    Call it before any other thread starts. Raises OSError when the system
    refuses (no CAP_SYS_NICE, RLIMIT_RTPRIO too low).
    """
    if not hasattr(os, "sched_setscheduler"):
        raise OSError(0, "this platform has no sched_setscheduler")
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))


def own_scheduling_group() -> str:
    """Leave the parent's session (and its autogroup); returns what happened, for the log.

    Also keeps a terminal's Ctrl-C (sent to the foreground process group) from
    reaching workers directly: the supervisor stops them in order.
    """
    try:
        os.setsid()
    except OSError as error:  # already a process group leader (started by hand from a shell)
        return f"kept its session ({error.strerror})"
    return "in its own session and autogroup"


def log_realtime(priority: int, extension: str, refusal: OSError | None) -> None:
    """Say how the audio clock is scheduled; a refusal is a warning that says how to allow it.

    A refused worker serves at normal priority rather than not at all.
    """
    if refusal is None:
        log.info("extension=%s audio clock under SCHED_RR priority %d", extension, priority)
        return
    log.warning(
        "extension=%s realtime_priority=%d refused (%s): the audio clock runs at normal priority. "
        "Allow it with CAP_SYS_NICE or an RLIMIT_RTPRIO of at least %d for the supervisor "
        "(systemd: LimitRTPRIO=%d).",
        extension, priority, refusal.strerror or refusal, priority, priority,
    )


def realtime_before_logging(priority: int, extension: str, start_logging: Callable[[], Started]) -> Started:
    """Enter real-time (if ``priority``) before ``start_logging`` starts the log thread, then log how it went.

    The process's first threads are the log writer's: entering real-time
    first lets them inherit the policy, and logging after lets a refusal be
    logged. Returns what ``start_logging`` returned.
    """
    group = own_scheduling_group()
    refusal: OSError | None = None
    if priority:
        try:
            enter_realtime(priority)
        except OSError as error:
            refusal = error
    started = start_logging()
    if priority:
        log_realtime(priority, extension, refusal)
    log.debug("extension=%s worker %s", extension, group)
    return started

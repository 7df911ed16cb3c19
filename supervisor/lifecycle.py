"""The restart/backoff state machine of one worker (supervisord style), with no I/O at all.

One :class:`WorkerLifecycle` per extension. It never spawns, kills or sleeps:
every method takes ``now`` (a ``time.monotonic()`` reading, in seconds, never
decreasing) and returns an :class:`Action` that the supervisor's I/O code
carries out. Tests drive time by hand.

States
------
========  =====================================================================
STOPPED   not running, not wanted (initial state; after a requested stop)
STARTING  spawn ordered / process spawned, not yet ready (sockets + heartbeat)
RUNNING   ready and heartbeating
STOPPING  a stop/drain was requested, waiting for the process to exit
BACKOFF   exited unexpectedly (crash, or killed as hung/late); waits ``retry_at``
FAILED    its sockets could not be bound (port in use); waits ``retry_at`` (backoff)
FATAL     flapping (too many unexpected exits within ``flap_window``), or cannot
          start with its config: retried only on the slow ``fatal_retry`` timer
          (0: never), or when an operator starts it again
========  =====================================================================

Transitions (the source of truth; anything not listed raises IllegalTransition)
-------------------------------------------------------------------------------
=================  =========================================  ==========  ======  ==============================================
from               event                                      to          action  notes
=================  =========================================  ==========  ======  ==============================================
STOPPED, FATAL     start                                      STARTING    SPAWN   failure count, flap history, last_failure cleared
STARTING           spawned (once per attempt)                 STARTING    -       records ``spawned_at``; no transition recorded
STARTING, RUNNING,
STOPPING           heartbeat                                  (same)      -       records ``last_heartbeat``; never makes ready
STARTING           ready                                      RUNNING     -       a no-op if a kill was already ordered
STARTING           tick, now >= start deadline (1)            STARTING    KILL    once per attempt; "start timeout: ..."
RUNNING            tick, now >= heartbeat deadline (2)        RUNNING     KILL    once per attempt; "hung: no heartbeat for X s"
RUNNING            any call, RUNNING for >= flap_window       RUNNING     -       consecutive failures reset to 0 (no record)
STARTING (spawned),
RUNNING            request_stop                               STOPPING    NONE    the I/O layer sends the drain / SIGTERM
STARTING (not
spawned yet)       request_stop                               STOPPED     NONE    there is no process to wait for
BACKOFF, FAILED,
FATAL              request_stop                               STOPPED     NONE
STOPPED, STOPPING  request_stop                               (same)      NONE    idempotent; nothing recorded
STOPPING           exited                                     STOPPED     NONE    whatever the exit code
RUNNING            handed_over                                STOPPED     NONE    the process drains apart (reload): not waited for
STARTING, RUNNING  exited, flapping (3)                       FATAL       NONE    ``retry_at`` as (6)
STARTING, RUNNING  exited, not flapping, delay (4) > 0        BACKOFF     NONE    ``retry_at`` = now + delay
STARTING, RUNNING  exited, not flapping, delay (4) == 0       BACKOFF,    SPAWN   two records at ``now``; ``restarts`` += 1
                                                              STARTING
BACKOFF            tick, now >= retry_at                      STARTING    SPAWN   ``restarts`` += 1
STARTING (not
spawned yet)       cannot_listen(reason)                      FAILED      NONE    ``retry_at`` = now + delay (5); never FATAL
FAILED             tick, now >= retry_at                      STARTING    SPAWN   ``restarts`` += 1 (binding is tried again)
FATAL              tick, now >= retry_at (6)                  STARTING    SPAWN   ``restarts``, ``fatal_retries`` += 1; flap history cleared
BACKOFF, FATAL,
STARTING (not
spawned yet)       mark_fatal(reason)                         FATAL       NONE    e.g. the worker cannot start with its config
any                tick, nothing due                          (same)      NONE
=================  =========================================  ==========  ======  ==============================================

(1) start deadline = (``spawned_at``, or the time STARTING began if ``spawned``
    was not called) + ``start_timeout``.
(2) heartbeat deadline = max(``last_heartbeat``, time RUNNING began) + ``heartbeat_timeout``.
(3) flapping: the unexpected exits within the last ``flap_window`` seconds,
    this one included, number more than ``flap_max_restarts``.
(4) delay = ``backoff_delay(policy, consecutive_failures)`` where this exit
    is counted in ``consecutive_failures``.
(5) the same delay, counting this failure, but never 0 (SECOND_DELAY_WHEN_IMMEDIATE
    at least): a port held by another program is not freed by retrying at once.
(6) FATAL's ``retry_at`` = the time FATAL began + ``fatal_retry``; None when
    ``fatal_retry`` is 0.

``last_failure`` is the reason of the last failure (an unexpected exit, a kill,
a bind failure, mark_fatal), kept through respawns and recovery so a RUNNING
worker still says what last went wrong; an operator ``start`` clears it.

A KILL is ordered at most once per process: afterwards ``tick`` returns NONE
and ``next_deadline`` is None until ``exited`` (an unexpected exit). Kill
orders are recorded as self-transitions (old == new) whose reason is the
kill's reason, so ``transitions[-1].reason`` explains a KILL just returned.
An ``IllegalTransition`` leaves the lifecycle exactly as it was.
"""
from __future__ import annotations

import enum
import signal as _signal
from collections import deque
from dataclasses import dataclass

__all__ = [
    "Action",
    "IllegalTransition",
    "RestartPolicy",
    "Transition",
    "WorkerLifecycle",
    "WorkerState",
    "PUBLIC_STATE",
    "backoff_delay",
    "HISTORY_LENGTH",
]

HISTORY_LENGTH = 50
SECOND_DELAY_WHEN_IMMEDIATE = 0.5  # the 2nd consecutive restart's delay when backoff_initial is 0


class WorkerState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    FAILED = "failed"
    FATAL = "fatal"


# The one mapping from internal states to the names ``ctl list``/``status`` show (SPEC:
# starting, running, backoff, failed, fatal, stopping). STOPPED is only ever seen between
# a stop and the next start of a restart (a stopped extension is no longer listed).
PUBLIC_STATE: dict[WorkerState, str] = {
    WorkerState.STOPPED: "stopping",
    WorkerState.STARTING: "starting",
    WorkerState.RUNNING: "running",
    WorkerState.STOPPING: "stopping",
    WorkerState.BACKOFF: "backoff",
    WorkerState.FAILED: "failed",
    WorkerState.FATAL: "fatal",
}


class Action(enum.Enum):
    """What the I/O layer must do after a call."""

    SPAWN = "spawn"
    KILL = "kill"  # SIGKILL the current process; its exit then arrives through exited()
    NONE = "none"


class IllegalTransition(ValueError):
    """An event that the current state does not accept (names both)."""

    def __init__(self, state: WorkerState, event: str, detail: str = "") -> None:
        self.state = state
        self.event = event
        message = f"illegal event {event!r} in state {state.name}"
        super().__init__(f"{message}: {detail}" if detail else message)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    backoff_initial: float = 0.0
    backoff_max: float = 30.0
    backoff_factor: float = 2.0
    flap_window: float = 10.0
    flap_max_restarts: int = 5
    start_timeout: float = 5.0
    heartbeat_timeout: float = 3.0
    fatal_retry: float = 60.0  # seconds in FATAL before one more try; 0: only an operator start

    def __post_init__(self) -> None:
        for name in ("backoff_initial", "backoff_max", "flap_window", "fatal_retry"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"RestartPolicy.{name} must be >= 0, not {getattr(self, name)!r}")
        for name in ("start_timeout", "heartbeat_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RestartPolicy.{name} must be > 0, not {getattr(self, name)!r}")
        if not self.backoff_factor >= 1:
            raise ValueError(f"RestartPolicy.backoff_factor must be >= 1, not {self.backoff_factor!r}")
        if isinstance(self.flap_max_restarts, bool) or not isinstance(self.flap_max_restarts, int) \
                or self.flap_max_restarts < 0:
            raise ValueError(f"RestartPolicy.flap_max_restarts must be an int >= 0, not {self.flap_max_restarts!r}")


def backoff_delay(policy: RestartPolicy, consecutive_failures: int) -> float:
    """Seconds to wait before the ``consecutive_failures``-th consecutive restart (1 = the first).

    backoff_initial > 0: initial, initial*factor, initial*factor**2, ...
    backoff_initial == 0: 0, 0.5, 0.5*factor, 0.5*factor**2, ...
    Always capped at backoff_max.
    """
    if consecutive_failures < 1:
        raise ValueError(f"consecutive_failures must be >= 1, not {consecutive_failures!r}")
    if policy.backoff_initial > 0:
        base, exponent = policy.backoff_initial, consecutive_failures - 1
    elif consecutive_failures == 1:
        return 0.0
    else:
        base, exponent = SECOND_DELAY_WHEN_IMMEDIATE, consecutive_failures - 2
    try:
        delay = base * policy.backoff_factor ** exponent
    except OverflowError:
        return float(policy.backoff_max)
    return float(min(delay, policy.backoff_max))


@dataclass(frozen=True, slots=True)
class Transition:
    old: WorkerState
    new: WorkerState
    reason: str
    at: float


def describe_exit(code: int | None, signal: int | None) -> str:
    if signal is not None:
        try:
            name = _signal.Signals(signal).name
        except ValueError:
            name = f"signal {signal}"
        return f"killed by {name}"
    if code is not None:
        return f"exited with code {code}"
    return "exited (status unknown)"


class WorkerLifecycle:
    """The state of one extension's worker; see the module docstring for the transition table."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._state = WorkerState.STOPPED
        self._state_since = 0.0
        self._restarts = 0
        self._consecutive_failures = 0
        self._exit_times: deque[float] = deque()  # unexpected exits within flap_window
        self._retry_at: float | None = None
        self._last_heartbeat: float | None = None
        self._excused_at = 0.0  # see excuse()
        self._spawned_at: float | None = None
        self._kill_reason: str | None = None
        self._last_failure: str | None = None
        self._fatal_retries = 0
        self._transitions: deque[Transition] = deque(maxlen=HISTORY_LENGTH)

    # -- read-only views ----------------------------------------------------
    @property
    def state(self) -> WorkerState:
        return self._state

    @property
    def state_since(self) -> float:
        """When the current state began (0.0 before the first transition)."""
        return self._state_since

    @property
    def restarts(self) -> int:
        """Respawns ordered after unexpected exits (operator starts are not counted); never decreases."""
        return self._restarts

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    @property
    def retry_at(self) -> float | None:
        """When BACKOFF or FAILED ends, or FATAL's slow retry is due; None in every other state."""
        return self._retry_at

    @property
    def last_heartbeat(self) -> float | None:
        """The current process's last heartbeat (None until its first one)."""
        return self._last_heartbeat

    @property
    def spawned_at(self) -> float | None:
        """When the current attempt's process was spawned (None before ``spawned``)."""
        return self._spawned_at

    @property
    def kill_reason(self) -> str | None:
        """Why a KILL was ordered for the current process, or None."""
        return self._kill_reason

    @property
    def public_state(self) -> str:
        """The state's name as ``ctl list``/``status``, /healthz and the SPEC say it."""
        return PUBLIC_STATE[self._state]

    @property
    def last_failure(self) -> str | None:
        """Why the worker last failed (exit, kill, bind, mark_fatal); None since the last operator start."""
        return self._last_failure

    @property
    def fatal_retries(self) -> int:
        """Tries made on the slow FATAL timer; never decreases."""
        return self._fatal_retries

    @property
    def transitions(self) -> list[Transition]:
        """The last HISTORY_LENGTH transitions, oldest first (a copy)."""
        return list(self._transitions)

    # -- events ---------------------------------------------------------------
    def start(self, now: float) -> Action:
        if self._state not in (WorkerState.STOPPED, WorkerState.FATAL):
            raise IllegalTransition(self._state, "start", "the worker is already wanted")
        reason = "operator restart" if self._state is WorkerState.FATAL else "start requested"
        self._consecutive_failures = 0
        self._exit_times.clear()
        self._last_failure = None
        self._enter_starting(now, reason)
        return Action.SPAWN

    def spawned(self, now: float) -> None:
        if self._state is not WorkerState.STARTING:
            raise IllegalTransition(self._state, "spawned", "no spawn was ordered")
        if self._spawned_at is not None:
            raise IllegalTransition(self._state, "spawned", "this attempt's process was already spawned")
        self._spawned_at = now

    def heartbeat(self, now: float) -> None:
        if self._state not in (WorkerState.STARTING, WorkerState.RUNNING, WorkerState.STOPPING):
            raise IllegalTransition(self._state, "heartbeat", "no live process")
        self._maybe_reset(now)
        self._last_heartbeat = now

    def excuse(self, now: float) -> None:
        """The supervisor itself could not watch until ``now`` (its loop ran late: a starved
        host): heartbeat silence before ``now`` proves nothing, its clock restarts here."""
        self._excused_at = now

    def ready(self, now: float) -> None:
        if self._state is not WorkerState.STARTING:
            raise IllegalTransition(self._state, "ready")
        if self._kill_reason is not None:
            return  # too late: the process is already being killed
        started = self._spawned_at if self._spawned_at is not None else self._state_since
        self._move(WorkerState.RUNNING, now, f"ready after {max(0.0, now - started):.3f} s")

    def request_stop(self, now: float) -> Action:
        state = self._state
        if state in (WorkerState.STOPPED, WorkerState.STOPPING):
            return Action.NONE
        if state is WorkerState.STARTING and self._spawned_at is None:
            self._move(WorkerState.STOPPED, now, "stop requested before the process was spawned")
        elif state in (WorkerState.STARTING, WorkerState.RUNNING):
            self._maybe_reset(now)
            self._move(WorkerState.STOPPING, now, "stop requested")
        else:  # BACKOFF, FAILED, FATAL: no process
            self._move(WorkerState.STOPPED, now, f"stop requested (was {state.value})")
        return Action.NONE

    def handed_over(self, now: float) -> None:
        """The running process was told to drain apart while a new one takes the same sockets
        (a reload with no dead air): this lifecycle no longer waits for it, its exit is none of
        this lifecycle's business (never a crash), and ``start`` may follow at once."""
        if self._state is not WorkerState.RUNNING:
            raise IllegalTransition(self._state, "handed_over", "only a running worker hands over")
        self._maybe_reset(now)
        self._move(WorkerState.STOPPED, now, "handed over: the old worker drains its calls apart")

    def exited(self, now: float, *, code: int | None, signal: int | None) -> Action:
        state = self._state
        how = describe_exit(code, signal)
        if self._kill_reason is not None:
            how = f"{how} after kill ({self._kill_reason})"
        if state not in (WorkerState.STARTING, WorkerState.RUNNING, WorkerState.STOPPING):
            raise IllegalTransition(state, "exited", "no live process")
        self._kill_reason = None
        if state is WorkerState.STOPPING:
            self._move(WorkerState.STOPPED, now, f"stopped: {how}")
            return Action.NONE
        self._maybe_reset(now)
        window = self.policy.flap_window
        while self._exit_times and now - self._exit_times[0] >= window:
            self._exit_times.popleft()
        self._exit_times.append(now)
        self._consecutive_failures += 1
        self._last_failure = how
        if len(self._exit_times) > self.policy.flap_max_restarts:
            self._move(WorkerState.FATAL, now,
                       f"flapping: {len(self._exit_times)} unexpected exits within {window:g} s (last: {how})")
            self._last_failure = self._transitions[-1].reason
            return Action.NONE
        delay = backoff_delay(self.policy, self._consecutive_failures)
        self._retry_at = now + delay
        self._move(WorkerState.BACKOFF, now, f"{how}; restart in {delay:g} s")
        if delay <= 0:
            return self._respawn(now)
        return Action.NONE

    def cannot_listen(self, now: float, reason: str) -> None:
        """The sockets could not be bound (a port in use): FAILED, tried again after a backoff."""
        if not (self._state is WorkerState.STARTING and self._spawned_at is None):
            raise IllegalTransition(self._state, "cannot_listen", "only before the process is spawned")
        self._consecutive_failures += 1
        delay = backoff_delay(self.policy, self._consecutive_failures) or SECOND_DELAY_WHEN_IMMEDIATE
        self._last_failure = reason
        self._move(WorkerState.FAILED, now, f"{reason}; retry in {delay:g} s")
        self._retry_at = now + delay

    def set_policy(self, policy: RestartPolicy, now: float) -> None:
        """Apply a reloaded policy from ``now`` on, without a restart: the heartbeat and
        start deadlines, the flap count and the next backoff use it at once (unexpected
        exits already counted stay counted). A BACKOFF wait already running is cut to
        the new ``backoff_max``, never lengthened. Not a transition: nothing is recorded."""
        self.policy = policy
        if self._state in (WorkerState.BACKOFF, WorkerState.FAILED) and self._retry_at is not None:
            self._retry_at = min(self._retry_at, now + policy.backoff_max)
        elif self._state is WorkerState.FATAL:
            self._retry_at = self._fatal_retry_at(self._state_since)

    def mark_fatal(self, now: float, reason: str) -> None:
        """Give up on a worker that has no live process (e.g. it cannot start with its config)."""
        if not (self._state in (WorkerState.BACKOFF, WorkerState.FATAL)
                or (self._state is WorkerState.STARTING and self._spawned_at is None)):
            raise IllegalTransition(self._state, "mark_fatal", "only without a live process")
        self._last_failure = reason
        self._move(WorkerState.FATAL, now, reason)

    def tick(self, now: float) -> Action:
        self._maybe_reset(now)
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return Action.NONE
        state = self._state
        if state in (WorkerState.BACKOFF, WorkerState.FAILED):
            return self._respawn(now)
        if state is WorkerState.FATAL:
            self._fatal_retries += 1
            self._exit_times.clear()
            return self._respawn(now, f"slow retry of a fatal worker (#{self._fatal_retries})")
        if state is WorkerState.STARTING:
            started = self._spawned_at if self._spawned_at is not None else self._state_since
            reason = f"start timeout: not ready after {now - started:.1f} s"
        else:  # RUNNING
            reason = f"hung: no heartbeat for {now - self._heartbeat_reference():.1f} s"
        self._kill_reason = reason
        self._last_failure = reason
        self._record(state, state, now, reason)
        return Action.KILL

    def next_deadline(self) -> float | None:
        """The earliest ``now`` at which ``tick`` acts (returns SPAWN or KILL), or None if it never will as things are."""
        state = self._state
        if state in (WorkerState.BACKOFF, WorkerState.FAILED, WorkerState.FATAL):
            return self._retry_at
        if self._kill_reason is not None:
            return None
        if state is WorkerState.STARTING:
            started = self._spawned_at if self._spawned_at is not None else self._state_since
            return started + self.policy.start_timeout
        if state is WorkerState.RUNNING:
            return self._heartbeat_reference() + self.policy.heartbeat_timeout
        return None

    # -- internals ------------------------------------------------------------
    def _heartbeat_reference(self) -> float:
        if self._last_heartbeat is None:
            return max(self._state_since, self._excused_at)
        return max(self._last_heartbeat, self._state_since, self._excused_at)

    def _maybe_reset(self, now: float) -> None:
        """A worker RUNNING for flap_window seconds has proven itself: start the backoff small again."""
        if (self._state is WorkerState.RUNNING and self._consecutive_failures
                and now - self._state_since >= self.policy.flap_window):
            self._consecutive_failures = 0

    def _respawn(self, now: float, why: str = "respawn") -> Action:
        self._restarts += 1
        self._enter_starting(now, f"{why} (restart #{self._restarts})")
        return Action.SPAWN

    def _fatal_retry_at(self, since: float) -> float | None:
        return since + self.policy.fatal_retry if self.policy.fatal_retry > 0 else None

    def _enter_starting(self, now: float, reason: str) -> None:
        self._retry_at = None
        self._spawned_at = None
        self._last_heartbeat = None
        self._kill_reason = None
        self._move(WorkerState.STARTING, now, reason)

    def _move(self, new: WorkerState, now: float, reason: str) -> None:
        self._record(self._state, new, now, reason)
        if new is not self._state:
            self._state = new
            self._state_since = now
        if new is WorkerState.FATAL:
            self._retry_at = self._fatal_retry_at(self._state_since)
        elif new not in (WorkerState.BACKOFF, WorkerState.FAILED):
            self._retry_at = None

    def _record(self, old: WorkerState, new: WorkerState, now: float, reason: str) -> None:
        self._transitions.append(Transition(old, new, reason, now))

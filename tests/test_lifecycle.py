"""The worker restart/backoff state machine, driven by hand-set times (no processes, no sleeping)."""
from __future__ import annotations

import dataclasses
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiogw.supervisor.lifecycle import (
    HISTORY_LENGTH,
    Action,
    IllegalTransition,
    RestartPolicy,
    Transition,
    WorkerLifecycle,
    WorkerState,
    backoff_delay,
)

S = WorkerState


def running(policy: RestartPolicy | None = None, at: float = 0.0) -> WorkerLifecycle:
    life = WorkerLifecycle(policy or RestartPolicy())
    assert life.start(at) is Action.SPAWN
    life.spawned(at)
    life.heartbeat(at + 0.1)
    life.ready(at + 0.1)
    assert life.state is S.RUNNING
    return life


# -- the normal life ----------------------------------------------------------
def test_normal_life():
    life = WorkerLifecycle(RestartPolicy())
    assert life.state is S.STOPPED
    assert life.next_deadline() is None
    assert life.tick(100.0) is Action.NONE
    assert life.start(1.0) is Action.SPAWN
    assert life.state is S.STARTING and life.state_since == 1.0
    life.spawned(1.01)
    assert life.spawned_at == 1.01
    life.heartbeat(1.2)
    assert life.state is S.STARTING, "a heartbeat alone does not make the worker ready"
    assert life.last_heartbeat == 1.2
    life.ready(1.3)
    assert life.state is S.RUNNING and life.state_since == 1.3
    for n in range(1, 20):
        life.heartbeat(1.3 + n * 0.5)
        assert life.tick(1.3 + n * 0.5 + 0.1) is Action.NONE
    assert life.request_stop(12.0) is Action.NONE
    assert life.state is S.STOPPING
    assert life.next_deadline() is None
    life.heartbeat(12.5)  # a draining worker still heartbeats
    assert life.tick(1000.0) is Action.NONE
    assert life.exited(13.0, code=0, signal=None) is Action.NONE
    assert life.state is S.STOPPED
    assert life.restarts == 0
    assert [(t.old, t.new) for t in life.transitions] == [
        (S.STOPPED, S.STARTING), (S.STARTING, S.RUNNING), (S.RUNNING, S.STOPPING), (S.STOPPING, S.STOPPED)]
    assert [t.at for t in life.transitions] == [1.0, 1.3, 12.0, 13.0]
    assert all(isinstance(t, Transition) for t in life.transitions)


def test_state_values_are_lowercase_strings():
    assert {s.value for s in S} == {"stopped", "starting", "running", "stopping", "backoff", "failed", "fatal"}
    assert {a.value for a in Action} == {"spawn", "kill", "none"}


def test_exit_while_stopping_is_not_a_failure_whatever_the_code():
    life = running()
    life.request_stop(5.0)
    assert life.exited(5.5, code=None, signal=signal.SIGKILL) is Action.NONE
    assert life.state is S.STOPPED and life.restarts == 0 and life.consecutive_failures == 0


# -- backoff ------------------------------------------------------------------
def test_backoff_delay_formula():
    policy = RestartPolicy()  # initial 0, max 30, factor 2
    assert [backoff_delay(policy, n) for n in range(1, 10)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    policy = RestartPolicy(backoff_initial=1.0, backoff_max=5.0, backoff_factor=3.0)
    assert [backoff_delay(policy, n) for n in range(1, 5)] == [1.0, 3.0, 5.0, 5.0]
    policy = RestartPolicy(backoff_factor=1.0)
    assert [backoff_delay(policy, n) for n in range(1, 5)] == [0.0, 0.5, 0.5, 0.5]
    assert backoff_delay(RestartPolicy(), 10_000) == 30.0  # no OverflowError
    assert backoff_delay(RestartPolicy(backoff_max=0.2), 2) == 0.2
    with pytest.raises(ValueError):
        backoff_delay(RestartPolicy(), 0)


def test_crash_respawns_immediately_then_with_growing_capped_delays():
    policy = RestartPolicy(flap_max_restarts=1000, backoff_max=4.0)
    life = running(policy)
    now = 1.0
    # First crash: delay 0, so exited() itself orders the respawn.
    assert life.exited(now, code=1, signal=None) is Action.SPAWN
    assert life.state is S.STARTING
    assert life.restarts == 1
    assert [(t.old, t.new) for t in life.transitions[-2:]] == [(S.RUNNING, S.BACKOFF), (S.BACKOFF, S.STARTING)]
    delays = []
    for _ in range(6):
        life.spawned(now)
        assert life.exited(now + 0.01, code=1, signal=None) is Action.NONE
        now += 0.01
        assert life.state is S.BACKOFF
        delay = life.retry_at - now
        delays.append(round(delay, 9))
        assert life.next_deadline() == life.retry_at
        restarts = life.restarts
        assert life.tick(life.retry_at - 0.001) is Action.NONE
        assert life.state is S.BACKOFF and life.restarts == restarts
        now = life.retry_at
        assert life.tick(now) is Action.SPAWN
        assert life.state is S.STARTING and life.retry_at is None
        assert life.restarts == restarts + 1
        assert life.tick(now) is Action.NONE  # no second SPAWN for the same attempt
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert life.restarts == 7


def test_nonzero_initial_backoff_waits_before_the_first_restart():
    life = running(RestartPolicy(backoff_initial=2.0))
    assert life.exited(10.0, code=None, signal=signal.SIGSEGV) is Action.NONE
    assert life.state is S.BACKOFF and life.retry_at == 12.0
    assert "SIGSEGV" in life.transitions[-1].reason
    assert life.restarts == 0
    assert life.tick(11.9) is Action.NONE
    assert life.tick(12.0) is Action.SPAWN
    assert life.restarts == 1


def test_long_running_resets_the_backoff():
    policy = RestartPolicy(flap_window=10.0, flap_max_restarts=100)
    life = running(policy)
    assert life.exited(1.0, code=1, signal=None) is Action.SPAWN
    life.spawned(1.0)
    assert life.exited(1.1, code=1, signal=None) is Action.NONE  # second failure: 0.5 s
    assert life.tick(life.retry_at) is Action.SPAWN
    life.spawned(1.6)
    life.ready(1.7)
    assert life.consecutive_failures == 2
    # Short run: crashing again continues the sequence (third failure: 1 s).
    assert life.exited(5.0, code=1, signal=None) is Action.NONE
    assert life.retry_at - 5.0 == pytest.approx(1.0)
    assert life.tick(6.0) is Action.SPAWN
    life.spawned(6.0)
    life.ready(6.1)
    # Now RUNNING (with heartbeats) for flap_window: the count resets.
    for t in range(7, 16):
        life.heartbeat(float(t))
    assert life.consecutive_failures == 3  # 9.9 s: not yet
    life.heartbeat(16.1)
    assert life.consecutive_failures == 0
    assert life.exited(17.0, code=1, signal=None) is Action.SPAWN  # immediate again


def test_reset_happens_at_exit_even_without_intermediate_calls():
    life = running(RestartPolicy(flap_max_restarts=100))
    assert life.exited(1.0, code=1, signal=None) is Action.SPAWN
    life.spawned(1.0)
    life.ready(1.1)
    assert life.exited(11.1, code=1, signal=None) is Action.SPAWN  # 10 s RUNNING: first failure again
    life.spawned(11.1)
    life.ready(11.2)
    assert life.exited(21.1, code=1, signal=None) is Action.NONE  # 9.9 s only: second failure, 0.5 s


# -- flapping -----------------------------------------------------------------
def flap(life: WorkerLifecycle, now: float, times: int) -> float:
    """Crash the worker ``times`` times as fast as the backoff allows; return the time."""
    for _ in range(times):
        if life.state is S.BACKOFF:
            now = life.retry_at
            assert life.tick(now) is Action.SPAWN
        if life.state is S.STARTING:
            life.spawned(now)
        life.exited(now, code=1, signal=None)
    return now


def test_flapping_goes_fatal_after_max_restarts_within_the_window():
    policy = RestartPolicy(flap_window=60.0, flap_max_restarts=5, fatal_retry=0.0)
    life = running(policy)
    # 5 unexpected exits are tolerated (with 5 restarts)...
    assert life.exited(1.0, code=1, signal=None) is Action.SPAWN
    now = 1.0
    for _ in range(4):
        life.spawned(now)
        action = life.exited(now, code=1, signal=None)
        assert life.state is S.BACKOFF and action is Action.NONE
        now = life.retry_at
        assert life.tick(now) is Action.SPAWN
    assert life.restarts == 5
    # ... the 6th within the window is flapping.
    life.spawned(now)
    assert life.exited(now + 0.1, code=3, signal=None) is Action.NONE
    assert life.state is S.FATAL
    assert life.retry_at is None
    assert "flapping" in life.transitions[-1].reason and "code 3" in life.transitions[-1].reason
    assert life.next_deadline() is None
    for t in (now + 1, now + 100, now + 10_000):
        assert life.tick(t) is Action.NONE
    assert life.state is S.FATAL and life.restarts == 5
    with pytest.raises(IllegalTransition):
        life.heartbeat(now + 1)
    with pytest.raises(IllegalTransition):
        life.exited(now + 1, code=1, signal=None)


def test_exits_spread_beyond_the_window_do_not_flap():
    policy = RestartPolicy(flap_window=10.0, flap_max_restarts=2, backoff_max=0.0)
    life = running(policy)
    now = 0.0
    for _ in range(20):
        now += 6.0  # at most 2 exits in any 10 s window
        if life.state is S.STARTING:
            life.spawned(now)
        life.exited(now, code=1, signal=None)
        assert life.state is S.STARTING, life.transitions[-1]


def test_operator_start_from_fatal_clears_the_history():
    policy = RestartPolicy(flap_window=60.0, flap_max_restarts=2)
    life = running(policy)
    flap(life, 1.0, 3)
    assert life.state is S.FATAL
    restarts = life.restarts
    with pytest.raises(IllegalTransition):
        life.ready(20.0)
    assert life.start(20.0) is Action.SPAWN
    assert life.state is S.STARTING
    assert life.restarts == restarts, "an operator start is not a restart"
    assert life.consecutive_failures == 0
    life.spawned(20.0)
    # Flap history cleared: the next crash restarts immediately instead of going FATAL again.
    assert life.exited(20.5, code=1, signal=None) is Action.SPAWN
    assert life.restarts == restarts + 1


def test_stop_then_start_from_fatal_as_restart_extension_does():
    life = running(RestartPolicy(flap_max_restarts=0))
    life.exited(1.0, code=1, signal=None)
    assert life.state is S.FATAL
    assert life.request_stop(2.0) is Action.NONE
    assert life.state is S.STOPPED
    assert life.start(2.0) is Action.SPAWN


# -- hung and late workers ----------------------------------------------------
def test_a_late_supervisor_excuses_the_silence_it_could_not_watch():
    life = running(RestartPolicy(heartbeat_timeout=3.0))
    life.heartbeat(1.0)
    life.excuse(5.0)  # the supervisor's own loop ran late until 5.0: the silence since 1.0 proves nothing
    assert life.next_deadline() == 8.0
    assert life.tick(7.9) is Action.NONE
    assert life.tick(8.1) is Action.KILL, "a worker that stays silent afterwards is still killed"
    assert life.kill_reason == "hung: no heartbeat for 3.1 s"


def test_hung_worker_is_killed_once_then_respawned():
    life = running(RestartPolicy(heartbeat_timeout=3.0))  # ready + heartbeat at 0.1
    life.heartbeat(1.0)
    assert life.next_deadline() == 4.0
    assert life.tick(3.99) is Action.NONE
    assert life.tick(4.2) is Action.KILL
    assert life.state is S.RUNNING
    assert life.transitions[-1].reason == "hung: no heartbeat for 3.2 s"
    assert life.kill_reason == "hung: no heartbeat for 3.2 s"
    assert life.next_deadline() is None
    for t in (4.3, 5.0, 100.0):
        assert life.tick(t) is Action.NONE, "a kill is ordered only once"
    action = life.exited(4.4, code=None, signal=signal.SIGKILL)
    assert action is Action.SPAWN
    assert life.state is S.STARTING and life.restarts == 1
    assert life.kill_reason is None
    backoff = [t for t in life.transitions if t.new is S.BACKOFF][-1]
    assert "SIGKILL" in backoff.reason and "hung" in backoff.reason
    assert life.last_heartbeat is None, "the new process has not heartbeaten yet"


def test_heartbeat_deadline_counts_from_ready_when_no_heartbeat_since():
    life = WorkerLifecycle(RestartPolicy(heartbeat_timeout=3.0))
    life.start(0.0)
    life.spawned(0.0)
    life.heartbeat(0.5)
    life.ready(2.0)
    assert life.next_deadline() == 5.0
    assert life.tick(4.9) is Action.NONE
    assert life.tick(5.0) is Action.KILL


def test_start_timeout_kills_once():
    life = WorkerLifecycle(RestartPolicy(start_timeout=5.0))
    life.start(10.0)
    assert life.next_deadline() == 15.0
    life.spawned(10.5)
    assert life.next_deadline() == 15.5
    life.heartbeat(11.0)  # heartbeating but never ready
    assert life.tick(15.4) is Action.NONE
    assert life.tick(15.5) is Action.KILL
    assert life.state is S.STARTING
    assert life.transitions[-1].reason.startswith("start timeout")
    assert life.tick(16.0) is Action.NONE
    assert life.next_deadline() is None
    life.ready(15.6)  # too late: the process is being killed
    assert life.state is S.STARTING
    assert life.exited(15.7, code=None, signal=signal.SIGKILL) is Action.SPAWN
    assert life.state is S.STARTING and life.restarts == 1
    assert life.next_deadline() == 15.7 + 5.0


def test_tick_acts_exactly_at_next_deadline_despite_float_rounding():
    for base in (0.1, 0.7, 1e6 + 0.1, 12345.678):
        life = running(RestartPolicy(heartbeat_timeout=0.2), at=base)
        life.heartbeat(base + 0.3)
        deadline = life.next_deadline()
        assert life.tick(deadline) is Action.KILL


# -- next_deadline --------------------------------------------------------------
def test_next_deadline_per_state():
    policy = RestartPolicy(backoff_initial=1.5, start_timeout=4.0, heartbeat_timeout=2.0)
    life = WorkerLifecycle(policy)
    assert life.next_deadline() is None  # STOPPED
    life.start(0.0)
    assert life.next_deadline() == 4.0  # STARTING, not spawned yet
    life.spawned(1.0)
    assert life.next_deadline() == 5.0
    life.ready(2.0)
    assert life.next_deadline() == 4.0  # RUNNING, from ready
    life.heartbeat(3.0)
    assert life.next_deadline() == 5.0
    life.exited(3.5, code=1, signal=None)
    assert life.state is S.BACKOFF
    assert life.next_deadline() == 5.0 == life.retry_at
    life.request_stop(3.6)
    assert life.state is S.STOPPED and life.next_deadline() is None and life.retry_at is None


# -- stop -----------------------------------------------------------------------
def test_stop_from_each_state():
    life = WorkerLifecycle(RestartPolicy(backoff_initial=5.0))
    assert life.request_stop(0.0) is Action.NONE and life.state is S.STOPPED  # idempotent
    assert life.transitions == []
    life.start(0.0)
    assert life.request_stop(0.0) is Action.NONE
    assert life.state is S.STOPPED, "nothing was spawned, so nothing to wait for"
    life.start(1.0)
    life.spawned(1.0)
    assert life.request_stop(1.5) is Action.NONE and life.state is S.STOPPING
    assert life.request_stop(1.6) is Action.NONE and life.state is S.STOPPING  # idempotent
    life.exited(2.0, code=0, signal=None)
    life.start(3.0)
    life.spawned(3.0)
    life.exited(3.5, code=1, signal=None)
    assert life.state is S.BACKOFF
    assert life.request_stop(4.0) is Action.NONE and life.state is S.STOPPED
    assert life.tick(100.0) is Action.NONE, "a stopped worker is never respawned"


# -- mark_fatal -------------------------------------------------------------------
def test_mark_fatal_after_exit_even_when_a_respawn_was_ordered():
    life = running(RestartPolicy(fatal_retry=0.0))
    assert life.exited(1.0, code=78, signal=None) is Action.SPAWN
    life.mark_fatal(1.0, "cannot start with this config")
    assert life.state is S.FATAL and life.transitions[-1].reason == "cannot start with this config"
    assert life.last_failure == "cannot start with this config"
    assert life.tick(100.0) is Action.NONE
    life.mark_fatal(2.0, "again")  # FATAL -> FATAL is allowed
    assert life.state_since == 1.0
    with pytest.raises(IllegalTransition):
        running().mark_fatal(5.0, "alive")


# -- illegal calls ------------------------------------------------------------------
@pytest.mark.parametrize("call, setup", [
    ("ready", "stopped"), ("spawned", "stopped"), ("heartbeat", "stopped"), ("exited", "stopped"),
    ("start", "starting"), ("start", "running"), ("start", "stopping"), ("start", "backoff"),
    ("ready", "running"), ("spawned", "running"), ("spawned", "spawned"),
    ("ready", "stopping"), ("ready", "backoff"), ("heartbeat", "backoff"), ("exited", "backoff"),
    ("spawned", "backoff"), ("mark_fatal", "stopped"), ("mark_fatal", "stopping"), ("mark_fatal", "spawned"),
])
def test_illegal_transitions_raise_and_change_nothing(call, setup):
    life = WorkerLifecycle(RestartPolicy(backoff_initial=1.0))
    if setup != "stopped":
        life.start(0.0)
    if setup in ("spawned", "running", "stopping", "backoff"):
        life.spawned(0.0)
    if setup in ("running", "stopping"):
        life.ready(0.5)
    if setup == "stopping":
        life.request_stop(0.6)
    if setup == "backoff":
        life.exited(0.7, code=1, signal=None)
    before = (life.state, life.state_since, life.restarts, life.retry_at, life.last_heartbeat,
              life.spawned_at, life.consecutive_failures, life.transitions)
    arguments = {"exited": {"code": 0, "signal": None}}.get(call, {})
    positional = ("why",) if call == "mark_fatal" else ()
    with pytest.raises(IllegalTransition) as raised:
        getattr(life, call)(1.0, *positional, **arguments)
    assert isinstance(raised.value, ValueError)
    assert life.state.name in str(raised.value) and call in str(raised.value)
    after = (life.state, life.state_since, life.restarts, life.retry_at, life.last_heartbeat,
             life.spawned_at, life.consecutive_failures, life.transitions)
    assert after == before


def test_policy_is_frozen_and_validated():
    policy = RestartPolicy()
    assert dataclasses.astuple(policy) == (0.0, 30.0, 2.0, 10.0, 5, 5.0, 3.0, 60.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.backoff_max = 1.0  # type: ignore[misc]
    for bad in ({"backoff_initial": -1.0}, {"backoff_factor": 0.5}, {"heartbeat_timeout": 0.0},
                {"start_timeout": float("nan")}, {"flap_max_restarts": -1}, {"flap_window": -0.1},
                {"fatal_retry": -1.0}, {"fatal_retry": float("nan")}):
        with pytest.raises(ValueError):
            RestartPolicy(**bad)


def test_read_only_views():
    life = WorkerLifecycle(RestartPolicy())
    for name in ("state", "restarts", "retry_at", "last_heartbeat", "state_since", "transitions"):
        with pytest.raises(AttributeError):
            setattr(life, name, None)
    life.start(0.0)
    life.transitions.clear()  # a copy
    assert len(life.transitions) == 1


def test_history_is_bounded():
    life = WorkerLifecycle(RestartPolicy())
    for n in range(100):
        life.start(float(n))
        life.request_stop(float(n))
    assert len(life.transitions) == HISTORY_LENGTH
    assert life.transitions[-1].at == 99.0


# -- property: any event sequence ---------------------------------------------------
EVENTS = ("start", "spawned", "ready", "heartbeat", "request_stop", "exit_code", "exit_signal",
          "tick", "tick_at_deadline", "mark_fatal", "cannot_listen")

policies = st.builds(
    RestartPolicy,
    backoff_initial=st.sampled_from([0.0, 0.0, 0.3, 2.0]),
    backoff_max=st.sampled_from([0.0, 1.0, 30.0]),
    backoff_factor=st.sampled_from([1.0, 2.0, 3.0]),
    flap_window=st.sampled_from([0.0, 1.0, 10.0]),
    flap_max_restarts=st.integers(0, 6),
    start_timeout=st.sampled_from([0.5, 5.0]),
    heartbeat_timeout=st.sampled_from([0.5, 3.0]),
    fatal_retry=st.sampled_from([0.0, 2.0, 60.0]),
)


# Weighted so that sequences reach every state often (uniform choices mostly stay STOPPED).
WEIGHTED_EVENTS = ("start",) * 3 + ("spawned",) * 4 + ("ready",) * 3 + ("heartbeat",) * 3 + EVENTS
time_steps = st.one_of(st.just(0.0), st.floats(0.0, 1.0), st.floats(0.0, 12.0))


@settings(max_examples=400, deadline=None)
@given(policy=policies,
       steps=st.lists(st.tuples(st.sampled_from(WEIGHTED_EVENTS), time_steps), min_size=5, max_size=80))
def test_random_event_sequences_keep_the_invariants(policy, steps):
    life = WorkerLifecycle(policy)
    now = 0.0
    restarts = 0
    for event, step in steps:
        now += step
        deadline = life.next_deadline()
        if event == "tick_at_deadline":
            if deadline is None:
                continue
            now = max(now, deadline)
        before = (life.state, life.state_since, life.restarts, life.retry_at, life.transitions)
        try:
            if event in ("tick", "tick_at_deadline"):
                result = life.tick(now)
                # tick acts exactly when next_deadline says it will
                assert (result is not Action.NONE) == (deadline is not None and now >= deadline)
            elif event == "start":
                result = life.start(now)
                assert result is Action.SPAWN
            elif event == "request_stop":
                result = life.request_stop(now)
                assert result is Action.NONE
            elif event == "exit_code":
                result = life.exited(now, code=1, signal=None)
            elif event == "exit_signal":
                result = life.exited(now, code=None, signal=9)
            elif event == "mark_fatal":
                result = life.mark_fatal(now, "test")
            elif event == "cannot_listen":
                result = life.cannot_listen(now, "cannot listen")
            else:
                result = getattr(life, event)(now)
        except IllegalTransition:
            after = (life.state, life.state_since, life.restarts, life.retry_at, life.transitions)
            assert after == before, "a refused event changes nothing"
        else:
            assert result is None or isinstance(result, Action)
            if result is Action.SPAWN:
                assert life.state is S.STARTING and life.spawned_at is None
            if result is Action.KILL:
                assert life.state in (S.STARTING, S.RUNNING) and life.next_deadline() is None
        assert isinstance(life.state, WorkerState)
        assert life.restarts >= restarts
        restarts = life.restarts
        waits = life.state in (S.BACKOFF, S.FAILED) or (life.state is S.FATAL and policy.fatal_retry > 0)
        assert (life.retry_at is not None) == waits
        assert life.public_state in ("starting", "running", "backoff", "failed", "fatal", "stopping")
        assert life.state_since <= now
        history = life.transitions
        assert len(history) <= HISTORY_LENGTH
        for earlier, later in zip(history, history[1:]):
            assert earlier.new is later.old
            assert earlier.at <= later.at
        if history:
            assert history[-1].new is life.state
        if life.state in (S.STOPPED, S.STOPPING) or (life.state is S.FATAL and not policy.fatal_retry):
            assert life.next_deadline() is None


# -- failed (cannot listen), fatal's slow retry, last_failure, public names -------------------
def test_cannot_listen_is_failed_and_retried_with_a_growing_backoff_never_fatal():
    policy = RestartPolicy(backoff_initial=0.0, backoff_max=4.0, flap_max_restarts=1)
    life = WorkerLifecycle(policy)
    assert life.start(0.0) is Action.SPAWN
    now, delays = 0.0, []
    for _ in range(8):  # far more than flap_max_restarts: a busy port is not flapping
        life.cannot_listen(now, "cannot listen on 127.0.0.1:5: Address already in use")
        assert life.state is S.FAILED and life.public_state == "failed"
        assert life.last_failure == "cannot listen on 127.0.0.1:5: Address already in use"
        assert life.next_deadline() == life.retry_at > now
        delays.append(life.retry_at - now)
        assert life.tick(life.retry_at - 0.01) is Action.NONE
        now = life.retry_at
        assert life.tick(now) is Action.SPAWN and life.state is S.STARTING
    assert delays[0] > 0, "never retried at once: the port is not freed by retrying"
    assert delays == sorted(delays) and max(delays) == policy.backoff_max
    life.spawned(now)
    life.ready(now)
    assert life.state is S.RUNNING and life.last_failure.startswith("cannot listen")
    assert life.restarts == 8


def test_cannot_listen_only_before_a_spawn_and_a_stop_ends_the_wait():
    life = running()
    with pytest.raises(IllegalTransition):
        life.cannot_listen(1.0, "x")
    life = WorkerLifecycle(RestartPolicy())
    life.start(0.0)
    life.cannot_listen(0.0, "busy")
    assert life.request_stop(1.0) is Action.NONE and life.state is S.STOPPED and life.retry_at is None


def test_fatal_is_retried_on_the_slow_timer_and_counted():
    policy = RestartPolicy(flap_window=60.0, flap_max_restarts=0, fatal_retry=45.0)
    life = running(policy)
    assert life.exited(1.0, code=1, signal=None) is Action.NONE
    assert life.state is S.FATAL and life.public_state == "fatal"
    assert "flapping" in life.last_failure and "code 1" in life.last_failure
    assert life.next_deadline() == life.retry_at == 1.0 + policy.fatal_retry
    assert life.tick(1.0 + policy.fatal_retry - 0.1) is Action.NONE
    assert life.tick(1.0 + policy.fatal_retry) is Action.SPAWN
    assert life.state is S.STARTING and life.fatal_retries == 1 and life.restarts == 1
    assert "slow retry" in life.transitions[-1].reason
    life.spawned(50.0)
    assert life.exited(50.5, code=1, signal=None) is Action.NONE and life.state is S.FATAL
    assert life.retry_at == 50.5 + policy.fatal_retry
    # an operator start clears it at once, and forgets the failure
    assert life.start(51.0) is Action.SPAWN and life.last_failure is None and life.retry_at is None
    assert life.fatal_retries == 1


def test_fatal_retry_follows_a_reloaded_policy_and_zero_means_never():
    life = running(RestartPolicy(flap_max_restarts=0, fatal_retry=60.0))
    life.exited(1.0, code=1, signal=None)
    life.set_policy(RestartPolicy(flap_max_restarts=0, fatal_retry=10.0), 2.0)
    assert life.retry_at == 11.0
    life.set_policy(RestartPolicy(flap_max_restarts=0, fatal_retry=0.0), 3.0)
    assert life.retry_at is None and life.next_deadline() is None and life.tick(1e6) is Action.NONE


def test_last_failure_names_a_kill_and_every_state_has_one_public_name():
    from audiogw.supervisor.lifecycle import PUBLIC_STATE

    assert set(PUBLIC_STATE) == set(S)
    assert set(PUBLIC_STATE.values()) == {"starting", "running", "backoff", "failed", "fatal", "stopping"}
    from audiogw.shared.commands import EXTENSION_STATES
    assert set(PUBLIC_STATE.values()) == set(EXTENSION_STATES)  # what ctl and the cluster's status keys accept
    policy = RestartPolicy(heartbeat_timeout=2.0)
    life = running(policy)
    assert life.last_failure is None
    assert life.tick(0.1 + policy.heartbeat_timeout) is Action.KILL
    assert life.last_failure.startswith("hung: no heartbeat for 2.0 s")
    life.exited(3.0, code=None, signal=signal.SIGKILL)
    assert "killed by SIGKILL" in life.last_failure and "hung" in life.last_failure


# -- handover (reload with no dead air) ---------------------------------------------
def test_a_running_worker_hands_over_and_the_next_start_follows_at_once():
    life = running(RestartPolicy(flap_max_restarts=0))
    life.handed_over(5.0)
    assert life.state is S.STOPPED and life.next_deadline() is None
    assert life.transitions[-1].reason.startswith("handed over")
    assert life.start(5.0) is Action.SPAWN  # the new worker, on the same sockets
    assert life.restarts == 0 and life.last_failure is None, "a handover is no failure"


@pytest.mark.parametrize("setup", ["stopped", "starting", "stopping", "fatal"])
def test_only_a_running_worker_hands_over(setup):
    life = WorkerLifecycle(RestartPolicy(flap_max_restarts=0))
    if setup != "stopped":
        life.start(0.0)
        life.spawned(0.0)
    if setup == "stopping":
        life.request_stop(0.1)
    elif setup == "fatal":
        life.exited(0.1, code=1, signal=None)
    before = (life.state, life.transitions)
    with pytest.raises(IllegalTransition):
        life.handed_over(1.0)
    assert (life.state, life.transitions) == before

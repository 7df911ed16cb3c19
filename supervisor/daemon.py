"""The supervisor: one worker process per extension, kept alive, controlled over ZeroMQ.

One asyncio loop drives everything: worker exits (process sentinels), worker
heartbeats (the bus ROUTER), control requests (the control ROUTER, one task
per request), signals (the handler only enqueues), and the lifecycle timers
(it sleeps until the earliest deadline; it never polls).
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

import zmq
import zmq.asyncio

from audiogw.shared.config import Config, ConfigError, ExtensionConfig, load_config
from audiogw.shared.logs import configure_logging
from audiogw.shared.messages import (
    Drain, Failed, MessageError, Ready, WorkerCommand, decode_worker_message, encode_worker_command,
)
from audiogw.shared.records import leg_records_file
from audiogw.shared.worker_spec import DUMP_SIGNAL, WorkerSpec
from audiogw.supervisor import systemd
from audiogw.supervisor.extension import ExtensionRuntime, PortInUse, bind_extension_sockets
from audiogw.supervisor.lifecycle import Action, IllegalTransition, RestartPolicy, WorkerState, describe_exit
from audiogw.supervisor.reload_plan import plan_reload
from audiogw.supervisor.state import ExtensionStore, WorkerRecords
from audiogw.supervisor.zygote import Zygote

# Plain ints: pyzmq's enum flags cost an enum construction per ``&`` on the heartbeat path.
_EVENTS, _POLLIN, _RCVMORE, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.RCVMORE), int(zmq.NOBLOCK)

log = logging.getLogger("audiogw.supervisor")

DUMP_BEFORE_KILL = 0.5  # seconds between DUMP_SIGNAL (the worker's thread dump) and SIGKILL of a hung worker
EX_CONFIG = 78  # a worker that exits with this cannot start with its config: do not restart it
# How long an exit 78 waits for the worker's Failed message (sent just before it exits) to be read.
FAILED_REPORT_WAIT = 0.2


def restart_policy(config: Config) -> RestartPolicy:
    settings = config.supervisor
    return RestartPolicy(
        backoff_initial=settings.backoff_initial,
        backoff_max=settings.backoff_max,
        flap_window=settings.flap_window,
        flap_max_restarts=settings.flap_max_restarts,
        heartbeat_timeout=settings.heartbeat_timeout,
        fatal_retry=settings.fatal_retry,
    )


class Supervisor:
    def __init__(self, config: Config, zygote: Zygote) -> None:
        self.config = config
        self.zygote = zygote
        self.extensions: dict[str, ExtensionRuntime] = {}
        self.store = ExtensionStore(config.supervisor.state_dir)
        self.store.load(config.base_dir)  # checked like the config file, before anything starts (ConfigError)
        self.records = WorkerRecords(config.supervisor.state_dir)
        self.started_at = time.time()
        self.signals: asyncio.Queue[int] = asyncio.Queue()
        self.stop_requested = asyncio.Event()
        self.stop_drain = config.supervisor.drain_seconds
        self._wake = asyncio.Event()
        self._zmq = zmq.asyncio.Context()
        self._background: set[asyncio.Task] = set()  # removals a reload left draining
        self._killing: set[int] = set()  # pids sent DUMP_SIGNAL whose SIGKILL is pending (kill_worker)
        run_dir = os.path.join(config.supervisor.state_dir, "run")
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        os.chmod(run_dir, 0o700)
        self.bus_endpoint = f"ipc://{run_dir}/bus.sock"
        # A plain (not asyncio) socket read from the loop's own reader callback:
        # heartbeats from every worker cost no futures and no Again exceptions.
        self._bus = zmq.Socket(self._zmq, zmq.ROUTER)
        self._bus.setsockopt(zmq.LINGER, 0)
        self._bus.setsockopt(zmq.ROUTER_MANDATORY, 0)
        self._bus.bind(self.bus_endpoint)
        self._bus_watched = False
        # Each extension keeps a slot for its worker's clock phase (staggered ticks).
        self._clock_slots: dict[str, int] = {}
        self._bus_timer: asyncio.TimerHandle | None = None
        self.control = None  # the ControlServer, once run() starts it (its refusals go to /metrics)
        self.metrics_server = None
        self.cluster = None  # ClusterServing once run() starts [cluster] mode (supervisor/cluster_wiring.py)
        # Call control (audiogw.dial, DTMF, REST hangup): the workers' calls socket and AMI, from run() on.
        self.calls_endpoint = f"ipc://{run_dir}/calls.sock"
        self.calls = None

    # -- lifecycle of one extension -------------------------------------
    def worker_spec(self, extension: ExtensionConfig) -> WorkerSpec:
        settings = self.config.supervisor
        return WorkerSpec(
            extension=extension.id,
            app=extension.app,
            settings=self.config.audiosocket,
            options=dict(extension.options),
            base_dir=self.config.base_dir,
            bus_endpoint=self.bus_endpoint,
            heartbeat_interval=settings.heartbeat_interval,
            drain_seconds=settings.drain_seconds,
            log_format=settings.log_format,
            log_level=settings.log_level,
            clock_slot=self._clock_slots.setdefault(extension.id, len(self._clock_slots)),
            supervisor_pid=os.getpid(),
            leg_records=self._leg_records_file(extension.id),
            calls_endpoint=self.calls_endpoint,
            account_sid=self.config.agent.account_sid,
        )

    def _leg_records_file(self, extension_id: str) -> str | None:
        """The extension's leg-record file, its folder created if need be (a reload may name a new one)."""
        folder = self.config.supervisor.leg_records
        if folder is None:
            return None
        try:
            os.makedirs(folder, mode=0o750, exist_ok=True)
        except OSError as error:
            log.error("supervisor.leg_records: cannot create %s: %s; workers run without leg records",
                      folder, error.strerror or error)
            return None
        return leg_records_file(folder, extension_id)

    def add_runtime(self, extension: ExtensionConfig, *, bind_now: bool = False) -> ExtensionRuntime:
        """Start an extension's worker; its outcome (serving, or why not) arrives in ``runtime.outcome``.

        ``bind_now`` (add-extension): bind first and raise PortInUse, leaving
        nothing behind. Otherwise (start, reload) a port that cannot be bound
        leaves the extension listed as ``failed`` with the reason, retried with
        the lifecycle's backoff: never dropped silently.
        """
        sockets = bind_extension_sockets(self.config.audiosocket.bind, extension,
                                         self.config.audiosocket.listen_backlog) if bind_now else {}
        runtime = ExtensionRuntime(extension, sockets, restart_policy(self.config))
        runtime.source = self.store.source(extension.id)
        self.extensions[extension.id] = runtime
        runtime.expect_outcome()
        self._act(runtime, runtime.lifecycle.start(time.monotonic()))
        return runtime

    def persist_added(self, extension: ExtensionConfig) -> None:
        """Save an added extension (it comes back at every start); OSError leaves the store as it was."""
        previous = self.store.added.get(extension.id)
        was_removed = extension.id in self.store.removed
        try:
            self.store.added[extension.id] = extension
            self.store.removed.discard(extension.id)
            self.store.save()
        except OSError:
            if previous is None:
                self.store.added.pop(extension.id, None)
            else:
                self.store.added[extension.id] = previous
            if was_removed:
                self.store.removed.add(extension.id)
            raise
        if (runtime := self.extensions.get(extension.id)) is not None:
            runtime.source = self.store.source(extension.id)

    async def discard_extension(self, runtime: ExtensionRuntime) -> None:
        """Take back an extension that never served (add-extension refused): no drain, no call to
        keep; its process (a respawn, perhaps) is killed and its ports are freed before the reply."""
        self.extensions.pop(runtime.id, None)
        runtime.lifecycle.request_stop(time.monotonic())
        process = runtime.process
        if process is not None and process.exitcode is None:
            self.kill_worker(runtime, process, "add-extension refused: its start is taken back", headline="discarded")
            try:
                await asyncio.wait_for(runtime.exited_event.wait(), DUMP_BEFORE_KILL + 5.0)
            except TimeoutError:
                log.warning("worker extension=%s pid=%s did not exit after SIGKILL", runtime.id, process.pid)
        runtime.close_sockets()
        self._wake.set()

    def _spawn(self, runtime: ExtensionRuntime) -> None:
        if not runtime.sockets:
            try:
                runtime.sockets = bind_extension_sockets(self.config.audiosocket.bind, runtime.config,
                                                         self.config.audiosocket.listen_backlog)
            except PortInUse as error:
                now = time.monotonic()
                runtime.lifecycle.cannot_listen(now, str(error))
                log.error("extension %s failed: %s; retry in %.1f s", runtime.id, error,
                          max(0.0, (runtime.lifecycle.retry_at or now) - now))
                runtime.settle(str(error))
                self._wake.set()
                return
        process = self.zygote.spawn(self.worker_spec(runtime.config), runtime.sockets, name=f"audiogw-worker-{runtime.id}")
        runtime.attach(process)
        runtime.lifecycle.spawned(time.monotonic())
        self.records.set(runtime.id, process.pid)
        asyncio.get_running_loop().add_reader(process.sentinel, self._on_exit, runtime, process)
        self._read_bus()  # watch the bus until this worker reports ready
        self._wake.set()  # its start deadline, and systemd's STATUS=, changed
        log.info("worker start extension=%s pid=%d app=%s ports=%d/%d", runtime.id, process.pid,
                 runtime.config.app, runtime.config.ia_port, runtime.config.retorno_port)

    def _on_exit(self, runtime: ExtensionRuntime, process, waited: float = 0.0) -> None:
        if not waited:
            asyncio.get_running_loop().remove_reader(process.sentinel)
            process.join(0)
        code = process.exitcode
        if code == EX_CONFIG and runtime.process is process and runtime.failure_report is None:
            self._read_bus()  # its Failed message (the option error) was sent before the exit
            if runtime.failure_report is None and waited < FAILED_REPORT_WAIT:
                asyncio.get_running_loop().call_later(0.02, self._on_exit, runtime, process, waited + 0.02)
                return
        predecessor = runtime.predecessor
        if predecessor is not None and predecessor.process is process:
            runtime.predecessor_exited()  # never a crash of the new worker: its lifecycle is not told
            log.info("worker exit extension=%s pid=%d code %s (replaced, drained)", runtime.id, process.pid, code)
            self._wake.set()
            return
        if runtime.process is not process:
            return
        signal_number = -code if code is not None and code < 0 else None
        exit_code = code if code is not None and code >= 0 else None
        how = f"signal {signal.Signals(signal_number).name}" if signal_number else f"code {exit_code}"
        runtime.detach()
        self.records.set(runtime.id, None)
        if runtime.id not in self.extensions:
            log.info("worker exit extension=%s pid=%d %s (removed)", runtime.id, process.pid, how)
            return
        now = time.monotonic()
        state_before = runtime.lifecycle.state
        action = runtime.lifecycle.exited(now, code=exit_code, signal=signal_number)
        if exit_code == EX_CONFIG and runtime.lifecycle.state != WorkerState.STOPPED:
            runtime.lifecycle.mark_fatal(now, runtime.failure_report or f"exited with code {EX_CONFIG}: cannot "
                                         "start with this config (the worker's log line says why)")
            action = Action.NONE
        if state_before != WorkerState.STOPPING:
            runtime.settle(runtime.lifecycle.last_failure or describe_exit(exit_code, signal_number))
        state = runtime.lifecycle.state
        if state == WorkerState.FATAL:
            runtime.close_sockets()  # refuse at once (SPEC); the next start (retry, operator) binds again
        if state_before == WorkerState.STOPPING:
            log.info("worker exit extension=%s pid=%d %s", runtime.id, process.pid, how)
        elif state == WorkerState.FATAL:
            log.error("worker exit extension=%s pid=%d %s: marked failed (%s)", runtime.id, process.pid, how,
                      runtime.lifecycle.transitions[-1].reason)
        else:
            delay = max(0.0, (runtime.lifecycle.retry_at or now) - now)
            log.warning("worker exit extension=%s pid=%d %s: restart in %.2fs", runtime.id, process.pid, how, delay)
        self._act(runtime, action)
        self._wake.set()

    def _act(self, runtime: ExtensionRuntime, action: Action) -> None:
        if action == Action.SPAWN and self.stopping:
            # The stop's drain meets a STARTING extension with no process: it simply stops.
            log.info("worker extension=%s not restarted: the supervisor is stopping", runtime.id)
        elif action == Action.SPAWN:
            try:
                self._spawn(runtime)
            except Exception as error:
                log.exception("cannot start worker for extension %s", runtime.id)
                action = runtime.lifecycle.exited(time.monotonic(), code=None, signal=None)
                runtime.settle(f"cannot start the worker: {error}")
                self._act(runtime, action)
        elif action == Action.KILL and runtime.process is not None:
            self.kill_worker(runtime, runtime.process, runtime.lifecycle.kill_reason or "")

    def kill_worker(self, runtime: ExtensionRuntime, process, reason: str, headline: str = "unresponsive") -> None:
        """Every kill of a worker goes through here: hung at start or in service (the lifecycle's KILL),
        in a drain (a stop, a removal, a handover's predecessor past its deadline), or discarded.
        First ``DUMP_SIGNAL``: the worker's faulthandler (worker/main.py) writes every thread's stack to
        its stderr, the log, even while its loop is blocked; SIGKILL follows ``DUMP_BEFORE_KILL`` s
        later unless the process ended meanwhile. A kill already under way is not repeated."""
        pid = process.pid
        if pid in self._killing:
            return
        log.warning("worker %s extension=%s pid=%d: %s; dumping its threads (%s), kill in %.1f s", headline,
                    runtime.id, pid, reason, DUMP_SIGNAL.name, DUMP_BEFORE_KILL,
                    extra={"event": "worker_unresponsive", "extension": runtime.id, "reason": reason})
        try:
            os.kill(pid, DUMP_SIGNAL)
        except ProcessLookupError:
            return
        self._killing.add(pid)
        asyncio.get_running_loop().call_later(DUMP_BEFORE_KILL, self._kill, runtime, process, reason)

    def _kill(self, runtime: ExtensionRuntime, process, reason: str) -> None:
        """SIGKILL the worker ordered killed, unless that process already ended."""
        self._killing.discard(process.pid)
        if process.exitcode is not None:  # polls its sentinel: a kill is rare, never the heartbeat path
            return
        log.warning("worker kill extension=%s pid=%d: %s", runtime.id, process.pid, reason,
                    extra={"event": "worker_kill", "extension": runtime.id, "reason": reason})
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    async def _timers(self) -> None:
        """Run lifecycle deadlines (backoff ends, start timeouts, missed heartbeats)."""
        while not self._closing:
            # Heartbeats already queued count before any worker is judged hung: on a
            # starved host the supervisor itself may be the one that was late.
            self._read_bus()
            now = time.monotonic()
            for runtime in list(self.extensions.values()):
                self._act(runtime, runtime.lifecycle.tick(now))
            self._notify_ready_if_all_serving()  # an exit, a ready, a busy port, an add or a removal woke us
            if self.cluster is not None:  # the other nodes read the states of what this node serves from etcd
                self.cluster.status.changed()
            deadlines = [d for d in (r.lifecycle.next_deadline() for r in self.extensions.values()) if d is not None]
            timeout = min(deadlines) - time.monotonic() if deadlines else 3600.0
            self._wake.clear()
            planned = time.monotonic() + max(0.001, timeout)
            try:
                async with asyncio.timeout(max(0.001, timeout)):
                    await self._wake.wait()
            except TimeoutError:
                self._excuse_if_late(time.monotonic() - planned)

    def _excuse_if_late(self, late: float) -> None:
        """A wake-up far behind its time means the supervisor (and its ZeroMQ thread) did not
        run: workers' heartbeats may be stuck on the way. It kills no one for that silence."""
        if late <= self.config.supervisor.heartbeat_interval:
            return
        now = time.monotonic()
        log.warning("supervisor ran %.1f s late (the host is starved): heartbeat deadlines restart now", late)
        for runtime in self.extensions.values():
            runtime.lifecycle.excuse(now)

    # -- the worker bus ---------------------------------------------------
    def _read_bus(self) -> None:
        """Take every queued worker message, then decide when to look again."""
        if self._bus_timer is not None:
            self._bus_timer.cancel()
            self._bus_timer = None
        bus = self._bus
        # ZeroMQ's FD is edge-triggered: read until ZMQ_EVENTS says the queue is
        # empty, or a message could wait for the next edge.
        try:
            while bus.getsockopt(_EVENTS) & _POLLIN:
                parts = [bus.recv(_NOBLOCK)]
                while bus.getsockopt(_RCVMORE):
                    parts.append(bus.recv(_NOBLOCK))
                if len(parts) != 2:
                    log.warning("refused worker bus message: %d frames, expected identity and body", len(parts))
                    continue
                try:
                    self._on_bus_message(parts[1])
                except Exception:  # one bad message must not stop the reading: every worker would look hung
                    log.exception("worker bus message failed")
        except zmq.ZMQError as error:
            log.warning("worker bus read failed: %s", error)
        if self.metrics_server is not None:
            self.metrics_server.publish()  # what the heartbeats just read changed; the scrape thread reads this
        if self._closing:
            return
        loop = asyncio.get_running_loop()
        if any(runtime.lifecycle.state is WorkerState.STARTING for runtime in self.extensions.values()):
            # A starting worker's `ready` is seen the moment it arrives.
            if not self._bus_watched:
                loop.add_reader(bus.FD, self._read_bus)
                self._bus_watched = True
        else:
            # Only heartbeats are expected: read them in batches, a few wake-ups
            # per heartbeat interval instead of one per worker per interval.
            if self._bus_watched:
                loop.remove_reader(bus.FD)
                self._bus_watched = False
            self._bus_timer = loop.call_later(self.config.supervisor.heartbeat_interval / 4, self._read_bus)

    def _on_bus_message(self, raw: bytes) -> None:
        try:
            message = decode_worker_message(raw)
        except MessageError as error:
            log.warning("refused worker bus message: %s", error)
            return
        runtime = self.extensions.get(message.extension)
        if runtime is None:
            return  # from a worker that is gone
        if runtime.pid != message.pid:
            if runtime.predecessor is not None and runtime.predecessor.pid == message.pid:
                runtime.predecessor_heartbeat(message.stats)  # a replaced worker still draining
            return  # else from a worker that is gone or being replaced
        if isinstance(message, Failed):  # the exit 78 that follows is marked fatal with this reason
            runtime.failure_report = message.reason
            return
        now = time.monotonic()
        runtime.stats = message.stats
        runtime.last_heartbeat_wall = time.time()
        try:
            runtime.lifecycle.heartbeat(now)
        except IllegalTransition:
            return  # a late message from a worker already counted as gone
        if isinstance(message, Ready) and runtime.lifecycle.state == WorkerState.STARTING:
            runtime.lifecycle.ready(now)
            runtime.ready_event.set()
            runtime.settle(None)
            took = (now - (runtime.started_at or now)) * 1000
            log.info("worker ready extension=%s pid=%d in %.0f ms", runtime.id, runtime.pid, took,
                     extra={"event": "worker_ready", "extension": runtime.id, "ms": round(took)})
            self._notify_ready_if_all_serving()
            self._wake.set()  # its deadlines changed; a heartbeat only pushes them later

    def send_to_worker(self, runtime: ExtensionRuntime, command: WorkerCommand, identity: bytes | None = None) -> bool:
        """Send to the runtime's worker (or the worker ``identity`` names: a draining predecessor)."""
        identity = identity or runtime.identity
        if identity is None:
            return False
        try:
            self._bus.send_multipart([identity, encode_worker_command(command)], zmq.NOBLOCK)
        except zmq.ZMQError:
            return False
        # A send can consume the FD's edge for messages already queued: look again.
        asyncio.get_running_loop().call_soon(self._read_bus)
        return True

    def forget_extension(self, extension_id: str) -> None:
        """Persist a removal: it must not come back at the next start."""
        self.store.added.pop(extension_id, None)
        if self.config.extension(extension_id) is not None:
            self.store.removed.add(extension_id)
        self.store.save()

    async def reset_extension(self, extension_id: str) -> str:
        """Drop ``extension_id``'s runtime override and apply the file's definition (as last
        loaded) at once: start, replace, remove or leave its worker. Returns what was done."""
        if extension_id not in self.store.overrides():
            raise LookupError(f"extension {extension_id} has no runtime override (its definition is the file's)")
        target = self.config.extension(extension_id)
        runtime = self.extensions.get(extension_id)
        if target is not None and runtime is None:
            clash = {port for other in self.extensions.values() for port in other.config.ports().values()}
            taken = sorted(set(target.ports().values()) & clash)
            if taken:
                raise LookupError(f"the file's extension {extension_id} needs port(s) "
                                  f"{', '.join(map(str, taken))}, used by another extension")
        self.store.reset(extension_id)
        if runtime is None:
            if target is None:
                return "unchanged"
            try:
                self.add_runtime(target, bind_now=True)
            except OSError:  # its port is held by another program: keep the removal, nothing changed
                self.store.removed.add(extension_id)
                self.store.save()
                raise
            return "started"
        async with runtime.lock:
            runtime.source = self.store.source(extension_id)
            if target is None:
                await self.stop_extension(runtime, self.config.supervisor.drain_seconds, remove=True)
                return "removed"
            if runtime.config != target:
                await self.replace_extension(runtime, target)
                return "replaced"
        return "unchanged"

    # -- stopping ---------------------------------------------------------
    async def stop_extension(self, runtime: ExtensionRuntime, drain: float, *, remove: bool) -> None:
        """Drain the worker (it stops accepting, then hangs up after ``drain`` s) and wait for its exit.

        ``remove`` (a removal, the supervisor's stop): the listening sockets close before the drain
        begins and the worker closes its copies on ``Drain`` (``stop_accepting``), so new callers
        are refused at once (SPEC) while the calls in progress go on. Otherwise (a replace) the
        sockets are kept for the next worker: callers wait in the backlog meanwhile.
        """
        if remove:
            self.extensions.pop(runtime.id, None)
            runtime.close_sockets()
        process = runtime.process
        runtime.lifecycle.request_stop(time.monotonic())
        if process is not None and process.exitcode is None:
            if not self.send_to_worker(runtime, Drain(seconds=drain)):
                process.terminate()
            try:
                await asyncio.wait_for(runtime.exited_event.wait(), drain + 5.0)
            except TimeoutError:
                self.kill_worker(runtime, process, f"did not stop within {drain + 5.0:.1f} s of its drain")
                await asyncio.wait_for(runtime.exited_event.wait(), DUMP_BEFORE_KILL + 5.0)
        if (predecessor := runtime.predecessor) is not None:  # already draining since a reload: let it end
            self.send_to_worker(runtime, Drain(seconds=drain), predecessor.identity)  # ignored if it drains
            try:
                await asyncio.wait_for(predecessor.exited.wait(), drain + 5.0)
            except TimeoutError:
                self.kill_worker(runtime, predecessor.process,
                                 f"(replaced) did not stop within {drain + 5.0:.1f} s of its drain")
                await asyncio.wait_for(predecessor.exited.wait(), DUMP_BEFORE_KILL + 5.0)
        self._wake.set()

    async def shutdown(self, drain: float) -> None:
        log.info("supervisor stopping: draining %d extension(s) for up to %.1fs", len(self.extensions), drain)
        systemd.notify(f"STOPPING=1\nSTATUS=stopping: draining {len(self.extensions)} extension(s) for up to {drain:g} s")
        stopping = asyncio.gather(*(self.stop_extension(r, drain, remove=True) for r in list(self.extensions.values())),
                                  *self._background, return_exceptions=True)
        await self._leave_cluster()
        await stopping

    def remove_in_background(self, runtime: ExtensionRuntime, drain: float) -> None:
        """A removal: gone from the table and refusing new calls now; its calls drain in the background."""
        self.extensions.pop(runtime.id, None)
        runtime.close_sockets()
        self.metrics_publish()  # gone from /metrics and /healthz by the time the reply is read
        self._in_background(self._remove(runtime, drain))

    async def _remove(self, runtime: ExtensionRuntime, drain: float) -> None:
        async with runtime.lock:  # a ctl command on this extension finishes first
            await self.stop_extension(runtime, drain, remove=True)

    def _in_background(self, work) -> None:
        """Run ``work`` as a task the supervisor keeps (and awaits at shutdown); a failure is logged."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)

        def done(task: asyncio.Task) -> None:
            self._background.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("background task failed: %s", task.exception(), exc_info=task.exception())

        task.add_done_callback(done)

    # -- reload -------------------------------------------------------------
    async def reload(self, deadline: float | None = None) -> dict[str, list[str]]:
        """Apply the config file's differences as planned by ``plan_reload``: unchanged
        extensions are not touched, live settings (the restart policy) reach every
        extension at once, restart settings keep their running values.

        ``deadline`` (monotonic; ctl reload): answer once every replaced or added worker
        serves or failed, at the latest then (their states say which)."""
        if self.config.path is None:
            raise ConfigError(None, "", "no config file to reload")
        new_config = load_config(self.config.path)
        plan = plan_reload(self.config, new_config, {i: r.config for i, r in self.extensions.items()},
                           self.store.effective if self.cluster is None else (lambda _file: {}), self.store.overrides())
        for level, line in plan.log_lines():
            log.log(level, line)
        old_logging = (self.config.supervisor.log_format, self.config.supervisor.log_level)
        self.config = plan.config
        settings = self.config.supervisor
        if (settings.log_format, settings.log_level) != old_logging:
            configure_logging(settings.log_format, settings.log_level)
        policy, now = restart_policy(self.config), time.monotonic()
        for runtime in self.extensions.values():
            runtime.lifecycle.set_policy(policy, now)
        self._wake.set()  # deadlines may have moved
        # Removals drain in the background (the reply waits only for what must serve): each one
        # closes its listening sockets on its first step, before an addition may bind that port.
        for extension_id in plan.remove:
            if (runtime := self.extensions.get(extension_id)) is not None:
                self.remove_in_background(runtime, settings.drain_seconds)
        await asyncio.sleep(0)
        started: list[ExtensionRuntime] = []
        for extension in plan.replace:  # before the additions: a moved extension frees its old ports
            if (runtime := self.extensions.get(extension.id)) is not None:
                async with runtime.lock:
                    started.append(await self.replace_extension(runtime, extension))
        for extension in plan.add:
            if extension.id not in self.extensions:
                started.append(self.add_runtime(extension))
        outcomes = [r.outcome for r in started if r.outcome is not None and not r.outcome.done()]
        if deadline is not None and outcomes:
            await asyncio.wait(outcomes, timeout=max(0.0, deadline - time.monotonic()))
        result = plan.result()
        done = {key: value for key, value in result.items() if value and key != "unchanged"}
        text = " ".join(f"{key}={','.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"
                        for key, value in done.items())
        log.info("reload done: %s", text or "nothing changed", extra={"event": "reload_done", "changes": done})
        return result

    async def replace_extension(self, runtime: ExtensionRuntime, extension: ExtensionConfig,
                                drain: float | None = None) -> ExtensionRuntime:
        """Stop the worker (draining ``drain`` s, default drain_seconds) and start it with ``extension``.

        New ports are bound by the new start: one that cannot be bound leaves the
        extension ``failed`` and retried, like at start-up.
        """
        ports_changed = runtime.config.ports() != extension.ports()
        drain = self.config.supervisor.drain_seconds if drain is None else drain
        if (drain > 0 and not ports_changed and runtime.sockets and runtime.predecessor is None
                and runtime.lifecycle.state == WorkerState.RUNNING and runtime.process is not None):
            self._hand_over(runtime, drain)
        else:
            await self.stop_extension(runtime, drain, remove=False)
            if ports_changed or not runtime.sockets:
                runtime.close_sockets()  # empty: the start binds (again)
        runtime.config = extension
        runtime.expect_outcome()
        self._act(runtime, runtime.lifecycle.start(time.monotonic()))
        return runtime

    def _hand_over(self, runtime: ExtensionRuntime, drain: float) -> None:
        """No dead air: the running worker drains apart (it stops accepting at once, its calls go on
        up to ``drain`` s) while the caller starts the new one on the same listening sockets."""
        predecessor = runtime.hand_over()
        runtime.lifecycle.handed_over(time.monotonic())
        if not self.send_to_worker(runtime, Drain(seconds=drain), predecessor.identity):
            predecessor.process.terminate()  # SIGTERM drains as well
        asyncio.get_running_loop().call_later(drain + 5.0, self._kill_predecessor, runtime, predecessor)
        log.info("worker handover extension=%s pid=%d drains its calls for up to %.1fs; a new worker takes "
                 "new calls", runtime.id, predecessor.pid, drain)

    def _kill_predecessor(self, runtime: ExtensionRuntime, predecessor) -> None:
        if runtime.predecessor is predecessor and predecessor.process.exitcode is None:
            self.kill_worker(runtime, predecessor.process, "(replaced) did not end its drain in time")

    # -- [cluster] mode (supervisor/cluster_wiring.py) --------------------------------
    def _start_cluster(self) -> bool:
        """With ``[cluster] etcd``: join the cluster (in the background) and serve what placement gives
        this node; the file's and the state file's extensions are not served (named in a warning)."""
        if self.config.cluster.etcd is None:
            return False
        from audiogw.supervisor.cluster_wiring import ClusterServing, no_http_warning, not_served_warning

        for warning in (not_served_warning(self), no_http_warning(self)):
            if warning is not None:
                log.warning(warning)
        self.cluster = ClusterServing(self)
        if self.metrics_server is not None:
            from audiogw.supervisor.routes import cluster_routes

            self.metrics_server.add_routes(cluster_routes(self.cluster))
        self.cluster.start()
        return True

    async def _leave_cluster(self) -> None:
        """After every listener closed (the stop's first step), revoke the lease: the standbys take over
        now, while this node's calls in progress drain."""
        if self.cluster is not None:
            await asyncio.sleep(0)
            await self.cluster.stop()

    def metrics_publish(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.publish()

    # -- readiness ------------------------------------------------------------
    def all_serving(self) -> bool:
        return all(r.lifecycle.state == WorkerState.RUNNING for r in self.extensions.values())

    def start_settled(self) -> bool:
        """Every extension's first start has an outcome: it serves, or it failed (busy port, exit,
        start timeout). One that cannot serve does not hold readiness back (SPEC)."""
        return all(r.outcome is None or r.outcome.done() for r in self.extensions.values())

    def _notify_ready_if_all_serving(self) -> None:
        """READY=1 once the start has settled; STATUS= then and whenever what serves changes."""
        if self.stopping or not self._started:
            return  # before run() has added every extension, the first ready one is not "all"
        if not self._ready_sent and not self.start_settled():
            return
        status = systemd.status_line({r.id: (r.state, r.reason or "") for r in self.extensions.values()})
        if not self._ready_sent:
            self._ready_sent = True
            systemd.notify(f"READY=1\nSTATUS={status}")
            log.info("supervisor ready: %s", status)
        elif status != self._status_sent:
            systemd.notify(f"STATUS={status}")
        self._status_sent = status

    _ready_sent = False
    _started = False  # run() has added every extension of the file and the state file
    stop_signalled = False  # SIGTERM/SIGINT arrived (set in the handler, before the queue is read)
    _status_sent = ""
    _closing = False

    # -- main ------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._on_signal, signum)
        from audiogw.supervisor.control import ControlServer

        from audiogw.supervisor.metrics import MetricsServer

        control = self.control = ControlServer(self, self._zmq)
        from audiogw.supervisor.calls import CallControl, ami_client_for

        self.calls = CallControl(self, self._zmq, self.calls_endpoint, ami_client_for(self.config))
        self.calls.start()
        self.metrics_server = MetricsServer(self)
        self.metrics_server.start()
        for extension in (self.store.effective(self.config.extensions).values() if not self._start_cluster() else ()):
            try:
                self.add_runtime(extension)
            except OSError as error:
                log.error("extension %s not started: %s", extension.id, error)
        self._started = True
        self.metrics_publish()  # /healthz: no longer "starting"
        self._read_bus()
        tasks = [
            loop.create_task(self._timers(), name="timers"),
            loop.create_task(control.serve(), name="control"),
            loop.create_task(self._signals(), name="signals"),
        ]
        watchdog = systemd.watchdog_interval()
        if watchdog:
            tasks.append(loop.create_task(self._watchdog(watchdog), name="watchdog"))
        self._notify_ready_if_all_serving()  # nothing to wait for when no extension can start
        log.info("supervisor started pid=%d control=%s extensions=%d", os.getpid(),
                 self.config.supervisor.control, len(self.extensions))
        await self.stop_requested.wait()
        await self.shutdown(self.stop_drain)
        self._closing = True  # wait_for() in 3.11 can swallow a cancel that races a wake-up
        self._wake.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        control.close()
        await self.calls.close()
        self.metrics_server.close()
        if self._bus_watched:
            loop.remove_reader(self._bus.FD)
        if self._bus_timer is not None:
            self._bus_timer.cancel()
        self._bus.close(linger=0)
        self._zmq.term()
        log.info("supervisor stopped")
        return 0

    def _on_signal(self, signum: int) -> None:
        """Only enqueue, but know at once that a stop is coming: with KillMode=control-group the
        workers got the same SIGTERM and may exit before the queue is read; none is restarted."""
        if signum != signal.SIGHUP:
            self.stop_signalled = True
            now = time.monotonic()
            for runtime in self.extensions.values():  # an exit from now on is the stop's, never a crash
                runtime.lifecycle.request_stop(now)
        self.signals.put_nowait(signum)

    async def _signals(self) -> None:
        while True:
            signum = await self.signals.get()
            if signum == signal.SIGHUP:
                log.info("SIGHUP: reloading %s", self.config.path)
                try:
                    await self.reload()
                except ConfigError as error:
                    log.error("reload refused: %s", error)
            else:
                log.info("%s: graceful stop", signal.Signals(signum).name)
                self.request_stop(self.config.supervisor.drain_seconds)

    @property
    def stopping(self) -> bool:
        """A stop is under way (a signal or a ctl stop): no worker is started or restarted any more."""
        return self.stop_signalled or self.stop_requested.is_set()

    def request_stop(self, drain: float) -> None:
        self.stop_drain = drain
        self.stop_requested.set()

    async def _watchdog(self, interval: float) -> None:
        while True:
            systemd.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

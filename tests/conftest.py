"""Shared fixtures: real worker and supervisor processes on free 127.0.0.1 ports."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from audiogw.shared.records import LegRecord, WorkerReady, read_leg_records, read_ready


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class WorkerProcess:
    process: subprocess.Popen
    log_path: Path
    ia_port: int
    retorno_port: int
    records_path: Path
    ready: WorkerReady  # what the worker wrote to its --ready-file

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def leg_records(self) -> list[LegRecord]:
        """The legs that ended so far, as the worker recorded them (--leg-records)."""
        return read_leg_records(self.records_path)

    def wait_legs(self, count: int = 1, timeout: float = 5.0, **fields) -> list[LegRecord]:
        """At least ``count`` leg records whose attributes equal ``fields`` (e.g. leg="ia")."""
        def matching() -> list[LegRecord] | None:
            found = [record for record in self.leg_records()
                     if all(getattr(record, name) == value for name, value in fields.items())]
            return found if len(found) >= count else None

        return wait_for(matching, timeout, what=f"{count} leg record(s) with {fields}")

    def wait_log(self, *texts: str, timeout: float = 5.0) -> str:
        """The log once it holds every one of ``texts`` (a worker writes its log from a thread)."""
        def complete() -> str | None:
            log = self.log()
            return log if all(text in log for text in texts) else None

        return wait_for(complete, timeout, what=f"worker log lines {texts}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def start_worker(tmp_path):
    started: list[WorkerProcess] = []

    def start(app: str = "echo", *options: str, extension: str = "1201", allow: str | None = None,
              args: tuple[str, ...] = ()) -> WorkerProcess:
        name = f"worker-{extension}-{len(started)}"
        log_path = tmp_path / f"{name}.log"
        ready_path = tmp_path / f"{name}.ready.json"
        records_path = tmp_path / f"{name}.legs.jsonl"
        command = [sys.executable, "-m", "audiogw.worker", "--extension", extension,
                   "--ia-port", "0", "--retorno-port", "0", "--app", app,
                   "--ready-file", str(ready_path), "--leg-records", str(records_path)]
        for option in options:
            command += ["--option", option]
        if allow:
            command += ["--allow", allow]
        command += list(args)
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(command, stdout=log_file, stderr=log_file, cwd=tmp_path)

        def ready():
            if process.poll() is not None:
                raise AssertionError(f"worker exited with {process.returncode}:\n{log_path.read_text()}")
            return read_ready(ready_path)

        found = wait_for(ready, 15, what="worker to serve both legs")
        worker = WorkerProcess(process, log_path, found.ports["ia"], found.ports["retorno"], records_path, found)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def raw_connect(port: int, *, send_uuid: bool = True, call_uuid: uuid.UUID | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if send_uuid:
        sock.sendall(b"\x01\x00\x10" + (call_uuid or uuid.uuid4()).bytes)
    return sock


def hang_up(sock: socket.socket) -> None:
    """Hang up with nothing left unread: half-close, read until the worker closes, then close.

    Closing with the worker's frames unread makes the kernel send a reset, and the
    leg then rightly ends as ``connection_lost``, not ``peer_closed``. (Asterisk
    reads every frame as it comes, so its close at a call's end meets an empty buffer.)
    """
    sock.shutdown(socket.SHUT_WR)
    closed = peer_closed(sock)
    sock.close()
    assert closed, "the worker did not close the leg after the caller's half-close"


def read_frames(sock: socket.socket, seconds: float) -> list[tuple[int, bytes]]:
    """Read whole frames for ``seconds`` (or until the peer closes)."""
    from audiogw.shared.audiosocket import Kind

    sock.settimeout(0.05)
    deadline = time.monotonic() + seconds
    buffer = bytearray()
    frames = []
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not data:
            break
        buffer += data
        while len(buffer) >= 3:
            length = int.from_bytes(buffer[1:3], "big")
            if len(buffer) < 3 + length:
                break
            frames.append((buffer[0], bytes(buffer[3 : 3 + length])))
            del buffer[: 3 + length]
        if frames and frames[-1][0] == Kind.HANGUP:
            break
    return frames


def peer_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True once the peer has closed (EOF or reset), draining whatever it still sends."""
    sock.settimeout(0.1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


def realtime_allowed(priority: int = 10) -> bool:
    """Whether this test process may put a child under SCHED_RR (root, CAP_SYS_NICE or RLIMIT_RTPRIO)."""
    child = subprocess.Popen(["sleep", "30"])
    try:
        os.sched_setscheduler(child.pid, os.SCHED_RR, os.sched_param(priority))
        return True
    except PermissionError:
        return False
    finally:
        child.kill()
        child.wait()


def assert_clock_kept(result) -> None:
    """The gateway's clock kept running through the call: a test's check, not a speed target.

    A stalled loop (a blocking call, a starved ticker) shows as a long silence or
    as many gaps. One interval slightly over 40 ms is what a busy shared host
    can do to any process, the test client included; the benchmarks measure
    pacing, with kernel timestamps, many calls and reported client lag.
    """
    pacing = result.pacing()
    assert pacing.max_gap_ms < 100.0 and pacing.gaps_over_40ms <= 1, pacing

from asterisk_fixture import asterisk_binary, phone, private_asterisk  # noqa: E402,F401  (tests through a real Asterisk)

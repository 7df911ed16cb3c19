"""Live audio against a real worker: how soon a call hears its first frame, and how fast an echo's
delay comes back after the worker stalls.

    python -m audiogw.bench.live [--stalls 5] [--stall-ms 500] [--connects 20]

- first frame: a standalone worker with ``rate=16000`` (a known rate) and one with ``auto``;
  ``--connects`` calls each write their UUID and time the first frame that comes back (the
  ticker's period is 20 ms, so "within one tick" means under 20 ms plus scheduling).
- stall: one echo call, every frame carrying its own sequence number; the benchmark freezes
  the worker (SIGSTOP) for ``--stall-ms`` once per round while the caller keeps talking in real
  time, and reports, for each round, the echo delay before the stall, its peak, and how long
  after the resume what the caller hears is back within ``audiosocket.max_latency_ms`` + 60 ms
  for good (by arrival time), and how much audio the cut dropped.
"""
from __future__ import annotations

import os
import signal
import socket
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import click

from audiogw.bench.worker import BenchError, Worker, start_worker
from audiogw.shared.audiosocket import encode_audio, frame_bytes
from audiogw.shared.config import AudioSocketSettings

MARGIN = 0.060  # the target's allowance over max_latency_ms


def _start_worker(folder: str, *options: str) -> Worker:
    """A standalone echo worker on free ports, in a folder of its own (bench/worker.py's)."""
    workdir = Path(tempfile.mkdtemp(prefix="worker-", dir=folder))
    try:
        return start_worker("echo", workdir, options=options)
    except BenchError as error:
        raise click.ClickException(str(error)) from None


def first_frame_ms(port: int, connects: int) -> list[float]:
    """Milliseconds from the UUID written to the first frame's header read, per call."""
    delays = []
    for _ in range(connects):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            frame = b"\x01\x00\x10" + uuid.uuid4().bytes
            written = time.monotonic()  # before the write: a real-time worker may answer before it returns
            sock.sendall(frame)
            sock.recv(3, socket.MSG_WAITALL)
            delays.append((time.monotonic() - written) * 1000)
            sock.sendall(b"\x00\x00\x00")
        time.sleep(0.05)
    return delays


def stall_round(pid: int, port: int, stall: float, seconds: float = 4.0, stall_at: float = 1.0) -> dict:
    """One echo call; the worker frozen for ``stall`` s at ``stall_at``; delays by send time."""
    size = frame_bytes(8000)
    sent: dict[int, float] = {}
    delays: list[tuple[float, float]] = []  # (arrival from the start, echo delay): what the caller hears when
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"\x01\x00\x10" + uuid.uuid4().bytes)
    start = time.monotonic()
    frames = int(seconds / 0.02)

    def talk() -> None:
        for index in range(1, frames + 1):
            time.sleep(max(0.0, start + index * 0.02 - time.monotonic()))
            sent[index] = time.monotonic()
            sock.sendall(encode_audio(index.to_bytes(2, "little") * (size // 2)))

    def freeze() -> None:
        time.sleep(max(0.0, start + stall_at - time.monotonic()))
        os.kill(pid, signal.SIGSTOP)
        time.sleep(stall)
        os.kill(pid, signal.SIGCONT)

    talker = threading.Thread(target=talk, daemon=True)
    freezer = threading.Thread(target=freeze, daemon=True)
    talker.start()
    freezer.start()
    buffer = bytearray()
    seen: set[int] = set()
    sock.settimeout(0.1)
    while time.monotonic() < start + seconds + 0.5:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        if not data:
            break
        now = time.monotonic()
        buffer += data
        while len(buffer) >= 3 and len(buffer) >= 3 + int.from_bytes(buffer[1:3], "big"):
            length = int.from_bytes(buffer[1:3], "big")
            marker = int.from_bytes(buffer[3:5], "little") if length >= 2 else 0
            del buffer[: 3 + length]
            if marker and marker in sent and marker not in seen:
                seen.add(marker)
                delays.append((now - start, now - sent[marker]))
    talker.join()
    freezer.join()
    sock.sendall(b"\x00\x00\x00")
    sock.close()
    resume = stall_at + stall
    before = [delay for at, delay in delays if at < stall_at - 0.1]
    heard = {marker for marker in seen}
    lost = sum(1 for marker in sent if marker not in heard and sent[marker] - start < seconds - 0.2)
    return {"before_ms": statistics.median(before) * 1000 if before else None,
            "peak_ms": max(delay for _, delay in delays) * 1000 if delays else None,
            "delays": delays, "resume": resume, "cut_ms": lost * 20}


def settled_after(delays: list[tuple[float, float]], resume: float, bound: float) -> float | None:
    """Seconds after ``resume`` from which every frame the caller hears has a delay within ``bound``."""
    late = [at for at, delay in delays if at >= resume - 1.0 and delay > bound]
    if not late:
        return 0.0
    last = max(late)
    return max(0.0, last - resume + 0.02) if any(at > last for at, _ in delays) else None


@click.command()
@click.option("--stalls", type=click.IntRange(1, 50), default=5, show_default=True)
@click.option("--stall-ms", type=click.IntRange(20, 5000), default=500, show_default=True)
@click.option("--connects", type=click.IntRange(1, 500), default=20, show_default=True)
def main(stalls: int, stall_ms: int, connects: int) -> None:
    """First frame after the connect, and the echo delay after a worker stall (one worker each)."""
    max_latency = AudioSocketSettings().max_latency_ms / 1000
    bound = max_latency + MARGIN
    with tempfile.TemporaryDirectory(prefix="audiogw-bench-live-") as folder:
        for label, options in (("rate=16000", ("rate=16000",)), ("rate=auto, caller silent", ())):
            worker = _start_worker(folder, *options)
            try:
                delays = sorted(first_frame_ms(worker.ports["ia"], connects))
            finally:
                worker.stop()
            click.echo(f"first frame after the UUID, {label}: p50 {statistics.median(delays):.1f} ms, "
                       f"max {delays[-1]:.1f} ms ({len(delays)} calls; one tick is 20 ms)")
        worker = _start_worker(folder)
        try:
            settled = []
            for round_index in range(stalls):
                result = stall_round(worker.process.pid, worker.ports["ia"], stall_ms / 1000)
                after = settled_after(result["delays"], result["resume"], bound)
                settled.append(after)
                click.echo(f"stall {round_index + 1}: echo delay before {result['before_ms']:.0f} ms, peak "
                           f"{result['peak_ms']:.0f} ms; heard within {bound * 1000:.0f} ms for good "
                           + (f"{after:.2f} s after the resume" if after is not None else "never")
                           + f"; {result['cut_ms']} ms of audio cut to get there")
        finally:
            worker.stop()
    known = [value for value in settled if value is not None]
    verdict = len(known) == len(settled) and max(known) <= 1.0
    click.echo(f"after a {stall_ms} ms stall the echo delay is back within max_latency_ms + 60 ms: "
               f"max {max(known):.2f} s after the resume over {len(settled)} stalls (target <= 1 s): "
               + ("PASS" if verdict else "FAIL") if known else "never: FAIL")


if __name__ == "__main__":
    main()

"""A real worker under the inputs the clock must survive, and the rates Asterisk uses."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import wave

import numpy

from audiogw.shared.audiosocket import Kind, encode_audio, encode_dtmf
from conftest import raw_connect, read_frames, wait_for


def _write_prompt(path, seconds: float, rate: int = 8000) -> numpy.ndarray:
    """A prompt with a distinct value in every 20 ms frame, so what was heard can be counted."""
    frames = int(seconds * 50)
    per_frame = rate // 50
    samples = numpy.repeat(numpy.arange(1, frames + 1, dtype=numpy.int16) * 100, per_frame)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.astype("<i2").tobytes())
    return samples


def _talk(sock: socket.socket, kind: int, frame_bytes: int, seconds: float, stop: threading.Event) -> None:
    frame = bytes([kind]) + frame_bytes.to_bytes(2, "big") + b"\x00\x00" * (frame_bytes // 2)
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    while time.monotonic() < deadline and not stop.is_set():
        try:
            sock.sendall(frame)
        except OSError:
            return
        next_at += 0.02
        time.sleep(max(0.0, next_at - time.monotonic()))


def test_silent_start_at_16k_hears_the_whole_prompt(start_worker, tmp_path):
    """The caller says nothing for 0.3 s, then talks at 16 kHz: what was queued at 8 kHz is converted, not lost."""
    path = tmp_path / "prompt.wav"
    _write_prompt(path, 1.5, 8000)
    worker = start_worker("playback", f"file={path}")
    sock = raw_connect(worker.ia_port)
    early = read_frames(sock, 0.3)
    assert early and {kind for kind, _ in early} == {Kind.SLIN_8K}, "audio starts at once, at 8 kHz"
    stop = threading.Event()
    talker = threading.Thread(target=_talk, args=(sock, Kind.SLIN_16K, 640, 2.5, stop), daemon=True)
    talker.start()
    later = read_frames(sock, 2.0)
    stop.set()
    talker.join()
    assert {kind for kind, _ in later} == {Kind.SLIN_16K}, "answers at the caller's rate once it is known"
    levels = set()
    for kind, payload in early + later:
        samples = numpy.frombuffer(payload, dtype="<i2")
        middle = samples[len(samples) // 4 : 3 * len(samples) // 4]
        levels.update(int(round(value / 100)) for value in middle if value)
    assert set(range(1, 76)) <= levels, f"every one of the prompt's 75 frames is heard; missing {sorted(set(range(1, 76)) - levels)}"
    sock.close()


def test_a_known_rate_sends_its_first_frame_on_the_first_tick(start_worker, tmp_path):
    """rate=16000: 16 kHz from the first tick (no guess from inbound audio); the prompt starts
    once the caller's first frame shows the call is up, or after the short grace."""
    path = tmp_path / "prompt.wav"
    _write_prompt(path, 0.5, 16000)
    worker = start_worker("playback", f"file={path}", "rate=16000")
    sock = socket.create_connection(("127.0.0.1", worker.ia_port), timeout=5)
    sock.sendall(b"\x01\x00\x10" + uuid.uuid4().bytes)
    sent_at = time.monotonic()
    sock.settimeout(2)
    header = sock.recv(3, socket.MSG_WAITALL)
    first_after = time.monotonic() - sent_at
    assert header[0] == Kind.SLIN_16K and int.from_bytes(header[1:3], "big") == 640
    assert first_after < 0.5, first_after  # behaviour (no 200 ms guess); the tick figure is in the benchmark
    sock.recv(640, socket.MSG_WAITALL)
    firsts = []
    for _ in range(6):  # the grace (60 ms) is three ticks; the prompt's first frame follows
        sock.recv(3, socket.MSG_WAITALL)
        firsts.append(int(numpy.frombuffer(sock.recv(640, socket.MSG_WAITALL), dtype="<i2")[160]))
    assert 100 in firsts[:4], f"the prompt's first frame within the grace: {firsts}"
    assert firsts[firsts.index(100):firsts.index(100) + 2] == [100, 200], firsts
    sock.close()


def test_bad_rate_option_is_refused_at_start(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "audiogw.worker", "--extension", "1201", "--ia-port", "0", "--retorno-port", "0",
         "--app", "echo", "--option", "rate=11025", "--realtime-priority", "0"],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert result.returncode == 78
    assert "option rate must be" in result.stderr and "16000" in result.stderr


def test_echo_delay_after_a_stall_comes_back_to_the_bound(start_worker):
    """A 500 ms freeze of the worker queues 25 frames of echo; they must not stay as delay."""
    worker = start_worker("echo", args=("--realtime-priority", "0"))
    sock = raw_connect(worker.ia_port)
    sent: dict[int, float] = {}
    received: dict[int, float] = {}
    start = time.monotonic()

    def send() -> None:  # the caller keeps talking in real time, marking every 10th frame
        for index in range(200):
            value = index + 1 if index % 10 == 0 else 0
            at = start + index * 0.02
            time.sleep(max(0.0, at - time.monotonic()))
            if value:
                sent[value] = time.monotonic()
            sock.sendall(encode_audio(int(value).to_bytes(2, "little", signed=True) * 160))

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    threading.Timer(1.0, lambda: (os.kill(worker.process.pid, signal.SIGSTOP), time.sleep(0.5),
                                  os.kill(worker.process.pid, signal.SIGCONT))).start()
    sock.settimeout(0.05)
    buffer = bytearray()
    while time.monotonic() - start < 4.3:
        try:
            buffer += sock.recv(65536)
        except socket.timeout:
            continue
        while len(buffer) >= 3 and len(buffer) >= 3 + int.from_bytes(buffer[1:3], "big"):
            length = int.from_bytes(buffer[1:3], "big")
            payload = bytes(buffer[3 : 3 + length])
            del buffer[: 3 + length]
            marker = int.from_bytes(payload[:2], "little", signed=True) if payload else 0
            if marker and marker not in received:
                received[marker] = time.monotonic()
    sender.join()
    sock.sendall(b"\x00\x00\x00")
    late = [received[m] - sent[m] for m in sorted(received) if sent[m] - start > 3.0]
    assert late, "markers after the stall came back"
    assert max(late) < 0.3, f"echo delay 2 s after the stall: {max(late) * 1000:.0f} ms"
    [record] = worker.wait_legs()
    assert record.dropped["latency"] >= 10, "the standing delay was cut, counted"


def test_flooding_leg_is_held_to_real_time_and_its_neighbour_keeps_pacing(start_worker):
    worker = start_worker("echo")
    neighbour = raw_connect(worker.retorno_port)
    flooder = raw_connect(worker.ia_port)
    stop = threading.Event()

    def flood() -> None:
        burst = encode_audio(b"\x01\x00" * 160) * 200 + encode_dtmf("5") * 2000
        try:
            while not stop.is_set():
                flooder.sendall(burst)
        except OSError:
            pass

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    neighbour.settimeout(0.2)
    arrivals = []
    buffer = bytearray()
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            data = neighbour.recv(65536)
        except socket.timeout:
            continue
        if not data:
            break
        buffer += data
        while len(buffer) >= 3 and len(buffer) >= 3 + int.from_bytes(buffer[1:3], "big"):
            del buffer[: 3 + int.from_bytes(buffer[1:3], "big")]
            arrivals.append(time.monotonic())
    stop.set()
    flooder.close()
    thread.join(5)
    gaps = numpy.diff(arrivals)
    assert len(arrivals) >= 80, len(arrivals)
    assert gaps.max() < 0.1, f"the neighbour's largest gap under the flood: {gaps.max() * 1000:.0f} ms"
    neighbour.sendall(b"\x00\x00\x00")
    worker.wait_legs(2)
    [flooder_record] = worker.wait_legs(leg="ia")
    assert flooder_record.dropped["inbound_flood"] > 1000
    assert worker.process.poll() is None


def test_a_frame_whose_payload_never_comes_ends_the_leg(start_worker):
    worker = start_worker("echo")
    sock = raw_connect(worker.ia_port)
    sock.sendall(b"\x10\x01\x40" + b"\x00" * 10)  # a 320-byte frame's header and 10 bytes of it
    started = time.monotonic()
    wait_for(lambda: "reason=partial_frame_timeout" in worker.log(), timeout=6, what="partial frame timeout")
    assert 1.9 <= time.monotonic() - started <= 5.0
    sock.close()


def test_the_kernel_reports_the_configured_backlog(start_worker):
    worker = start_worker("echo")
    output = subprocess.run(["ss", "-Hltn", f"sport = :{worker.ia_port}"], capture_output=True, text=True).stdout
    send_q = int(output.split()[2])
    somaxconn = int(open("/proc/sys/net/core/somaxconn").read())
    assert send_q == min(512, somaxconn), output

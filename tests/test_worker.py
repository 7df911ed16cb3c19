"""A real worker process on real sockets: echo, bad input, isolation of legs."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid

import numpy

from audiogw.shared.audiosocket import Kind, encode_audio, encode_dtmf
from conftest import hang_up, peer_closed, raw_connect, read_frames, wait_for


def _tone_frames(count: int) -> list[bytes]:
    samples = (numpy.sin(numpy.arange(count * 160) * 2 * numpy.pi * 440 / 8000) * 8000).astype("<i2")
    return [samples[i * 160 : (i + 1) * 160].tobytes() for i in range(count)]


def test_echo_returns_the_callers_audio_paced(start_worker):
    worker = start_worker("echo")
    sock = raw_connect(worker.ia_port)
    payloads = _tone_frames(25)
    for payload in payloads:
        sock.sendall(encode_audio(payload))
        time.sleep(0.02)
    frames = read_frames(sock, 0.5)
    audio = [payload for kind, payload in frames if kind == Kind.SLIN_8K]
    assert all(kind == Kind.SLIN_8K for kind, _ in frames), "only audio frames are sent to Asterisk"
    assert all(len(payload) == 320 for payload in audio)
    echoed = b"".join(p for p in audio if any(p))
    assert echoed == b"".join(payloads), "every frame comes back once, in order"
    hang_up(sock)
    [record] = worker.wait_legs(extension="1201", leg="ia")
    assert record.frames_received == 25 and record.reason == "peer_closed"
    assert record.frames_sent > 0 and record.dropped == {"inbound_flood": 0, "latency": 0}
    assert "leg end extension=1201 leg=ia" in worker.log()  # the operator's line is still there


def test_the_ready_file_names_the_worker_and_the_port_each_leg_serves(start_worker):
    worker = start_worker("echo", extension="1207")
    assert (worker.ready.extension, worker.ready.pid, worker.ready.app) == ("1207", worker.process.pid, "echo")
    assert set(worker.ready.ports) == {"ia", "retorno"} and worker.ia_port != worker.retorno_port
    calls = [raw_connect(port) for port in worker.ready.ports.values()]
    assert all(len(read_frames(sock, 0.2)) > 0 for sock in calls), "each port serves"
    assert worker.leg_records() == [], "no leg has ended yet"
    for sock in calls:
        sock.close()
    assert {record.leg for record in worker.wait_legs(2)} == {"ia", "retorno"}


def test_a_records_path_the_worker_cannot_write_stops_it_at_start(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "audiogw.worker", "--extension", "1201", "--ia-port", "0", "--retorno-port", "0",
         "--leg-records", str(tmp_path / "missing" / "legs.jsonl")], capture_output=True, text=True, timeout=30)
    assert completed.returncode == 1
    assert f"cannot write {tmp_path / 'missing' / 'legs.jsonl'}: No such file or directory" in completed.stderr


def test_silence_keeps_an_idle_leg_alive(start_worker):
    worker = start_worker("echo")
    sock = raw_connect(worker.retorno_port)
    frames = read_frames(sock, 0.5)
    assert len(frames) >= 15, "silence frames flow while the caller says nothing"
    assert {kind for kind, _ in frames} == {Kind.SLIN_8K}
    assert all(payload == bytes(320) for _, payload in frames)


def test_hangup_frame_ends_the_leg_cleanly(start_worker):
    worker = start_worker("echo")
    sock = raw_connect(worker.ia_port)
    sock.sendall(encode_dtmf("7") + b"\x00\x00\x00")
    assert peer_closed(sock)
    [record] = worker.wait_legs(reason="peer_hangup")
    assert record.dtmf == "7"


def test_bridge_joins_legs_with_the_same_uuid(start_worker):
    worker = start_worker("bridge")
    call = uuid.uuid4()
    visitor = raw_connect(worker.ia_port, call_uuid=call)
    resident = raw_connect(worker.retorno_port, call_uuid=call)
    time.sleep(0.3)  # both legs paired
    payloads = _tone_frames(10)
    for payload in payloads:
        visitor.sendall(encode_audio(payload))
        time.sleep(0.02)
    heard = b"".join(p for kind, p in read_frames(resident, 0.6) if kind == Kind.SLIN_8K and any(p))
    assert heard == b"".join(payloads)
    # A stranger with another UUID hears only silence.
    stranger = raw_connect(worker.retorno_port)
    visitor.sendall(encode_audio(payloads[0]))
    assert all(not any(p) for _, p in read_frames(stranger, 0.3))


def _refused(worker, sock, reason: str) -> None:
    assert peer_closed(sock), f"leg with {reason} is closed"
    wait_for(lambda: f"reason={reason}" in worker.log(), what=f"log line with reason={reason}")


def test_bad_input_closes_only_that_leg(start_worker):
    worker = start_worker("echo")
    healthy = raw_connect(worker.ia_port)
    cases = [
        (b"\x42\x00\x00", "unknown_kind"),
        (b"\x10\xff\xff", "oversized"),
        (b"\x10\x00\x03abc", "odd_payload"),
        (b"\x10\x00\x00", "empty_audio"),
        (bytes(range(7, 200)), "unknown_kind"),
    ]
    for wire, reason in cases:
        sock = raw_connect(worker.ia_port)
        sock.sendall(wire)
        _refused(worker, sock, reason)
    # Audio before any UUID frame.
    sock = raw_connect(worker.ia_port, send_uuid=False)
    sock.sendall(encode_audio(bytes(320)))
    _refused(worker, sock, "no_uuid")
    # The healthy leg still gets its frames, and the worker still accepts calls.
    assert len(read_frames(healthy, 0.3)) >= 10
    again = raw_connect(worker.retorno_port)
    assert len(read_frames(again, 0.3)) >= 10
    assert worker.process.poll() is None


def test_connection_without_uuid_is_closed_after_the_timeout(start_worker, monkeypatch):
    worker = start_worker("echo")
    sock = raw_connect(worker.ia_port, send_uuid=False)
    assert peer_closed(sock, timeout=8.0)
    worker.wait_log("reason=uuid_timeout")


def test_peer_outside_allow_is_refused(start_worker):
    worker = start_worker("echo", allow="10.0.0.0/8")
    sock = raw_connect(worker.ia_port)
    _refused(worker, sock, "peer_not_allowed")


def test_client_that_stops_reading_is_closed_with_bounded_memory(start_worker):
    worker = start_worker("echo")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", worker.ia_port))
    sock.sendall(b"\x01\x00\x10" + uuid.uuid4().bytes)
    # Never read: the kernel buffers fill, then the worker's write buffer passes its limit.
    wait_for(lambda: "reason=slow_reader" in worker.log(), timeout=60, interval=0.2, what="slow_reader")
    assert worker.process.poll() is None


def test_flood_faster_than_real_time_is_bounded_and_counted(start_worker):
    worker = start_worker("echo")
    sock = raw_connect(worker.ia_port)
    frame = encode_audio(b"\x01\x00" * 160)
    sock.sendall(frame * 2000)  # 40 s of audio in one burst
    frames = read_frames(sock, 0.5)
    assert 10 <= len(frames) <= 40, "the flood is not echoed faster than real time"
    sock.sendall(b"\x00\x00\x00")
    [record] = worker.wait_legs(reason="peer_hangup")
    assert record.frames_received == 2000
    assert record.dropped["inbound_flood"] > 0, "the flood beyond real time is dropped and counted per leg"
    assert worker.process.poll() is None


def test_playback_plays_a_16k_stereo_wav_resampled_and_paced(start_worker, tmp_path):
    from audiogw.shared.wav import read_wav, tone

    # A 16 kHz stereo file: the worker converts it (soxr) to the leg's 8 kHz.
    mono = tone(500, 0.4, rate=16000)
    stereo = numpy.repeat(mono[:, None], 2, axis=1)
    path = tmp_path / "prompt.wav"
    import wave

    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(stereo.astype("<i2").tobytes())
    worker = start_worker("playback", f"file={path}")
    sock = raw_connect(worker.ia_port)
    frames = read_frames(sock, 1.0)
    assert {kind for kind, _ in frames} == {Kind.SLIN_8K}
    heard = b"".join(p for _, p in frames)
    expected = read_wav(str(path), 8000).astype("<i2").tobytes()
    start = heard.find(expected[:320])
    assert start >= 0, "the converted prompt is played"
    assert heard[start : start + len(expected)] == expected
    sock.close()
    [record] = worker.wait_legs(leg="ia")
    assert record.underruns == 0, "the silence after a finished prompt is not an underrun"

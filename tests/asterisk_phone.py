"""A fake phone for the Asterisk tests: an AudioSocket *server* that a real Asterisk dials.

Asterisk has no SIP here, so a call is a Local channel: one half runs
``AudioSocket()`` (or ``Dial(AudioSocket/...)``) to this phone, the other half
reaches audiogw. Asterisk relays the audio between the two. The phone records
every frame it receives with its arrival time, and sends a script of audio,
paced on absolute 20 ms deadlines (Asterisk paces nothing), one whole frame per
write (Asterisk kills a call whose payload lags its header).
"""
from __future__ import annotations

import socket
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy

from audiogw.shared.audiosocket import FRAME_PERIOD
KIND_FOR_RATE = {8000: 0x10, 12000: 0x11, 16000: 0x12, 24000: 0x13, 32000: 0x14, 48000: 0x16}
RATE_FOR_KIND = {kind: rate for rate, kind in KIND_FOR_RATE.items()}
UUID_KIND, DTMF_KIND, HANGUP_KIND = 0x01, 0x03, 0x00


@dataclass
class Script:
    """What the phone does on one call.

    ``silent_for`` seconds with nothing sent at all, then ``audio`` (int16 at
    ``rate``) and silence frames after it, until ``seconds`` after the connect;
    then the phone closes the socket (``seconds=None``: it waits for Asterisk to close).
    ``reply_rate``: send at the rate of the first audio frame received instead
    (until one arrives, ``rate``).
    """

    rate: int = 8000
    audio: numpy.ndarray | None = None
    silent_for: float = 0.0
    seconds: float | None = 3.0
    send_silence: bool = True


@dataclass
class PhoneCall:
    uuid: uuid.UUID
    connected_at: float
    script: Script
    frames: list[tuple[float, int, bytes]] = field(default_factory=list)  # (arrival, kind, payload)
    sent: list[tuple[float, bytes]] = field(default_factory=list)  # (time, payload), audio only
    first_audio_sent_at: float | None = None
    ended: threading.Event = field(default_factory=threading.Event)
    closed_by: str = ""

    def audio_frames(self) -> list[tuple[float, int, bytes]]:
        return [frame for frame in self.frames if frame[1] in RATE_FOR_KIND]

    def rates(self) -> set[int]:
        return {RATE_FOR_KIND[kind] for _, kind, _ in self.audio_frames()}

    def heard(self) -> numpy.ndarray:
        """Every audio sample received, in order, as int16."""
        return numpy.frombuffer(b"".join(p for _, _, p in self.audio_frames()), dtype="<i2").astype(numpy.int16)

    def dtmf(self) -> str:
        return "".join(p.decode("ascii", "replace") for _, kind, p in self.frames if kind == DTMF_KIND)

    def sent_audio(self) -> numpy.ndarray:
        return numpy.frombuffer(b"".join(p for _, p in self.sent), dtype="<i2").astype(numpy.int16)


class Phone:
    """A listening AudioSocket server on 127.0.0.1 (port 0); one thread per call."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.scripts: dict[str, Script] = {}
        self.calls: dict[str, PhoneCall] = {}
        self._lock = threading.Condition()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._closing = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name=f"phone-{self.port}").start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def expect(self, call_uuid: str, script: Script) -> None:
        """Use ``script`` for the call that arrives with ``call_uuid``."""
        self.scripts[str(call_uuid)] = script

    def wait_call(self, call_uuid: str, timeout: float = 10.0) -> PhoneCall:
        deadline = time.monotonic() + timeout
        with self._lock:
            while str(call_uuid) not in self.calls:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no call {call_uuid} reached the phone in {timeout} s (calls: {list(self.calls)})")
                self._lock.wait(left)
            return self.calls[str(call_uuid)]

    def wait_ended(self, call_uuid: str, timeout: float = 15.0) -> PhoneCall:
        call = self.wait_call(call_uuid, timeout)
        if not call.ended.wait(timeout):
            raise AssertionError(f"call {call_uuid} still up after {timeout} s")
        return call

    def close(self) -> None:
        self._closing = True
        self._listener.close()
        for sock in list(self._sockets):
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> "Phone":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- per call -----------------------------------------------------------
    def _accept(self) -> None:
        while not self._closing:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        connected_at = time.monotonic()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = _Reader(sock)
        first = reader.frame(timeout=5.0)
        if first is None or first[0] != UUID_KIND:
            sock.close()
            return
        call_uuid = uuid.UUID(bytes=first[1])
        script = self.scripts.get(str(call_uuid), self.script)
        call = PhoneCall(call_uuid, connected_at, script)
        with self._lock:
            self.calls[str(call_uuid)] = call
            self._lock.notify_all()
        sender = threading.Thread(target=self._send, args=(sock, call), daemon=True)
        sender.start()
        while True:
            try:
                frame = reader.frame(timeout=None)
            except OSError:
                frame = None
            if frame is None:
                call.closed_by = call.closed_by or "asterisk"
                break
            call.frames.append((time.monotonic(), frame[0], frame[1]))
            if frame[0] == HANGUP_KIND:
                call.closed_by = call.closed_by or "asterisk"
                break
        call.ended.set()
        sender.join(2.0)
        try:
            sock.close()
        except OSError:
            pass

    def _send(self, sock: socket.socket, call: PhoneCall) -> None:
        script = call.script
        rate = script.rate
        frame_samples = rate // 50
        audio = script.audio if script.audio is not None else numpy.zeros(0, dtype=numpy.int16)
        pad = (-len(audio)) % frame_samples
        audio = numpy.concatenate([audio.astype(numpy.int16), numpy.zeros(pad, dtype=numpy.int16)])
        chunks = [audio[i : i + frame_samples].astype("<i2").tobytes() for i in range(0, len(audio), frame_samples)]
        silence = bytes(frame_samples * 2)
        kind = KIND_FOR_RATE[rate]
        start = call.connected_at + script.silent_for
        end = None if script.seconds is None else call.connected_at + script.seconds
        index = 0
        while not call.ended.is_set():
            deadline = start + index * FRAME_PERIOD
            if end is not None and deadline >= end:
                break
            delay = deadline - time.monotonic()
            if delay > 0:
                if call.ended.wait(delay):
                    return
            if index < len(chunks):
                payload = chunks[index]
            elif script.send_silence:
                payload = silence
            else:
                payload = b""
            if payload:
                try:
                    sock.sendall(struct.pack(">BH", kind, len(payload)) + payload)
                except OSError:
                    return
                now = time.monotonic()
                if call.first_audio_sent_at is None:
                    call.first_audio_sent_at = now
                call.sent.append((now, payload))
            index += 1
        if end is not None and not call.ended.is_set():
            call.closed_by = "phone"
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Reader:
    """Whole frames from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def frame(self, timeout: float | None) -> tuple[int, bytes] | None:
        self.sock.settimeout(timeout)
        while True:
            if len(self.buffer) >= 3:
                kind, length = struct.unpack_from(">BH", self.buffer, 0)
                if len(self.buffer) >= 3 + length:
                    payload = bytes(self.buffer[3 : 3 + length])
                    del self.buffer[: 3 + length]
                    return kind, payload
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                return None
            if not data:
                return None
            self.buffer += data


def noise(seconds: float, rate: int = 8000, seed: int = 1, amplitude: float = 3000.0) -> numpy.ndarray:
    """Seeded white noise as int16: every 20 ms of it is unlike every other, so alignment is unambiguous."""
    rng = numpy.random.default_rng(seed)
    samples = rng.standard_normal(int(seconds * rate)) * amplitude
    return numpy.clip(samples, -32768, 32767).astype(numpy.int16)


def find_offset(heard: numpy.ndarray, reference: numpy.ndarray, probe: int = 1600) -> tuple[int, float]:
    """Where ``reference``'s first ``probe`` samples sit in ``heard``, and how well they match (1.0 exact).

    Normalised cross-correlation peak; the score is that of the best offset.
    """
    probe = min(probe, len(reference))
    if len(heard) < probe or probe == 0:
        return 0, 0.0
    head = reference[:probe].astype(numpy.float64)
    signal = heard.astype(numpy.float64)
    size = 1 << int(numpy.ceil(numpy.log2(len(signal) + probe)))
    corr = numpy.fft.irfft(numpy.fft.rfft(signal, size) * numpy.conj(numpy.fft.rfft(head, size)), size)[: len(signal) - probe + 1]
    energy = numpy.sqrt(numpy.convolve(signal ** 2, numpy.ones(probe), "valid")) * numpy.sqrt(numpy.dot(head, head))
    score = numpy.divide(corr, energy, out=numpy.zeros_like(corr), where=energy > 0)
    offset = int(numpy.argmax(score))
    return offset, float(score[offset])


def frame_scores(heard: numpy.ndarray, reference: numpy.ndarray, offset: int, rate: int, window: int = 0) -> numpy.ndarray:
    """Per 20 ms frame of ``reference``: normalised correlation with ``heard`` at ``offset`` (0 where missing).

    With ``window``, each frame may sit up to that many samples from where the previous one
    put it (a rate conversion shifts audio by a few samples); keep it under half the period of
    the highest tone in ``reference`` so a frame cannot match one period away.
    """
    size = rate // 50
    scores = []
    drift = 0
    for start in range(0, len(reference) - size + 1, size):
        ref = reference[start : start + size].astype(numpy.float64)
        if not ref.any():
            scores.append(1.0)
            continue
        best, best_drift = 0.0, drift
        for shift in range(drift - window, drift + window + 1):
            begin = offset + start + shift
            got = heard[max(begin, 0) : begin + size].astype(numpy.float64)
            if begin < 0 or len(got) < size or not got.any():
                continue
            score = float(numpy.dot(ref, got) / numpy.sqrt(numpy.dot(ref, ref) * numpy.dot(got, got)))
            if score > best:
                best, best_drift = score, shift
        scores.append(best)
        if best > 0.9:
            drift = best_drift
    return numpy.array(scores)


def frames_of(samples: numpy.ndarray, rate: int) -> list[bytes]:
    """``samples`` cut into 20 ms wire payloads (the last partial frame dropped)."""
    size = rate // 50
    return [samples[i : i + size].astype("<i2").tobytes() for i in range(0, len(samples) - size + 1, size)]


def locate_frames(call: PhoneCall, sent: list[bytes]) -> list[int | None]:
    """For each payload in ``sent``: the index of the received audio frame that is identical to it."""
    position: dict[bytes, int] = {}
    for index, (_, _, payload) in enumerate(call.audio_frames()):
        position.setdefault(payload, index)
    return [position.get(payload) for payload in sent]


def band_limited_noise(seconds: float, rate: int, seed: int, amplitude: float = 4000.0) -> numpy.ndarray:
    """Noise with nothing above 4 kHz, at ``rate``: it survives a trip through 8 kHz unchanged in
    substance, so a worker that converts queued 8 kHz audio to a learned 16 kHz rate still plays it."""
    import soxr

    base = noise(seconds, 8000, seed, amplitude).astype(numpy.float64)
    samples = base if rate == 8000 else soxr.resample(base, 8000, rate, quality="VHQ")
    return numpy.clip(numpy.round(samples), -32768, 32767).astype(numpy.int16)


@dataclass
class Tracked:
    """Where each 20 ms frame of a reference was found in what was heard."""

    scores: numpy.ndarray  # best normalised correlation of each frame anywhere in what was heard
    positions: numpy.ndarray  # the sample where that best match starts
    size: int

    def heard(self, threshold: float = 0.9) -> numpy.ndarray:
        return self.scores > threshold

    def breaks(self, window: int = 8) -> list[int]:
        """Frames that do not start where the previous one ended (within ``window`` samples)."""
        steps = numpy.diff(self.positions)
        return [index + 1 for index, step in enumerate(steps) if abs(int(step) - self.size) > window]


def track_frames(heard: numpy.ndarray, reference: numpy.ndarray, rate: int) -> Tracked:
    """Find every 20 ms frame of ``reference`` in ``heard`` (best normalised correlation anywhere).

    Recognisable rather than identical: a worker that converts queued audio to a
    newly learned rate shifts and filters it a little; a lost or inserted frame
    still shows, as a frame not found or as a break in the positions.
    """
    size = rate // 50
    signal = heard.astype(numpy.float64)
    if len(signal) < size:
        frames = len(reference) // size
        return Tracked(numpy.zeros(frames), numpy.zeros(frames, dtype=int), size)
    fft_size = 1 << int(numpy.ceil(numpy.log2(len(signal) + size)))
    spectrum = numpy.fft.rfft(signal, fft_size)
    energy = numpy.sqrt(numpy.convolve(signal ** 2, numpy.ones(size), "valid"))
    scores, positions = [], []
    for start in range(0, len(reference) - size + 1, size):
        ref = reference[start : start + size].astype(numpy.float64)
        norm = numpy.sqrt(numpy.dot(ref, ref))
        corr = numpy.fft.irfft(spectrum * numpy.conj(numpy.fft.rfft(ref, fft_size)), fft_size)[: len(energy)]
        score = numpy.divide(corr, energy * norm, out=numpy.zeros_like(corr), where=energy * norm > 0)
        best = int(numpy.argmax(score))
        scores.append(float(score[best]))
        positions.append(best)
    return Tracked(numpy.array(scores), numpy.array(positions), size)

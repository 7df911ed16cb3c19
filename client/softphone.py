"""A softphone that talks to a gateway the way Asterisk's AudioSocket() app does.

It sends the UUID frame, then one 20 ms audio frame per deadline (absolute
deadlines on ``time.monotonic``, so sleep overshoot never drifts and a stall
never turns into a burst), DTMF digits as 0x03 frames, and a hangup at the end.

What it measures is when the gateway's frames *arrived*, so arrivals are the
kernel's receive timestamps (``SO_TIMESTAMPNS``), read with ``recvmsg`` from a
non-blocking socket: a softphone whose own event loop is busy with hundreds of
other calls still sees the gateway's timing, not its own lag. asyncio streams
cannot see ancillary data, hence ``loop.add_reader`` and raw sockets.

Limit worth knowing: Linux merges TCP segments that wait unread in the receive
queue and keeps only the newest timestamp, so frames the softphone reads more
than a frame period late may share one timestamp. ``CallResult.late_reads``
counts them; when it is not zero, the softphone (not the gateway) was behind.

:func:`place_call` is the one-call API. Load clients build :class:`Call`
objects themselves and use its hooks instead of reaching into it: a
:class:`SendSchedule` that drives many calls' sends from a few shared timers
(each call's :meth:`Call.tick` writes its next frame), ``on_frame_sent`` (told
of every audio frame just before it is written), and the moments the UUID and
the hangup were written (``CallResult.uuid_sent_at`` / ``hangup_sent_at``).
"""
from __future__ import annotations

import array
import asyncio
import ipaddress
import os
import platform
import socket
import struct
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy

from audiogw.shared.audiosocket import (
    AUDIO_RATES,
    HANGUP_FRAME,
    HEADER_SIZE,
    KIND_FOR_RATE,
    AudioSocketError,
    FrameDecoder,
    Kind,
    encode_dtmf,
    encode_from_asterisk,
    encode_uuid,
    frame_bytes,
)
from audiogw.shared.pacing import FRAME_PERIOD, PacingStats, pacing_stats

DTMF_SPACING = 0.100
# A call whose sends stay blocked this long past its planned end is abandoned.
STUCK_GRACE = 5.0
# Reads per readiness callback: enough to drain a backlog, bounded so one call
# cannot monopolise a loop shared with hundreds of others.
_READS_PER_WAKEUP = 32


def _timestamp_option() -> int | None:
    """SO_TIMESTAMPNS: Python does not export it, and its value is per architecture."""
    value = getattr(socket, "SO_TIMESTAMPNS", None)
    if value is not None:
        return int(value)
    if not sys.platform.startswith("linux"):
        return None
    machine = platform.machine().lower()
    generic = ("x86", "i386", "i486", "i586", "i686", "amd64", "aarch64", "arm", "riscv", "ppc",
               "powerpc", "s390", "loongarch")
    # asm-generic/socket.h: SO_TIMESTAMPNS_OLD = 35 (struct timespec of two native longs).
    return 35 if machine.startswith(generic) else None


SO_TIMESTAMPNS: int | None = _timestamp_option()
_TIMESPEC = struct.Struct("@ll")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
_supported: bool | None = None
_timestamp_keeper: socket.socket | None = None


def kernel_stamp(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The kernel's receive time in a ``recvmsg`` result's ancillary data (0.0 if it carries none)."""
    for level, message_type, payload in ancillary:
        if level == socket.SOL_SOCKET and message_type == SO_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(payload)
            return seconds + nanoseconds * 1e-9
    return 0.0


def note_arrival(record: Any, stamp: float, read_at: float) -> None:
    """Count one audio frame on ``record`` (its ``arrivals``, ``late_reads``, ``user_timestamps``):
    the kernel's arrival time, or the read time when the kernel gave none."""
    if stamp:
        record.arrivals.append(stamp)
        if read_at - stamp > FRAME_PERIOD:
            record.late_reads += 1
    else:
        record.arrivals.append(read_at)
        record.user_timestamps += 1


def kernel_timestamps_supported() -> bool:
    """Whether this kernel gives per-read receive timestamps (SO_TIMESTAMPNS)."""
    global _supported
    if _supported is None:
        _supported = False
        if SO_TIMESTAMPNS is not None:
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    _supported = bool(probe.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS))
            except OSError:
                _supported = False
    return _supported


def _keep_timestamps_on() -> None:
    """Hold one timestamping socket open for the life of the process.

    Linux switches receive timestamping on lazily (a deferred static key) when
    the first timestamping socket appears and off when the last one closes, so
    the first frames of a call could otherwise arrive unstamped; with one
    socket kept open, only the very first call of the process can be affected.
    """
    global _timestamp_keeper
    if _timestamp_keeper is None and kernel_timestamps_supported():
        keeper = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            keeper.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            keeper.close()
            return
        _timestamp_keeper = keeper


class CallConnectError(ConnectionError):
    """The gateway could not be reached; the message names host:port."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot connect to {format_address(host, port)}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


def format_address(host: str, port: int) -> str:
    """host:port, with IPv6 literals bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class CallResult:
    """What one call sent and observed. ``arrivals`` are CLOCK_REALTIME seconds."""

    call_uuid: uuid.UUID
    frames_sent: int
    frames_received: int
    late_sends: int
    arrivals: numpy.ndarray
    recorded: numpy.ndarray | None
    hung_up_by: str  # "client" | "server" | "closed" | "error"
    error: str | None
    connect_time: float
    duration: float
    rate: int = 8000
    dtmf_sent: str = ""
    # Frames stamped with time.time() at read because the kernel gave no timestamp.
    user_timestamps: int = 0
    # Frames read more than one period after they arrived (see the module note).
    late_reads: int = 0
    # time.time() right after the UUID frame was written, and when the hangup frame was
    # (None: never written): a call's expected frames lie between them.
    uuid_sent_at: float | None = None
    hangup_sent_at: float | None = None

    def pacing(self) -> PacingStats:
        """Pacing of the frames the gateway sent, from their kernel arrival times."""
        return pacing_stats(self.arrivals, FRAME_PERIOD)


async def place_call(
    host: str,
    port: int,
    *,
    call_uuid: uuid.UUID | None = None,
    source: numpy.ndarray | None = None,
    rate: int = 8000,
    seconds: float = 5.0,
    dtmf: str = "",
    dtmf_at: float = 1.0,
    record: bool = True,
    hangup: bool = True,
    connect_timeout: float = 5.0,
) -> CallResult:
    """Place one call like Asterisk's AudioSocket() and report what came back.

    ``source`` is int16 PCM at ``rate`` (None: silence; shorter than the call:
    silence after it). Digits in ``dtmf`` go out one per 100 ms from ``dtmf_at``
    seconds. Raises :class:`CallConnectError` if the connection fails and
    ``ValueError`` on bad arguments; anything the server does wrong once
    connected is recorded in the result, not raised.
    """
    source_bytes = b""
    if source is not None:
        samples = numpy.asarray(source)
        if samples.dtype != numpy.int16 or samples.ndim != 1:
            raise ValueError(f"source must be 1-D int16 PCM, not {samples.dtype} of shape {samples.shape}")
        source_bytes = samples.astype("<i2", copy=False).tobytes()
    call = Call(host, port, call_uuid=call_uuid, source=source_bytes, rate=rate, seconds=seconds,
                dtmf=dtmf, dtmf_at=dtmf_at, record=record, hangup=hangup)
    return await call.run(connect_timeout)


def dtmf_plan(dtmf: str, dtmf_at: float, seconds: float) -> list[bytes]:
    """The 0x03 frames for ``dtmf``; ValueError if a digit is invalid or they do not fit in the call."""
    frames: list[bytes] = []
    for digit in dtmf.upper():
        try:
            frames.append(encode_dtmf(digit))
        except AudioSocketError:
            raise ValueError(f"invalid DTMF digit {digit!r}: use 0-9, *, #, A-D") from None
    if frames and (dtmf_at < 0 or dtmf_at + (len(frames) - 1) * DTMF_SPACING >= seconds):
        raise ValueError(
            f"{len(frames)} DTMF digits from {dtmf_at:g} s, one per {DTMF_SPACING:g} s, "
            f"do not fit in a {seconds:g} s call"
        )
    return frames


async def _connect(host: str, port: int) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:  # numeric addresses skip the resolver thread: a benchmark places hundreds of calls
        literal = ipaddress.ip_address(host)
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        targets = [(family, (host, port))]
    except ValueError:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        targets = [(info[0], info[4]) for info in infos]
    last_error: OSError = OSError(f"no address for {host}")
    for family, address in targets:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if kernel_timestamps_supported():
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # before any data arrives
            await loop.sock_connect(sock, address)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
        except BaseException:
            sock.close()
            raise
    raise last_error


class SendSchedule(Protocol):
    """Drives the audio sends of many calls (a load client's shared send clock).

    A call given one writes its UUID frame, then ``add``s itself and waits; the
    schedule calls :meth:`Call.tick` at each of that call's send times (every
    20 ms, at a phase of the schedule's choosing), and the call ``discard``s
    itself once its ``seconds`` are over or the call ended. Without one, each
    call keeps its own absolute 20 ms deadlines.
    """

    def add(self, call: "Call") -> None: ...

    def discard(self, call: "Call") -> None: ...


class Call:
    """One call like Asterisk's AudioSocket(); the receive path runs as a plain reader callback.

    ``source`` is int16 little-endian PCM at ``rate`` (shorter than the call:
    silence after it). Hooks, for load clients: ``schedule`` (see
    :class:`SendSchedule`) and ``on_frame_sent(frame)``, called with each audio
    frame just before it is written (cheap and non-blocking: it runs on the
    send path). ``ValueError`` on bad arguments.
    """

    __slots__ = (
        "host", "port", "call_uuid", "source", "rate", "seconds", "dtmf", "dtmf_frames", "dtmf_at",
        "record", "hangup", "schedule", "on_frame_sent", "kind", "payload_size", "silence_frame", "header",
        "sock", "loop", "ended", "hung_up_by", "error", "decoder", "head", "left",
        "arrivals", "recorded", "frames_sent", "frames_received", "late_sends",
        "user_timestamps", "late_reads", "dtmf_sent", "uuid_sent_at", "hangup_sent_at",
        "_send_end", "_last_deadline", "_sending", "_digit", "_next_digit_at",
    )

    def __init__(
        self, host: str, port: int, *, call_uuid: uuid.UUID | None = None, source: bytes = b"",
        rate: int = 8000, seconds: float = 5.0, dtmf: str = "", dtmf_at: float = 1.0,
        record: bool = True, hangup: bool = True, schedule: SendSchedule | None = None,
        on_frame_sent: Callable[[bytes], None] | None = None,
    ) -> None:
        if rate not in KIND_FOR_RATE:
            raise ValueError(f"no AudioSocket kind for {rate} Hz; use one of {sorted(KIND_FOR_RATE)}")
        if not seconds > 0:
            raise ValueError(f"call length must be positive, not {seconds}")
        self.dtmf_frames = dtmf_plan(dtmf, dtmf_at, seconds)
        self.host = host
        self.port = port
        self.call_uuid = call_uuid or uuid.uuid4()
        self.rate = rate
        self.seconds = seconds
        self.dtmf = dtmf.upper()
        self.dtmf_at = dtmf_at
        self.record = record
        self.hangup = hangup
        self.schedule = schedule
        self.on_frame_sent = on_frame_sent
        self.kind = KIND_FOR_RATE[rate]
        self.payload_size = frame_bytes(rate)
        self.silence_frame = encode_from_asterisk(self.kind, bytes(self.payload_size))
        self.header = self.silence_frame[:HEADER_SIZE]
        remainder = len(source) % self.payload_size
        self.source = source + bytes(self.payload_size - remainder) if remainder else source
        self.sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ended: asyncio.Future[None] | None = None
        self.hung_up_by: str | None = None
        self.error: str | None = None
        self.decoder = FrameDecoder()
        self.head = bytearray()  # header bytes of the frame being received
        self.left = 0  # payload bytes still missing from the frame being received
        self.arrivals = array.array("d")
        self.recorded = bytearray()
        self.frames_sent = 0
        self.frames_received = 0
        self.late_sends = 0
        self.user_timestamps = 0
        self.late_reads = 0
        self.dtmf_sent = ""
        self.uuid_sent_at: float | None = None
        self.hangup_sent_at: float | None = None
        self._send_end = 0.0
        self._last_deadline = 0.0
        self._sending: asyncio.Future[None] | None = None
        self._digit = 0
        self._next_digit_at = 0.0

    async def run(self, connect_timeout: float = 5.0) -> CallResult:
        """Connect, send until ``seconds`` are over (or the server ends the call), hang up; what happened.

        Raises :class:`CallConnectError` if the connection fails; anything the
        server does wrong once connected is recorded in the result, not raised.
        """
        loop = self.loop = asyncio.get_running_loop()
        _keep_timestamps_on()
        begun = time.monotonic()
        try:
            sock = await asyncio.wait_for(_connect(self.host, self.port), connect_timeout)
        except TimeoutError:
            raise CallConnectError(self.host, self.port, f"no answer within {connect_timeout:g} s") from None
        except OSError as exc:
            if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
                reason = exc.strerror or str(exc)
            else:
                reason = os.strerror(exc.errno)
            raise CallConnectError(self.host, self.port, reason) from exc
        connected = time.monotonic()
        self.sock = sock
        self.ended = loop.create_future()
        loop.add_reader(sock.fileno(), self._on_readable)
        sender = loop.create_task(self._send_all())
        try:
            await asyncio.wait({sender, self.ended}, timeout=self.seconds + STUCK_GRACE,
                               return_when=asyncio.FIRST_COMPLETED)
            if not sender.done():
                sender.cancel()
                await asyncio.wait({sender})  # unlike `await sender`, lets our own cancellation through
                if not self.ended.done():
                    self._finish("error", "send blocked: the server stopped reading")
            elif not sender.cancelled():
                sender.result()  # a bug in the sender surfaces here
            if self.hung_up_by is None:
                self.hung_up_by = "client"
                if self.hangup:
                    self.hangup_sent_at = time.time()
                    if rest := self._write_now(HANGUP_FRAME):
                        try:  # the send buffer is full: give the server a moment to read
                            await asyncio.wait_for(loop.sock_sendall(sock, rest), 1.0)
                        except (OSError, TimeoutError):
                            pass
                self._on_readable()  # frames already in the kernel buffer still count
        finally:
            if not sender.done():
                sender.cancel()
            loop.remove_reader(sock.fileno())
            sock.close()
        finished = time.monotonic()
        recorded = None
        if self.record:
            recorded = numpy.frombuffer(bytes(self.recorded), dtype="<i2").astype(numpy.int16)
        return CallResult(
            call_uuid=self.call_uuid,
            frames_sent=self.frames_sent,
            frames_received=self.frames_received,
            late_sends=self.late_sends,
            arrivals=numpy.array(self.arrivals, dtype=numpy.float64),
            recorded=recorded,
            hung_up_by=self.hung_up_by or "client",
            error=self.error,
            connect_time=connected - begun,
            duration=finished - connected,
            rate=self.rate,
            dtmf_sent=self.dtmf_sent,
            user_timestamps=self.user_timestamps,
            late_reads=self.late_reads,
            uuid_sent_at=self.uuid_sent_at,
            hangup_sent_at=self.hangup_sent_at,
        )

    def _finish(self, who: str, error: str | None) -> None:
        """The call is over (first reason wins); stop reading at once."""
        if self.hung_up_by is None:
            self.hung_up_by = who
            if error is not None:
                self.error = error
        if self.loop is not None and self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
        if self.ended is not None and not self.ended.done():
            self.ended.set_result(None)

    def _write_now(self, data: bytes) -> bytes:
        """Send without waiting; return what the kernel did not take."""
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return data
        except OSError:
            return b""  # the peer is gone: the receive path reports how
        return data[sent:] if sent < len(data) else b""

    async def _write(self, data: bytes) -> None:
        rest = self._write_now(data)
        if rest:
            await self.loop.sock_sendall(self.sock, rest)

    async def _send_all(self) -> None:
        try:
            await self._send_frames()
        except OSError as exc:
            self._finish("closed", f"send failed: {exc.strerror or exc}")

    async def _send_frames(self) -> None:
        await self._write(encode_uuid(self.call_uuid))
        self.uuid_sent_at = time.time()
        if self.schedule is not None:
            await self._send_on_schedule(self.schedule)
            return
        monotonic = time.monotonic
        sleep = asyncio.sleep
        period = FRAME_PERIOD
        ended = self.ended
        payload_size = self.payload_size
        source = self.source
        source_frames = len(source) // payload_size
        header = self.header
        silence_frame = self.silence_frame
        on_frame_sent = self.on_frame_sent
        start = anchor = monotonic()
        end = start + self.seconds
        last_deadline = end - period / 2  # no frame starts in the last half period
        index = 0
        digit = 0
        next_digit_at = start + self.dtmf_at
        while True:
            deadline = anchor + index * period
            now = monotonic()
            if deadline > now:
                await sleep(deadline - now)
                now = monotonic()
            if now - deadline > period:  # far behind: restart the clock, no catch-up burst
                anchor = now
                index = 0
                deadline = now
                self.late_sends += 1
            if deadline >= last_deadline or ended.done():
                break
            sent = self.frames_sent
            if sent < source_frames:
                offset = sent * payload_size
                frame = header + source[offset : offset + payload_size]
            else:
                frame = silence_frame
            if on_frame_sent is not None:
                on_frame_sent(frame)
            await self._write(frame)
            self.frames_sent = sent + 1
            index += 1
            while digit < len(self.dtmf_frames) and now >= next_digit_at:
                await self._write(self.dtmf_frames[digit])
                self.dtmf_sent += self.dtmf[digit]
                digit += 1
                next_digit_at = start + self.dtmf_at + digit * DTMF_SPACING
        now = monotonic()
        if end > now and not ended.done():
            await sleep(end - now)  # the last frame lasts its full period before hangup

    async def _send_on_schedule(self, schedule: SendSchedule) -> None:
        now = time.monotonic()
        self._send_end = now + self.seconds
        self._last_deadline = self._send_end - FRAME_PERIOD / 2  # no frame starts in the last half period
        self._next_digit_at = now + self.dtmf_at
        self._sending = self.loop.create_future()
        schedule.add(self)
        try:
            await asyncio.wait({self._sending, self.ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            schedule.discard(self)

    def tick(self, now: float) -> None:
        """Write this call's next frame now, without waiting (a :class:`SendSchedule` calls it).

        A full kernel buffer is counted as a late send; the part of a frame it
        did not take follows as soon as it can.
        """
        sending = self._sending
        if sending is None or sending.done():
            return
        if self.ended.done() or now >= self._send_end:
            sending.set_result(None)
            return
        if now >= self._last_deadline:
            return
        sent = self.frames_sent
        payload_size = self.payload_size
        if sent < len(self.source) // payload_size:
            offset = sent * payload_size
            frame = self.header + self.source[offset : offset + payload_size]
        else:
            frame = self.silence_frame
        if self.on_frame_sent is not None:
            self.on_frame_sent(frame)
        self._write_later(frame)
        self.frames_sent = sent + 1
        digits = self.dtmf_frames
        while self._digit < len(digits) and now >= self._next_digit_at:
            self._write_later(digits[self._digit])
            self.dtmf_sent += self.dtmf[self._digit]
            self._digit += 1
            self._next_digit_at += DTMF_SPACING

    def _write_later(self, data: bytes) -> None:
        rest = self._write_now(data)
        if rest:
            self.late_sends += 1  # the kernel buffer is full
            if len(rest) < len(data):  # part of the frame went out: the rest must follow
                self.loop.create_task(self.loop.sock_sendall(self.sock, rest))

    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None or self.hung_up_by not in (None, "client"):
            return
        payload_size = self.payload_size
        for _ in range(_READS_PER_WAKEUP):
            # Never read past the end of the frame in progress, so the timestamp
            # of the read that completes a frame is that frame's arrival.
            want = self.left or (HEADER_SIZE - len(self.head) + payload_size)
            try:
                data, ancillary, _flags, _address = sock.recvmsg(want, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._finish("closed", f"receive failed: {exc.strerror or exc}")
                return
            if not data:
                self._finish("closed", None)
                return
            read_at = time.time()
            stamp = kernel_stamp(ancillary)
            if len(data) == want and not self.left and want == HEADER_SIZE + payload_size \
                    and data[0] == self.kind and (data[1] << 8 | data[2]) == payload_size:
                # The common case, one whole audio frame of our rate (the read was sized to
                # end on a frame boundary): no decoder, no Frame object. A load client
                # reads tens of thousands of these a second.
                self._arrived(stamp, read_at)
                if self.record:
                    self.recorded += memoryview(data)[HEADER_SIZE:]
                continue
            self._track(data)
            try:
                frames = self.decoder.feed(data)
            except AudioSocketError as exc:
                self._finish("error", f"protocol error from server ({exc.reason}): {exc}")
                return
            for frame in frames:
                kind = frame.kind
                if kind in AUDIO_RATES:
                    self._arrived(stamp, read_at)
                    if kind == self.kind:
                        if self.record:
                            self.recorded += frame.payload
                    elif self.error is None:
                        self.error = (
                            f"server sent {AUDIO_RATES[kind]} Hz audio on a {self.rate} Hz call "
                            "(counted, not recorded)"
                        )
                elif kind == Kind.HANGUP:
                    self._finish("server", None)
                    return
                else:
                    self._finish(
                        "error",
                        f"server sent frame kind 0x{kind:02x}; Asterisk hangs up on anything "
                        "but hangup or audio",
                    )
                    return
            if len(data) < want:
                return  # short read: the kernel buffer is empty

    def _arrived(self, stamp: float, read_at: float) -> None:
        """Count one audio frame: its kernel arrival time, or our read time if the kernel gave none."""
        note_arrival(self, stamp, read_at)
        self.frames_received += 1

    def _track(self, data: bytes) -> None:
        """Follow frame boundaries in the byte stream (to size the next read)."""
        position = 0
        size = len(data)
        head = self.head
        while position < size:
            if self.left:
                step = min(self.left, size - position)
                self.left -= step
                position += step
                continue
            need = HEADER_SIZE - len(head)
            head += data[position : position + need]
            position += need
            if len(head) == HEADER_SIZE:
                self.left = (head[1] << 8) | head[2]
                head.clear()

"""The Asterisk benchmark's timestamping receiver: an AudioSocket *server* Asterisk relays calls to.

``audiogw bench-asterisk`` relays each call's audio (audiogw's playback, or
Asterisk's own Milliwatt) through Asterisk's ``AudioSocket()`` app to here.
Every frame's arrival is the kernel's receive timestamp (``SO_TIMESTAMPNS``,
as in ``client/softphone.py``), so this process's own scheduling does not
count as jitter; it sends one silence frame per 20 ms back on the
load client's shared send clock (``bench_load.SendClock``), because
``AudioSocket()`` hangs up after 2 s without traffic.

Several receivers share one port (``SO_REUSEPORT``: the kernel spreads the
connections), each its own process:

    python -m audiogw.bench.asterisk_receiver --port PORT --out RESULT.npz

It prints ``ready`` once listening, serves until stdin closes, then writes
per-call arrivals to ``--out`` (numpy, no pickle) and exits.
"""
from __future__ import annotations

import argparse
import array
import asyncio
import gc
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy
import uvloop

from audiogw.bench import load as bench_load
from audiogw.client.softphone import (
    _ANCILLARY_SPACE,
    SO_TIMESTAMPNS,
    _keep_timestamps_on,
    kernel_stamp,
    kernel_timestamps_supported,
    note_arrival,
)
from audiogw.shared.audiosocket import HEADER_SIZE, KIND_FOR_RATE, Kind, decode_uuid, encode_header, frame_bytes

PAYLOAD = frame_bytes(8000)  # AudioSocket() forces slin 8 kHz
AUDIO_KIND = KIND_FOR_RATE[8000]
SILENCE = encode_header(AUDIO_KIND, PAYLOAD) + bytes(PAYLOAD)
UUID_FRAME = HEADER_SIZE + 16
READS_PER_WAKEUP = 32


class ReceivedCall:
    """One connection from Asterisk: its UUID, its frames' kernel arrival times, our silence sends."""

    __slots__ = ("sock", "loop", "uuid", "accepted_at", "closed_at", "closed_by", "arrivals", "frames_sent",
                 "late_reads", "user_timestamps", "other_frames", "buffer", "server")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, server: "Receiver") -> None:
        self.sock = sock
        self.loop = loop
        self.server = server
        self.uuid: str | None = None
        self.accepted_at = time.time()
        self.closed_at: float | None = None
        self.closed_by: str | None = None
        self.arrivals = array.array("d")
        self.frames_sent = 0
        self.late_reads = 0
        self.user_timestamps = 0
        self.other_frames = 0  # DTMF or anything not audio
        self.buffer = bytearray()

    def _want(self) -> int:
        """Bytes to read so a read never crosses the end of the frame in progress."""
        buffered = len(self.buffer)
        if self.uuid is None and buffered < UUID_FRAME:
            return UUID_FRAME - buffered
        if buffered < HEADER_SIZE:
            return HEADER_SIZE + PAYLOAD - buffered
        return HEADER_SIZE + (self.buffer[1] << 8 | self.buffer[2]) - buffered

    def on_readable(self) -> None:
        sock = self.sock
        for _ in range(READS_PER_WAKEUP):
            want = self._want()
            try:
                data, ancillary, _flags, _address = sock.recvmsg(want, _ANCILLARY_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close("peer")
                return
            if not data:
                self.close("peer")
                return
            read_at = time.time()
            stamp = kernel_stamp(ancillary)
            self.buffer += data
            self._frames(stamp, read_at)
            if self.sock is None or len(data) < want:
                return

    def _frames(self, stamp: float, read_at: float) -> None:
        buffer = self.buffer
        while len(buffer) >= HEADER_SIZE:
            size = HEADER_SIZE + (buffer[1] << 8 | buffer[2])
            if len(buffer) < size:
                return
            kind = buffer[0]
            if kind == Kind.UUID and self.uuid is None:
                self.uuid = str(decode_uuid(bytes(buffer[HEADER_SIZE:size])))
            elif kind == AUDIO_KIND:
                note_arrival(self, stamp, read_at)
            elif kind == Kind.HANGUP:
                self.close("peer")
                return
            else:
                self.other_frames += 1
            del buffer[:size]

    def tick(self, now: float) -> None:
        """One silence frame (called by the shared SendClock)."""
        sock = self.sock
        if sock is None:
            return
        try:
            sent = sock.send(SILENCE)
        except (BlockingIOError, InterruptedError):
            return  # a full buffer skips this frame
        except OSError:
            self.close("peer")
            return
        if sent < len(SILENCE):  # never leave half a frame: Asterisk wedges on one
            self.loop.create_task(self.loop.sock_sendall(sock, SILENCE[sent:]))
        self.frames_sent += 1

    def close(self, by: str) -> None:
        if self.sock is None:
            return
        self.loop.remove_reader(self.sock.fileno())
        self.server.clock.discard(self)
        self.sock.close()
        self.sock = None
        self.closed_at = time.time()
        self.closed_by = by

    def meta(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "accepted_at": self.accepted_at, "closed_at": self.closed_at,
                "closed_by": self.closed_by, "frames_sent": self.frames_sent, "late_reads": self.late_reads,
                "user_timestamps": self.user_timestamps, "other_frames": self.other_frames}


def listen(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A listening socket that shares ``port`` with the other receivers; accepted sockets inherit timestamping."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if kernel_timestamps_supported():
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Receiver:
    def __init__(self, sock: socket.socket) -> None:
        self.listener = sock
        self.calls: list[ReceivedCall] = []
        self.clock = bench_load.SendClock()
        self.loop: asyncio.AbstractEventLoop | None = None

    def _accept(self) -> None:
        for _ in range(64):
            try:
                conn, _address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if kernel_timestamps_supported():
                conn.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # normally inherited already
            call = ReceivedCall(conn, self.loop, self)
            self.calls.append(call)
            self.loop.add_reader(conn.fileno(), call.on_readable)
            self.clock.add(call)

    async def serve(self) -> None:
        """Serve until stdin closes (or says ``hangup``: then close every call and keep reading stdin)."""
        self.loop = asyncio.get_running_loop()
        _keep_timestamps_on()
        self.loop.add_reader(self.listener.fileno(), self._accept)
        reader = asyncio.StreamReader()
        await self.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        print("ready", flush=True)
        while True:
            line = await reader.readline()
            if not line:
                break
            if line.strip() == b"hangup":
                self.hangup()
        self.hangup()
        self.loop.remove_reader(self.listener.fileno())
        self.listener.close()

    def hangup(self) -> None:
        for call in self.calls:
            if call.sock is not None:
                try:
                    call.sock.send(b"\x00\x00\x00")  # Asterisk hangs up on 0x00 (or on the close)
                except OSError:
                    pass
                call.close("receiver")


def save(path: Path, calls: list[ReceivedCall]) -> None:
    arrivals = [numpy.frombuffer(call.arrivals, dtype=numpy.float64) for call in calls]
    with open(path, "wb") as handle:
        numpy.savez(handle,
                    arrivals=numpy.concatenate(arrivals) if arrivals else numpy.empty(0),
                    lengths=numpy.array([item.size for item in arrivals], dtype=numpy.int64),
                    meta=numpy.array(json.dumps([call.meta() for call in calls])))


def load(path: Path) -> list[dict[str, Any]]:
    """The calls a receiver saved: its meta fields plus ``arrivals`` (numpy array)."""
    with numpy.load(path, allow_pickle=False) as data:
        arrivals, lengths, meta = data["arrivals"], data["lengths"], json.loads(str(data["meta"]))
    offsets = numpy.concatenate([[0], numpy.cumsum(lengths)]).astype(numpy.int64)
    for position, entry in enumerate(meta):
        entry["arrivals"] = arrivals[offsets[position]:offsets[position + 1]].copy()
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audiogw.bench.asterisk_receiver",
                                     description="Timestamping AudioSocket receiver of `audiogw bench-asterisk`.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--realtime-priority", type=int, default=0, help="SCHED_RR priority (0: normal)")
    args = parser.parse_args(argv)
    if args.realtime_priority:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(args.realtime_priority))
    receiver = Receiver(listen(args.port))
    gc.freeze()
    gc.disable()  # a collection over hundreds of calls would stall reads (see load.py)
    uvloop.run(receiver.serve())
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    save(args.out, receiver.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The softphone and `audiogw call` against a real AudioSocket server on a real socket.

The server runs in its own thread and event loop so the same fixture serves
both ``place_call`` (awaited here) and the click command (which runs its own
uvloop). Only behaviour and counts are asserted; timing belongs in benchmarks.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import numpy
import pytest
import uvloop
from click.testing import CliRunner

from audiogw.client.call import call_command, parse_host_port
from audiogw.client.softphone import (
    Call,
    CallConnectError,
    CallResult,
    kernel_timestamps_supported,
    place_call,
)
from audiogw.shared.audiosocket import (
    AUDIO_RATES,
    HANGUP_FRAME,
    AudioSocketError,
    FrameDecoder,
    Kind,
    decode_uuid,
    encode_from_asterisk,
    encode_to_asterisk,
)
from audiogw.shared.wav import read_wav, tone, write_wav

pytestmark = pytest.mark.timeout(30)


@dataclass
class Session:
    """What the server saw of one connection."""

    kinds: list[int] = field(default_factory=list)
    call_uuid: uuid.UUID | None = None
    digits: str = ""
    audio_frames: int = 0
    audio_sizes: set[int] = field(default_factory=set)
    audio: bytearray = field(default_factory=bytearray)
    got_hangup: bool = False
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class AudioSocketServer:
    """Echo server on 127.0.0.1:0; ``behaviour`` makes it misbehave after ``after`` frames."""

    def __init__(self, behaviour: str = "echo", after: int = 10) -> None:
        self.behaviour = behaviour
        self.after = after
        self.sessions: list[Session] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> AudioSocketServer:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def session(self, timeout: float = 5.0) -> Session:
        deadline = time.monotonic() + timeout
        while not self.sessions and time.monotonic() < deadline:
            time.sleep(0.01)
        session = self.sessions[0]
        assert session.done.wait(max(0.0, deadline - time.monotonic())), "server never saw the call end"
        return session

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        # Finish every connection handler before the loop closes, so none is
        # left for the garbage collector to finalise in some later test.
        server.close()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session()
        self.sessions.append(session)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        decoder = FrameDecoder()
        try:
            while data := await reader.read(65536):
                for frame in decoder.feed(data):
                    session.kinds.append(frame.kind)
                    if frame.kind == Kind.UUID:
                        session.call_uuid = decode_uuid(frame.payload)
                    elif frame.kind == Kind.DTMF:
                        session.digits += frame.payload.decode()
                    elif frame.kind == Kind.HANGUP:
                        session.got_hangup = True
                    elif frame.kind in AUDIO_RATES:
                        session.audio_frames += 1
                        session.audio_sizes.add(len(frame.payload))
                        session.audio += frame.payload
                        if not await self._respond(frame.kind, frame.payload, session, writer):
                            return
        except (AudioSocketError, ConnectionError) as exc:
            session.error = str(exc)
        finally:
            writer.close()
            session.done.set()

    async def _respond(self, kind: int, payload: bytes, session: Session, writer: asyncio.StreamWriter) -> bool:
        """Answer one audio frame; False ends the connection."""
        misbehave = session.audio_frames > self.after
        if self.behaviour == "echo" or not misbehave:
            writer.write(encode_to_asterisk(kind, payload))
            return True
        if self.behaviour == "hangup":
            writer.write(HANGUP_FRAME)
            await writer.drain()
            await asyncio.sleep(0.2)  # let the client react to the hangup frame, not the close
            return False
        if self.behaviour == "close":
            return False
        if self.behaviour == "dtmf":  # a kind Asterisk hangs up on
            writer.write(encode_from_asterisk(Kind.DTMF, b"5"))
        elif self.behaviour == "garbage":
            writer.write(b"\x10\x00\x03abc")  # odd-length audio payload
        elif self.behaviour == "wrong_rate":
            writer.write(encode_to_asterisk(Kind.SLIN_16K, bytes(640)))
            return True
        await writer.drain()
        await asyncio.sleep(0.5)
        return False


def run(coroutine):
    return asyncio.run(coroutine)


def refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again: nothing listens there


def assert_arrivals_are_kernel_realtime(result: CallResult) -> None:
    assert result.arrivals.dtype == numpy.float64
    assert len(result.arrivals) == result.frames_received
    assert numpy.all(numpy.abs(result.arrivals - time.time()) < 30.0)  # CLOCK_REALTIME seconds
    assert numpy.all(numpy.diff(result.arrivals) >= 0)
    if kernel_timestamps_supported():
        # Only the first frames of a process's first call may miss a kernel stamp.
        assert result.user_timestamps <= 3


def test_echo_call_counts_uuid_dtmf_hangup_and_recording():
    call_uuid = uuid.uuid4()
    source = tone(440.0, 1.0, 8000)
    with AudioSocketServer() as server:
        result = run(place_call(
            "127.0.0.1", server.port, call_uuid=call_uuid, source=source, seconds=1.0,
            dtmf="12#", dtmf_at=0.2,
        ))
        session = server.session()
    assert result.error is None
    assert result.hung_up_by == "client"
    assert result.call_uuid == call_uuid
    assert abs(result.frames_sent - 50) <= 1
    assert result.frames_received >= result.frames_sent - 1
    assert result.dtmf_sent == "12#"
    assert session.kinds[0] == Kind.UUID
    assert session.call_uuid == call_uuid
    assert session.digits == "12#"
    assert session.got_hangup and session.kinds[-1] == Kind.HANGUP
    assert session.audio_frames == result.frames_sent
    assert session.audio_sizes == {320}
    assert_arrivals_are_kernel_realtime(result)
    assert result.recorded is not None and result.recorded.dtype == numpy.int16
    assert len(result.recorded) == result.frames_received * 160
    numpy.testing.assert_array_equal(result.recorded, source[: len(result.recorded)])
    assert result.pacing().frames == result.frames_received
    assert result.connect_time >= 0 and result.duration > 0


def test_source_shorter_than_the_call_is_followed_by_silence():
    source = tone(440.0, 0.1, 8000)[:700]  # 4.375 frames: the last one is padded
    with AudioSocketServer() as server:
        result = run(place_call("127.0.0.1", server.port, source=source, seconds=0.4, record=False))
        session = server.session()
    assert result.recorded is None
    sent = numpy.frombuffer(bytes(session.audio), dtype="<i2")
    assert len(sent) == result.frames_sent * 160
    numpy.testing.assert_array_equal(sent[:700], source)
    assert not sent[700:].any()


def test_no_source_sends_silence_and_no_hangup_when_asked():
    with AudioSocketServer() as server:
        result = run(place_call("127.0.0.1", server.port, seconds=0.3, hangup=False))
        session = server.session()
    assert result.hung_up_by == "client"
    assert not session.got_hangup
    assert Kind.HANGUP not in session.kinds
    assert not any(session.audio)
    assert session.audio_frames == result.frames_sent


def test_16k_call_uses_the_16k_kind_and_640_byte_frames():
    source = tone(1000.0, 0.3, 16000)
    with AudioSocketServer() as server:
        result = run(place_call("127.0.0.1", server.port, source=source, rate=16000, seconds=0.3))
        session = server.session()
    assert set(session.kinds[1:-1]) == {Kind.SLIN_16K}
    assert session.audio_sizes == {640}
    assert result.rate == 16000
    numpy.testing.assert_array_equal(result.recorded, source[: len(result.recorded)])


def test_runs_on_uvloop_too():
    with AudioSocketServer() as server:
        result = uvloop.run(place_call("127.0.0.1", server.port, seconds=0.3, dtmf="9", dtmf_at=0.1))
        session = server.session()
    assert result.hung_up_by == "client" and result.error is None
    assert session.digits == "9"
    assert result.frames_received >= result.frames_sent - 1
    assert_arrivals_are_kernel_realtime(result)


def test_many_calls_in_one_loop():
    async def many(port: int) -> list[CallResult]:
        return await asyncio.gather(*(place_call("127.0.0.1", port, seconds=0.5, record=False) for _ in range(20)))

    with AudioSocketServer() as server:
        results = uvloop.run(many(server.port))
        for _ in range(20):
            server.session()  # all connections seen
        time.sleep(0.1)
        sessions = list(server.sessions)
    assert len({result.call_uuid for result in results}) == 20
    assert {session.call_uuid for session in sessions} == {result.call_uuid for result in results}
    assert all(result.hung_up_by == "client" for result in results)
    assert all(result.frames_received >= result.frames_sent - 1 for result in results)


class ManualSchedule:
    """A SendSchedule the test drives by hand: the calls it holds send only when told."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.added = asyncio.Event()

    def add(self, call: Call) -> None:
        self.calls.append(call)
        self.added.set()

    def discard(self, call: Call) -> None:
        self.calls.remove(call)


def test_a_send_schedule_drives_the_calls_sends_and_on_frame_sent_sees_each_audio_frame():
    source = tone(440.0, 0.1, 8000)  # 5 frames
    seen: list[bytes] = []
    schedule = ManualSchedule()

    async def scheduled(port: int) -> tuple[CallResult, int, int]:
        call = Call("127.0.0.1", port, source=source.astype("<i2").tobytes(), seconds=0.3, dtmf="5",
                    dtmf_at=0.0, schedule=schedule, on_frame_sent=seen.append)
        task = asyncio.ensure_future(call.run())
        await asyncio.wait_for(schedule.added.wait(), 5)
        before = call.frames_sent  # nothing leaves until the schedule ticks
        ticks = 0
        while not task.done():
            if call in schedule.calls:
                call.tick(time.monotonic())
                ticks += 1
            await asyncio.sleep(0.02)
        assert not schedule.calls  # the call took itself off the schedule
        return await task, before, ticks

    with AudioSocketServer() as server:
        result, before, ticks = uvloop.run(scheduled(server.port))
        session = server.session()
    assert before == 0
    assert result.hung_up_by == "client" and result.error is None
    assert 0 < result.frames_sent <= ticks
    assert session.audio_frames == result.frames_sent == len(seen)
    assert session.digits == "5" and result.dtmf_sent == "5"
    assert all(frame[0] == Kind.SLIN_8K for frame in seen)
    numpy.testing.assert_array_equal(numpy.frombuffer(b"".join(frame[3:] for frame in seen[:5]), "<i2"), source)
    assert result.uuid_sent_at is not None and result.hangup_sent_at is not None
    assert 0.25 < result.hangup_sent_at - result.uuid_sent_at < 1.0


def test_uuid_and_hangup_write_times_bracket_the_call():
    with AudioSocketServer() as server:
        begun = time.time()
        result = run(place_call("127.0.0.1", server.port, seconds=0.3, record=False))
        ended = time.time()
        assert run(place_call("127.0.0.1", server.port, seconds=0.2, hangup=False)).hangup_sent_at is None
    assert begun <= result.uuid_sent_at < result.hangup_sent_at <= ended
    assert result.hangup_sent_at - result.uuid_sent_at >= 0.3 - 0.01


def test_call_refuses_bad_arguments_at_construction():
    with pytest.raises(ValueError, match="11025 Hz"):
        Call("127.0.0.1", 1, rate=11025)
    with pytest.raises(ValueError, match="invalid DTMF digit"):
        Call("127.0.0.1", 1, dtmf="x")
    with pytest.raises(TypeError):
        Call("127.0.0.1", 1, uuid.uuid4())  # everything after the address is keyword-only


def test_server_hangup_ends_the_call_early():
    with AudioSocketServer("hangup", after=10) as server:
        result = run(place_call("127.0.0.1", server.port, seconds=3.0))
        server.session()
    assert result.hung_up_by == "server"
    assert result.error is None
    assert result.frames_received == 10
    assert result.frames_sent < 100


def test_server_close_ends_the_call_early():
    with AudioSocketServer("close", after=5) as server:
        result = run(place_call("127.0.0.1", server.port, seconds=3.0))
    assert result.hung_up_by == "closed"
    assert result.frames_received == 5
    assert result.frames_sent < 100


@pytest.mark.parametrize("behaviour, words", [("dtmf", "0x03"), ("garbage", "odd_payload")])
def test_protocol_error_from_the_server_is_recorded_not_raised(behaviour, words):
    with AudioSocketServer(behaviour, after=5) as server:
        result = run(place_call("127.0.0.1", server.port, seconds=3.0))
    assert result.hung_up_by == "error"
    assert words in result.error
    assert result.frames_received == 5


def test_audio_at_another_rate_is_counted_not_recorded():
    with AudioSocketServer("wrong_rate", after=5) as server:
        result = run(place_call("127.0.0.1", server.port, seconds=0.4))
    assert result.hung_up_by == "client"
    assert "16000 Hz" in result.error
    assert result.frames_received >= result.frames_sent - 1
    assert len(result.recorded) == 5 * 160


def test_refused_connection_raises_naming_the_address():
    port = refused_port()
    with pytest.raises(CallConnectError, match=f"127.0.0.1:{port}"):
        run(place_call("127.0.0.1", port, seconds=0.2))


@pytest.mark.parametrize("arguments", [
    {"dtmf": "1x"},
    {"dtmf": "123", "dtmf_at": 0.9, "seconds": 1.0},
    {"rate": 11025},
    {"seconds": 0},
    {"source": numpy.zeros(10, dtype=numpy.float32)},
])
def test_bad_arguments_are_refused_before_connecting(arguments):
    with pytest.raises(ValueError):
        run(place_call("127.0.0.1", refused_port(), **arguments))


# ---- audiogw call ---------------------------------------------------------------


def test_call_command_prints_uuid_frames_and_pacing():
    call_uuid = uuid.uuid4()
    with AudioSocketServer() as server:
        outcome = CliRunner().invoke(call_command, [
            f"127.0.0.1:{server.port}", "--uuid", str(call_uuid), "--seconds", "0.4",
            "--tone", "440", "--dtmf", "7", "--dtmf-at", "0.1",
        ])
        session = server.session()
    assert outcome.exit_code == 0, outcome.output
    assert str(call_uuid) in outcome.output
    assert "frames: sent 20, received" in outcome.output
    assert "pacing:" in outcome.output and "gaps over 40 ms" in outcome.output
    assert session.call_uuid == call_uuid and session.digits == "7" and session.got_hangup


def test_call_command_json_and_wav_play_and_record(tmp_path):
    played = tmp_path / "in.wav"
    recorded = tmp_path / "out.wav"
    write_wav(played, tone(500.0, 0.4, 48000), 48000)
    with AudioSocketServer() as server:
        outcome = CliRunner().invoke(call_command, [
            f"127.0.0.1:{server.port}", "--play", str(played), "--record", str(recorded),
            "--seconds", "0.4", "--json",
        ])
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout)
    assert uuid.UUID(report["uuid"])
    assert report["frames_sent"] == 20
    assert report["frames_received"] >= 19
    assert report["hung_up_by"] == "client"
    assert set(report["pacing"]) >= {"frames", "p50_deviation_ms", "p99_deviation_ms", "max_gap_ms", "gaps_over_40ms"}
    assert report["pacing"]["frames"] == report["frames_received"]
    back = read_wav(recorded, 8000)
    assert len(back) == report["frames_received"] * 160
    numpy.testing.assert_array_equal(back, read_wav(played, 8000)[: len(back)])


def test_call_command_refused_port_exits_1_naming_the_address():
    port = refused_port()
    outcome = CliRunner().invoke(call_command, [f"127.0.0.1:{port}", "--seconds", "0.2"])
    assert outcome.exit_code == 1
    assert f"127.0.0.1:{port}" in outcome.stderr


def test_call_command_protocol_error_exits_1():
    with AudioSocketServer("dtmf", after=3) as server:
        outcome = CliRunner().invoke(call_command, [f"127.0.0.1:{server.port}", "--seconds", "1"])
    assert outcome.exit_code == 1
    assert "0x03" in outcome.stderr


@pytest.mark.parametrize("address", ["nonsense", "host:", ":5000", "host:port", "host:0", "host:65536",
                                     "::1:5000", "[::1]", "[nothost]:5000", "[::1]5000"])
def test_call_command_refuses_garbage_addresses(address):
    outcome = CliRunner().invoke(call_command, [address])
    assert outcome.exit_code == 2
    assert "HOST:PORT" in outcome.output or "port" in outcome.output.lower()


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:40000", ("127.0.0.1", 40000)),
    ("pbx.example.net:1", ("pbx.example.net", 1)),
    ("[::1]:65535", ("::1", 65535)),
    ("[2001:db8::7]:4000", ("2001:db8::7", 4000)),
])
def test_parse_host_port(text, expected):
    assert parse_host_port(text) == expected


def test_call_command_over_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    port = refused_port()
    outcome = CliRunner().invoke(call_command, [f"[::1]:{port}", "--seconds", "0.2"])
    assert outcome.exit_code == 1
    assert f"[::1]:{port}" in outcome.stderr


def test_call_command_rejects_bad_dtmf_and_both_sources(tmp_path):
    played = tmp_path / "in.wav"
    write_wav(played, tone(500.0, 0.1, 8000), 8000)
    outcome = CliRunner().invoke(call_command, ["127.0.0.1:9", "--dtmf", "12x"])
    assert outcome.exit_code == 2 and "DTMF" in outcome.output
    outcome = CliRunner().invoke(call_command, ["127.0.0.1:9", "--play", str(played), "--tone", "440"])
    assert outcome.exit_code == 2


def test_call_command_tone_can_start_late_and_stop_early():
    with AudioSocketServer() as server:
        outcome = CliRunner().invoke(call_command, [
            f"127.0.0.1:{server.port}", "--seconds", "1.0", "--tone", "440", "--tone-at", "0.3", "--tone-seconds", "0.4",
        ])
        session = server.session()
    assert outcome.exit_code == 0, outcome.output
    samples = numpy.frombuffer(bytes(session.audio), dtype="<i2").astype(float)
    loud = numpy.sqrt((samples[: samples.size // 160 * 160].reshape(-1, 160) ** 2).mean(axis=1)) > 1000
    assert loud.size == 50
    assert not loud[:15].any() and loud[15:35].all() and not loud[35:].any()  # silence, 0.4 s of tone, silence


@pytest.mark.parametrize("arguments", [
    ["--tone-at", "0.5"],  # no --tone to shape
    ["--tone", "440", "--tone-at", "2", "--seconds", "1"],  # starts after the call ends
])
def test_call_command_refuses_a_tone_shape_that_cannot_be(arguments):
    outcome = CliRunner().invoke(call_command, [f"127.0.0.1:{refused_port()}", *arguments])
    assert outcome.exit_code == 2, outcome.output

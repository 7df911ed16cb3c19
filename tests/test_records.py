"""A standalone worker's ready file and leg records, in-process: their shapes and who writes them."""
from __future__ import annotations

import threading
import types
import uuid

import pytest

from audiogw.shared.records import LegRecord, WorkerReady, encode, read_leg_records, read_ready, write_ready
from audiogw.worker import records as worker_records
from audiogw.worker.records import RecordWriter


def _record(**changes) -> LegRecord:
    fields = dict(extension="1201", leg="ia", uuid=str(uuid.uuid4()), reason="peer_hangup", duration=1.5,
                  frames_received=75, frames_sent=74, underruns=0, late_frames=0, max_send_gap_ms=20.4,
                  dropped={"inbound_flood": 0, "latency": 2}, dtmf="5")
    return LegRecord(**{**fields, **changes})


def test_leg_records_round_trip_and_a_line_still_being_written_is_left_out(tmp_path):
    path = tmp_path / "legs.jsonl"
    assert read_leg_records(path) == []
    first, second = _record(), _record(leg="retorno", app={"barge_in_ms": [88.0]})
    path.write_bytes(encode(first) + b"\n" + encode(second) + b"\n" + encode(_record())[:20])
    assert read_leg_records(path) == [first, second]


def test_the_ready_file_appears_whole_or_not_at_all(tmp_path):
    path = tmp_path / "ready.json"
    assert read_ready(path) is None
    ready = WorkerReady(extension="1201", pid=42, app="echo", ports={"ia": 4000, "retorno": 4001})
    write_ready(path, ready)
    assert read_ready(path) == ready
    assert [entry.name for entry in tmp_path.iterdir()] == ["ready.json"]  # no temporary file left


def test_the_writer_encodes_and_writes_on_its_own_thread_not_the_callers(tmp_path, monkeypatch):
    threads: list[str] = []
    real_encode = worker_records.encode

    def noting_encode(record):
        threads.append(threading.current_thread().name)
        return real_encode(record)

    monkeypatch.setattr(worker_records, "encode", noting_encode)
    writer = RecordWriter(str(tmp_path / "ready.json"), str(tmp_path / "legs.jsonl"))
    socket_of = lambda port: types.SimpleNamespace(getsockname=lambda: ("127.0.0.1", port))  # noqa: E731
    worker = types.SimpleNamespace(extension="1201", app=types.SimpleNamespace(name="echo"), on_leg_end=None,
                                   servers={"ia": types.SimpleNamespace(sockets=[socket_of(4000)]),
                                            "retorno": types.SimpleNamespace(sockets=[socket_of(4001)])})
    writer.attach(worker)
    leg = types.SimpleNamespace(extension="1201", kind="ia", uuid=uuid.uuid4(), end_reason="peer_closed",
                                started_at=0.0, frames_received=3, frames_sent=4, underruns=1, late_frames=0,
                                max_send_gap=0.0204, flood_dropped=5,
                                outbound=types.SimpleNamespace(latency_dropped=6), dtmf_received="12",
                                app_figures={"barge_in_ms": [91.5]})
    worker.on_leg_end(leg)
    writer.close()
    assert read_ready(tmp_path / "ready.json").ports == {"ia": 4000, "retorno": 4001}
    [record] = read_leg_records(tmp_path / "legs.jsonl")
    assert (record.uuid, record.reason, record.frames_received, record.frames_sent, record.underruns) == (
        str(leg.uuid), "peer_closed", 3, 4, 1)
    assert record.dropped == {"inbound_flood": 5, "latency": 6} and record.max_send_gap_ms == 20.4
    assert record.dtmf == "12" and record.app == {"barge_in_ms": [91.5]}
    assert threads == ["records"], "the caller (the event loop) only queues"


def test_a_path_the_worker_cannot_write_fails_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError):
        RecordWriter(leg_records=str(tmp_path / "missing" / "legs.jsonl"))
    with pytest.raises(FileNotFoundError) as refused:
        RecordWriter(ready_file=str(tmp_path / "missing" / "ready.json"))
    assert refused.value.filename == str(tmp_path / "missing" / "ready.json")

"""Call records from supervisor-run workers (``supervisor.leg_records``): one JSON line per ended leg.

Programs (the benchmarks, an operator's tooling) read per-leg figures from
these records, never from the log. A real supervisor, real calls, real files.
"""
from __future__ import annotations

import msgspec

from audiogw.shared.audiosocket import encode_audio, encode_dtmf
from audiogw.shared.net import free_port_block
from audiogw.shared.records import LegRecord, leg_records_file, read_leg_records_folder
from conftest import hang_up, raw_connect, wait_for
from supervisor_fixture import SupervisorProcess, write_config


def _calls_on_both_legs(gateway: SupervisorProcess, extension_index: int) -> None:
    for port in (gateway.base_port + 2 * extension_index, gateway.base_port + 2 * extension_index + 1):
        sock = raw_connect(port)
        sock.sendall(encode_dtmf("4") + encode_audio(bytes(320)) * 3)
        hang_up(sock)


def test_supervisor_run_workers_write_a_record_per_ended_leg(tmp_path) -> None:
    free_block = free_port_block(20)
    config = write_config(tmp_path, free_block)
    text = config.read_text().replace('state_dir = "state"', 'state_dir = "state"\nleg_records = "calls"')
    config.write_text(text)
    gateway = SupervisorProcess(tmp_path, config, free_block).start()
    try:
        _calls_on_both_legs(gateway, 0)
        _calls_on_both_legs(gateway, 1)
        folder = tmp_path / "calls"
        records = wait_for(lambda: len(found := read_leg_records_folder(folder)) == 4 and found,
                           what="four leg records")
        assert {(record.extension, record.leg) for record in records} == {
            ("1201", "ia"), ("1201", "retorno"), ("1202", "ia"), ("1202", "retorno")}
        for record in records:
            assert isinstance(record, LegRecord)
            assert record.frames_received == 3 and record.dtmf == "4"
            assert record.reason == "peer_closed"
        # One file per extension, each line a whole LegRecord.
        lines = (folder / "1201.jsonl").read_bytes().splitlines()
        assert len(lines) == 2
        assert msgspec.json.decode(lines[0], type=LegRecord).extension == "1201"
        assert leg_records_file(str(folder), "1201") == str(folder / "1201.jsonl")
    finally:
        gateway.stop()


def test_a_folder_that_cannot_be_created_costs_the_records_not_the_calls(tmp_path) -> None:
    free_block = free_port_block(20)
    (tmp_path / "blocked").write_text("a file where the folder should be")
    config = write_config(tmp_path, free_block, extensions=1)
    text = config.read_text().replace('state_dir = "state"', 'state_dir = "state"\nleg_records = "blocked/calls"')
    config.write_text(text)
    gateway = SupervisorProcess(tmp_path, config, free_block).start()
    try:
        _calls_on_both_legs(gateway, 0)
        wait_for(lambda: "workers run without leg records" in gateway.log(), what="the refusal in the log")
        assert [row["state"] for row in gateway.ctl("list")] == ["running"]
    finally:
        gateway.stop()

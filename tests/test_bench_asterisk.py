"""`audiogw bench-asterisk`, end to end at a tiny size: a real Asterisk, a real supervisor, real receivers.

No thresholds on pacing (a shared test machine is no place for them): the test
checks the report's structure and that audio flowed both ways it should.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy
import pytest

from audiogw.bench.asterisk import source_summary

try:
    from asterisk_fixture import asterisk_binary  # noqa: F401 - the shared fixture (skips without Asterisk)
except ImportError:  # pragma: no cover - before the fixture existed
    from audiogw.client.asterisk import find_asterisk

    @pytest.fixture(scope="session")
    def asterisk_binary() -> str:
        binary = find_asterisk()
        if binary is None:
            pytest.skip("no Asterisk: set AUDIOGW_ASTERISK or run `bash ../shared/asterisk/build.sh`")
        return binary


def test_source_summary_counts_gaps_and_missing_frames():
    start = 1000.0
    steady = start + 0.01 + 0.02 * numpy.arange(100)  # 2 s of frames, 20 ms apart
    gapped = numpy.delete(steady, [50, 51])  # one 60 ms gap
    calls = [{"arrivals": steady, "late_reads": 0}, {"arrivals": gapped, "late_reads": 3}]
    summary = source_summary(calls, planned=3, start=start, seconds=2.0)
    assert summary["calls_connected"] == 2
    assert summary["frames_expected_in_window"] == 300  # the call that never came counts as missing
    assert summary["frames_received_in_window"] == 198
    assert summary["gaps_over_40ms"] == 1
    assert summary["max_gap_ms"] == pytest.approx(60.0)
    assert summary["late_reads"] == 3


@pytest.mark.timeout(120)
def test_quick_bench_asterisk_end_to_end(asterisk_binary, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIOGW_ASTERISK", asterisk_binary)
    results = tmp_path / "results"
    completed = subprocess.run(
        [sys.executable, "-m", "audiogw.bench.asterisk", "--quick", "--modes", "default",
         "--relay-calls", "1", "--echo-calls", "1", "--seconds", "2", "--extensions", "1",
         "--results", str(results)],
        capture_output=True, text=True, timeout=110)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| default | 1+1 | audiogw |" in completed.stdout
    report = json.loads((results / "report.json").read_text())
    assert (results / "report.md").read_text().startswith("# audiogw beside Asterisk")
    assert report["code"]["head"]
    [mode] = report["modes"]
    assert mode["mode"] == "default" and mode["scheduling"]["workers"]
    relay, echo = mode["scenarios"]
    assert relay["scenario"] == "relay" and echo["scenario"] == "echo"
    for name in ("audiogw", "milliwatt"):
        source = relay["sources"][name]
        assert source["calls_connected"] == 1, (name, relay)
        assert source["frames_received_in_window"] > source["frames_expected_in_window"] // 2, (name, source)
    assert relay["sources"]["audiogw"]["frames_sent_by_workers"] > 0
    assert relay["p99_ratio"] is not None
    assert set(relay["window"]["cpu"]) >= {"workers_playback", "asterisk", "receivers"}
    assert echo["legs_logged"] == 1
    assert echo["frames_received_by_workers"] > 0 and echo["frames_sent_by_workers"] > 0
    assert echo["worker_max_send_gap_ms"]["median"] > 0
    assert relay["originate_error_count"] == 0 and echo["originate_error_count"] == 0
    assert report["asterisk_errors"] == []
    assert {check["check"] for check in report["checks"]} == {"run time"}  # targets only at full size

"""Smoke run of the worker benchmark: a real worker, 4 calls x 2 s, report structure only.

No timing assertions: pacing on a shared test machine belongs to the real
benchmark run, not to the test suite.
"""
from __future__ import annotations

import json

import pytest

from audiogw.bench import worker as bench_worker

pytestmark = pytest.mark.timeout(30)


def test_bench_worker_smoke(capsys):
    status = bench_worker.main(["--calls", "4", "--seconds", "2", "--spread", "0.2", "--json"])
    out = capsys.readouterr().out
    assert status == 0, out
    report = json.loads(out)

    assert set(report) >= {"config", "calls", "frames", "pacing", "client", "worker", "checks", "verdict"}
    assert report["verdict"] in ("PASS", "FAIL")
    assert report["calls"]["placed"] == 4
    assert report["calls"]["completed"] == 4, report["calls"]["failure_reasons"]
    assert report["calls"]["by_leg"] == {"ia": 2, "retorno": 2}

    frames = report["frames"]
    assert frames["expected_per_call"] == 100
    assert "UUID" in frames["expected_means"]
    assert frames["received_in_window"]["min"] > 0  # frames flowed back from the worker

    for key in ("whole_call", "after_first_0.2s", "whole_call_without_late_read_calls",
                "after_first_0.2s_without_late_read_calls"):
        stats = report["pacing"][key]
        assert {"p50_deviation_ms", "p99_deviation_ms", "max_deviation_ms", "max_gap_ms",
                "gaps_over_40ms", "frames", "calls"} <= set(stats)
    assert report["pacing"]["whole_call"]["frames"] > 0
    assert report["pacing"]["after_first_0.2s"]["frames"] < report["pacing"]["whole_call"]["frames"]

    assert set(report["checks"]) == {"p99_deviation_ms", "gaps_over_40ms", "calls_within_1_of_expected"}
    assert all(isinstance(check["pass"], bool) for check in report["checks"].values())
    assert report["client"]["calls_with_late_reads"] >= 0
    worker = report["worker"]
    assert worker["rss_mb_max"] > 0
    assert worker["cpu_percent_mean"] >= 0
    assert worker["legs_logged"] == 4


def test_bench_worker_text_report(capsys):
    status = bench_worker.main(["--calls", "2", "--seconds", "1", "--spread", "0.1", "--legs", "ia"])
    out = capsys.readouterr().out
    assert status == 0, out
    for text in ("calls: 2 completed, 0 failed", "expected 50", "first 0.2 s of each call excluded",
                 "late_reads", "worker resources", "verdict:"):
        assert text in out, out

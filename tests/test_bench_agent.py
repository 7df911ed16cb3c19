"""The agent benchmark: its pure figures on series with known answers, and one tiny real run.

No timing targets are asserted: a shared test machine's timing belongs to the
real benchmark run; here only that the run completes and its figures make sense.
"""
from __future__ import annotations

import json

import numpy
import pytest

from audiogw.bench import agent as bench_agent
from audiogw.bench.agent import (
    FRAME,
    audio_intact,
    barge_reaction,
    chunk_latencies,
    gap_contexts,
    interval_summary,
    loud_frames,
    reply_schedule,
    split_near_bursts,
    summary_ms,
)

LOUD = numpy.full(FRAME, 5000, dtype=numpy.int16)
QUIET = numpy.zeros(FRAME, dtype=numpy.int16)


def frames(pattern: str) -> numpy.ndarray:
    """Recorded audio from a pattern such as 'LLQ' (loud, loud, quiet)."""
    return numpy.concatenate([LOUD if char == "L" else QUIET for char in pattern])


def ticks(count: int, start: float = 100.0) -> numpy.ndarray:
    return start + 0.02 * numpy.arange(count)


# ----------------------------------------------------------------------------- pure figures
def test_loud_frames_and_summary():
    assert loud_frames(frames("LQL")).tolist() == [True, False, True]
    assert loud_frames(numpy.concatenate([frames("L"), QUIET[:10]])).tolist() == [True]  # partial frame ignored
    summary = summary_ms([0.010, 0.020, 0.030])
    assert summary["count"] == 3 and summary["p50"] == pytest.approx(20.0) and summary["max"] == pytest.approx(30.0)
    assert summary_ms([])["count"] == 0


def test_reply_schedule_keeps_only_replies_heard_before_the_hangup():
    assert reply_schedule(10.0) == [0.3, 2.0, 6.5]  # the second queues behind the first: ends at 6.3
    assert reply_schedule(4.0) == [0.3]
    assert reply_schedule(3.0) == []
    assert reply_schedule(20.0) == [0.3, 2.0, 6.5, 10.3, 12.0, 16.5]


def test_audio_intact_catches_loss_and_reordering():
    reply = numpy.concatenate([numpy.full(FRAME, 3000, dtype=numpy.int16), numpy.full(FRAME, -4000, dtype=numpy.int16)])
    recorded = numpy.concatenate([QUIET, reply, QUIET, reply])
    assert audio_intact(recorded, loud_frames(recorded), reply, 2)
    assert not audio_intact(recorded, loud_frames(recorded), reply, 3)
    swapped = numpy.concatenate([QUIET, reply[FRAME:], reply[:FRAME], reply])
    assert not audio_intact(swapped, loud_frames(swapped), reply, 2)


def test_barge_reaction_from_onset_to_first_quiet_frame():
    arrivals = ticks(10)
    loud = loud_frames(frames("LLLLLQQQQQ"))
    measure = barge_reaction(arrivals, loud, onset_sent=arrivals[3] + 0.005)  # frame 4 arrives 15 ms later
    assert measure.problem is None
    assert measure.reaction == pytest.approx(0.02 * 5 - 0.02 * 3 - 0.005)
    assert measure.leaked_frames == 0
    leaking = barge_reaction(arrivals, loud_frames(frames("LLLLLQQLQQ")), arrivals[3] + 0.005)
    assert leaking.leaked_frames == 1
    assert barge_reaction(arrivals, loud_frames(frames("QQQQQQQQQQ")), arrivals[3]).problem == \
        "agent audio was not playing at the onset"
    assert barge_reaction(arrivals, loud_frames(frames("L" * 10)), arrivals[3] + 0.001).problem == \
        "agent audio never stopped"


def test_chunk_latencies_match_each_chunk_to_its_frame():
    arrivals = ticks(30)
    loud = loud_frames(frames("QQQLQQQQQQLQQQQQQQQQQQQQQQQQQQ"))  # frames 3 and 10 carry chunks
    sent = [arrivals[3] - 0.007, arrivals[10] - 0.013, arrivals[20] - 0.004, arrivals[29] + 0.5]
    measured = chunk_latencies(arrivals, loud, sent)
    assert measured.latencies == pytest.approx([0.007, 0.013])
    assert measured.unheard == 1  # the third chunk never played
    assert measured.after_call == 1  # the fourth was sent after the call's last frame


def test_gap_contexts_place_gaps_after_bursts():
    arrivals = numpy.concatenate([ticks(5), ticks(5, start=100.0 + 0.08 + 0.07)])
    gaps = gap_contexts(arrivals, origin=100.0, bursts=[100.01, 100.05])
    assert len(gaps) == 1
    assert gaps[0]["gap_ms"] == pytest.approx(70.0)
    assert gaps[0]["at_s"] == pytest.approx(0.08)
    assert gaps[0]["after_burst_ms"] == pytest.approx(30.0)
    assert gap_contexts(arrivals, 100.0, bursts=[101.0])[0]["after_burst_ms"] is None


def test_split_near_bursts_and_interval_summary():
    arrivals = ticks(20)  # intervals end at 100.02 ... 100.38
    near, away = split_near_bursts([arrivals], bursts=[100.10], horizon=0.05)
    assert near.size == 3 and away.size == 16  # ends at 100.10, 100.12, 100.14 are within 50 ms
    summary = interval_summary(numpy.array([0.020, 0.021, 0.050]))
    assert summary["intervals"] == 3 and summary["gaps_over_40ms"] == 1
    assert summary["max_gap_ms"] == pytest.approx(50.0)
    assert interval_summary(numpy.empty(0))["intervals"] == 0


# ----------------------------------------------------------------------------- a tiny real run
@pytest.mark.timeout(30)
def test_bench_agent_end_to_end(capsys):
    status = bench_agent.main(["--calls", "2", "--seconds", "4", "--spread", "0.2", "--barge-calls", "2",
                               "--latency-calls", "1", "--latency-seconds", "3", "--json"])
    out = capsys.readouterr().out
    assert status == 0, out
    report = json.loads(out)
    assert set(report) >= {"config", "pacing", "barge_in", "latency", "worker", "checks", "verdict"}
    assert report["verdict"] in ("PASS", "FAIL")
    assert set(report["checks"]) == {
        "pacing_p99_deviation_ms", "pacing_gaps_over_40ms", "pacing_replies_heard_intact",
        "barge_in_reaction_p95_ms", "barge_in_calls_measured", "latency_p95_ms",
    }
    assert all(isinstance(item["pass"], bool) for item in report["checks"].values())

    pacing = report["pacing"]
    assert pacing["calls"]["completed"] == 2 and pacing["calls"]["agent_sessions"] == 2
    assert pacing["whole_call"]["frames"] > 0
    assert set(pacing["by_chunk"]) == {"20ms", "37ms"}
    assert pacing["near_bursts"]["intervals"] + pacing["away_from_bursts"]["intervals"] == \
        pacing["whole_call"]["frames"] - 2  # every interval of both calls, in one set or the other
    audio = pacing["agent_audio"]
    assert audio["calls_intact"] == 2, audio  # one 3 s reply each, heard whole
    assert audio["frames_heard_per_call"]["min"] == audio["frames_per_reply"] == 150
    assert audio["marks_not_echoed"] == 0

    barge = report["barge_in"]
    assert barge["calls"]["completed"] == 2
    assert barge["reaction_ms"]["count"] == 2, barge["unmeasured"]  # measured for each call
    assert 0 < barge["reaction_ms"]["min"] <= barge["reaction_ms"]["max"] < 1000
    assert barge["worker_view_ms"]["count"] == 2  # the worker recorded each barge-in (its leg records)
    assert barge["agent_told_ms"]["count"] == 2  # and told the agent
    assert barge["agent_frames_after_stop"] == 0

    latency = report["latency"]
    assert latency["latency_ms"]["count"] >= 5  # one chunk per 200-300 ms from 0.5 s of a 3 s call
    assert 0 < latency["latency_ms"]["min"] <= latency["latency_ms"]["max"] < 1000
    assert latency["chunks_unheard"] == 0

    worker = report["worker"]
    assert worker["legs_logged"] == 5
    assert set(worker["usage"]) == {"pacing", "barge_in", "latency"}

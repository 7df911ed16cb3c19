"""The doorman benchmark: one tiny real run through the real Asterisk (AMI on).

No timing target is asserted (a shared test machine's timing belongs to the real
benchmark run): only that every step happened and the figures are there.
"""
from __future__ import annotations

import json

import numpy

from audiogw.bench import doorman


def test_the_correlation_finds_the_tone_it_looks_for_and_not_another() -> None:
    heard = doorman.tone(doorman.RESIDENT_HZ, 1.5)
    assert doorman._hears(heard, doorman.RESIDENT_HZ)
    assert not doorman._hears(heard, doorman.VISITOR_HZ)
    assert not doorman._hears(numpy.zeros(12000, dtype=numpy.int16), doorman.RESIDENT_HZ)


def test_a_tiny_run_dials_bridges_and_measures_both_legs(asterisk_binary, capsys, monkeypatch) -> None:
    monkeypatch.setenv("AUDIOGW_ASTERISK", asterisk_binary)
    assert doorman.main(["--conversations", "2", "--pacing-conversations", "1", "--pacing-seconds", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    through = report["asterisk"]
    assert through["failures"] == []
    assert through["dial_to_start_ms"]["n"] == 2
    for side in ("visitor", "resident"):
        assert through["bridge_to_first_frame_ms"][side]["n"] == 2
        pacing = report["bridged_pacing"][side]
        assert pacing["frames"] > 50 and pacing["heard_the_other_side"] == 1, pacing
    assert report["worker_restarts"] == {"1201": 0}

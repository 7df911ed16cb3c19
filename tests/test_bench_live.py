"""The live-audio benchmark: its settling arithmetic, and one short real run."""
from __future__ import annotations

import re
import subprocess
import sys

from audiogw.bench.live import settled_after


def test_settled_after_is_the_time_from_which_every_delay_stays_in_bound():
    resume = 1.5
    delays = [(0.5, 0.03), (1.0, 0.52), (1.4, 0.12), (1.6, 0.30), (1.9, 0.15), (2.1, 0.09), (2.5, 0.05)]
    assert abs(settled_after(delays, resume, 0.16) - (1.6 - 1.5 + 0.02)) < 1e-9
    assert settled_after([(1.6, 0.05), (2.0, 0.05)], resume, 0.16) == 0.0
    assert settled_after([(1.6, 0.05), (2.0, 0.9)], resume, 0.16) is None, "still late at the end: never settled"


def test_a_short_run_reports_first_frames_and_a_stall_that_settles():
    completed = subprocess.run([sys.executable, "-m", "audiogw.bench.live", "--stalls", "1", "--connects", "3"],
                               capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert re.search(r"first frame after the UUID, rate=16000: p50 [\d.]+ ms", out)
    assert re.search(r"first frame after the UUID, rate=auto, caller silent: p50 [\d.]+ ms", out)
    peak = int(re.search(r"stall 1: echo delay before \d+ ms, peak (\d+) ms", out).group(1))
    assert peak >= 400, "the 500 ms freeze shows in the echo's delay"
    assert "after a 500 ms stall the echo delay is back within" in out

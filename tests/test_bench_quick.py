"""A very small real `audiogw bench`, end to end: real gateways, load processes, report files.

No thresholds on pacing (a shared test machine is no place for them), except
the one a stall makes certain: a 300 ms sleep on an event loop must show up as
gaps over 40 ms on every extension that loop serves. That proves the stall
injection works, in the real supervisor and in the single-loop baseline.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import numpy
import pytest

from audiogw.bench.isolation import bench_command
from audiogw.bench.report import write_report
from audiogw.bench.scenarios import BenchSettings, ScenarioResult, _freeze, _process_state
from audiogw.bench.stats import CallOutcome, group_summary
from conftest import realtime_allowed

pytestmark = pytest.mark.timeout(90)


def test_tiny_bench_end_to_end(tmp_path, capsys):
    results = tmp_path / "results"
    args = ["--extensions", "2", "--calls-per-extension", "2", "--seconds", "2",
            "--scenarios", "baseline-single-loop-stall,per-extension-stall,crash,capacity",
            "--capacity-start", "2", "--capacity-step", "2", "--capacity-max", "2", "--capacity-seconds", "1",
            "--results", str(results), "--json"]
    bench_command.main(args=args, prog_name="audiogw bench", standalone_mode=False)
    report = json.loads(capsys.readouterr().out)

    names = [scenario["name"] for scenario in report["scenarios"]]
    assert names == ["baseline-single-loop-stall", "per-extension-stall", "crash"]
    for scenario in report["scenarios"]:
        for key in ("target", "others"):
            group = scenario["groups"][key]
            assert group["calls"] == 2
            assert group["frames_expected"] == 200
            assert 0 < group["frames_received"] <= 202
            assert {"p50_deviation_ms", "p99_deviation_ms", "max_gap_ms", "gaps_over_40ms", "refused"} <= set(group)
        assert scenario["resources"]["gateway"]["cpu_percent"] > 0
        assert scenario["resources"]["gateway"]["rss_mb"] > 0
        assert scenario["machine"]["wakeups"] > 100  # the idle probe ran alongside
    by_name = {scenario["name"]: scenario for scenario in report["scenarios"]}

    # The stall is real: the stalled extension has gaps over 40 ms in both designs...
    for name in ("baseline-single-loop-stall", "per-extension-stall"):
        assert by_name[name]["groups"]["target"]["gaps_over_40ms"] > 0, by_name[name]
        assert by_name[name]["groups"]["target"]["max_gap_ms"] > 250
    # ...and on one shared loop the other extension suffers it too.
    assert by_name["baseline-single-loop-stall"]["groups"]["others"]["gaps_over_40ms"] > 0
    assert set(by_name["per-extension-stall"]["resources"]) >= {"target", "others", "supervisor", "load", "gateway"}

    crash = by_name["crash"]["crash"]
    assert crash["killed_pid"] and crash["new_pid"] and crash["new_pid"] != crash["killed_pid"]
    assert crash["serves_again_ms"] is not None and crash["serves_again_ms"] > 0
    assert by_name["crash"]["groups"]["target"]["completed"] < 2  # its calls in progress died with it

    capacity = report["capacity"]
    assert [step["calls"] for step in capacity["steps"]] == [2]
    assert "last_held_calls" in capacity and capacity["limit"]
    # The workers' own view comes from their leg records (supervisor.leg_records), not the log.
    assert capacity["steps"][0]["worker_max_send_gap_ms"] is not None
    assert all(isinstance(check["check"], str) and check["pass"] in (True, False, None) for check in report["checks"])

    markdown = (results / "report.md").read_text()
    assert "| scenario | group |" in markdown and "per-extension-stall" in markdown
    assert "**Capacity**" in markdown
    assert json.loads((results / "report.json").read_text())["command"].startswith("audiogw bench --extensions 2")
    plots = report["plots"]
    if importlib.util.find_spec("matplotlib") is None:
        assert plots["files"] == [] and "matplotlib" in plots["skipped"]
    else:
        assert plots["files"] == ["interval_cdf.png", "gap_timeline.png"]
        for name in plots["files"]:
            assert (results / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stall_rounds_alternate_and_the_check_compares_median_rounds(tmp_path, capsys):
    results = tmp_path / "results"
    args = ["--extensions", "2", "--calls-per-extension", "1", "--seconds", "2", "--stall-rounds", "2",
            "--scenarios", "per-extension-sigstop,per-extension,per-extension-stall", "--results", str(results),
            "--json"]
    bench_command.main(args=args, prog_name="audiogw bench", standalone_mode=False)
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    labels = [line.split("bench: ", 1)[1].split(" (round")[0] for line in captured.err.splitlines()
              if line.startswith("bench: ") and "(round" in line]
    assert labels == ["per-extension", "per-extension-stall", "per-extension-sigstop"] * 2  # alternately

    by_name = {scenario["name"]: scenario for scenario in report["scenarios"]}
    assert list(by_name) == ["per-extension", "per-extension-stall", "per-extension-sigstop"]
    for scenario in by_name.values():
        rounds = scenario["rounds"]
        assert len(rounds) == 2
        # The row shown is the median round (the lower of two).
        assert scenario["groups"]["others"]["p99_deviation_ms"] == min(
            entry["others_p99_deviation_ms"] for entry in rounds)
    stalled_rounds = by_name["per-extension-stall"]["rounds"]
    assert all(entry["target_gaps_over_40ms"] > 0 for entry in stalled_rounds)  # the stall, in every round
    ratio = report["checks"][0]
    assert "median of 2 alternating rounds" in ratio["check"]
    assert report["checks"][2]["measured"] == ", ".join(str(entry["target_gaps_over_40ms"]) for entry in stalled_rounds)
    assert "Rounds — these ran alternately" in (results / "report.md").read_text()

    # SIGSTOP: the benchmark really froze the worker (the kernel showed it stopped), for 0.3 s each
    # time, the freeze shows as the frozen extension's gaps in every round, and the worker kept its pid
    # (stopped, not restarted by the supervisor).
    frozen = by_name["per-extension-sigstop"]
    freeze = frozen["freeze"]
    assert freeze["stops"] >= 1 and freeze["stops_seen"] == freeze["stops"]
    assert all(300.0 <= length < 400.0 for length in freeze["stopped_ms"])
    assert freeze["new_pid"] == freeze["pid"]
    assert frozen["stall"]["kind"] == "sigstop" and frozen["groups"]["target"]["label"].startswith("frozen")
    assert all(entry["target_gaps_over_40ms"] > 0 for entry in frozen["rounds"])
    assert frozen["groups"]["target"]["max_gap_ms"] > 250
    assert frozen["groups"]["others"]["completed"] == 1
    # Every SIGCONT is a resume the others' intervals are folded on; the sleep stall's come from its calls' audio.
    assert frozen["after_resume"]["resumes"] == freeze["stops"]
    assert by_name["per-extension-stall"]["after_resume"]["resumes"] >= 1
    assert "After the resume" in (results / "report.md").read_text()
    sigstop_checks = [check for check in report["checks"] if check["check"].startswith("per-extension + SIGSTOP")]
    assert len(sigstop_checks) == 3 and "median of 2 alternating rounds" in sigstop_checks[0]["check"]


class _OneWorker:
    """Stands in for the supervisor gateway: one "worker" pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def worker_pid(self, extension: str) -> int:
        return self.pid


def test_freeze_stops_and_continues_a_process_on_schedule_and_never_leaves_it_stopped():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        settings = BenchSettings(stall_seconds=0.2, stall_every=0.5)
        began = time.time()
        freeze = _freeze(_OneWorker(sleeper.pid), "1201", began, began + 1.1, settings)
        assert len(freeze["stops_at"]) == 2 and freeze["stops_seen"] == 2  # 0.0 and 0.5; 1.0 + 0.2 > 1.1
        assert [round(at - began, 1) for at in freeze["stops_at"]] == [0.0, 0.5]
        assert all(200.0 <= length < 300.0 for length in freeze["stopped_ms"])
        assert _process_state(sleeper.pid) not in ("T", "")  # running again
    finally:
        sleeper.kill()
        sleeper.wait()
    gone = _freeze(_OneWorker(sleeper.pid), "1201", time.time(), time.time() + 1.0, settings)
    assert gone["error"] == "the worker went away" and gone["stops_at"] == []


def test_bench_by_default_puts_the_workers_and_the_load_client_under_sched_rr(tmp_path, capsys):
    args = ["--extensions", "2", "--scenarios", "capacity", "--capacity-start", "2",
            "--capacity-step", "2", "--capacity-max", "2", "--capacity-seconds", "1",
            "--results", str(tmp_path / "results"), "--json"]
    if not realtime_allowed():
        with pytest.raises(SystemExit) as exited:
            bench_command.main(args=args, prog_name="audiogw bench", standalone_mode=False)
        assert exited.value.code == 1
        assert "CAP_SYS_NICE" in capsys.readouterr().err
        return
    # The bench itself refuses to go on when a worker is not under SCHED_RR (Gateway._check_realtime),
    # and the load processes are put there with sched_setscheduler, which raises when refused.
    bench_command.main(args=args, prog_name="audiogw bench", standalone_mode=False)
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["realtime_priority"] == 10
    assert report["capacity"]["steps"][0]["completed"] == 2
    assert "the load client under SCHED_RR 10" in (tmp_path / "results" / "report.md").read_text()


def test_report_without_matplotlib_still_writes_the_table(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    epoch = 1_795_000_000.0
    calls = [CallOutcome("1201", "ia", uuid_sent=epoch, arrivals=epoch + 0.0195 + numpy.arange(100) * 0.02),
             CallOutcome("1202", "ia", uuid_sent=epoch, arrivals=epoch + 0.0195 + numpy.arange(100) * 0.02)]
    summary = {"name": "per-extension", "target_extension": "1201", "seconds": 2.0, "stall": None,
               "groups": {"target": {"label": "first extension 1201", **group_summary(calls[:1], 2.0)},
                          "others": {"label": "other 1 extensions", **group_summary(calls[1:], 2.0)}},
               "resources": {"gateway": {"cpu_percent": 3.0, "rss_mb": 40.0, "uss_mb": 20.0}},
               "machine": {"max_late_ms": 1.5, "late_over_20ms": 0, "events": []}}
    report = {"command": "audiogw bench", "duration_seconds": 5.0, "scenarios": [summary], "capacity": None,
              "checks": [], "machine": {"cpus": 2, "load_average_before": "0.1", "kernel_timestamps": True},
              "settings": BenchSettings(extensions=2, calls_per_extension=1, seconds=2.0).__dict__}
    plots = write_report(tmp_path, report, [ScenarioResult(summary, calls, epoch, 2.2)])
    assert plots["files"] == [] and "matplotlib" in plots["skipped"]
    markdown = (tmp_path / "report.md").read_text()
    assert "Plots skipped: matplotlib is not installed" in markdown
    assert "| per-extension | first extension 1201 | 1 / 1 | 100 / 100 |" in markdown
    assert not list(tmp_path.glob("*.png"))


def test_bench_commands_load_lazily_and_say_which_extra_is_missing(monkeypatch):
    import importlib

    from click.testing import CliRunner

    from audiogw.client.cli import cli

    for name in ("bench", "bench-asterisk"):
        result = CliRunner().invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and f"Usage: cli {name}" in result.output, result.output
    real_import = importlib.import_module

    def without_matplotlib(name: str, *args):
        if name.startswith("audiogw.bench."):
            raise ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_matplotlib)
    result = CliRunner().invoke(cli, ["bench", "--quick"])
    assert result.exit_code == 1
    assert "`audiogw bench` needs the benchmark extra (matplotlib is missing): pip install 'audiogw[bench]'" \
        in result.output
    assert CliRunner().invoke(cli, ["call", "--help"]).exit_code == 0  # the rest of the CLI does not need it

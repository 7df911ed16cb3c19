"""Supervisor metrics: the pure snapshot -> Prometheus conversion, then /metrics and
/healthz of a real supervisor with real workers and real calls."""
from __future__ import annotations

import asyncio
import os
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import orjson
import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from audiogw.client.ctl import CtlRefused, request
from audiogw.shared.config import ExtensionConfig
from audiogw.shared.histogram import LATENCY_BUCKETS, Histogram
from audiogw.shared.stats_schema import CLUSTER_FIGURES, CONTROL_REFUSAL_REASONS
from audiogw.shared.version import audiogw_version
from audiogw.supervisor.extension import ExtensionRuntime
from audiogw.supervisor.lifecycle import RestartPolicy
from audiogw.supervisor.metrics import (
    ExtensionSample,
    SupervisorCollector,
    build_families,
    cumulative_buckets,
    health,
    sample_runtime,
    take_snapshot,
)
from audiogw.worker.stats import WorkerStats
from conftest import realtime_allowed, wait_for
from audiogw.shared.net import free_port_block

LE = ["0.0005", "0.001", "0.002", "0.005", "0.01", "0.02", "0.04", "0.1", "0.25", "1.0", "+Inf"]

# Family name (as the text parser reports it: counters without _total) -> type and label names.
EXPECTED = {
    "audiogw_extension_up": ("gauge", {"extension"}),
    "audiogw_worker_restarts": ("counter", {"extension"}),
    "audiogw_worker_fatal_retries": ("counter", {"extension"}),
    "audiogw_calls_active": ("gauge", {"extension", "leg"}),
    "audiogw_calls": ("counter", {"extension", "leg"}),
    "audiogw_frames_received": ("counter", {"extension", "leg"}),
    "audiogw_frames_sent": ("counter", {"extension", "leg"}),
    "audiogw_underruns": ("counter", {"extension", "leg"}),
    "audiogw_late_frames": ("counter", {"extension", "leg"}),
    "audiogw_protocol_errors": ("counter", {"extension", "leg", "reason"}),
    "audiogw_frames_dropped": ("counter", {"extension", "leg", "reason"}),
    "audiogw_send_lateness_seconds": ("histogram", {"extension"}),
    "audiogw_agent_connect_failures": ("counter", {"extension", "leg"}),
    "audiogw_agent_reconnects": ("counter", {"extension", "leg"}),
    "audiogw_agent_audio_received_seconds": ("counter", {"extension", "leg"}),
    "audiogw_agent_audio_dropped_seconds": ("counter", {"extension", "reason"}),
    "audiogw_agent_bad_messages": ("counter", {"extension", "reason"}),
    "audiogw_agent_playback_buffer_seconds": ("gauge", {"extension", "leg"}),
    "audiogw_agent_barge_in_reaction_seconds": ("histogram", {"extension"}),
    "audiogw_event_loop_lag_seconds": ("histogram", {"extension"}),
    "audiogw_worker_resident_memory_bytes": ("gauge", {"extension"}),
    "audiogw_worker_cpu_seconds": ("counter", {"extension"}),
    "audiogw_worker_realtime_priority": ("gauge", {"extension"}),
    "audiogw_control_refused": ("counter", {"reason"}),
    "audiogw_ami_connected": ("gauge", set()),
    "audiogw_dial_outcomes": ("counter", {"status"}),
    "audiogw_calls_refused": ("counter", {"reason"}),
    "audiogw_rest_requests": ("counter", {"code"}),
    "audiogw_build_info": ("gauge", {"version", "python"}),
    **{field.name: (field.kind, set()) for field in CLUSTER_FIGURES},  # [cluster] mode's (empty on one host)
    "audiogw_last_heartbeat_timestamp_seconds": ("gauge", {"extension"}),
    "audiogw_app_events": ("counter", {"extension", "event"}),
}
ALLOWED_LABELS = {"extension", "leg", "reason", "event", "le", "version", "python"}  # build_info: one series


# ---------------------------------------------------------------------- helpers
def worker_totals() -> dict:
    """A hand-made heartbeat snapshot, built with the worker's own classes."""
    stats = WorkerStats()
    ia = stats.legs["ia"]
    ia.calls_active, ia.calls_total, ia.frames_received, ia.frames_sent = 1, 3, 150, 160
    ia.underruns, ia.late_frames = 2, 1
    ia.protocol_errors["bad_kind"] += 4
    ia.frames_dropped["inbound_full"] += 5
    for value in (0.0, 0.0004, 0.0005, 0.0009, 0.004, 0.03, 2.5):
        stats.send_lateness.observe(value)
    stats.legs["retorno"].frames_sent = 7
    stats.loop_lag.observe(0.0001)
    stats.loop_lag.observe(0.015)
    stats.app_counters["agent_connect_failures"] += 2
    return stats.snapshot()


def by_name(families) -> dict:
    return {family.name: family for family in families}


def value(families: dict, sample_name: str, **labels) -> float | None:
    """The one sample named ``sample_name`` whose labels include ``labels`` (None if absent)."""
    family_name = re.sub(r"(_total|_bucket|_count|_sum|_created)$", "", sample_name)
    for name in (family_name, sample_name):
        family = families.get(name)
        if family is None:
            continue
        found = [s.value for s in family.samples
                 if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())]
        if found:
            assert len(found) == 1, (sample_name, labels, found)
            return found[0]
    return None


# ------------------------------------------------------------- (a) pure conversion
def test_cumulative_buckets_from_non_cumulative_counts():
    histogram = Histogram()
    for observed in (0.0, 0.0005, 0.0006, 0.004, 0.004, 0.9, 5.0):
        histogram.observe(observed)
    buckets = cumulative_buckets(histogram.snapshot())
    assert [le for le, _ in buckets] == LE
    assert [count for _, count in buckets] == [2, 3, 3, 5, 5, 5, 5, 5, 5, 6, 7]
    assert len(LE) == len(LATENCY_BUCKETS) + 1


def test_cumulative_buckets_tolerate_bad_snapshots():
    assert cumulative_buckets({}) == [(le, 0.0) for le in LE]
    assert cumulative_buckets(None)[-1] == ("+Inf", 0.0)
    short = cumulative_buckets({"counts": [1, 2]})
    assert [count for _, count in short] == [1, 3] + [3] * 9
    long = cumulative_buckets({"counts": [1] * 20})
    assert len(long) == 11 and long[-1] == ("+Inf", 20.0) and long[-2] == ("1.0", 10.0)
    assert cumulative_buckets({"counts": ["x", None, 2]})[-1] == ("+Inf", 2.0)


def test_build_families_names_types_labels_and_values():
    now = 1_700_000_000.0
    sample = ExtensionSample(id="1201", running=True, restarts=2, last_heartbeat=now - 0.3,
                             totals=worker_totals(), rss=50_000_000, cpu_seconds=1.25, realtime_priority=10)
    refusals = {"malformed": 0, "bad_request": 2, "internal_error": 0, "unauthorized": 1}
    families = by_name(build_families([sample], now=now, heartbeat_timeout=3.0, control_refusals=refusals))
    assert set(families) == set(EXPECTED)
    for name, (kind, labels) in EXPECTED.items():
        family = families[name]
        assert family.type == kind, name
        for sample_ in family.samples:
            assert set(sample_.labels) - {"le"} == labels, (name, sample_)
    # Counters are exposed with _total (CounterMetricFamily adds it to the family name).
    assert {s.name for s in families["audiogw_frames_sent"].samples} == {"audiogw_frames_sent_total"}
    assert {s.name for s in families["audiogw_worker_cpu_seconds"].samples} == {"audiogw_worker_cpu_seconds_total"}

    assert value(families, "audiogw_extension_up", extension="1201") == 1
    assert value(families, "audiogw_worker_restarts_total", extension="1201") == 2
    assert value(families, "audiogw_calls_active", extension="1201", leg="ia") == 1
    assert value(families, "audiogw_calls_total", extension="1201", leg="ia") == 3
    assert value(families, "audiogw_frames_received_total", extension="1201", leg="ia") == 150
    assert value(families, "audiogw_frames_sent_total", extension="1201", leg="ia") == 160
    assert value(families, "audiogw_frames_sent_total", extension="1201", leg="retorno") == 7
    assert value(families, "audiogw_underruns_total", extension="1201", leg="ia") == 2
    assert value(families, "audiogw_late_frames_total", extension="1201", leg="ia") == 1
    assert value(families, "audiogw_protocol_errors_total", extension="1201", leg="ia", reason="bad_kind") == 4
    assert value(families, "audiogw_frames_dropped_total", extension="1201", leg="ia", reason="inbound_full") == 5
    assert value(families, "audiogw_protocol_errors_total", leg="retorno") is None  # no zero-reason series
    assert value(families, "audiogw_app_events_total", extension="1201", event="agent_connect_failures") == 2
    assert value(families, "audiogw_worker_resident_memory_bytes", extension="1201") == 50_000_000
    assert value(families, "audiogw_worker_cpu_seconds_total", extension="1201") == 1.25
    assert value(families, "audiogw_worker_realtime_priority", extension="1201") == 10
    assert {s.labels["reason"]: s.value for s in families["audiogw_control_refused"].samples} == refusals
    assert {s.name for s in families["audiogw_control_refused"].samples} == {"audiogw_control_refused_total"}
    [info] = families["audiogw_build_info"].samples
    assert info.value == 1 and info.labels == {"version": audiogw_version(), "python": platform.python_version()}
    assert value(families, "audiogw_last_heartbeat_timestamp_seconds", extension="1201") == now - 0.3

    lateness = {s.labels["le"]: s.value for s in families["audiogw_send_lateness_seconds"].samples
                if s.name.endswith("_bucket")}
    assert list(lateness) == LE
    assert [lateness[le] for le in LE] == [3, 4, 4, 5, 5, 5, 6, 6, 6, 6, 7]
    assert value(families, "audiogw_send_lateness_seconds_count", extension="1201") == 7
    assert value(families, "audiogw_send_lateness_seconds_sum", extension="1201") == pytest.approx(2.5358)
    assert value(families, "audiogw_event_loop_lag_seconds_count", extension="1201") == 2
    assert value(families, "audiogw_event_loop_lag_seconds_bucket", le="0.02") == 2
    assert value(families, "audiogw_event_loop_lag_seconds_bucket", le="0.01") == 1


def test_agent_connector_series_only_for_agent_extensions():
    from audiogw.worker.playout import PlayoutBuffer
    from audiogw.worker.agent_stats import SECTION, AgentStats

    now = 1000.0
    agent = AgentStats()
    agent.connect_failures["ia"] += 3
    agent.audio_received_seconds["ia"] += 2.5
    agent.audio_dropped_seconds["buffer_full"] += 0.4
    agent.bad_messages["bad_json"] += 2
    agent.barge_in_reaction.observe(0.035)
    playing = PlayoutBuffer(8000, 100, 3)
    playing.push(bytes(320 * 25))  # half a second queued on a live retorno leg
    agent.buffers[playing] = "retorno"
    stats = WorkerStats()
    stats.add_section(SECTION, agent)
    samples = [ExtensionSample(id="1201", running=True, last_heartbeat=now, totals=stats.snapshot()),
               ExtensionSample(id="1202", running=True, last_heartbeat=now, totals=worker_totals())]
    families = by_name(build_families(samples, now=now, heartbeat_timeout=3.0))
    assert value(families, "audiogw_agent_connect_failures_total", extension="1201", leg="ia") == 3
    assert value(families, "audiogw_agent_connect_failures_total", extension="1201", leg="retorno") == 0
    assert value(families, "audiogw_agent_audio_received_seconds_total", extension="1201", leg="ia") == 2.5
    assert value(families, "audiogw_agent_audio_dropped_seconds_total", reason="buffer_full") == pytest.approx(0.4)
    assert value(families, "audiogw_agent_bad_messages_total", reason="bad_json") == 2
    assert value(families, "audiogw_agent_playback_buffer_seconds", extension="1201", leg="retorno") == 0.5
    assert value(families, "audiogw_agent_barge_in_reaction_seconds_count", extension="1201") == 1
    assert value(families, "audiogw_agent_barge_in_reaction_seconds_bucket", extension="1201", le="0.04") == 1
    assert value(families, "audiogw_agent_barge_in_reaction_seconds_bucket", extension="1201", le="0.02") == 0
    # An echo extension has no agent series at all: they would be noise in every scrape.
    assert all(s.labels["extension"] == "1201" for name, family in families.items()
               if name.startswith("audiogw_agent_") for s in family.samples)


def test_up_needs_running_and_a_recent_heartbeat():
    now = 1000.0
    samples = [
        ExtensionSample(id="1", running=True, last_heartbeat=now - 1.0),
        ExtensionSample(id="2", running=True, last_heartbeat=now - 3.5),  # hung
        ExtensionSample(id="3", running=False, last_heartbeat=now),  # starting / backoff / fatal
        ExtensionSample(id="4", running=True, last_heartbeat=None),
    ]
    families = by_name(build_families(samples, now=now, heartbeat_timeout=3.0))
    assert {s.labels["extension"]: s.value for s in families["audiogw_extension_up"].samples} == {
        "1": 1, "2": 0, "3": 0, "4": 0}
    # Resources and heartbeat time are left out when unknown, not reported as 0.
    assert families["audiogw_worker_resident_memory_bytes"].samples == []
    assert families["audiogw_worker_cpu_seconds"].samples == []
    assert families["audiogw_worker_realtime_priority"].samples == []
    assert {s.labels["extension"] for s in families["audiogw_last_heartbeat_timestamp_seconds"].samples} == {"1", "2", "3"}
    # An extension with no heartbeat yet still has zeroed counters for both legs.
    assert value(families, "audiogw_frames_sent_total", extension="4", leg="retorno") == 0
    assert health(samples, now=now, heartbeat_timeout=3.0) == (503, {"status": "degraded", "down": ["2", "3", "4"]})
    failed = ExtensionSample(id="5", running=False, state="failed", reason="cannot listen on 127.0.0.1:1: busy")
    assert health([*samples[:1], failed], now=now, heartbeat_timeout=3.0) == (503, {
        "status": "degraded", "down": ["5"],
        "why": {"5": {"state": "failed", "reason": "cannot listen on 127.0.0.1:1: busy"}}})
    assert health(samples[:1], now=now, heartbeat_timeout=3.0) == (200, {"status": "ok", "extensions": 1})
    assert health([], now=now, heartbeat_timeout=3.0) == (200, {"status": "ok", "extensions": 0})


def test_malformed_counters_never_break_a_scrape():
    now = 1000.0
    samples = [
        ExtensionSample(id="1", running=True, last_heartbeat=now, totals={"legs": "garbage", "loop_lag": 5}),
        ExtensionSample(id="2", running=True, last_heartbeat=now,
                        totals={"legs": {"ia": {"frames_sent": "many", "calls_total": float("nan"),
                                                "protocol_errors": {"x": True}}},
                                "send_lateness": {"counts": 3}, "app": {"ok": 1}}),
        ExtensionSample(id="3", running=True, last_heartbeat=now, totals=worker_totals()),
    ]
    families = by_name(build_families(samples, now=now, heartbeat_timeout=3.0))
    assert value(families, "audiogw_frames_sent_total", extension="2", leg="ia") == 0
    assert value(families, "audiogw_calls_total", extension="2", leg="ia") == 0
    assert value(families, "audiogw_frames_sent_total", extension="3", leg="ia") == 160
    registry = CollectorRegistry()

    class Fixed:
        def collect(self):
            return build_families(samples, now=now, heartbeat_timeout=3.0)

    registry.register(Fixed())
    assert b"audiogw_frames_sent_total" in generate_latest(registry)


class FakeSupervisor:
    """What take_snapshot() and MetricsServer read of a Supervisor."""

    def __init__(self, runtimes):
        self.extensions = {runtime.id: runtime for runtime in runtimes}
        self.control = None

        class Settings:
            heartbeat_timeout = 3.0
            metrics_host = "127.0.0.1"
            metrics_port = 0

        class Config:
            supervisor = Settings

        self.config = Config


def test_collector_reads_runtime_totals_across_incarnations():
    """Carried counters of a dead incarnation plus the live one, through the real ExtensionRuntime."""
    runtime = ExtensionRuntime(ExtensionConfig("1201", 40000, 40001, "echo"), {}, RestartPolicy())
    runtime.stats = worker_totals()
    runtime.detach()  # the first worker died: its counters are carried
    runtime.stats = worker_totals()
    runtime.last_heartbeat_wall = time.time()
    sample = sample_runtime(runtime)
    assert sample.running is False and sample.rss is None and sample.realtime_priority is None  # no process

    registry = CollectorRegistry()
    registry.register(SupervisorCollector(lambda: take_snapshot(FakeSupervisor([runtime]))))
    families = by_name(text_string_to_metric_families(generate_latest(registry).decode()))
    assert value(families, "audiogw_frames_sent_total", extension="1201", leg="ia") == 320
    assert value(families, "audiogw_calls_active", extension="1201", leg="ia") == 1  # a gauge: not summed
    assert value(families, "audiogw_send_lateness_seconds_count", extension="1201") == 14
    assert value(families, "audiogw_send_lateness_seconds_bucket", extension="1201", le="0.0005") == 6
    assert value(families, "audiogw_app_events_total", event="agent_connect_failures") == 4
    assert value(families, "audiogw_extension_up", extension="1201") == 0

    openmetrics = generate_openmetrics(registry).decode()
    assert openmetrics.endswith("# EOF\n")
    om_families = by_name(parse_openmetrics(openmetrics))
    assert om_families["audiogw_frames_sent"].type == "counter"
    assert om_families["audiogw_send_lateness_seconds"].unit == "seconds"

    # ?name[]= filtering works because the collector describes its names.
    filtered = generate_latest(registry.restricted_registry(["audiogw_calls_total"])).decode()
    assert "audiogw_calls_total" in filtered and "audiogw_frames_sent_total" not in filtered


def test_collector_skips_an_unreadable_extension():
    good = ExtensionRuntime(ExtensionConfig("1201", 40000, 40001, "echo"), {}, RestartPolicy())
    bad = ExtensionRuntime(ExtensionConfig("1202", 40002, 40003, "echo"), {}, RestartPolicy())

    def broken():
        raise RuntimeError("dictionary changed size during iteration")

    bad.totals = broken
    registry = CollectorRegistry()
    registry.register(SupervisorCollector(lambda: take_snapshot(FakeSupervisor([good, bad]))))
    text = generate_latest(registry).decode()
    assert 'extension="1201"' in text and 'extension="1202"' not in text


def test_dashboard_and_alerts_use_only_exposed_metric_names():
    root = Path(__file__).resolve().parent.parent / "etc"
    now = 1000.0
    sample = ExtensionSample(id="1", running=True, last_heartbeat=now, totals=worker_totals(), rss=1, cpu_seconds=1,
                             realtime_priority=0)
    # A supervisor with AMI configured (audiogw_ami_connected is exported only then).
    families = build_families([sample], now=now, heartbeat_timeout=3.0, control_refusals={"unauthorized": 0},
                              figures={"ami_connected": 1})
    exposed = {s.name for family in families for s in family.samples}
    dashboard = orjson.loads((root / "grafana" / "audiogw-dashboard.json").read_bytes())
    assert dashboard["uid"] and dashboard["panels"]
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dashboard["templating"]["list"])
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    alerts = (root / "prometheus" / "audiogw-alerts.yml").read_text()
    used = set(re.findall(r"\baudiogw_[a-z_]+", " ".join(exprs) + alerts))
    assert used and used <= exposed, used - exposed
    for name in ("AudiogwExtensionDown", "AudiogwWorkerRestarting", "AudiogwUnderruns", "AudiogwSendLatenessHigh",
                 "AudiogwWorkerNotRealtime", "AudiogwControlUnauthorized", "AudiogwAmiDown"):
        assert f"alert: {name}" in alerts
    assert '"127.0.0.1:9464"' in (root / "prometheus" / "prometheus.yml").read_text()


# ------------------------------------------------------- (b) a real supervisor


@dataclass
class Gateway:
    folder: Path
    process: subprocess.Popen
    base_port: int
    url: str = ""

    @property
    def endpoint(self) -> str:
        return "ipc://" + str(self.folder / "run" / "control.sock")

    def log(self) -> str:
        return (self.folder / "supervisor.log").read_text(errors="replace")

    def ctl(self, command: str, args: dict | None = None):
        return request(self.endpoint, command, args or {}, timeout=5)

    def pid(self, extension: str) -> int | None:
        rows = self.ctl("status", {"id": extension})
        return rows[0]["pid"] if rows and rows[0]["state"] == "running" else None

    def get(self, path: str, accept: str | None = None) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(self.url + path, headers={"Accept": accept} if accept else {})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def scrape(self) -> dict:
        status, headers, body = self.get("/metrics")
        assert status == 200, body
        assert headers["Content-Type"].startswith("text/plain")
        return by_name(text_string_to_metric_families(body.decode()))

    def healthz(self) -> tuple[int, dict]:
        status, headers, body = self.get("/healthz")
        assert headers["Content-Type"] == "application/json"
        return status, orjson.loads(body)

    def call(self, port: int, seconds: float = 1.0):
        from audiogw.client.softphone import place_call

        return asyncio.run(place_call("127.0.0.1", port, seconds=seconds, record=False))


METRICS_OFFSET = 21  # the metrics server's port: just past the extensions' port_range [base, base + 20]


def write_config(folder: Path, base: int) -> Path:
    path = folder / "audiogw.toml"
    path.write_text(f"""\
[supervisor]
control = "ipc://run/control.sock"
metrics = "127.0.0.1:{base + METRICS_OFFSET}"
state_dir = "state"
heartbeat_interval = 0.25
heartbeat_timeout = 1.0
# A restart waits 0.5 s, so an extension is visibly down for a while after a kill.
backoff_initial = 0.5
drain_seconds = 1.0
[audiosocket]
bind = "127.0.0.1"
port_range = [{base}, {base + 20}]
[[extension]]
id = "1201"
ia_port = {base}
retorno_port = {base + 1}
app = "echo"
[[extension]]
id = "1202"
ia_port = {base + 2}
retorno_port = {base + 3}
app = "echo"
""")
    return path


def _stop(process: subprocess.Popen) -> None:
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for child in descendants:  # a worker left behind by a SIGKILLed supervisor
        try:
            child.kill()
        except psutil.Error:
            pass


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    folder = tmp_path_factory.mktemp("metrics")
    base = free_port_block(METRICS_OFFSET + 1)
    config = write_config(folder, base)
    with open(folder / "supervisor.log", "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start", "--config", str(config)],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=folder,
        )
    gw = Gateway(folder, process, base, url=f"http://127.0.0.1:{base + METRICS_OFFSET}")
    try:
        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"supervisor exited with {process.returncode}:\n{gw.log()}")
            try:
                return gw.healthz()[0] == 200
            except OSError:  # not listening yet
                return False

        wait_for(healthy, 15, what="the metrics server, with every extension up")
        assert f"metrics listening on {gw.url}/metrics" in gw.log()  # the operator's line
        yield gw
    finally:
        _stop(process)


def test_scrape_has_every_family_with_the_right_types_and_labels(gateway):
    result = gateway.call(gateway.base_port, seconds=1.0)
    assert result.frames_received > 0, result

    def counted():
        families = gateway.scrape()
        done = (value(families, "audiogw_calls_total", extension="1201", leg="ia") or 0) >= 1 \
            and (value(families, "audiogw_frames_received_total", extension="1201", leg="ia") or 0) > 0 \
            and (value(families, "audiogw_frames_sent_total", extension="1201", leg="ia") or 0) > 0 \
            and value(families, "audiogw_calls_active", extension="1201", leg="ia") == 0
        return families if done else None

    families = wait_for(counted, 5, what="the call's counters in /metrics")
    for name, (kind, labels) in EXPECTED.items():
        if (name in ("audiogw_protocol_errors", "audiogw_frames_dropped", "audiogw_app_events")
                or name.startswith("audiogw_agent_")) and name not in families:
            continue  # no series until something is counted: the text format may leave the family out
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    for family in families.values():
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample  # no per-call labels

    rt_allowed = realtime_allowed(10)
    for extension in ("1201", "1202"):
        assert value(families, "audiogw_extension_up", extension=extension) == 1
        assert value(families, "audiogw_worker_restarts_total", extension=extension) is not None
        assert value(families, "audiogw_worker_resident_memory_bytes", extension=extension) > 0
        assert value(families, "audiogw_worker_cpu_seconds_total", extension=extension) >= 0
        # The default (10) where the kernel allows it, else 0: what the worker really got.
        assert value(families, "audiogw_worker_realtime_priority", extension=extension) == (10 if rt_allowed else 0)
        assert value(families, "audiogw_last_heartbeat_timestamp_seconds", extension=extension) > time.time() - 60
        assert value(families, "audiogw_event_loop_lag_seconds_count", extension=extension) > 0
        for leg in ("ia", "retorno"):
            assert value(families, "audiogw_frames_sent_total", extension=extension, leg=leg) is not None

    buckets = [s for s in families["audiogw_send_lateness_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["extension"] == "1201"]
    assert [s.labels["le"] for s in buckets] == LE
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] > 0
    assert counts[-1] == value(families, "audiogw_send_lateness_seconds_count", extension="1201")
    assert value(families, "audiogw_frames_received_total", extension="1202", leg="ia") == 0

    assert gateway.get("/nope")[0] == 404
    assert gateway.get("/")[0] == 404


def test_agent_extension_counts_connect_failures(gateway):
    import socket as socket_module

    with socket_module.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    row = gateway.ctl("add-extension", {"id": "1209", "app": "agent",
                                        "options": {"url": f"ws://127.0.0.1:{dead_port}/media"}})
    try:
        wait_for(lambda: gateway.pid("1209"), 10, what="the agent extension to run")
        result = gateway.call(row["ia_port"], seconds=1.5)
        assert result.frames_received > 50 and result.hung_up_by == "client"  # silence, paced, no hang-up

        def failures():
            families = gateway.scrape()
            return value(families, "audiogw_agent_connect_failures_total", extension="1209", leg="ia")

        assert wait_for(failures, 5, what="connect failures in /metrics") >= 2
    finally:
        gateway.ctl("remove-extension", {"id": "1209"})
    assert value(gateway.scrape(), "audiogw_agent_connect_failures_total", extension="1209", leg="ia") is None


def test_refused_control_requests_are_counted_by_reason(gateway):
    def refused() -> dict:
        return {s.labels["reason"]: s.value for s in gateway.scrape()["audiogw_control_refused"].samples}

    before = refused()
    assert set(before) == set(CONTROL_REFUSAL_REASONS)
    with pytest.raises(CtlRefused):
        gateway.ctl("no-such-command")
    with pytest.raises(CtlRefused):
        gateway.ctl("remove-extension", {"id": "not an id"})
    # The loop republishes the snapshot when it next reads the bus (a fraction of the heartbeat interval).
    wait_for(lambda: refused()["bad_request"] == before["bad_request"] + 2, 5, what="refusals in /metrics")
    after = refused()
    assert after["bad_request"] == before["bad_request"] + 2
    assert after["malformed"] == before["malformed"] and after["unauthorized"] == 0  # ipc: no CURVE


def test_openmetrics_is_negotiated(gateway):
    status, headers, body = gateway.get("/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = by_name(parse_openmetrics(text))
    assert families["audiogw_frames_sent"].type == "counter"
    assert families["audiogw_event_loop_lag_seconds"].type == "histogram"


def test_totals_do_not_drop_when_a_worker_is_killed(gateway):
    gateway.call(gateway.base_port, seconds=1.0)

    def settled():
        families = gateway.scrape()
        ok = value(families, "audiogw_calls_active", extension="1201", leg="ia") == 0 \
            and (value(families, "audiogw_frames_received_total", extension="1201", leg="ia") or 0) > 0
        return families if ok else None

    before = wait_for(settled, 5, what="the call to be counted")
    names = [("audiogw_calls_total", "ia"), ("audiogw_frames_received_total", "ia"),
             ("audiogw_frames_sent_total", "ia"), ("audiogw_frames_sent_total", "retorno"),
             ("audiogw_event_loop_lag_seconds_count", None), ("audiogw_send_lateness_seconds_count", None),
             ("audiogw_worker_restarts_total", None)]

    def read(families):
        return {(name, leg): value(families, name, extension="1201", **({"leg": leg} if leg else {}))
                for name, leg in names}

    counted = read(before)
    old_pid = gateway.pid("1201")
    assert old_pid
    os.kill(old_pid, signal.SIGKILL)

    def restarted():
        pid = gateway.pid("1201")
        if not pid or pid == old_pid:
            return None
        families = gateway.scrape()
        return families if value(families, "audiogw_extension_up", extension="1201") == 1 else None

    after = read(wait_for(restarted, 10, what="extension 1201 to be restarted"))
    for key, was in counted.items():
        assert after[key] >= was, (key, was, after[key])
    assert after[("audiogw_worker_restarts_total", None)] >= counted[("audiogw_worker_restarts_total", None)] + 1

    # A call on the new incarnation adds on top of the carried totals.
    gateway.call(gateway.base_port, seconds=0.5)
    frames = ("audiogw_frames_received_total", "ia")
    wait_for(lambda: read(gateway.scrape())[frames] > after[frames], 5, what="new frames on top of the carried ones")


def test_healthz_reports_a_stopped_worker(gateway):
    status, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(gateway.healthz()), 10, what="healthz 200")
    assert body == {"status": "ok", "extensions": 2}
    pid = gateway.pid("1202")
    assert pid
    os.kill(pid, signal.SIGSTOP)
    try:
        def degraded():
            status, body = gateway.healthz()
            return body if status == 503 and body["down"] else None  # "late" comes first (test_healthz_late)

        body = wait_for(degraded, 5, what="healthz 503 after SIGSTOP", interval=0.02)
        assert body["status"] == "degraded" and body["down"] == ["1202"]
        # Still stopped until the supervisor acts: /healthz (the HTTP thread, at request time) may say
        # down a moment before the lifecycle's deadline fires, and a worker resumed in between is not hung.
        wait_for(lambda: gateway.pid("1202") not in (None, pid), 10, what="extension 1202 restarted")
    finally:
        try:
            os.kill(pid, signal.SIGCONT)  # if the supervisor has not killed it
        except ProcessLookupError:
            pass
    wait_for(lambda: gateway.healthz()[0] == 200, 10, what="healthz 200 again after the restart")


def test_removed_extension_series_vanish(gateway):
    added = gateway.ctl("add-extension", {"id": "1299", "app": "echo"})
    assert gateway.base_port <= added["ia_port"] <= gateway.base_port + 20

    def present():
        families = gateway.scrape()
        return families if value(families, "audiogw_extension_up", extension="1299") == 1 else None

    wait_for(present, 10, what="extension 1299 in /metrics")
    gateway.call(added["ia_port"], seconds=0.5)
    gateway.ctl("remove-extension", {"id": "1299"})
    status, headers, body = gateway.get("/metrics")
    assert 'extension="1299"' not in body.decode()
    assert 'extension="1201"' in body.decode()
    assert gateway.healthz() == (200, {"status": "ok", "extensions": 2})


def test_a_sample_is_built_again_only_when_its_extension_changed():
    """The snapshot is published at every bus read; an unchanged extension keeps its sample object
    (no rebuild), a heartbeat, a lifecycle event or a kernel reading makes a new one. /healthz
    still sees a silent worker grow late: lateness is measured at request time."""
    runtimes = [ExtensionRuntime(ExtensionConfig(str(1201 + i), 40000 + 2 * i, 40001 + 2 * i, "echo"), {},
                                 RestartPolicy()) for i in range(2)]
    for runtime in runtimes:
        runtime.lifecycle.start(0.0), runtime.lifecycle.spawned(0.0), runtime.lifecycle.ready(0.0)
        runtime.stats, runtime.last_heartbeat_wall = worker_totals(), 1000.0
    supervisor = FakeSupervisor(runtimes)
    first = take_snapshot(supervisor).samples
    again = take_snapshot(supervisor).samples
    assert all(a is b for a, b in zip(first, again)), "nothing changed: the same samples"
    quiet, beating = runtimes
    beating.stats, beating.last_heartbeat_wall = worker_totals(), 1000.5  # a heartbeat
    after = take_snapshot(supervisor).samples
    assert after[0] is first[0] and after[1] is not first[1] and after[1].last_heartbeat == 1000.5
    # The quiet one's cached sample goes late as time passes, without any rebuild.
    assert health(after, now=1000.1, heartbeat_timeout=30.0, heartbeat_interval=0.2)[0] == 200
    code, body = health(after, now=1000.6, heartbeat_timeout=30.0, heartbeat_interval=0.2)
    assert code == 503 and [late["extension"] for late in body["late"]] == ["1201"]
    # A lifecycle event without a heartbeat (a kill ordered) rebuilds it: no longer running.
    quiet.lifecycle.tick(quiet.lifecycle.next_deadline())
    assert quiet.lifecycle.kill_reason is not None
    killed = take_snapshot(supervisor).samples[0]
    assert killed is not first[0] and not killed.running and killed.reason == quiet.lifecycle.kill_reason
    # A kernel reading that is due (max_age 0) gives a new sample; one that is not keeps it.
    assert take_snapshot(supervisor, max_age=3600.0).samples[1] is after[1]
    assert take_snapshot(supervisor, max_age=0.0).samples[1] is not after[1]

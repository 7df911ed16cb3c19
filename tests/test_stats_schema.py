"""The stats schema in-process: every declared field reaches /metrics with its type, unit and
labels; what carries across a worker restart; ctl status columns; an app section with no
supervisor edit; the scrape thread formats only what the loop published."""
from __future__ import annotations

import threading
import urllib.request
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from audiogw.client.ctl import format_status_table
from audiogw.shared.audiosocket import LEG_KINDS
from audiogw.shared.config import ExtensionConfig
from audiogw.shared.histogram import Histogram
from audiogw.shared.stats_schema import (
    CLUSTER_FIGURES,
    EXTENSION_FIGURES,
    LEGS,
    SUPERVISOR_FIGURES,
    WORKER,
    Column,
    Field,
    Section,
    combine,
    metric_fields,
    register_section,
    sections,
    status_columns,
    status_figures,
    unregister_section,
)
from audiogw.supervisor.commands import status_row
from audiogw.supervisor.extension import ExtensionRuntime
from audiogw.supervisor.lifecycle import RestartPolicy
from audiogw.supervisor.metrics import ExtensionSample, MetricsServer, SupervisorCollector, build_families, take_snapshot
from audiogw.worker.agent_stats import SECTION as AGENT_SECTION, AgentStats
from audiogw.worker.stats import WorkerStats
from test_metrics import FakeSupervisor


def filled_stats(seed: int = 1) -> WorkerStats:
    """Every field of every section given a distinct non-zero value, through the worker's own objects."""
    stats = WorkerStats()
    agent = AgentStats()
    stats.add_section(AGENT_SECTION, agent)
    for offset, leg in enumerate(stats.legs.values()):
        _fill(LEGS, leg, seed + offset)
    _fill(WORKER, stats, seed)
    _fill(AGENT_SECTION, agent, seed)
    return stats


def _fill(section: Section, obj: object, seed: int) -> None:
    for index, field in enumerate(section.fields, start=1):
        if field.computed:
            continue
        value = getattr(obj, field.attribute)
        if isinstance(value, Histogram):
            for observed in (0.0004 * seed, 0.003 * index, 0.5):
                value.observe(observed)
        elif isinstance(value, Counter):
            value[LEG_KINDS[0] if field.by == "leg" else f"why{index}"] += seed * index
        else:
            setattr(obj, field.attribute, seed * 10 + index)


def sample(extension: str, totals: dict) -> ExtensionSample:
    return ExtensionSample(id=extension, running=True, restarts=1, last_heartbeat=999.0, totals=totals,
                           rss=1 << 20, cpu_seconds=2.0, realtime_priority=10)


# Call control's figures as the supervisor's CallControl/RestApi report them.
CALL_FIGURES = {"ami_connected": 1, "dial_outcomes": {"answered": 2}, "calls_refused": {"malformed": 1},
                "rest_requests": {"200": 1}}


def om_families(samples, refusals=None) -> dict:
    class Fixed:
        def collect(self):
            return build_families(samples, now=1000.0, heartbeat_timeout=3.0, control_refusals=refusals,
                                  figures={**CALL_FIGURES, **{field.key: 1 for field in CLUSTER_FIGURES}})

    registry = CollectorRegistry()
    registry.register(Fixed())
    return {family.name: family for family in parse_openmetrics(generate_openmetrics(registry).decode())}


def test_every_schema_field_is_exposed_with_its_type_unit_and_labels():
    families = om_families([sample("1201", filled_stats().snapshot())], refusals={"malformed": 1})
    declared = metric_fields()
    assert len({field.name for _labels, field in declared}) == len(declared)  # one family per name
    assert set(families) == {field.name for _labels, field in declared}
    for labels, field in declared:
        family = families[field.name]
        assert family.type == field.kind, field.name
        assert family.unit == field.unit, field.name
        assert family.documentation == field.help, field.name
        assert family.samples, f"{field.name} has no series"
        for series in family.samples:
            assert set(series.labels) - {"le"} == set(labels), (field.name, series)
    # A counter's samples end in _total, a histogram's in _bucket/_count/_sum.
    assert {s.name for s in families["audiogw_calls"].samples} == {"audiogw_calls_total"}
    assert {s.name for s in families["audiogw_agent_barge_in_reaction_seconds"].samples} >= {
        "audiogw_agent_barge_in_reaction_seconds_bucket", "audiogw_agent_barge_in_reaction_seconds_count"}


def test_the_snapshot_holds_every_field_the_schema_declares():
    snapshot = filled_stats().snapshot()
    assert {LEGS, WORKER, AGENT_SECTION} <= set(sections())
    for section in (LEGS, WORKER, AGENT_SECTION):
        part = snapshot if section.key is None else snapshot[section.key]
        for values in (part.values() if section.per_leg else [part]):
            assert {field.key for field in section.fields} <= set(values), section.key
    assert set(snapshot["legs"]) == set(LEG_KINDS)
    # Worker-side objects hold exactly the stored fields (their __slots__ come from the schema).
    assert set(WorkerStats().legs["ia"].__slots__) == {f.attribute for f in LEGS.fields if not f.computed}


def test_a_gauge_does_not_carry_over_a_restart_a_counter_and_a_histogram_do():
    runtime = ExtensionRuntime(ExtensionConfig("1201", 40000, 40001, "echo"), {}, RestartPolicy())
    first = filled_stats(seed=1)
    runtime.stats = first.snapshot()
    runtime.detach()  # the worker died
    carried = runtime.totals()
    assert carried["legs"]["ia"]["frames_sent"] == first.legs["ia"].frames_sent  # counter kept
    assert "calls_active" not in carried["legs"]["ia"]  # gauge gone with its worker
    assert "playback_buffer_seconds" not in carried["agent"]
    assert "max" not in carried["send_lateness"] and carried["send_lateness"]["count"] == 3

    second = WorkerStats()
    second.legs["ia"].calls_active = 1
    second.legs["ia"].frames_sent = 5
    second.legs["ia"].frames_dropped["latency"] += 2
    second.send_lateness.observe(0.001)
    runtime.stats = second.snapshot()
    totals = runtime.totals()
    ia = totals["legs"]["ia"]
    assert ia["calls_active"] == 1  # the live worker's gauge only
    assert ia["frames_sent"] == first.legs["ia"].frames_sent + 5
    assert ia["frames_dropped"] == {**dict(first.legs["ia"].frames_dropped),
                                    "latency": first.legs["ia"].frames_dropped["latency"] + 2}
    assert totals["send_lateness"]["count"] == 4 and totals["send_lateness"]["max"] == 0.001
    # The agent section is kept from the first worker though this one has none: counters never go back.
    assert totals["agent"]["bad_messages"] == dict(first.sections[AGENT_SECTION].bad_messages)
    # Every field: counters and histograms carry, gauges do not.
    for section in (LEGS, WORKER, AGENT_SECTION):
        for field in section.fields:
            assert field.carries == (field.kind != "gauge")
            part = carried if section.key is None else carried[section.key]
            part = part["ia"] if section.per_leg else part
            assert (field.key in part) == field.carries, field.key


def test_combine_is_pure_and_tolerates_malformed_snapshots():
    live = {"legs": {"ia": {"frames_sent": "many", "protocol_errors": {"x": None}}}, "loop_lag": 5}
    base = {"legs": {"ia": {"frames_sent": 3}}, "send_lateness": {"counts": [1, 2], "sum": 0.1, "count": 3}}
    total = combine(base, live, gauges=True)
    assert total["legs"]["ia"]["frames_sent"] == 3 and total["legs"]["ia"]["protocol_errors"] == {"x": 0}
    assert total["loop_lag"] == {"counts": [], "sum": 0, "count": 0}
    assert base == {"legs": {"ia": {"frames_sent": 3}}, "send_lateness": {"counts": [1, 2], "sum": 0.1, "count": 3}}


def test_status_row_and_table_come_from_the_schema_columns():
    runtime = ExtensionRuntime(ExtensionConfig("1201", 40000, 40001, "echo"), {}, RestartPolicy())
    stats = WorkerStats()
    stats.legs["ia"].frames_received, stats.legs["retorno"].frames_received = 100, 50
    stats.legs["ia"].calls_active = 2
    stats.send_lateness.observe(0.003)
    runtime.stats = stats.snapshot()
    runtime.detach()
    runtime.stats = WorkerStats().snapshot()  # the new worker's loop has not lagged yet
    row = status_row(runtime)
    assert row["frames_received"] == 150 and isinstance(row["frames_received"], int)  # over both legs and workers
    assert row["calls_active"] == 0  # gauge: the live worker's
    assert row["send_lateness_p99"] == 0.005  # the totals' histogram, p99 bucket bound
    assert row["loop_lag_p99"] is None  # live only
    columns = status_columns()
    assert [c.key for c in columns if c.key in row] == [c.key for c in columns]  # every column has its key
    header = format_status_table([row]).splitlines()[0].split()
    assert header == [column.header for column in columns]


def test_an_app_section_appears_with_no_supervisor_edit():
    section = register_section(Section("testapp", always=False, fields=(
        Field("jobs", "audiogw_test_jobs", "counter", "Jobs done by the test app.", by="reason",
              column=Column("test_jobs", "JOBS")),
        Field("queue_seconds", "audiogw_test_queue_seconds", "gauge", "Work queued.", unit="seconds"),
        Field("wait", "audiogw_test_wait_seconds", "histogram", "Waits.", unit="seconds"),
    )))
    try:
        class TestAppStats:
            __slots__ = section.attributes()

            def __init__(self) -> None:
                section.init(self)

        with_app = WorkerStats()
        app_stats = TestAppStats()
        with_app.add_section(section, app_stats)
        app_stats.jobs["done"] += 3  # its increment
        app_stats.queue_seconds = 0.25
        app_stats.wait.observe(0.002)
        families = om_families([sample("1201", with_app.snapshot()), sample("1202", WorkerStats().snapshot())])
        assert families["audiogw_test_jobs"].type == "counter"
        assert [(s.name, s.labels, s.value) for s in families["audiogw_test_jobs"].samples] == [
            ("audiogw_test_jobs_total", {"extension": "1201", "reason": "done"}, 3)]
        assert families["audiogw_test_queue_seconds"].unit == "seconds"
        assert [s.value for s in families["audiogw_test_queue_seconds"].samples] == [0.25]
        assert {s.labels["extension"] for s in families["audiogw_test_wait_seconds"].samples} == {"1201"}
        # Carry-over and ctl status follow the declaration too.
        runtime = ExtensionRuntime(ExtensionConfig("1201", 40000, 40001, "echo"), {}, RestartPolicy())
        runtime.stats = with_app.snapshot()
        runtime.detach()
        assert runtime.totals()["testapp"] == {"jobs": {"done": 3}, "wait": runtime.totals()["testapp"]["wait"]}
        assert status_figures(runtime.totals(), {})["test_jobs"] == 3
        assert "JOBS" in format_status_table([status_row(runtime)]).splitlines()[0]
        with pytest.raises(ValueError, match="already declared"):
            register_section(Section("other", fields=(Field("x", "audiogw_calls", "counter", "clash"),)))
    finally:
        unregister_section(section)
    assert "audiogw_test_jobs" not in {field.name for _labels, field in metric_fields()}


def test_supervisor_figures_are_declared_in_the_schema():
    names = {field.name for field in (*EXTENSION_FIGURES, *SUPERVISOR_FIGURES)}
    assert {"audiogw_extension_up", "audiogw_worker_restarts", "audiogw_worker_fatal_retries",
            "audiogw_worker_resident_memory_bytes",
            "audiogw_worker_cpu_seconds", "audiogw_worker_realtime_priority",
            "audiogw_last_heartbeat_timestamp_seconds", "audiogw_control_refused", "audiogw_build_info",
            "audiogw_ami_connected", "audiogw_dial_outcomes", "audiogw_calls_refused", "audiogw_rest_requests",
            "audiogw_cluster_connected", "audiogw_cluster_leader", "audiogw_cluster_assigned_extensions",
            "audiogw_cluster_nodes", "audiogw_cluster_refused", "audiogw_cluster_values_refused",
            "audiogw_cluster_requests_refused", "audiogw_cluster_session_failures",
            "audiogw_cluster_fenced", "audiogw_cluster_held_starts", "audiogw_cluster_peer_refused"} == names


def test_the_scrape_thread_formats_only_the_published_snapshot():
    runtime = ExtensionRuntime(ExtensionConfig("1201", 40000, 40001, "echo"), {}, RestartPolicy())
    stats = WorkerStats()
    stats.legs["ia"].frames_sent = 7
    runtime.stats = stats.snapshot()
    readers: set[str] = set()
    kernel_figures = runtime.kernel_figures

    def recording(now, max_age):
        readers.add(threading.current_thread().name)
        return kernel_figures(now, max_age)

    runtime.kernel_figures = recording  # type: ignore[method-assign]
    supervisor = FakeSupervisor([runtime])
    server = MetricsServer(supervisor)
    server.start()  # publishes once, on this (the "loop's") thread
    try:
        def scrape() -> str:
            url = f"http://127.0.0.1:{server.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.read().decode()

        line = 'audiogw_frames_sent_total{extension="1201",leg="ia"}'
        assert f"{line} 7.0" in scrape()
        published = server.snapshot
        stats.legs["ia"].frames_sent = 9
        runtime.stats = stats.snapshot()
        supervisor.extensions.clear()
        assert f"{line} 7.0" in scrape()  # unchanged until the loop publishes again
        assert server.snapshot is published
        supervisor.extensions[runtime.id] = runtime
        server.publish()
        assert f"{line} 9.0" in scrape()
        assert readers == {threading.current_thread().name}  # never read from the HTTP thread
    finally:
        server.close()


def test_collector_describes_every_declared_family():
    collector = SupervisorCollector(lambda: take_snapshot(FakeSupervisor([])))
    assert [family.name for family in collector.describe()] == [field.name for _labels, field in metric_fields()]


def test_kernel_figures_are_cached_but_read_again_on_a_state_change():
    runtime = ExtensionRuntime(ExtensionConfig("1201", 40000, 40001, "echo"), {}, RestartPolicy())
    reads = []

    def resources():
        reads.append(1)
        return len(reads), 1.0

    runtime.resources = resources  # type: ignore[method-assign]
    assert runtime.kernel_figures(100.0, 5.0)[0] == 1
    assert runtime.kernel_figures(104.9, 5.0)[0] == 1  # within max_age: the cached reading
    runtime.lifecycle.start(105.0)  # STOPPED -> STARTING: a worker is coming, read at once
    assert runtime.kernel_figures(105.0, 5.0)[0] == 2
    assert runtime.kernel_figures(110.0, 5.0)[0] == 3  # max_age passed

"""The stats snapshot as a schema: every figure declared once, with its metric metadata.

A worker's :class:`~audiogw.worker.stats.WorkerStats` keeps plain attributes and
``Counter`` objects (an increment costs nothing on the per-frame path) and, once
per heartbeat, turns them into a snapshot laid out by the :class:`Section` objects
declared here. The supervisor derives everything else from the same declarations:

- ``/metrics``: each :class:`Field` is one family (exposed name, counter | gauge |
  histogram, unit, help, labels);
- the restart carry-over (:func:`combine`): counters and histograms carry across
  worker restarts, gauges and a histogram's ``max`` do not;
- ``ctl status`` columns (:func:`status_columns`, :func:`status_figures`).

Figures the supervisor measures itself (up, restarts, psutil, real-time priority,
last heartbeat, control refusals) are declared here too, so :func:`metric_fields`
is the one list of what ``/metrics`` carries.

An app adds its own section with no supervisor edit: it declares a
:class:`Section` in a small module of its own (no numpy, no websockets: the
supervisor and ``ctl`` import it) and names it in :data:`APP_SECTIONS`, or calls
:func:`register_section`. See ARCHITECTURE.md, "Adding a metric".
"""
from __future__ import annotations

import importlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from audiogw.shared.audiosocket import LEG_KINDS
from audiogw.shared.histogram import LATENCY_BUCKETS, Histogram, quantile

Kind = Literal["counter", "gauge", "histogram"]
# How a ctl status cell is shown (client/ctl.py maps each to its formatter): "text"
# is left-aligned, every other format right-aligned.
Format = Literal["text", "plain", "duration", "ms", "bytes", "percent"]


@dataclass(frozen=True)
class Column:
    """One ``ctl status`` column: its key in the status row (and ``--json``), header and format."""

    key: str
    header: str
    format: Format = "plain"
    quantile: float | None = None  # a histogram field's column shows this quantile
    live: bool = False  # the live worker's figure, not the total over every incarnation

    @property
    def right_aligned(self) -> bool:
        return self.format != "text"


@dataclass(frozen=True)
class Field:
    """One figure: its key in the snapshot and the metric family it is exposed as.

    ``name`` is the family name as exposed, without the ``_total`` a counter's
    samples get. ``by`` names the label whose values key the field's mapping
    (``{"latency": 3}`` for ``by="reason"``); without it the field is one number
    (or one histogram). ``attr`` is the stats object's attribute when it differs
    from ``key``; ``computed`` says the attribute is a property read at snapshot
    time (a gauge such as a buffer depth), not a value the stats object stores.
    """

    key: str
    name: str
    kind: Kind
    help: str
    unit: str = ""
    by: str | None = None
    attr: str = ""
    computed: bool = False
    column: Column | None = None
    buckets: tuple[float, ...] = LATENCY_BUCKETS
    labels: tuple[str, ...] = ()  # fixed labels the supervisor fills (an info metric such as build_info)

    @property
    def carries(self) -> bool:
        """Counters and histograms carry across worker restarts; gauges do not."""
        return self.kind != "gauge"

    @property
    def attribute(self) -> str:
        return self.attr or self.key

    def initial(self) -> Any:
        """A fresh worker-side value: 0, an empty Counter, or an empty Histogram."""
        if self.kind == "histogram":
            return Histogram(self.buckets)
        if self.by is not None:
            return Counter()
        return 0


@dataclass(frozen=True)
class Section:
    """A group of fields shipped together under one snapshot key.

    ``key=None`` puts the fields at the snapshot's top level. A ``per_leg``
    section is ``{leg kind: {field: value}}`` and its series carry a ``leg``
    label. A section that is not ``always`` (an app's) only has series for the
    extensions whose worker ships it.
    """

    key: str | None
    fields: tuple[Field, ...]
    per_leg: bool = False
    always: bool = True

    def labels(self, field: Field) -> tuple[str, ...]:
        return ("extension", *(("leg",) if self.per_leg else ()), *((field.by,) if field.by else ()))

    def attributes(self) -> tuple[str, ...]:
        """The stats object's stored attributes (its ``__slots__``)."""
        return tuple(field.attribute for field in self.fields if not field.computed)

    def init(self, stats: object) -> None:
        """Give a worker-side stats object every stored field's initial value."""
        for field in self.fields:
            if not field.computed:
                setattr(stats, field.attribute, field.initial())

    def snapshot(self, stats: object) -> dict[str, Any]:
        """One stats object's figures (or, per leg, a mapping of them) as plain JSON-able values."""
        plan = self._plan
        if self.per_leg:
            return {leg: _export(plan, leg_stats) for leg, leg_stats in stats.items()}  # type: ignore[attr-defined]
        return _export(plan, stats)

    @property
    def _plan(self) -> tuple[tuple[str, str, int], ...]:
        """(key, attribute, 0 number | 1 mapping | 2 histogram) per field, built once."""
        plan = self.__dict__.get("_plan_cache")
        if plan is None:
            plan = tuple((field.key, field.attribute, 2 if field.kind == "histogram" else int(field.by is not None))
                         for field in self.fields)
            object.__setattr__(self, "_plan_cache", plan)
        return plan


def _export(plan: tuple[tuple[str, str, int], ...], stats: object) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, attribute, mode in plan:
        value = getattr(stats, attribute)
        out[key] = value if mode == 0 else dict(value) if mode == 1 else value.snapshot()
    return out


# ------------------------------------------------------------------ the declarations
LEGS = Section("legs", per_leg=True, fields=(
    Field("calls_active", "audiogw_calls_active", "gauge", "Calls in progress.",
          column=Column("calls_active", "CALLS")),
    Field("calls_total", "audiogw_calls", "counter", "Calls (AudioSocket connections) accepted on this leg."),
    Field("frames_received", "audiogw_frames_received", "counter", "Audio frames received from Asterisk.",
          column=Column("frames_received", "IN")),
    Field("frames_sent", "audiogw_frames_sent", "counter", "Audio frames sent to Asterisk (silence included).",
          column=Column("frames_sent", "OUT")),
    Field("underruns", "audiogw_underruns", "counter",
          "Ticks with no audio ready while playing: silence was sent instead.",
          column=Column("underruns", "UNDERRUNS")),
    Field("late_frames", "audiogw_late_frames", "counter",
          "Outbound frames sent more than one frame period (20 ms) after their deadline."),
    Field("protocol_errors", "audiogw_protocol_errors", "counter", "AudioSocket protocol errors, by reason.",
          by="reason"),
    Field("frames_dropped", "audiogw_frames_dropped", "counter", "Frames dropped by the gateway, by reason.",
          by="reason"),
))

WORKER = Section(None, fields=(
    Field("send_lateness", "audiogw_send_lateness_seconds", "histogram",
          "How late each outbound frame left versus its 20 ms deadline (all legs share the worker's clock).",
          unit="seconds", column=Column("send_lateness_p99", "LATE_P99", "ms", quantile=0.99)),
    Field("loop_lag", "audiogw_event_loop_lag_seconds", "histogram",
          "How late a short timer fired in the worker's event loop.",
          unit="seconds", column=Column("loop_lag_p99", "LAG_P99", "ms", quantile=0.99, live=True)),
    Field("app", "audiogw_app_events", "counter", "Events counted by the extension's app, by name.",
          by="event", attr="app_counters"),
))

# Measured by the supervisor, per extension: keys are ExtensionSample attributes
# (``up`` is computed at scrape time). A None value leaves the series out.
EXTENSION_FIGURES: tuple[Field, ...] = (
    Field("up", "audiogw_extension_up", "gauge", "1 while the extension's worker is running and heartbeating, else 0."),
    Field("restarts", "audiogw_worker_restarts", "counter", "Worker restarts by the supervisor."),
    Field("fatal_retries", "audiogw_worker_fatal_retries", "counter",
          "Tries of a fatal worker on the slow supervisor.fatal_retry timer (also counted in restarts)."),
    Field("rss", "audiogw_worker_resident_memory_bytes", "gauge", "Resident memory of the worker process (a reload's draining predecessor included).",
          unit="bytes"),
    Field("cpu_seconds", "audiogw_worker_cpu_seconds", "counter",
          "CPU time (user + system) of the extension's worker, over every incarnation (a reload's draining "
          "predecessor included).", unit="seconds"),
    Field("realtime_priority", "audiogw_worker_realtime_priority", "gauge",
          "SCHED_RR priority the worker runs at, read from the kernel; 0: normal scheduling "
          "(also when audiosocket.realtime_priority was refused)."),
    Field("last_heartbeat", "audiogw_last_heartbeat_timestamp_seconds", "gauge",
          "Unix time the supervisor last heard from the extension's worker."),
)

# Why a control request (or client) was refused, each reason always exported:
# too few/many frames, a bad or refused command, a command that failed, too many
# requests in flight (answered at once), a tcp client whose key is not authorized
# (no reply), a tcp client whose CURVE handshake failed (no key, wrong server key).
CONTROL_REFUSAL_REASONS: tuple[str, ...] = (
    "malformed", "bad_request", "internal_error", "busy", "unauthorized", "handshake_failed",
)

# The supervisor's own figures (no extension label).
BUILD_INFO = Field("build_info", "audiogw_build_info", "gauge",
                   "Always 1: the labels say which audiogw version serves, on which Python.",
                   labels=("version", "python"))
# [cluster] mode (#15), measured by the supervisor (supervisor/cluster_wiring.py, by key); empty on one host.
CLUSTER_FIGURES: tuple[Field, ...] = (
    Field("cluster_connected", "audiogw_cluster_connected", "gauge",
          "1 while this node has an etcd session; 0: it serves its cached assignments (degraded)."),
    Field("cluster_leader", "audiogw_cluster_leader", "gauge", "1 while this node is the elected placement leader."),
    Field("cluster_assigned", "audiogw_cluster_assigned_extensions", "gauge",
          "Extensions placement gives this node (what it serves)."),
    Field("cluster_nodes", "audiogw_cluster_nodes", "gauge", "Live nodes this node sees in etcd."),
    Field("cluster_refused", "audiogw_cluster_refused", "counter",
          "Assigned extensions whose etcd definition this node cannot run (refused with the reason, logged)."),
    Field("cluster_values_refused", "audiogw_cluster_values_refused", "counter",
          "Values under /audiogw/ that are not their key's record (ignored, logged with the reason)."),
    Field("cluster_requests_refused", "audiogw_cluster_requests_refused", "counter",
          "Commands carried through etcd (status, restart-extension) refused: a bad request to this node, or a bad "
          "reply to one of its own (logged with the reason)."),
    Field("cluster_session_failures", "audiogw_cluster_session_failures", "counter",
          "etcd sessions that ended on an error (the agent then tries the next endpoint)."),
    Field("cluster_fenced", "audiogw_cluster_fenced", "gauge",
          "1 while this node is fenced: cut off from an etcd that a peer reaches, so its lease is gone and it "
          "listens for nothing until etcd is back."),
    Field("cluster_held_starts", "audiogw_cluster_held_starts", "counter",
          "Starts of an extension held back because the node it moved off still answered that it listens for it."),
    Field("cluster_peer_refused", "audiogw_cluster_peer_refused", "counter",
          "Answers of other nodes to GET /cluster/peer refused as invalid (logged with the reason)."),
)
SUPERVISOR_FIGURES: tuple[Field, ...] = (
    BUILD_INFO,
    Field("control_refused", "audiogw_control_refused", "counter",
          "Control requests refused: malformed, bad_request, internal_error, busy (too many in flight), "
          "unauthorized (a tcp client whose CURVE key is not in curve_authorized_clients) or handshake_failed "
          "(a tcp client with no CURVE key or the wrong server key).", by="reason"),
    *CLUSTER_FIGURES,
    # Call control (supervisor/calls.py, supervisor/ami.py, supervisor/rest.py).
    Field("ami_connected", "audiogw_ami_connected", "gauge",
          "1 while the AMI connection ([asterisk] manager) is logged in, 0 while it is down or its login is "
          "refused; absent without [asterisk] manager."),
    Field("dial_outcomes", "audiogw_dial_outcomes", "counter",
          "Dial statuses sent to workers (audiogw.dial): ringing, answered, busy, no_answer, failed, hangup.",
          by="status"),
    Field("calls_refused", "audiogw_calls_refused", "counter",
          "Call-control requests refused or not carried out: malformed, wrong_extension, unknown_extension, "
          "registry_full, no_channel (no Asterisk channel known for that leg), ami_error, undeliverable "
          "(the worker is gone).", by="reason"),
    Field("rest_requests", "audiogw_rest_requests", "counter",
          "Requests to the Twilio REST subset (/2010-04-01/...), by HTTP status code.", by="code"),
)

# ctl status columns that are not worker figures, before and after the sections' columns.
HEAD_COLUMNS: tuple[Column, ...] = (
    Column("id", "EXT", "text"), Column("state", "STATE", "text"), Column("source", "SOURCE", "text"),
    Column("pid", "PID"),
    Column("uptime", "UPTIME", "duration"), Column("restarts", "RESTARTS"),
)
TAIL_COLUMNS: tuple[Column, ...] = (
    Column("memory_bytes", "MEM", "bytes"), Column("cpu_percent", "CPU", "percent"),
    Column("reason", "REASON", "text"),  # the last failure (last: it is the one long cell)
)

CORE_SECTIONS: tuple[Section, ...] = (LEGS, WORKER)
# An app's section: app name -> "module:attribute", imported on first use (the
# module must not import the app's audio stack: the supervisor and ctl load it).
APP_SECTIONS: dict[str, str] = {
    "agent": "audiogw.worker.agent_stats:SECTION",
}

_registered: list[Section] = []
_sections: tuple[Section, ...] | None = None


def register_section(section: Section) -> Section:
    """Add an app's section (one not named in APP_SECTIONS, e.g. a test's); its key must be new."""
    global _sections
    if any(known.key == section.key for known in sections()):
        raise ValueError(f"stats section {section.key!r} is already declared")
    names = {field.name for _labels, field in metric_fields()}
    clash = sorted(names & {field.name for field in section.fields})
    if clash:
        raise ValueError(f"stats section {section.key!r}: metric name(s) already declared: {', '.join(clash)}")
    _registered.append(section)
    _sections = None
    return section


def unregister_section(section: Section) -> None:
    global _sections
    _registered.remove(section)
    _sections = None


def sections() -> tuple[Section, ...]:
    """Every section: the core ones, the apps' (imported once), the registered ones."""
    global _sections
    if _sections is None:
        loaded = []
        for reference in APP_SECTIONS.values():
            module, _, attribute = reference.partition(":")
            loaded.append(getattr(importlib.import_module(module), attribute))
        _sections = (*CORE_SECTIONS, *loaded, *_registered)
    return _sections


def metric_fields() -> list[tuple[tuple[str, ...], Field]]:
    """(labels, field) of every family /metrics carries, in exposition order: the one list."""
    out: list[tuple[tuple[str, ...], Field]] = [(("extension",), field) for field in EXTENSION_FIGURES]
    for section in sections():
        out.extend((section.labels(field), field) for field in section.fields)
    out.extend((field.labels or ((field.by,) if field.by else ()), field) for field in SUPERVISOR_FIGURES)
    return out


# -------------------------------------------------------------- reading snapshots
def number(value: Any) -> float:
    """A figure from a heartbeat, or 0 for anything that is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)


def _value(value: Any) -> int | float:
    """Like :func:`number`, but an int stays an int (ctl status shows counts as integers)."""
    kind = type(value)
    if kind is int:  # the usual case first: this runs for every figure of every heartbeat
        return value
    if kind is float:
        return value if value - value == 0.0 else 0  # inf - inf and nan - nan are nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0
    return value


def mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def section_data(section: Section, snapshot: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The section's part of a snapshot (None when an app section is absent)."""
    if section.key is None:
        return snapshot
    if section.key not in snapshot:
        return None
    return mapping(snapshot[section.key])


def _combine_field(field: Field, base: Any, live: Any, gauges: bool) -> Any:
    if field.kind == "gauge":
        if not gauges or live is None:
            return None  # a gauge is the live worker's, or nothing
        if field.by is not None:
            return {str(k): _value(v) for k, v in mapping(live).items()}
        return _value(live)
    if field.kind == "histogram":
        old, new = mapping(base), mapping(live)
        old_counts, new_counts = old.get("counts"), new.get("counts")
        old_counts = [_value(c) for c in old_counts] if isinstance(old_counts, (list, tuple)) else []
        new_counts = [_value(c) for c in new_counts] if isinstance(new_counts, (list, tuple)) else []
        if len(old_counts) < len(new_counts):
            old_counts, new_counts = new_counts, old_counts
        counts = [count + new_counts[i] if i < len(new_counts) else count for i, count in enumerate(old_counts)]
        out = {"counts": counts, "sum": _value(old.get("sum")) + _value(new.get("sum")),
               "count": _value(old.get("count")) + _value(new.get("count"))}
        if gauges and "max" in new:
            out["max"] = _value(new.get("max"))  # a maximum is the live worker's only
        return out
    if field.by is not None:
        total = {str(k): _value(v) for k, v in mapping(base).items()}
        for key, value in mapping(live).items():
            total[str(key)] = total.get(str(key), 0) + _value(value)
        return total
    return _value(base) + _value(live)


def _combine_fields(fields: tuple[Field, ...], base: Mapping[str, Any], live: Mapping[str, Any],
                    gauges: bool) -> dict[str, Any]:
    out = {}
    for field in fields:
        value = _combine_field(field, base.get(field.key), live.get(field.key), gauges)
        if value is not None:
            out[field.key] = value
    return out


def combine(base: Mapping[str, Any], live: Mapping[str, Any], *, gauges: bool) -> dict[str, Any]:
    """``base`` (previous incarnations) plus a live snapshot, field by field, as a new snapshot
    (the live one itself when nothing is carried: snapshots are never changed in place).

    Counters add, histograms add bucket by bucket; with ``gauges`` the live
    worker's gauges (and histogram maxima) are kept, without them they are
    dropped: that is what a dead worker leaves behind (:meth:`ExtensionRuntime.detach`).
    Fields the schema does not know are dropped; malformed values count as 0.
    """
    base, live = mapping(base), mapping(live)
    if gauges and not base:
        # Nothing carried (no restart yet): the live snapshot is the total as it stands.
        # Readers tolerate what it may hold that the schema does not know, or malformed values.
        return live  # type: ignore[return-value]
    out: dict[str, Any] = {}
    for section in sections():
        old, new = section_data(section, base), section_data(section, live)
        if old is None and new is None:
            continue
        old, new = old or {}, new or {}
        if section.per_leg:
            legs = {}
            for leg in (*old, *(leg for leg in new if leg not in old)):
                legs[str(leg)] = _combine_fields(section.fields, mapping(old.get(leg)), mapping(new.get(leg)), gauges)
            part: dict[str, Any] = legs
        else:
            part = _combine_fields(section.fields, old, new, gauges)
        if section.key is None:
            out.update(part)
        else:
            out[section.key] = part
    return out


def legs_of(values: Mapping[str, Any]) -> Iterable[str]:
    """Both leg kinds always (zeros before the first call, so rate() sees the first increase), then any other."""
    return (*LEG_KINDS, *sorted(str(kind) for kind in values if kind not in LEG_KINDS))


# ------------------------------------------------------------------- ctl status
def status_columns() -> tuple[Column, ...]:
    """Every ``ctl status`` column in table order."""
    own = tuple(field.column for section in sections() for field in section.fields if field.column is not None)
    return (*HEAD_COLUMNS, *own, *TAIL_COLUMNS)


def _status_value(section: Section, field: Field, data: Mapping[str, Any] | None) -> Any:
    column = field.column
    assert column is not None
    if data is None:
        if not section.always:
            return None  # an app section this extension's worker does not have
        data = {}
    parts = [mapping(leg) for leg in data.values()] if section.per_leg else [data]
    if field.kind == "histogram":  # over every leg, for a per-leg section
        counts: list[int | float] = []
        for part in parts:
            raw = mapping(part.get(field.key)).get("counts")
            for index, count in enumerate(raw if isinstance(raw, (list, tuple)) else ()):
                if index == len(counts):
                    counts.append(0)
                counts[index] += _value(count)
        return quantile({"counts": counts}, column.quantile if column.quantile is not None else 0.99, field.buckets)
    total = 0
    for part in parts:
        value = part.get(field.key, 0)
        if field.by is not None:
            total += sum(_value(v) for v in mapping(value).values())
        else:
            total += _value(value)
    return total


def status_figures(totals: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """The worker figures of one ``ctl status`` row, column key -> value (sums over legs, quantiles).

    A column marked ``live`` reads the live worker's snapshot, every other the totals.
    """
    out: dict[str, Any] = {}
    for section in sections():
        for field in section.fields:
            if field.column is not None:
                source = live if field.column.live else totals
                out[field.column.key] = _status_value(section, field, section_data(section, mapping(source)))
    return out


__all__ = [
    "APP_SECTIONS", "BUILD_INFO", "CLUSTER_FIGURES", "CORE_SECTIONS", "Column", "EXTENSION_FIGURES", "Field", "HEAD_COLUMNS", "LEGS",
    "SUPERVISOR_FIGURES", "Section", "TAIL_COLUMNS", "WORKER", "combine", "legs_of", "mapping", "metric_fields",
    "number", "register_section", "section_data", "sections", "status_columns", "status_figures",
    "unregister_section",
]

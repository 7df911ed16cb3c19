"""Prometheus ``/metrics`` and ``/healthz`` for the supervisor.

Nothing is declared here: every family (name, type, unit, help, labels) comes
from :mod:`audiogw.shared.stats_schema`, sections of apps included, and is
converted generically. A custom collector (on its own registry, never the
process-wide default one, never multiprocess mode) turns the supervisor's
figures into metric families. Workers ship cumulative figures in every heartbeat
and the runtime adds up every incarnation (``totals()``), so counters never go
backwards across worker restarts.

The HTTP server runs in a daemon thread so a scrape never waits for the
supervisor's event loop and the loop never waits for a scrape. The thread reads
nothing the loop owns: the loop builds a :class:`MetricsSnapshot` (totals, psutil
readings, real-time priority, state) as heartbeats are read and publishes it by
swapping one reference (:meth:`MetricsServer.publish`); the thread formats the
snapshot it finds.

The conversion is a pure function (:func:`build_families`) of plain
:class:`ExtensionSample` values, tested without HTTP.
"""
from __future__ import annotations

import logging
import math
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from audiogw.shared.histogram import LATENCY_BUCKETS
from audiogw.shared.version import build_info
from audiogw.shared.stats_schema import (
    BUILD_INFO,
    EXTENSION_FIGURES,
    SUPERVISOR_FIGURES,
    Field,
    legs_of,
    mapping as _mapping,
    metric_fields,
    number as _number,
    section_data,
    sections,
)
from audiogw.supervisor.lifecycle import WorkerState
from audiogw.supervisor.rest import MAX_BODY as REST_MAX_BODY, PREFIX as REST_PREFIX, RestApi, on_loop

if TYPE_CHECKING:
    from audiogw.supervisor.daemon import Supervisor
    from audiogw.supervisor.extension import ExtensionRuntime

log = logging.getLogger("audiogw.supervisor")

# psutil and sched_* readings (~0.1 ms a worker) are refreshed at most this often
# (seconds), and at once when a worker starts, stops or changes state; the snapshot
# itself is published every time heartbeats are read, each extension's sample built
# again only when it changed (sample_runtime). Memory and CPU seconds a few
# seconds old are plenty for a scrape every 15-60 s.
KERNEL_FIGURES_MAX_AGE = 5.0


@dataclass(frozen=True)
class ExtensionSample:
    """What one scrape needs of one extension, copied out of its ExtensionRuntime."""

    id: str
    running: bool  # lifecycle state is RUNNING
    restarts: int = 0
    fatal_retries: int = 0
    last_heartbeat: float | None = None  # unix time
    totals: Mapping[str, Any] = field(default_factory=dict)
    rss: int | None = None
    cpu_seconds: float | None = None
    realtime_priority: int | None = None  # None: no live worker to ask
    state: str | None = None  # the public state name (ctl list's)
    reason: str | None = None  # the last failure

    def is_up(self, now: float, heartbeat_timeout: float) -> bool:
        """Serving and heard from within the heartbeat timeout."""
        return (self.running and self.last_heartbeat is not None
                and now - self.last_heartbeat <= heartbeat_timeout)


@dataclass(frozen=True)
class MetricsSnapshot:
    """Everything a scrape or /healthz reads, built on the event loop and never changed after."""

    samples: tuple[ExtensionSample, ...] = ()
    control_refusals: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    heartbeat_timeout: float = 3.0
    heartbeat_interval: float | None = None  # None: no lateness check (see heartbeat_late_after)
    figures: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # call control's
    ami: Mapping[str, str] | None = None  # /healthz detail: AMI configured but not logged in
    cluster: Mapping[str, Any] | None = None  # [cluster] mode: /healthz's "cluster" (cluster_wiring.py)
    # The supervisor is still adding its extensions (run() before its first pass): /healthz says
    # "starting" (503) rather than "ok" for a table that is not filled yet.
    starting: bool = False


# ----------------------------------------------------------------- pure conversion
def cumulative_buckets(snapshot: Mapping[str, Any] | None,
                       bounds: tuple[float, ...] = LATENCY_BUCKETS) -> list[tuple[str, float]]:
    """Non-cumulative bucket counts (+Inf last) -> Prometheus ``(le, cumulative count)`` pairs.

    A counts list of the wrong length (a worker built with other bounds) is
    padded with zeros, or its extra slots are folded into +Inf, so the result
    always has ``len(bounds) + 1`` monotonic buckets ending in "+Inf".
    """
    raw = _mapping(snapshot).get("counts")
    counts = [_number(count) for count in raw] if isinstance(raw, (list, tuple)) else []
    slots = len(bounds) + 1
    if len(counts) > slots:
        counts = counts[: slots - 1] + [sum(counts[slots - 1:])]
    counts += [0.0] * (slots - len(counts))
    labels = _le_labels(bounds)
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for le, count in zip(labels, counts):
        running += max(count, 0.0)
        buckets.append((le, running))
    return buckets


_LE_LABELS: dict[tuple[float, ...], list[str]] = {}


def _le_labels(bounds: tuple[float, ...]) -> list[str]:
    labels = _LE_LABELS.get(bounds)
    if labels is None:
        labels = _LE_LABELS[bounds] = [floatToGoString(bound) for bound in bounds] + ["+Inf"]
    return labels


def histogram_sum(snapshot: Mapping[str, Any] | None) -> float:
    return _number(_mapping(snapshot).get("sum"))


_FAMILY_TYPES = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily, "histogram": HistogramMetricFamily}


def _new_family(labels: tuple[str, ...], spec: Field) -> Metric:
    return _FAMILY_TYPES[spec.kind](spec.name, spec.help, labels=labels, unit=spec.unit)


# One row: (family name, label values, value) or, for histograms, value = (buckets, sum).
Row = tuple[str, tuple[str, ...], Any]


def _field_rows(rows: list[Row], spec: Field, labels: tuple[str, ...], value: Any) -> None:
    """The series of one field of one extension (one leg, for a per-leg section)."""
    if spec.kind == "histogram":
        rows.append((spec.name, labels, (cumulative_buckets(value, spec.buckets), histogram_sum(value))))
    elif spec.by is None:
        rows.append((spec.name, labels, _number(value)))
    else:
        values = _mapping(value)
        if spec.by == "leg":  # both legs always, like a per-leg section
            for leg in legs_of(values):
                rows.append((spec.name, (*labels, leg), _number(values.get(leg))))
        else:  # reasons and events: only those that happened (no zero-reason series)
            for key, count in sorted(values.items()):
                rows.append((spec.name, (*labels, str(key)), _number(count)))


def extension_rows(sample: ExtensionSample, now: float, heartbeat_timeout: float) -> list[Row]:
    """Every series of one extension, read through the schema (pure; raises on nothing it can avoid)."""
    ext = sample.id
    own = (ext,)
    rows: list[Row] = []
    for spec in EXTENSION_FIGURES:
        value = (1.0 if sample.is_up(now, heartbeat_timeout) else 0.0) if spec.key == "up" else getattr(sample, spec.key)
        if value is not None:  # unknown (no worker, no heartbeat yet): left out, not reported as 0
            rows.append((spec.name, own, _number(value)))
    totals = _mapping(sample.totals)
    for section in sections():
        data = section_data(section, totals)
        if data is None:
            if not section.always:
                continue  # an app section: only extensions running that app have its series
            data = {}
        if section.per_leg:
            for leg in legs_of(data):
                stats = _mapping(data.get(leg))
                for spec in section.fields:
                    _field_rows(rows, spec, (ext, leg), stats.get(spec.key))
        else:
            for spec in section.fields:
                _field_rows(rows, spec, own, data.get(spec.key))
    return rows


def new_families() -> dict[str, Metric]:
    """An empty family for every declared metric, in exposition order."""
    return {spec.name: _new_family(labels, spec) for labels, spec in metric_fields()}


def build_families(samples: Iterable[ExtensionSample], *, now: float, heartbeat_timeout: float,
                   control_refusals: Mapping[str, int] | None = None,
                   figures: Mapping[str, Any] | None = None) -> list[Metric]:
    """Every metric family for these extensions, and the control socket's refusals.

    An extension whose data cannot be converted is logged and left out; the
    others are still reported.
    """
    families = new_families()
    info = build_info()
    families[BUILD_INFO.name].add_metric([info[label] for label in BUILD_INFO.labels], 1)
    for reason, count in sorted((control_refusals or {}).items()):
        families["audiogw_control_refused"].add_metric([str(reason)], _number(count))
    for spec in SUPERVISOR_FIGURES:  # call control's figures (absent ones: no series)
        if figures and spec.key in figures:
            value = figures[spec.key]
            if spec.by is None:
                families[spec.name].add_metric([], _number(value))
            else:
                for key, count in sorted(_mapping(value).items()):
                    families[spec.name].add_metric([str(key)], _number(count))
    for sample in samples:
        try:
            rows = extension_rows(sample, now, heartbeat_timeout)
        except Exception:
            log.exception("metrics: skipping extension %s (unreadable counters)", getattr(sample, "id", "?"))
            continue
        for name, labels, value in rows:
            family = families[name]
            if family.type == "histogram":
                buckets, total = value
                family.add_metric(labels, buckets, total)
            else:
                family.add_metric(labels, value)
    return list(families.values())


# ------------------------------------------------- reading the supervisor (event loop only)
def sample_runtime(runtime: "ExtensionRuntime", now: float | None = None,
                   max_age: float = KERNEL_FIGURES_MAX_AGE) -> ExtensionSample:
    """Copy what a scrape needs out of a runtime; runs on the event loop, which owns the runtime.

    The snapshot is published every time the bus is read (4-6 times a second) but an extension
    changes about once per heartbeat: its sample is kept on the runtime and built again only
    when something it copies changed (a heartbeat, new totals, a kernel reading, a lifecycle
    event). Unchanged, the same object is returned, so /healthz's lateness, measured at request
    time against ``last_heartbeat``, grows exactly as the worker's silence does."""
    figures = runtime.kernel_figures(time.monotonic() if now is None else now, max_age)
    totals = runtime.totals()  # the same object until a heartbeat or an exit changes it
    life = runtime.lifecycle
    key = (runtime.last_heartbeat_wall, life.state, life.kill_reason, life.restarts, life.fatal_retries,
           life.last_failure)
    cached = runtime.metrics_sample
    if cached is not None and cached[0] is totals and cached[1] is figures and cached[2] == key:
        return cached[3]
    rss, cpu_seconds, priority = figures
    sample = ExtensionSample(
        id=str(runtime.config.id),
        # A worker ordered killed (its thread dump comes first) no longer serves, heartbeats or not.
        running=life.state == WorkerState.RUNNING and life.kill_reason is None,
        restarts=life.restarts,
        fatal_retries=life.fatal_retries,
        last_heartbeat=runtime.last_heartbeat_wall,
        totals=totals,
        rss=rss,
        cpu_seconds=cpu_seconds,
        realtime_priority=priority,
        state=runtime.state,
        reason=runtime.reason,
    )
    runtime.metrics_sample = (totals, figures, key, sample)
    return sample


def heartbeat_timeout_of(supervisor: "Supervisor") -> float:
    try:
        return float(supervisor.config.supervisor.heartbeat_timeout)
    except (AttributeError, TypeError, ValueError):
        return 3.0


# /healthz says "degraded" once a worker's heartbeat is this many intervals old,
# well before heartbeat_timeout gets it killed: the one rule for "late".
LATE_AFTER_INTERVALS = 2.0


def heartbeat_late_after(heartbeat_interval: float) -> float:
    """Seconds of silence after which a running worker's heartbeat counts as late."""
    return LATE_AFTER_INTERVALS * heartbeat_interval


def heartbeat_interval_of(supervisor: "Supervisor") -> float | None:
    try:
        return float(supervisor.config.supervisor.heartbeat_interval)
    except (AttributeError, TypeError, ValueError):
        return None


def take_snapshot(supervisor: "Supervisor", max_age: float = KERNEL_FIGURES_MAX_AGE) -> MetricsSnapshot:
    """Everything a scrape needs, read on the event loop; an unreadable extension is logged and left out."""
    now = time.monotonic()
    samples = []
    for runtime in supervisor.extensions.values():
        try:
            samples.append(sample_runtime(runtime, now, max_age))
        except Exception:
            log.exception("metrics: skipping extension %s", getattr(getattr(runtime, "config", None), "id", "?"))
    control = getattr(supervisor, "control", None)
    refusals = control.refusals() if control is not None else {}
    figures: dict[str, Any] = {}
    calls = getattr(supervisor, "calls", None)
    rest = getattr(getattr(supervisor, "metrics_server", None), "rest", None)
    cluster = getattr(supervisor, "cluster", None)  # [cluster] mode (supervisor/cluster_wiring.py)
    for source in (calls, rest, cluster):
        if source is not None:
            figures.update(source.figures())
    return MetricsSnapshot(tuple(samples), MappingProxyType(dict(refusals or {})), heartbeat_timeout_of(supervisor),
                           heartbeat_interval_of(supervisor), MappingProxyType(figures),
                           calls.health() if calls is not None else None,
                           cluster.health() if cluster is not None else None,
                           starting=not getattr(supervisor, "_started", True))


class SupervisorCollector(Collector):
    """Builds every family from the latest published snapshot at scrape time."""

    def __init__(self, snapshot: Callable[[], MetricsSnapshot], clock: Callable[[], float] = time.time) -> None:
        self.snapshot = snapshot
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        # Names without samples: lets the registry filter (?name[]=...) without a full collect.
        yield from new_families().values()

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot()
        yield from build_families(snapshot.samples, now=self.clock(), heartbeat_timeout=snapshot.heartbeat_timeout,
                                  control_refusals=snapshot.control_refusals, figures=snapshot.figures)


def health(samples: Iterable[ExtensionSample], *, now: float, heartbeat_timeout: float,
           heartbeat_interval: float | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for /healthz: 200 when every extension is up, else 503 naming the others.

    "Up" is the same test as ``audiogw_extension_up``: RUNNING and heard from
    within the heartbeat timeout. A running worker whose heartbeat is late
    (:func:`heartbeat_late_after`) is named under ``late`` with its silence, so
    /healthz turns 503 before the lifecycle kills it.
    """
    samples = list(samples)
    down = [sample for sample in samples if not sample.is_up(now, heartbeat_timeout)]
    late = []
    if heartbeat_interval is not None:
        limit = heartbeat_late_after(heartbeat_interval)
        # Rounded up to the ms: a silence just past the limit must not read as equal to it.
        late = [{"extension": sample.id,
                 "seconds_since_heartbeat": math.ceil((now - sample.last_heartbeat) * 1000) / 1000,
                 "late_after_seconds": limit}
                for sample in samples
                if sample.running and sample.last_heartbeat is not None and now - sample.last_heartbeat > limit]
    if down or late:
        # Why each one is down, as ctl list says it: a failed (busy port) or fatal extension is named.
        why = {sample.id: {"state": sample.state, "reason": sample.reason} for sample in down if sample.state}
        body: dict[str, Any] = {"status": "degraded", "down": [sample.id for sample in down]}
        if why:
            body["why"] = why
        if late:
            body["late"] = late
        return 503, body
    return 200, {"status": "ok", "extensions": len(samples)}


# ---------------------------------------------------------------------------- HTTP
class _QuietHandler(WSGIRequestHandler):
    timeout = 10  # seconds a client may take to send its request: a stuck client cannot pin a thread

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple, family: int) -> None:
        self.address_family = family
        super().__init__(address, _QuietHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve a fully qualified name (a DNS query); not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port
        self.setup_environ()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics: error serving %s", client_address, exc_info=True)


def _address_family(host: str, port: int) -> tuple[int, tuple]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _type, _proto, _name, address = infos[0]
    return family, address


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class MetricsServer:
    """Serves /metrics (Prometheus text or OpenMetrics) and /healthz in a daemon thread."""

    def __init__(self, supervisor: "Supervisor") -> None:
        self.supervisor = supervisor
        self.registry = CollectorRegistry(auto_describe=False)
        # Swapped whole by publish() on the loop, read whole by the HTTP thread (one reference: atomic).
        self.snapshot = MetricsSnapshot(heartbeat_timeout=heartbeat_timeout_of(supervisor))
        self.collector = SupervisorCollector(lambda: self.snapshot)
        self.registry.register(self.collector)
        self._metrics_app = make_wsgi_app(self.registry)
        self._server: _ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.host: str = supervisor.config.supervisor.metrics_host
        self.port: int | None = None
        self.rest = None  # the Twilio REST subset (supervisor/rest.py), once start() runs on the loop

    # -- WSGI -----------------------------------------------------------------
    def app(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        try:
            if path.startswith(REST_PREFIX) and self.rest is not None:
                return self._rest(environ, start_response, method, path)
            if path not in ("/metrics", "/healthz"):
                return self._reply(start_response, "404 Not Found", b"not found: try /metrics or /healthz\n")
            if method not in ("GET", "HEAD"):
                return self._reply(start_response, "405 Method Not Allowed", b"use GET\n", [("Allow", "GET, HEAD")])
            if path == "/metrics":
                body = list(self._metrics_app({**environ, "REQUEST_METHOD": "GET"}, start_response))
            else:
                body = self._healthz(start_response)
            return [] if method == "HEAD" else body
        except Exception:
            log.exception("metrics: %s %s failed", method, path)
            return self._reply(start_response, "500 Internal Server Error", b"internal error\n")

    def _rest(self, environ: dict[str, Any], start_response: Callable, method: str, path: str) -> Iterable[bytes]:
        """The Twilio REST subset (supervisor/rest.py); the hangup itself runs on the event loop."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if length > REST_MAX_BODY or length < 0:
            reply = self.rest.too_large()
        else:
            body = environ["wsgi.input"].read(length) if length else b""
            reply = self.rest.serve(method, path, environ.get("HTTP_AUTHORIZATION", ""), body,
                                    str(environ.get("REMOTE_ADDR", "")))
        return self._reply(start_response, reply.status_line, reply.encoded(), list(reply.headers),
                           content_type="application/json")

    def _healthz(self, start_response: Callable) -> Iterable[bytes]:
        snapshot = self.snapshot
        code, body = health(snapshot.samples, now=time.time(), heartbeat_timeout=snapshot.heartbeat_timeout,
                            heartbeat_interval=snapshot.heartbeat_interval)
        if snapshot.starting and code == 200:
            code, body = 503, {"status": "starting", "extensions": len(snapshot.samples)}
        if snapshot.cluster is not None:  # etcd lost: still 200 while serving (cached assignments), "cluster" says so
            body["cluster"] = dict(snapshot.cluster)
        if snapshot.ami is not None:  # AMI down costs dial/DTMF, not the audio: detail, not a 503
            body = {**body, "ami": dict(snapshot.ami)}
        status = "200 OK" if code == 200 else "503 Service Unavailable"
        return self._reply(start_response, status, orjson.dumps(body), content_type="application/json")

    def publish(self) -> None:
        """Rebuild the snapshot from the supervisor's state and swap it in; event loop thread only."""
        try:
            self.snapshot = take_snapshot(self.supervisor)
        except Exception:
            log.exception("metrics: cannot read the extensions")

    def add_routes(self, routes: Callable[[dict[str, Any], Callable], Iterable[bytes] | None]) -> None:
        """Paths answered before the built-in ones ([cluster] mode's ``/route/ID``, ``/sd``): ``routes``
        returns None for a path it does not serve. Works before or after :meth:`start`."""
        inner = self.app

        def app(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
            try:
                answered = routes(environ, start_response)
            except Exception:
                log.exception("metrics: %s failed", environ.get("PATH_INFO"))
                return self._reply(start_response, "500 Internal Server Error", b"internal error\n")
            return inner(environ, start_response) if answered is None else answered

        self.app = app  # type: ignore[method-assign]
        if self._server is not None:
            self._server.set_app(app)

    @staticmethod
    def _reply(start_response: Callable, status: str, body: bytes, headers: list | None = None,
               content_type: str = "text/plain; charset=utf-8") -> list[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store"), *(headers or [])])
        return [body]

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        calls = getattr(self.supervisor, "calls", None)
        if calls is not None:
            import asyncio

            self.rest = RestApi(lambda: self.supervisor.config.agent,
                                on_loop(asyncio.get_running_loop(), calls.hangup_conversation))
        self.publish()
        settings = self.supervisor.config.supervisor
        host, port = settings.metrics_host, settings.metrics_port
        try:
            family, address = _address_family(host, port)
            server = _ThreadingWSGIServer(address, family)
        except OSError as error:
            # Audio matters more than metrics: keep serving calls, say so loudly.
            log.error("metrics not served: cannot listen on %s:%d: %s", _url_host(host), port,
                      error.strerror or error)
            return
        server.set_app(self.app)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics listening on http://%s:%d/metrics", _url_host(host), self.port)

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

"""Prometheus ``/metrics`` and ``/healthz`` for the supervisor.

Nothing is stored here: a custom collector (on its own registry, never the
process-wide default one, never multiprocess mode) reads the supervisor's
:class:`ExtensionRuntime` objects at scrape time and turns their counters into
metric families. Workers ship cumulative counters in every heartbeat and the
runtime adds up every incarnation (``totals()``), so counters never go
backwards across worker restarts.

The HTTP server runs in a daemon thread so a scrape never waits for the
supervisor's event loop and the loop never waits for a scrape. That thread only
reads: it copies the extension list, and whatever it cannot read on one scrape
(an extension removed meanwhile, a malformed heartbeat) is logged and skipped,
never turned into a failed scrape.

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
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from audiogw.shared.audiosocket import LEG_KINDS
from audiogw.shared.histogram import LATENCY_BUCKETS
from audiogw.supervisor.lifecycle import WorkerState

if TYPE_CHECKING:
    from audiogw.supervisor.daemon import Supervisor
    from audiogw.supervisor.extension import ExtensionRuntime

log = logging.getLogger("audiogw.supervisor")

# Per-leg plain counters: snapshot key -> family name (without "_total", which
# CounterMetricFamily adds) and help text.
LEG_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("calls_total", "audiogw_calls", "Calls (AudioSocket connections) accepted on this leg."),
    ("frames_received", "audiogw_frames_received", "Audio frames received from Asterisk."),
    ("frames_sent", "audiogw_frames_sent", "Audio frames sent to Asterisk (silence included)."),
    ("underruns", "audiogw_underruns", "Ticks with no audio ready while playing: silence was sent instead."),
    ("late_frames", "audiogw_late_frames", "Outbound frames sent more than one frame period (20 ms) after their deadline."),
)
# Per-leg counters with a reason label: snapshot key -> family name, help.
LEG_REASON_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("protocol_errors", "audiogw_protocol_errors", "AudioSocket protocol errors, by reason."),
    ("frames_dropped", "audiogw_frames_dropped", "Frames dropped by the gateway, by reason."),
)

# (name as exposed without _total for counters, type, labels, help): the single
# list of what /metrics carries, used by collect() and describe().
FAMILIES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("audiogw_extension_up", "gauge", ("extension",),
     "1 while the extension's worker is running and heartbeating, else 0."),
    ("audiogw_worker_restarts", "counter", ("extension",), "Worker restarts by the supervisor."),
    ("audiogw_calls_active", "gauge", ("extension", "leg"), "Calls in progress."),
    *((name, "counter", ("extension", "leg"), doc) for _key, name, doc in LEG_COUNTERS),
    *((name, "counter", ("extension", "leg", "reason"), doc) for _key, name, doc in LEG_REASON_COUNTERS),
    ("audiogw_send_lateness_seconds", "histogram", ("extension",),
     "How late each outbound frame left versus its 20 ms deadline (all legs share the worker's clock)."),
    ("audiogw_event_loop_lag_seconds", "histogram", ("extension",),
     "How late a short timer fired in the worker's event loop."),
    ("audiogw_worker_resident_memory_bytes", "gauge", ("extension",), "Resident memory of the worker process."),
    ("audiogw_worker_cpu_seconds", "counter", ("extension",),
     "CPU time (user + system) of the extension's worker, over every incarnation."),
    ("audiogw_worker_realtime_priority", "gauge", ("extension",),
     "SCHED_RR priority the worker runs at, read from the kernel; 0: normal scheduling "
     "(also when audiosocket.realtime_priority was refused)."),
    ("audiogw_last_heartbeat_timestamp_seconds", "gauge", ("extension",),
     "Unix time the supervisor last heard from the extension's worker."),
    ("audiogw_app_events", "counter", ("extension", "event"), "Events counted by the extension's app, by name."),
    # The agent connector (only extensions running the `agent` app have these series).
    ("audiogw_agent_connect_failures", "counter", ("extension", "leg"),
     "Failed attempts to open the WebSocket to the voice agent."),
    ("audiogw_agent_audio_received_seconds", "counter", ("extension", "leg"), "Audio received from the agent."),
    ("audiogw_agent_audio_dropped_seconds", "counter", ("extension", "reason"),
     "Audio dropped by the connector, by reason (buffer_full, barge_in; caller audio an agent did not read in time is frames_dropped{reason='latency'})."),
    ("audiogw_agent_bad_messages", "counter", ("extension", "reason"), "Agent messages refused, by reason."),
    ("audiogw_agent_playback_buffer_seconds", "gauge", ("extension", "leg"),
     "Agent audio queued for playout on live legs."),
    ("audiogw_agent_barge_in_reaction_seconds", "histogram", ("extension",),
     "From the caller's speech onset to the stop of agent playback (gateway barge-in)."),
    # The supervisor's own control socket (not per extension).
    ("audiogw_control_refused", "counter", ("reason",),
     "Control requests refused: malformed, bad_request, internal_error, or unauthorized (a tcp client "
     "whose CURVE key is not in curve_authorized_clients)."),
)

_UNITS = {"audiogw_send_lateness_seconds": "seconds", "audiogw_event_loop_lag_seconds": "seconds",
          "audiogw_agent_audio_received_seconds": "seconds", "audiogw_agent_audio_dropped_seconds": "seconds",
          "audiogw_agent_playback_buffer_seconds": "seconds", "audiogw_agent_barge_in_reaction_seconds": "seconds",
          "audiogw_worker_resident_memory_bytes": "bytes", "audiogw_worker_cpu_seconds": "seconds"}


@dataclass(frozen=True)
class ExtensionSample:
    """What one scrape needs of one extension, copied out of its ExtensionRuntime."""

    id: str
    running: bool  # lifecycle state is RUNNING
    restarts: int = 0
    last_heartbeat: float | None = None  # unix time
    totals: Mapping[str, Any] = field(default_factory=dict)
    rss: int | None = None
    cpu_seconds: float | None = None
    realtime_priority: int | None = None  # None: no live worker to ask

    def is_up(self, now: float, heartbeat_timeout: float) -> bool:
        """Serving and heard from within the heartbeat timeout."""
        return (self.running and self.last_heartbeat is not None
                and now - self.last_heartbeat <= heartbeat_timeout)


# ----------------------------------------------------------------- pure conversion
def _number(value: Any) -> float:
    """A counter value from a heartbeat, or 0 for anything that is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0
    return float(value)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


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
    labels = [floatToGoString(bound) for bound in bounds] + ["+Inf"]
    buckets: list[tuple[str, float]] = []
    running = 0.0
    for le, count in zip(labels, counts):
        running += max(count, 0.0)
        buckets.append((le, running))
    return buckets


def histogram_sum(snapshot: Mapping[str, Any] | None) -> float:
    return _number(_mapping(snapshot).get("sum"))


def _new_family(name: str, kind: str, labels: tuple[str, ...], doc: str) -> Metric:
    unit = _UNITS.get(name, "")
    if kind == "gauge":
        return GaugeMetricFamily(name, doc, labels=labels, unit=unit)
    if kind == "counter":
        return CounterMetricFamily(name, doc, labels=labels, unit=unit)
    return HistogramMetricFamily(name, doc, labels=labels, unit=unit)


# One row: (family name, label values, value) or, for histograms, value = (buckets, sum).
Row = tuple[str, tuple[str, ...], Any]


def extension_rows(sample: ExtensionSample, now: float, heartbeat_timeout: float) -> list[Row]:
    """Every series of one extension (pure; raises on nothing it can avoid)."""
    ext = sample.id
    rows: list[Row] = [
        ("audiogw_extension_up", (ext,), 1.0 if sample.is_up(now, heartbeat_timeout) else 0.0),
        ("audiogw_worker_restarts", (ext,), _number(sample.restarts)),
    ]
    totals = _mapping(sample.totals)
    legs = _mapping(totals.get("legs"))
    # Both legs always appear (zeros before the first call) so rate() sees the first increase.
    for leg in (*LEG_KINDS, *sorted(str(kind) for kind in legs if kind not in LEG_KINDS)):
        stats = _mapping(legs.get(leg))
        rows.append(("audiogw_calls_active", (ext, leg), _number(stats.get("calls_active"))))
        for key, name, _doc in LEG_COUNTERS:
            rows.append((name, (ext, leg), _number(stats.get(key))))
        for key, name, _doc in LEG_REASON_COUNTERS:
            for reason, count in sorted(_mapping(stats.get(key)).items()):
                rows.append((name, (ext, leg, str(reason)), _number(count)))
    lateness = _mapping(totals.get("send_lateness"))
    rows.append(("audiogw_send_lateness_seconds", (ext,), (cumulative_buckets(lateness), histogram_sum(lateness))))
    loop_lag = _mapping(totals.get("loop_lag"))
    rows.append(("audiogw_event_loop_lag_seconds", (ext,), (cumulative_buckets(loop_lag), histogram_sum(loop_lag))))
    if sample.rss is not None:
        rows.append(("audiogw_worker_resident_memory_bytes", (ext,), _number(sample.rss)))
    if sample.cpu_seconds is not None:
        rows.append(("audiogw_worker_cpu_seconds", (ext,), _number(sample.cpu_seconds)))
    if sample.realtime_priority is not None:
        rows.append(("audiogw_worker_realtime_priority", (ext,), _number(sample.realtime_priority)))
    if sample.last_heartbeat is not None:
        rows.append(("audiogw_last_heartbeat_timestamp_seconds", (ext,), _number(sample.last_heartbeat)))
    for event, count in sorted(_mapping(totals.get("app")).items()):
        rows.append(("audiogw_app_events", (ext, str(event)), _number(count)))
    if "agent" in totals:
        rows.extend(agent_rows(ext, _mapping(totals.get("agent"))))
    return rows


def agent_rows(ext: str, agent: Mapping[str, Any]) -> list[Row]:
    """The agent connector's series of one extension."""
    rows: list[Row] = []
    for key, name in (("connect_failures", "audiogw_agent_connect_failures"),
                      ("audio_received_seconds", "audiogw_agent_audio_received_seconds"),
                      ("playback_buffer_seconds", "audiogw_agent_playback_buffer_seconds")):
        values = _mapping(agent.get(key))
        for leg in (*LEG_KINDS, *sorted(str(kind) for kind in values if kind not in LEG_KINDS)):
            rows.append((name, (ext, leg), _number(values.get(leg))))
    for key, name in (("audio_dropped_seconds", "audiogw_agent_audio_dropped_seconds"),
                      ("bad_messages", "audiogw_agent_bad_messages")):
        for reason, count in sorted(_mapping(agent.get(key)).items()):
            rows.append((name, (ext, str(reason)), _number(count)))
    reaction = _mapping(agent.get("barge_in_reaction"))
    rows.append(("audiogw_agent_barge_in_reaction_seconds", (ext,),
                 (cumulative_buckets(reaction), histogram_sum(reaction))))
    return rows


def build_families(samples: Iterable[ExtensionSample], *, now: float, heartbeat_timeout: float,
                   control_refusals: Mapping[str, int] | None = None) -> list[Metric]:
    """Every metric family for these extensions, and the control socket's refusals.

    An extension whose data cannot be converted is logged and left out; the
    others are still reported.
    """
    families = {name: _new_family(name, kind, labels, doc) for name, kind, labels, doc in FAMILIES}
    for reason, count in sorted((control_refusals or {}).items()):
        families["audiogw_control_refused"].add_metric([str(reason)], _number(count))
    for sample in samples:
        try:
            rows = extension_rows(sample, now, heartbeat_timeout)
        except Exception:
            log.exception("metrics: skipping extension %s (unreadable counters)", getattr(sample, "id", "?"))
            continue
        for name, labels, value in rows:
            family = families[name]
            if isinstance(family, HistogramMetricFamily):
                buckets, total = value
                family.add_metric(list(labels), buckets, total)
            else:
                family.add_metric(list(labels), value)
    return list(families.values())


# ------------------------------------------------------------- reading the supervisor
def sample_runtime(runtime: "ExtensionRuntime") -> ExtensionSample:
    """Copy what a scrape needs out of a runtime the event loop thread keeps changing."""
    for attempt in range(3):
        try:
            totals = runtime.totals()
            break
        except RuntimeError:  # a dict changed size under us (a worker exit being recorded): retry
            if attempt == 2:
                raise
    rss, cpu_seconds = runtime.resources()
    return ExtensionSample(
        id=str(runtime.config.id),
        running=runtime.lifecycle.state == WorkerState.RUNNING,
        restarts=runtime.lifecycle.restarts,
        last_heartbeat=runtime.last_heartbeat_wall,
        totals=totals,
        rss=rss,
        cpu_seconds=cpu_seconds,
        realtime_priority=runtime.realtime_priority(),
    )


def _runtimes(supervisor: "Supervisor") -> list["ExtensionRuntime"]:
    for attempt in range(3):
        try:
            return list(supervisor.extensions.values())
        except RuntimeError:
            if attempt == 2:
                raise
    return []


def collect_samples(supervisor: "Supervisor") -> list[ExtensionSample]:
    samples = []
    for runtime in _runtimes(supervisor):
        try:
            samples.append(sample_runtime(runtime))
        except Exception:
            log.exception("metrics: skipping extension %s", getattr(getattr(runtime, "config", None), "id", "?"))
    return samples


def heartbeat_timeout_of(supervisor: "Supervisor") -> float:
    try:
        return float(supervisor.config.supervisor.heartbeat_timeout)
    except (AttributeError, TypeError, ValueError):
        return 3.0


class SupervisorCollector(Collector):
    """Builds every family from the supervisor's extensions at scrape time."""

    def __init__(self, supervisor: "Supervisor", clock: Callable[[], float] = time.time) -> None:
        self.supervisor = supervisor
        self.clock = clock

    def describe(self) -> Iterator[Metric]:
        # Names without samples: lets the registry filter (?name[]=...) without a full collect.
        for name, kind, labels, doc in FAMILIES:
            yield _new_family(name, kind, labels, doc)

    def collect(self) -> Iterator[Metric]:
        try:
            samples = collect_samples(self.supervisor)
        except Exception:
            log.exception("metrics: cannot read the extensions")
            samples = []
        control = getattr(self.supervisor, "control", None)
        refusals = control.refusals() if control is not None else None
        yield from build_families(samples, now=self.clock(), heartbeat_timeout=heartbeat_timeout_of(self.supervisor),
                                  control_refusals=refusals)


def health(samples: Iterable[ExtensionSample], *, now: float, heartbeat_timeout: float) -> tuple[int, dict[str, Any]]:
    """(HTTP status, body) for /healthz: 200 when every extension is up, else 503 naming the others.

    "Up" is the same test as ``audiogw_extension_up``: RUNNING and heard from
    within the heartbeat timeout.
    """
    samples = list(samples)
    down = [sample.id for sample in samples if not sample.is_up(now, heartbeat_timeout)]
    if down:
        return 503, {"status": "degraded", "down": down}
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
        self.collector = SupervisorCollector(supervisor)
        self.registry.register(self.collector)
        self._metrics_app = make_wsgi_app(self.registry)
        self._server: _ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.host: str = supervisor.config.supervisor.metrics_host
        self.port: int | None = None

    # -- WSGI -----------------------------------------------------------------
    def app(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        try:
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

    def _healthz(self, start_response: Callable) -> Iterable[bytes]:
        samples = []
        for runtime in _runtimes(self.supervisor):
            try:
                samples.append(ExtensionSample(
                    id=str(runtime.config.id),
                    running=runtime.lifecycle.state == WorkerState.RUNNING,
                    last_heartbeat=runtime.last_heartbeat_wall,
                ))
            except Exception:
                log.exception("metrics: /healthz cannot read an extension")
        code, body = health(samples, now=time.time(), heartbeat_timeout=heartbeat_timeout_of(self.supervisor))
        status = "200 OK" if code == 200 else "503 Service Unavailable"
        return self._reply(start_response, status, orjson.dumps(body), content_type="application/json")

    @staticmethod
    def _reply(start_response: Callable, status: str, body: bytes, headers: list | None = None,
               content_type: str = "text/plain; charset=utf-8") -> list[bytes]:
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store"), *(headers or [])])
        return [body]

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
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

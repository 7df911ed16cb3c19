"""Cluster mode's pure parts in-process: /route/ID and /sd from the published view, the --cluster
dialplan, ctl list's HOST column, the declared figures (the real processes: test_cluster_supervisors.py)."""
from __future__ import annotations

from types import MappingProxyType, SimpleNamespace

import msgspec
import orjson

from audiogw.client.ctl import format_list_table
from audiogw.shared.commands import DIALPLAN, LIST
from audiogw.shared.stats_schema import CLUSTER_FIGURES, SUPERVISOR_FIGURES
from audiogw.shared.messages import PeerReport, decode_peer_report
from audiogw.supervisor.cluster_dialplan import cluster_dialplan_for
from audiogw.supervisor.cluster_wiring import Published
from audiogw.supervisor.routes import cluster_routes


def get(routes, path: str, method: str = "GET"):
    seen = {}

    def start_response(status, headers):
        seen["status"], seen["headers"] = status, dict(headers)

    body = routes({"PATH_INFO": path, "REQUEST_METHOD": method}, start_response)
    if body is None:
        return None
    return seen["status"], b"".join(body)


def test_route_and_sd_answer_from_the_published_view_and_leave_other_paths_alone():
    route = {"host": "127.0.0.3", "ia_port": 32000, "retorno_port": 32001}
    report = PeerReport(node="gw1", etcd_connected=True, contact_age=0.2, nodes=["gw1", "gw2"], serving=["1201"])
    cluster = SimpleNamespace(name="gw1", peer_report=lambda: report,
                              published=Published(routes=MappingProxyType({"1201": route}),
                                                  sd=({"targets": ["127.0.0.2:9464"], "labels": {"node": "gw1"}},)))
    routes = cluster_routes(cluster)
    assert get(routes, "/route/1201") == ("200 OK", orjson.dumps(route))
    status, body = get(routes, "/route/1299")
    assert status == "404 Not Found" and "1299" in orjson.loads(body)["error"]
    assert get(routes, "/sd") == ("200 OK", orjson.dumps([{"targets": ["127.0.0.2:9464"], "labels": {"node": "gw1"}}]))
    assert get(routes, "/route/1201", "HEAD") == ("200 OK", b"")
    assert get(routes, "/route/1201", "POST")[0] == "405 Method Not Allowed"
    assert get(routes, "/metrics") is None and get(routes, "/healthz") is None  # the built-in ones answer
    status, body = get(routes, "/cluster/peer")
    assert status == "200 OK" and decode_peer_report(body) == report
    cluster.published = Published(routes=MappingProxyType({}), sd=())  # a new view, swapped whole
    assert get(routes, "/route/1201")[0] == "404 Not Found"
    # Fenced (cut off from an etcd its peers reach): its view is stale, so every route is 503 with the reason.
    cluster.published = Published(routes=MappingProxyType({"1201": route}), fenced="cut off from etcd")
    status, body = get(routes, "/route/1201")
    assert status == "503 Service Unavailable" and orjson.loads(body)["error"] == (
        "node gw1: cut off from etcd; ask another node")


def test_cluster_dialplan_asks_every_node_and_retries_on_chanunavail():
    text = cluster_dialplan_for("1201", "echo", 32000, 32001, ["127.0.0.2:9464", "127.0.0.3:9464"])
    assert "Set(LOCAL(nodes)=127.0.0.2:9464&127.0.0.3:9464)" in text
    assert "CURL(http://${node}/route/1201)" in text
    assert "Gosub(audiogw-1201-dial,s,1(${AUDIOGW_UUID},32000))" in text
    assert "Gosub(audiogw-1201-dial,s,1(${EXTEN},32001))" in text
    assert "Dial(AudioSocket/${host}:${ARG2}/${ARG1}/c(slin))" in text
    assert '"${DIALSTATUS}" = "CHANUNAVAIL"]?next' in text
    # An answer that is not a route (404, a fenced node's 503: {"error": ...}) goes to the next node.
    assert 'Set(LOCAL(field)=${CUT(route,\\",2)})' in text and '"${field}" != "host"]?next' in text


def test_ctl_list_shows_the_host_only_in_cluster_mode_and_list_rows_decode_it():
    row = {"id": "1201", "ia_port": 32000, "retorno_port": 32001, "app": "echo", "options": {}, "state": "placed",
           "pid": None, "source": "cluster", "reason": None, "host": "gw2"}
    table = format_list_table([row])
    assert "HOST" in table.splitlines()[0] and "gw2" in table
    assert "HOST" not in format_list_table([{**row, "host": None}])
    [decoded] = msgspec.convert([row], LIST.result)
    assert decoded.host == "gw2"
    assert DIALPLAN.parse({"id": "1201", "cluster": True}) == {"id": "1201", "cluster": True}


def test_cluster_figures_are_supervisor_figures():
    assert set(CLUSTER_FIGURES) <= set(SUPERVISOR_FIGURES)
    assert {field.name for field in CLUSTER_FIGURES} >= {"audiogw_cluster_connected", "audiogw_cluster_leader"}


def test_a_node_without_http_is_warned_that_nobody_can_ask_it():
    from audiogw.supervisor.cluster_wiring import no_http_warning

    def supervisor(port: int):
        return SimpleNamespace(config=SimpleNamespace(supervisor=SimpleNamespace(metrics_port=port)))

    assert "answers no GET /route/ID" in no_http_warning(supervisor(0))
    assert no_http_warning(supervisor(9464)) is None

"""``[cluster]`` mode's HTTP paths on the supervisor's HTTP server (``supervisor.metrics``).

- ``GET /route/ID``: 200 ``{"host", "ia_port", "retorno_port"}`` (SPEC "Beyond one host"), the node that
  serves extension ID and its ports, or 404 when it is not placed on a live node;
- ``GET /sd``: Prometheus ``http_sd_configs`` JSON, every live node's metrics address;
- ``GET /cluster/peer``: this node's :class:`~audiogw.shared.messages.PeerReport`, for the other nodes
  (``supervisor/fencing.py``: who may listen when etcd is out of reach of some).

A fenced node (cut off from an etcd its peers reach) answers ``/route/ID`` 503 with the reason: its
view is stale, so Asterisk asks the next node.

Both answer from :attr:`ClusterServing.published` (built on the loop, swapped whole): the HTTP thread
never waits for etcd nor the event loop. Any node answers for every extension.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

from audiogw.shared.messages import encode_peer_report
from audiogw.supervisor.fencing import PEER_PATH

if TYPE_CHECKING:
    from audiogw.supervisor.cluster_wiring import ClusterServing

ROUTE_PREFIX = "/route/"


def _reply(start_response: Callable, status: str, body: bytes, content_type: str = "application/json") -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body))),
                            ("Cache-Control", "no-store")])
    return [body]


def cluster_routes(cluster: "ClusterServing") -> Callable[[dict[str, Any], Callable], Iterable[bytes] | None]:
    """The WSGI part for ``/route/ID`` and ``/sd``; None for every other path (the built-in ones)."""

    def routes(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes] | None:
        path = environ.get("PATH_INFO") or "/"
        if path not in ("/sd", PEER_PATH) and not path.startswith(ROUTE_PREFIX):
            return None
        method = environ.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "8")])
            return [b"use GET\n"]
        published = cluster.published
        if path == "/sd":
            body = _reply(start_response, "200 OK", orjson.dumps(list(published.sd)))
        elif path == PEER_PATH:
            body = _reply(start_response, "200 OK", encode_peer_report(cluster.peer_report()))
        elif published.fenced is not None:
            body = _reply(start_response, "503 Service Unavailable",
                          orjson.dumps({"error": f"node {cluster.name}: {published.fenced}; ask another node"}))
        else:
            route = published.routes.get(path[len(ROUTE_PREFIX):])
            if route is None:
                body = _reply(start_response, "404 Not Found",
                              orjson.dumps({"error": f"extension {path[len(ROUTE_PREFIX):]!s} is not served"}))
            else:
                body = _reply(start_response, "200 OK", orjson.dumps(route))
        return [] if method == "HEAD" else body

    return routes

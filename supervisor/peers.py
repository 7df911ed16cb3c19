"""Ask other nodes ``GET /cluster/peer`` (``supervisor/fencing.py`` decides what their answers mean).

A plain HTTP/1.1 GET over an asyncio stream, on the supervisor's loop (never a worker's), bounded
by ``timeout`` per node, every node asked at once. An answer that is not a valid
:class:`~audiogw.shared.messages.PeerReport` from the node asked is refused with the reason:
logged (once per node and reason), counted in ``stats["peer_refused"]``, and treated as no answer.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Mapping

from audiogw.shared.messages import MAX_MESSAGE_BYTES, MessageError, PeerReport, decode_peer_report
from audiogw.supervisor.fencing import PEER_PATH
from audiogw.supervisor.log_once import FirstSeen

log = logging.getLogger("audiogw.supervisor.cluster")

__all__ = ["ask_peers", "split_address"]

_first = FirstSeen()  # (node, reason): logged once


def split_address(http: str) -> tuple[str, int]:
    """A node record's ``http`` (``HOST:PORT`` or ``[V6]:PORT``) -> host and port."""
    host, _, port = http.rpartition(":")
    return host.strip("[]"), int(port)


async def _read_all(reader: asyncio.StreamReader, limit: int) -> bytes:
    """The whole answer (the server closes after it: ``Connection: close``), at most ``limit`` bytes."""
    chunks, size = [], 0
    while chunk := await reader.read(65536):
        size += len(chunk)
        if size > limit:
            raise MessageError(f"answer exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _ask(name: str, http: str, timeout: float) -> PeerReport:
    host, port = split_address(http)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(f"GET {PEER_PATH} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(_read_all(reader, MAX_MESSAGE_BYTES + 4096), timeout)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        first_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        raise MessageError(f"answered {first_line!r}")
    report = decode_peer_report(body)
    if report.node != name:
        raise MessageError(f"answered as node {report.node!r}")
    return report


async def ask_peers(peers: Mapping[str, str], timeout: float, stats: Counter[str]) -> dict[str, PeerReport]:
    """Every node of ``peers`` (name -> HTTP address) asked at once: the valid answers, by name."""
    names = list(peers)
    answers = await asyncio.gather(*(_ask(name, peers[name], timeout) for name in names), return_exceptions=True)
    reports = {}
    for name, answer in zip(names, answers):
        if isinstance(answer, PeerReport):
            reports[name] = answer
        elif isinstance(answer, MessageError):
            stats["peer_refused"] += 1
            if _first((name, answer.reason)):
                log.warning("cluster: node %s's %s answer refused: %s", name, PEER_PATH, answer.reason)
        elif isinstance(answer, (OSError, TimeoutError, ValueError)):
            stats["peer_unreachable"] += 1  # gone, or cut off from this node too: no word either way
        elif isinstance(answer, BaseException):
            raise answer
    return reports

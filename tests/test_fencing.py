"""Who may listen when etcd is out of reach of some nodes (supervisor/fencing.py, supervisor/peers.py):
the pure decisions, and the peer question over real HTTP on 127.0.0.1 with good and bad answers."""
from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from audiogw.shared.messages import MessageError, PeerReport, decode_peer_report, encode_peer_report
from audiogw.supervisor.fencing import PEER_PATH, claimed, lease_gone
from audiogw.supervisor.peers import ask_peers, split_address

TTL = 3


def report(node: str, *, connected: bool = True, age: float | None = 0.5, nodes=("gw1", "gw2", "gw3"),
           serving=()) -> PeerReport:
    return PeerReport(node=node, etcd_connected=connected, contact_age=age, nodes=list(nodes), serving=list(serving))


def test_a_peer_that_reaches_etcd_and_no_longer_lists_me_proves_my_lease_gone():
    assert lease_gone("gw1", [report("gw2", nodes=("gw2", "gw3"))], TTL) == "gw2"
    assert lease_gone("gw1", [report("gw3"), report("gw2", nodes=("gw2",))], TTL) == "gw2"


@pytest.mark.parametrize("peer", [
    report("gw2"),  # still lists me: my lease lives
    report("gw2", connected=False, nodes=("gw2",)),  # etcd is gone for it too: all of etcd may be down
    report("gw2", age=None, nodes=("gw2",)),  # never reached etcd
    report("gw2", age=TTL + 0.1, nodes=("gw2",)),  # its view is older than a lease: proves nothing
    report("gw1", nodes=("gw2",)),  # my own answer (an address that loops back)
])
def test_no_proof_no_fence(peer):
    assert lease_gone("gw1", [peer], TTL) is None


def test_no_answer_at_all_is_no_proof():
    assert lease_gone("gw1", [], TTL) is None


def test_claimed_names_the_node_that_still_listens():
    reports = {"gw1": report("gw1", serving=("1201", "1202")), "gw2": report("gw2", serving=())}
    assert claimed(["1201", "1203"], reports) == {"1201": "gw1"}
    assert claimed(["1203"], reports) == {}


def test_the_report_round_trips_and_bad_ones_are_refused_with_a_reason():
    good = report("gw2", serving=("1201",))
    assert decode_peer_report(encode_peer_report(good)) == good
    assert decode_peer_report(encode_peer_report(good)[:-1] + b',"newer":1}') == good  # another version's field
    for raw, reason in [(b"", "not JSON"), (b'{"node":"../etc","etcd_connected":true,"contact_age":0,'
                                            b'"nodes":[],"serving":[]}', "$.node"),
                        (b'{"node":"gw2","etcd_connected":true,"contact_age":-1,"nodes":[],"serving":[]}',
                         "contact_age"),
                        (b'{"node":"gw2"}', "missing required field")]:
        with pytest.raises(MessageError, match=reason.replace("$", r"\$")):
            decode_peer_report(raw)


def test_split_address():
    assert split_address("127.0.0.2:8080") == ("127.0.0.2", 8080)
    assert split_address("[::1]:9") == ("::1", 9)


async def _server(answers: dict[int, bytes]):
    """One HTTP server per answer on 127.0.0.1 (port 0): it answers the raw bytes given, then closes."""
    servers, addresses = [], {}

    for index, raw in answers.items():
        async def handle(reader, writer, raw=raw):
            request = await reader.readuntil(b"\r\n\r\n")
            assert request.startswith(f"GET {PEER_PATH} HTTP/1.1\r\n".encode())
            if raw:
                writer.write(raw)
                await writer.drain()
                writer.close()
            else:
                await asyncio.sleep(5)  # never answers

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        addresses[index] = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    return servers, addresses


def _http(body: bytes, status: str = "200 OK") -> bytes:
    # Split in two writes' worth of bytes: the reader must read to the end, not one chunk.
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def test_ask_peers_keeps_valid_answers_and_counts_the_rest():
    good = encode_peer_report(report("gw2", serving=("1201",)))

    async def scenario():
        servers, addresses = await _server({
            2: _http(good + b" " * 70000),  # valid, and bigger than one read
            3: _http(b"nope"),
            4: _http(encode_peer_report(report("gw9"))),  # answers as another node
            5: _http(b"{}", "500 Internal Server Error"),
            6: b"",  # silent
        })
        peers = {"gw2": addresses[2], "gw3": addresses[3], "gw4": addresses[4], "gw5": addresses[5],
                 "gw6": addresses[6], "gw7": "127.0.0.1:1"}  # nobody listens there
        stats: Counter[str] = Counter()
        try:
            reports = await ask_peers(peers, 0.5, stats)
        finally:
            for server in servers:
                server.close()
        return reports, stats

    reports, stats = asyncio.run(scenario())
    assert reports == {"gw2": report("gw2", serving=("1201",))}
    assert stats["peer_refused"] == 3 and stats["peer_unreachable"] == 2, stats

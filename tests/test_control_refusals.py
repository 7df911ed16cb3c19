"""Every refused tcp client is counted, handshake failures included, and a flood logs a handful of lines."""
from __future__ import annotations

import time

import pytest
import zmq

from audiogw.supervisor.control import REFUSAL_LOG_BURST, RefusalLog
from conftest import wait_for
from test_control_auth import supervisor  # noqa: F401 - the tcp supervisor fixture

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")

ATTEMPTS = 500  # half with the wrong server key, half with no CURVE key at all
BATCH = 50


def refused(supervisor) -> dict[str, float]:
    return {s.labels["reason"]: s.value for s in supervisor.scrape()["audiogw_control_refused"].samples}


def refusal_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "refused" in line]


def attempt_bad_handshakes(endpoint: str, count: int) -> None:
    """``count`` connections that each fail the handshake once (no reconnect)."""
    context = zmq.Context()
    sockets: list[zmq.Socket] = []
    try:
        for start in range(0, count, BATCH):
            sockets = []
            for index in range(start, min(start + BATCH, count)):
                sock = context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RECONNECT_IVL, -1)  # one handshake per connection, as a person retrying
                if index % 2 == 0:
                    wrong_public, _ = zmq.curve_keypair()
                    public, secret = zmq.curve_keypair()
                    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = wrong_public, public, secret
                sock.connect(endpoint)  # the handshake starts at once: nothing needs to be sent
                sockets.append(sock)
            time.sleep(0.2)  # the handshakes run and fail
            for sock in sockets:
                sock.close()
    finally:
        for sock in sockets:
            sock.close()
        context.term()


def test_bad_handshakes_are_counted_and_their_log_is_rate_limited(supervisor):
    before = refused(supervisor)  # may hold a start-up ctl attempt that gave up mid-handshake
    log_before = len(refusal_lines(supervisor.log()))
    attempt_bad_handshakes(supervisor.endpoint, ATTEMPTS)
    wait_for(lambda: refused(supervisor)["handshake_failed"] - before["handshake_failed"] >= ATTEMPTS or None, 10,
             what="every failed handshake counted")
    after = refused(supervisor)
    assert after["handshake_failed"] - before["handshake_failed"] == ATTEMPTS
    assert after["unauthorized"] == before["unauthorized"], "a handshake failure is not also a ZAP refusal"
    assert [row["state"] for row in supervisor.ctl("list")] == ["running"]
    supervisor.stop()  # writes the summary of the last window
    lines = refusal_lines(supervisor.log())[log_before:]
    assert 0 < len(lines) < 10, lines
    assert any("no CURVE key" in line for line in lines) and any("wrong server public key" in line for line in lines)
    summaries = [line for line in lines if "more refused in" in line]
    named = len(lines) - len(summaries)
    assert sum(int(line.split(" more refused")[0].rsplit(" ", 1)[-1]) for line in summaries) == ATTEMPTS - named, lines


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def warning(self, message: str, *args, extra: dict | None = None) -> None:
        self.lines.append((message % args, extra or {}))


def test_refusal_log_writes_firsts_then_one_summary_per_interval() -> None:
    clock = [0.0]
    fake = FakeLog()
    refusals = RefusalLog(fake, interval=10.0, burst=REFUSAL_LOG_BURST, clock=lambda: clock[0])  # type: ignore[arg-type]
    for index in range(969):  # "969 refused in 5 s", from two peers
        clock[0] = index * 5.0 / 969
        refusals.refused("unauthorized", f"peer{index % 2}", "refused peer%d", index % 2)
    assert [line for line, _ in fake.lines] == ["refused peer0", "refused peer1"]
    clock[0] = 10.5
    refusals.flush()
    assert fake.lines[-1][0] == "control: 967 more refused in 10 s (unauthorized: 967)"
    assert fake.lines[-1][1]["refused"] == {"unauthorized": 967}
    # A new window: a peer already named is summed up, a new one is named.
    refusals.refused("busy", "peer0", "refused peer0 again")
    refusals.refused("busy", "peer2", "refused peer2")
    assert fake.lines[-1][0] == "refused peer2"
    refusals.flush(force=True)
    assert fake.lines[-1][0].startswith("control: 1 more refused in")
    assert len(fake.lines) == 5

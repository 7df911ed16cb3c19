"""A flood of control requests from one client bends neither /healthz nor a normal `ctl list`."""
from __future__ import annotations

import collections
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
import zmq

from audiogw.client.ctl import DEFAULT_TIMEOUT, request
from audiogw.shared.messages import Request, decode_reply, encode_request
from audiogw.supervisor.control import REFUSAL_LOG_BURST
from conftest import wait_for
from supervisor_fixture import supervisor_process

supervisor = pytest.fixture(name="supervisor")(supervisor_process)

FLOOD = 2000


def healthz(supervisor) -> int:
    url = supervisor.metrics_url.replace("/metrics", "/healthz")
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_status_flood_keeps_healthz_and_ctl_list(supervisor):
    context = zmq.Context()
    flood = context.socket(zmq.DEALER)
    flood.setsockopt(zmq.LINGER, 0)
    flood.setsockopt(zmq.SNDHWM, 0)
    flood.connect(supervisor.endpoint)
    replies: list[bytes] = []

    def send_and_collect() -> None:
        for _ in range(FLOOD):  # never waits for an answer
            flood.send(encode_request(Request(command="status", id=uuid.uuid4().hex, args={})))
        deadline = time.monotonic() + 60
        while len(replies) < FLOOD and time.monotonic() < deadline:
            if flood.poll(1000):
                replies.append(flood.recv_multipart()[-1])

    health_codes: list[int] = []

    def watch_health() -> None:  # a probe every few ms: a stall of the bus reading shows as "late"
        while flooder.is_alive():
            health_codes.append(healthz(supervisor))
            time.sleep(0.005)

    flooder = threading.Thread(target=send_and_collect)
    watcher = threading.Thread(target=watch_health)
    flooder.start()
    watcher.start()
    list_times: list[float] = []
    try:
        while flooder.is_alive():
            started = time.monotonic()
            rows = request(supervisor.endpoint, "list", timeout=DEFAULT_TIMEOUT)  # raises on a timeout or refusal
            list_times.append(time.monotonic() - started)
            assert {row["state"] for row in rows} == {"running"}
            time.sleep(0.02)
    finally:
        flooder.join()
        watcher.join()
        flood.close()
        context.term()
    decoded = [decode_reply(raw) for raw in replies]
    busy = [reply for reply in decoded if not reply.ok]
    assert len(decoded) == FLOOD, "every flooded request got an answer"
    assert busy and all(reply.error.startswith("busy:") for reply in busy), {reply.error for reply in busy}
    assert len(health_codes) >= 3, "the flood lasted long enough to be watched"
    assert set(health_codes) == {200}, sorted(collections.Counter(health_codes).items())
    assert max(list_times) < DEFAULT_TIMEOUT

    def busy_counted():
        refused = {s.labels["reason"]: s.value for s in supervisor.scrape()["audiogw_control_refused"].samples}
        return refused["busy"] == len(busy) or None
    wait_for(busy_counted, 5, what="/metrics to count every busy refusal")  # published at the next bus read
    assert supervisor.log().count("refused a request: busy") <= REFUSAL_LOG_BURST


def test_a_flood_of_bad_requests_logs_a_handful_of_lines(supervisor):
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(supervisor.endpoint)
    count = 300
    try:
        for _ in range(count):  # one at a time: never busy, every one refused as a bad request
            sock.send(encode_request(Request(command="no-such-command", id=uuid.uuid4().hex, args={})))
            assert sock.poll(5000), "no answer"
            assert not decode_reply(sock.recv_multipart()[-1]).ok
    finally:
        sock.close()
        context.term()
    supervisor.stop()  # writes the last summary
    lines = [line for line in supervisor.log().splitlines() if "refused" in line]
    assert 1 < len(lines) <= REFUSAL_LOG_BURST + 2, lines  # the first named, the rest summed up
    assert any("more refused in" in line and "bad_request" in line for line in lines)

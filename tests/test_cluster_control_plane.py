"""The pure parts of the cluster's control plane, without sockets: serving status records and what a node
writes of them (supervisor/cluster_status.py), the view's side families (supervisor/cluster.py ClusterView),
request/reply matching and checking (supervisor/cluster_commands.py)."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from audiogw.shared.cluster_keys import (
    REMOVALS, REPLIES, REQUESTS, STATUS, Assignment, ClusterValueError, CommandReply, CommandRequest, Removal,
    ServingStatus, encode_value, key_for, parse_key, request_key,
)
from audiogw.shared.commands import REMOTE_COMMANDS, RESTART_EXTENSION, STATUS as STATUS_COMMAND
from audiogw.supervisor.cluster import ClusterView, Entry
from audiogw.supervisor.cluster_commands import HERE, CommandRefused, RemoteCommands, check_reply
from audiogw.supervisor.cluster_status import refused_status, runtime_status, status_changes

REQUEST_ID = "0123456789abcdef0123456789abcdef"
LEASE = 77


def kv(key: bytes, value: bytes = b"", revision: int = 5, lease: int = 0):
    return SimpleNamespace(key=key, value=value, mod_revision=revision, create_revision=revision, lease=lease)


def running(node: str = "gw2", epoch: int = 1, pid: int = 100) -> ServingStatus:
    return ServingStatus(node=node, state="running", epoch=epoch, defined=9, pid=pid)


# -- what a node writes of its statuses ------------------------------------------------------
def test_status_changes_write_only_the_difference_under_this_nodes_lease():
    current = {
        "1": Entry(running(), 10, 10, LEASE),  # as wanted: nothing to do
        "2": Entry(running(pid=5), 11, 11, LEASE),  # another pid now
        "3": Entry(running(), 12, 12, 1),  # an old lease (a previous incarnation of this node)
        "4": Entry(running(), 13, 13, LEASE),  # no longer served here: delete
        "5": Entry(running(node="gw3"), 14, 14, 3),  # another node's: never this node's to delete
    }
    wanted = {"1": running(), "2": running(), "3": running(), "6": running()}
    puts, deletes = status_changes(wanted, current, "gw2", LEASE)
    assert sorted(puts) == ["2", "3", "6"]
    assert list(deletes) == ["4"]
    assert status_changes(wanted, {**current, **{key: Entry(value, None, 0, LEASE) for key, value in puts.items()}},
                          "gw2", LEASE)[0] == {}


def test_a_runtimes_status_carries_the_failure_of_its_current_start():
    loop = asyncio.new_event_loop()
    try:
        outcome = loop.create_future()
        runtime = SimpleNamespace(state="starting", pid=4242, reason=None, outcome=outcome)
        assignment = Assignment(node="gw2", epoch=3)
        assert runtime_status("gw2", runtime, assignment, 17) == ServingStatus(
            node="gw2", state="starting", epoch=3, defined=17, pid=4242)
        outcome.set_result("exited with code 1")
        runtime.state, runtime.pid, runtime.reason = "backoff", None, "exited with code 1"
        status = runtime_status("gw2", runtime, assignment, 17)
        assert (status.state, status.failure, status.reason, status.pid) == ("backoff", "exited with code 1",
                                                                            "exited with code 1", None)
    finally:
        loop.close()
    refused = refused_status("gw2", Assignment(node="gw2", epoch=1), 4, "options.file: cannot be used")
    assert refused.state == "fatal" and refused.failure == refused.reason == (
        "cannot serve it on node gw2: options.file: cannot be used")


def test_the_remote_commands_are_declared_once_and_run_here():
    assert REMOTE_COMMANDS == {STATUS_COMMAND.name, RESTART_EXTENSION.name} == set(HERE)


# -- the view's side families -------------------------------------------------------------------
def test_the_view_keeps_side_families_apart_from_placement_and_tells_on_side():
    view = ClusterView()
    seen, refused = [], []
    view.on_side = lambda family, item, entry: seen.append((family.name, item, entry and entry.record))
    view.on_side_refused = lambda family, item, reason: refused.append((family.name, item, reason))
    status_key, request = key_for(STATUS, "1201"), request_key("gw2", REQUEST_ID)
    assert view.apply(True, kv(status_key, encode_value(running()))) is None  # the agent plans nothing for it
    assert view.apply(True, kv(request, encode_value(CommandRequest(asker="gw1", command="status", wait=3)))) is None
    assert view.apply(True, kv(key_for(REMOVALS, "1201"), encode_value(Removal(drain=0)))) is None
    assert view.status["1201"].record == running() and f"gw2/{REQUEST_ID}" in view.requests
    assert view.removals["1201"].record == Removal(drain=0.0)
    assert seen[0] == ("status", "1201", running())
    # A bad value: counted, told with the reason, and what the key held before is gone from the view.
    assert view.apply(True, kv(status_key, b'{"node": "gw2", "state": "dancing", "epoch": 1}', revision=6)) is None
    assert "1201" not in view.status and view.refused["value"] == 1
    assert seen[-1] == ("status", "1201", None)
    assert refused == [("status", "1201", f"{status_key.decode()}: state 'dancing' is not one of backoff, failed, "
                                          "fatal, running, starting, stopping")]
    view.apply(False, kv(request, revision=7))
    assert view.requests == {} and seen[-1] == ("requests", f"gw2/{REQUEST_ID}", None)
    view.load([kv(key_for(REPLIES, REQUEST_ID), encode_value(CommandReply(node="gw2", ok=True)))], 9)
    assert view.status == {} and view.removals == {} and list(view.replies) == [REQUEST_ID]


def test_request_keys_name_a_node_and_a_request_id():
    assert parse_key(request_key("gw2", REQUEST_ID)) == (REQUESTS, f"gw2/{REQUEST_ID}")
    for bad in (b"/audiogw/requests/gw2", b"/audiogw/requests/gw2/x/y", b"/audiogw/requests//x"):
        with pytest.raises(ClusterValueError, match="not in the audiogw layout"):
            parse_key(bad)


# -- replies: matched to their request, checked against the command's result type ------------------
EXTENSION_ROW = {"id": "1201", "ia_port": 30000, "retorno_port": 30001, "app": "echo", "options": {},
                 "state": "running", "pid": 7, "host": "gw2"}


def test_a_reply_is_the_serving_nodes_result_or_its_refusal():
    assert check_reply(RESTART_EXTENSION, "gw2", CommandReply(node="gw2", ok=True, result=EXTENSION_ROW)) == EXTENSION_ROW
    assert check_reply(STATUS_COMMAND, "gw2", CommandReply(node="gw2", ok=True, result=[{"id": "1"}])) == [{"id": "1"}]
    with pytest.raises(CommandRefused, match="^node gw2: extension 1201 restarted but failed: hung$"):
        check_reply(RESTART_EXTENSION, "gw2", CommandReply(node="gw2", ok=False,
                                                           error="extension 1201 restarted but failed: hung"))


@pytest.mark.parametrize(("node", "reply", "reason"), [
    ("gw2", CommandReply(node="gw3", ok=True, result=EXTENSION_ROW), "it names node 'gw3', the request went to 'gw2'"),
    ("gw2", CommandReply(node="gw2", ok=True, result={"id": "1201"}), "refused node gw2's reply to restart-extension"),
    ("gw2", CommandReply(node="gw2", ok=True, result=[1, 2]), "Expected `object`"),
])
def test_a_wrong_reply_is_refused_with_a_reason(node, reply, reason):
    with pytest.raises(CommandRefused, match=reason):
        check_reply(RESTART_EXTENSION, node, reply)


class FakeAgent:
    """The agent a RemoteCommands talks to: a view, a lease, and an etcd that records what is written."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.view = ClusterView()
        self.view.nodes = {"gw1": None, "gw2": None}
        self.lease_id = LEASE
        self.written: list[tuple[bytes, bytes, int | None]] = []

    async def call(self, operation, timeout):
        agent = self

        class Client:
            async def put(self, key, value, lease=None):
                agent.written.append((key, value, lease))
                if key.startswith(b"/audiogw/requests/"):  # the serving node answers at once
                    request_id = key.rsplit(b"/", 1)[1].decode()
                    reply = CommandReply(node="gw2", ok=True, result=[{"id": "1201", "host": "gw2"}])
                    asyncio.get_running_loop().call_soon(agent.view.apply, True, kv(key_for(REPLIES, request_id),
                                                                                    encode_value(reply)))

            async def delete(self, key):
                agent.written.append((key, b"", None))

            async def transaction(self, compare, success, failure):
                return True, []

            transactions = SimpleNamespace(delete=lambda key: ("delete", key))

        return await operation(Client())


def remote_for(agent: FakeAgent) -> RemoteCommands:
    supervisor = SimpleNamespace(cluster=SimpleNamespace(agent=agent, counters_changed=lambda: None), config=None)
    remote = RemoteCommands(supervisor)
    agent.view.on_side = remote.seen
    agent.view.on_side_refused = remote.refused
    return remote


def test_the_asker_gets_the_reply_to_its_own_request():
    async def scenario():
        agent = FakeAgent("gw1")
        remote = remote_for(agent)
        # A reply to nobody's request is ignored (nothing waits for it).
        agent.view.apply(True, kv(key_for(REPLIES, REQUEST_ID), encode_value(CommandReply(node="gw2", ok=True))))
        result = await remote.ask("gw2", STATUS_COMMAND, {"id": "1201"}, time.monotonic() + 3)
        await asyncio.sleep(0.01)  # the request and its reply deleted in the background
        await remote.stop()
        return agent, result

    agent, result = asyncio.run(scenario())
    assert result == [{"id": "1201", "host": "gw2"}]
    key, value, lease = agent.written[0]
    assert key.startswith(b"/audiogw/requests/gw2/") and lease == LEASE
    assert b'"command":"status"' in value and b'"asker":"gw1"' in value


def test_a_bad_request_to_this_node_is_answered_with_the_reason():
    async def scenario():
        agent = FakeAgent("gw2")
        remote = remote_for(agent)
        agent.view.apply(True, kv(request_key("gw2", REQUEST_ID), b'{"asker": "gw1", "command": "stop", "wait": 3}'))
        agent.view.apply(True, kv(request_key("gw3", REQUEST_ID), b"not json"))  # another node's to answer
        await asyncio.sleep(0.01)
        await remote.stop()
        return agent, remote

    agent, remote = asyncio.run(scenario())
    [(key, value, lease)] = agent.written
    assert key == key_for(REPLIES, REQUEST_ID) and lease == LEASE
    assert b'"ok":false' in value and b"command 'stop' is not carried to another node" in value
    assert remote.stats["requests_refused"] == 1 and agent.view.refused["value"] == 2


# -- what `ctl list` shows of an extension another node serves ----------------------------------
def listed_state(status: ServingStatus | None, *, node_alive: bool = True) -> tuple:
    from audiogw.shared.cluster_keys import EXTENSIONS, NODES, PLACEMENT, ExtensionRecord, NodeRecord
    from audiogw.supervisor.cluster_commands import _row

    view = ClusterView()
    view.apply(True, kv(key_for(EXTENSIONS, "1201"), encode_value(ExtensionRecord(
        id="1201", ia_port=30000, retorno_port=30001, app="echo")), revision=9))
    view.apply(True, kv(key_for(PLACEMENT, "1201"), encode_value(Assignment(node="gw2", epoch=2)), revision=10))
    for name in ("gw1", "gw2") if node_alive else ("gw1",):
        view.apply(True, kv(key_for(NODES, name), encode_value(NodeRecord(name=name, advertise="127.0.0.1"))))
    if status is not None:
        view.apply(True, kv(key_for(STATUS, "1201"), encode_value(status), revision=11))
    supervisor = SimpleNamespace(cluster=SimpleNamespace(name="gw1", agent=SimpleNamespace(view=view)),
                                 extensions={})
    row = _row(supervisor, "1201")
    return row["host"], row["state"], row["pid"], row["reason"]


def test_list_shows_the_serving_nodes_word_only_when_it_is_about_the_current_placement():
    assert listed_state(None) == ("gw2", "placed", None, None)
    assert listed_state(ServingStatus(node="gw2", state="backoff", epoch=2, defined=9, reason="exited with code 1")) \
        == ("gw2", "backoff", None, "exited with code 1")
    assert listed_state(ServingStatus(node="gw2", state="running", epoch=2, defined=9, pid=77)) == (
        "gw2", "running", 77, None)
    for stale in (ServingStatus(node="gw3", state="running", epoch=1, defined=9, pid=5),  # the node it moved off
                  ServingStatus(node="gw2", state="running", epoch=1, defined=9, pid=5),  # an older placement
                  ServingStatus(node="gw2", state="running", epoch=2, defined=3, pid=5)):  # an earlier extension 1201
        assert listed_state(stale) == ("gw2", "placed", None, None)
    assert listed_state(running(), node_alive=False)[1] == "unplaced"


# -- the writes: batched, only the difference -----------------------------------------------------
class Compare:
    def __eq__(self, other):  # what aetcd's compare objects do: build the compare, not answer
        return ("value ==", other)


class RecordingAgent:
    """What StatusPublisher talks to: a view, assignments, and an etcd recording each transaction."""

    def __init__(self, assigned: dict[str, Assignment]) -> None:
        self.name, self.lease_id, self.connected = "gw2", LEASE, True
        self.assigned = assigned
        self.view = ClusterView()
        self.transactions: list[tuple[int, int]] = []  # (compares, operations)

    async def call(self, operation, timeout):
        agent = self

        class Client:
            transactions = SimpleNamespace(put=lambda key, value, lease=None: ("put", key, value, lease),
                                           delete=lambda key: ("delete", key),
                                           value=lambda key: Compare())

            async def transaction(self, compare, success, failure):
                agent.transactions.append((len(compare), len(success)))
                return True, []

        return await operation(Client())


def test_a_failovers_hundreds_of_starts_go_out_in_transactions_of_at_most_txn_batch():
    from audiogw.supervisor.cluster import TXN_BATCH
    from audiogw.supervisor.cluster_status import StatusPublisher

    async def scenario():
        ids = [str(2000 + index) for index in range(250)]
        agent = RecordingAgent({extension_id: Assignment(node="gw2", epoch=2) for extension_id in ids})
        runtimes = {extension_id: SimpleNamespace(state="starting", pid=None, reason=None, outcome=None)
                    for extension_id in ids}
        publisher = StatusPublisher(SimpleNamespace(extensions=runtimes), agent)
        for _ in range(100):  # a burst of wake-ups: one write round
            publisher.changed()
        await publisher._task
        first = list(agent.transactions)
        publisher.changed()  # nothing changed since: nothing written
        await publisher._task
        unchanged = len(agent.transactions) - len(first)
        runtimes["2000"].state, runtimes["2000"].pid = "running", 99
        publisher.changed()
        await publisher._task
        changed = agent.transactions[len(first):]
        status = agent.view.status["2000"].record
        for extension_id in ids[:60]:  # no longer served here: their statuses go, value compared
            del agent.assigned[extension_id], runtimes[extension_id]
        before = len(agent.transactions)
        publisher.changed()
        await publisher._task
        return first, unchanged, changed, status, agent.transactions[before:], len(agent.view.status)

    first, unchanged, changed, status, deleted, left = asyncio.run(scenario())
    assert first == [(0, TXN_BATCH), (0, TXN_BATCH), (0, 50)]
    assert unchanged == 0
    assert changed == [(0, 1)] and (status.state, status.pid) == ("running", 99)
    assert deleted == [(TXN_BATCH // 2, TXN_BATCH // 2), (10, 10)] and left == 190


def test_remove_extension_answers_once_this_nodes_view_has_the_delete():
    """Read your writes: a ``list`` asked of the removing node after its reply must not show the extension,
    though etcd's watch brings the delete a moment after the transaction's answer."""
    from audiogw.shared.cluster_keys import EXTENSIONS, ExtensionRecord
    from audiogw.supervisor.cluster_commands import remove_extension

    async def scenario():
        view = ClusterView()
        view.apply(True, kv(key_for(EXTENSIONS, "1201"), encode_value(ExtensionRecord(
            id="1201", ia_port=30000, retorno_port=30001, app="echo")), revision=9))

        async def call(operation, timeout):  # etcd answers the delete; the watch event comes 0.15 s later
            asyncio.get_running_loop().call_later(0.15, view.apply, False, kv(key_for(EXTENSIONS, "1201")))
            return True

        agent = SimpleNamespace(view=view, call=call, lease_id=LEASE)
        supervisor = SimpleNamespace(cluster=SimpleNamespace(agent=agent, name="gw1"))
        started = time.monotonic()
        reply = await remove_extension(supervisor, {"id": "1201", "drain": 0})
        return reply, time.monotonic() - started, dict(view.extensions)

    reply, took, left = asyncio.run(scenario())
    assert reply == {"id": "1201", "drain": 0} and left == {}
    assert took >= 0.15

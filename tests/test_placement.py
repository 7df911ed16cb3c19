"""Placement (supervisor/placement.py, pure): rendezvous hashing with a standby, minimal churn, epochs."""
from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audiogw.shared.cluster_keys import Assignment, ExtensionRecord
from audiogw.shared.config import ExtensionConfig
from audiogw.supervisor.placement import batches, plan_placement, plan_serving, ranking, score, served_by

NODE_NAMES = st.text("abcdefgh0123-", min_size=1, max_size=6).filter(lambda name: name[0] != "-")
NODES = st.sets(NODE_NAMES, min_size=1, max_size=7)
EXTENSIONS = st.sets(st.text("0123456789*#", min_size=1, max_size=5), max_size=60)


def placed(extensions, nodes, current=None, **kwargs):
    return plan_placement(extensions, nodes, current or {}, **kwargs)


def test_score_is_stable_across_processes():
    # BLAKE2b, not hash(): a fixed value, the same on every host (a salted hash would differ per process).
    assert score("gw1", "1201") == score("gw1", "1201") == int.from_bytes(
        hashlib.blake2b(b"gw1\x001201", digest_size=8).digest(), "big")
    assert score("gw1", "1201") != score("gw2", "1201")


@given(EXTENSIONS, NODES)
def test_every_extension_gets_a_live_node_and_another_as_standby(extensions, nodes):
    plan = placed(extensions, nodes)
    assert set(plan.target) == extensions and not plan.deletes and not plan.unplaced
    for extension_id, assignment in plan.target.items():
        assert assignment.node in nodes and assignment.epoch == 1
        assert assignment.node == ranking(extension_id, nodes)[0]
        if len(nodes) == 1:
            assert assignment.standby is None
        else:
            assert assignment.standby in nodes and assignment.standby != assignment.node
    assert {move.extension for move in plan.moves} == extensions  # all new
    assert sum(len(plan.served_by(node)) for node in nodes) == len(extensions)


@given(EXTENSIONS, NODES, st.randoms())
def test_the_plan_does_not_depend_on_input_order(extensions, nodes, random):
    shuffled_nodes, shuffled_extensions = list(nodes), list(extensions)
    random.shuffle(shuffled_nodes)
    random.shuffle(shuffled_extensions)
    assert placed(shuffled_extensions, shuffled_nodes).target == placed(sorted(extensions), sorted(nodes)).target


@pytest.mark.parametrize("rebalance", [False, True])
@given(extensions=EXTENSIONS, nodes=NODES.filter(lambda nodes: len(nodes) >= 2), data=st.data())
def test_a_lost_node_moves_only_its_extensions_each_to_its_standby(rebalance, extensions, nodes, data):
    before = placed(extensions, nodes).target
    lost = data.draw(st.sampled_from(sorted(nodes)))
    after = plan_placement(extensions, nodes - {lost}, before, rebalance=rebalance)
    moved = {move.extension for move in after.moves}
    assert moved == served_by(before, lost)
    for move in after.moves:
        assert move.old == lost and move.new == before[move.extension].standby
        assert after.target[move.extension].epoch == before[move.extension].epoch + 1
    for extension_id in set(extensions) - moved:
        assert after.target[extension_id].node == before[extension_id].node
        assert after.target[extension_id].epoch == before[extension_id].epoch
        # Extensions whose standby was the lost node get a new standby, but they do not move.
        assert after.target[extension_id].standby != lost
    assert set(after.writes) == moved | {e for e in extensions if before[e].standby == lost}


@given(EXTENSIONS, NODES, NODE_NAMES)
def test_a_joining_node_moves_nothing_unless_rebalancing(extensions, nodes, joining):
    if joining in nodes:
        return
    before = placed(extensions, nodes).target
    sticky = plan_placement(extensions, nodes | {joining}, before)
    assert not sticky.moves
    assert {e: a.node for e, a in sticky.target.items()} == {e: a.node for e, a in before.items()}
    rebalanced = plan_placement(extensions, nodes | {joining}, before, rebalance=True)
    # Rendezvous: the only moves are to the new node, each from the node that had it.
    assert all(move.new == joining and move.old == before[move.extension].node for move in rebalanced.moves)
    assert {move.extension for move in rebalanced.moves} == served_by(rebalanced.target, joining)


@given(EXTENSIONS, NODES)
def test_a_plan_of_its_own_result_changes_nothing(extensions, nodes):
    first = placed(extensions, nodes, leader="gw1")
    again = plan_placement(extensions, nodes, first.target, leader="gw2")  # a new leader rewrites nothing
    assert not again.writes and not again.moves and again.target.keys() == first.target.keys()


def test_a_returning_node_does_not_take_its_extensions_back():
    extensions = [str(1200 + index) for index in range(40)]
    nodes = {"a", "b", "c"}
    first = placed(extensions, nodes).target
    without_a = plan_placement(extensions, {"b", "c"}, first).target
    back = plan_placement(extensions, nodes, without_a)
    assert not back.moves  # sticky: a rejoining node serves nothing until something moves to it
    assert served_by(back.target, "a") == set()
    assert not back.writes  # live standbys keep their promise: nothing is rewritten for a's return
    # The epoch keeps counting across moves: a -> b (2) -> ... never back to an old value.
    lost_b = plan_placement(extensions, {"a", "c"}, back.target)
    for move in lost_b.moves:
        assert move.epoch == back.target[move.extension].epoch + 1
        if first[move.extension].node == "a":  # a -> b (epoch 2) -> now (3): never an epoch seen before
            assert move.epoch == 3


def test_removed_extensions_are_deleted_and_new_ones_placed():
    first = placed(["1", "2", "3"], {"a", "b"}).target
    plan = plan_placement(["2", "3", "4"], {"a", "b"}, first)
    assert plan.deletes == ("1",)
    assert [move.extension for move in plan.moves] == ["4"] and plan.moves[0].old is None
    assert set(plan.writes) == {"4"}


def test_no_live_node_writes_nothing_and_keeps_what_is_there():
    first = placed(["1", "2"], {"a"}).target
    plan = plan_placement(["1", "2", "3"], set(), first)
    assert not plan.writes and not plan.moves and plan.unplaced == ("1", "2", "3")
    assert plan.target == first


def test_rendezvous_spreads_extensions_over_the_nodes():
    nodes = {f"gw{index}" for index in range(5)}
    counts = Counter(assignment.node for assignment in placed([str(i) for i in range(2000)], nodes).target.values())
    mean = 2000 / len(nodes)
    assert set(counts) == nodes and all(0.8 * mean < count < 1.2 * mean for count in counts.values())


@settings(max_examples=50)
@given(st.lists(st.integers(), max_size=300), st.integers(min_value=1, max_value=130))
def test_batches_cover_everything_in_order(items, size):
    runs = batches(items, size)
    assert [item for run in runs for item in run] == items
    assert all(1 <= len(run) <= size for run in runs)
    with pytest.raises(ValueError):
        batches(items, 0)


def test_assignment_refuses_a_standby_that_is_the_node():
    with pytest.raises(ValueError):
        Assignment(node="a", epoch=1, standby="a")


def _record(extension_id: str, ia_port: int, app: str = "echo", **options) -> ExtensionRecord:
    return ExtensionRecord(id=extension_id, ia_port=ia_port, retorno_port=ia_port + 1, app=app, options=options)


def test_serving_plan_starts_stops_and_replaces_what_placement_says(tmp_path):
    definitions = {"1": _record("1", 30000), "2": _record("2", 30002), "3": _record("3", 30004, "bridge"),
                   "4": _record("4", 30006)}
    assigned = {extension_id: Assignment(node="me", epoch=1) for extension_id in ("1", "3", "4", "5")}
    running = {"2": ExtensionConfig("2", 30002, 30003, "echo"),  # moved away
               "3": ExtensionConfig("3", 30004, 30005, "echo"),  # redefined as a bridge
               "4": ExtensionConfig("4", 30006, 30007, "echo")}  # unchanged
    plan = plan_serving(assigned, definitions, running, str(tmp_path))
    assert [config.id for config in plan.start] == ["1"]  # 5 has no definition (removed): nothing to start
    assert plan.stop == ("2",)
    assert [(config.id, config.app) for config in plan.replace] == [("3", "bridge")]
    assert plan.refused == ()
    # Nothing assigned (etcd says this node serves nothing): everything stops.
    assert plan_serving({}, definitions, running, str(tmp_path)).stop == ("2", "3", "4")


def test_a_definition_this_node_cannot_run_is_refused_and_a_running_one_goes_on(tmp_path):
    definitions = {"1": _record("1", 30000, "playback", file="missing.wav"), "2": _record("2", 30002, "nosuchapp")}
    assigned = {"1": Assignment(node="me", epoch=2), "2": Assignment(node="me", epoch=1)}
    running = {"1": ExtensionConfig("1", 30000, 30001, "echo")}
    plan = plan_serving(assigned, definitions, running, str(tmp_path))
    assert not plan.start and not plan.stop and not plan.replace
    reasons = dict(plan.refused)
    assert set(reasons) == {"1", "2"}
    assert "missing.wav" in reasons["1"] and "nosuchapp" in reasons["2"]

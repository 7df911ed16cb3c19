"""Which node serves which extension: rendezvous hashing, a standby each, epochs. Pure.

Rendezvous (highest random weight) hashing ranks the live nodes for each extension by
``hash(node, extension)``; every node computes the same ranking from the same inputs, with
no table to share. :func:`plan_placement` turns the extensions, the live nodes and the
placement now in etcd into the placement to write:

- an extension whose node is alive stays where it is (sticky, the default): a move
  happens only when its node's lease is gone, so there is never a live node to hand over
  from and no moment when two hosts serve it. Only the lost node's extensions move, each to
  its standby (chosen as the best-ranked live node other than the serving one, and kept
  while it lives, so a steady plan hashes nothing); a lost standby is replaced;
- ``rebalance=True`` gives every extension its best-ranked live node (pure rendezvous): a
  node that joins takes about 1/N of the extensions, each from the node that had it, and
  nothing else moves. It needs a handover (the old node stops before the new one listens),
  which the cluster agent does not do yet, so it is for tests and a later ``ctl rebalance``;
- the epoch of an extension grows by one each time its serving node changes (a new
  extension starts at 1; a standby change keeps it), so a node can tell the placement it
  serves from a newer one, and a written value from a stale leader's.

No clock, no I/O: the leader (``supervisor/cluster.py``) reads etcd, calls this, and writes
:attr:`PlacementPlan.writes` / :attr:`PlacementPlan.deletes` with compare-and-swap.
"""
from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from audiogw.shared.cluster_keys import Assignment, ExtensionRecord
from audiogw.shared.config import ConfigError, ExtensionConfig

__all__ = ["score", "ranking", "Move", "PlacementPlan", "plan_placement", "served_by", "batches",
           "ServingPlan", "plan_serving"]


def score(node: str, extension_id: str) -> int:
    """The rendezvous weight of ``node`` for ``extension_id``: 64 bits of BLAKE2b, the same on
    every host and Python (``hash()`` is salted per process)."""
    digest = hashlib.blake2b(f"{node}\0{extension_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranking(extension_id: str, nodes: Iterable[str]) -> list[str]:
    """The nodes best first for ``extension_id`` (ties, which 64 bits make unlikely, by name)."""
    return sorted(set(nodes), key=lambda node: (-score(node, extension_id), node))


@dataclass(frozen=True, slots=True)
class Move:
    """An extension whose serving node changes (``old`` None: it had none, or none alive)."""

    extension: str
    old: str | None
    new: str
    epoch: int


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    """The placement to have, and what changes to get there from ``current``."""

    target: dict[str, Assignment]  # every placed extension
    writes: dict[str, Assignment]  # the assignments whose node, standby or epoch differ from current
    deletes: tuple[str, ...]  # placement keys of extensions no longer defined
    moves: tuple[Move, ...]  # the writes whose serving node changes, by extension id
    unplaced: tuple[str, ...] = field(default=())  # extensions with no live node to go to

    def served_by(self, node: str) -> set[str]:
        return served_by(self.target, node)


def plan_placement(extensions: Iterable[str], nodes: Iterable[str], current: Mapping[str, Assignment], *,
                   leader: str = "", rebalance: bool = False) -> PlacementPlan:
    """The placement of ``extensions`` over the live ``nodes``, from the ``current`` one.

    Deterministic: the same sets give the same plan whatever their order, on any node.
    With no live node nothing is written (the current assignments stay as they are: nobody
    can serve, and whoever comes back first is placed by the next plan)."""
    live = sorted(set(nodes))
    wanted = sorted(set(extensions))
    target: dict[str, Assignment] = {}
    writes: dict[str, Assignment] = {}
    moves: list[Move] = []
    unplaced: list[str] = []
    for extension_id in wanted:
        before = current.get(extension_id)
        if not live:
            unplaced.append(extension_id)
            if before is not None:
                target[extension_id] = before
            continue
        if not rebalance and before is not None and before.node in live:
            node, standby = before.node, before.standby  # stays; a live standby keeps its promise too
            if standby not in live or (standby is None and len(live) > 1):
                standby = _best_other(extension_id, live, node)
        elif not rebalance and before is not None and before.standby in live:
            node = before.standby  # its node is gone: the standby takes over, as promised
            standby = _best_other(extension_id, live, node)
        else:
            ranked = _top_two(extension_id, live)
            node, standby = ranked[0], ranked[1] if len(ranked) > 1 else None
        if before is None:
            epoch = 1
        elif before.node != node:
            epoch = before.epoch + 1
        else:
            epoch = before.epoch
        assignment = Assignment(node=node, epoch=epoch, standby=standby, leader=leader)
        target[extension_id] = assignment
        if before is None or (before.node, before.standby, before.epoch) != (node, standby, epoch):
            writes[extension_id] = assignment
            if before is None or before.node != node:
                moves.append(Move(extension_id, before.node if before is not None else None, node, epoch))
    deletes = tuple(sorted(set(current) - set(wanted)))
    return PlacementPlan(target, writes, deletes, tuple(moves), tuple(unplaced))


def _top_two(extension_id: str, live: list[str]) -> list[str]:
    return [node for _, node in heapq.nsmallest(2, ((-score(node, extension_id), node) for node in live))]


def _best_other(extension_id: str, live: list[str], node: str) -> str | None:
    """The best-ranked live node but ``node`` (one pass, no sort: a plan of 10 000 extensions runs on the loop)."""
    best: tuple[int, str] | None = None
    for candidate in live:
        if candidate != node:
            weight = (-score(candidate, extension_id), candidate)
            if best is None or weight < best:
                best = weight
    return best[1] if best is not None else None


def served_by(placement: Mapping[str, Assignment], node: str) -> set[str]:
    """The extensions ``placement`` gives to ``node``: what its agent must serve."""
    return {extension_id for extension_id, assignment in placement.items() if assignment.node == node}


def batches(items: Iterable[str], size: int) -> list[list[str]]:
    """``items`` in runs of at most ``size``: etcd caps the operations in one transaction
    (``--max-txn-ops``, 128 by default), and a node's loss can move hundreds of extensions."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, not {size}")
    listed = list(items)
    return [listed[start:start + size] for start in range(0, len(listed), size)]


@dataclass(frozen=True, slots=True)
class ServingPlan:
    """What a node's supervisor does to serve what placement gives it (the cluster's reload plan)."""

    start: tuple[ExtensionConfig, ...]  # assigned here, not running
    stop: tuple[str, ...]  # running, no longer assigned here (moved, or removed from the cluster)
    replace: tuple[ExtensionConfig, ...]  # running with another definition than etcd's
    refused: tuple[tuple[str, str], ...]  # (id, reason): a definition this node cannot run; a running one goes on


def plan_serving(assigned: Mapping[str, Assignment], definitions: Mapping[str, ExtensionRecord],
                 running: Mapping[str, ExtensionConfig], base_dir: str) -> ServingPlan:
    """Compare what placement assigns this node (with each definition from etcd) with what runs.

    Each definition goes through ``ExtensionConfig.from_dict`` as a state file entry does (the
    app's options, files next to this node's config file): one this node cannot run is refused
    with the reason, and if it runs already it keeps its last good definition rather than stop
    serving for a value a newer version (or a typo) wrote. Pure; ``NodeAgent.assigned`` and
    ``NodeAgent.definition`` feed it, ``Supervisor`` carries it out (not wired yet)."""
    wanted: dict[str, ExtensionConfig] = {}
    refused: list[tuple[str, str]] = []
    for extension_id in sorted(assigned):
        record = definitions.get(extension_id)
        if record is None:
            continue  # placed, but its definition is gone: the leader deletes the placement next
        try:
            wanted[extension_id] = ExtensionConfig.from_dict(
                {"id": record.id, "ia_port": record.ia_port, "retorno_port": record.retorno_port,
                 "app": record.app, "options": record.options},
                base_dir=base_dir, source=f"etcd /audiogw/extensions/{extension_id}", key="extension")
        except ConfigError as error:
            refused.append((extension_id, f"{error.key}: {error.reason}"))
    kept = {extension_id for extension_id, _ in refused if extension_id in running}
    start = tuple(config for extension_id, config in wanted.items() if extension_id not in running)
    replace = tuple(config for extension_id, config in wanted.items()
                    if extension_id in running and running[extension_id] != config)
    stop = tuple(sorted(set(running) - set(wanted) - kept))
    return ServingPlan(start, stop, replace, tuple(refused))

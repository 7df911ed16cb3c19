"""This node's last view of etcd on disk (``STATE/cluster-view.json``), for a start while etcd is down (#15).

A node that loses etcd keeps serving its cached assignments; without this file a node (re)started
while etcd is down would serve nothing, its cache being in memory only. The agent writes the view
(every key-value it holds, with its revisions) a moment after it changes, while connected, from a
thread (``atomic_write``: the old or the new file, whatever happens). At start, before etcd
answers, the agent loads it back through :meth:`ClusterView.apply` like any etcd value, so a bad
entry is refused there; a file that is not this node's or not of this shape is refused whole, with
the reason logged. The cached assignments are served only once the peers gave no proof that etcd
lives for them (``supervisor/fencing.py``): all of etcd down, as at the cache's writing.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from audiogw.shared.cluster_keys import Family, encode_value
from audiogw.shared.messages import MessageError, _decode, _encode
from audiogw.supervisor.state import atomic_write

log = logging.getLogger("audiogw.supervisor.cluster")

__all__ = ["CACHE_FILE", "CachedKeyValue", "CachedView", "snapshot", "save", "load"]

CACHE_FILE = "cluster-view.json"
MAX_CACHE_BYTES = 1 << 30  # ~600 bytes an extension: 10 000 extensions write ~6 MB


class CachedKeyValue(msgspec.Struct, frozen=True):
    """One key-value as etcd gave it (the fields the view reads from aetcd's key-values)."""

    key: str
    value: str
    mod_revision: int
    create_revision: int
    lease: int


class CachedView(msgspec.Struct, frozen=True):
    node: str
    revision: int
    written: float  # wall clock (time.time()) of the write
    entries: list[CachedKeyValue]


@dataclass(frozen=True, slots=True)
class KeyValue:
    """What :meth:`ClusterView.apply` reads of an aetcd key-value."""

    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


def snapshot(node: str, revision: int, entries: Iterable[tuple[Family, str, Any]]) -> CachedView:
    """The view to write, from ``ClusterView.entries()`` (family, id, entry with a frozen record)."""
    return CachedView(node=node, revision=revision, written=time.time(), entries=[
        CachedKeyValue(family.key(item), encode_value(entry.record).decode(), entry.mod_revision or 0,
                       entry.create_revision, entry.lease) for family, item, entry in entries])


def save(path: str, node: str, revision: int, entries: Iterable[tuple[Family, str, Any]]) -> None:
    """Encode and write the view atomically, owner-only (blocking, ~0.2 s at 10 000 extensions: a thread's job)."""
    atomic_write(path, _encode(snapshot(node, revision, entries)))


def load(path: str, node: str) -> tuple[int, list[KeyValue], float] | None:
    """The revision, key-values and age (s) of ``node``'s cached view; None when there is none or it is refused."""
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        return None
    except OSError as error:
        log.error("cluster: cached view %s not read: %s", path, error)
        return None
    try:
        view = _decode(CachedView, raw, f"cached view {os.path.basename(path)}", MAX_CACHE_BYTES)
    except MessageError as error:
        log.error("cluster: cached view %s refused: %s", path, error.reason)
        return None
    if view.node != node:
        log.error("cluster: cached view %s refused: it is node %s's, this node is %s", path, view.node, node)
        return None
    entries = [KeyValue(entry.key.encode(), entry.value.encode(), entry.mod_revision, entry.create_revision,
                        entry.lease) for entry in view.entries]
    return view.revision, entries, max(0.0, time.time() - view.written)

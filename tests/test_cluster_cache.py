"""The node's view of etcd on disk (supervisor/cluster_cache.py): written atomically, read back into a
ClusterView like etcd's own values, refused whole (with the reason) when it is not this node's or not
of its shape."""
from __future__ import annotations

import logging
import os
import stat

from audiogw.shared.cluster_keys import (
    EXTENSIONS, NODES, PLACEMENT, Assignment, ExtensionRecord, NodeRecord, encode_value, key_for,
)
from audiogw.supervisor import cluster_cache
from audiogw.supervisor.cluster import ClusterView
from audiogw.supervisor.cluster_cache import KeyValue


def a_view() -> ClusterView:
    view = ClusterView()
    kvs = [KeyValue(key_for(EXTENSIONS, "1201"), encode_value(ExtensionRecord(id="1201", ia_port=30000,
                                                                              retorno_port=30001, app="echo")), 5, 5, 0),
           KeyValue(key_for(NODES, "gw1"), encode_value(NodeRecord(name="gw1", advertise="127.0.0.2")), 6, 6, 77),
           KeyValue(key_for(PLACEMENT, "1201"), encode_value(Assignment(node="gw1", epoch=1)), 7, 7, 0)]
    view.load(kvs, 7)
    return view


def test_a_saved_view_loads_back_the_same(tmp_path):
    view = a_view()
    path = str(tmp_path / cluster_cache.CACHE_FILE)
    cluster_cache.save(path, cluster_cache.snapshot("gw1", view.revision, view.key_values()))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds app options (agent tokens among them)
    revision, kvs, age = cluster_cache.load(path, "gw1")
    loaded = ClusterView()
    loaded.load(kvs, revision)
    assert revision == 7 and 0 <= age < 60
    assert loaded.assignments() == view.assignments() == {"1201": Assignment(node="gw1", epoch=1)}
    assert loaded.extensions == view.extensions and loaded.nodes == view.nodes


def test_no_file_is_no_cache(tmp_path):
    assert cluster_cache.load(str(tmp_path / "none.json"), "gw1") is None


def test_another_nodes_or_a_broken_file_is_refused_with_the_reason(tmp_path, caplog):
    view = a_view()
    path = str(tmp_path / cluster_cache.CACHE_FILE)
    cluster_cache.save(path, cluster_cache.snapshot("gw1", view.revision, view.key_values()))
    with caplog.at_level(logging.ERROR, logger="audiogw.supervisor.cluster"):
        assert cluster_cache.load(path, "gw2") is None
        assert "it is node gw1's, this node is gw2" in caplog.text
        with open(path, "r+b") as file:
            file.truncate(40)
        assert cluster_cache.load(path, "gw1") is None
        assert "refused: cached view cluster-view.json is not JSON" in caplog.text


def test_a_bad_entry_is_refused_by_the_view_and_the_rest_kept(tmp_path):
    view = a_view()
    rows = view.key_values() + [(key_for(PLACEMENT, "1202"), b'{"node": "gw1"}', 9, 9, 0)]  # no epoch
    path = str(tmp_path / cluster_cache.CACHE_FILE)
    cluster_cache.save(path, cluster_cache.snapshot("gw1", 9, rows))
    revision, kvs, _ = cluster_cache.load(path, "gw1")
    loaded = ClusterView()
    loaded.load(kvs, revision)
    assert sorted(loaded.placement) == ["1201"] and loaded.refused["value"] == 1

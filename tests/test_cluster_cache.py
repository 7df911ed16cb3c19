"""The node's view of etcd on disk (supervisor/cluster_cache.py): written atomically, read back into a
ClusterView like etcd's own values, refused whole (with the reason) when it is not this node's or not
of its shape."""
from __future__ import annotations

import logging
import os
import stat

import orjson

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
    cluster_cache.save(path, "gw1", view.revision, view.entries())
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
    cluster_cache.save(path, "gw1", view.revision, view.entries())
    with caplog.at_level(logging.ERROR, logger="audiogw.supervisor.cluster"):
        assert cluster_cache.load(path, "gw2") is None
        assert "it is node gw1's, this node is gw2" in caplog.text
        with open(path, "r+b") as file:
            file.truncate(40)
        assert cluster_cache.load(path, "gw1") is None
        assert "refused: cached view cluster-view.json is not JSON" in caplog.text


def test_a_bad_entry_is_refused_by_the_view_and_the_rest_kept(tmp_path):
    view = a_view()
    path = str(tmp_path / cluster_cache.CACHE_FILE)
    cluster_cache.save(path, "gw1", 9, view.entries())
    cached = orjson.loads(open(path, "rb").read())
    cached["entries"].append({"key": "/audiogw/placement/1202", "value": '{"node": "gw1"}', "mod_revision": 9,
                              "create_revision": 9, "lease": 0})  # no epoch
    with open(path, "wb") as file:
        file.write(orjson.dumps(cached))
    revision, kvs, _ = cluster_cache.load(path, "gw1")
    loaded = ClusterView()
    loaded.load(kvs, revision)
    assert sorted(loaded.placement) == ["1201"] and loaded.refused["value"] == 1


def test_a_view_bigger_than_a_message_loads_back(tmp_path):
    """~300 bytes an extension (definition and placement): 5 000 are ~1.7 MB, past the messages' 1 MiB limit (the cache has its own)."""
    kvs = []
    for index in range(5000):
        extension_id = str(10000 + index)
        record = ExtensionRecord(id=extension_id, ia_port=1000 + 2 * index, retorno_port=1001 + 2 * index, app="echo")
        kvs.append(KeyValue(key_for(EXTENSIONS, extension_id), encode_value(record), 5, 5, 0))
        kvs.append(KeyValue(key_for(PLACEMENT, extension_id), encode_value(Assignment(node="gw1", epoch=1)), 6, 6, 0))
    view = ClusterView()
    view.load(kvs, 6)
    path = str(tmp_path / cluster_cache.CACHE_FILE)
    cluster_cache.save(path, "gw1", view.revision, view.entries())
    assert os.path.getsize(path) > 1 << 20
    revision, loaded, _ = cluster_cache.load(path, "gw1")
    again = ClusterView()
    again.load(loaded, revision)
    assert again.assignments() == view.assignments() and len(again.extensions) == 5000

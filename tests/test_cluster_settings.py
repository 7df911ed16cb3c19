"""The [cluster] keys (#15): parsed, refused with a reason, defaults from the host and
audiosocket.bind, every one a restart key. Without [cluster] nothing changes."""
from __future__ import annotations

import socket
import textwrap
from pathlib import Path

import pytest

from audiogw.shared.config import ConfigError, load_config
from audiogw.shared.settings import CLUSTER, NODE_NAME_PATTERN, ClusterSettings, Reload, resolve_cluster
from audiogw.supervisor.reload_plan import plan_reload

BIND = '[audiosocket]\nbind = "127.0.0.1"\n'
ETCD = 'etcd = ["http://127.0.0.1:2379"]\n'


def load(tmp_path: Path, text: str):
    path = tmp_path / "audiogw.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return load_config(path)


def refused(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert info.value.file == str(tmp_path / "audiogw.toml")
    return info.value


def test_without_cluster_nothing_changes(tmp_path):
    assert load(tmp_path, BIND).cluster == ClusterSettings()
    assert ClusterSettings().etcd is None
    assert load(tmp_path, BIND + "[cluster]\n").cluster == ClusterSettings()
    # The defaults written out are still one host (uncommenting the reference changes nothing).
    assert load(tmp_path, BIND + "[cluster]\nlease_ttl = 3\n").cluster == ClusterSettings()


def test_cluster_keys_parse_and_take_their_defaults(tmp_path):
    cluster = load(tmp_path, BIND + "[cluster]\n" + 'etcd = ["http://10.0.0.1:2379", "HTTP://[::1]:2379/", '
                   '"http://etcd-2.example:2379"]\nname = "gw-1.a"\n').cluster
    assert cluster.etcd == ("http://10.0.0.1:2379", "http://[::1]:2379", "http://etcd-2.example:2379")
    assert cluster.name == "gw-1.a"
    assert cluster.advertise == "127.0.0.1"  # audiosocket.bind
    assert cluster.lease_ttl == 3
    explicit = load(tmp_path, BIND + "[cluster]\n" + ETCD + 'name = "b"\nadvertise = "gw.example"\nlease_ttl = 7\n')
    assert (explicit.cluster.advertise, explicit.cluster.lease_ttl) == ("gw.example", 7)


def test_name_defaults_to_the_host_name(tmp_path):
    host = socket.gethostname()
    if not NODE_NAME_PATTERN.match(host):
        pytest.skip(f"this host's name {host!r} is not a node name")
    assert load(tmp_path, BIND + "[cluster]\n" + ETCD).cluster.name == host
    resolved = resolve_cluster(ClusterSettings(etcd=("http://127.0.0.1:2379",)), {"etcd": []}, "127.0.0.1", None,
                               host_name=lambda: "node7")
    assert resolved.name == "node7"


def test_a_host_name_that_is_no_node_name_asks_for_cluster_name():
    with pytest.raises(ConfigError) as info:
        resolve_cluster(ClusterSettings(etcd=("http://127.0.0.1:2379",)), {"etcd": []}, "127.0.0.1", "f.toml",
                        host_name=lambda: "bad host/name")
    assert info.value.key == "cluster.name" and "set cluster.name" in info.value.reason


@pytest.mark.parametrize(("lines", "key", "reason"), [
    ("etcd = []", "cluster.etcd", "empty"),
    ('etcd = "http://127.0.0.1:2379"', "cluster.etcd", "expected an array"),
    ("etcd = [2379]", "cluster.etcd[0]", "expected a string"),
    ('etcd = ["127.0.0.1:2379"]', "cluster.etcd[0]", "not an etcd client URL"),
    ('etcd = ["https://127.0.0.1:2379"]', "cluster.etcd[0]", "TLS to etcd is not supported"),
    ('etcd = ["http://127.0.0.1:2379/v3"]', "cluster.etcd[0]", "has a path"),
    ('etcd = ["http://127.0.0.1"]', "cluster.etcd[0]", "has no port"),
    ('etcd = ["http://127.0.0.1:2379", "http://127.0.0.1:2379/"]', "cluster.etcd[1]", "listed twice"),
    ('etcd = ["http://bad_host:2379"]', "cluster.etcd[0]", "not an IP address or host name"),
    (ETCD + 'name = "a/b"', "cluster.name", "not a node name"),
    (ETCD + 'name = ""', "cluster.name", "not a node name"),
    (ETCD + 'name = "-x"', "cluster.name", "not a node name"),
    (ETCD + 'advertise = "0.0.0.0"', "cluster.advertise", "every interface"),
    (ETCD + 'advertise = "10.0.0.1:4000"', "cluster.advertise", "not an IP address or host name"),
    (ETCD + "lease_ttl = 1", "cluster.lease_ttl", "outside 2-60"),
    (ETCD + "lease_ttl = 61", "cluster.lease_ttl", "outside 2-60"),
    (ETCD + "lease_ttl = true", "cluster.lease_ttl", "expected an integer"),
    ('name = "gw1"', "cluster.etcd", "required when [cluster] sets name"),
    ("lease_ttl = 5", "cluster.etcd", "required when [cluster] sets lease_ttl"),
    (ETCD + "leasettl = 5", "cluster.leasettl", "did you mean 'lease_ttl'?"),
])
def test_cluster_keys_are_refused_with_a_reason(tmp_path, lines, key, reason):
    error = refused(tmp_path, BIND + "[cluster]\n" + lines + "\n")
    assert error.key == key
    assert reason in error.reason


def test_advertise_is_required_when_bind_is_every_interface(tmp_path):
    error = refused(tmp_path, '[audiosocket]\nbind = "0.0.0.0"\n[cluster]\n' + ETCD + 'name = "a"\n')
    assert error.key == "cluster.advertise" and "0.0.0.0" in error.reason
    assert load(tmp_path, '[audiosocket]\nbind = "::"\n[cluster]\n' + ETCD +
                'name = "a"\nadvertise = "2001:db8::1"\n').cluster.advertise == "2001:db8::1"


def test_every_cluster_key_waits_for_a_restart(tmp_path):
    assert {setting.reload for setting in CLUSTER} == {Reload.RESTART}
    old = load(tmp_path, BIND + "[cluster]\n" + ETCD + 'name = "a"\n')
    new = load(tmp_path, BIND + "[cluster]\n" + 'etcd = ["http://127.0.0.1:2479"]\nname = "b"\nlease_ttl = 9\n')
    plan = plan_reload(old, new, {})
    assert [change.key for change in plan.restart] == ["cluster.etcd", "cluster.name", "cluster.lease_ttl"]
    assert plan.config.cluster == old.cluster
    off = plan_reload(old, load(tmp_path, BIND), {})  # leaving cluster mode also waits for the restart
    assert off.config.cluster == old.cluster

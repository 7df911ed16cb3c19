"""A real 3-member etcd cluster on loopback, for the cluster tests (issue #15). The members and what
a test does to them live in ``audiogw.bench.cluster_rig`` (the cluster benchmark starts them too);
this module adds the skip (or failure) without an etcd binary and the pytest fixture.

Each member is an ``etcd`` process (Debian's ``etcd-server``, 3.4) on 127.0.0.1 with
free client and peer ports and its own data folder under the test's ``tmp_path``;
the fixture returns once the cluster has elected a leader. A test can kill (SIGKILL)
or stop (SIGTERM) any member, the leader included, and start it again on its data.

No ``etcd`` binary: the tests skip and say how to get one, except with
``AUDIOGW_REQUIRE_ETCD=1`` (CI), where that is a failure. Use it with
``from etcd_fixture import etcd_cluster  # noqa: F401`` in a test module.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from audiogw.bench.cluster_rig import HOST, EtcdCluster, EtcdMember, _post, start_cluster as _start_cluster

__all__ = ["HOST", "EtcdCluster", "EtcdMember", "_post", "etcd_cluster", "find_etcd", "require_etcd", "start_cluster"]

REQUIRE_ENV = "AUDIOGW_REQUIRE_ETCD"
BINARY_ENV = "AUDIOGW_ETCD"  # an etcd binary elsewhere than on PATH
HOW_TO_GET_ONE = f"no etcd binary: `apt-get install etcd-server` (Debian), or set {BINARY_ENV}=/path/to/etcd"


def find_etcd() -> str | None:
    """``$AUDIOGW_ETCD`` if it is an executable, else ``etcd`` on PATH."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("etcd")


def require_etcd() -> str:
    """The etcd binary; skip without one (a failure when ``AUDIOGW_REQUIRE_ETCD=1``)."""
    binary = find_etcd()
    if binary is None:
        configured = os.environ.get(BINARY_ENV)
        reason = f"{BINARY_ENV}={configured} is not an executable file" if configured else HOW_TO_GET_ONE
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


def start_cluster(tmp_path: Path, size: int = 3) -> EtcdCluster:
    """``size`` members on free loopback ports (``audiogw.bench.cluster_rig``, shared with the benchmark)."""
    return _start_cluster(tmp_path, size, require_etcd())


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A started 3-member etcd cluster with a leader; every member is stopped at teardown."""
    cluster = start_cluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.stop_all()

"""[cluster] mode's modules keep the supervisor's import rules: no audio stack in the cluster
agent, and no gRPC in a single-host supervisor (aetcd is imported only with [cluster])."""
from __future__ import annotations

import json
import subprocess
import sys

AUDIO_STACK = ("numpy", "soxr", "websockets")


def loaded_after(statement: str, names: tuple[str, ...]) -> list[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps([m for m in {list(names)!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout)


def test_the_cluster_agent_imports_no_audio_stack():
    assert loaded_after("import audiogw.supervisor.cluster, audiogw.supervisor.placement, "
                        "audiogw.shared.cluster_keys", AUDIO_STACK + ("aetcd",)) == ["aetcd"]


def test_a_single_host_supervisor_imports_no_etcd_client():
    assert loaded_after("import audiogw.supervisor.daemon, audiogw.supervisor.control, audiogw.supervisor.commands, "
                        "audiogw.supervisor.placement, audiogw.shared.cluster_keys, audiogw.shared.config",
                        ("aetcd", "grpc")) == []

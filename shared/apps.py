"""The app registry: every app a worker can run, declared once.

Names map to ``module:Class`` references so the supervisor and ``audiogw ctl``
can list and validate apps without importing the worker's audio stack.
"""
from __future__ import annotations

BUILTIN_APPS: dict[str, str] = {
    "echo": "audiogw.worker.apps.echo:EchoApp",
    "playback": "audiogw.worker.apps.playback:PlaybackApp",
    "bridge": "audiogw.worker.apps.bridge:BridgeApp",
    "agent": "audiogw.worker.apps.agent:AgentApp",
}

__all__ = ["BUILTIN_APPS"]

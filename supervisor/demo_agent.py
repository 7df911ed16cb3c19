"""The reference voice agent run beside the workers when ``supervisor.demo_agent`` is set.

It makes the README's main command work out of the box: extension 1201 in
``etc/audiogw.toml`` talks to it. It is started with fork+exec (subprocess)
before the supervisor's event loop exists, like the zygote, and it exits by
itself when its parent is gone, so even a ``kill -9`` of the supervisor frees
its port for the next start. It is not restarted if it dies: the agent
extensions then log ``agent unreachable`` with its URL and play silence.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger("audiogw.supervisor")


class DemoAgentProcess:
    def __init__(self, host: str, port: int, *, log_format: str = "human", log_level: str = "info") -> None:
        self.host = host
        self.port = port
        self.log_args = ["--log-format", log_format, "--log-level", log_level]  # its lines like ours
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "audiogw.client.demo_agent", "--host", self.host,
                   "--port", str(self.port), "--parent-pid", str(os.getpid()), *self.log_args]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        log.info("demo agent start pid=%d url=ws://%s:%d/", self.process.pid, self.host, self.port)

    def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.info("demo agent exit pid=%d code=%s", process.pid, process.returncode)

"""What the supervisor keeps on disk in ``state_dir``: the lock, run-time extension changes, worker pids.

Every write is atomic (write a temporary file, fsync, rename, fsync the
folder), so a ``kill -9`` at any moment leaves either the old or the new state.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
from typing import Any, Iterable, Mapping

import orjson
import psutil

from audiogw.shared.config import ConfigError, ExtensionConfig

log = logging.getLogger("audiogw.supervisor.state")

STATE_FILE = "extensions.json"
WORKERS_FILE = "workers.json"
LOCK_FILE = "supervisor.lock"


class AlreadyRunning(RuntimeError):
    """Another supervisor holds this state folder."""


def atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(path) or "."
    temporary = f"{path}.tmp.{os.getpid()}"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class StateLock:
    """An flock on ``state_dir/supervisor.lock`` held for the supervisor's life; the file holds its pid."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(f"another supervisor (pid {holder}) already uses {os.path.dirname(self.path)}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ExtensionStore:
    """Run-time changes over the config file: extensions added, and config extensions removed."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, STATE_FILE)
        self.added: dict[str, ExtensionConfig] = {}
        self.removed: set[str] = set()

    def load(self, base_dir: str) -> None:
        """The added and removed extensions, each checked as the config file's are
        (relative file options resolve against ``base_dir``, the config file's folder)."""
        try:
            with open(self.path, "rb") as handle:
                data = orjson.loads(handle.read())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as error:
            raise ConfigError(self.path, "", f"unreadable state file: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(self.path, "", "state file is not a JSON object")
        added = data.get("added", [])
        for index, entry in enumerate(added if isinstance(added, list) else []):
            extension = ExtensionConfig.from_dict(entry, base_dir=base_dir, source=self.path, key=f"added[{index}]")
            self.added[extension.id] = extension
        removed = data.get("removed", [])
        if not isinstance(removed, list) or not all(isinstance(item, (str, int)) for item in removed):
            raise ConfigError(self.path, "removed", "must be a list of extension ids")
        self.removed = {str(item) for item in removed}

    def save(self) -> None:
        data = {
            "added": [extension.to_dict() for extension in self.added.values()],
            "removed": sorted(self.removed),
        }
        atomic_write(self.path, orjson.dumps(data, option=orjson.OPT_INDENT_2))

    def effective(self, configured: Iterable[ExtensionConfig]) -> dict[str, ExtensionConfig]:
        """The extensions to run: the config file's, less removed ones, plus (overriding) added ones."""
        result = {extension.id: extension for extension in configured if extension.id not in self.removed}
        result.update(self.added)
        return result


class WorkerRecords:
    """Pids (with start times) of the workers this supervisor started, to clean up after a crash."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, WORKERS_FILE)
        self.records: dict[str, dict[str, Any]] = {}

    def set(self, extension_id: str, pid: int | None) -> None:
        if pid is None:
            self.records.pop(extension_id, None)
        else:
            try:
                created = psutil.Process(pid).create_time()
            except psutil.Error:
                created = None
            self.records[extension_id] = {"pid": pid, "create_time": created}
        atomic_write(self.path, orjson.dumps(self.records))

    def kill_stale(self) -> list[int]:
        """Kill workers a previous supervisor left behind (same pid and start time); return their pids."""
        try:
            with open(self.path, "rb") as handle:
                records: Mapping[str, Any] = orjson.loads(handle.read())
        except (OSError, orjson.JSONDecodeError):
            return []
        killed = []
        for extension_id, record in records.items() if isinstance(records, dict) else []:
            try:
                pid = int(record["pid"])
                process = psutil.Process(pid)
                if record.get("create_time") is None or abs(process.create_time() - record["create_time"]) > 0.01:
                    continue
                process.send_signal(signal.SIGKILL)
                process.wait(2)
                killed.append(pid)
                log.warning("killed stale worker extension=%s pid=%d from a previous run", extension_id, pid)
            except (psutil.Error, KeyError, TypeError, ValueError):
                continue
        return killed

"""What the supervisor keeps on disk in ``state_dir``: the lock, run-time extension changes, worker pids.

Every write is atomic (write a temporary file, fsync, rename, fsync the
folder), so a ``kill -9`` at any moment leaves either the old or the new state.
The folder is owner-only (0700) and so are its files (0600): the state file holds
the extensions' app options, agent headers (tokens) among them.
"""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import stat
from typing import Any, Iterable, Mapping

import orjson
import psutil

from audiogw.shared.config import ConfigError, ExtensionConfig

log = logging.getLogger("audiogw.supervisor.state")

STATE_FILE = "extensions.json"
WORKERS_FILE = "workers.json"
LOCK_FILE = "supervisor.lock"
DIR_MODE = 0o700
FILE_MODE = 0o600

# Where an extension's running definition comes from (``ctl list``'s ``source``).
SOURCE_FILE = "file"
SOURCE_RUNTIME = "runtime"


class AlreadyRunning(RuntimeError):
    """Another supervisor holds this state folder."""


class StateDirError(RuntimeError):
    """``state_dir`` cannot be used (cannot be created, is a file, not writable): one line for the operator."""


def prepare_state_dir(state_dir: str) -> None:
    """Create ``state_dir`` owner-only; StateDirError says why it cannot be used. An existing
    folder keeps its mode (it may be shared, e.g. /tmp): a warning when others can read it;
    the files written in it are owner-only whatever the folder's mode."""
    try:
        os.makedirs(state_dir, mode=DIR_MODE, exist_ok=False)
        os.chmod(state_dir, DIR_MODE)  # makedirs' mode is masked by the umask
    except FileExistsError:
        if os.path.isdir(state_dir):
            mode = stat.S_IMODE(os.stat(state_dir).st_mode)
            if mode & 0o077:
                log.warning("supervisor.state_dir %s is mode %04o: other users can list it "
                            "(its files are owner-only; chmod 700 it)", state_dir, mode)
            if not os.access(state_dir, os.W_OK | os.X_OK):
                raise StateDirError(f"supervisor.state_dir: {state_dir} is not writable") from None
            return

        raise StateDirError(f"supervisor.state_dir: {state_dir} exists and is not a folder") from None
    except NotADirectoryError:
        raise StateDirError(f"supervisor.state_dir: cannot create {state_dir}: a parent is a file") from None
    except OSError as error:
        raise StateDirError(f"supervisor.state_dir: cannot create {state_dir}: {error.strerror or error}") from None


def atomic_write(path: str, data: bytes) -> None:
    folder = os.path.dirname(path) or "."
    temporary = f"{path}.tmp.{os.getpid()}"
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "wb") as handle:
        os.fchmod(handle.fileno(), FILE_MODE)  # a leftover temporary may have had another mode
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
        prepare_state_dir(os.path.dirname(self.path))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
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
        self.removed = {str(item) for item in data.get("removed", [])}

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

    def source(self, extension_id: str) -> str:
        """``runtime`` for an extension added with ``ctl add-extension``, else ``file``."""
        return SOURCE_RUNTIME if extension_id in self.added else SOURCE_FILE

    def overrides(self) -> dict[str, ExtensionConfig | None]:
        """The run-time overrides: id -> the runtime definition, or None for a removal."""
        return {**{extension_id: None for extension_id in self.removed}, **self.added}

    def reset(self, extension_id: str) -> bool:
        """Drop ``extension_id``'s runtime override (saved); False when it had none."""
        if extension_id not in self.added and extension_id not in self.removed:
            return False
        added, removed = self.added.pop(extension_id, None), extension_id in self.removed
        self.removed.discard(extension_id)
        try:
            self.save()
        except OSError:
            if added is not None:
                self.added[extension_id] = added
            if removed:
                self.removed.add(extension_id)
            raise
        return True


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

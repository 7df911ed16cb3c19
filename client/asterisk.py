"""Private Asterisk instances for tests and benchmarks: own config, run, log and spool folders.

A real Asterisk is the peer audiogw is built for, so the integration tests and
the Asterisk benchmark run one (or several) beside the gateway. Each instance is
laid out the way ``../shared/asterisk/private.sh`` does it (every directory in
``asterisk.conf`` points into its own folder, so instances never share a socket,
a log or a spool), written here in Python so the wheel needs nothing from
``../shared``. It runs in the foreground (``-f -n -q``) as a child process the
caller owns; ``cli()`` talks to it through its own control socket (``-rx``).

    binary = find_asterisk()
    with PrivateAsterisk(binary, tmp / "ast", EXTENSIONS) as asterisk:
        asterisk.originate("Local/s@caller", extension="s@gateway")
        assert not asterisk.errors()
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

ASTERISK_ENV = "AUDIOGW_ASTERISK"
CACHE_DIR_NAME = "audiogw-asterisk"
DEFAULT_VERSION = "22.10.1"

# Modules that log an ERROR (or refuse to load) on a clean start without a config file.
_EMPTY_CONFIGS = (
    "cdr", "cel", "features", "acl", "udptl", "ccss", "indications", "stasis", "websocket_client",
    "chan_websocket", "ari", "confbridge", "musiconhold", "http", "manager",
)


class AsteriskError(RuntimeError):
    """The instance could not start, or a CLI command could not reach it."""


def find_asterisk() -> str | None:
    """Path of an Asterisk binary: ``$AUDIOGW_ASTERISK``, else the build cache, else ``PATH``.

    The cache is where ``../shared/asterisk/build.sh`` installs
    (``~/.cache/audiogw-asterisk/<version>/sbin/asterisk`` or under
    ``$XDG_CACHE_HOME``). ``None`` when there is none (a set but wrong
    ``$AUDIOGW_ASTERISK`` also gives ``None``: the caller says so).
    """
    configured = os.environ.get(ASTERISK_ENV)
    if configured:
        return configured if os.path.isfile(configured) and os.access(configured, os.X_OK) else None
    caches = []
    if os.environ.get("XDG_CACHE_HOME"):
        caches.append(Path(os.environ["XDG_CACHE_HOME"]))
    caches.append(Path.home() / ".cache")
    caches.append(Path("/root/.cache"))
    for cache in caches:
        preferred = cache / CACHE_DIR_NAME / DEFAULT_VERSION / "sbin" / "asterisk"
        found = [str(preferred)] if preferred.is_file() else []
        found += sorted(glob.glob(str(cache / CACHE_DIR_NAME / "*" / "sbin" / "asterisk")), reverse=True)
        for candidate in found:
            if os.access(candidate, os.X_OK):
                return candidate
    return shutil.which("asterisk")


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` right now (for an instance's AMI or HTTP listener)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def manager_conf(username: str, secret: str, port: int, bind: str = "127.0.0.1") -> str:
    """A ``manager.conf`` enabling AMI on ``bind:port`` for one user with every permission."""
    return (
        "[general]\nenabled = yes\n"
        f"port = {port}\nbindaddr = {bind}\n\n"
        f"[{username}]\nsecret = {secret}\n"
        "read = all\nwrite = all\n"
    )


def asterisk_conf(folder: Path, prefix: Path) -> str:
    """``asterisk.conf`` whose directories all point into ``folder`` (modules from ``prefix``)."""
    return (
        "[directories]\n"
        f"astetcdir => {folder}/etc\n"
        f"astmoddir => {prefix}/lib/asterisk/modules\n"
        f"astvarlibdir => {folder}/lib\n"
        f"astdbdir => {folder}/db\n"
        f"astkeydir => {folder}/lib\n"
        f"astdatadir => {folder}/lib\n"
        f"astagidir => {folder}/lib/agi-bin\n"
        f"astspooldir => {folder}/spool\n"
        f"astrundir => {folder}/run\n"
        f"astlogdir => {folder}/log\n"
        f"astsbindir => {prefix}/sbin\n"
        "\n[options]\nverbose = 0\nmaxcalls = 2000\n"
    )


def layout(binary: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """Lay out a private instance in ``folder`` as private.sh does; returns its ``asterisk.conf``.

    Files that already exist (other than ``asterisk.conf``) are kept, so a caller
    may put its own ``extensions.conf`` or ``manager.conf`` there first.
    """
    root = Path(folder).resolve()
    prefix = Path(binary).resolve().parent.parent
    for sub in ("etc", "run", "log", "lib/agi-bin", "spool/outgoing", "spool/tmp", "db"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    etc = root / "etc"
    (etc / "asterisk.conf").write_text(asterisk_conf(root, prefix))
    defaults = {
        "modules.conf": "[modules]\nautoload = yes\n",
        "logger.conf": "[logfiles]\nmessages => notice,warning,error\n",
        "extensions.conf": "[general]\n[globals]\n[default]\n",
    }
    defaults.update({f"{name}.conf": "" for name in _EMPTY_CONFIGS})
    for name, text in defaults.items():
        if not (etc / name).exists():
            (etc / name).write_text(text)
    return etc / "asterisk.conf"


class PrivateAsterisk:
    """One Asterisk in a folder of its own, run in the foreground as a child process.

    ``extensions_conf`` is written as the instance's dialplan; ``manager_conf``
    (if given) as its ``manager.conf``, after replacing ``{ami_port}`` with a free
    port (kept in :attr:`ami_port`). ``files`` adds any other config file
    (name -> text) in ``etc``. ``start()`` returns once Asterisk is fully booted.
    """

    def __init__(
        self,
        binary: str | os.PathLike[str],
        folder: str | os.PathLike[str],
        extensions_conf: str,
        manager_conf: str | None = None,
        *,
        files: dict[str, str] | None = None,
        boot_timeout: float = 20.0,
    ) -> None:
        self.binary = os.fspath(binary)
        self.folder = Path(folder).resolve()
        self.boot_timeout = boot_timeout
        self.ami_port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        etc = self.folder / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "extensions.conf").write_text(extensions_conf)
        if manager_conf is not None:
            if "{ami_port}" in manager_conf:
                self.ami_port = free_tcp_port()
                manager_conf = manager_conf.replace("{ami_port}", str(self.ami_port))
            (etc / "manager.conf").write_text(manager_conf)
        for name, text in (files or {}).items():
            (etc / name).write_text(text)
        self.conf_path = layout(self.binary, self.folder)

    # -- life ---------------------------------------------------------------
    @property
    def console_path(self) -> Path:
        """Asterisk's own stdout/stderr (start-up failures end up here)."""
        return self.folder / "console.log"

    @property
    def log_path(self) -> Path:
        """The ``messages`` log: notices, warnings and errors."""
        return self.folder / "log" / "messages"

    @property
    def control_socket(self) -> Path:
        return self.folder / "run" / "asterisk.ctl"

    def start(self) -> "PrivateAsterisk":
        """Start Asterisk (``-f -n -q``) and wait for ``core waitfullybooted``."""
        if self.process is not None and self.process.poll() is None:
            return self
        with open(self.console_path, "ab") as console:
            self.process = subprocess.Popen(
                [self.binary, "-C", str(self.conf_path), "-f", "-n", "-q"],
                stdin=subprocess.DEVNULL, stdout=console, stderr=console, start_new_session=True,
            )
        deadline = time.monotonic() + self.boot_timeout
        while not self.control_socket.exists():
            self._check_alive("while starting")
            if time.monotonic() > deadline:
                self.stop()
                raise AsteriskError(f"Asterisk did not open {self.control_socket} in {self.boot_timeout} s")
            time.sleep(0.02)
        while True:
            try:
                self.cli("core waitfullybooted", timeout=max(1.0, deadline - time.monotonic()))
                return self
            except AsteriskError:
                self._check_alive("while booting")
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.05)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        """``core stop now``, then SIGKILL if Asterisk is still there after ``timeout``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                self.cli("core stop now", timeout=timeout)
            except AsteriskError:
                pass
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "PrivateAsterisk":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _check_alive(self, when: str) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AsteriskError(
                f"Asterisk exited with {self.process.returncode} {when}:\n"
                + self.console_path.read_text(errors="replace")[-4000:] + self.log_text()[-4000:]
            )

    # -- CLI ----------------------------------------------------------------
    def cli(self, command: str, timeout: float = 10.0) -> str:
        """Run one CLI command in the instance (``asterisk -C CONF -rx COMMAND``); its output."""
        try:
            result = subprocess.run(
                [self.binary, "-C", str(self.conf_path), "-rx", command],
                stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
            )
        except subprocess.TimeoutExpired as error:
            raise AsteriskError(f"CLI {command!r} took more than {timeout} s") from error
        output = result.stdout.decode(errors="replace")
        if result.returncode != 0 or output.startswith("Unable to connect to remote asterisk"):
            raise AsteriskError(f"CLI {command!r} failed ({result.returncode}): {output}{result.stderr.decode(errors='replace')}")
        return output

    def originate(
        self,
        channel: str,
        *,
        extension: str | None = None,
        application: str | None = None,
        data: str = "",
    ) -> str:
        """``channel originate CHANNEL extension EXTEN@CONTEXT`` or ``... application APP DATA``.

        Returns at once for a Local channel (Asterisk runs the call on its own thread).
        """
        if (extension is None) == (application is None):
            raise ValueError("originate needs exactly one of extension= or application=")
        if extension is not None:
            return self.cli(f"channel originate {channel} extension {extension}")
        return self.cli(f"channel originate {channel} application {application} {data}".rstrip())

    def reload_dialplan(self, extensions_conf: str | None = None) -> str:
        """Write ``extensions_conf`` (if given) and ``dialplan reload``."""
        if extensions_conf is not None:
            (self.folder / "etc" / "extensions.conf").write_text(extensions_conf)
        return self.cli("dialplan reload")

    def channels(self) -> list[str]:
        """Names of the channels up now (``core show channels concise``)."""
        output = self.cli("core show channels concise")
        return [line.split("!", 1)[0] for line in output.splitlines() if "!" in line]

    def wait_no_channels(self, timeout: float = 10.0) -> bool:
        """True once no channel is up (within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.channels():
                return True
            time.sleep(0.05)
        return False

    def set_global(self, name: str, value: str) -> str:
        """Set a dialplan global variable at run time."""
        return self.cli(f"dialplan set global {name} {value}")

    # -- logs ---------------------------------------------------------------
    def log_text(self) -> str:
        """The instance's ``messages`` log so far (empty when nothing was logged)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def errors(self) -> list[str]:
        """Lines of the ``messages`` log that are ERRORs."""
        return [line for line in self.log_text().splitlines() if " ERROR[" in line or line.startswith("ERROR[")]


def call_uuid() -> str:
    """A fresh AudioSocket call UUID, as the dialplan passes it."""
    return str(uuid.uuid4())

"""`audiogw-supervisor start`: run the supervisor in the foreground."""
from __future__ import annotations

import logging
import sys

import click

from audiogw.shared.blas import single_threaded_blas
from audiogw.shared.config import CONFIG_SEARCH_HELP, ConfigError, default_config_path, load_config
from audiogw.shared.errors import OneLineErrors, report_error
from audiogw.shared.logs import configure_logging
from audiogw.shared.version import DISTRIBUTION, VERSION_MESSAGE

log = logging.getLogger("audiogw.supervisor")

EPHEMERAL_PORTS_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def ephemeral_ports(path: str = EPHEMERAL_PORTS_FILE) -> tuple[int, int] | None:
    """The kernel's ephemeral port range (outgoing connections take these), or None if unknown."""
    try:
        with open(path) as file:
            low, high = (int(field) for field in file.read().split()[:2])
    except (OSError, ValueError):
        return None
    return low, high


def ephemeral_overlap_warning(port_range: tuple[int, int], ephemeral: tuple[int, int] | None) -> str | None:
    """Why ``port_range`` is at risk: the kernel may hand its ports to outgoing connections."""
    if ephemeral is None or port_range[1] < ephemeral[0] or port_range[0] > ephemeral[1]:
        return None
    return (f"audiosocket.port_range [{port_range[0]}, {port_range[1]}] overlaps the kernel's ephemeral ports "
            f"{ephemeral[0]}-{ephemeral[1]} (net.ipv4.ip_local_port_range): outgoing connections (Asterisk's, "
            f"the agents' WebSockets) can take an extension's port; choose a range outside it")


class SupervisorGroup(OneLineErrors, click.Group):
    """click's usage errors (``audiogw-supervisor nosuch``, ``start --bogus``) as one ``error: ...``
    line, exit 2, like every error of this command (no ``--json`` here)."""

    json_errors = False


@click.group(cls=SupervisorGroup)
@click.version_option(package_name=DISTRIBUTION, message=VERSION_MESSAGE)
def cli() -> None:
    """audiogw supervisor: one AudioSocket worker process per extension."""


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help=f"Config file [default: {CONFIG_SEARCH_HELP}].")
def start(config_path: str | None) -> None:
    """Start in the foreground. SIGTERM/SIGINT: graceful stop. SIGHUP: reload the config file."""
    from audiogw.supervisor.control import EndpointInUse, check_control_keys, claim_endpoint, prepare_ipc_folder
    from audiogw.supervisor.limits import FD_RESERVE, raise_fd_limit
    from audiogw.supervisor.state import AlreadyRunning, StateDirError, StateLock, WorkerRecords

    from audiogw.shared.proctitle import SUPERVISOR, set_title

    set_title(SUPERVISOR)  # before the zygote is started: it takes its own title
    try:
        config = load_config(default_config_path(config_path))
        check_control_keys(config)  # a bad certificate is a config error (exit 2), not a traceback later
    except ConfigError as error:
        report_error("config", str(error))
        sys.exit(2)
    configure_logging(config.supervisor.log_format, config.supervisor.log_level)
    if (warning := ephemeral_overlap_warning(config.audiosocket.port_range, ephemeral_ports())) is not None:
        log.warning("%s", warning)
    lock = StateLock(config.supervisor.state_dir)
    try:
        lock.acquire()
    except AlreadyRunning as error:
        report_error("refused", str(error))
        sys.exit(1)
    except StateDirError as error:
        report_error("config", f"{config.path}: {error}")
        sys.exit(2)
    try:
        try:  # before anything starts; the bind checks again (a start racing this one)
            prepare_ipc_folder(config.supervisor.control)
            claim_endpoint(config.supervisor.control)
        except EndpointInUse as error:
            report_error("refused", str(error))
            sys.exit(2)
        except OSError as error:
            report_error("io", f"control endpoint {config.supervisor.control}: {error.strerror or error}")
            sys.exit(2)
        # Before the zygote forks: it and every worker inherit the raised limit.
        before, after = raise_fd_limit()
        log.info("file descriptors: soft limit %d%s; add-extension is refused with fewer than %d free", after,
                 f" (raised from {before})" if after != before else "", FD_RESERVE)
        WorkerRecords(config.supervisor.state_dir).kill_stale()
        # The zygote must be forked before any event loop, thread or ZeroMQ context exists.
        from audiogw.supervisor.zygote import Zygote

        zygote = Zygote()
        zygote.start()
        demo_agent = None
        if config.supervisor.demo_agent is not None:
            from audiogw.supervisor.demo_agent import DemoAgentProcess

            demo_agent = DemoAgentProcess(*config.supervisor.demo_agent, log_format=config.supervisor.log_format,
                                          log_level=config.supervisor.log_level)
            demo_agent.start()
        try:
            status = _run(config, zygote)
        finally:
            if demo_agent is not None:
                demo_agent.stop()
        sys.exit(status)
    finally:
        lock.release()


def _run(config, zygote) -> int:
    import uvloop

    from audiogw.supervisor.control import EndpointInUse
    from audiogw.supervisor.daemon import Supervisor

    async def main() -> int:
        try:
            supervisor = Supervisor(config, zygote)
        except ConfigError as error:
            log.error("cannot start: %s", error)
            return 2
        try:
            return await supervisor.run()
        except EndpointInUse as error:  # taken between the start-up check and the bind
            report_error("refused", str(error))
            return 2

    return uvloop.run(main())


def main() -> None:
    single_threaded_blas()  # before numpy loads, here or in the processes started from here
    cli()

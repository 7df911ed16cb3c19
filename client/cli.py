"""The `audiogw` command: softphone, control client and tools, one module per subcommand.

Subcommands are listed in one dict and imported only when used, so `audiogw
ctl list` does not pay for numpy or the benchmark's imports. The benchmarks
live in their own package (``audiogw.bench``, the ``bench`` extra).
"""
from __future__ import annotations

import importlib

import click

from audiogw.shared.blas import single_threaded_blas
from audiogw.shared.errors import OneLineErrors
from audiogw.shared.version import DISTRIBUTION, VERSION_MESSAGE

BENCH_PACKAGE = "audiogw.bench"

# name -> (module, attribute, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "bench": ("audiogw.bench.isolation", "bench_command",
              "Prove isolation and capacity: per-extension workers vs one shared event loop."),
    "bench-asterisk": ("audiogw.bench.asterisk", "bench_asterisk_command", "Benchmark audiogw against Asterisk itself (relayed pacing vs Milliwatt, echo)."),
    "call": ("audiogw.client.call", "call_command", "Place a test call like Asterisk's AudioSocket()."),
    "ctl": ("audiogw.client.ctl", "ctl_group", "Control a running supervisor."),
    "demo-agent": ("audiogw.client.demo_agent", "demo_agent_command", "Run the reference voice agent (Twilio Media Streams)."),
    "init": ("audiogw.client.init", "init_command", "Write a commented starter config (audiogw.toml)."),
}


class LazyGroup(OneLineErrors, click.Group):
    """Subcommands imported when used; click's usage errors (``audiogw nosuch``, a subcommand's
    unknown option or missing argument) are one ``error: ...`` line, exit 2. Not JSON: the group
    takes no ``--json`` (``ctl`` and ``call``, which do, answer their own errors in JSON)."""

    json_errors = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        entry = SUBCOMMANDS.get(name)
        if entry is None:
            return None
        module_name, attribute, _ = entry
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if not module_name.startswith(BENCH_PACKAGE + ".") or (error.name or "").startswith("audiogw."):
                raise
            raise click.ClickException(
                f"`audiogw {name}` needs the benchmark extra ({error.name} is missing): "
                "pip install 'audiogw[bench]'") from None
        return getattr(module, attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(package_name=DISTRIBUTION, message=VERSION_MESSAGE)
def cli() -> None:
    """audiogw: Asterisk AudioSocket gateway for AI voice agents."""


def main() -> None:
    single_threaded_blas()  # before numpy loads, here or in the processes started from here
    cli()

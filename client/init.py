"""`audiogw init [DIR]`: write a commented starter config, so a plain `pip install` can run.

The text is the generated reference (``shared/settings.py`` ``reference_text``: every key
with its doc, bounds, reload note and default) with the starter's own values: paths left
at their defaults, which are relative to the file's folder and so work from DIR; loopback
only; one echo extension on the first two ports of the default range; the demo agent
only with ``--demo-agent`` (then 1201 is its greeting demo and 1210 its doorman).
"""
from __future__ import annotations

import os
import sys
import tomllib

import click

from audiogw.shared.errors import report_error
from audiogw.shared.config import CONFIG_NAME, ConfigError, parse_config
from audiogw.shared.settings import AUDIOSOCKET, reference_text, toml_value

DEMO_AGENT = "127.0.0.1:8765"

HEADER = """\
# audiogw configuration, written by `audiogw init`. Relative paths are relative to
# this file's folder (state in ./var, the control socket in ./var/run). Unknown keys
# are refused at start. Every key is listed with its bounds, what `reload` does with
# a change, and its default (commented keys take it).
"""


def _first_ports() -> tuple[int, int]:
    """The first two ports of the declared default port_range: the ones `add-extension` would hand out first."""
    low = next(setting for setting in AUDIOSOCKET if setting.name == "port_range").default[0]
    return low, low + 1


def starter_text(demo_agent: bool = False) -> str:
    """The starter config: the reference with one example extension (echo, or the demo agent's)."""
    ia_port, retorno_port = _first_ports()
    values: dict[str, object] = {"audiosocket.bind": "127.0.0.1"}
    lines = ["[[extension]]", 'id = "1201"', f"ia_port = {ia_port}", f"retorno_port = {retorno_port}"]
    if demo_agent:
        values["supervisor.demo_agent"] = DEMO_AGENT
        lines += ['app = "agent"', "# The reference agent above: greets, plays back what the caller said, confirms DTMF 1.",
                  f"options = {{ url = {toml_value(f'ws://{DEMO_AGENT}/media')}, barge_in = true }}", "",
                  # The same id and ports as in etc/audiogw.toml, so the README's doorman steps fit both.
                  "[[extension]]", 'id = "1210"', f"ia_port = {ia_port + 4}", f"retorno_port = {retorno_port + 4}",
                  'app = "agent"', "# The reference agent as the virtual doorman (README \"The doorman demo\").",
                  f"options = {{ url = {toml_value(f'ws://{DEMO_AGENT}/doorman')} }}"]
    else:
        lines += ['app = "echo"  # plays the caller back: dial it to hear yourself']
    return reference_text(values=values, header=HEADER, extensions="\n".join(lines) + "\n")


@click.command(name="init")
@click.argument("folder", default=".", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help=f"Overwrite an existing {CONFIG_NAME}.")
@click.option("--demo-agent", is_flag=True, help="Run the reference voice agent and point the example extension at it.")
def init_command(folder: str, force: bool, demo_agent: bool) -> None:
    """Write a commented starter config to FOLDER/audiogw.toml (default: the current folder)."""
    path = os.path.join(folder, CONFIG_NAME)
    if os.path.exists(path) and not force:
        report_error("refused", f"{path} already exists; not overwritten (use --force to replace it)")
        sys.exit(1)
    text = starter_text(demo_agent)
    try:  # what the supervisor will check, from where the file will be (the control socket's path length...)
        parse_config(tomllib.loads(text), path=os.path.abspath(path), base_dir=os.path.abspath(folder))
    except ConfigError as error:
        report_error("config", f"not written, it could not start there: {error}")
        sys.exit(2)
    try:
        os.makedirs(folder, exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as error:
        report_error("io", f"cannot write {path}: {error.strerror or error}")
        sys.exit(2)
    shown = os.path.abspath(path)
    click.echo(f"wrote {shown}")
    click.echo(f"next: audiogw-supervisor start --config {shown}")

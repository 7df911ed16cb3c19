"""audiogw's version: one place, the installed package's metadata (setup.cfg ``version``)."""
from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "audiogw"
VERSION_MESSAGE = "%(prog)s %(version)s"  # `--version` of both commands (click's placeholders)


def audiogw_version() -> str:
    """The installed distribution's version ("unknown" when run from a tree that was never installed)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def build_info() -> dict[str, str]:
    """What ``audiogw_build_info`` labels: which audiogw, on which Python."""
    return {"version": audiogw_version(), "python": platform.python_version()}

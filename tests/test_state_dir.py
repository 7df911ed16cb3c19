"""A state_dir that cannot be used is one line and exit 2, never a traceback; a new one is owner-only."""
from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from audiogw.supervisor.state import StateDirError, prepare_state_dir

SUPERVISOR = [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start"]


def start_with_state_dir(tmp_path: Path, state_dir: str) -> subprocess.CompletedProcess:
    path = tmp_path / "audiogw.toml"
    path.write_text(f'[supervisor]\ncontrol = "ipc://run/c.sock"\nmetrics = "127.0.0.1:0"\nstate_dir = "{state_dir}"\n')
    return subprocess.run([*SUPERVISOR, "--config", str(path)], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("case", ["is_a_file", "parent_is_a_file"])
def test_unusable_state_dir_is_one_line(tmp_path: Path, case: str) -> None:
    (tmp_path / "taken").write_text("")
    state_dir = "taken" if case == "is_a_file" else "taken/state"
    result = start_with_state_dir(tmp_path, state_dir)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "supervisor.state_dir" in lines[0] and str(tmp_path / "taken") in lines[0], lines


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_state_dir_without_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(StateDirError, match="cannot create"):
            prepare_state_dir(str(locked / "state"))
    finally:
        locked.chmod(0o700)


def test_new_state_dir_is_owner_only_and_an_open_one_is_warned(tmp_path: Path, caplog) -> None:
    old = os.umask(0o002)
    try:
        prepare_state_dir(str(tmp_path / "a" / "state"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "state").st_mode) == 0o700
    (tmp_path / "open").mkdir()
    (tmp_path / "open").chmod(0o755)
    with caplog.at_level(logging.WARNING, logger="audiogw.supervisor.state"):
        prepare_state_dir(str(tmp_path / "open"))
    assert "chmod 700" in caplog.text
    assert stat.S_IMODE(os.stat(tmp_path / "open").st_mode) == 0o755  # an existing folder is left as it is

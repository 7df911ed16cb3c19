"""Fixtures for the tests through a real Asterisk: private instances and fake phones.

No Asterisk found (``$AUDIOGW_ASTERISK``, the build cache, ``PATH``): the tests
skip and say how to get one, except with ``AUDIOGW_REQUIRE_ASTERISK=1`` (CI),
where that is a failure: those tests must run there.
Each test gets its own instance (it boots in well under a second), so its
``messages`` log, and the "no ERROR" check on it, belong to that test alone.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from asterisk_phone import Phone, Script
from audiogw.client.asterisk import ASTERISK_ENV, PrivateAsterisk, find_asterisk

REQUIRE_ENV = "AUDIOGW_REQUIRE_ASTERISK"
HOW_TO_GET_ONE = (
    f"no Asterisk binary: set {ASTERISK_ENV}=/path/to/asterisk, or build one with "
    "`bash ../shared/asterisk/build.sh` (scripts/test.sh does)"
)


@pytest.fixture(scope="session")
def asterisk_binary() -> str:
    """The Asterisk binary the tests use; skip (or fail when it is required) without one."""
    binary = find_asterisk()
    if binary is None:
        configured = os.environ.get(ASTERISK_ENV)
        reason = f"{ASTERISK_ENV}={configured} is not an executable file" if configured else HOW_TO_GET_ONE
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


# Per instance: how many ERROR lines a test has already been told about (the teardown
# check reports only later ones, so one ERROR fails its test once, not twice).
_reported: dict[int, int] = {}


def assert_no_asterisk_errors(asterisk: PrivateAsterisk, expected: tuple[str, ...] = ()) -> None:
    """No ERROR in Asterisk's log, but for lines with one of the ``expected`` texts (say why at the call)."""
    errors = asterisk.errors()
    _reported[id(asterisk)] = len(errors)
    unexpected = [line for line in errors if not any(text in line for text in expected)]
    assert not unexpected, "ERROR in Asterisk's log:\n" + "\n".join(unexpected)


@pytest.fixture
def private_asterisk(asterisk_binary: str, tmp_path: Path) -> Iterator[Callable[..., PrivateAsterisk]]:
    """Factory: ``private_asterisk(extensions_conf, manager_conf=None, **kw)`` -> a started instance.

    Every instance is stopped at teardown, and its log is checked for ERROR
    once more then (what Asterisk logs while its calls end counts too).
    """
    started: list[PrivateAsterisk] = []

    def start(extensions_conf: str, manager_conf: str | None = None, **options) -> PrivateAsterisk:
        asterisk = PrivateAsterisk(asterisk_binary, tmp_path / f"asterisk{len(started)}",
                                   extensions_conf, manager_conf, **options)
        started.append(asterisk)
        return asterisk.start()

    yield start
    for asterisk in started:
        asterisk.stop()
    late = []
    for asterisk in started:
        late += asterisk.errors()[_reported.pop(id(asterisk), 0):]
    assert not late, "ERROR in Asterisk's log (while its calls ended or it stopped):\n" + "\n".join(late)


@pytest.fixture
def phone() -> Iterator[Callable[..., Phone]]:
    """Factory: ``phone(script=None)`` -> a fake phone (an AudioSocket server Asterisk dials)."""
    phones: list[Phone] = []

    def make(script: Script | None = None) -> Phone:
        new = Phone(script)
        phones.append(new)
        return new

    yield make
    for each in phones:
        each.close()

"""The control socket's CURVE credentials callback, in-process: which keys it admits, and when."""
from __future__ import annotations

import logging
import shutil

import pytest
import zmq
import zmq.auth

from audiogw.supervisor.control import ClientAuthenticator

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "authorized").mkdir()
    for name in ("client", "intruder"):
        zmq.auth.create_certificates(str(tmp_path), name)
    shutil.copy(tmp_path / "client.key", tmp_path / "authorized" / "client.key")
    return tmp_path


@pytest.fixture
def authenticator(keys):
    context = zmq.Context()
    yield ClientAuthenticator(context, str(keys / "authorized"), "audiogw.toml")
    context.term()


def public(keys, name: str) -> bytes:
    return zmq.auth.load_certificate(str(keys / f"{name}.key"))[0]


def test_registered_through_pyzmqs_public_hook(authenticator):
    assert authenticator.credentials_providers == {"*": authenticator}
    assert authenticator.certs == {}  # no private certificate table is filled


def test_only_authorized_keys_are_admitted_and_refusals_counted(authenticator, keys, caplog):
    assert authenticator.callback("*", public(keys, "client")) is True
    with caplog.at_level(logging.WARNING, logger="audiogw.supervisor.control"):
        assert authenticator.callback("*", public(keys, "intruder")) is False
        assert authenticator.callback("*", public(keys, "intruder")) is False
    assert authenticator.refused == 2
    [logged] = [r.getMessage() for r in caplog.records if "refused a tcp client" in r.getMessage()]  # rate-limited
    assert public(keys, "intruder").decode() in logged and "is not authorized" in logged


def test_folder_changes_apply_at_the_next_handshake(authenticator, keys):
    intruder = public(keys, "intruder")
    assert authenticator.callback("*", intruder) is False
    shutil.copy(keys / "intruder.key", keys / "authorized" / "intruder.key")
    assert authenticator.callback("*", intruder) is True
    (keys / "authorized" / "intruder.key").unlink()
    assert authenticator.callback("*", intruder) is False


def test_an_unreadable_certificate_refuses_everyone_until_fixed(authenticator, keys, caplog):
    client = public(keys, "client")
    assert authenticator.callback("*", client) is True
    broken = keys / "authorized" / "broken.key"
    broken.write_text("curve\n    no key here\n")
    with caplog.at_level(logging.WARNING, logger="audiogw.supervisor.control"):
        assert authenticator.callback("*", client) is False
    assert any("broken.key" in r.getMessage() and "refusing every tcp client" in r.getMessage()
               for r in caplog.records)
    assert any("no usable list of authorized clients" in r.getMessage() for r in caplog.records)
    broken.unlink()
    assert authenticator.callback("*", client) is True


def test_the_callback_never_raises(authenticator, keys, monkeypatch):
    def broken_refresh() -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(authenticator, "refresh", broken_refresh)
    assert authenticator.callback("*", public(keys, "client")) is False
    assert authenticator.refused == 1

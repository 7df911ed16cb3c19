"""A real supervisor on a tcp:// control: only clients whose public key is authorized get answers."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth
from click.testing import CliRunner

from audiogw.client.ctl import CtlUnreachable, ctl_group, request
from audiogw.shared.net import free_port_block
from conftest import wait_for
from supervisor_fixture import SupervisorProcess, kill_tree, write_config

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


class TcpSupervisorProcess(SupervisorProcess):
    """The fixture's supervisor, controlled over tcp:// with the authorized client's key."""

    control_port: int = 0
    keys: Path = Path()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.control_port}"

    def ctl(self, command: str, args: dict | None = None, timeout: float = 10.0, client: str = "client"):
        return request(
            self.endpoint, command, args or {}, timeout=timeout,
            server_public_key=str(self.keys / "server.key"),
            client_secret_key=str(self.keys / f"{client}.key_secret"),
        )


def make_keys(folder: Path) -> Path:
    """server + client (authorized) + intruder (a valid keypair, not authorized)."""
    keys = folder / "keys"
    (keys / "authorized").mkdir(parents=True)
    zmq.auth.create_certificates(str(keys), "server")
    for name in ("client", "intruder"):
        zmq.auth.create_certificates(str(keys), name)
    shutil.copy(keys / "client.key", keys / "authorized" / "client.key")
    return keys


def write_tcp_config(folder: Path, base_port: int, control_port: int) -> Path:
    path = write_config(folder, base_port, extensions=1)
    tcp = "\n".join([
        f'control = "tcp://127.0.0.1:{control_port}"',
        'curve_server_secret_key = "keys/server.key_secret"',
        'curve_server_public_key = "keys/server.key"',
        'curve_authorized_clients = "keys/authorized"',
    ])
    path.write_text(path.read_text().replace('control = "ipc://run/control.sock"', tcp))
    return path


@pytest.fixture
def supervisor(tmp_path):
    base = free_port_block(21)
    keys = make_keys(tmp_path)
    process = TcpSupervisorProcess(tmp_path, write_tcp_config(tmp_path, base, base + 20), base)
    process.control_port, process.keys = base + 20, keys
    process.start()
    yield process
    process.stop()
    if process.process is not None:
        kill_tree(process.process.pid)


def public_key(path: Path) -> str:
    return zmq.auth.load_certificate(str(path))[0].decode()


def test_authorized_client_is_served_over_tcp(supervisor):
    rows = supervisor.ctl("list")
    assert [row["id"] for row in rows] == ["1201"]
    result = CliRunner().invoke(ctl_group, [
        "--endpoint", supervisor.endpoint, "--server-key", str(supervisor.keys / "server.key"),
        "--client-key", str(supervisor.keys / "client.key_secret"), "--json", "list",
    ])
    assert result.exit_code == 0, result.output
    assert '"1201"' in result.stdout
    assert "1 authorized client key(s)" in supervisor.log()
    supervisor.stop()
    assert supervisor.process.returncode == 0
    assert "Traceback" not in supervisor.log()


def test_unauthorized_client_gets_no_answer_and_the_supervisor_keeps_serving(supervisor):
    with pytest.raises(CtlUnreachable) as info:
        supervisor.ctl("stop", timeout=1.0, client="intruder")
    assert "curve_authorized_clients" in str(info.value)
    intruder = public_key(supervisor.keys / "intruder.key")
    log = wait_for(lambda: intruder in supervisor.log() and supervisor.log(), 5, what="the refusal in the log")
    assert "refused a tcp client from 127.0.0.1" in log
    # The CLI: the existing exit status 3, with the hint.
    result = CliRunner().invoke(ctl_group, [
        "--endpoint", supervisor.endpoint, "--server-key", str(supervisor.keys / "server.key"),
        "--client-key", str(supervisor.keys / "intruder.key_secret"), "--timeout", "1", "list",
    ])
    assert result.exit_code == 3
    assert "curve_authorized_clients" in result.stderr
    # The stop was never executed and the authorized client is still served.
    assert supervisor.process.poll() is None
    assert [row["state"] for row in supervisor.ctl("list")] == ["running"]
    # Counted, not only logged: every attempt (two here), whether logged or rate-limited.
    refused = {sample.labels["reason"]: sample.value for sample in supervisor.scrape()["audiogw_control_refused"].samples}
    assert refused["unauthorized"] >= 2
    assert refused["malformed"] == refused["bad_request"] == refused["internal_error"] == 0


def test_client_without_curve_gets_no_answer(supervisor):
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    try:
        socket.linger = 0
        socket.connect(supervisor.endpoint)
        socket.send(b'{"id": "x", "command": "stop", "args": {}}')
        assert socket.poll(1000) == 0
    finally:
        socket.close()
        context.term()
    assert supervisor.ctl("list")[0]["state"] == "running"


def test_authorized_folder_is_reread_without_restart(supervisor):
    granted = supervisor.keys / "authorized" / "intruder.key"
    shutil.copy(supervisor.keys / "intruder.key", granted)
    assert supervisor.ctl("list", client="intruder")[0]["id"] == "1201"
    granted.unlink()
    with pytest.raises(CtlUnreachable):
        supervisor.ctl("list", timeout=1.0, client="intruder")
    assert supervisor.ctl("list")[0]["id"] == "1201"


def test_unreadable_certificate_added_later_refuses_everyone_until_fixed(supervisor):
    broken = supervisor.keys / "authorized" / "broken.key"
    broken.write_text("curve\n    no key here\n")
    with pytest.raises(CtlUnreachable):  # fail closed: not the list as it was before
        supervisor.ctl("list", timeout=1.0)
    assert "broken.key" in supervisor.log() and "refusing every tcp client" in supervisor.log()
    broken.unlink()
    assert supervisor.ctl("list")[0]["id"] == "1201"


def _start_refused(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "from audiogw.supervisor.cli import main; main()", "start",
         "--config", str(folder / "audiogw.toml")],
        capture_output=True, text=True, timeout=30, cwd=folder,
    )


def test_supervisor_refuses_to_start_with_an_unreadable_client_certificate(tmp_path):
    base = free_port_block(21)
    keys = make_keys(tmp_path)
    (keys / "authorized" / "broken.key").write_text("curve\n    no key here\n")
    write_tcp_config(tmp_path, base, base + 20)
    result = _start_refused(tmp_path)
    assert result.returncode == 2, result.stderr
    assert "supervisor.curve_authorized_clients" in result.stderr
    assert "broken.key" in result.stderr
    assert "Traceback" not in result.stderr


def test_supervisor_refuses_to_start_without_the_authorized_folder(tmp_path):
    base = free_port_block(21)
    keys = make_keys(tmp_path)
    shutil.rmtree(keys / "authorized")
    write_tcp_config(tmp_path, base, base + 20)
    result = _start_refused(tmp_path)
    assert result.returncode == 2, result.stderr
    assert "supervisor.curve_authorized_clients" in result.stderr and "does not exist" in result.stderr

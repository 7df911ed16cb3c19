"""A real supervisor with call control, and a test-side worker on its calls socket.

The test plays the worker: a DEALER with a worker's identity (``EXT:PID``) connected to
``ipc://STATE/run/calls.sock``, sending CallRequest messages and reading CallEvents.
"""
from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import zmq

from audiogw.shared.messages import decode_call_event, encode_call_message
from supervisor_fixture import METRICS_OFFSET, SupervisorProcess

EXTENSION = "1201"
ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "test-token-0123456789"
AMI_USER = "audiogw"
AMI_SECRET = "s3cret-for-tests"


def write_calls_config(folder: Path, base_port: int, *, manager: str | None, resident: str = "Local/s@fake-resident",
                       secret: str = AMI_SECRET, auth_token: str | None = TOKEN,
                       url: str = "ws://127.0.0.1:9/") -> Path:
    """One agent extension with call control (by default its agent is unreachable: the legs live, in silence)."""
    secret_file = folder / "ami.secret"
    secret_file.write_text(secret + "\n")
    os.chmod(secret_file, 0o600)
    lines = [
        "[supervisor]", 'control = "ipc://run/control.sock"', f'metrics = "127.0.0.1:{base_port + METRICS_OFFSET}"',
        'state_dir = "state"', "heartbeat_interval = 0.2", "heartbeat_timeout = 1.0", "drain_seconds = 1.0",
        "[audiosocket]", 'bind = "127.0.0.1"', f"port_range = [{base_port}, {base_port + METRICS_OFFSET - 1}]",
        "[agent]", f'account_sid = "{ACCOUNT}"',
    ]
    if auth_token is not None:
        lines.append(f'auth_token = "{auth_token}"')
    if manager is not None:
        lines += ["[asterisk]", f'manager = "{manager}"', f'username = "{AMI_USER}"', 'secret_file = "ami.secret"']
    lines += ["[[extension]]", f'id = "{EXTENSION}"', f"ia_port = {base_port}", f"retorno_port = {base_port + 1}",
              'app = "agent"', f'options = {{ url = "{url}", resident = "{resident}" }}']
    path = folder / "audiogw.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class FakeWorker:
    """The worker's side of the calls socket, played by the test."""

    def __init__(self, supervisor: SupervisorProcess, pid: int = 4242) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.IDENTITY, f"{EXTENSION}:{pid}".encode())
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(f"ipc://{supervisor.folder}/state/run/calls.sock")

    def send(self, message) -> None:
        self.socket.send(encode_call_message(message))

    def receive(self, timeout: float = 10.0):
        if not self.socket.poll(timeout * 1000):
            raise AssertionError(f"no call event within {timeout} s")
        return decode_call_event(self.socket.recv())

    def statuses(self, until: set[str], timeout: float = 15.0) -> list:
        """DialStatus events up to (and with) the first whose status is in ``until``."""
        got = []
        while True:
            event = self.receive(timeout)
            got.append(event)
            if getattr(event, "status", None) in until:
                return got

    def nothing_within(self, timeout: float) -> bool:
        return not self.socket.poll(timeout * 1000)

    def close(self) -> None:
        self.socket.close(0)
        self.context.term()


def rest_hangup(supervisor: SupervisorProcess, call_uuid: str, user: str = ACCOUNT, password: str = TOKEN,
                body: bytes = b"Status=completed") -> tuple[int, dict, dict]:
    """POST the Twilio hangup as Pipecat does (form, basic auth); (status, JSON body, headers)."""
    sid = "CA" + call_uuid.replace("-", "")
    url = f"http://127.0.0.1:{supervisor.base_port + METRICS_OFFSET}/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json"
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read()), dict(error.headers)


def healthz(supervisor: SupervisorProcess) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{supervisor.base_port + METRICS_OFFSET}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, orjson.loads(error.read())


def ami_connected(supervisor: SupervisorProcess) -> float | None:
    family = supervisor.scrape().get("audiogw_ami_connected")
    return family.samples[0].value if family is not None and family.samples else None


def counter(supervisor: SupervisorProcess, name: str, **labels) -> float:
    family = supervisor.scrape().get(name)
    if family is None:
        return 0.0
    return sum(s.value for s in family.samples if s.name.endswith("_total")
               and all(s.labels.get(k) == v for k, v in labels.items()))

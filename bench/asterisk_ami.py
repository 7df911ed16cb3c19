"""A minimal Asterisk Manager Interface client: log in, queue many async Originates, read the replies.

The Asterisk benchmark places hundreds of calls in a couple of seconds; one
``asterisk -rx "channel originate ..."`` process per call would cost more CPU
than the calls themselves. The session logs in with ``Events: off``, so only
the replies to its own actions come back (no event flood to drain).
"""
from __future__ import annotations

import socket
import time


class AmiError(RuntimeError):
    """Login refused, or the manager connection broke."""


class Ami:
    def __init__(self, port: int, username: str, secret: str, host: str = "127.0.0.1",
                 timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.file = self.sock.makefile("rb")
        self.file.readline()  # "Asterisk Call Manager/x.y.z"
        self._send({"Action": "Login", "Username": username, "Secret": secret, "Events": "off"})
        reply = self._read_block()
        if reply.get("Response") != "Success":
            self.close()
            raise AmiError(f"AMI login refused: {reply}")
        self.pending = 0

    def _send(self, fields: dict[str, str]) -> None:
        self.sock.sendall(("".join(f"{key}: {value}\r\n" for key, value in fields.items()) + "\r\n").encode())

    def _read_block(self) -> dict[str, str]:
        block: dict[str, str] = {}
        while True:
            line = self.file.readline()
            if not line:
                raise AmiError("AMI connection closed")
            line = line.rstrip(b"\r\n")
            if not line:
                if block:
                    return block
                continue
            key, _, value = line.decode(errors="replace").partition(":")
            block[key.strip()] = value.strip()

    def originate(self, channel: str, context: str, exten: str, priority: int = 1) -> None:
        """Queue one ``Originate`` (Async: Asterisk dials on its own thread); the reply is read by :meth:`replies`."""
        self.pending += 1
        self._send({"Action": "Originate", "Channel": channel, "Context": context, "Exten": exten,
                    "Priority": str(priority), "Async": "true", "ActionID": str(self.pending)})

    def replies(self, timeout: float = 10.0) -> list[str]:
        """Read the replies to every queued action; the error messages (empty: all queued)."""
        errors: list[str] = []
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        try:
            while self.pending and time.monotonic() < deadline:
                reply = self._read_block()
                if "Response" not in reply:
                    continue  # an event despite Events: off
                self.pending -= 1
                if reply["Response"] != "Success":
                    errors.append(reply.get("Message", str(reply)))
        except (OSError, AmiError) as error:
            errors.append(f"{self.pending} replies missing: {error}")
        return errors

    def close(self) -> None:
        try:
            self._send({"Action": "Logoff"})
        except OSError:
            pass
        self.file.close()
        self.sock.close()

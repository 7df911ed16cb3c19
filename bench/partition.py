"""A network partition between one node and etcd, for the cluster tests and benchmark (#15).

:class:`Link` is a TCP relay on 127.0.0.1 in front of one etcd member's client port: a node whose
``[cluster] etcd`` lists the links instead of the members reaches etcd only through them. ``cut()``
makes it a black hole, as a failed switch or a firewall would be: connections stay open, bytes in
either direction are dropped, new connections are accepted and hear nothing (the node's gRPC calls
time out; nobody gets a reset). ``heal()`` closes what was cut and relays new connections again.
The other nodes, which list the members themselves, keep reaching etcd all along.

Threads, not asyncio: the test's own loop (if any) must not carry the relay.
"""
from __future__ import annotations

import socket
import threading

__all__ = ["Link", "links_to"]

_CHUNK = 65536


class Link:
    """A relay from a free local port to ``target`` (HOST, PORT), which can be cut and healed."""

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host
        self._listener = socket.create_server((host, 0))
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, name=f"link-{self.port}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def cut(self) -> None:
        """From now on nothing passes, either way; open connections stay open (a black hole)."""
        self._cut.set()

    def heal(self) -> None:
        """Close every connection of the cut (dead by now on a real network) and relay new ones again."""
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            _close(sock)
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        _close(self._listener)
        self.heal()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            if self._cut.is_set():
                continue  # accepted, never answered: held open until heal()
            try:
                upstream = socket.create_connection(self.target, timeout=2.0)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            self._track(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                if not self._cut.is_set():
                    sink.sendall(data)
        except OSError:
            pass
        finally:
            if not self._cut.is_set():  # a cut holds both ends open until heal()
                _close(source)
                _close(sink)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def links_to(client_urls: list[str]) -> list[Link]:
    """One link per etcd member (``http://HOST:PORT``)."""
    links = []
    for url in client_urls:
        host, _, port = url.split("://", 1)[1].rpartition(":")
        links.append(Link((host, int(port))))
    return links


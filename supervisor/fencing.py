"""At most one host listens for an extension, even when etcd is out of reach of some nodes (#15).

etcd alone cannot tell a node cut off from it ("my lease will lapse and my extensions move: stop")
from etcd down for everyone ("nothing can move: keep serving"). So the nodes ask each other, over
their HTTP servers (``GET /cluster/peer``, a :class:`~audiogw.shared.messages.PeerReport`):

- **the cut-off node fences itself.** While a node cannot reach etcd it asks its peers every
  :data:`PROBE_INTERVAL`. A peer that reaches etcd (a reply fresher than the lease TTL) and no
  longer lists this node among the live ones is proof that this node's lease is gone, so its
  extensions are being placed elsewhere: :func:`lease_gone` names that witness, and the node stops
  listening at once (fenced) until etcd is back. Peers that lost etcd too prove nothing: all of
  etcd is down, nothing moves, and every node keeps serving its cached assignments.
- **the taking-over node asks first.** A node given an extension while a node that left etcd still
  answers asks that node; while it says it listens for the extension (:func:`claimed`), the start
  waits: the old node fences itself at its next question, at most one interval later.

A node nobody can reach proves nothing either way: it is dead, or cut off from every peer as well
as from etcd; the others then serve its extensions after the TTL, as after a crash (the README
says so). Pure: the reports come in, decisions go out; ``supervisor/peers.py`` does the HTTP.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from audiogw.shared.messages import PeerReport

__all__ = ["PEER_PATH", "PROBE_INTERVAL", "PROBE_TIMEOUT", "lease_gone", "claimed"]

PEER_PATH = "/cluster/peer"
PROBE_INTERVAL = 0.2  # seconds between two rounds of questions (a cut-off node; a held start)
PROBE_TIMEOUT = 0.5  # seconds a peer has to answer one question


def lease_gone(me: str, reports: Iterable[PeerReport], lease_ttl: float) -> str | None:
    """The name of a peer whose fresh view of etcd no longer has ``me`` (this node's lease expired), or None."""
    for report in reports:
        fresh = report.contact_age is not None and report.contact_age < lease_ttl
        if report.node != me and report.etcd_connected and fresh and me not in report.nodes:
            return report.node
    return None


def claimed(extension_ids: Iterable[str], reports: Mapping[str, PeerReport]) -> dict[str, str]:
    """Which of ``extension_ids`` another node still listens for: extension -> that node."""
    listening = {extension_id: name for name, report in sorted(reports.items()) for extension_id in report.serving}
    return {extension_id: listening[extension_id] for extension_id in extension_ids if extension_id in listening}

"""The etcd key layout of ``[cluster]`` mode (#15), declared once, and its values' codecs.

Every key lives under ``/audiogw/``; :data:`FAMILIES` is the one list of what is there,
whose value type each holds, and whether it is tied to a lease (gone when its holder is):

- ``/audiogw/extensions/ID`` -> :class:`ExtensionRecord`: an extension's definition, what
  ``ctl add-extension`` writes on any node (the same fields as the state file's entries).
- ``/audiogw/nodes/NAME`` -> :class:`NodeRecord`, leased: a live node and where to reach it.
- ``/audiogw/placement/ID`` -> :class:`Assignment`: which node serves the extension, its
  standby, and the epoch (bumped each time the serving node changes).
- ``/audiogw/leader`` -> :class:`LeaderRecord`, leased: the node that writes placement.
- ``/audiogw/ports/PORT`` -> :class:`PortRecord`: which extension holds a TCP port. An extension
  keeps its ports on whichever node serves it, so a port is unique in the whole cluster: the
  definition and its two port keys are created in one transaction (``create_revision == 0``
  on each), which refuses a second extension on a port however many nodes add at once.
- ``/audiogw/status/ID`` -> :class:`ServingStatus`, leased (the serving node's): how the node that
  serves the extension is doing with it (state, pid, reason, the epoch it serves), written only
  when that changes, so ``ctl`` on any node answers with the serving node's outcome.
- ``/audiogw/requests/NODE/REQID`` -> :class:`CommandRequest`, leased (the asking node's): a
  command (``status ID``, ``restart-extension ID``: the ``remote`` ones of ``shared/commands.py``)
  carried to NODE, the node that serves the extension; no new port, no new credentials.
- ``/audiogw/replies/REQID`` -> :class:`CommandReply`, leased (the answering node's): its result
  or its refusal. The asker deletes both once it has the reply (or gives up).
- ``/audiogw/removals/ID`` -> :class:`Removal`, leased (the removing node's): the drain of a
  ``remove-extension``, written in the same transaction as the definition's delete, so the
  serving node sees both in one watch revision; it deletes the record once it has used it.

Values are JSON like every other message (``shared/messages.py``): orjson encodes and decodes,
``msgspec.convert`` checks the object against its struct, and a refusal is a
:class:`ClusterValueError` naming the key and what is wrong. Records may come from another
version of audiogw (a rolling upgrade), so unknown fields are ignored, as on the control channel.
Pure: no client, no I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from audiogw.shared.commands import EXTENSION_STATES, MAX_DRAIN_SECONDS, REMOTE_COMMANDS
from audiogw.shared.config import EXTENSION_ID_PATTERN
from audiogw.shared.messages import MAX_MESSAGE_BYTES, MessageError, Pid, _decode, _encode
from audiogw.shared.settings import NODE_NAME_PATTERN

__all__ = [
    "PREFIX", "ClusterValueError", "ExtensionRecord", "NodeRecord", "Assignment", "LeaderRecord", "PortRecord",
    "ServingStatus", "CommandRequest", "CommandReply", "Removal", "SERVING_STATES", "REQUEST_ID_PATTERN",
    "Family", "EXTENSIONS", "NODES", "PLACEMENT", "LEADER", "PORTS", "STATUS", "REQUESTS", "REPLIES", "REMOVALS",
    "FAMILIES", "request_key",
    "key_for", "parse_key", "encode_value", "decode_value", "prefix_range", "MAX_VALUE_BYTES",
]

PREFIX = "/audiogw/"
MAX_VALUE_BYTES = MAX_MESSAGE_BYTES  # 1 MiB, as every message (etcd's own request limit is 1.5 MiB)

ExtensionId = Annotated[str, msgspec.Meta(pattern=EXTENSION_ID_PATTERN.pattern)]
NodeName = Annotated[str, msgspec.Meta(pattern=NODE_NAME_PATTERN.pattern)]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Epoch = Annotated[int, msgspec.Meta(ge=1)]
REQUEST_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")  # uuid4().hex: unique without asking anyone
RequestId = Annotated[str, msgspec.Meta(pattern=REQUEST_ID_PATTERN.pattern)]
# The states a serving node reports: the names ``ctl list`` shows locally (lifecycle's one mapping).
SERVING_STATES: frozenset[str] = frozenset(EXTENSION_STATES)
MAX_REQUEST_WAIT = 60.0  # seconds: the longest command deadline a request may carry


class ClusterValueError(ValueError):
    """A key outside the layout, or a value that is not its family's shape; ``str()`` says which."""


class ExtensionRecord(msgspec.Struct, frozen=True):
    """An extension's definition as ``ExtensionConfig.to_dict()`` writes it; its app options are
    checked by ``ExtensionConfig.from_dict`` (the app's model) where a node starts it."""

    id: ExtensionId
    ia_port: Port
    retorno_port: Port
    app: Annotated[str, msgspec.Meta(min_length=1)]
    options: dict[str, Any] = {}


class NodeRecord(msgspec.Struct, frozen=True):
    """A live node (the key exists only while its lease does): where Asterisk reaches its
    AudioSocket ports (``advertise``) and its HTTP server (``/route``, ``/metrics``, ``/sd``)."""

    name: NodeName
    advertise: Annotated[str, msgspec.Meta(min_length=1)]
    http: str = ""  # HOST:PORT of its supervisor.metrics listener ("" = none)
    version: str = ""
    started: float = 0.0  # wall clock (time.time()) of its supervisor's start


class Assignment(msgspec.Struct, frozen=True):
    """Where one extension is served. ``epoch`` grows by one each time ``node`` changes (a standby
    change keeps it), so a node can tell a newer placement from the one it serves;
    ``leader`` is the node that wrote it."""

    node: NodeName
    epoch: Epoch
    standby: NodeName | None = None
    leader: str = ""

    def __post_init__(self) -> None:
        if self.standby == self.node:
            raise ValueError(f"standby {self.standby!r} is the serving node itself")


class LeaderRecord(msgspec.Struct, frozen=True):
    """The elected node; the key's create revision is its term (each election creates it anew)."""

    name: NodeName


class PortRecord(msgspec.Struct, frozen=True):
    """The extension (and its leg) that holds the port the key names."""

    extension: ExtensionId
    leg: Literal["ia", "retorno"]


class ServingStatus(msgspec.Struct, frozen=True, omit_defaults=True):
    """How the serving node is doing with one extension (written by that node, under its lease).

    ``epoch`` is the placement epoch it serves and ``defined`` the create revision of the definition
    it runs, so a reader tells this status from a stale one (an earlier node, an earlier extension of
    the same id). ``failure``: how the current start ended when it failed (what ``add-extension``
    answers on one host); ``reason``: the last failure, as ``ctl list`` shows it."""

    node: NodeName
    state: str
    epoch: Epoch
    defined: Annotated[int, msgspec.Meta(ge=0)] = 0
    pid: Pid | None = None
    reason: str | None = None
    failure: str | None = None

    def __post_init__(self) -> None:
        if self.state not in SERVING_STATES:
            raise ValueError(f"state {self.state!r} is not one of {', '.join(sorted(SERVING_STATES))}")


class CommandRequest(msgspec.Struct, frozen=True):
    """A command for the node the key names, from ``asker``; ``wait``: the seconds it may take
    (the asker's deadline, relative: the hosts' clocks need not agree)."""

    asker: NodeName
    command: str
    wait: Annotated[float, msgspec.Meta(gt=0, le=MAX_REQUEST_WAIT)]
    args: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if self.command not in REMOTE_COMMANDS:
            raise ValueError(f"command {self.command!r} is not carried to another node "
                             f"(only {', '.join(sorted(REMOTE_COMMANDS))})")


class CommandReply(msgspec.Struct, frozen=True, omit_defaults=True):
    """``node``'s answer to a request: ``ok`` with the command's ``result``, or the refusal's ``error``."""

    node: NodeName
    ok: bool
    result: Any = None
    error: str | None = None

    def __post_init__(self) -> None:
        if self.ok == (self.error is not None):
            raise ValueError("a reply is ok without an error, or refused with one")


class Removal(msgspec.Struct, frozen=True):
    """The drain a ``remove-extension`` asked for: the serving node drains its calls that long."""

    drain: Annotated[float, msgspec.Meta(ge=0, le=MAX_DRAIN_SECONDS)]


@dataclass(frozen=True, slots=True)
class Family:
    """One kind of key: a prefix and an id (``single``: the prefix is the whole key; ``parts``:
    how many '/'-separated segments the id has, e.g. ``NODE/REQID``)."""

    name: str
    prefix: str
    record: type
    leased: bool
    single: bool = False
    parts: int = 1

    def key(self, item: str = "") -> str:
        if self.single:
            if item:
                raise ClusterValueError(f"{self.prefix} takes no id, got {item!r}")
            return self.prefix
        if not self.fits(item):
            raise ClusterValueError(f"{self.name} id {item!r} must be {self.parts} non-empty part(s) split by '/'")
        return self.prefix + item

    def fits(self, item: str) -> bool:
        segments = item.split("/")
        return len(segments) == self.parts and all(segments)


EXTENSIONS = Family("extensions", PREFIX + "extensions/", ExtensionRecord, leased=False)
NODES = Family("nodes", PREFIX + "nodes/", NodeRecord, leased=True)
PLACEMENT = Family("placement", PREFIX + "placement/", Assignment, leased=False)
LEADER = Family("leader", PREFIX + "leader", LeaderRecord, leased=True, single=True)
PORTS = Family("ports", PREFIX + "ports/", PortRecord, leased=False)
STATUS = Family("status", PREFIX + "status/", ServingStatus, leased=True)
REQUESTS = Family("requests", PREFIX + "requests/", CommandRequest, leased=True, parts=2)
REPLIES = Family("replies", PREFIX + "replies/", CommandReply, leased=True)
REMOVALS = Family("removals", PREFIX + "removals/", Removal, leased=True)
FAMILIES: tuple[Family, ...] = (EXTENSIONS, NODES, PLACEMENT, LEADER, PORTS, STATUS, REQUESTS, REPLIES, REMOVALS)


def request_key(node: str, request_id: str) -> bytes:
    """The key of request ``request_id`` for ``node``."""
    return key_for(REQUESTS, f"{node}/{request_id}")


def key_for(family: Family, item: str = "") -> bytes:
    """The etcd key (bytes, as the client takes it) of ``item`` in ``family``."""
    return family.key(item).encode()


def parse_key(key: bytes | str) -> tuple[Family, str]:
    """Which family a key belongs to and its id ("" for a single key); ClusterValueError otherwise."""
    text = key.decode(errors="replace") if isinstance(key, bytes) else key
    for family in FAMILIES:
        if family.single and text == family.prefix:
            return family, ""
        if not family.single and text.startswith(family.prefix):
            item = text[len(family.prefix):]
            if family.fits(item):
                return family, item
    raise ClusterValueError(f"key {text!r} is not in the audiogw layout under {PREFIX}")


def prefix_range(family: Family | None = None) -> tuple[bytes, bytes]:
    """``(key, range_end)`` covering every key of ``family`` (None: all of ``/audiogw/``), for a
    range read or a watch: etcd's range end is the prefix with its last byte plus one."""
    prefix = (family.prefix if family is not None else PREFIX).encode()
    return prefix, prefix[:-1] + bytes([prefix[-1] + 1])


def encode_value(record: msgspec.Struct) -> bytes:
    """A record as the JSON bytes stored under its key."""
    if type(record) not in {family.record for family in FAMILIES}:
        raise ClusterValueError(f"{type(record).__name__} is not a cluster record")
    return _encode(record)


def decode_value(key: bytes | str, raw: bytes) -> Any:
    """The value stored under ``key``, checked against its family's record. An extension or
    node record must also name the id its key names (a value copied to the wrong key is refused)."""
    family, item = parse_key(key)
    where = family.key(item)
    try:  # the messages' own codec: size limit, orjson, msgspec.convert against the struct
        record = _decode(family.record, raw, where)
    except MessageError as error:
        raise ClusterValueError(error.reason) from None
    if family in (EXTENSIONS, PLACEMENT, STATUS, REMOVALS) and not EXTENSION_ID_PATTERN.match(item):
        raise ClusterValueError(f"{where}: {item!r} is not an extension id")
    if family is REQUESTS:
        node, request_id = item.split("/")
        if not NODE_NAME_PATTERN.match(node) or not REQUEST_ID_PATTERN.match(request_id):
            raise ClusterValueError(f"{where}: {item!r} is not NODE/REQUEST-ID (32 hex digits)")
    if family is REPLIES and not REQUEST_ID_PATTERN.match(item):
        raise ClusterValueError(f"{where}: {item!r} is not a request id (32 hex digits)")
    if family is PORTS and not (item.isascii() and item.isdigit() and 1 <= int(item) <= 65535
                                and str(int(item)) == item):
        raise ClusterValueError(f"{where}: {item!r} is not a TCP port")
    named = record.id if family is EXTENSIONS else record.name if family is NODES else item
    if named != item:
        raise ClusterValueError(f"{where}: the record names {named!r}, the key {item!r}")
    return record

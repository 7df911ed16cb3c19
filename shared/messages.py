"""Every message between the supervisor, its workers and `audiogw ctl`: typed, declared once.

Three channels, each JSON over ZeroMQ, each with one ``encode_*`` and one
``decode_*`` function below; the structs are the only place a field is named:

- worker bus, worker -> supervisor (DEALER -> ROUTER): :data:`WorkerMessage`,
  tagged on ``type``: :class:`Ready`, :class:`Heartbeat`, :class:`Stopping`, :class:`Failed`.
- worker bus, supervisor -> worker: :data:`WorkerCommand`: :class:`Drain`, :class:`Stop`.
- control, ctl -> supervisor (DEALER -> ROUTER, multipart [identity, body]):
  :class:`Request`; the answer is a :class:`Reply`.
- calls, worker -> supervisor (a second DEALER -> ROUTER, ``ipc://STATE/run/calls.sock``):
  :data:`CallRequest`: :class:`LegStarted`, :class:`LegEnded`, :class:`Dial`,
  :class:`SendDtmf`, :class:`HangupRemote`; supervisor -> worker: :data:`CallEvent`:
  :class:`DialStatus`, :class:`HangupLeg`. Its own socket because the bus is read in
  batches (idle supervisor) while a call-control request must be handled at once; one
  message per call event, never per frame.
- supervisor <-> supervisor in ``[cluster]`` mode (HTTP ``GET /cluster/peer``, JSON, not
  ZeroMQ): :class:`PeerReport`, what a node says of itself to a node that lost etcd or that is
  taking over an extension (``supervisor/fencing.py``). Another version may answer (a rolling
  upgrade), so unknown fields are ignored.

Every decode validates the whole message (orjson decodes, msgspec checks the
object against the struct) and raises :class:`MessageError` naming what is wrong. The bus is
private to one installation (both ends are the same code), so an unknown field
there is a bug and is refused; the control channel may cross machines and
versions, so unknown fields there are ignored.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec
import orjson

from audiogw.shared.settings import NODE_NAME_PATTERN

MAX_MESSAGE_BYTES = 1 << 20

# A pid as the kernel hands them out; an extension id is checked against the
# supervisor's own table (it is looked up, never trusted), so only non-empty here.
Pid = Annotated[int, msgspec.Meta(gt=0)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Seconds = Annotated[float, msgspec.Meta(ge=0)]


class MessageError(ValueError):
    """A message that is too big, not JSON, or not of its channel's shape; ``str()`` says which.

    ``request_id`` is the control request's ``id`` when one could be read, so
    even a refused request gets an answer its client recognises.
    """

    def __init__(self, reason: str, request_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.request_id = request_id


# -- worker -> supervisor ------------------------------------------------------
class _FromWorker(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    """What every worker message carries: who sent it and its cumulative counters.

    ``stats`` is the worker's snapshot (its schema belongs to the stats module);
    here it is only required to be a JSON object.
    """

    extension: NonEmpty
    pid: Pid
    stats: dict[str, Any]


class Ready(_FromWorker, frozen=True, tag="ready"):
    """Both listening sockets serve: the supervisor moves the worker to RUNNING."""


class Heartbeat(_FromWorker, frozen=True, tag="heartbeat"):
    """Sent every ``heartbeat_interval`` from the worker's own loop: a stuck loop stops them."""


class Stopping(_FromWorker, frozen=True, tag="stopping"):
    """The worker's last message (its final counters), sent as it exits."""


class Failed(_FromWorker, frozen=True, tag="failed"):
    """The worker cannot start with its config and exits 78 (EX_CONFIG) right after this:
    ``reason`` is the option error itself, what ctl list/status and the add-extension or
    restart-extension refusal show (the exit code alone says only "bad config")."""

    reason: str


WorkerMessage = Union[Ready, Heartbeat, Stopping, Failed]


# -- supervisor -> worker ------------------------------------------------------
class Drain(msgspec.Struct, frozen=True, tag_field="type", tag="drain", forbid_unknown_fields=True, omit_defaults=True):
    """Stop accepting calls, hang up the remaining ones after ``seconds``, then exit."""

    seconds: Seconds
    reason: str = "drain"  # for the worker's log line (a signal's name when it drains itself)


class Stop(msgspec.Struct, frozen=True, tag_field="type", tag="stop", forbid_unknown_fields=True, omit_defaults=True):
    """Exit now, hanging up every call."""

    reason: str = "stop"


WorkerCommand = Union[Drain, Stop]


# -- calls: worker <-> supervisor (call control through Asterisk's AMI) ----------
LegKind = Literal["ia", "retorno"]
CallUuid = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")]
DtmfDigits = Annotated[str, msgspec.Meta(pattern=r"^[0-9A-Da-d*#wW]{1,32}$")]
DialStatusName = Literal["ringing", "answered", "busy", "no_answer", "failed", "hangup"]
DIAL_STATUSES: tuple[str, ...] = DialStatusName.__args__  # type: ignore[attr-defined]


class _CallMessage(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """Every call-control message names the extension and the conversation (the AudioSocket UUID, lower-case)."""

    extension: NonEmpty
    uuid: CallUuid


class LegStarted(_CallMessage, frozen=True, tag="leg_started"):
    """A leg of this conversation is connected to the worker (the REST hangup finds calls by it)."""

    leg: LegKind


class LegEnded(_CallMessage, frozen=True, tag="leg_ended"):
    leg: LegKind


class Dial(_CallMessage, frozen=True, tag="dial"):
    """Ring the resident (the extension's ``resident`` option) for this conversation through AMI;
    ``timeout`` seconds to answer. Progress comes back as :class:`DialStatus`."""

    timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 30.0


class SendDtmf(_CallMessage, frozen=True, tag="send_dtmf"):
    """DTMF towards ``leg``'s caller (e.g. the door panel's opener), through AMI."""

    leg: LegKind
    digits: DtmfDigits


class HangupRemote(_CallMessage, frozen=True, tag="hangup_remote"):
    """Hang up ``leg`` on Asterisk's side when it is not (or not yet) connected to the worker,
    e.g. cancel a resident still ringing."""

    leg: LegKind


CallRequest = Union[LegStarted, LegEnded, Dial, SendDtmf, HangupRemote]


class DialStatus(_CallMessage, frozen=True, tag="dial_status"):
    """How a :class:`Dial` goes, from AMI's own events; ``reason`` says why for ``failed``."""

    status: DialStatusName
    leg: LegKind = "retorno"
    reason: str = ""


class HangupLeg(_CallMessage, frozen=True, tag="hangup_leg"):
    """Hang up ``leg`` (None: every leg of the conversation), e.g. after a Twilio-style REST hangup."""

    leg: LegKind | None = None
    reason: str = "rest_hangup"


CallEvent = Union[DialStatus, HangupLeg]


# -- ctl <-> supervisor --------------------------------------------------------
class Request(msgspec.Struct, frozen=True):
    """One control command; ``args`` are checked against the command's own declaration."""

    command: str
    id: str | None = None
    args: dict[str, Any] | None = None


class Reply(msgspec.Struct, frozen=True, omit_defaults=True):
    """The answer to the request with the same ``id``: ``result`` when ``ok``, else ``error``.

    Only the one that applies is sent (a null ``result`` reads the same as none).
    """

    id: str | None
    ok: bool
    result: Any = None
    error: str | None = None

    @classmethod
    def success(cls, request_id: str | None, result: Any) -> "Reply":
        return cls(id=request_id, ok=True, result=result)

    @classmethod
    def failure(cls, request_id: str | None, error: str) -> "Reply":
        return cls(id=request_id, ok=False, error=error)


# -- supervisor <-> supervisor ([cluster] mode) ------------------------------------
NodeName = Annotated[str, msgspec.Meta(pattern=NODE_NAME_PATTERN.pattern)]


class PeerReport(msgspec.Struct, frozen=True):
    """``GET /cluster/peer``: a node's own word on etcd and on what it listens for (``supervisor/fencing.py``).

    ``contact_age``: seconds since its last reply from etcd (None: never); ``nodes``: the live
    nodes in its view of etcd; ``serving``: the extensions it listens for now (none while it stops
    or is fenced).
    """

    node: NodeName
    etcd_connected: bool
    contact_age: Annotated[float, msgspec.Meta(ge=0)] | None
    nodes: list[NodeName]
    serving: list[NonEmpty]


# -- codecs ---------------------------------------------------------------------
# orjson is the JSON codec; msgspec validates the decoded objects against the structs.
# (msgspec's own JSON decoder was 2-3x faster per message, 8 vs 15-23 us for a full
# heartbeat, but that is microseconds per worker per second; one JSON codec is kept.)


def _encode(message: msgspec.Struct) -> bytes:
    return orjson.dumps(msgspec.to_builtins(message))


def _decode(kind: Any, raw: bytes, what: str, limit: int = MAX_MESSAGE_BYTES) -> Any:
    if len(raw) > limit:
        raise MessageError(f"{what} of {len(raw)} bytes exceeds {limit}")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise MessageError(f"{what} is not JSON: {error}") from None
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError as error:
        raise MessageError(f"{what}: {error}") from None


def encode_worker_message(message: WorkerMessage) -> bytes:
    return _encode(message)


def decode_worker_message(raw: bytes) -> WorkerMessage:
    """A worker's ready/heartbeat/stopping, validated (the supervisor's side of the bus)."""
    return _decode(WorkerMessage, raw, "worker message")


def encode_worker_command(command: WorkerCommand) -> bytes:
    return _encode(command)


def decode_worker_command(raw: bytes) -> WorkerCommand:
    """The supervisor's drain/stop, validated (the worker's side of the bus)."""
    return _decode(WorkerCommand, raw, "worker command")


def encode_call_message(message: CallRequest | CallEvent) -> bytes:
    return _encode(message)


def decode_call_request(raw: bytes) -> CallRequest:
    """A worker's call-control request, validated (the supervisor's side of the calls socket)."""
    return _decode(CallRequest, raw, "call request")


def decode_call_event(raw: bytes) -> CallEvent:
    """The supervisor's dial status or hangup, validated (the worker's side of the calls socket)."""
    return _decode(CallEvent, raw, "call event")


def encode_request(request: Request) -> bytes:
    return _encode(request)


def decode_request(raw: bytes) -> Request:
    """A control request; a refused one still names its ``id`` (``MessageError.request_id``) if it had one."""
    try:
        return _decode(Request, raw, "request")
    except MessageError as error:
        error.request_id = _id_of(raw)
        raise


def encode_reply(reply: Reply) -> bytes:
    return _encode(reply)


def decode_reply(raw: bytes) -> Reply:
    """A control reply; as for requests, ``MessageError.request_id`` names the id when readable."""
    try:
        reply = _decode(Reply, raw, "reply")
    except MessageError as error:
        error.request_id = _id_of(raw)
        raise
    if not reply.ok and reply.result is not None:
        raise MessageError("reply: a refusal carries an error, not a result", reply.id)
    return reply


def encode_peer_report(report: PeerReport) -> bytes:
    return _encode(report)


def decode_peer_report(raw: bytes) -> PeerReport:
    """A peer's ``/cluster/peer`` answer, validated (it comes over the network from another host)."""
    return _decode(PeerReport, raw, "peer report")


def _id_of(raw: bytes) -> str | None:
    """The ``id`` of a message refused for another field (the error path only: a second parse)."""
    if len(raw) > MAX_MESSAGE_BYTES:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    found = value.get("id") if isinstance(value, dict) else None
    return found if isinstance(found, str) else None


__all__ = [
    "MAX_MESSAGE_BYTES", "MessageError", "Ready", "Heartbeat", "Stopping", "Failed", "WorkerMessage", "Drain", "Stop",
    "WorkerCommand", "Request", "Reply", "encode_worker_message", "decode_worker_message",
    "PeerReport", "encode_peer_report", "decode_peer_report",
    "encode_worker_command", "decode_worker_command", "encode_request", "decode_request",
    "encode_reply", "decode_reply", "LegStarted", "LegEnded", "Dial", "SendDtmf", "HangupRemote",
    "CallRequest", "DialStatus", "HangupLeg", "CallEvent", "DIAL_STATUSES", "encode_call_message",
    "decode_call_request", "decode_call_event",
]

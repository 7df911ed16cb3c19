"""What a standalone worker (``python -m audiogw.worker``) reports to files: its readiness, its ended legs.

Tests and benchmarks start workers on port 0 and need the ports they got,
when they serve, and each leg's own figures. The log says the same things
for people; these documents are the machine-readable channel, declared once
here for the worker that writes them and the programs that read them:

- ``--ready-file PATH``: one :class:`WorkerReady` JSON document, written
  atomically (a reader never sees half of it) once both sockets serve.
- ``--leg-records PATH``: one :class:`LegRecord` per ended leg, as JSON lines
  (appended, flushed per line; a reader may see a last line still being written).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import orjson


class WorkerReady(msgspec.Struct, frozen=True):
    """The worker serves both legs: its pid and the port each leg kind got."""

    extension: str
    pid: int
    app: str
    ports: dict[str, int]  # leg kind -> port


class LegRecord(msgspec.Struct, frozen=True):
    """One ended leg's figures, as the worker counted them (its ``leg end`` log line, typed)."""

    extension: str
    leg: str
    uuid: str
    reason: str
    duration: float  # seconds from the UUID frame to the end
    frames_received: int
    frames_sent: int
    underruns: int
    late_frames: int  # sent more than one period after their deadline
    max_send_gap_ms: float  # largest time between two of this leg's sends
    dropped: dict[str, int]  # frames of this leg dropped, by reason (inbound_flood, latency)
    dtmf: str
    app: dict[str, Any] = {}  # figures the app added to this leg (agent: barge_in_ms)


def encode(record: msgspec.Struct) -> bytes:
    return orjson.dumps(msgspec.to_builtins(record))


def write_ready(path: str | os.PathLike[str], ready: WorkerReady) -> None:
    """Write ``ready`` to ``path`` atomically (a temporary file renamed over it)."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_bytes(encode(ready))
    os.replace(temporary, target)


def read_ready(path: str | os.PathLike[str]) -> WorkerReady | None:
    """The worker's readiness document, or None while it has not written one."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    return msgspec.convert(orjson.loads(raw), WorkerReady)


def read_leg_records(path: str | os.PathLike[str]) -> list[LegRecord]:
    """Every complete record in ``path`` (none if it does not exist yet)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    lines = raw.split(b"\n")
    return [msgspec.convert(orjson.loads(line), LegRecord) for line in lines[:-1] if line]


def leg_records_file(folder: str | os.PathLike[str] | None, extension_id: str) -> str | None:
    """Where an extension's workers append their leg records (``supervisor.leg_records``); None: nowhere."""
    return None if folder is None else os.path.join(folder, f"{extension_id}.jsonl")


def read_leg_records_folder(folder: str | os.PathLike[str]) -> list[LegRecord]:
    """Every extension's records in a ``supervisor.leg_records`` folder, extension by extension."""
    try:
        names = sorted(name for name in os.listdir(folder) if name.endswith(".jsonl"))
    except FileNotFoundError:
        return []
    return [record for name in names for record in read_leg_records(os.path.join(folder, name))]

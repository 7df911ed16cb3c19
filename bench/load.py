"""The benchmarks' load client: many concurrent calls that behave like Asterisk.

Each call is the softphone's (``client/softphone.py`` :class:`Call`): a UUID
frame, then a 440 Hz tone in 20 ms frames, a hangup after S seconds, and the
gateway's frames timed by the kernel (SO_TIMESTAMPNS); its result carries the
moments the UUID and the hangup were written, so a call's expected frames can
be windowed exactly. This module adds a shared send clock (the softphone's
``schedule`` hook) and runs as its own process:

    python -m audiogw.bench.load --plan PLAN.json --out RESULT.npz

so ``audiogw bench`` can spread hundreds of calls over several load processes
(one Python process cannot drive 400 paced calls on a 2-core machine and still
read every frame on time). The process prints ``ready`` once imported, waits
for a start time (CLOCK_REALTIME seconds) on stdin, so every load process
starts its calls on one shared schedule, and writes its results to ``--out``.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy
import uvloop

from audiogw.bench.stats import CallOutcome
from audiogw.client.softphone import Call, CallConnectError, CallResult
from audiogw.shared.audiosocket import FRAME_PERIOD
from audiogw.shared.wav import tone

TONE_HZ = 440.0


@dataclass
class CallRecord:
    """One planned call and what happened to it."""

    index: int
    leg: str
    result: CallResult | None = None
    uuid_sent: float | None = None  # time.time() right after the UUID frame was written
    hangup_sent: float | None = None  # time.time() when the hangup frame was written
    failure: str | None = None
    extension: str = ""
    refused: bool = False  # the connection failed (CallConnectError)

    def outcome(self) -> CallOutcome:
        """The plain figures the statistics need."""
        result = self.result
        return CallOutcome(
            extension=self.extension,
            leg=self.leg,
            uuid_sent=self.uuid_sent,
            arrivals=result.arrivals if result is not None else numpy.empty(0),
            frames_sent=result.frames_sent if result is not None else 0,
            late_reads=result.late_reads if result is not None else 0,
            refused=self.refused,
            failure=self.failure,
        )


@dataclass(frozen=True)
class PlannedCall:
    """Where and when (seconds after the common start) one call goes."""

    index: int
    extension: str
    leg: str
    port: int
    offset: float


class SendClock:
    """A few send clocks for every call of this load process.

    One Asterisk timer serves many channels; a timer per call would make this
    client spend more CPU on its own wake-ups than the gateway it measures, and
    on a 2-core machine that is CPU taken from the gateway. But one tick for
    all calls would also be unlike Asterisk, whose channels send at their own
    phases: every worker would get all its calls' frames at the same instant.
    So the 20 ms period is cut into ``SLOTS`` sub-ticks and each call is sent
    on its own slot. Each tick writes its calls' next frames without waiting
    (a full kernel buffer skips that call's frame, counted as a late send).
    """

    SLOTS = 4

    def __init__(self) -> None:
        self.slots: list[dict[Any, None]] = [{} for _ in range(self.SLOTS)]  # anything with tick(now)
        self._next_slot = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def add(self, call: Any) -> None:
        self.slots[self._next_slot][call] = None
        self._next_slot = (self._next_slot + 1) % self.SLOTS
        self._wake.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    def discard(self, call: Any) -> None:
        for slot in self.slots:
            slot.pop(call, None)

    async def _run(self) -> None:
        monotonic = time.monotonic
        period = FRAME_PERIOD / self.SLOTS
        slots = self.slots
        while True:
            if not any(slots):
                self._wake.clear()
                await self._wake.wait()
            anchor, index = monotonic(), 0
            while any(slots):
                deadline = anchor + index * period
                now = monotonic()
                if deadline > now:
                    await asyncio.sleep(deadline - now)
                    now = monotonic()
                if now - deadline > FRAME_PERIOD:  # far behind: restart the schedule, no burst
                    anchor, index = now, 0
                for call in tuple(slots[index % self.SLOTS]):
                    call.tick(now)
                index += 1


async def timed_call(host: str, port: int, source_bytes: bytes, seconds: float, record: CallRecord,
                     schedule: SendClock | None = None) -> None:
    """Place one call (on ``schedule``, or its own clock); fill ``record`` (never raises for call-level failures)."""
    try:
        call = Call(host, port, source=source_bytes, seconds=seconds, record=False, schedule=schedule)
        result = await call.run(5.0)
    except CallConnectError as exc:
        record.failure = f"connect: {exc.reason}"
        record.refused = True
        return
    except Exception as exc:  # noqa: BLE001 - a broken call is a measured failure, not a crash
        record.failure = f"{type(exc).__name__}: {exc}"
        return
    record.result = result
    record.uuid_sent = result.uuid_sent_at
    record.hangup_sent = result.hangup_sent_at
    if result.hung_up_by != "client":
        record.failure = f"call ended by {result.hung_up_by}: {result.error or 'no error given'}"
    elif result.error:
        record.failure = result.error
    elif record.uuid_sent is None:
        record.failure = "UUID frame was never written"


async def run_calls(host: str, plan: list[PlannedCall], seconds: float,
                    start_at: float | None = None, schedule: SendClock | None = None) -> list[CallRecord]:
    """Run every planned call concurrently on the running loop (sent on ``schedule`` if given).

    ``start_at`` is the CLOCK_REALTIME moment offsets count from (None: now),
    so several load processes can share one schedule.
    """
    source_bytes = tone(TONE_HZ, seconds).astype("<i2", copy=False).tobytes()
    records = [CallRecord(planned.index, planned.leg, extension=planned.extension) for planned in plan]
    loop = asyncio.get_running_loop()
    delay = 0.05 if start_at is None else max(0.0, start_at - time.time())
    start = loop.time() + delay

    async def one(planned: PlannedCall, record: CallRecord) -> None:
        wait = start + planned.offset - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        await timed_call(host, planned.port, source_bytes, seconds, record, schedule)

    await asyncio.gather(*(one(planned, record) for planned, record in zip(plan, records)))
    return records


# --------------------------------------------------------------------------
# Results on disk: arrivals concatenated in one array, the rest as JSON
# --------------------------------------------------------------------------
_META_FIELDS = ("index", "leg", "extension", "uuid_sent", "hangup_sent", "failure", "refused")


def save_records(path: Path, records: list[CallRecord]) -> None:
    """Write records so :func:`load_outcomes` can read them in another process (no pickle)."""
    arrivals = [record.result.arrivals if record.result is not None else numpy.empty(0) for record in records]
    meta = []
    for record in records:
        entry: dict[str, Any] = {name: getattr(record, name) for name in _META_FIELDS}
        result = record.result
        entry["frames_sent"] = result.frames_sent if result is not None else 0
        entry["late_reads"] = result.late_reads if result is not None else 0
        meta.append(entry)
    with open(path, "wb") as handle:
        numpy.savez(
            handle,
            arrivals=numpy.concatenate(arrivals) if arrivals else numpy.empty(0),
            lengths=numpy.array([array.size for array in arrivals], dtype=numpy.int64),
            meta=numpy.array(json.dumps(meta)),
        )


def load_outcomes(path: Path) -> list[CallOutcome]:
    """The call outcomes a load process saved."""
    with numpy.load(path, allow_pickle=False) as data:
        arrivals = data["arrivals"]
        lengths = data["lengths"]
        meta = json.loads(str(data["meta"]))
    outcomes = []
    offsets = numpy.concatenate([[0], numpy.cumsum(lengths)]).astype(numpy.int64)
    for position, entry in enumerate(meta):
        outcomes.append(CallOutcome(
            extension=entry["extension"], leg=entry["leg"], uuid_sent=entry["uuid_sent"],
            arrivals=arrivals[offsets[position]:offsets[position + 1]].copy(),
            frames_sent=entry["frames_sent"], late_reads=entry["late_reads"],
            refused=entry["refused"], failure=entry["failure"],
        ))
    return outcomes


def write_plan(path: Path, host: str, seconds: float, plan: list[PlannedCall]) -> None:
    """The plan file a load process reads."""
    path.write_text(json.dumps({"host": host, "seconds": seconds,
                                "calls": [planned.__dict__ for planned in plan]}))


def read_plan(path: Path) -> tuple[str, float, list[PlannedCall]]:
    data = json.loads(path.read_text())
    return data["host"], float(data["seconds"]), [PlannedCall(**entry) for entry in data["calls"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audiogw.bench.load",
                                     description="One load process of `audiogw bench`.")
    parser.add_argument("--plan", type=Path, required=True, help="JSON plan written by the bench")
    parser.add_argument("--out", type=Path, required=True, help="where to write the results (.npz)")
    args = parser.parse_args(argv)
    host, seconds, plan = read_plan(args.plan)
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        return 1  # the bench went away before the start
    start_at = float(line)
    # A collection pass over hundreds of calls' objects stalls this loop for
    # tens of ms, and load processes started together collect together: their
    # late reads would show up as the gateway's gaps. The calls make no
    # garbage cycles worth collecting in a run of minutes.
    gc.freeze()
    gc.disable()

    async def calls_on_one_clock() -> list[CallRecord]:
        return await run_calls(host, plan, seconds, start_at, SendClock())

    try:
        records = uvloop.run(calls_on_one_clock())
    finally:
        gc.enable()
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        # `bench` ran the calls real-time (its default), as Asterisk's; writing the results is
        # not call work, and real-time it would hold up the calls still running elsewhere.
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    save_records(args.out, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The deadline clock and the playout buffer, driven by hand (no sockets, no sleeping)."""
from __future__ import annotations

from audiogw.shared.histogram import Histogram, quantile
from audiogw.worker.clock import DeadlineClock
from audiogw.worker.playout import PlayoutBuffer


def test_deadlines_are_absolute_so_overshoot_does_not_drift():
    clock = DeadlineClock(start=100.0, period=0.02)
    for n in range(1000):
        assert abs(clock.deadline - (100.0 + n * 0.02)) < 1e-9
        clock.tick(clock.deadline + 0.003)  # every wake-up 3 ms late
    assert abs(clock.deadline - (100.0 + 1000 * 0.02)) < 1e-9
    assert clock.reanchors == 0


def test_small_lateness_is_reported_and_kept_on_schedule():
    clock = DeadlineClock(start=0.0, period=0.02, max_late=0.02)
    assert clock.tick(0.0) == 0.0
    assert abs(clock.tick(0.035) - 0.015) < 1e-9  # 15 ms late: still on the old grid
    assert abs(clock.deadline - 0.04) < 1e-9


def test_far_behind_reanchors_instead_of_bursting():
    clock = DeadlineClock(start=0.0, period=0.02, max_late=0.02)
    clock.tick(0.0)
    lateness = clock.tick(0.32)  # the loop stalled 300 ms
    assert abs(lateness - 0.30) < 1e-9
    assert clock.reanchors == 1
    # The next deadline is one period after the stall, not the 15 missed ticks at once.
    assert abs(clock.deadline - 0.34) < 1e-9


def test_early_wakeup_counts_as_zero_lateness():
    clock = DeadlineClock(start=0.0)
    assert clock.tick(-0.0004) == 0.0


def test_playout_cuts_any_chunk_into_wire_frames():
    buffer = PlayoutBuffer(rate=8000, capacity_frames=10, lead_frames=3)
    buffer.push(b"\x01\x00" * 100)  # 200 bytes: less than a frame
    assert len(buffer) == 0
    buffer.push(b"\x02\x00" * 300)  # 800 bytes total -> 2 frames + 160 bytes
    assert len(buffer) == 2
    frame = buffer.pop()
    assert frame[:3] == b"\x10\x01\x40" and len(frame) == 323
    assert frame[3:203] == b"\x01\x00" * 100
    buffer.flush_partial()
    assert len(buffer) == 2
    assert buffer.pop() is not None and buffer.pop()[-2:] == b"\x00\x00"
    assert buffer.pop() is None


def test_playout_is_bounded_and_drops_oldest():
    buffer = PlayoutBuffer(rate=8000, capacity_frames=5, lead_frames=2)
    for value in range(8):
        buffer.push(bytes([value, 0]) * 160)
    assert len(buffer) == 5 and buffer.dropped == 3
    assert buffer.pop()[3] == 3  # frames 0-2 were dropped


def test_playout_clear_and_rate_change():
    buffer = PlayoutBuffer(rate=8000, capacity_frames=50, lead_frames=2)
    buffer.push(bytes(3200))
    assert buffer.clear() == 10 and buffer.pop() is None
    buffer.set_rate(16000)
    assert buffer.silence[:3] == b"\x12\x02\x80" and len(buffer.silence) == 643


def test_histogram_buckets_and_quantile():
    histogram = Histogram()
    for _ in range(98):
        histogram.observe(0.0001)
    histogram.observe(0.004)
    histogram.observe(2.0)
    snapshot = histogram.snapshot()
    assert snapshot["count"] == 100 and snapshot["counts"][0] == 98 and snapshot["counts"][-1] == 1
    assert quantile(snapshot, 0.5) == 0.0005
    assert quantile(snapshot, 0.99) == 0.005
    assert quantile({"counts": [0] * 15}, 0.99) is None


def test_playout_marks_fire_when_the_audio_before_them_has_left():
    buffer = PlayoutBuffer(rate=8000, capacity_frames=50, lead_frames=2)
    fired: list[str] = []
    buffer.mark(lambda: fired.append("empty"))
    assert fired == ["empty"]  # nothing queued: at once
    buffer.push(bytes(320 * 2 + 100))  # two frames and a partial
    buffer.mark(lambda: fired.append("a"))
    assert len(buffer) == 3  # the partial was padded so the mark falls on a frame boundary
    buffer.push(bytes(320))
    buffer.mark(lambda: fired.append("b"))
    for expected in ([], [], ["a"], ["a", "b"]):
        assert buffer.pop() is not None
        assert fired[1:] == expected
    assert buffer.pop() is None


def test_playout_clear_and_overflow_release_pending_marks():
    buffer = PlayoutBuffer(rate=8000, capacity_frames=3, lead_frames=2)
    fired: list[str] = []
    buffer.push(bytes(320 * 2))
    buffer.mark(lambda: fired.append("first"))
    buffer.push(bytes(320 * 2))
    buffer.mark(lambda: fired.append("second"))
    assert fired == []
    buffer.push(bytes(320))  # overflow drops the two oldest frames: the audio before "first" is gone
    assert buffer.dropped == 2 and fired == ["first"]
    assert buffer.clear() == 3 and fired == ["first", "second"]  # barge-in: every pending mark is echoed
    assert buffer.pending_marks == 0


def test_a_failing_mark_callback_does_not_break_the_clock():
    buffer = PlayoutBuffer(rate=8000, capacity_frames=5, lead_frames=2)
    fired: list[str] = []
    buffer.push(bytes(320))
    buffer.mark(lambda: 1 / 0)
    buffer.mark(lambda: fired.append("after"))
    assert buffer.pop() is not None and fired == ["after"]


def test_a_late_tick_skips_to_the_next_deadline_of_the_same_grid():
    clock = DeadlineClock(start=0.005, period=0.02, max_late=0.02)
    clock.tick(0.005)
    clock.tick(0.3123)  # stalled: the deadline was 0.025
    assert clock.reanchors == 1
    assert abs(clock.deadline - 0.325) < 1e-9  # still on 5 ms + n * 20 ms, and in the future
    clock.tick(0.325)
    assert abs(clock.deadline - 0.345) < 1e-9


def test_clock_phases_are_spread_over_the_period():
    from audiogw.worker.clock import aligned_start, clock_phase

    phases = sorted(clock_phase(slot) for slot in range(20))
    assert all(0.0 <= phase < 0.02 for phase in phases)
    gaps = [later - earlier for earlier, later in zip(phases, phases[1:])]
    assert min(gaps) > 0.0004 and max(gaps) < 0.0025  # evenly-ish: no two workers tick together
    start = aligned_start(100.0031, 0.02, 0.007)
    assert 100.0031 <= start < 100.0231 and abs((start - 0.007) / 0.02 - round((start - 0.007) / 0.02)) < 1e-6
    assert aligned_start(5.0, 0.02, None) == 5.0


def test_ticker_fills_one_slot_before_opening_the_next_and_legs_keep_their_slot():
    from audiogw.worker.ticker import LEGS_PER_SLOT, SLOTS, FrameTicker

    ticker = FrameTicker(period=0.02)
    legs = [object() for _ in range(LEGS_PER_SLOT * 2 + 7)]
    for leg in legs:
        ticker.add(leg)
    assert [len(group) for group in ticker._slots] == [LEGS_PER_SLOT, LEGS_PER_SLOT, 7] + [0] * (SLOTS - 3)
    assert len(ticker) == len(legs)
    ticker.discard(legs[0])
    ticker.add(legs[0])  # back into the first slot with room
    assert legs[0] in ticker._slots[0]
    assert ticker.next_send_time(legs[-1], now=5.0) == 5.0  # no clock yet: now
    ticker.clock = DeadlineClock(start=1000.0, period=0.02)
    ticker.clock.tick(1000.0)  # the tick at 1000.000 was sent; next base 1000.020
    late_leg = legs[-1]  # slot 2: its frames leave 10 ms into each period
    assert abs(ticker.next_send_time(late_leg, now=1000.003) - 1000.010) < 1e-9
    assert abs(ticker.next_send_time(late_leg, now=1000.012) - 1000.030) < 1e-9
    assert abs(ticker.next_send_time(legs[1], now=1000.003) - 1000.020) < 1e-9  # slot 0: the next base


def test_a_full_ticker_spreads_over_every_slot():
    from audiogw.worker.ticker import LEGS_PER_SLOT, SLOTS, FrameTicker

    ticker = FrameTicker()
    for _ in range(LEGS_PER_SLOT * SLOTS + SLOTS):
        ticker.add(object())
    sizes = [len(group) for group in ticker._slots]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == LEGS_PER_SLOT * SLOTS + SLOTS

"""The jitter buffer: no added delay in order, a bounded wait for gaps, FEC/PLC, no stalls."""

from __future__ import annotations

import pytest

from tidegate.media.jitter import JitterBuffer, Release, ReleaseKind

TS = 960


def push(jb: JitterBuffer, seq: int, now: float, ts: int | None = None) -> list[Release]:
    seq16 = seq % 65536
    stamp = (seq * TS if ts is None else ts) % (1 << 32)
    return jb.push(seq16, stamp, bytes([seq % 256]), now)


def test_in_order_packets_are_released_at_once() -> None:
    """A packet that continues the sequence goes out on arrival: no prefetch, no delay."""
    jb = JitterBuffer(target_ms=20)
    for i in range(100):
        out = push(jb, 1000 + i, i * 20.0)
        assert [(r.kind, r.seq) for r in out] == [(ReleaseKind.PACKET, 1000 + i)]
        assert out[0].held_ms == 0
    assert jb.deadline_ms is None
    assert jb.stats.delay_ms_max == 0 and jb.stats.lost == 0


def test_reordered_packet_within_target_is_not_lost() -> None:
    """A packet that arrives late but within the target fills its gap; nothing concealed."""
    jb = JitterBuffer(target_ms=20)
    push(jb, 1, 0.0)
    assert push(jb, 3, 40.0) == []
    assert jb.deadline_ms == 60.0
    out = push(jb, 2, 45.0)
    assert [r.seq for r in out] == [2, 3]
    assert all(r.kind is ReleaseKind.PACKET for r in out)
    assert jb.stats.recovered_late == 1 and jb.stats.lost == 0
    assert jb.deadline_ms is None


def test_lost_packet_is_concealed_after_the_target_with_fec() -> None:
    """A gap waits target_ms, then the lost packet is rebuilt from the next one's FEC."""
    jb = JitterBuffer(target_ms=20)
    push(jb, 10, 0.0)
    assert push(jb, 12, 40.0) == []
    assert jb.poll(59.0) == []
    out = jb.poll(60.0)
    assert [(r.kind, r.seq) for r in out] == [(ReleaseKind.FEC, 11), (ReleaseKind.PACKET, 12)]
    assert out[0].payload == bytes([12]) and out[0].duration_ts == TS
    assert out[0].timestamp == 11 * TS
    assert jb.stats.fec == 1 and jb.stats.lost == 1
    assert push(jb, 11, 70.0) == []  # too late now
    assert jb.stats.late == 1


def test_burst_loss_uses_plc_then_fec_and_never_stalls() -> None:
    """Three lost in a row: PLC, PLC, FEC; the wait is the target, however long the burst."""
    jb = JitterBuffer(target_ms=30)
    push(jb, 1, 0.0)
    push(jb, 5, 80.0)
    push(jb, 6, 100.0)
    out = jb.poll(110.0)
    kinds = [r.kind for r in out]
    assert kinds == [ReleaseKind.PLC, ReleaseKind.PLC, ReleaseKind.FEC] + [ReleaseKind.PACKET] * 2
    assert [r.seq for r in out] == [2, 3, 4, 5, 6]
    assert max(r.held_ms for r in out) == 30.0


def test_without_fec_every_loss_is_plc() -> None:
    """With FEC off, concealment is PLC only."""
    jb = JitterBuffer(target_ms=0, fec=False)
    push(jb, 1, 0.0)
    out = push(jb, 3, 40.0)  # target 0: concealed on arrival
    assert [r.kind for r in out] == [ReleaseKind.PLC, ReleaseKind.PACKET]


def test_sequence_and_timestamp_wrap() -> None:
    """Sequence numbers wrap at 65536 and timestamps at 2**32 without a hiccup."""
    jb = JitterBuffer()
    base_ts = (1 << 32) - 3 * TS
    seqs = []
    for i in range(6):
        out = jb.push((65533 + i) % 65536, (base_ts + i * TS) % (1 << 32), b"x", i * 20.0)
        seqs += [r.seq for r in out]
        assert all(r.kind is ReleaseKind.PACKET for r in out)
    assert seqs == list(range(65533, 65539))
    assert jb.stats.lost == 0 and jb.stats.late == 0


def test_big_jump_resynchronises_and_duplicates_are_dropped() -> None:
    """A jump past max_gap_packets restarts the sequence instead of inventing audio."""
    jb = JitterBuffer(target_ms=20, max_gap_packets=10)
    push(jb, 1, 0.0)
    assert push(jb, 1, 1.0) == []
    assert jb.stats.late == 1  # a duplicate of a released packet is simply late
    out = push(jb, 500, 20.0)
    assert [(r.kind, r.seq) for r in out] == [(ReleaseKind.PACKET, 500)]
    assert jb.stats.resyncs == 1
    push(jb, 502, 40.0)
    assert push(jb, 502, 41.0) == []
    assert jb.stats.duplicate == 1


def test_held_packets_are_bounded() -> None:
    """However the packets arrive, no more than max_gap_packets are held."""
    jb = JitterBuffer(target_ms=1000, max_gap_packets=8)
    push(jb, 0, 0.0)
    for i in range(2, 200):
        push(jb, i, float(i))
        assert jb.stats.held <= 8
    assert jb.stats.peak_held <= 8


def test_bad_settings_are_refused() -> None:
    """Negative targets and empty gaps are refused at construction."""
    with pytest.raises(ValueError, match="target_ms"):
        JitterBuffer(target_ms=-1)
    with pytest.raises(ValueError, match="max_gap_packets"):
        JitterBuffer(max_gap_packets=0)

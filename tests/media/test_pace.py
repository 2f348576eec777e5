"""Real-time pacing of uploaded audio: media time against the wall clock (time injected)."""

from __future__ import annotations

import pytest

from tidegate.media.pace import RealTimePace


def test_a_real_time_stream_is_never_refused() -> None:
    """Chunks sent as their audio plays stay within the window; each is due at its end."""
    pace = RealTimePace(max_ahead_s=1.0)
    for i in range(100):
        now = 10.0 + i * 0.02
        assert pace.check(0.02, now) == 0.0
        assert pace.commit(0.02, now) == pytest.approx(now + 0.02)
    assert pace.refused == 0 and pace.peak_ahead_s == pytest.approx(0.02)


def test_a_stream_4x_real_time_is_held_to_the_window() -> None:
    """At 4x real time the first chunks fill the window; then a chunk is refused with the
    seconds until it fits, and accepted audio never runs more than the window ahead."""
    pace = RealTimePace(max_ahead_s=3.0)
    accepted = refused = 0
    for i in range(40):  # 1 s chunks every 0.25 s
        now = i * 0.25
        over = pace.check(1.0, now)
        if over == 0.0:
            pace.commit(1.0, now)
            accepted += 1
            assert pace.ahead_s(now) <= 3.0
        else:
            refused += 1
            assert 0.0 < over <= 1.0
    assert refused > 0 and pace.refused == refused
    assert accepted <= 39 * 0.25 + 3.0  # media seconds accepted: wall time + the window


def test_idle_time_is_not_banked() -> None:
    """After a pause the stream gets only the window, not the time it stayed silent."""
    pace = RealTimePace(max_ahead_s=2.0)
    pace.commit(1.0, 0.0)
    now = 100.0  # 99 s of silence
    assert pace.check(2.0, now) == 0.0
    pace.commit(2.0, now)
    assert pace.check(0.5, now) == pytest.approx(0.5)


def test_zero_turns_pacing_off() -> None:
    """max_ahead_s 0 accepts anything; a negative window is a ValueError."""
    pace = RealTimePace(max_ahead_s=0.0)
    for _ in range(10):
        assert pace.check(60.0, 0.0) == 0.0
        pace.commit(60.0, 0.0)
    with pytest.raises(ValueError, match="cannot be negative"):
        RealTimePace(max_ahead_s=-1.0)

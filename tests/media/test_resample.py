"""The streaming resampler: exact lengths however the stream is cut, and a clean passband."""

from __future__ import annotations

import numpy as np
import pytest

from tidegate.media.resample import StreamResampler

PAIRS = [(48_000, 24_000), (48_000, 8_000), (24_000, 16_000), (8_000, 16_000), (44_100, 16_000)]


@pytest.mark.parametrize(("in_hz", "out_hz"), PAIRS)
def test_long_stream_length_is_exact_whatever_the_chunking(in_hz: int, out_hz: int) -> None:
    """Two minutes in random chunks give exactly ceil(n*out/in) samples, the same as in
    one-second chunks, and every intermediate count is the one ready_samples predicts."""
    rng = np.random.default_rng(in_hz + out_hz)
    n = in_hz * 120 + 7
    x = (rng.standard_normal(n) * 3000).astype(np.int16)
    whole = StreamResampler(in_hz, out_hz)
    seconds = [whole.process(x[i : i + in_hz]) for i in range(0, n, in_hz)]
    one = np.concatenate([*seconds, whole.flush()])
    r = StreamResampler(in_hz, out_hz)
    parts = []
    i = 0
    total = 0
    while i < n:
        step = int(rng.integers(0, in_hz // 4))  # 0 to 250 ms, empty chunks included
        chunk = r.process(x[i : i + step])
        i = min(n, i + step)
        total += len(chunk)
        assert total == r.ready_samples(i)
        parts.append(chunk)
    parts.append(r.flush())
    out = np.concatenate(parts)
    assert len(out) == -(-n * out_hz // in_hz) == r.total_samples(n)
    # The same samples (to 1 LSB: BLAS may sum a row in another order in a bigger block).
    assert np.abs(out.astype(np.int32) - one.astype(np.int32)).max() <= 1


@pytest.mark.parametrize(("in_hz", "out_hz"), PAIRS)
def test_a_tone_in_the_passband_survives(in_hz: int, out_hz: int) -> None:
    """A 440 Hz tone comes out as the same tone at the new rate (within 0.2 % of full scale)."""
    t = np.arange(in_hz) / in_hz
    x = (np.sin(2 * np.pi * 440 * t) * 10_000).astype(np.int16)
    r = StreamResampler(in_hz, out_hz)
    y = np.concatenate([r.process(x), r.flush()]).astype(np.float64)
    ref = np.sin(2 * np.pi * 440 * np.arange(len(y)) / out_hz) * 10_000
    assert np.abs(y[64:-64] - ref[64:-64]).max() < 0.002 * 32768


def test_downsampling_removes_what_the_new_rate_cannot_hold() -> None:
    """A 6 kHz tone (above 8 kHz's Nyquist) is attenuated by at least 30 dB at 48 -> 8 kHz."""
    t = np.arange(48_000) / 48_000
    x = (np.sin(2 * np.pi * 6_000 * t) * 10_000).astype(np.int16)
    r = StreamResampler(48_000, 8_000)
    y = np.concatenate([r.process(x), r.flush()]).astype(np.float64)
    assert np.sqrt(np.mean(y[64:-64] ** 2)) < 10_000 / np.sqrt(2) / 31.6


def test_a_ratio_too_fine_for_a_bank_computes_the_same_filter_on_the_fly() -> None:
    """191,999 -> 16,000 Hz would need a 16,000-phase bank: its taps are computed per output
    instead (no bank kept), and agree with a bank-built stream of the same ratio to 1e-9."""
    import tidegate.media.resample as rs

    rng = np.random.default_rng(7)
    x = rng.standard_normal(191_999 // 10).astype(np.float32) * 0.3
    odd = StreamResampler(191_999, 16_000, dtype=np.float32)
    assert odd._bank is None
    fly = np.concatenate([odd.process(x[i : i + 3_840]) for i in range(0, len(x), 3_840)])
    limit = rs.MAX_BANK_TAPS
    try:
        rs.MAX_BANK_TAPS = 1 << 40
        banked = StreamResampler(191_999, 16_000, dtype=np.float32)
        assert banked._bank is not None
        bank = banked.process(x)
    finally:
        rs.MAX_BANK_TAPS = limit
        rs._filter_bank.cache_clear()
    assert len(fly) == len(bank) == odd.ready_samples(len(x))
    assert np.abs(fly - bank).max() < 1e-6


def test_a_float_stream_keeps_full_scale_and_the_tone() -> None:
    """float32 in [-1, 1] -> float32: a 440 Hz tone at 24 -> 16 kHz within 1e-3, and a
    full-scale square wave (the low-pass rings past it) clipped to full scale."""
    t = np.arange(24_000) / 24_000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    r = StreamResampler(24_000, 16_000, dtype=np.float32)
    y = np.concatenate([r.process(tone[i : i + 480]) for i in range(0, 24_000, 480)] + [r.flush()])
    assert y.dtype == np.float32 and len(y) == 16_000
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)
    assert np.abs(y[64:-64] - ref[64:-64]).max() < 1e-3
    square = np.where(np.arange(4_800) // 60 % 2 == 0, 1.0, -1.0).astype(np.float32)
    s = StreamResampler(48_000, 16_000, dtype=np.float32)
    out = np.concatenate([s.process(square), s.flush()])
    assert np.abs(out).max() <= 1.0 and np.abs(out).max() > 0.9

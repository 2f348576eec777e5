"""Coarse speaker -> microphone delay estimation: cross-correlation of energy envelopes.

Both signals are reduced to log-energy envelopes of ``ENVELOPE_MS`` frames, high-passed (a
moving average subtracted, so that the slow level of each signal does not dominate) and
normalised; the lag in ``[min_delay_s, max_delay_s]`` where the microphone's envelope best
matches the reference's is the delay. An estimate is only given when the reference carried
sound in the window and the peak correlation reaches ``min_correlation`` (a window of
silence, or of the user talking alone, says nothing about the echo path). Pure numpy, no
state: :class:`~tidegate.engines.audio.echo.EchoCanceller` calls it every few hundred ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime import Array

ENVELOPE_MS = 4
#: The reference must exceed this RMS (float, full scale 1) for an estimate to be tried.
MIN_REFERENCE_RMS = 1e-3


@dataclass(frozen=True, slots=True)
class DelayEstimate:
    delay_samples: int
    correlation: float


def envelope(x: Array, frame: int) -> Array:
    """Log energy per ``frame`` samples, with its 100 ms moving average removed."""
    n = len(x) // frame
    e = np.log10(np.mean(np.square(x[: n * frame].reshape(n, frame)), axis=1) + 1e-8)
    k = max(1, 100 // ENVELOPE_MS)
    smooth = np.convolve(e, np.ones(k) / k, mode="same")
    return (e - smooth).astype(np.float32)


def estimate_delay(
    reference: Array,
    mic: Array,
    *,
    sample_rate_hz: int,
    min_delay_s: float,
    max_delay_s: float,
    min_correlation: float = 0.3,
) -> DelayEstimate | None:
    """The delay of ``reference``'s echo in ``mic``. ``reference`` covers the same span as
    ``mic`` plus ``max_delay_s`` before it: ``reference[i + max_lag]`` was played when
    ``mic[i]`` was captured (``max_lag`` = ``max_delay_s`` in samples)."""
    frame = sample_rate_hz * ENVELOPE_MS // 1000
    max_lag = round(max_delay_s * sample_rate_hz)
    if len(reference) != len(mic) + max_lag:
        raise ValueError("the reference must cover the microphone span plus max_delay_s")
    if float(np.sqrt(np.mean(np.square(reference[max_lag:])))) < MIN_REFERENCE_RMS:
        return None
    ref_env = envelope(reference, frame)
    mic_env = envelope(mic, frame)
    max_k = max_lag // frame
    min_k = round(min_delay_s * sample_rate_hz) // frame
    n = len(mic_env)
    m = mic_env - mic_env.mean()
    m_norm = float(np.linalg.norm(m))
    if m_norm == 0.0:
        return None
    # Every lag at once: row s of the windows is the reference envelope at lag max_k - s.
    windows = np.lib.stride_tricks.sliding_window_view(ref_env, n)[: max_k - min_k + 1]
    r = windows - windows.mean(axis=1, keepdims=True)
    denom = np.linalg.norm(r, axis=1) * m_norm
    dots = r @ m
    c = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)[::-1]  # by lag
    best = int(np.argmax(c))  # the shortest lag among equal peaks
    best_k, best_c = min_k + best, float(c[best])
    if best_c < min_correlation:
        return None
    return DelayEstimate(best_k * frame, best_c)

"""Whisper's log-mel features in numpy: 80 mel bands, 25 ms Hann window (n_fft 400), 10 ms
hop (160 samples) at 16 kHz, Slaney-scale filters with Slaney area normalisation (as
``librosa.filters.mel(sr=16000, n_fft=400, n_mels=80)`` computes them), log10 clamped to
8 decades below the clip's peak, scaled to roughly [-1, 1]: ``(log + 4) / 4``.

The STFT is centred with reflect padding and its last frame dropped, as Whisper's
``log_mel_spectrogram`` does, so ``n`` samples give ``n // 160`` frames.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # numpy only at run time: the Triton transcribe model copies this file
    from ..runtime import Array

SAMPLE_RATE_HZ = 16_000
N_FFT = 400
HOP_SAMPLES = 160
N_MELS = 80
FRAMES_PER_S = SAMPLE_RATE_HZ // HOP_SAMPLES  # 100 mel frames; the encoder halves it to 50


def _hz_to_mel(hz: Array) -> Array:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / f_sp
    log_part = min_log_hz / f_sp + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log_part, mel)


def _mel_to_hz(mel: Array) -> Array:
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(
        mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel
    )


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE_HZ) -> Array:
    """[n_mels, n_fft // 2 + 1] triangular filters, Slaney-normalised (librosa's defaults)."""
    fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_pts = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(sr / 2)), n_mels + 2)
    )
    fdiff = np.diff(mel_pts)
    ramps = mel_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / fdiff[:-1, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_pts[2 : n_mels + 2] - mel_pts[:n_mels]))[:, None]
    return weights.astype(np.float32)


@lru_cache(maxsize=1)
def _window() -> Array:
    n = np.arange(N_FFT)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float32)  # periodic Hann


def log_mel(audio: Array, length: int | None = None) -> Array:
    """[80, n // 160] float32 log-mel features of 16 kHz mono float audio followed by silence
    to ``length`` samples (``n``: ``length``, or the audio's own length when None; a longer
    audio is cut to it). The frames that see only that silence are not computed: their power
    is zero, so they are the floor (8 decades under the peak) that computing them gives, and
    a short utterance in a 10 s window costs its own frames only."""
    x = np.asarray(audio, dtype=np.float32)
    n = len(x) if length is None else int(length)
    x = x[:n]
    pad = N_FFT // 2
    if n - len(x) > N_FFT:
        # Frame f reads samples [160 f - 200, 160 f + 200): those before the audio's end,
        # computed on the audio and 400 samples of silence, read what they read in the
        # whole window; every later frame reads silence only (and so does the reflection at
        # the window's end, more than 200 samples past the audio).
        total = n // HOP_SAMPLES
        live = min(total, (len(x) + pad + HOP_SAMPLES - 1) // HOP_SAMPLES)
        power = _power(np.pad(x, (0, N_FFT)))[:live]
    else:
        x = np.pad(x, (0, n - len(x)))
        if len(x) <= pad:
            x = np.pad(x, (0, pad + 1 - len(x)))
        power = _power(x)[:-1]  # drop the last frame, as Whisper does
        total = live = len(power)
    mel = mel_filters() @ power.T.astype(np.float32)
    logs = np.full((N_MELS, total), -10.0, dtype=np.float32)  # log10 of the 1e-10 floor
    logs[:, :live] = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0).astype(np.float32)


def _power(x: Array) -> Array:
    """[frames, 201] power spectrum of ``x``: centred STFT, reflect padding, Hann window."""
    pad = N_FFT // 2
    x = np.pad(x, (pad, pad), mode="reflect")
    n_frames = 1 + (len(x) - N_FFT) // HOP_SAMPLES
    frames = np.lib.stride_tricks.as_strided(
        x, shape=(n_frames, N_FFT), strides=(x.strides[0] * HOP_SAMPLES, x.strides[0])
    )
    # float64 FFT: numpy 2 would keep float32 and numpy 1 upcasts; the same features either
    # way (the Triton transcribe model may run under another numpy).
    spec = np.fft.rfft((frames * _window()).astype(np.float64), axis=1)
    return spec.real**2 + spec.imag**2

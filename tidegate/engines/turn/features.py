"""Smart Turn v3's input: Whisper-style log-mel features of the last 8 s of 16 kHz audio.

What the model was trained on (read from pipecat's reference preprocessing): the clip is cut
to its last 8 s, or zero-padded at the *front* to 8 s (so speech always ends at the right
edge); the whole 8 s window is normalised to zero mean and unit variance; then Whisper's log
mel spectrogram (80 bands, 25 ms Hann window, 10 ms hop, log10 clamped 8 decades below the
peak, ``(log + 4) / 4``) gives [80, 800]. The spectrogram is the ASR engine's own
(:func:`tidegate.engines.asr.features.log_mel`): the same Whisper front end, checked equal.

Cost: the window is mostly padding when a turn is short (a 2 s pause-to-pause turn is 75 %
zeros), and after normalisation the padding is one constant value, so every frame that lies
wholly inside it has the same spectrum. :func:`turn_features` computes that spectrum once
(the window's own, scaled) and runs the FFT only over the frames that touch real audio: the
same features (to float rounding) at a cost proportional to the audio, not to 8 s.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..asr.features import HOP_SAMPLES, N_FFT, N_MELS, SAMPLE_RATE_HZ, log_mel, mel_filters
from ..runtime import Array

WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE_HZ  # 128,000
FEATURE_FRAMES = WINDOW_SAMPLES // HOP_SAMPLES  # 800
FEATURE_SHAPE = (N_MELS, FEATURE_FRAMES)
NORM_VARIANCE_EPS = 1e-7
_HALF = N_FFT // 2  # the STFT is centred: frame k covers samples [160k - 200, 160k + 200)


def last_window(audio: Array) -> Array:
    """The last 8 s of ``audio`` (float32), zero-padded at the front when shorter."""
    x = np.asarray(audio, dtype=np.float32)[-WINDOW_SAMPLES:]
    if len(x) < WINDOW_SAMPLES:
        x = np.concatenate([np.zeros(WINDOW_SAMPLES - len(x), np.float32), x])
    return x


def reference_features(audio: Array) -> Array:
    """[80, 800] features computed the plain way, over the whole padded window (the
    reference :func:`turn_features` is checked against)."""
    x = last_window(audio)
    x = (x - x.mean()) / np.sqrt(x.var() + NORM_VARIANCE_EPS)
    return log_mel(x)


@lru_cache(maxsize=1)
def _window() -> Array:
    """The periodic Hann window Whisper's STFT uses (float32)."""
    n = np.arange(N_FFT)
    return (0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)).astype(np.float32)


@lru_cache(maxsize=1)
def _window_power() -> Array:
    """|FFT|^2 of the window: the spectrum of a constant frame of value 1."""
    spec = np.fft.rfft(_window().astype(np.float64))
    return spec.real**2 + spec.imag**2


def _pad_frames(pad_samples: int) -> int:
    """How many frames lie wholly inside ``pad_samples`` of front padding."""
    if pad_samples < N_FFT:
        return 0  # the first frames reflect across the edge: leave them to the plain path
    return min(FEATURE_FRAMES, (pad_samples - _HALF) // HOP_SAMPLES + 1)


def turn_features(audio: Array) -> Array:
    """[80, 800] float32 features of the last 8 s of 16 kHz mono float audio."""
    real = np.asarray(audio, dtype=np.float32)[-WINDOW_SAMPLES:]
    k0 = _pad_frames(WINDOW_SAMPLES - len(real))
    if k0 == 0 or len(real) <= _HALF:  # (the end reflects over 200 samples of audio)
        return reference_features(real)
    x = last_window(real)  # normalised exactly as the reference does (cheap: no FFT)
    x = (x - x.mean()) / np.sqrt(x.var() + NORM_VARIANCE_EPS)
    c = x[0]  # the padding, normalised
    # The samples the remaining frames read: from frame k0's start, reflected at the end.
    start = HOP_SAMPLES * k0 - _HALF  # >= 0: inside the padding
    seg = np.concatenate([x[start:], x[-_HALF - 1 : -1][::-1]])
    n_frames = FEATURE_FRAMES - k0
    frames = np.lib.stride_tricks.as_strided(
        seg, shape=(n_frames, N_FFT), strides=(seg.strides[0] * HOP_SAMPLES, seg.strides[0])
    )
    spec = np.fft.rfft((frames * _window()).astype(np.float64), axis=1)
    power = spec.real**2 + spec.imag**2
    filters = mel_filters()
    mel = filters @ power.T.astype(np.float32)
    flat = filters @ (float(c) ** 2 * _window_power()).astype(np.float32)
    logs = np.empty(FEATURE_SHAPE, np.float32)
    logs[:, :k0] = np.log10(np.maximum(flat, 1e-10))[:, None]
    logs[:, k0:] = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max() - 8.0)
    return ((logs + 4.0) / 4.0).astype(np.float32)

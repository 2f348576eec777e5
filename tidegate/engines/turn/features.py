"""Smart Turn v3's input: Whisper-style log-mel features of the last 8 s of 16 kHz audio.

What the model was trained on (read from pipecat's reference preprocessing): the clip is cut
to its last 8 s, or zero-padded at the *front* to 8 s (so speech always ends at the right
edge); the whole 8 s window is normalised to zero mean and unit variance; then Whisper's log
mel spectrogram (80 bands, 25 ms Hann window, 10 ms hop, log10 clamped 8 decades below the
peak, ``(log + 4) / 4``) gives [80, 800]. The spectrogram is the ASR engine's own
(:func:`tidegate.engines.asr.features.log_mel`): the same Whisper front end, checked equal.
"""

from __future__ import annotations

import numpy as np

from ..asr.features import HOP_SAMPLES, N_MELS, SAMPLE_RATE_HZ, log_mel
from ..runtime import Array

WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE_HZ  # 128,000
FEATURE_FRAMES = WINDOW_SAMPLES // HOP_SAMPLES  # 800
FEATURE_SHAPE = (N_MELS, FEATURE_FRAMES)
NORM_VARIANCE_EPS = 1e-7


def last_window(audio: Array) -> Array:
    """The last 8 s of ``audio`` (float32), zero-padded at the front when shorter."""
    x = np.asarray(audio, dtype=np.float32)[-WINDOW_SAMPLES:]
    if len(x) < WINDOW_SAMPLES:
        x = np.concatenate([np.zeros(WINDOW_SAMPLES - len(x), np.float32), x])
    return x


def turn_features(audio: Array) -> Array:
    """[80, 800] float32 features of the last 8 s of 16 kHz mono float audio."""
    x = last_window(audio)
    x = (x - x.mean()) / np.sqrt(x.var() + NORM_VARIANCE_EPS)
    return log_mel(x)

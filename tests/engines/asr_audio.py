"""Speech for the ASR tests: the recorded clips (resampled to 16 kHz with a windowed-sinc
low-pass), espeak-ng sentences, and word error rate."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from tidegate.bench.wer import wer as wer
from tidegate.bench.wer import words as words

BECKETT = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."
# The first 20 s of two_cities.wav (Dickens, A Tale of Two Cities), to a word boundary.
TWO_CITIES_20S = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it "
    "was the season of Light, it was the season of Darkness, it was the spring of hope, it "
    "was the winter of"
)
ESPEAK_SENTENCES = (
    "The weather today is sunny and warm.",
    "Please open the window in the kitchen.",
)


def read_wav(path: Path, seconds: float | None = None) -> np.ndarray:
    with wave.open(str(path)) as w:
        rate, channels = w.getframerate(), w.getnchannels()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    x = x.reshape(-1, channels).mean(axis=1)
    if rate != 16_000:
        assert rate % 16_000 == 0, rate
        n = np.arange(-48, 49)
        cut = 0.45 * 16_000 / rate
        h = 2 * cut * np.sinc(2 * cut * n) * np.hamming(len(n))
        x = np.convolve(x, h / h.sum(), mode="same")[:: rate // 16_000]
    x = x.astype(np.float32)
    return x if seconds is None else x[: int(seconds * 16_000)]


def espeak(text: str, tmp: Path) -> np.ndarray:
    out = tmp / "espeak.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(out), text], check=True)
    with wave.open(str(out)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    t: npt.NDArray[np.float64] = np.arange(round(len(x) * 16_000 / rate)) * rate / 16_000
    return np.interp(t, np.arange(len(x)), x).astype(np.float32)

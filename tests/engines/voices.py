"""Speech for the turn and echo tests: the bench's audio sets spoken by the real Piper voice
(tidegate's TTS engine), resampled to 16 kHz by sox."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from tidegate.bench import audio_sets
from tidegate.engines import models
from tidegate.engines.engine import Ok
from tidegate.engines.tts import PiperVoice

PIPER_RATE_HZ = 48_000  # what PiperVoice gives back


@contextmanager
def piper_voice(data_dir: Path) -> Iterator[Callable[[str], np.ndarray]]:
    """A cached, deterministic text -> 16 kHz float32 voice on the prepared piper-joe model."""
    engine = PiperVoice(models.model_dir(data_dir, "piper-joe") / "en_US-joe-medium.onnx")
    # No sampling noise (noise_scale, noise_w = 0): the same text gives the same audio.
    engine.scales = np.array([0.0, engine.scales[1], 0.0], np.float32)
    engine.load()

    @lru_cache(maxsize=64)
    def speak(text: str) -> np.ndarray:
        (out,) = engine.run_batch([text], [None])
        assert isinstance(out, Ok), out
        return audio_sets.resample(out.value, PIPER_RATE_HZ)

    try:
        yield speak
    finally:
        engine.close()

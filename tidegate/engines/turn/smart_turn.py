"""Semantic end of turn: Smart Turn v3.2 (ONNX) scores whether a user has finished speaking.

A request is one session's recent audio (16 kHz mono, float32 in [-1, 1] or int16, any
length up to ``max_audio_s``); the engine keeps its last 8 s, computes the log-mel features
(:mod:`.features`) in ``prepare`` — which the scheduler runs on its worker thread, never on an
event loop — and scores every request of a batch in one model call. The result is the
probability that the turn is complete, and whether it reaches ``threshold``.

The engine is stateless: a caller sends the audio of the turn so far at each pause the VAD
reports, and the scheduler batches the pauses of all sessions together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..asr.features import SAMPLE_RATE_HZ
from ..engine import Engine, Ok, Outcome
from ..errors import EngineError, InferenceError, RequestError
from ..runtime import Array, ModelRunner, RuntimeOptions, open_model
from ..signature import Signature, TensorSpec
from .features import FEATURE_FRAMES, WINDOW_S, turn_features

N_MELS = 80

SMART_TURN_SIGNATURE = Signature(
    inputs=(TensorSpec("input_features", "float32", ("batch", N_MELS, FEATURE_FRAMES)),),
    outputs=(TensorSpec("logits", "float32", ("batch", 1)),),
)

#: The shortest request scored: less than a VAD frame carries no speech to judge.
MIN_AUDIO_SAMPLES = 512


@dataclass(frozen=True, slots=True)
class TurnResult:
    """The answer for one request: the probability that the turn is complete, whether it
    reaches the engine's threshold, and how many seconds of audio were scored (at most 8)."""

    probability: float
    complete: bool
    scored_s: float


@dataclass(frozen=True, slots=True)
class PreparedTurn:
    """One request, ready for the model: its features and the seconds they cover."""

    features: Array
    scored_s: float


class SmartTurn(Engine[Array, TurnResult, PreparedTurn]):
    """Smart Turn v3.2 over ONNX Runtime, batched across sessions.

    ``threshold`` decides ``complete``; ``max_audio_s`` bounds what one request may carry
    (only the last 8 s are scored, so a caller never needs to send more; a longer request is
    refused rather than copied)."""

    name = "turn"
    stateful = False

    def __init__(
        self,
        path: Path,
        *,
        runtime: RuntimeOptions | None = None,
        threshold: float = 0.5,
        max_audio_s: float = 60.0,
    ) -> None:
        super().__init__()
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if max_audio_s < WINDOW_S:
            raise ValueError(f"max_audio_s must be at least {WINDOW_S}, got {max_audio_s}")
        self.path = path
        self.runtime_options = runtime or RuntimeOptions()
        self.threshold = threshold
        self.max_audio_s = max_audio_s
        self._model: ModelRunner | None = None

    @property
    def signature(self) -> Signature:
        return Signature(
            inputs=(TensorSpec("audio", "float32", ("batch", "samples")),),
            outputs=(TensorSpec("probability", "float32", ("batch",)),),
            doc="a session's recent 16 kHz mono audio in [-1, 1]; the last 8 s are scored",
        )

    def _load(self) -> None:
        self._model = open_model(self.path, self.runtime_options)
        SMART_TURN_SIGNATURE.check_model(self._model.signature, model=self.path.name)

    @property
    def provider(self) -> str:
        return self._model.provider if self._model is not None else "unloaded"

    def example_request(self) -> Array:
        t = np.arange(SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ
        return (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)

    def prepare(self, request: Array) -> PreparedTurn:
        audio = np.asarray(request)
        if audio.dtype == np.int16:
            audio = audio.astype(np.float32) / 32768.0
        elif audio.dtype != np.float32:
            raise RequestError(f"turn: audio dtype {audio.dtype}, expected float32 or int16")
        if audio.ndim != 1:
            raise RequestError(f"turn: audio of shape {list(audio.shape)}, expected [samples]")
        max_samples = int(self.max_audio_s * SAMPLE_RATE_HZ)
        if not MIN_AUDIO_SAMPLES <= len(audio) <= max_samples:
            raise RequestError(
                f"turn: {len(audio)} samples, expected {MIN_AUDIO_SAMPLES}..{max_samples} "
                f"(16 kHz; only the last {WINDOW_S} s are scored)"
            )
        tail = audio[-WINDOW_S * SAMPLE_RATE_HZ :]
        if not np.isfinite(tail).all():
            raise RequestError("turn: audio contains NaN or infinity")
        return PreparedTurn(turn_features(tail), len(tail) / SAMPLE_RATE_HZ)

    def infer(
        self, items: Sequence[PreparedTurn], states: Sequence[Any]
    ) -> list[Outcome[TurnResult]]:
        if self._model is None:
            raise EngineError("turn: not loaded")
        x = np.stack([item.features for item in items])
        out = self._model.run({"input_features": x})["logits"]
        if out.shape != (len(items), 1):
            raise InferenceError(f"turn: output of shape {list(out.shape)}")
        results: list[Outcome[TurnResult]] = []
        for item, p in zip(items, out[:, 0].tolist(), strict=True):
            results.append(Ok(TurnResult(p, p >= self.threshold, item.scored_s)))
        return results

    def _close(self) -> None:
        if self._model is not None:
            self._model.close()
            self._model = None

"""Piper (VITS) speech synthesis: text -> phoneme ids -> 22,050 Hz audio -> 48 kHz int16.

A request is one chunk of text (a sentence or a clause); the outcome is its audio as int16
mono samples at 48 kHz, ready for the WebRTC track. ``prepare`` phonemizes (in the
long-lived espeak-ng process) and maps phonemes to the voice's ids; ``infer`` runs each
request on its own, because the model's batched output carries no per-item length (a padded
item's audio could not be cut back to its own end).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine, Ok, Outcome
from ..errors import ModelError, RequestError
from ..runtime import Array, ModelRunner, RuntimeOptions, open_model
from ..signature import Signature, TensorSpec
from .phonemizer import Phonemizer

OUTPUT_RATE_HZ = 48_000
MAX_TEXT_CHARS = 1000


def resample(audio: Array, rate_hz: int, out_rate_hz: int = OUTPUT_RATE_HZ) -> Array:
    """float audio in [-1, 1] at ``rate_hz`` -> int16 at ``out_rate_hz`` (libswresample)."""
    import av

    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = rate_hz
    resampler = av.AudioResampler(format="s16", layout="mono", rate=out_rate_hz)
    parts = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    parts += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)


class PiperVoice(Engine[str, Array, Array]):
    """One Piper voice; requests are text, results int16 audio at 48 kHz."""

    name = "tts"

    def __init__(
        self,
        model_path: Path,
        *,
        runtime: RuntimeOptions | None = None,
        length_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.model_path = model_path
        self.runtime = runtime or RuntimeOptions(providers=("cpu",))
        config_path = model_path.with_name(model_path.name + ".json")
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read the voice config {config_path}: {e}") from None
        self.sample_rate_hz = int(config["audio"]["sample_rate"])
        self.id_map: dict[str, list[int]] = config["phoneme_id_map"]
        inference = config.get("inference", {})
        self.scales = np.array(
            [
                inference.get("noise_scale", 0.667),
                length_scale if length_scale is not None else inference.get("length_scale", 1.0),
                inference.get("noise_w", 0.8),
            ],
            dtype=np.float32,
        )
        self.phonemizer = Phonemizer(config.get("espeak", {}).get("voice", "en-us"))
        self._model: ModelRunner | None = None

    @property
    def signature(self) -> Signature:
        return Signature(
            (TensorSpec("input", "int64", ("batch", "phonemes")),),
            (TensorSpec("audio", "int16", ("batch", "samples")),),
        )

    def _load(self) -> None:
        self.phonemizer.start()
        self._model = open_model(self.model_path, self.runtime)

    @property
    def provider(self) -> str:
        return self._model.provider if self._model is not None else "?"

    def _close(self) -> None:
        self.phonemizer.close()
        if self._model is not None:
            self._model.close()
            self._model = None

    def example_request(self) -> str:
        return "Hello."

    def phoneme_ids(self, phonemes: str) -> list[int]:
        """Piper's id sequence: start, each phoneme followed by a pad, end."""
        m = self.id_map
        ids = [*m["^"], *m["_"]]
        for ch in unicodedata.normalize("NFD", phonemes):
            if ch in m:
                ids += [*m[ch], *m["_"]]
        ids += m["$"]
        return ids

    def prepare(self, request: str) -> Array:
        if not isinstance(request, str):
            raise RequestError("tts: a request is a string of text")
        text = request.strip()
        if not text:
            raise RequestError("tts: the text is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise RequestError(f"tts: at most {MAX_TEXT_CHARS} characters per request")
        ids = self.phoneme_ids(self.phonemizer.phonemize(text))
        if len(ids) <= 3:
            raise RequestError("tts: the text has nothing to say")
        return np.array(ids, dtype=np.int64)

    def infer(self, items: Sequence[Array], states: Sequence[Any]) -> list[Outcome[Array]]:
        if self._model is None:
            raise ModelError("tts: not loaded")
        out: list[Outcome[Array]] = []
        for ids in items:
            result = self._model.run(
                {
                    "input": ids.reshape(1, -1),
                    "input_lengths": np.array([ids.size], dtype=np.int64),
                    "scales": self.scales,
                }
            )
            audio = next(iter(result.values())).reshape(-1)
            out.append(Ok(resample(audio, self.sample_rate_hz)))
        return out

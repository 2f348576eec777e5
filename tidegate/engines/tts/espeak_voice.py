"""espeak-ng as a voice: the last resort for a language no Piper voice ships for offline
(:mod:`.voices`). The same requests and results as :class:`.piper.PiperVoice` (text in,
int16 mono at 48 kHz out), so the reply lane drives either the same way.

Each request runs ``espeak-ng -v VOICE --stdout`` once (on the engine's worker thread, never
the event loop), bounded by ``timeout_s``; its WAV (22,050 Hz) is resampled like Piper's.
Formant synthesis: robotic, but intelligible, and ~20 ms per sentence of CPU.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..engine import Engine, Failed, Ok, Outcome
from ..errors import InferenceError, MissingPackageError, RequestError
from ..runtime import Array
from ..signature import Signature, TensorSpec
from .piper import MAX_TEXT_CHARS, resample


class EspeakVoice(Engine[str, Array, str]):
    """One espeak-ng voice (``espeak-ng --voices`` names them: ``de``, ``es``, ``fr-fr``)."""

    name = "tts"

    def __init__(self, voice: str, *, speed_wpm: int = 160, timeout_s: float = 10.0) -> None:
        super().__init__()
        self.voice = voice
        self.speed_wpm = speed_wpm
        self.timeout_s = timeout_s
        self._binary: str | None = None

    @property
    def signature(self) -> Signature:
        return Signature(
            (TensorSpec("text", "str", ("batch",)),),
            (TensorSpec("audio", "int16", ("batch", "samples")),),
        )

    @property
    def provider(self) -> str:
        return "espeak-ng"

    def _load(self) -> None:
        self._binary = shutil.which("espeak-ng")
        if self._binary is None:
            raise MissingPackageError("espeak-ng", "apt-get install espeak-ng")
        probe = subprocess.run(
            [self._binary, "-v", self.voice, "--stdout", "a"],
            capture_output=True,
            timeout=self.timeout_s,
            check=False,
        )
        if probe.returncode != 0 or len(probe.stdout) < 100:
            raise MissingPackageError(
                "espeak-ng", f"espeak-ng has no voice {self.voice!r} (espeak-ng --voices)"
            )

    def _close(self) -> None:
        self._binary = None

    def example_request(self) -> str:
        return "1"

    def prepare(self, request: str) -> str:
        if not isinstance(request, str):
            raise RequestError("tts: a request is a string of text")
        text = " ".join(request.split())
        if not text:
            raise RequestError("tts: the text is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise RequestError(f"tts: at most {MAX_TEXT_CHARS} characters per request")
        return text

    def infer(self, items: Sequence[str], states: Sequence[Any]) -> list[Outcome[Array]]:
        out: list[Outcome[Array]] = []
        for text in items:
            try:
                out.append(Ok(self._speak(text)))
            except (OSError, subprocess.SubprocessError, wave.Error, EOFError) as e:
                out.append(Failed(InferenceError(f"tts: espeak-ng failed: {e}")))
        return out

    def _speak(self, text: str) -> Array:
        assert self._binary is not None
        # The text goes on stdin (never parsed as an option), one utterance.
        done = subprocess.run(
            [self._binary, "-v", self.voice, "-s", str(self.speed_wpm), "--stdout", "--stdin"],
            input=text.encode("utf-8"),
            capture_output=True,
            timeout=self.timeout_s,
            check=True,
        )
        with wave.open(io.BytesIO(done.stdout)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        return resample(pcm.astype(np.float32) / 32768, rate)

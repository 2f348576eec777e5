"""What an ASR engine is asked and what it answers, shared by both implementations
(:mod:`.whisper_onnx` and :mod:`.faster_whisper`), and the checks that tell speech from
hallucination (Whisper's own: no-speech probability, compression ratio, mean log-prob)."""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, field

import numpy as np

from tidegate.protocol.errors import ErrorCode

from ..errors import EngineError, RequestError
from ..runtime import Array
from .features import SAMPLE_RATE_HZ

MAX_AUDIO_S = 30.0  # Whisper's window


@dataclass(frozen=True, slots=True)
class AsrRequest:
    """Transcribe ``audio`` (16 kHz mono float32, at most 30 s). ``prefix`` is text already
    committed for this audio: the hypothesis is forced to begin with its tokens. ``cancel``,
    when given and set (from any thread), withdraws the request: an engine that sees it set
    stops working on it at its next step (before the encoder, or between decoder steps) and
    answers :class:`AsrCancelledError`, so the work queued behind it starts sooner.
    ``language`` is the language to transcribe in: an ISO 639-1 code the model knows
    (``de``), ``auto`` to detect it from the audio (Whisper's language token), or None for
    the engine's configured default. An English-only model takes ``en`` or ``auto`` only.
    ``prompt`` is the tokens of the text heard before this audio (the session's previous
    finals): Whisper's previous-text context, which keeps a short phrase cut out by the VAD
    from being decoded with no context (docs/asr.md); it is not part of the hypothesis.
    ``language_audio``: see the field."""

    audio: Array
    prefix: tuple[int, ...] = ()
    cancel: threading.Event | None = field(default=None, compare=False)
    language: str | None = None
    prompt: tuple[int, ...] = ()
    #: under ``auto``: the audio the language is detected on, when not ``audio`` itself (the
    #: turn so far, of which ``audio`` is the end; at most 30 s). The local runtimes only.
    language_audio: Array | None = field(default=None, compare=False)
    #: a segment's final (not a partial): decoded as the engine decodes finals (a beam
    #: search of ``asr_final_beam_size``; docs/asr.md)
    final: bool = False

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


class AsrCancelledError(EngineError):
    """The caller withdrew the request (its ``cancel`` event was set) before it finished."""

    code = ErrorCode.TIMEOUT


@dataclass(frozen=True, slots=True)
class AsrResult:
    """The hypothesis (greedy, or a final's beam search): ``tokens`` (prefix included),
    ``text`` and the evidence for (or against) speech. ``avg_logprob`` is over the
    generated (not forced) tokens. ``language`` is the code it was transcribed in (detected
    or asked for; ``en`` for an English-only model) and ``language_probability`` the
    model's probability of that language given the audio (softmax over the language tokens
    after ``<|startoftranscript|>``; 1.0 for an English-only model, which cannot tell)."""

    tokens: tuple[int, ...]
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    audio_ctx: int = 0  # encoder frames the audio ran on (20 ms each)
    generated: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    language: str = "en"
    language_probability: float = 1.0


@dataclass(frozen=True, slots=True)
class QualityGate:
    """Whisper's fallback thresholds, used here to drop a hypothesis as not speech."""

    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4

    def is_speech(self, r: AsrResult) -> bool:
        if not r.text.strip():
            return False
        if r.compression_ratio > self.compression_ratio_threshold:
            return False  # a repetition loop
        if r.no_speech_prob > self.no_speech_threshold and r.avg_logprob < self.logprob_threshold:
            return False  # Whisper's silence rule
        return r.generated == 0 or r.avg_logprob >= self.logprob_threshold * 1.5


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def check_audio(audio: object, name: str) -> Array:
    a = np.asarray(audio)
    if a.dtype == np.int16:
        a = a.astype(np.float32) / 32768.0
    if a.dtype != np.float32 or a.ndim != 1:
        raise RequestError(f"{name}: audio must be 1-D float32 (or int16) at 16 kHz")
    if len(a) > MAX_AUDIO_S * SAMPLE_RATE_HZ:
        raise RequestError(f"{name}: {len(a) / SAMPLE_RATE_HZ:.1f} s of audio; at most 30 s")
    if not np.isfinite(a).all():
        raise RequestError(f"{name}: audio contains NaN or infinity")
    return a

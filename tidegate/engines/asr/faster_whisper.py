"""The same Whisper weights (tiny.en, base) through faster-whisper (CTranslate2): the second ASR
implementation, with the same requests and results as :class:`.whisper_onnx.WhisperOnnx`,
run by the same conformance suite. It loads the package's folder directly (no hub call) and
always pays for Whisper's full 30 s window; it decodes each request of a batch in turn."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine, Failed, Ok, Outcome
from ..errors import EngineError, MissingPackageError, RequestError
from ..signature import Signature, TensorSpec
from .features import SAMPLE_RATE_HZ
from .greedy import MAX_PROMPT
from .request import AsrCancelledError, AsrRequest, AsrResult, check_audio, compression_ratio
from .tokenizer import AUTO, WhisperTokenizer


class FasterWhisperAsr(Engine[AsrRequest, AsrResult, AsrRequest]):
    """faster-whisper without timestamps, ``compute_type`` int8 or float32: greedy, and a
    final (``AsrRequest.final``) with a beam search of ``final_beam_size``."""

    name = "asr"

    def __init__(
        self,
        folder: Path,
        *,
        compute_type: str = "int8",
        threads: int = 1,
        language: str = "auto",
        final_beam_size: int = 1,
    ) -> None:
        super().__init__()
        self.language = language
        self.final_beam_size = final_beam_size
        self.folder = folder
        self.compute_type = compute_type
        self.threads = threads
        self._model: Any = None
        self.tokenizer: WhisperTokenizer | None = None

    @property
    def signature(self) -> Signature:
        return Signature(
            inputs=(TensorSpec("audio", "float32", ("batch", "samples")),),
            outputs=(TensorSpec("tokens", "int64", ("batch", "tokens")),),
            doc="16 kHz mono float32 speech, up to 30 s, and an optional forced token prefix",
        )

    @property
    def provider(self) -> str:
        return "ctranslate2-cpu"

    def _load(self) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise MissingPackageError("faster-whisper", "pip install faster-whisper") from None
        self._model = WhisperModel(
            str(self.folder),
            device="cpu",
            compute_type=self.compute_type,
            cpu_threads=self.threads,
            local_files_only=True,
        )
        self.tokenizer = WhisperTokenizer(self.folder / "tokenizer.json")

    def example_request(self) -> AsrRequest:
        return AsrRequest(np.zeros(SAMPLE_RATE_HZ, dtype=np.float32))

    def prepare(self, request: AsrRequest) -> AsrRequest:
        if not isinstance(request, AsrRequest):
            raise RequestError("asr: a request is an AsrRequest (audio and prefix)")
        if self.tokenizer is None:
            raise EngineError("asr: not loaded")
        language = (request.language or self.language).strip().lower()
        try:
            self.tokenizer.language_token(language)
        except ValueError as e:
            raise RequestError(f"asr: {e}") from None
        return AsrRequest(
            check_audio(request.audio, "asr"),
            tuple(request.prefix),
            request.cancel,
            language,
            tuple(int(t) for t in request.prompt[-MAX_PROMPT:]),
            final=request.final,
        )

    def infer(self, items: Sequence[AsrRequest], states: Sequence[Any]) -> list[Outcome[AsrResult]]:
        if self._model is None or self.tokenizer is None:
            raise EngineError("asr: not loaded")
        out: list[Outcome[AsrResult]] = []
        for it in items:
            if it.cancelled:  # checked between requests (CTranslate2 runs each to the end)
                out.append(Failed(AsrCancelledError("asr: cancelled")))
                continue
            prefix = self.tokenizer.decode(it.prefix) if it.prefix else None
            asked = it.language or AUTO
            multilingual = self.tokenizer.multilingual
            segments, info = self._model.transcribe(
                it.audio,
                language=None
                if multilingual and asked == AUTO
                else ("en" if not multilingual else asked),
                beam_size=self.final_beam_size if it.final else 1,
                temperature=0.0,
                without_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
                prefix=prefix,
                initial_prompt=list(it.prompt) if it.prompt else None,
            )
            segs = list(segments)
            tokens = tuple(t for s in segs for t in s.tokens if t < self.tokenizer.special.eot)
            text = " ".join(s.text.strip() for s in segs).strip()
            n = max(len(segs), 1)
            out.append(
                Ok(
                    AsrResult(
                        tokens=tokens,
                        text=text,
                        avg_logprob=sum(s.avg_logprob for s in segs) / n,
                        no_speech_prob=max((s.no_speech_prob for s in segs), default=1.0),
                        compression_ratio=compression_ratio(text),
                        audio_ctx=1500,
                        generated=len(tokens),
                        language=info.language if multilingual else "en",
                        language_probability=(
                            float(info.language_probability) if multilingual else 1.0
                        ),
                    )
                )
            )
        return out

    def _close(self) -> None:
        self._model = None

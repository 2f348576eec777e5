"""Whisper on ONNX Runtime: the converted encoder and decoder (built by
:mod:`tidegate.tools.convert_whisper`), greedy
decoding with a KV cache, batched across sessions (:mod:`.greedy`: the shortened audio
context, the decoding loop and its stopping rules).

On the ``triton`` runtime the whole decode runs on the server: the model ``FOLDER.transcribe``
(a python-backend model that runs :func:`.greedy.transcribe`, written by ``tidegate models
export-triton``) answers a batch in one call, so the KV cache and the cross-attention tensors
never cross the network (docs/triton.md). Under ``triton_policy = fallback`` the same decode
runs locally while Triton is down.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine, Failed, Ok, Outcome
from ..errors import EngineError, InferenceError, RequestError
from ..runtime import Array, ModelRunner, RuntimeOptions, open_model
from ..signature import Signature, TensorSpec
from .features import SAMPLE_RATE_HZ
from .greedy import (
    MAX_PREFIX,
    MAX_PROMPT,
    MAX_TEXT_CTX,
    Decoded,
    DecodeOptions,
    Resident,
    Transcriber,
    Vocabulary,
    audio_context,
    detect_languages,
    pack_requests,
    repeated_tail,
    transcribe_by_context,
    transcribe_signature,
    unpack_results,
)
from .request import (
    AsrCancelledError,
    AsrRequest,
    AsrResult,
    check_audio,
    compression_ratio,
)
from .tokenizer import AUTO, WhisperTokenizer

__all__ = ["MAX_TEXT_CTX", "WhisperOnnx", "audio_context", "repeated_tail"]

TRANSCRIBE = "transcribe"  # the Triton model FOLDER.transcribe


class WhisperOnnx(Engine[AsrRequest, AsrResult, AsrRequest]):
    """Whisper (converted to ONNX) as a batched, stateless engine: each request carries its
    audio and the prefix it must keep; the streaming state lives with the session."""

    name = "asr"

    def __init__(
        self,
        folder: Path,
        *,
        runtime: RuntimeOptions | None = None,
        ctx_margin_s: float = 5.0,
        ctx_step_s: float = 1.0,
        max_tokens_per_s: float = 8.0,
        loop_min_tokens: int = 4,
        min_ctx_s: float = 10.0,
        final_beam_size: int = 1,
        language: str = "auto",
        languages: Sequence[str] = (),
    ) -> None:
        """``languages``: the languages this deployment serves (``asr_languages``): detection
        chooses among them and a request for another is refused; empty: every language of
        the model. ``final_beam_size``: the beam width of a final's decode (a request with
        ``final``); partials are greedy."""
        super().__init__()
        self.language = language  # a request's language when it names none
        self.languages = tuple(x.strip().lower() for x in languages if x.strip())
        self.decode_options = DecodeOptions(
            ctx_margin_s=ctx_margin_s,
            ctx_step_s=ctx_step_s,
            min_ctx_s=min_ctx_s,
            max_tokens_per_s=max_tokens_per_s,
            loop_min_tokens=loop_min_tokens,
        )
        try:
            self.final_options = replace(self.decode_options, beam_size=final_beam_size)
        except ValueError as e:
            raise EngineError(f"asr: final_beam_size: {e}") from None
        self.folder = folder
        self.runtime_options = runtime or RuntimeOptions()
        self.ctx_margin_s = ctx_margin_s
        self.ctx_step_s = ctx_step_s
        self.max_tokens_per_s = max_tokens_per_s
        self.loop_min_tokens = loop_min_tokens
        self.min_ctx_s = min_ctx_s
        self._encoder: ModelRunner | None = None
        self._decoder: ModelRunner | None = None
        self._transcribe: ModelRunner | None = None  # the triton runtime's one call
        self.tokenizer: WhisperTokenizer | None = None
        self.vocab: Vocabulary | None = None

    @property
    def signature(self) -> Signature:
        return Signature(
            inputs=(TensorSpec("audio", "float32", ("batch", "samples")),),
            outputs=(TensorSpec("tokens", "int64", ("batch", "tokens")),),
            doc="16 kHz mono float32 speech, up to 30 s, and an optional forced token prefix",
        )

    @property
    def provider(self) -> str:
        for m in (self._transcribe, self._encoder):
            if m is not None:
                return m.provider
        return "unloaded"

    def _load(self) -> None:
        self.tokenizer = WhisperTokenizer(self.folder / "tokenizer.json")
        try:
            self.tokenizer.language_token(self.language)
            detect = [self.tokenizer.language_token(x) for x in self.languages]
        except ValueError as e:
            raise EngineError(f"asr: the configured {e}") from None
        if self.language not in (AUTO, *self.languages) and self.languages:
            raise EngineError(
                f"asr: the configured language {self.language!r} is not among asr_languages "
                f"{list(self.languages)}"
            )
        if self.runtime_options.runtime == "triton":
            from ..runtime.triton import open_triton

            self._transcribe = open_triton(
                self.folder / TRANSCRIBE,
                self.runtime_options,
                local=lambda: LocalTranscribe(self.folder, self.runtime_options),
            )
            return
        self._encoder = open_model(self.folder / "encoder.onnx", self.runtime_options)
        self._decoder = open_model(self.folder / "decoder.onnx", self.runtime_options)
        vocab = self._decoder.signature.output("logits").shape[-1]
        assert isinstance(vocab, int)
        self.vocab = Vocabulary.from_folder(self.folder, vocab)
        if self.vocab.multilingual and detect:
            self.vocab = replace(self.vocab, detect_ids=np.array(detect, dtype=np.int64))

    def example_request(self) -> AsrRequest:
        return AsrRequest(np.zeros(SAMPLE_RATE_HZ, dtype=np.float32))

    def prepare(self, request: AsrRequest) -> AsrRequest:
        if not isinstance(request, AsrRequest):
            raise RequestError("asr: a request is an AsrRequest (audio and prefix)")
        audio = check_audio(request.audio, "asr")
        if len(request.prefix) > MAX_PREFIX:
            raise RequestError(f"asr: prefix of {len(request.prefix)} tokens; at most 224")
        language = resolve_language(self.tokenizer, request.language or self.language)
        if self.languages and language not in (AUTO, *self.languages):
            raise RequestError(
                f"asr: language {language!r} is not served here (asr_languages: "
                f"{', '.join(self.languages)}; or auto)"
            )
        context = request.language_audio
        multilingual = self.tokenizer is not None and self.tokenizer.multilingual
        if context is not None and language == AUTO and multilingual:
            context = check_audio(context, "asr: language_audio")
        else:
            context = None
        return AsrRequest(
            audio,
            tuple(int(t) for t in request.prefix),
            request.cancel,
            language,
            tuple(int(t) for t in request.prompt[-MAX_PROMPT:]),
            context,
            request.final,
        )

    def infer(self, items: Sequence[AsrRequest], states: Sequence[Any]) -> list[Outcome[AsrResult]]:
        if self.tokenizer is None:
            raise EngineError("asr: not loaded")
        out: list[Outcome[AsrResult]] = [Failed(AsrCancelledError("asr: cancelled"))] * len(items)
        live = [i for i, it in enumerate(items) if not it.cancelled]
        if not live:
            return out
        audios = [items[i].audio for i in live]
        prefixes = [items[i].prefix for i in live]
        languages = [self.tokenizer.language_token(items[i].language or AUTO) for i in live]
        options = [self.final_options if items[i].final else self.decode_options for i in live]
        found = self._detect_on_context([items[i] for i in live], languages)
        detected = {live[k]: p for k, p in found.items()}  # by index of items
        rows: list[tuple[Decoded | None, int, dict[str, float]]]
        if self._transcribe is not None:
            # One call for the batch; a cancel that comes meanwhile drops the answer.
            t0 = time.perf_counter()
            answer = self._transcribe.run(pack_requests(audios, prefixes, options, languages))
            call_ms = (time.perf_counter() - t0) * 1000
            got = unpack_results(answer)
            if len(got) != len(live):
                raise InferenceError(f"asr: {len(got)} answers from Triton for {len(live)} rows")
            rows = [
                (None if items[i].cancelled else d, ctx, {**t, "call": call_ms})
                for i, (d, ctx, t) in zip(live, got, strict=True)
            ]
        else:
            if self._encoder is None or self._decoder is None or self.vocab is None:
                raise EngineError("asr: not loaded")
            # Rows grouped by their own audio context: a short final never pays for the
            # encoder context of a long partial it was batched with (docs/asr.md).
            rows = transcribe_by_context(
                self._encoder.run,
                self._decoder.run,
                audios,
                prefixes,
                options,
                self.vocab,
                cancelled=_row_cancelled(items, live),
                languages=languages,
                prompts=[items[i].prompt for i in live],
                resident=self._resident(),
            )
        for i, (decoded_row, ctx, timings) in zip(live, rows, strict=True):
            if decoded_row is None:
                continue  # cancelled while decoding
            text = self.tokenizer.decode(decoded_row.tokens).strip()
            out[i] = Ok(
                AsrResult(
                    tokens=tuple(decoded_row.tokens),
                    text=text,
                    avg_logprob=decoded_row.logprob / max(decoded_row.generated, 1),
                    no_speech_prob=decoded_row.no_speech,
                    compression_ratio=compression_ratio(text),
                    audio_ctx=ctx,
                    generated=decoded_row.generated,
                    timings_ms={**timings, "batch": len(live)},
                    language=self.tokenizer.language_of.get(decoded_row.language, "en"),
                    language_probability=detected.get(i, decoded_row.language_prob),
                )
            )
        return out

    def _resident(self) -> Resident | None:
        """The decoder's device copy of an array, on a GPU provider (the decode loop then
        keeps the cross tensors there); None on the CPU."""
        decoder = self._decoder
        if decoder is None or decoder.provider == "cpu":
            return None
        return getattr(decoder, "resident", None)

    def _detect_on_context(
        self, items: Sequence[AsrRequest], languages: list[int]
    ) -> dict[int, float]:
        """Rows asking ``auto`` with ``language_audio``: their language, detected on that audio
        (one encoder pass and one decoder step for them), replaces ``auto`` in ``languages``;
        the probabilities by row index of ``items``' batch."""
        rows = [k for k, it in enumerate(items) if it.language_audio is not None]
        if not rows or self._encoder is None or self._decoder is None or self.vocab is None:
            return {}
        found = detect_languages(
            self._encoder.run,
            self._decoder.run,
            [items[k].language_audio for k in rows],  # type: ignore[misc]
            [self.decode_options] * len(rows),
            self.vocab,
        )
        out: dict[int, float] = {}
        for k, (token, probability) in zip(rows, found, strict=True):
            languages[k] = token
            out[k] = probability
        return out

    def _close(self) -> None:
        for m in (self._encoder, self._decoder, self._transcribe):
            if m is not None:
                m.close()
        self._encoder = self._decoder = self._transcribe = None


def _row_cancelled(items: Sequence[AsrRequest], index: Sequence[int]) -> Callable[[int], bool]:
    """``cancelled(row)`` for the rows ``index`` of ``items``."""
    return lambda row: items[index[row]].cancelled


def resolve_language(tokenizer: WhisperTokenizer | None, language: str) -> str:
    """A request's language, checked against the model (lower-case code or ``auto``)."""
    if tokenizer is None:
        raise EngineError("asr: not loaded")
    try:
        tokenizer.language_token(language)
    except ValueError as e:
        raise RequestError(f"asr: {e}") from None
    return language.strip().lower()


class LocalTranscribe:
    """The transcribe model run here (:class:`.greedy.Transcriber` on this node's ONNX
    Runtime): what the ``triton`` runtime's ``fallback`` policy answers with while Triton is
    down."""

    def __init__(self, folder: Path, options: RuntimeOptions) -> None:
        local = replace(options, runtime="onnx")
        self._encoder = open_model(folder / "encoder.onnx", local)
        self._decoder = open_model(folder / "decoder.onnx", local)
        vocab = self._decoder.signature.output("logits").shape[-1]
        assert isinstance(vocab, int)
        self._model = Transcriber(
            self._encoder.run, self._decoder.run, Vocabulary.from_folder(folder, vocab)
        )

    @property
    def signature(self) -> Signature:
        return transcribe_signature()

    @property
    def provider(self) -> str:
        return self._encoder.provider

    def run(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        answer = self._model.infer([feeds])[0]
        if isinstance(answer, ValueError):
            raise RequestError(str(answer))
        return answer

    def close(self) -> None:
        self._encoder.close()
        self._decoder.close()

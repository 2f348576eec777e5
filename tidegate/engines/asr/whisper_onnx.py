"""Whisper on ONNX Runtime: the converted encoder and decoder (:mod:`.convert`), greedy
decoding with a KV cache, batched across sessions.

A batch runs the encoder once for every request in it, on a shortened audio context: the
longest request's audio plus ``ctx_margin_s``, at least ``min_ctx_s``, rounded up to
``ctx_step_s`` (not Whisper's fixed 30 s: the cost follows the audio). The floor matters:
on a 1 s utterance with only 5 s of context, tiny.en repeats itself ("No matter. No matter.
No ..."); with 10 s it does not (docs/asr.md). Shorter requests are padded with silence to that
length, as Whisper itself pads to 30 s. The decoder then steps all requests together: one
call per token for the whole batch (forced prefix tokens common to every row go in one call),
finished rows leaving the batch. A hypothesis that starts repeating itself (a span of at
least ``loop_min_tokens`` twice in a row: tiny.en loops on short audio padded with silence)
ends there, without the copy.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine, Failed, Ok, Outcome
from ..errors import EngineError, RequestError
from ..runtime import Array, ModelRunner, RuntimeOptions, open_model
from ..signature import Signature, TensorSpec
from .features import HOP_SAMPLES, SAMPLE_RATE_HZ, log_mel
from .request import (
    AsrCancelledError,
    AsrRequest,
    AsrResult,
    check_audio,
    compression_ratio,
)
from .tokenizer import WhisperTokenizer

ENCODER_FRAMES_PER_S = 50
MAX_AUDIO_CTX = 1500
MAX_TEXT_CTX = 448


def audio_context(
    samples: int, ctx_margin_s: float, ctx_step_s: float, min_ctx_s: float = 0.0
) -> int:
    """Encoder frames (20 ms) for ``samples`` of audio: the audio and a margin, at least
    ``min_ctx_s``, rounded up to ``ctx_step_s``, at most 30 s."""
    seconds = max(samples / SAMPLE_RATE_HZ + ctx_margin_s, min_ctx_s)
    steps = max(1, math.ceil(seconds / ctx_step_s - 1e-9))
    return min(MAX_AUDIO_CTX, round(steps * ctx_step_s * ENCODER_FRAMES_PER_S))


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
    ) -> None:
        super().__init__()
        if ctx_margin_s < 0 or ctx_step_s <= 0 or max_tokens_per_s <= 0:
            raise ValueError("ctx_margin_s >= 0, ctx_step_s > 0 and max_tokens_per_s > 0")
        self.folder = folder
        self.runtime_options = runtime or RuntimeOptions()
        self.ctx_margin_s = ctx_margin_s
        self.ctx_step_s = ctx_step_s
        self.max_tokens_per_s = max_tokens_per_s
        self.loop_min_tokens = loop_min_tokens
        self.min_ctx_s = min_ctx_s
        self._encoder: ModelRunner | None = None
        self._decoder: ModelRunner | None = None
        self.tokenizer: WhisperTokenizer | None = None
        self._suppress: Array = np.zeros(0, dtype=np.int64)
        self._suppress_begin: Array = np.zeros(0, dtype=np.int64)

    @property
    def signature(self) -> Signature:
        return Signature(
            inputs=(TensorSpec("audio", "float32", ("batch", "samples")),),
            outputs=(TensorSpec("tokens", "int64", ("batch", "tokens")),),
            doc="16 kHz mono float32 speech, up to 30 s, and an optional forced token prefix",
        )

    @property
    def provider(self) -> str:
        return self._encoder.provider if self._encoder is not None else "unloaded"

    def _load(self) -> None:
        self._encoder = open_model(self.folder / "encoder.onnx", self.runtime_options)
        self._decoder = open_model(self.folder / "decoder.onnx", self.runtime_options)
        self.tokenizer = WhisperTokenizer(self.folder / "tokenizer.json")
        config = json.loads((self.folder / "config.json").read_text())
        sp = self.tokenizer.special
        vocab = self._decoder.signature.output("logits").shape[-1]
        assert isinstance(vocab, int)
        # Never generated: the configured suppressions and every special token but EOT.
        banned = set(int(i) for i in config.get("suppress_ids", []) if int(i) >= 0)
        banned |= set(range(sp.first_special, vocab))
        self._suppress = np.array(sorted(banned), dtype=np.int64)
        begin = set(int(i) for i in config.get("suppress_ids_begin", [sp.eot]))
        self._suppress_begin = np.array(sorted(begin | {sp.eot}), dtype=np.int64)
        self.vocab = vocab

    def example_request(self) -> AsrRequest:
        return AsrRequest(np.zeros(SAMPLE_RATE_HZ, dtype=np.float32))

    def prepare(self, request: AsrRequest) -> AsrRequest:
        if not isinstance(request, AsrRequest):
            raise RequestError("asr: a request is an AsrRequest (audio and prefix)")
        audio = check_audio(request.audio, "asr")
        if len(request.prefix) > MAX_TEXT_CTX // 2:
            raise RequestError(f"asr: prefix of {len(request.prefix)} tokens; at most 224")
        return AsrRequest(audio, tuple(int(t) for t in request.prefix), request.cancel)

    def encode(self, audios: Sequence[Array]) -> tuple[Array, Array, int]:
        """Cross-attention keys and values for a batch, on the shortened context."""
        if self._encoder is None:
            raise EngineError("asr: not loaded")
        ctx = audio_context(
            max(len(a) for a in audios), self.ctx_margin_s, self.ctx_step_s, self.min_ctx_s
        )
        n = ctx * 2 * HOP_SAMPLES
        mel = np.stack([log_mel(np.pad(a[:n], (0, n - len(a[:n])))) for a in audios])
        out = self._encoder.run({"mel": mel})
        return out["cross_k"], out["cross_v"], ctx

    def infer(self, items: Sequence[AsrRequest], states: Sequence[Any]) -> list[Outcome[AsrResult]]:
        if self._decoder is None or self.tokenizer is None:
            raise EngineError("asr: not loaded")
        out: list[Outcome[AsrResult]] = [Failed(AsrCancelledError("asr: cancelled"))] * len(items)
        live = [i for i, it in enumerate(items) if not it.cancelled]
        if not live:
            return out
        t0 = time.perf_counter()
        cross_k, cross_v, ctx = self.encode([items[i].audio for i in live])
        t1 = time.perf_counter()
        results = self._decode([items[i] for i in live], cross_k, cross_v)
        t2 = time.perf_counter()
        timings = {"encode": (t1 - t0) * 1000, "decode": (t2 - t1) * 1000, "batch": len(live)}
        for i, decoded in zip(live, results, strict=True):
            if decoded is None:
                continue  # cancelled while decoding
            tokens, logprob, generated, no_speech = decoded
            text = self.tokenizer.decode(tokens).strip()
            out[i] = Ok(
                AsrResult(
                    tokens=tuple(tokens),
                    text=text,
                    avg_logprob=logprob / max(generated, 1),
                    no_speech_prob=no_speech,
                    compression_ratio=compression_ratio(text),
                    audio_ctx=ctx,
                    generated=generated,
                    timings_ms=dict(timings),
                )
            )
        return out

    def _decode(
        self, items: Sequence[AsrRequest], cross_k: Array, cross_v: Array
    ) -> list[tuple[list[int], float, int, float] | None]:
        assert self._decoder is not None and self.tokenizer is not None
        sp = self.tokenizer.special
        n = len(items)
        L, _, H, dh, _ = cross_k.shape
        prompt = [sp.sot, sp.no_timestamps]
        budget = [
            min(
                MAX_TEXT_CTX - len(prompt) - len(it.prefix) - 1,
                int(len(it.audio) / SAMPLE_RATE_HZ * self.max_tokens_per_s) + 8,
            )
            for it in items
        ]
        tokens: list[list[int]] = [[] for _ in range(n)]
        logprob = [0.0] * n
        generated = [0] * n
        active = list(range(n))
        past_k = np.zeros((L, n, H, 0, dh), dtype=np.float32)
        past_v = np.zeros((L, n, H, 0, dh), dtype=np.float32)
        feed = np.array([prompt] * n, dtype=np.int64)
        first = True
        no_speech = [0.0] * n
        cancelled = [False] * n
        while active:
            out = self._decoder.run(
                {
                    "tokens": feed,
                    "past_k": past_k,
                    "past_v": past_v,
                    "cross_k": cross_k,
                    "cross_v": cross_v,
                }
            )
            logits = out["logits"]
            past_k, past_v = out["present_k"], out["present_v"]
            if first:
                first = False
                p0 = _log_softmax(logits[:, 0])
                for row, i in enumerate(active):
                    no_speech[i] = float(np.exp(p0[row, sp.no_speech]))
            last = logits[:, -1].astype(np.float64)
            last[:, self._suppress] = -np.inf
            keep: list[int] = []
            next_tokens: list[int] = []
            for row, i in enumerate(active):
                if items[i].cancelled:
                    cancelled[i] = True
                    continue
                pos = len(tokens[i])
                if pos < len(items[i].prefix):
                    tok = items[i].prefix[pos]
                else:
                    lg = last[row]
                    if generated[i] == 0 and pos == 0:
                        lg = lg.copy()
                        lg[self._suppress_begin] = -np.inf
                    if generated[i] >= budget[i]:
                        tok = sp.eot
                    else:
                        tok = int(np.argmax(lg))
                        lp = lg - _logsumexp(lg)
                        if tok != sp.eot:
                            logprob[i] += float(lp[tok])
                            generated[i] += 1
                        else:
                            logprob[i] += float(lp[tok])
                if tok == sp.eot:
                    continue
                tokens[i].append(tok)
                k = repeated_tail(tokens[i], self.loop_min_tokens, len(items[i].prefix))
                if k:  # a loop: drop the copy and end the hypothesis
                    del tokens[i][-k:]
                    continue
                keep.append(row)
                next_tokens.append(tok)
            if len(keep) < len(active):
                active = [active[r] for r in keep]
                idx = np.array(keep, dtype=np.int64)
                past_k, past_v = past_k[:, idx], past_v[:, idx]
                cross_k, cross_v = cross_k[:, idx], cross_v[:, idx]
            if not active:
                break
            # Prefix tokens still forced on every active row go in one call.
            forced = min(len(items[i].prefix) - len(tokens[i]) for i in active)
            if forced > 1:
                chunk = [
                    [next_tokens[k], *items[i].prefix[len(tokens[i]) : len(tokens[i]) + forced - 1]]
                    for k, i in enumerate(active)
                ]
                for k, i in enumerate(active):
                    tokens[i].extend(chunk[k][1:])
                feed = np.array(chunk, dtype=np.int64)
            else:
                feed = np.array(next_tokens, dtype=np.int64)[:, None]
        return [
            None if cancelled[i] else (tokens[i], logprob[i], generated[i], no_speech[i])
            for i in range(n)
        ]

    def _close(self) -> None:
        for m in (self._encoder, self._decoder):
            if m is not None:
                m.close()
        self._encoder = self._decoder = None


def repeated_tail(tokens: Sequence[int], min_len: int, keep: int = 0) -> int:
    """Length of a span of at least ``min_len`` tokens that ``tokens`` ends with twice in a
    row (Whisper's repetition loop on short, padded audio), or 0. The second copy must lie
    after the first ``keep`` tokens (a forced prefix is never cut)."""
    if min_len <= 0:
        return 0
    n = len(tokens)
    for k in range(min_len, n // 2 + 1):
        if n - k < keep:
            break
        if tokens[n - k :] == tokens[n - 2 * k : n - k]:
            return k
    return 0


def _logsumexp(x: Array) -> float:
    m = float(np.max(x))
    return m + math.log(float(np.sum(np.exp(x - m))))


def _log_softmax(x: Array) -> Array:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))

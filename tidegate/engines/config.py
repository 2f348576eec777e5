"""Each engine kind's configuration: one frozen dataclass per kind (its runtime, batching
limits and model parameters), and the settings every engine shares (:class:`EngineDefaults`).

These are what the server's settings hold per engine (``settings.engine(ASR)``); the field
``threshold`` of the ``vad`` kind is the setting ``vad_threshold``, i.e. the variable
``TIDEGATE_VAD_THRESHOLD``. The ``doc`` of each field is the one ``tidegate config`` prints.
A new kind's config is one more dataclass here (or beside its engine), named in its registry
row (registry.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .runtime import RuntimeOptions
from .scheduler import BatchPolicy

T = TypeVar("T")


def setting(doc: str, default: T) -> T:
    """A config field with its documentation (shown by ``tidegate config``)."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True, slots=True)
class EngineDefaults:
    """What every engine shares: the runtime an engine without its own runs on, the Triton
    servers, and how many sessions a stateful engine keeps state for."""

    runtime: str = "onnx"
    providers: tuple[str, ...] = ("auto",)
    threads: int = 1
    trt_cache_dir: Path | None = None
    triton_url: str = "127.0.0.1:8001"
    #: per kind: the Triton server of that kind's engine (others use ``triton_url``)
    triton_urls: tuple[tuple[str, str], ...] = ()
    triton_timeout_s: float = 2.0
    triton_policy: str = "refuse"
    triton_retry_s: float = 5.0
    max_sessions: int = 1024

    def runtime_options(self, kind: str, runtime: str) -> RuntimeOptions:
        """The runtime of ``kind``'s engine, whose own runtime setting is ``runtime`` ('' for
        the default)."""
        return RuntimeOptions(
            runtime=runtime or self.runtime,
            providers=self.providers or ("auto",),
            intra_op_threads=self.threads,
            trt_cache_dir=self.trt_cache_dir,
            triton_url=dict(self.triton_urls).get(kind, self.triton_url),
            triton_timeout_s=self.triton_timeout_s,
            triton_policy=self.triton_policy,
            triton_retry_s=self.triton_retry_s,
        )


@dataclass(frozen=True, slots=True)
class VadConfig:
    """The voice activity detector (silero-vad)."""

    runtime: str = setting("The VAD engine's runtime. Unset: engine_runtime.", "")
    max_batch_items: int = setting("Frames in one VAD batch, at most.", 64)
    batch_wait_s: float = setting(
        "How long the oldest queued VAD frame waits for its batch to fill.", 0.002
    )
    max_queue_items: int = setting(
        "VAD frames queued at once; more are refused (overloaded).", 1024
    )
    deadline_s: float = setting("A VAD frame's result is due within this.", 0.5)
    threshold: float = setting("Speech probability that starts speech.", 0.5)
    min_speech_s: float = setting("Shortest speech reported as a segment.", 0.25)
    min_silence_s: float = setting("Silence that ends a speech segment.", 0.1)
    speech_pad_s: float = setting("Padding added to both ends of a segment.", 0.03)

    def policy(self, max_sessions: int) -> BatchPolicy:
        return _policy(self, max_sessions)


@dataclass(frozen=True, slots=True)
class AsrConfig:
    """Speech recognition (Whisper). The audio lane's own settings (partials, segment lengths)
    are the session's, not the engine's."""

    model: str = setting(
        "ASR model: whisper-tiny-en (English only; half base's CPU per stream), "
        "whisper-tiny-en-fp32 (float weights: for CUDA, where int8 runs on the host) or "
        "whisper-base (99 languages, docs/asr.md).",
        "whisper-tiny-en",
    )
    language: str = setting(
        "Language of a request that names none: a code (de) or auto (detected once per turn; "
        "whisper-tiny-en takes en or auto).",
        "auto",
    )
    languages: str = setting(
        "Languages this deployment serves, comma-separated codes (en,de,es,fr): auto "
        "detection chooses among them only (docs/languages.md) and a session may ask only "
        "for one of them. Empty: every language of the model.",
        "",
    )
    runtime: str = setting("The ASR engine's runtime. Unset: engine_runtime.", "")
    max_batch_items: int = setting("Segments decoded in one ASR batch, at most.", 16)
    batch_wait_s: float = setting(
        "How long the oldest queued ASR request waits for its batch to fill.", 0.01
    )
    max_queue_items: int = setting(
        "ASR requests queued at once; more are refused (overloaded).", 64
    )
    deadline_s: float = setting("An ASR decode's result is due within this.", 10.0)
    ctx_margin_s: float = setting(
        "Audio context the encoder runs on beyond the audio itself (docs/asr.md).", 5.0
    )
    ctx_step_s: float = setting("The encoder's audio context is rounded up to this.", 1.0)
    final_beam_size: int = setting(
        "Beam width a segment's final is decoded with (Whisper's beam search; partials stay "
        "greedy): 1 is greedy, at most 16. Greedy by default: on tiny.en beams 5 changed no "
        "word of the bench's speech and doubled a final's decode (docs/asr.md).",
        1,
    )

    def policy(self, max_sessions: int) -> BatchPolicy:
        return _policy(self, max_sessions)


@dataclass(frozen=True, slots=True)
class VisionConfig:
    """Face detection on video frames."""

    model: str = setting(
        "Vision engine model: blazeface (fast) or mtcnn (finds smaller faces, ~30x slower).",
        "blazeface",
    )
    runtime: str = setting("The vision engine's runtime. Unset: engine_runtime.", "")
    max_batch_items: int = setting("Frames in one vision batch, at most.", 8)
    batch_wait_s: float = setting(
        "How long the oldest queued frame waits for its vision batch to fill.", 0.005
    )
    max_queue_items: int = setting(
        "Frames queued for vision at once; more are refused (overloaded).", 64
    )
    deadline_s: float = setting("A frame's detections are due within this.", 1.0)
    score_threshold: float = setting("Lowest face score reported.", 0.5)

    def policy(self, max_sessions: int) -> BatchPolicy:
        return _policy(self, max_sessions)


@dataclass(frozen=True, slots=True)
class LlmConfig:
    """The LLM: the embedded model (batched step by step), or OpenAI-compatible providers."""

    model: str = setting(
        "LLM of the llm engine: smollm2-135m (int8 weights, fastest) or smollm2-135m-fp32 "
        "(float weights: a generation's tokens do not depend on what it is batched with).",
        "smollm2-135m",
    )
    runtime: str = setting(
        "The LLM engine's runtime: local (the embedded model, on engine_runtime) or providers "
        "(OpenAI-compatible servers, llm_providers; docs/llm-tts.md). Unset: local. (onnx, "
        "tensorrt and triton name the local model's runtime, as engine_runtime does.)",
        "",
    )
    max_batch_items: int = setting("Generations decoding together in one step.", 16)
    max_queue_items: int = setting(
        "Generations waiting to join the batch; more are refused (overloaded).", 64
    )
    queue_deadline_s: float = setting("A generation not started within this fails (timeout).", 30.0)
    max_prompt_tokens: int = setting("Longest prompt, in tokens.", 2048)
    max_context_tokens: int = setting("Prompt plus reply, in tokens.", 4096)
    session_cache_items: int = setting(
        "Conversations whose KV cache is kept for their next turn (least recent dropped).", 256
    )
    providers: tuple[str, ...] = setting(
        "OpenAI-compatible LLM servers for llm_runtime=providers, in order of preference "
        "(comma-separated NAME=BASE_URL, e.g. a=http://127.0.0.1:8081,b=http://10.0.0.9:8000): "
        "a request fails over from one to the next (docs/llm-tts.md).",
        (),
    )
    provider_options: tuple[str, ...] = setting(
        "Per-provider options (comma-separated NAME.OPTION=VALUE): model (the model name sent; "
        "default: NAME), api_key_env (the variable holding its API key) or api_key_file (a "
        "file holding it) -- the key itself is never a setting --, max_requests, "
        "connect_timeout_s, first_token_timeout_s, token_timeout_s, reply_timeout_s, "
        "standby_every_tokens (defaults: the llm_provider_* settings).",
        (),
    )
    provider_max_requests: int = setting(
        "Requests one provider has in flight at once; a full provider is skipped, and with "
        "every provider full a request is refused (overloaded, with a retry hint).",
        16,
    )
    provider_connect_timeout_s: float = setting(
        "Longest TCP (and TLS) connect to a provider before the next one is tried.", 1.0
    )
    provider_first_token_timeout_s: float = setting(
        "Longest wait from sending a request to its first token before the next provider is tried.",
        10.0,
    )
    provider_token_timeout_s: float = setting(
        "Longest gap between two tokens of a reply before it continues on the next provider.",
        10.0,
    )
    provider_reply_timeout_s: float = setting("Longest whole reply from one provider.", 300.0)
    provider_standby_every_tokens: int = setting(
        "Keep a provider warm while it is a reply's next provider (its standby): with N > 0 "
        "the reply's prompt and the text streamed so far are sent to it (max_tokens 1, the "
        "answer dropped) with the reply's first token and every N tokens after, so that a "
        "mid-stream failover to it finds all but the last < N tokens in its prompt cache. "
        "Costs the standby a prefill of each reply (billed on hosted APIs). 0: off.",
        0,
    )
    provider_breaker_failures: int = setting(
        "Consecutive failures that open a provider's circuit breaker (it is skipped).", 3
    )
    provider_breaker_open_s: float = setting(
        "How long an open breaker skips its provider before one request probes it.", 5.0
    )

    def policy(self, max_sessions: int) -> BatchPolicy:
        """Unused by the LLM's own step batcher (its limits are above); kept for the table."""
        return BatchPolicy(
            max_batch_items=self.max_batch_items,
            batch_wait_s=0.0,
            max_queue_items=self.max_queue_items,
            deadline_s=self.queue_deadline_s,
            max_sessions=max_sessions,
        )


@dataclass(frozen=True, slots=True)
class TtsConfig:
    """Speech synthesis (Piper): one chunk at a time."""

    runtime: str = setting("The TTS engine's runtime. Unset: engine_runtime.", "")
    max_queue_items: int = setting(
        "Text chunks queued for synthesis; more are refused (overloaded).", 64
    )
    deadline_s: float = setting("A chunk's audio is due within this.", 10.0)

    def policy(self, max_sessions: int) -> BatchPolicy:
        return BatchPolicy(
            max_batch_items=1,
            batch_wait_s=0.0,
            max_queue_items=self.max_queue_items,
            deadline_s=self.deadline_s,
            max_sessions=max_sessions,
        )


@dataclass(frozen=True, slots=True)
class TurnDetectionConfig:
    """Semantic end of turn (Smart Turn v3.2, docs/ears.md): scores a session's pauses,
    batched across sessions. The turn-taking policy itself is the session's (turn_policy)."""

    runtime: str = setting("The turn-detection engine's runtime. Unset: engine_runtime.", "")
    max_batch_items: int = setting(
        "Pauses scored in one turn-detection batch, at most (on a CPU a batch costs the sum "
        "of its pauses and the first waits for the last: small batches; docs/ears.md).",
        4,
    )
    batch_wait_s: float = setting(
        "How long the oldest queued pause waits for its turn-detection batch to fill.", 0.005
    )
    max_queue_items: int = setting(
        "Pauses queued for turn detection at once; more are refused (overloaded: that pause "
        "then goes by the silence policy).",
        64,
    )
    deadline_s: float = setting(
        "A pause's score is due within this (late: the silence policy decides).", 1.0
    )
    threshold: float = setting(
        "Turn-detection probability at or above which a turn counts as complete (the "
        "model's own calibration is 0.5; at 0.9 it lets far fewer unfinished sentences end "
        "at a pause, at little cost to finished ones: docs/assistant.md).",
        0.9,
    )

    def policy(self, max_sessions: int) -> BatchPolicy:
        return _policy(self, max_sessions)


def _policy(
    c: VadConfig | AsrConfig | VisionConfig | TurnDetectionConfig, max_sessions: int
) -> BatchPolicy:
    return BatchPolicy(
        max_batch_items=c.max_batch_items,
        batch_wait_s=c.batch_wait_s,
        max_queue_items=c.max_queue_items,
        deadline_s=c.deadline_s,
        max_sessions=max_sessions,
    )

"""Engine settings -> the engine layer's specs (the server owns configuration; the engine
layer never reads it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidegate.engines.llm import LlmSettings
from tidegate.engines.runtime import RuntimeOptions
from tidegate.engines.scheduler import BatchPolicy
from tidegate.engines.service import ENGINE_KINDS, LLM_MODELS, VISION_MODELS, EngineSpec
from tidegate.engines.vad import VadSettings

if TYPE_CHECKING:
    from .settings import Settings


def _policy(s: Settings, engine: str) -> BatchPolicy:
    """The batching policy from an engine's ``<engine>_*`` settings."""
    return BatchPolicy(
        max_batch_items=getattr(s, f"{engine}_max_batch_items"),
        batch_wait_s=getattr(s, f"{engine}_batch_wait_s"),
        max_queue_items=getattr(s, f"{engine}_max_queue_items"),
        deadline_s=getattr(s, f"{engine}_deadline_s"),
        max_sessions=s.engine_max_sessions,
    )


def _runtimes(s: Settings) -> dict[str, RuntimeOptions]:
    """Each engine kind's runtime: ``<engine>_runtime`` or ``engine_runtime``, and for the
    triton runtime its server (``triton_urls`` entry or ``triton_url``)."""
    urls: dict[str, str] = {}
    for item in s.triton_urls:
        engine, sep, url = item.partition("=")
        if not sep or engine not in ENGINE_KINDS or not url:
            raise ValueError(
                f"triton_urls: {item!r} is not ENGINE=HOST:PORT with ENGINE one of "
                f"{', '.join(ENGINE_KINDS)}"
            )
        urls[engine] = url
    return {
        engine: RuntimeOptions(
            runtime=getattr(s, f"{engine}_runtime") or s.engine_runtime,
            providers=s.engine_providers or ("auto",),
            intra_op_threads=s.engine_threads,
            trt_cache_dir=s.engine_trt_cache_dir or s.data_dir / "trt-cache",
            triton_url=urls.get(engine, s.triton_url),
            triton_timeout_s=s.triton_timeout_s,
            triton_policy=s.triton_policy,
            triton_retry_s=s.triton_retry_s,
        )
        for engine in ENGINE_KINDS
    }


def engine_specs(settings: Settings) -> list[EngineSpec]:
    """The engines ``settings`` asks for; ValueError naming the bad setting otherwise."""
    s = settings
    runtimes = _runtimes(s)
    if s.vision_model not in VISION_MODELS:
        raise ValueError(f"vision_model must be one of {VISION_MODELS}, got {s.vision_model!r}")
    specs = []
    for name in s.engines:
        if name == "vad":
            specs.append(
                EngineSpec(
                    "vad",
                    "silero-vad",
                    _policy(s, "vad"),
                    runtimes["vad"],
                    VadSettings(
                        threshold=s.vad_threshold,
                        min_speech_s=s.vad_min_speech_s,
                        min_silence_s=s.vad_min_silence_s,
                        speech_pad_s=s.vad_speech_pad_s,
                    ),
                )
            )
        elif name == "vision":
            specs.append(
                EngineSpec(
                    "vision",
                    s.vision_model,
                    _policy(s, "vision"),
                    runtimes["vision"],
                    score_threshold=s.vision_score_threshold,
                )
            )
        elif name == "asr":
            specs.append(
                EngineSpec(
                    "asr",
                    "whisper-tiny-en",
                    _policy(s, "asr"),
                    runtimes["asr"],
                    asr_ctx_margin_s=s.asr_ctx_margin_s,
                    asr_ctx_step_s=s.asr_ctx_step_s,
                )
            )
        elif name == "llm":
            if s.llm_model not in LLM_MODELS:
                raise ValueError(f"llm_model must be one of {LLM_MODELS}, got {s.llm_model!r}")
            llm = LlmSettings(
                max_batch_items=s.llm_max_batch_items,
                max_queue_items=s.llm_max_queue_items,
                queue_deadline_s=s.llm_queue_deadline_s,
                max_prompt_tokens=s.llm_max_prompt_tokens,
                max_context_tokens=s.llm_max_context_tokens,
                session_cache_items=s.llm_session_cache_items,
            )
            specs.append(EngineSpec("llm", s.llm_model, runtime=runtimes["llm"], llm=llm))
        elif name == "tts":
            specs.append(
                EngineSpec(
                    "tts",
                    "piper-joe",
                    BatchPolicy(
                        max_batch_items=1,
                        batch_wait_s=0.0,
                        max_queue_items=s.tts_max_queue_items,
                        deadline_s=s.tts_deadline_s,
                        max_sessions=s.engine_max_sessions,
                    ),
                    runtimes["tts"],
                )
            )
        else:
            raise ValueError(f"engines: unknown engine {name!r} (known: {', '.join(ENGINE_KINDS)})")
    return specs

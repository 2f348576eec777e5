"""Engine settings -> the engine layer's specs (the server owns configuration; the engine
layer never reads it)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tidegate.engines.llm import LlmSettings
from tidegate.engines.llm.providers import ProvidersSettings
from tidegate.engines.runtime import RuntimeOptions
from tidegate.engines.runtime.openai import ProviderConfig
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
            runtime=_local_runtime(getattr(s, f"{engine}_runtime")) or s.engine_runtime,
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


LLM_RUNTIMES = ("", "local", "providers", "onnx", "tensorrt", "triton")
PROVIDER_OPTIONS = {
    f.name: f.type for f in fields(ProviderConfig) if f.name not in ("name", "base_url")
}


def _local_runtime(value: str) -> str:
    """An engine's ``*_runtime`` as the local runtime it names ('' for the default)."""
    return "" if value in ("local", "providers") else value


def provider_settings(s: Settings) -> ProvidersSettings | None:
    """The providers of ``llm_runtime=providers`` (None for the local model); ValueError naming
    the bad entry. Only references to API keys are settings: keys are read when the engine
    starts."""
    if s.llm_runtime not in LLM_RUNTIMES:
        raise ValueError(
            f"llm_runtime must be local, providers, onnx, tensorrt or triton, got {s.llm_runtime!r}"
        )
    if s.llm_runtime != "providers":
        if s.llm_providers:
            raise ValueError("llm_providers is set but llm_runtime is not providers")
        return None
    if not s.llm_providers:
        raise ValueError("llm_runtime=providers needs llm_providers (NAME=BASE_URL, ...)")
    order: list[tuple[str, str]] = []
    for item in s.llm_providers:
        name, sep, url = item.partition("=")
        name = name.strip()
        if not sep or not name or not url.strip():
            raise ValueError(f"llm_providers: {item!r} is not NAME=BASE_URL")
        order.append((name, url.strip()))
    names = {n for n, _ in order}
    options: dict[str, dict[str, Any]] = {n: {} for n in names}
    for item in s.llm_provider_options:
        key, sep, value = item.partition("=")
        name, dot, option = key.strip().partition(".")
        if not sep or not dot:
            raise ValueError(f"llm_provider_options: {item!r} is not NAME.OPTION=VALUE")
        if name not in names:
            raise ValueError(f"llm_provider_options: {item!r} names no provider of llm_providers")
        if option not in PROVIDER_OPTIONS:
            raise ValueError(
                f"llm_provider_options: {item!r}: unknown option {option!r} "
                f"(known: {', '.join(sorted(PROVIDER_OPTIONS))})"
            )
        value = value.strip()
        kind = str(PROVIDER_OPTIONS[option])
        try:
            if "int" in kind:
                options[name][option] = int(value)
            elif "float" in kind:
                options[name][option] = float(value)
            elif "Path" in kind:
                options[name][option] = Path(value).expanduser()
            else:
                options[name][option] = value
        except ValueError:
            raise ValueError(f"llm_provider_options: {item!r}: not a number") from None
    configs = []
    for name, url in order:
        kw: dict[str, Any] = {
            "model": name,
            "max_requests": s.llm_provider_max_requests,
            "connect_timeout_s": s.llm_provider_connect_timeout_s,
            "first_token_timeout_s": s.llm_provider_first_token_timeout_s,
            "token_timeout_s": s.llm_provider_token_timeout_s,
            "reply_timeout_s": s.llm_provider_reply_timeout_s,
            "standby_every_tokens": s.llm_provider_standby_every_tokens,
        }
        kw.update(options[name])
        configs.append(ProviderConfig(name=name, base_url=url, **kw))
    return ProvidersSettings(
        tuple(configs),
        breaker_failures=s.llm_provider_breaker_failures,
        breaker_open_s=s.llm_provider_breaker_open_s,
    )


def engine_specs(settings: Settings) -> list[EngineSpec]:
    """The engines ``settings`` asks for; ValueError naming the bad setting otherwise."""
    s = settings
    runtimes = _runtimes(s)
    providers = provider_settings(s)
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
        elif name == "llm" and providers is not None:
            specs.append(
                EngineSpec("llm", "providers", runtime=runtimes["llm"], providers=providers)
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
        elif name == "turn":
            specs.append(
                EngineSpec(
                    "turn",
                    "smart-turn-v3.2",
                    _policy(s, "turn"),
                    runtimes["turn"],
                    score_threshold=s.turn_threshold,
                )
            )
        else:
            raise ValueError(f"engines: unknown engine {name!r} (known: {', '.join(ENGINE_KINDS)})")
    return specs

"""The table of engine kinds: one row per kind (vad, asr, vision, llm, tts, turn), each naming
its models (the first is the default), the runtimes it runs on, how it batches, its config
dataclass (config.py), how a config becomes an :class:`EngineSpec`, how the spec becomes the
typed handle sessions hold, and for an optional kind what sessions do without it.

A row is also the typed key of its handle and its config: ``service.get(ASR)`` is a
``Scheduler[AsrRequest, AsrResult]`` and ``settings.engine(ASR)`` an :class:`AsrConfig`. The
settings of a kind are its config's fields under the kind's prefix (``TIDEGATE_ASR_*``).

Adding a kind (turn detection, AEC) is one row in :data:`KINDS` plus one config dataclass; the
server's settings, ``TIDEGATE_ENGINES`` and the engine service pick it up from this table.
This module imports no user of the engines (the server, the sessions), and the engines do not
import it (service.py does)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from . import models
from .config import (
    AsrConfig,
    EngineDefaults,
    LlmConfig,
    TtsConfig,
    TurnDetectionConfig,
    VadConfig,
    VisionConfig,
)
from .engine import TensorEngine
from .errors import ModelError
from .llm import LlmBatcher, LlmEngine, LlmSettings
from .llm.providers import ProviderPool, ProvidersSettings
from .metrics import QueueLoad, SchedulerStats
from .runtime import Array, RuntimeOptions
from .runtime.openai import ProviderConfig
from .scheduler import BatchPolicy, Scheduler
from .vad import SileroVad, VadResult, VadSettings

if TYPE_CHECKING:
    from .asr.request import AsrRequest, AsrResult
    from .asr.whisper_onnx import WhisperOnnx
    from .tts import PiperVoice
    from .turn import SmartTurn, TurnResult
    from .vision.blazeface import BlazeFace
    from .vision.faces import FaceDetections
    from .vision.mtcnn import Mtcnn

    #: an engine of a default model
    ModelEngine = SileroVad | WhisperOnnx | BlazeFace | Mtcnn | PiperVoice | SmartTurn

C = TypeVar("C")
H = TypeVar("H", bound="EngineHandle")

#: how a kind batches (a row's ``batching``): ``requests`` (a :class:`Scheduler` with the
#: config's :class:`BatchPolicy`) or ``steps`` (the LLM's continuous batching, llm/batcher.py)
BATCHING = ("requests", "steps")


class EngineHandle(Protocol):
    """What the engine service does with every handle: start, measure, close."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def queue_load(self) -> QueueLoad: ...

    def stats(self) -> dict[str, Any]: ...


class BatchedHandle(EngineHandle, Protocol):
    """A request-batching handle as metrics and admission see it, whatever its types."""

    @property
    def counters(self) -> SchedulerStats: ...

    @property
    def policy(self) -> BatchPolicy: ...


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One engine to run: ``name`` is a kind (``vad``, ``vision``, ...) or a custom model's
    name; the rest is what its row made of the kind's config."""

    name: str
    model: str
    policy: BatchPolicy = field(default_factory=BatchPolicy)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    vad: VadSettings = field(default_factory=VadSettings)
    score_threshold: float = 0.5
    asr_ctx_margin_s: float = 5.0
    asr_ctx_step_s: float = 1.0
    llm: LlmSettings = field(default_factory=LlmSettings)
    #: The LLM on OpenAI-compatible providers instead of a local model (``model`` is then
    #: ``providers``).
    providers: ProvidersSettings | None = None
    #: the kind's config it was made from (its row's ``config_of`` gives it typed)
    config: object = None


@dataclass(frozen=True, slots=True)
class BuildContext:
    """Where models are: the data folder, custom models, and the hook that prepares a default
    model that is not prepared yet (see :func:`ensure_prepared`)."""

    data_dir: Path
    custom: Mapping[str, models.CustomModel] = field(default_factory=dict)
    prepare: Preparer | None = None


@dataclass(frozen=True, slots=True)
class EngineKind(Generic[C, H]):
    """One row of the table (see the module docstring)."""

    name: str
    config: type[C]
    models: tuple[str, ...]
    runtimes: tuple[str, ...]
    batching: str
    #: the spec -> the handle, not started (blocking: runs in a thread); the kind's config is
    #: ``config_of(spec)``
    build: Callable[[EngineSpec, BuildContext], H]
    #: the kind's config (and the shared engine settings) -> what to run; ValueError naming
    #: the bad setting. None: :meth:`plain_spec` (model, runtime, policy from the config).
    spec: Callable[[C, EngineDefaults], EngineSpec] | None = None
    #: None: the engine is required (a server that cannot have its model does not start).
    #: Else what sessions do without it: a server whose model for it is missing starts
    #: without the engine, and logs this at start-up.
    without: str | None = None

    def __post_init__(self) -> None:
        if self.batching not in BATCHING or not self.models:
            raise ValueError(f"engine kind {self.name}: batching in {BATCHING}, and a model")

    @property
    def default_model(self) -> str:
        return self.models[0]

    def check_runtime(self, runtime: str) -> None:
        if runtime and runtime not in self.runtimes:
            raise ValueError(
                f"{self.name}_runtime must be one of {', '.join(self.runtimes)}, got {runtime!r}"
            )

    def check_model(self, model: str) -> None:
        if model not in self.models:
            raise ValueError(f"{self.name}_model must be one of {self.models}, got {model!r}")

    def make_spec(self, config: C, defaults: EngineDefaults) -> EngineSpec:
        return (self.spec or self.plain_spec)(config, defaults)

    def plain_spec(self, config: C, defaults: EngineDefaults) -> EngineSpec:
        """The spec of a kind whose config has (optionally) ``model``, ``runtime`` and
        ``policy(max_sessions)``, and whose engine reads the rest from ``config_of(spec)``."""
        model = getattr(config, "model", self.default_model)
        self.check_model(model)
        policy = getattr(config, "policy", None)
        return EngineSpec(
            self.name,
            model,
            policy(defaults.max_sessions) if policy else BatchPolicy(),
            defaults.runtime_options(self.name, getattr(config, "runtime", "")),
            config=config,
        )

    def config_of(self, spec: EngineSpec) -> C:
        """The kind's config ``spec`` was made from (the defaults for a hand-made spec)."""
        return spec.config if isinstance(spec.config, self.config) else self.config()


# -- the engines, by model (also for benches and tests that build one without a scheduler) ----
#: prepares a default model into the data folder (:func:`tidegate.tools.prepare.prepare_offline`,
#: passed in by the composition root: the engine layer never converts models itself)
Preparer = Callable[[Path, str], object]


def ensure_prepared(data_dir: Path, model: str, prepare: Preparer | None) -> None:
    """``model`` prepared in ``data_dir``: checked, and prepared by ``prepare`` if it is not
    (without one, a :class:`ModelError` naming what is missing and the command to run)."""
    problems = models.verify(data_dir, model, deep=False)
    if not problems:
        return
    if prepare is None:
        raise ModelError(f"model {model} in {data_dir}: {'; '.join(problems)}")
    prepare(data_dir, model)


def _model_dir(spec: EngineSpec, ctx: BuildContext) -> Path:
    ensure_prepared(ctx.data_dir, spec.model, ctx.prepare)
    return models.model_dir(ctx.data_dir, spec.model)


def vad_engine(spec: EngineSpec, ctx: BuildContext) -> SileroVad:
    """Silero on the batched graph prepared from the shipped file (same answers, less CPU);
    on Triton, the shipped file (what an exported repository serves)."""
    folder = _model_dir(spec, ctx)
    name = "silero_vad.onnx" if spec.runtime.runtime == "triton" else "silero_vad_batched.onnx"
    return SileroVad(folder / name, runtime=spec.runtime, settings=spec.vad)


def asr_engine(spec: EngineSpec, ctx: BuildContext) -> WhisperOnnx:
    from .asr.whisper_onnx import WhisperOnnx

    config = spec.config if isinstance(spec.config, AsrConfig) else AsrConfig()
    return WhisperOnnx(
        _model_dir(spec, ctx),
        runtime=spec.runtime,
        ctx_margin_s=spec.asr_ctx_margin_s,
        ctx_step_s=spec.asr_ctx_step_s,
        final_beam_size=config.final_beam_size,
        language=config.language,
        languages=tuple(x for x in config.languages.split(",") if x.strip()),
    )


def vision_engine(spec: EngineSpec, ctx: BuildContext) -> BlazeFace | Mtcnn:
    folder = _model_dir(spec, ctx)
    if spec.model == "blazeface":
        from .vision.blazeface import BlazeFace

        return BlazeFace(
            folder / "blazeface.onnx", runtime=spec.runtime, score_threshold=spec.score_threshold
        )
    from .vision.mtcnn import Mtcnn

    return Mtcnn(folder, runtime=spec.runtime)


def tts_engine(spec: EngineSpec, ctx: BuildContext) -> PiperVoice:
    from .tts import PiperVoice

    return PiperVoice(_model_dir(spec, ctx) / "en_US-joe-medium.onnx", runtime=spec.runtime)


def turn_engine(spec: EngineSpec, ctx: BuildContext) -> SmartTurn:
    from .turn import SmartTurn

    c = spec.config
    threshold = (c if isinstance(c, TurnDetectionConfig) else TurnDetectionConfig()).threshold
    path = _model_dir(spec, ctx) / "smart-turn-v3.2-cpu.onnx"
    return SmartTurn(path, runtime=spec.runtime, threshold=threshold)


_ENGINES: dict[str, Callable[[EngineSpec, BuildContext], ModelEngine]] = {
    "silero-vad": vad_engine,
    "whisper-tiny-en": asr_engine,
    "whisper-tiny-en-fp32": asr_engine,
    "whisper-base": asr_engine,
    "blazeface": vision_engine,
    "mtcnn": vision_engine,
    "piper-joe": tts_engine,
    "smart-turn-v3.2": turn_engine,
}


def custom_engine(spec: EngineSpec, custom: Mapping[str, models.CustomModel]) -> TensorEngine:
    """The custom model ``spec.model`` (of the models file) as an engine."""
    m = custom[spec.model]
    problems = models.verify_custom(m)
    if problems:
        raise ModelError("; ".join(problems))
    return TensorEngine(m.path, name=spec.name, runtime=spec.runtime, declared=m.signature)


def build_engine(
    spec: EngineSpec,
    data_dir: Path,
    custom: Mapping[str, models.CustomModel] | None = None,
    *,
    prepare: Preparer | None = None,
) -> ModelEngine | TensorEngine:
    """The engine ``spec`` names (by model), its model prepared by ``prepare`` if need be."""
    custom = custom or {}
    if spec.model in custom:
        return custom_engine(spec, custom)
    make = _ENGINES.get(spec.model)
    if make is None or spec.model not in models.DEFAULT_MODELS:
        raise ModelError(
            f"{spec.name}: unknown model {spec.model!r} (defaults: {sorted(models.DEFAULT_MODELS)};"
            f" custom: {sorted(custom)})"
        )
    return make(spec, BuildContext(data_dir, custom, prepare))


def handle_builder(
    spec: EngineSpec,
    custom: Mapping[str, models.CustomModel],
    kinds: Sequence[EngineKind[Any, Any]] | None = None,
) -> Callable[[EngineSpec, BuildContext], EngineHandle]:
    """How the engine service builds ``spec``'s handle: its kind's row (of ``kinds``, default
    :data:`KINDS`), else (a spec under a name of its own) a custom model behind a scheduler,
    or the row of its model."""
    kinds = KINDS if kinds is None else kinds
    row = next((k for k in kinds if k.name == spec.name), None)
    if row is not None:
        return row.build
    if spec.model in custom:
        return lambda spec, ctx: Scheduler(custom_engine(spec, ctx.custom), spec.policy)
    for row in kinds:
        if spec.model in row.models:
            return row.build
    raise ModelError(
        f"{spec.name}: unknown model {spec.model!r} (defaults: {sorted(models.DEFAULT_MODELS)};"
        f" custom: {sorted(custom)})"
    )


# -- the rows ---------------------------------------------------------------------------------
LOCAL_RUNTIMES = ("onnx", "tensorrt", "triton")


def _vad_spec(c: VadConfig, d: EngineDefaults) -> EngineSpec:
    return EngineSpec(
        "vad",
        VAD.default_model,
        c.policy(d.max_sessions),
        d.runtime_options("vad", c.runtime),
        VadSettings(
            threshold=c.threshold,
            min_speech_s=c.min_speech_s,
            min_silence_s=c.min_silence_s,
            speech_pad_s=c.speech_pad_s,
        ),
        config=c,
    )


def _asr_spec(c: AsrConfig, d: EngineDefaults) -> EngineSpec:
    ASR.check_model(c.model)
    return EngineSpec(
        "asr",
        c.model,
        c.policy(d.max_sessions),
        d.runtime_options("asr", c.runtime),
        asr_ctx_margin_s=c.ctx_margin_s,
        asr_ctx_step_s=c.ctx_step_s,
        config=c,
    )


def _vision_spec(c: VisionConfig, d: EngineDefaults) -> EngineSpec:
    VISION.check_model(c.model)
    return EngineSpec(
        "vision",
        c.model,
        c.policy(d.max_sessions),
        d.runtime_options("vision", c.runtime),
        score_threshold=c.score_threshold,
        config=c,
    )


def _llm_spec(c: LlmConfig, d: EngineDefaults) -> EngineSpec:
    local = "" if c.runtime in ("local", "providers") else c.runtime
    runtime = d.runtime_options("llm", local)
    providers = provider_settings(c)
    if providers is not None:
        return EngineSpec("llm", "providers", runtime=runtime, providers=providers, config=c)
    LLM.check_model(c.model)
    llm = LlmSettings(
        max_batch_items=c.max_batch_items,
        max_queue_items=c.max_queue_items,
        queue_deadline_s=c.queue_deadline_s,
        max_prompt_tokens=c.max_prompt_tokens,
        max_context_tokens=c.max_context_tokens,
        session_cache_items=c.session_cache_items,
    )
    return EngineSpec("llm", c.model, runtime=runtime, llm=llm, config=c)


def _build_llm(spec: EngineSpec, ctx: BuildContext) -> LlmEngine:
    if spec.providers is not None:
        return ProviderPool(spec.providers)
    return LlmBatcher(_model_dir(spec, ctx), runtime=spec.runtime, settings=spec.llm)


def _build_vad(spec: EngineSpec, ctx: BuildContext) -> Scheduler[Array, VadResult]:
    return Scheduler(vad_engine(spec, ctx), spec.policy)


def _build_asr(spec: EngineSpec, ctx: BuildContext) -> Scheduler[AsrRequest, AsrResult]:
    return Scheduler(asr_engine(spec, ctx), spec.policy)


def _build_vision(spec: EngineSpec, ctx: BuildContext) -> Scheduler[Array, FaceDetections]:
    return Scheduler(vision_engine(spec, ctx), spec.policy)


def _build_tts(spec: EngineSpec, ctx: BuildContext) -> Scheduler[str, Array]:
    return Scheduler(tts_engine(spec, ctx), spec.policy)


def _build_turn(spec: EngineSpec, ctx: BuildContext) -> Scheduler[Array, TurnResult]:
    return Scheduler(turn_engine(spec, ctx), spec.policy)


VAD: EngineKind[VadConfig, Scheduler[Array, VadResult]] = EngineKind(
    "vad", VadConfig, ("silero-vad",), LOCAL_RUNTIMES, "requests", _build_vad, _vad_spec
)
ASR: EngineKind[AsrConfig, Scheduler[AsrRequest, AsrResult]] = EngineKind(
    "asr",
    AsrConfig,
    ("whisper-tiny-en", "whisper-tiny-en-fp32", "whisper-base"),
    LOCAL_RUNTIMES,
    "requests",
    _build_asr,
    _asr_spec,
)
VISION: EngineKind[VisionConfig, Scheduler[Array, FaceDetections]] = EngineKind(
    "vision",
    VisionConfig,
    ("blazeface", "mtcnn"),
    LOCAL_RUNTIMES,
    "requests",
    _build_vision,
    _vision_spec,
)
LLM: EngineKind[LlmConfig, LlmEngine] = EngineKind(
    "llm",
    LlmConfig,
    ("smollm2-135m", "smollm2-135m-fp32"),
    ("local", "providers", *LOCAL_RUNTIMES),
    "steps",
    _build_llm,
    _llm_spec,
)
TTS: EngineKind[TtsConfig, Scheduler[str, Array]] = EngineKind(
    "tts", TtsConfig, ("piper-joe",), LOCAL_RUNTIMES, "requests", _build_tts
)

#: semantic end of turn (docs/ears.md); optional: without its model, turns end by silence
TURN: EngineKind[TurnDetectionConfig, Scheduler[Array, TurnResult]] = EngineKind(
    "turn",
    TurnDetectionConfig,
    ("smart-turn-v3.2",),
    LOCAL_RUNTIMES,
    "requests",
    _build_turn,
    without="turns end by the silence policy (assistant_end_of_turn_s)",
)

#: THE table. Its order is the order of the settings and of ``TIDEGATE_ENGINES``'s help.
KINDS: tuple[EngineKind[Any, Any], ...] = (VAD, VISION, ASR, LLM, TTS, TURN)
KINDS_BY_NAME: Mapping[str, EngineKind[Any, Any]] = {k.name: k for k in KINDS}
ENGINE_KINDS = tuple(KINDS_BY_NAME)


def kind(name: str) -> EngineKind[Any, Any]:
    """The row named ``name``; ValueError listing the kinds otherwise."""
    try:
        return KINDS_BY_NAME[name]
    except KeyError:
        raise ValueError(
            f"engines: unknown engine {name!r} (known: {', '.join(ENGINE_KINDS)})"
        ) from None


@dataclass(frozen=True, slots=True)
class EngineConfigs:
    """Every kind's config, keyed by its row: ``configs[ASR]`` is an :class:`AsrConfig`.
    Immutable and hashable (the settings are)."""

    items: tuple[tuple[str, object], ...] = field(
        default_factory=lambda: tuple((k.name, k.config()) for k in KINDS)
    )

    @classmethod
    def of(cls, by_name: Mapping[str, object]) -> EngineConfigs:
        return cls(tuple(by_name.items()))

    @property
    def by_name(self) -> dict[str, object]:
        return dict(self.items)

    def __getitem__(self, row: EngineKind[C, Any]) -> C:
        return cast(C, self.by_name[row.name])


def engine_specs(
    names: Iterable[str], configs: EngineConfigs, defaults: EngineDefaults
) -> list[EngineSpec]:
    """The specs of the engines ``names`` asks for, each from its row and its kind's config;
    ValueError naming the bad setting. Every kind's runtime is checked, run or not."""
    for row in KINDS:
        row.check_runtime(getattr(configs.by_name[row.name], "runtime", ""))
    provider_settings(configs[LLM])
    VISION.check_model(configs[VISION].model)
    specs = []
    for name in names:
        row = kind(name)
        try:
            specs.append(row.make_spec(configs.by_name[name], defaults))
        except ValueError as e:
            if str(e).startswith(row.name):
                raise
            raise ValueError(f"{row.name}: {e}") from None  # vad: threshold must be in (0, 1)
    return specs


# -- the LLM's providers (llm_runtime=providers) ----------------------------------------------
PROVIDER_OPTIONS = {
    f.name: f.type for f in fields(ProviderConfig) if f.name not in ("name", "base_url")
}


def provider_settings(c: LlmConfig) -> ProvidersSettings | None:
    """The providers of ``llm_runtime=providers`` (None for the local model); ValueError naming
    the bad entry. Only references to API keys are settings: keys are read when the engine
    starts."""
    if c.runtime and c.runtime not in LLM.runtimes:
        raise ValueError(
            f"llm_runtime must be local, providers, onnx, tensorrt or triton, got {c.runtime!r}"
        )
    if c.runtime != "providers":
        if c.providers:
            raise ValueError("llm_providers is set but llm_runtime is not providers")
        return None
    if not c.providers:
        raise ValueError("llm_runtime=providers needs llm_providers (NAME=BASE_URL, ...)")
    order: list[tuple[str, str]] = []
    for item in c.providers:
        name, sep, url = item.partition("=")
        name = name.strip()
        if not sep or not name or not url.strip():
            raise ValueError(f"llm_providers: {item!r} is not NAME=BASE_URL")
        order.append((name, url.strip()))
    names = {n for n, _ in order}
    options: dict[str, dict[str, Any]] = {n: {} for n in names}
    for item in c.provider_options:
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
        hint = str(PROVIDER_OPTIONS[option])
        try:
            if "int" in hint:
                options[name][option] = int(value)
            elif "float" in hint:
                options[name][option] = float(value)
            elif "Path" in hint:
                options[name][option] = Path(value).expanduser()
            else:
                options[name][option] = value
        except ValueError:
            raise ValueError(f"llm_provider_options: {item!r}: not a number") from None
    configs = []
    for name, url in order:
        kw: dict[str, Any] = {
            "model": name,
            "max_requests": c.provider_max_requests,
            "connect_timeout_s": c.provider_connect_timeout_s,
            "first_token_timeout_s": c.provider_first_token_timeout_s,
            "token_timeout_s": c.provider_token_timeout_s,
            "reply_timeout_s": c.provider_reply_timeout_s,
            "standby_every_tokens": c.provider_standby_every_tokens,
        }
        kw.update(options[name])
        configs.append(ProviderConfig(name=name, base_url=url, **kw))
    return ProvidersSettings(
        tuple(configs),
        breaker_failures=c.provider_breaker_failures,
        breaker_open_s=c.provider_breaker_open_s,
    )

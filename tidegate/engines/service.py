"""The engines one server process runs: built from configuration, prepared if needed (from
installed packages and cached wheels only — no download at start-up), loaded and warmed up
off the event loop, each behind its own :class:`Scheduler`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import models
from .engine import Engine, TensorEngine
from .errors import EngineError, ModelError
from .llm import LlmBatcher, LlmEngine, LlmSettings
from .llm.providers import ProviderPool, ProvidersSettings
from .runtime import RuntimeOptions
from .scheduler import BatchPolicy, Scheduler
from .vad import SileroVad, VadSettings
from .workers import WorkerPool

log = logging.getLogger(__name__)

ENGINE_KINDS = ("vad", "vision", "asr", "llm", "tts", "turn")
LLM_MODELS = ("smollm2-135m", "smollm2-135m-fp32")
VISION_MODELS = ("blazeface", "mtcnn")


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One engine to run: ``name`` is ``vad``, ``vision``, or a custom model's name."""

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


#: prepares a default model into the data folder (:func:`tidegate.tools.prepare.prepare`,
#: passed in by the composition root: the engine layer never converts models itself)
Preparer = Callable[[Path, str], object]


def ensure_prepared(data_dir: Path, model: str, prepare: Preparer | None) -> None:
    """``model`` prepared in ``data_dir``: checked, and prepared by ``prepare`` if it is not
    (without one, a :class:`ModelError` naming the command that prepares it)."""
    problems = models.verify(data_dir, model, deep=False)
    if not problems:
        return
    if prepare is None:
        raise ModelError(f"model {model} in {data_dir}: {'; '.join(problems)}")
    prepare(data_dir, model)


def build_engine(
    spec: EngineSpec,
    data_dir: Path,
    custom: Mapping[str, models.CustomModel] | None = None,
    *,
    prepare: Preparer | None = None,
) -> Engine[Any, Any, Any]:
    """The engine ``spec`` names, its model prepared by ``prepare`` if need be (see
    :func:`ensure_prepared`)."""
    custom = custom or {}
    if spec.model in custom:
        m = custom[spec.model]
        problems = models.verify_custom(m)
        if problems:
            raise ModelError("; ".join(problems))
        return TensorEngine(m.path, name=spec.name, runtime=spec.runtime, declared=m.signature)
    if spec.model not in models.DEFAULT_MODELS:
        raise ModelError(
            f"{spec.name}: unknown model {spec.model!r} (defaults: {sorted(models.DEFAULT_MODELS)};"
            f" custom: {sorted(custom)})"
        )
    ensure_prepared(data_dir, spec.model, prepare)
    folder = models.model_dir(data_dir, spec.model)
    if spec.model == "silero-vad":
        return SileroVad(folder / "silero_vad.onnx", runtime=spec.runtime, settings=spec.vad)
    if spec.model == "piper-joe":
        from .tts import PiperVoice

        return PiperVoice(folder / "en_US-joe-medium.onnx", runtime=spec.runtime)
    if spec.model == "whisper-tiny-en":
        from .asr.whisper_onnx import WhisperOnnx

        return WhisperOnnx(
            folder,
            runtime=spec.runtime,
            ctx_margin_s=spec.asr_ctx_margin_s,
            ctx_step_s=spec.asr_ctx_step_s,
        )
    if spec.model == "smart-turn-v3.2":
        from .turn import SmartTurn

        return SmartTurn(
            folder / "smart-turn-v3.2-cpu.onnx",
            runtime=spec.runtime,
            threshold=spec.score_threshold,
        )
    if spec.model == "blazeface":
        from .vision.blazeface import BlazeFace

        return BlazeFace(
            folder / "blazeface.onnx", runtime=spec.runtime, score_threshold=spec.score_threshold
        )
    from .vision.mtcnn import Mtcnn

    return Mtcnn(folder, runtime=spec.runtime)


class EngineService:
    """Named schedulers, started together and closed together."""

    def __init__(
        self,
        specs: Sequence[EngineSpec],
        data_dir: Path,
        *,
        custom: Mapping[str, models.CustomModel] | None = None,
        prepare: Preparer | None = None,
        media_worker_threads: int = 2,
        media_max_pending_items: int = 32,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise EngineError(f"engine names must be unique, got {names}")
        self.specs = tuple(specs)
        self.data_dir = data_dir
        self.custom = dict(custom or {})
        self.prepare = prepare
        self.schedulers: dict[str, Scheduler[Any, Any]] = {}
        # LLMs batch step by step (see llm/batcher.py), not request by request; or run on
        # OpenAI-compatible providers (llm/providers.py).
        self.batchers: dict[str, LlmEngine] = {}
        # Blocking media work of the sessions (image decoding, resampling): see workers.py.
        self.media = WorkerPool(
            "media", workers=media_worker_threads, max_pending=media_max_pending_items
        )
        self.ready = False

    async def start(self) -> None:
        """Build, load and warm up every engine (in threads); on failure close what started."""
        try:
            for spec in self.specs:
                if spec.model in LLM_MODELS or spec.providers is not None:
                    await self._start_llm(spec)
                    continue
                engine = await asyncio.to_thread(
                    build_engine, spec, self.data_dir, self.custom, prepare=self.prepare
                )
                scheduler: Scheduler[Any, Any] = Scheduler(engine, spec.policy)
                self.schedulers[spec.name] = scheduler
                await scheduler.start()
                log.info(
                    "engine %s: %s on %s, max batch %d",
                    spec.name,
                    spec.model,
                    getattr(engine, "provider", "?"),
                    spec.policy.max_batch_items,
                )
        except BaseException:
            await self.close()
            raise
        self.ready = True

    async def _start_llm(self, spec: EngineSpec) -> None:
        if spec.providers is not None:
            pool = ProviderPool(spec.providers)
            self.batchers[spec.name] = pool
            await pool.start()
            log.info("engine %s: %s", spec.name, pool.provider)
            return
        await asyncio.to_thread(ensure_prepared, self.data_dir, spec.model, self.prepare)
        batcher = LlmBatcher(
            models.model_dir(self.data_dir, spec.model), runtime=spec.runtime, settings=spec.llm
        )
        self.batchers[spec.name] = batcher
        await batcher.start()
        log.info("engine %s: %s on %s", spec.name, spec.model, batcher.provider)

    def llm(self, name: str = "llm") -> LlmEngine:
        try:
            return self.batchers[name]
        except KeyError:
            raise EngineError(f"LLM engine {name!r} is not running") from None

    def get(self, name: str) -> Scheduler[Any, Any]:
        try:
            return self.schedulers[name]
        except KeyError:
            raise EngineError(f"engine {name!r} is not running") from None

    async def close(self) -> None:
        self.ready = False
        for batcher in self.batchers.values():
            await batcher.close()
        self.batchers.clear()
        for scheduler in reversed(list(self.schedulers.values())):
            await scheduler.close()
        self.schedulers.clear()
        self.media.close()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: s.stats() for name, s in self.schedulers.items()}
        out.update({name: b.stats() for name, b in self.batchers.items()})
        out["media"] = self.media.stats()
        return out

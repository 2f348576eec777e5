"""The engines one server process runs: built from their specs by their kind's row of the
table (registry.py), prepared if needed (from installed packages and cached wheels only — no
download at start-up), loaded and warmed up off the event loop, each as the handle its row
says (a :class:`Scheduler`, or the LLM's step batcher or providers); ``get(ASR)`` is typed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import models
from .errors import EngineError, ModelError
from .llm import LlmEngine
from .registry import (
    ENGINE_KINDS,
    KINDS,
    LLM,
    BatchedHandle,
    BuildContext,
    EngineHandle,
    EngineKind,
    EngineSpec,
    Preparer,
    build_engine,
    ensure_prepared,
    handle_builder,
)
from .scheduler import Scheduler
from .workers import WorkerPool

if TYPE_CHECKING:
    from .tts.bank import VoiceBank

log = logging.getLogger(__name__)

C = TypeVar("C")
H = TypeVar("H", bound=EngineHandle)

# EngineSpec and build_engine live in registry.py, with the table; imported from here too.
__all__ = [
    "ENGINE_KINDS",
    "EngineService",
    "EngineSpec",
    "Preparer",
    "build_engine",
    "ensure_prepared",
]


class EngineService:
    """Named engine handles, started together and closed together."""

    def __init__(
        self,
        specs: Sequence[EngineSpec],
        data_dir: Path,
        *,
        custom: Mapping[str, models.CustomModel] | None = None,
        prepare: Preparer | None = None,
        media_worker_threads: int = 2,
        media_max_pending_items: int = 32,
        kinds: Sequence[EngineKind[Any, Any]] = KINDS,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise EngineError(f"engine names must be unique, got {names}")
        self.specs = tuple(specs)
        self.data_dir = data_dir
        self.custom = dict(custom or {})
        self.prepare = prepare
        self.kinds = tuple(kinds)  # the table (registry.py), or more rows for a new kind
        #: every started engine's handle, by spec name (typed access: :meth:`get`)
        self.handles: dict[str, EngineHandle] = {}
        #: the request-batching ones (a :class:`Scheduler` each), as metrics see them
        self.schedulers: dict[str, BatchedHandle] = {}
        # LLMs batch step by step (see llm/batcher.py), not request by request; or run on
        # OpenAI-compatible providers (llm/providers.py).
        self.batchers: dict[str, LlmEngine] = {}
        # Blocking media work of the sessions (image decoding, resampling): see workers.py.
        self.media = WorkerPool(
            "media", workers=media_worker_threads, max_pending=media_max_pending_items
        )
        #: optional engines left out because their model is missing: name -> why
        self.missing: dict[str, str] = {}
        #: the voices by language (tts/bank.py): the TTS engine and espeak-ng voices started
        #: on first use; None until a ``tts`` engine runs
        self.voices: VoiceBank | None = None
        self.ready = False

    def _without(self, spec: EngineSpec) -> str | None:
        """What sessions do without ``spec``'s engine (None: it is required)."""
        if spec.model in self.custom:
            return None
        kind = next((k for k in self.kinds if k.name == spec.name), None)
        return None if kind is None else kind.without

    async def start(self) -> None:
        """Build, load and warm up every engine (in threads); on failure close what started."""
        ctx = BuildContext(self.data_dir, self.custom, self.prepare)
        try:
            for spec in self.specs:
                build = handle_builder(spec, self.custom, self.kinds)
                try:
                    handle = await asyncio.to_thread(build, spec, ctx)
                except ModelError as e:
                    without = self._without(spec)
                    if without is None:
                        raise
                    log.warning(
                        "engine %s: not started, its model %s is missing (%s); %s",
                        spec.name,
                        spec.model,
                        e,
                        without,
                    )
                    self.missing[spec.name] = f"model {spec.model}: {e}"
                    continue
                self.handles[spec.name] = handle
                if build is LLM.build:
                    self.batchers[spec.name] = cast(LlmEngine, handle)
                else:
                    self.schedulers[spec.name] = cast(BatchedHandle, handle)
                await handle.start()
                log.info(
                    "engine %s: %s on %s",
                    spec.name,
                    spec.model,
                    getattr(getattr(handle, "engine", handle), "provider", "?"),
                )
            tts = next((x for x in self.specs if x.name == "tts"), None)
            if tts is not None:
                from .tts.bank import VoiceBank

                handle = self.handles[tts.name]
                self.voices = VoiceBank(
                    handle if isinstance(handle, Scheduler) else None,
                    tts.model,
                    policy=tts.policy,
                )
        except BaseException:
            await self.close()
            raise
        self.ready = True

    def get(self, kind: EngineKind[C, H]) -> H:
        """The running engine of ``kind`` (a row of registry.py), typed as its row says."""
        try:
            return cast(H, self.handles[kind.name])
        except KeyError:
            raise EngineError(f"engine {kind.name!r} is not running") from None

    def llm(self) -> LlmEngine:
        try:
            return self.batchers[LLM.name]
        except KeyError:
            raise EngineError(f"LLM engine {LLM.name!r} is not running") from None

    async def close(self) -> None:
        self.ready = False
        if self.voices is not None:
            await self.voices.close()
            self.voices = None
        for handle in reversed(list(self.handles.values())):
            await handle.close()
        self.handles.clear()
        self.batchers.clear()
        self.schedulers.clear()
        self.media.close()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: h.stats() for name, h in self.handles.items()}
        out["media"] = self.media.stats()
        return out

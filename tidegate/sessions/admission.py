"""Admission control: a new session is refused while an engine its mode needs is saturated.

DESIGN.md's flow table, "engine queues": new work waits up to its deadline and is then refused;
*new sessions* are refused before that point, with a retry hint, so that the sessions already
running keep their latency instead of everyone degrading together. An engine counts as
saturated when its queue is at least ``admission_queue_fraction`` full, or when its oldest
queued request has waited at least ``admission_wait_fraction`` of the engine's deadline (a
fraction, because a VAD frame due in 0.5 s and an LLM request allowed 30 s are not late at
the same wait). Either setting at 0 turns that test off.

A refusal is an ``error`` with code ``overloaded`` naming the engine and its queue, and
``retry_after_ms`` (the engine's estimate of when its queue drains, at least
``ADMISSION_MIN_RETRY_MS``). Refusals are counted per engine (``/metrics``). Only
``session.create`` of a new session is checked; resuming a session is never refused here.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Protocol

from tidegate.engines.runtime import RuntimeOptions, runtime_unavailable
from tidegate.pipelines.errors import OverloadedError
from tidegate.pipelines.registry import MODES

from .config import ENGINE_MODES

if TYPE_CHECKING:
    from tidegate.engines.metrics import QueueLoad
    from tidegate.engines.service import EngineService
ADMISSION_MIN_RETRY_MS = 250.0
# Engines a mode uses when the server runs them, beyond those it needs (ENGINE_MODES).
OPTIONAL_ENGINES: dict[str, tuple[str, ...]] = {m.name: m.optional for m in MODES.values()}


class AdmissionSettings(Protocol):
    """The settings admission reads (the server's Settings has them)."""

    @property
    def admission_queue_fraction(self) -> float: ...
    @property
    def admission_wait_fraction(self) -> float: ...


class Admission:
    """Checks ``session.create`` against the engines' queues (see the module docstring)."""

    def __init__(self, settings: AdmissionSettings) -> None:
        self.queue_fraction = settings.admission_queue_fraction
        self.wait_fraction = settings.admission_wait_fraction
        self.refused: Counter[str] = Counter()  # by engine
        self.admitted = 0

    def engines_of(self, mode: str, engines: EngineService) -> list[str]:
        running = set(engines.schedulers) | set(engines.batchers)
        names = [*ENGINE_MODES.get(mode, ()), *OPTIONAL_ENGINES.get(mode, ())]
        return [n for n in names if n in running]

    def check(self, mode: object, engines: EngineService | None) -> None:
        """Raise OverloadedError when an engine ``mode`` uses is saturated (a mode that is
        not one is left to the config check)."""
        if engines is None or not isinstance(mode, str) or mode not in ENGINE_MODES:
            return
        for name in self.engines_of(mode, engines):
            source = engines.batchers.get(name) or engines.schedulers[name]
            self._check_runtime(name, mode, source)
            load = source.queue_load()
            why = self._saturated(load)
            if why is not None:
                self.refused[name] += 1
                raise OverloadedError(
                    f"the {name} engine is saturated ({why}); new {mode} sessions are refused "
                    "until it catches up, sessions already running are not affected",
                    retry_after_ms=round(
                        max(ADMISSION_MIN_RETRY_MS, load.retry_after_s * 1000.0), 1
                    ),
                )
        self.admitted += 1

    def _check_runtime(self, name: str, mode: str, source: object) -> None:
        """A Triton server that failed within triton_retry_s under the refuse policy refuses
        new sessions of the engines it serves (docs/triton.md)."""
        engine = getattr(source, "engine", source)
        options = getattr(engine, "runtime_options", None) or getattr(engine, "runtime", None)
        if not isinstance(options, RuntimeOptions):
            return
        reason = runtime_unavailable(options)
        if reason:
            self.refused[name] += 1
            raise OverloadedError(
                f"the {name} engine cannot serve new {mode} sessions now: {reason}",
                retry_after_ms=max(ADMISSION_MIN_RETRY_MS, options.triton_retry_s * 1000.0),
            )

    def _saturated(self, load: QueueLoad) -> str | None:
        if self.queue_fraction > 0 and load.depth and load.fraction >= self.queue_fraction:
            return (
                f"{load.depth} of {load.max_items} queue places taken, at least "
                f"{self.queue_fraction:g} (admission_queue_fraction)"
            )
        if self.wait_fraction > 0 and load.oldest_wait_s >= self.wait_fraction * load.deadline_s:
            return (
                f"its oldest queued request has waited {load.oldest_wait_s:.2f} s, at least "
                f"{self.wait_fraction:g} of its {load.deadline_s:g} s deadline "
                "(admission_wait_fraction)"
            )
        return None

    def stats(self) -> dict[str, object]:
        return {"admitted": self.admitted, "refused": dict(self.refused)}

"""The table of engine kinds: complete rows, typed handles, and a new kind as one row plus one
config dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pytest

from tidegate.engines import models
from tidegate.engines.config import EngineDefaults, VadConfig, setting
from tidegate.engines.errors import EngineError
from tidegate.engines.registry import (
    ASR,
    BATCHING,
    KINDS,
    LOCAL_RUNTIMES,
    TTS,
    TURN,
    VAD,
    VISION,
    BuildContext,
    EngineConfigs,
    EngineKind,
    EngineSpec,
    engine_specs,
    kind,
    vad_engine,
)
from tidegate.engines.scheduler import BatchPolicy, Scheduler
from tidegate.engines.service import EngineService
from tidegate.engines.vad import FRAME_SAMPLES, SileroVad, VadResult, VadSettings


@runtime_checkable
class BatchedConfig(Protocol):
    """The config of a kind that batches requests: it makes the kind's policy."""

    def policy(self, max_sessions: int) -> BatchPolicy: ...


@pytest.mark.parametrize("row", KINDS, ids=lambda r: r.name)
def test_every_row_is_complete(row: EngineKind[Any, Any]) -> None:
    """Each kind names real default models, a batching, and a frozen config whose every field
    has a default and a doc; its default config makes a spec of its default model whose
    config is that config again."""
    assert row.batching in BATCHING
    assert set(row.models) <= set(models.DEFAULT_MODELS)
    config = row.config()
    assert dataclasses.is_dataclass(config)
    assert row.config.__dataclass_params__.frozen
    for f in dataclasses.fields(config):
        assert f.metadata.get("doc"), f"{row.name}_{f.name} has no doc"
    spec = row.make_spec(config, EngineDefaults(max_sessions=7))
    assert spec.name == row.name and spec.model in (row.default_model, "providers")
    assert row.config_of(spec) == config
    if row.batching == "requests":
        assert isinstance(config, BatchedConfig) and spec.policy == config.policy(7)


def test_specs_follow_each_config() -> None:
    """A kind's config changes its spec: runtime (per-kind Triton server), policy, model and
    model parameters; a kind or model outside the table is refused by name."""
    configs = EngineConfigs.of(
        {
            **EngineConfigs().by_name,
            "vad": VadConfig(runtime="triton", max_batch_items=3, threshold=0.7),
            "vision": replace(EngineConfigs()[VISION], model="mtcnn"),
        }
    )
    defaults = EngineDefaults(triton_urls=(("vad", "gpu-a:8001"),), max_sessions=9)
    vad, vision, tts = engine_specs(["vad", "vision", "tts"], configs, defaults)
    assert (vad.runtime.runtime, vad.runtime.triton_url) == ("triton", "gpu-a:8001")
    assert vad.policy == BatchPolicy(3, 0.002, 1024, 0.5, 9) and vad.vad.threshold == 0.7
    assert vision.model == "mtcnn" and vision.runtime.triton_url == "127.0.0.1:8001"
    assert tts.policy.max_batch_items == 1 and tts.model == TTS.default_model
    with pytest.raises(ValueError, match="unknown engine 'aec'"):
        kind("aec")
    (turn,) = engine_specs(["turn"], configs, defaults)  # the turn row: its threshold rides
    assert turn.model == "smart-turn-v3.2" and TURN.config_of(turn).threshold == 0.9
    bad = EngineConfigs.of({**configs.by_name, "vision": replace(configs[VISION], model="yolo")})
    with pytest.raises(ValueError, match="vision_model must be one of"):
        engine_specs([], bad, defaults)


async def test_handles_are_typed_by_their_row(data_dir: Path) -> None:
    """The service gives each running kind's handle by its row (VAD: a scheduler of the
    Silero engine, answering a real frame); a kind not running is an EngineError."""
    spec = VAD.make_spec(VadConfig(max_batch_items=4), EngineDefaults())
    service = EngineService([spec], data_dir)
    await service.start()
    try:
        vad: Scheduler[np.ndarray, VadResult] = service.get(VAD)
        assert isinstance(vad.engine, SileroVad) and vad.policy.max_batch_items == 4
        vad.open_session("s")
        result = await vad.submit(np.zeros(FRAME_SAMPLES, np.float32), session="s")
        assert isinstance(result, VadResult) and result.probability < 0.5
        assert set(service.schedulers) == {"vad"} and not service.batchers
        with pytest.raises(EngineError, match="'asr' is not running"):
            service.get(ASR)
    finally:
        await service.close()


@dataclass(frozen=True, slots=True)
class GateConfig:
    """A made-up kind's config: a stricter speech gate on the Silero model."""

    threshold: float = setting("Speech probability that opens the gate.", 0.9)
    max_batch_items: int = setting("Frames in one batch, at most.", 2)

    def policy(self, max_sessions: int) -> BatchPolicy:
        return BatchPolicy(max_batch_items=self.max_batch_items, max_sessions=max_sessions)


def _build_gate(spec: EngineSpec, ctx: BuildContext) -> Scheduler[np.ndarray, VadResult]:
    settings = VadSettings(threshold=GATE.config_of(spec).threshold)
    return Scheduler(vad_engine(replace(spec, vad=settings), ctx), spec.policy)


GATE: EngineKind[GateConfig, Scheduler[np.ndarray, VadResult]] = EngineKind(
    "gate", GateConfig, ("silero-vad",), LOCAL_RUNTIMES, "requests", _build_gate
)


async def test_a_new_kind_is_one_row_and_one_config(data_dir: Path) -> None:
    """A kind with no spec function of its own gets its model, policy and runtime from its
    config (plain_spec), its builder reads the rest typed, and the service runs it."""
    spec = GATE.make_spec(GateConfig(threshold=0.8), EngineDefaults(max_sessions=5))
    assert (spec.name, spec.model, spec.policy.max_batch_items) == ("gate", "silero-vad", 2)
    assert spec.policy.max_sessions == 5 and GATE.config_of(spec).threshold == 0.8
    service = EngineService([spec], data_dir, kinds=(*KINDS, GATE))
    await service.start()
    try:
        gate = service.get(GATE)
        assert isinstance(gate.engine, SileroVad) and gate.engine.settings.threshold == 0.8
    finally:
        await service.close()


async def test_an_optional_engine_without_its_model_is_left_out(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The turn engine is optional: when its model is not prepared (and cannot be), the
    service starts without it, logs one warning naming the model and the fallback, and
    reports it missing; a required engine whose model is missing still fails the start."""
    empty = tmp_path / "no-models"
    (empty / "models").mkdir(parents=True)
    # the VAD's prepared folder, but not the turn model's
    (empty / "models" / "silero-vad").symlink_to(models.model_dir(data_dir, "silero-vad"))
    defaults = EngineDefaults()
    vad, turn = engine_specs(["vad", "turn"], EngineConfigs(), defaults)
    service = EngineService([vad, turn], empty)
    with caplog.at_level("WARNING", logger="tidegate.engines.service"):
        await service.start()
    try:
        assert service.ready and set(service.handles) == {"vad"}
        assert "smart-turn-v3.2" in service.missing["turn"]
        (line,) = [r.getMessage() for r in caplog.records]
        assert "engine turn: not started" in line and "silence policy" in line, line
        with pytest.raises(EngineError, match="'turn' is not running"):
            service.get(TURN)
    finally:
        await service.close()
    (vad,) = engine_specs(["vad"], EngineConfigs(), defaults)
    bare = EngineService([vad], tmp_path / "nothing")
    with pytest.raises(EngineError, match="silero-vad"):
        await bare.start()
    assert TURN.without is not None and VAD.without is None

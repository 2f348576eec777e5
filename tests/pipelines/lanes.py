"""Shared by the lane tests: real engines without a server, and a session port that records
what a lane does (the session side of the lane's port, not a stand-in for an engine)."""

from __future__ import annotations

import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from tests.server.conftest import make_settings
from tests.support import prepare_models
from tidegate.engines.service import EngineService
from tidegate.pipelines.audio import AudioLane
from tidegate.pipelines.mode import Mode
from tidegate.pipelines.modes import assistant
from tidegate.pipelines.port import LocalSession
from tidegate.pipelines.reply import ReplyLane
from tidegate.pipelines.turns import TurnTaking
from tidegate.server.engines import engine_specs
from tidegate.server.modes import lane_config
from tidegate.server.runtime import prepare_offline
from tidegate.server.settings import Settings

#: the in-process session port (its name in the tests)
FakeSession = LocalSession


def engine_settings(tmp: Path, models: tuple[str, ...], **overrides: Any) -> Settings:
    """Settings whose data folder holds the prepared ``models``."""
    prepared = prepare_models(*models)
    (tmp / "models").symlink_to(Path(prepared) / "models")
    return make_settings(tmp, **overrides)


async def started_engines(settings: Settings) -> AsyncIterator[EngineService]:
    """The settings' engines, loaded and warm, closed after."""
    service = EngineService(engine_specs(settings), settings.data_dir, prepare=prepare_offline)
    await service.start()
    try:
        yield service
    finally:
        await service.close()


def spoken(text: str, folder: Path) -> tuple[np.ndarray, int]:
    """``text`` spoken by espeak-ng: int16 mono samples and their rate."""
    path = folder / "speech.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path), text], check=True)
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        return np.frombuffer(w.readframes(w.getnframes()), np.int16), rate


def assistant_lanes(
    session: Any, settings: Settings, engines: EngineService
) -> tuple[Mode, ReplyLane, TurnTaking, AudioLane]:
    """The assistant mode over ``session``, composed by the mode itself
    (pipelines/modes/assistant.py), and its reply, turn-taking and audio lanes."""
    mode = assistant.build(session, lane_config(settings), engines)
    return mode, mode.lane(ReplyLane), mode.lane(TurnTaking), mode.lane(AudioLane)

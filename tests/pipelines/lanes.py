"""Shared by the lane tests: real engines without a server, and a session port that records
what a lane does (the session side of the lane's port, not a stand-in for an engine)."""

from __future__ import annotations

import asyncio
import subprocess
import wave
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

from tests.server.conftest import make_settings
from tests.support import prepare_models
from tidegate.engines.service import EngineService
from tidegate.pipelines.audio import AudioLane
from tidegate.pipelines.mode import Mode
from tidegate.pipelines.modes import assistant
from tidegate.pipelines.records import Record
from tidegate.pipelines.reply import ReplyLane
from tidegate.pipelines.turns import TurnTaking
from tidegate.protocol import ServerMessage
from tidegate.server.engines import engine_specs
from tidegate.server.modes import lane_config
from tidegate.server.runtime import prepare_offline
from tidegate.server.settings import Settings


class FakeSession:
    """A SessionPort that keeps the events, records and credit a lane gives it, and owns the
    tasks it starts."""

    def __init__(self, session_id: str = "s_lane") -> None:
        self.id = session_id
        self.config: dict[str, Any] = {}
        self.caches = None
        self.stage_times = None
        self.events: list[ServerMessage] = []
        self.records: list[Record] = []
        self.credit_bytes = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    def emit(self, msg: ServerMessage) -> None:
        self.events.append(msg)

    def return_credit(self, nbytes: int) -> None:
        self.credit_bytes += nbytes

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def record(self, rec: Record) -> bool:
        self.records.append(rec)
        return True

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


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

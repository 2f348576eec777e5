"""The vision lane on the real BlazeFace engine, without a server: a frame is looked at when it
arrives, not at the next tick of the rate; the rate cap holds frames beyond its burst, and the
newest held frame wins."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support import ASSETS, scaled
from tidegate.engines.registry import VISION
from tidegate.engines.service import EngineService
from tidegate.pipelines.config import VisionConfig
from tidegate.pipelines.vision import LOOK_BURST, VisionLane
from tidegate.protocol.messages import InputFrame, VisionResult
from tidegate.server.settings import Settings

from .lanes import FakeSession, engine_settings, started_engines

pytestmark = pytest.mark.asyncio(loop_scope="module")

RATE_S = 60.0  # one look a minute: any look beyond the burst within the test is the cap's fault


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp = tmp_path_factory.mktemp("vision-lane")
    return engine_settings(tmp, ("blazeface",), engines=("vision",))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines(settings: Settings) -> AsyncIterator[EngineService]:
    async for service in started_engines(settings):
        yield service


async def _results(session: FakeSession, n: int) -> list[VisionResult]:
    async with asyncio.timeout(scaled(10)):
        while len(session.of(VisionResult)) < n:
            await asyncio.sleep(0.01)
    return list(session.of(VisionResult))


async def test_frames_are_looked_at_on_arrival_within_the_rate_cap(
    engines: EngineService, settings: Settings
) -> None:
    """With a rate of one look a minute, the first LOOK_BURST frames are each looked at as
    they arrive (within seconds, not a minute); the next ones wait in the slot, the newest
    replacing the older (credit returned), and no result comes for them meanwhile."""
    session = FakeSession()
    config = VisionConfig(interval_s=RATE_S, max_pixels=settings.frame_max_pixels)
    lane = VisionLane(session, config, engines.get(VISION), engines.media)
    image = (ASSETS / "astronaut.png").read_bytes()
    try:
        burst = int(LOOK_BURST)
        for i in range(burst):
            await lane.handlers()[InputFrame](InputFrame(image=image, encoding="png", ts=i))
            results = await _results(session, i + 1)
            assert results[-1].frame_ts == i and results[-1].detections
        for ts in (100.0, 101.0):  # beyond the burst: held, the newer replaces the older
            await lane.handlers()[InputFrame](InputFrame(image=image, encoding="png", ts=ts))
        await asyncio.sleep(0.5)
        assert len(session.of(VisionResult)) == burst
        assert lane.slot.stats.dropped == 1 and session.credit_bytes == (burst + 1) * len(image)
        # the end of a turn still looks at once, at the newest frame
        await lane.at_turn_end()
        assert session.of(VisionResult)[-1].frame_ts == 101.0
    finally:
        await session.close()

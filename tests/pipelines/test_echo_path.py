"""The echo path's reference bookkeeping: speech a pause takes back is forgotten, both what
still waits for the canceller and what it was already fed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tidegate.engines.workers import WorkerPool
from tidegate.pipelines.echo import EchoPath

pytestmark = pytest.mark.asyncio

RATE = 16_000
FRAME = 320


async def test_speech_taken_back_is_forgotten_as_reference() -> None:
    """Frames told as played from ``t`` on and then taken back (``unplayed(t)``): those not
    yet fed are dropped at once, those already fed are cut from the canceller's reference at
    its next call; the frames before ``t`` stay."""
    pool = WorkerPool("echo-test", workers=1)
    path = EchoPath(pool)
    try:
        t0 = time.monotonic()
        tone = (0.3 * np.sin(np.arange(FRAME) * 0.2)).astype(np.float32)
        for k in range(10):  # 200 ms told ahead, as the reply lane writes to the track
            path.played(tone, RATE, t0 + k * FRAME / RATE)
        await path.clean(np.zeros(FRAME, np.float32), t0 + FRAME / RATE)  # all 10 fed
        for k in range(10, 15):  # 100 ms more, not fed yet
            path.played(tone, RATE, t0 + k * FRAME / RATE)
        path.unplayed(t0 + 6 * FRAME / RATE)  # frames 6.. were taken back
        assert path.counters["far_retracted_frames"] == 5  # 10..14, never fed
        await path.clean(np.zeros(FRAME, np.float32), t0 + 2 * FRAME / RATE)
    finally:
        pool.close()
    assert path.counters["retractions"] == 1
    ec = path.canceller.stats()
    assert ec["reference_retracted_samples"] == 4 * FRAME  # frames 6..9 were fed: cut
    kept, _ = path.canceller._far.read(path.sample_at(t0), 10 * FRAME)
    assert np.abs(kept[: 6 * FRAME]).max() > 0.1 and not kept[6 * FRAME :].any()

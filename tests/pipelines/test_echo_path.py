"""The echo path's reference bookkeeping: speech a pause takes back is forgotten, both what
still waits for the canceller and what it was already fed; and its output does not depend on
how the microphone audio is cut into calls."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tidegate.bench import audio_sets
from tidegate.engines.vad import FRAME_SAMPLES
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


async def test_cleaning_in_larger_pieces_gives_the_same_audio() -> None:
    """The audio lane cleans its 20 ms chunks once they complete a 32 ms VAD frame (one or two
    at a time) instead of one by one: the canceller's output is the same, sample for sample
    (its 10 ms blocks, reference and delay estimates are what they were)."""
    reply = audio_sets.speech(audio_sets.REPLY_SENTENCES[0])
    mic, _, _ = audio_sets.mic_with_echo(reply, delay_s=0.25, level_db=-6.0)
    chunks = len(reply) // FRAME

    async def cleaned(per_frame: bool) -> np.ndarray:
        pool = WorkerPool("echo-test", workers=1)
        path = EchoPath(pool)
        out, start, vad_rest = [], 0, 0
        for k in range(10):
            path.played(reply[k * FRAME : (k + 1) * FRAME], RATE, path.origin + k * FRAME / RATE)
        try:
            for k in range(chunks):
                told = k + 10  # told 200 ms ahead of its play time, as the reply lane tells it
                if told < chunks:
                    pcm = reply[told * FRAME : (told + 1) * FRAME]
                    path.played(pcm, RATE, path.origin + told * FRAME / RATE)
                end = (k + 1) * FRAME
                if per_frame and vad_rest + end - start < FRAME_SAMPLES:
                    continue  # held back, as the audio lane holds it
                vad_rest = (vad_rest + end - start) % FRAME_SAMPLES
                first = FRAME if end - start > FRAME else None
                at = path.origin + (start + FRAME) / RATE  # the first chunk's arrival
                out.append(await path.clean(mic[start:end], at, start / 16, first))
                start = end
        finally:
            pool.close()
        assert path.counters["near_blocks"] == start // 160
        # no reference missing but the lead's 20 ms past the reply's end
        assert path.canceller.stats()["reference_missing_blocks"] <= 2
        return np.concatenate(out)

    one_by_one, per_frame = await cleaned(False), await cleaned(True)
    n = len(per_frame)
    assert n > len(one_by_one) - 2 * FRAME
    assert np.abs(one_by_one[:n]).max() > 0.01  # the echo, partly left: not silence
    assert np.array_equal(one_by_one[:n], per_frame)

"""Silero VAD on real audio, and its start/stop hysteresis."""

from __future__ import annotations

import asyncio
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from tidegate.engines.runtime import Array
from tidegate.engines.scheduler import BatchPolicy, Scheduler
from tidegate.engines.service import EngineSpec, build_engine
from tidegate.engines.vad import (
    FRAME_SAMPLES,
    SAMPLE_RATE_HZ,
    SileroVad,
    VadEvent,
    VadResult,
    VadSettings,
    VadTracker,
    frames,
)


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == SAMPLE_RATE_HZ and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768


async def segments(
    sched: Scheduler[Array, VadResult], session: str, audio: np.ndarray
) -> list[VadEvent]:
    sched.open_session(session)
    events: list[VadEvent] = []
    whole, _ = frames(audio)
    for frame in whole:
        result = await sched.submit(frame, session=session)
        events.extend(result.events)
    sched.close_session(session)
    return events


@pytest.fixture
async def vad(data_dir: Path) -> AsyncIterator[Scheduler[Array, VadResult]]:
    engine = build_engine(EngineSpec("vad", "silero-vad"), data_dir)
    assert isinstance(engine, SileroVad)
    sched = Scheduler(engine, BatchPolicy(max_batch_items=8))
    await sched.start()
    yield sched
    await sched.close()


async def test_finds_speech_in_a_recorded_clip_and_none_in_silence_or_noise(
    vad: Scheduler[Array, VadResult], assets: Path
) -> None:
    """Concurrently: the recorded clip (with silence added around it) gives speech segments
    covering its speech; silence and white noise give none."""
    speech = read_wav(assets / "beckett.wav")
    pad = np.zeros(SAMPLE_RATE_HZ, np.float32)
    clip = np.concatenate([pad, speech, pad])
    noise = (0.05 * np.random.default_rng(0).standard_normal(len(clip))).astype(np.float32)
    silence = np.zeros(len(clip), np.float32)
    got_clip, got_silence, got_noise = await asyncio.gather(
        segments(vad, "clip", clip),
        segments(vad, "silence", silence),
        segments(vad, "noise", noise),
    )
    assert got_silence == [] and got_noise == []
    starts = [e.ms for e in got_clip if e.kind == "start"]
    ends = [e.ms for e in got_clip if e.kind == "end"]
    assert starts and len(ends) >= len(starts) - 1
    # The first speech starts after the second of added silence, the last ends before the end.
    assert 1000 <= starts[0] <= 2500
    speech_ms = sum(e - s for s, e in zip(starts, ends, strict=False))
    assert speech_ms >= 0.5 * len(speech) / SAMPLE_RATE_HZ * 1000
    assert vad.stats()["batch_size"]["mean"] > 1.0  # the three sessions shared batches


async def test_rejects_bad_frames_without_harming_others(vad: Scheduler[Array, VadResult]) -> None:
    """A frame of the wrong size or with NaN fails alone, with a clear message."""
    from tidegate.engines.errors import RequestError

    vad.open_session("a")
    vad.open_session("b")
    bad = np.full(FRAME_SAMPLES, np.nan, np.float32)
    good = np.zeros(FRAME_SAMPLES, np.float32)
    results = await asyncio.gather(
        vad.submit(bad, session="a"), vad.submit(good, session="b"), return_exceptions=True
    )
    assert isinstance(results[0], RequestError) and "NaN" in str(results[0])
    assert isinstance(results[1], VadResult) and results[1].probability < 0.5
    with pytest.raises(RequestError, match=r"expected \[512\]"):
        await vad.submit(np.zeros(100, np.float32), session="a")


def test_hysteresis() -> None:
    """Start needs min_speech of speech (back-dated, padded); end needs min_silence below
    threshold - 0.15; a short blip is no speech; values between thresholds hold the state."""
    s = VadSettings(threshold=0.5, min_speech_s=0.1, min_silence_s=0.1, speech_pad_s=0.03)
    t = VadTracker(s)
    n = FRAME_SAMPLES
    probs = [0.1, 0.9, 0.1, 0.1, 0.1, 0.1] + [0.9] * 4 + [0.4] * 3 + [0.1] * 4
    events = []
    for i, p in enumerate(probs):
        events += t.update(p, i * n, (i + 1) * n)
    pad = round(0.03 * SAMPLE_RATE_HZ)
    assert events == [VadEvent("start", 6 * n - pad), VadEvent("end", 13 * n + pad)]
    with pytest.raises(ValueError, match="threshold"):
        VadSettings(threshold=1.5)

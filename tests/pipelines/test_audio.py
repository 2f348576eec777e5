"""The audio lane (VAD -> streaming ASR) on real engines, without a server: a FakeSession is
its session side."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from tests.support import scaled
from tidegate.engines.asr.request import AsrResult, QualityGate
from tidegate.engines.asr.whisper_onnx import WhisperOnnx
from tidegate.engines.registry import ASR, VAD
from tidegate.engines.service import EngineService
from tidegate.engines.vad import FRAME_SAMPLES
from tidegate.media.audio_in import AudioChunk
from tidegate.pipelines.audio import AudioLane, Joined, _Feed
from tidegate.pipelines.errors import InvalidConfigError, RateLimitedError
from tidegate.pipelines.records import TranscriptSegment
from tidegate.protocol.messages import (
    AsrFinal,
    AsrPartial,
    Error,
    InputAudio,
    VadSpeechStarted,
    VadSpeechStopped,
)
from tidegate.protocol.realtime.commands import ClearInputAudio
from tidegate.server.modes import lane_config
from tidegate.server.settings import Settings

from .lanes import FakeSession, engine_settings, spoken, started_engines

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUESTION = "What is the capital of France?"
CHUNK_S = 0.04


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp = tmp_path_factory.mktemp("audio-lane")
    return engine_settings(tmp, ("silero-vad", "whisper-tiny-en"), engines=("vad", "asr"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines(settings: Settings) -> AsyncIterator[EngineService]:
    async for service in started_engines(settings):
        yield service


class Listener:
    """The lane's SpeechListener: what turn-taking would hear."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, Any]] = []
        self.partials: list[str] = []  # whole hypotheses of the open segment
        #: per final: its segment's id, its text, its joined decode
        self.finals: list[tuple[str, str, Joined | None]] = []
        #: sounds before their start of speech: onset / lost, and how much was heard before
        self.onsets: list[tuple[str, int]] = []

    def on_speech_started(self, audio_ms: float) -> None:
        self.heard.append(("started", None))

    def on_speech_onset(self) -> None:
        self.onsets.append(("onset", len(self.heard)))

    def on_speech_onset_lost(self) -> None:
        self.onsets.append(("lost", len(self.heard)))

    def on_speech_stopped(self, recent: Any, audio_ms: float) -> None:
        self.heard.append(("stopped", (len(recent), audio_ms)))

    def on_partial(self, text: str) -> None:
        self.partials.append(text)

    def on_final(
        self,
        text: str,
        received: float,
        finals_pending: int,
        *,
        segment_id: str = "",
        joined: Joined | None = None,
    ) -> None:
        self.heard.append(("final", (text, finals_pending)))
        self.finals.append((segment_id, text, joined))

    def on_commit(self, ref: str | None, audio_ms: float) -> None:
        self.heard.append(("commit", (ref, audio_ms)))

    def turn_segments(self) -> tuple[str, ...]:
        return tuple(i for i, text, _ in self.finals if text)  # one turn: every final

    def on_clear(self) -> None:
        self.heard.append(("clear", None))


def lane_for(
    session: FakeSession, settings: Settings, engines: EngineService, **audio: Any
) -> tuple[AudioLane, Listener]:
    config = dataclasses.replace(lane_config(settings).audio, **audio)
    listener = Listener()
    lane = AudioLane(
        session,
        config,
        engines.get(VAD),
        engines.get(ASR),
        engines.media,
        listener=listener,
    )
    return lane, listener


async def send(lane: AudioLane, pcm: np.ndarray, rate: int) -> None:
    """``pcm`` into the lane as ``input.audio`` chunks of ``CHUNK_S``, as fast as it takes them."""
    handle = lane.handlers()[InputAudio]
    step = int(CHUNK_S * rate)
    for i in range(0, len(pcm), step):
        chunk = pcm[i : i + step].astype("<i2").tobytes()
        await handle(InputAudio(pcm=chunk, format="s16le", sample_rate=rate, channels=1))


async def test_speech_becomes_a_final_and_the_listener_hears_it(
    settings: Settings, engines: EngineService, tmp_path: Path
) -> None:
    """A spoken question sent as input.audio (22 kHz, resampled) gives speech start and stop,
    a final with its words (recorded as a transcript segment), the same order to the
    listener, and every byte's credit back."""
    pcm, rate = spoken(QUESTION, tmp_path)
    pcm = np.concatenate([pcm, np.zeros(rate, np.int16)])  # a second of silence ends the turn
    session = FakeSession()
    lane, listener = lane_for(session, settings, engines, audio_max_ahead_s=0.0)
    handle = lane.handlers()[InputAudio]
    step = int(CHUNK_S * rate)
    sent = 0
    try:
        for i in range(0, len(pcm), step):
            chunk = pcm[i : i + step].astype("<i2").tobytes()
            await handle(InputAudio(pcm=chunk, format="s16le", sample_rate=rate, channels=1))
            sent += len(chunk)
        async with asyncio.timeout(scaled(60)):
            while not session.of(AsrFinal) or session.credit_bytes < sent:
                await asyncio.sleep(0.05)
    finally:
        await lane.close()
        await session.close()
    kinds = [type(e) for e in session.events if type(e) in (VadSpeechStarted, VadSpeechStopped)]
    assert kinds[:2] == [VadSpeechStarted, VadSpeechStopped]
    (final,) = session.of(AsrFinal)
    words = final.text.lower()
    assert "capital" in words and "france" in words
    assert [r.text for r in session.records if isinstance(r, TranscriptSegment)] == [final.text]
    assert [k for k, _ in listener.heard] == ["started", "stopped", "final"]
    assert listener.onsets == [("onset", 0)]  # told before the start of speech
    (stopped,) = [v for k, v in listener.heard if k == "stopped"]
    assert 0 < stopped[0] <= 8 * 16_000  # the recent audio up to the pause, 8 s at most
    assert listener.heard[-1][1] == (final.text, 0)
    assert session.credit_bytes == sent


async def test_a_sound_shorter_than_speech_is_an_onset_then_lost(
    settings: Settings, engines: EngineService, tmp_path: Path
) -> None:
    """A burst of speech sound shorter than vad_min_speech_s (0.25 s) but longer than
    interrupt_pause_after_s (0.15 s): the listener hears its onset, then that it was lost,
    and no start of speech (a reply paused for it resumes at once)."""
    pcm, rate = spoken(QUESTION, tmp_path)
    loud = np.flatnonzero(np.abs(pcm.astype(np.float32)) > 3000)
    burst = pcm[loud[0] : loud[0] + int(0.18 * rate)]
    quiet = np.zeros(rate // 2, np.int16)
    session = FakeSession()
    lane, listener = lane_for(session, settings, engines, audio_max_ahead_s=0.0)
    try:
        await send(lane, np.concatenate([quiet, burst, quiet, quiet]), rate)
        async with asyncio.timeout(scaled(30)):
            while len(listener.onsets) < 2:
                await asyncio.sleep(0.05)
    finally:
        await lane.close()
        await session.close()
    assert listener.onsets == [("onset", 0), ("lost", 0)]
    assert listener.heard == [] and not session.of(VadSpeechStarted)
    assert lane.counters["onsets"] == 1


async def test_audio_ahead_of_real_time_is_refused(
    settings: Settings, engines: EngineService
) -> None:
    """With audio_max_ahead_s 0.5, a burst of 2 s of audio is refused (rate_limited with a
    retry hint) once it is half a second ahead; a chunk of a broken frame is invalid."""
    session = FakeSession()
    lane, _ = lane_for(session, settings, engines, audio_max_ahead_s=0.5)
    handle = lane.handlers()[InputAudio]
    silence = np.zeros(1600, np.int16).tobytes()  # 0.1 s at 16 kHz

    def chunk(pcm: bytes) -> InputAudio:
        return InputAudio(pcm=pcm, format="s16le", sample_rate=16_000, channels=1)

    try:
        with pytest.raises(RateLimitedError) as info:
            for _ in range(20):
                await handle(
                    InputAudio(pcm=silence, format="s16le", sample_rate=16_000, channels=1)
                )
        assert info.value.retry_after_ms is not None and info.value.retry_after_ms > 0
        with pytest.raises(InvalidConfigError):
            await handle(
                InputAudio(pcm=b"\x00" * 3, format="s16le", sample_rate=16_000, channels=1)
            )
    finally:
        await lane.close()
        await session.close()


async def test_resampled_audio_stays_within_full_scale() -> None:
    """A full-scale square wave resampled to 16 kHz rings in the low-pass (Gibbs) but comes
    out within full scale, as every later stage expects."""
    from tidegate.pipelines.audio import to_mono_16k
    from tidegate.protocol.messages import InputAudio

    square = np.where(np.arange(4_800) // 60 % 2 == 0, 1.0, -1.0).astype("<f4")
    msg = InputAudio(pcm=square.tobytes(), format="f32le", sample_rate=48_000, channels=1)
    out = to_mono_16k(msg)
    assert len(out) == 1_600
    assert np.abs(out).max() <= 1.0
    assert np.abs(out).max() > 0.9  # still the same wave, not silenced


@dataclasses.dataclass(frozen=True, slots=True)
class SwitchedGate(QualityGate):
    """The quality gate until ``refuse`` is set; from then on nothing is speech."""

    refuse: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def is_speech(self, r: AsrResult) -> bool:
        return not self.refuse.is_set() and QualityGate.is_speech(self, r)


async def test_a_final_without_words_takes_back_the_partials_shown(
    settings: Settings, engines: EngineService, tmp_path: Path
) -> None:
    """A segment whose partial was sent, and whose final the gate then calls no speech (an
    unsure scrap), ends with an `asr.final` of empty text: the client drops the words the
    partial showed instead of showing them for good."""
    pcm, rate = spoken("Tell me a long story about a cat who lives by the sea.", tmp_path)
    gate = SwitchedGate()
    streaming = dataclasses.replace(lane_config(settings).audio.streaming, gate=gate)
    session = FakeSession()
    lane, listener = lane_for(
        session, settings, engines, audio_max_ahead_s=0.0, streaming=streaming
    )
    part = len(pcm) * 2 // 3
    try:
        await send(lane, pcm[:part], rate)
        async with asyncio.timeout(scaled(60)):
            while not session.of(AsrPartial):  # the open segment's first partial
                await asyncio.sleep(0.02)
        gate.refuse.set()
        await send(lane, np.concatenate([pcm[part:], np.zeros(rate, np.int16)]), rate)
        async with asyncio.timeout(scaled(60)):
            while not any(k == "final" for k, _ in listener.heard):
                await asyncio.sleep(0.02)
    finally:
        await lane.close()
        await session.close()
    (partial,) = session.of(AsrPartial)
    assert partial.text == "" and partial.tentative  # the first shows tentative words only
    (final,) = session.of(AsrFinal)
    assert final.segment_id == partial.segment_id and final.text == ""
    assert lane.counters["empty_finals"] == 1 and lane.counters["finals"] == 0
    assert not [r for r in session.records if isinstance(r, TranscriptSegment)]


async def test_a_segment_never_shown_still_ends_with_its_final(
    settings: Settings, engines: EngineService, tmp_path: Path
) -> None:
    """Speech the VAD calls speech and the recogniser reads no words in, from its first
    partial on (a gate that calls nothing speech: a cough, a scrap), shows the client no
    partial, and still ends with its `asr.final`, empty: every segment a
    `vad.speech_started` announced ends (a Realtime item opened there completes)."""
    pcm, rate = spoken(QUESTION, tmp_path)
    gate = SwitchedGate()
    gate.refuse.set()
    streaming = dataclasses.replace(lane_config(settings).audio.streaming, gate=gate)
    session = FakeSession()
    lane, listener = lane_for(
        session, settings, engines, audio_max_ahead_s=0.0, streaming=streaming
    )
    try:
        await send(lane, np.concatenate([pcm, np.zeros(rate, np.int16)]), rate)
        async with asyncio.timeout(scaled(60)):
            while not any(k == "final" for k, _ in listener.heard):
                await asyncio.sleep(0.02)
    finally:
        await lane.close()
        await session.close()
    assert session.of(VadSpeechStarted) and not session.of(AsrPartial)
    (final,) = session.of(AsrFinal)
    assert final.text == "" and final.error is None
    assert final.audio_end_ms > final.audio_start_ms
    assert lane.counters["empty_finals"] == 1 and lane.counters["finals"] == 0
    assert not [r for r in session.records if isinstance(r, TranscriptSegment)]


async def test_a_segment_a_clear_drops_ends_with_an_empty_final(
    settings: Settings, engines: EngineService, tmp_path: Path
) -> None:
    """A clear of the input audio in the middle of speech drops the open segment, whose
    partials were on show: it ends with an `asr.final` of empty text (not decoded), the
    speech that goes on after the clear is a segment of its own with its own final."""
    pcm, rate = spoken("Tell me a long story about a cat who lives by the sea.", tmp_path)
    session = FakeSession()
    lane, listener = lane_for(session, settings, engines, audio_max_ahead_s=0.0)
    part = len(pcm) * 2 // 3
    try:
        await send(lane, pcm[:part], rate)
        async with asyncio.timeout(scaled(60)):
            while not session.of(AsrPartial):
                await asyncio.sleep(0.02)
        await lane.handlers()[ClearInputAudio](ClearInputAudio(id="c1"))
        await send(lane, np.concatenate([pcm[part:], np.zeros(rate, np.int16)]), rate)
        async with asyncio.timeout(scaled(60)):
            while len(session.of(AsrFinal)) < 2:
                await asyncio.sleep(0.02)
    finally:
        await lane.close()
        await session.close()
    dropped, rest = session.of(AsrFinal)
    assert dropped.segment_id == session.of(AsrPartial)[0].segment_id
    assert dropped.text == "" and dropped.timing is None  # not decoded
    assert rest.segment_id != dropped.segment_id and rest.audio_start_ms >= dropped.audio_end_ms
    assert lane.counters["clears"] == 1
    kinds = [k for k, _ in listener.heard]
    assert kinds.index("clear") < kinds.index("final")  # turn-taking: cleared, then its end
    assert listener.finals[0][:2] == (dropped.segment_id, "")
    assert [r.text for r in session.records if isinstance(r, TranscriptSegment)] == (
        [rest.text] if rest.text else []
    )


async def test_a_lost_final_is_told_to_the_client(tmp_path: Path) -> None:
    """An ASR engine that misses every deadline (asr_deadline_s 1 ms): the client gets a
    `timeout` error naming the stretch of speech that was not transcribed, then the
    segment's final, empty, with `error` `timeout`; the listener hears the (empty) final,
    so turn-taking moves on instead of waiting for a turn that never ends."""
    settings = engine_settings(tmp_path, ("silero-vad", "whisper-tiny-en"), engines=("vad", "asr"))
    settings = settings.replace(asr_deadline_s=0.001)
    pcm, rate = spoken(QUESTION, tmp_path)
    pcm = np.concatenate([pcm, np.zeros(rate, np.int16)])
    async for engines in started_engines(settings):
        session = FakeSession()
        lane, listener = lane_for(session, settings, engines, audio_max_ahead_s=0.0)
        try:
            await send(lane, pcm, rate)
            async with asyncio.timeout(scaled(60)):
                while not any(k == "final" for k, _ in listener.heard):
                    await asyncio.sleep(0.05)
        finally:
            await lane.close()
            await session.close()
        (final,) = session.of(AsrFinal)
        assert final.text == "" and final.error == "timeout"
        errors = session.of(Error)
        assert [e.code for e in errors] == ["timeout"]
        assert "was not transcribed" in errors[0].message
        assert "deadline" in errors[0].message
        assert session.events.index(errors[0]) < session.events.index(final)
        assert listener.heard[-1] == ("final", ("", 0))


async def test_segments_start_with_pre_roll_and_carry_the_previous_text(
    settings: Settings, engines: EngineService, tmp_path: Path
) -> None:
    """A segment starts pre_roll_s before the VAD's start of speech, but never before the
    previous segment's end (a short pause: no audio twice); the next segment's context is
    the previous finals' tokens."""
    first, rate = spoken("Try again.", tmp_path)
    # (tiny.en prompted with "Try again." hears "Fail better." as nothing: prompts stay off by
    # default, docs/asr.md)
    second, _ = spoken("Well done.", tmp_path)
    silence = np.zeros(int(1.5 * rate), np.int16)
    pause = np.zeros(int(0.4 * rate), np.int16)
    pcm = np.concatenate([silence, first, pause, second, silence])
    session = FakeSession()
    base = lane_config(settings).audio.streaming
    streaming = dataclasses.replace(base, pre_roll_s=1.0, prompt_tokens=64)
    lane, _ = lane_for(session, settings, engines, audio_max_ahead_s=0.0, streaming=streaming)
    handle = lane.handlers()[InputAudio]
    step = int(CHUNK_S * rate)
    try:
        for i in range(0, len(pcm), step):
            chunk = pcm[i : i + step].astype("<i2").tobytes()
            await handle(InputAudio(pcm=chunk, format="s16le", sample_rate=rate, channels=1))
            while lane.inbox.stats.queued_ms > 1000:  # as credit would pace it: no overflow
                await asyncio.sleep(0.01)
        async with asyncio.timeout(scaled(60)):
            while len(session.of(AsrFinal)) < 2:
                await asyncio.sleep(0.05)
        context = lane.context
    finally:
        await lane.close()
        await session.close()
    started = session.of(VadSpeechStarted)
    a, b = session.of(AsrFinal)
    assert a.audio_start_ms == pytest.approx(started[0].audio_ms - 1000.0)
    assert b.audio_start_ms == pytest.approx(a.audio_end_ms)  # clamped: the pause < 1 s
    assert b.audio_start_ms > started[1].audio_ms - 1000.0
    asr = engines.get(ASR).engine
    assert isinstance(asr, WhisperOnnx) and asr.tokenizer is not None
    tok = asr.tokenizer
    assert context == tuple(tok.encode(" " + a.text) + tok.encode(" " + b.text))


async def test_input_audio_is_resampled_as_one_stream_with_exact_media_times() -> None:
    """24 kHz chunks come out as one 16 kHz stream: the same samples as the whole clip at
    once (no seam at a chunk's edges, which a VAD hears), each output's ``ts`` the media time
    of its first sample, and a change of rate flushes the old stream in front of the new."""
    from tidegate.pipelines.audio import InputResampler, to_mono_16k

    rng = np.random.default_rng(3)
    x = (rng.standard_normal(24_000) * 6_000).astype("<i2")
    whole = to_mono_16k(InputAudio(pcm=x.tobytes(), format="s16le", sample_rate=24_000, channels=1))
    r = InputResampler()
    outs: list[np.ndarray] = []
    for i in range(0, len(x), 480):  # 20 ms
        out, ts = r.decode(
            InputAudio(
                pcm=x[i : i + 480].tobytes(),
                format="s16le",
                sample_rate=24_000,
                channels=1,
                ts=1_000.0 + i / 24.0,
            )
        )
        before = sum(len(o) for o in outs)
        assert ts == pytest.approx(1_000.0 + before / 16.0)
        outs.append(out)
    # 16 kHz again: the 24 kHz stream's last samples come first, then the new chunk as is
    tail, ts = r.decode(
        InputAudio(pcm=bytes(640), format="s16le", sample_rate=16_000, channels=1, ts=2_000.0)
    )
    held = len(tail) - 320
    assert held > 0 and ts == pytest.approx(2_000.0 - held / 16.0)
    stream = np.concatenate([*outs, tail[:held]])
    assert len(stream) == len(whole) == 16_000
    assert np.abs(stream - whole).max() < 1e-6
    assert r.idle


async def _transcribe(
    settings: Settings, engines: EngineService, pcm: np.ndarray, rate: int, **streaming: Any
) -> tuple[list[str], dict[str, int]]:
    """``pcm`` through a lane (as fast as it takes it) until its finals are out: their texts
    and the lane's counters."""
    config = lane_config(settings).audio
    session = FakeSession()
    lane, _ = lane_for(
        session,
        settings,
        engines,
        audio_max_ahead_s=0.0,
        streaming=dataclasses.replace(config.streaming, **streaming),
    )
    try:
        await send(lane, pcm, rate)
        async with asyncio.timeout(scaled(60)):
            while not session.of(VadSpeechStopped) or (
                lane.counters["finals"] + lane.counters["empty_finals"]
                < len(session.of(VadSpeechStopped))
            ):
                await asyncio.sleep(0.05)
        return [f.text for f in session.of(AsrFinal)], dict(lane.counters)
    finally:
        await lane.close()
        await session.close()


async def test_the_final_starts_when_the_quiet_begins_and_is_the_same(
    settings: Settings, engines: EngineService, tmp_path: Path
) -> None:
    """A question then silence: its final was decoded as an early final (started at the
    VAD's first quiet frame) and is word for word the final decoded at the VAD's end. With
    a pause inside it, the finals are the same with early finals or without, and a pause that
    went quiet without ending the segment withdrew the early final it started."""
    pcm, rate = spoken(QUESTION, tmp_path)
    pcm = np.concatenate([pcm, np.zeros(rate, np.int16)])
    early, counters = await _transcribe(settings, engines, pcm, rate, early_final=True)
    late, off = await _transcribe(settings, engines, pcm, rate, early_final=False)
    assert early == late and len(early) == 1, (early, late)
    assert counters["early_finals"] == 1, counters  # (a quiet between words drops one)
    assert off["early_finals"] == 0 and off["early_finals_dropped"] == 0, off
    head, _ = spoken("What is the capital", tmp_path)
    tail, _ = spoken("of France?", tmp_path)
    loud = np.flatnonzero(np.abs(head) > 300)  # espeak's own trailing and leading quiet out
    head, tail = head[: loud[-1]], tail[np.flatnonzero(np.abs(tail) > 300)[0] :]
    dropped = []
    # pauses about as long as the VAD's quiet needs to end a segment: some end it, some go
    # quiet and resume (Silero's probability lags the audio by about a frame)
    for gap_s in (0.12, 0.14, 0.16):
        gap = np.zeros(int(gap_s * rate), np.int16)
        paused = np.concatenate([head, gap, tail, np.zeros(rate, np.int16)])
        texts, counters = await _transcribe(settings, engines, paused, rate, early_final=True)
        late, _ = await _transcribe(settings, engines, paused, rate, early_final=False)
        assert texts == late, (gap_s, texts, late)
        assert counters["early_finals"] >= 1, counters
        dropped.append((counters["early_finals_dropped"], counters["segments"]))
    assert any(d >= 1 and n == 1 for d, n in dropped), dropped  # withdrawn, speech went on


async def test_the_echo_canceller_is_called_once_per_vad_frame_not_per_chunk(
    settings: Settings, engines: EngineService
) -> None:
    """With the canceller on, 20 ms chunks (WebRTC's) are held back until their cleaned
    audio completes a 32 ms VAD frame: one call per frame, every frame as soon as it is
    whole, every block cleaned once. A chunk that does not follow on from those held (a gap
    in its media time) has them cleaned first, alone."""
    session = FakeSession()
    session.config = {"audio": {"echo_cancellation": "on"}}
    lane, _ = lane_for(session, settings, engines)
    assert lane.echo is not None
    calls: list[int] = []
    clean = lane.echo.clean

    async def counted(
        pcm: np.ndarray[Any, np.dtype[np.float32]],
        arrival_s: float,
        media_ms: float | None = None,
        first_samples: int | None = None,
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        calls.append(len(pcm))
        return await clean(pcm, arrival_s, media_ms, first_samples)

    lane.echo.clean = counted  # type: ignore[method-assign]
    feed = _Feed(lane.inbox)
    rng = np.random.default_rng(3)
    t0 = time.monotonic()

    async def chunk(k: int, media_ms: float) -> None:
        pcm = (rng.standard_normal(320) * 0.01).astype(np.float32)
        await lane._vad_chunk(feed, AudioChunk(pcm, media_ms, t0 + k * 0.02))

    try:
        lane._ws_ts = True  # the client stamps its audio: the media time dates it
        for k in range(49):  # 0.98 s
            await chunk(k, k * 20.0)
            # a frame is run as soon as the chunks hold one: never a whole frame waiting
            assert lane._samples // FRAME_SAMPLES == (k + 1) * 320 // FRAME_SAMPLES
        assert len(calls) == 49 * 320 // FRAME_SAMPLES  # 30 calls for 49 chunks
        assert len(feed.held) == 1  # the last chunk: 320 samples, short of a frame
        assert sum(calls) == 48 * 320
        await chunk(49, 60 * 20.0)  # 200 ms of media time missing before it
        assert len(calls) == 32  # the held chunk alone, then this one
        assert not feed.held and lane._samples == 31 * FRAME_SAMPLES
    finally:
        await lane.close()
        await session.close()
    stats = lane.echo.stats()
    assert stats["near_blocks"] == 50 * 320 // 160 and stats["uncleaned_blocks"] == 0

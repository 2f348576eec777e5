"""Kiosk echo: a WS-only assistant session whose replies come back into its microphone, on
real engines (Silero VAD, Whisper, SmolLM2, Piper) without a server (a FakeSession is the
session side; the lanes are composed as the assistant mode composes them).

The simulated kiosk plays each ``output.audio`` frame as it arrives (one after the other),
and its microphone hears that playback through a short room response, ``delay_s`` later and
``level_db`` below it, over a -60 dBFS noise floor, streamed back as ``input.audio`` at real
time. Each case runs twice at once on the same reply prompt: with the server's echo
cancellation off (today's behaviour: the echo is taken for the user and cuts the reply) and
on (the reply is heard out)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from tests.support import scaled
from tidegate.bench import audio_sets
from tidegate.engines.service import EngineService
from tidegate.pipelines.own_voice import OWN_VOICE_LIKENESS
from tidegate.protocol import ServerMessage
from tidegate.protocol.messages import InputAudio, OutputAudio, ResponseDone
from tidegate.server.settings import Settings

from .lanes import FakeSession, assistant_lanes, engine_settings, started_engines

pytestmark = pytest.mark.asyncio(loop_scope="module")

RATE = 16_000
CHUNK_S = 0.02
MAX_REPLY_S = 30.0
#: (speaker -> microphone delay, echo level relative to the playback)
CASES = ((0.04, -6.0), (0.12, -12.0), (0.25, -20.0))
PROMPTS = (
    "Tell me about the weather in London in spring.",
    "What can I cook for dinner tonight?",
    "Describe a walk in the mountains.",
)
SESSION_IDS = itertools.count()


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    tmp = tmp_path_factory.mktemp("echo-lane")
    return engine_settings(
        tmp,
        ("silero-vad", "whisper-tiny-en", "smollm2-135m", "piper-joe"),
        engines=("vad", "asr", "llm", "tts"),
        asr_partial_interval_s=3600.0,  # finals only: less CPU on a shared machine
    )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engines(settings: Settings) -> AsyncIterator[EngineService]:
    async for service in started_engines(settings):
        yield service


class Kiosk(FakeSession):
    """The session side, and the kiosk's speaker: every output.audio frame is played when it
    arrives or when the previous one ends, onto a 16 kHz timeline from ``t0``."""

    def __init__(self, echo: str) -> None:
        super().__init__(f"s_kiosk{next(SESSION_IDS)}")
        self.config: dict[str, Any] = {"audio": {"echo_cancellation": echo}}
        self.t0 = time.monotonic()
        self.speaker = np.zeros(int((MAX_REPLY_S + 10) * RATE), np.float32)
        self.play_end = 0

    def emit(self, msg: ServerMessage) -> None:
        super().emit(msg)
        if isinstance(msg, OutputAudio):
            pcm = np.frombuffer(msg.pcm, "<i2").astype(np.float32) / 32768.0
            x = audio_sets.resample(pcm, msg.sample_rate)
            at = max(self.play_end, round((time.monotonic() - self.t0) * RATE))
            n = min(len(x), len(self.speaker) - at)
            self.speaker[at : at + n] = x[:n]
            self.play_end = at + n


class Case:
    """One session: the assistant mode's lanes (no turn engine runs: the silence policy)."""

    def __init__(self, settings: Settings, engines: EngineService, echo: str) -> None:
        self.session = Kiosk(echo)
        self.mode, self.reply, self.turns, self.audio = assistant_lanes(
            self.session, settings, engines
        )

    def mic(self, start: int, n: int, delay_s: float, level_db: float, h: np.ndarray) -> bytes:
        """The microphone's samples [start, start + n): the speaker's playback through the
        room, delayed and attenuated, plus the noise floor."""
        d, k = round(delay_s * RATE), len(h)
        first = start - d - (k - 1)  # the oldest speaker sample the block hears
        src = np.zeros(n + k - 1, np.float32)
        a, b = max(0, first), max(0, start - d + n)
        if b > a:
            src[a - first : b - first] = self.session.speaker[a:b]
        echo = np.convolve(src, h, mode="valid") * audio_sets.db_gain(level_db)
        noise = np.random.default_rng(start).standard_normal(n) * audio_sets.db_gain(-60.0)
        x = np.clip(echo + noise, -1.0, 1.0)
        return np.round(x * 32767).astype("<i2").tobytes()

    async def close(self) -> None:
        await self.mode.close()
        await self.session.close()


async def run_case(
    settings: Settings, engines: EngineService, prompt: str, delay_s: float, level_db: float
) -> dict[str, Any]:
    """One reply to ``prompt`` per echo setting, both at once; what each did."""
    cases = {echo: Case(settings, engines, echo) for echo in ("off", "on")}
    h = audio_sets.room_response(seed=1)
    step = int(CHUNK_S * RATE)
    try:
        t0 = time.monotonic()
        for case in cases.values():
            case.session.t0 = t0
            case.reply.answer(prompt, None, 0.0, spoken=True)
        deadline = t0 + scaled(MAX_REPLY_S)
        for n in itertools.count():
            live = [c for c in cases.values() if not c.session.of(ResponseDone)]
            if not live or time.monotonic() > deadline:
                break
            for case in live:
                pcm = case.mic(n * step, step, delay_s, level_db, h)
                handle = case.audio.handlers()[InputAudio]
                ts = n * CHUNK_S * 1000.0  # the capture time, on the kiosk's media clock
                msg = InputAudio(pcm=pcm, format="s16le", sample_rate=RATE, channels=1, ts=ts)
                await handle(msg)
            await asyncio.sleep(max(0.0, t0 + (n + 1) * CHUNK_S - time.monotonic()))
    finally:
        for case in cases.values():
            await case.close()
    out: dict[str, Any] = {}
    for echo, case in cases.items():
        done = case.session.of(ResponseDone)[0]  # the reply asked for (the echo may ask more)
        # the own-voice judge hears the microphone before the canceller: the reply's last
        # seconds of echo, whole, whether a canceller cleans it after or not
        end = case.session.t0 + case.session.play_end / RATE
        voice = case.audio.own_voice
        likeness = None if voice is None else voice.likeness(end - 3.5, end - 0.5)
        stats = case.audio.stats()
        out[echo] = {
            "status": done.status,
            "barge_ins": case.reply.stats()["barge_ins"],  # speech heard over the reply
            "resumed": case.reply.stats()["interruptions_resumed"],
            "held": case.reply.stats()["echo_holds"],  # ... judged its own before a pause
            "held_lost": case.reply.stats()["echo_holds_lost"],
            "responses": case.reply.stats()["responses"],  # the one asked, and any its echo asked
            "tail_echoes": case.reply.stats()["echo_after_reply"],
            "cut": case.reply.stats()["interruptions_cut"],  # ... taken for words: cut
            "played_s": round(case.session.play_end / RATE, 2),
            "likeness": likeness,
            "echo": stats["echo"],
        }
    return out


async def test_kiosk_echo_cuts_replies_without_aec_and_not_with_it(
    settings: Settings, engines: EngineService
) -> None:
    """At -6/-12/-20 dB and 40/120/250 ms: with echo cancellation off, the echo of the reply
    is taken for the user's speech and pauses it (barge-in) in some case (whether the pause
    then cuts it is the own-voice judges', pipelines/own_voice.py and interrupt.py, which
    resume most; once its sound told it, later sounds of it are held and the reply plays on:
    two pauses in a reply where it stuttered at every sentence before); with it on, no reply
    is cut, and
    the canceller had the reference for what was played. (A residual echo the VAD hears
    pauses the reply until the ASR finds no words in it, then it resumes: counted in
    ``barge_ins`` and reported, not asserted here; at -6 dB / 40 ms the first reply of a fresh
    canceller paused in some runs. ``tidegate bench turns`` counts pauses and cuts over >= 20
    replies per case.)"""
    report = {}
    for (delay_s, level_db), prompt in zip(CASES, PROMPTS, strict=True):
        report[f"{round(delay_s * 1000)}ms/{level_db:g}dB"] = await run_case(
            settings, engines, prompt, delay_s, level_db
        )
    print(json.dumps({"kiosk_echo": report}))
    off = [r["off"] for r in report.values()]
    on = [r["on"] for r in report.values()]
    assert sum(r["barge_ins"] for r in off) >= 1, report  # today's fault is caught
    # once its echo was told by its sound, the next sounds of it are held, not paused
    assert sum(r["held"] for r in off) >= 1, report
    assert all(r["cut"] == 0 and r["status"] == "completed" for r in on), report
    assert all(r["echo"] is None for r in off), report
    # the own-voice judge heard the echo whole, before the canceller (through it: too
    # little to tell, None). 0.73-0.93 measured with the canceller on under two busy loops
    # (0.86-0.90 quiet); the bound leaves room for a loaded machine's stamps
    assert all((r["likeness"] or 0.0) >= OWN_VOICE_LIKENESS - 0.15 for r in [*off, *on]), report
    for r in on:
        assert r["echo"]["far_frames"] > 0 and r["echo"]["near_blocks"] > 0, report
        assert r["echo"]["uncleaned_blocks"] == 0, report
